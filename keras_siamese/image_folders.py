"""A user's own images: a folder with one sub-folder of PNG/JPEG images per class.

    my_images/
        cats/   001.jpg  002.png ...
        dogs/   ...

Class names are the sub-folder names, sorted; a label is a class's position in that order.
Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``) and files that are not PNG/JPEG are
skipped. Every image is read the way ``siamese-keras embed`` reads one
(:func:`read_image`), so a served model sees exactly the pixels it was trained on.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from keras_siamese.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow modes that carry no colour: such images are read as one channel.
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def read_image(path, height: int, width: int, channels: int) -> np.ndarray:
    """One image file as uint8 (height, width, channels): converted to grayscale (1) or RGB
    (3), and resized with Pillow's bilinear filter (antialiased when shrinking)."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise DataError(f"{path}: the model takes {channels}-channel images; only 1 (grayscale) "
                        "and 3 (RGB) can be made from image files")
    try:
        with Image.open(io.BytesIO(Path(path).read_bytes())) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{path}: cannot read this image ({error})") from None
    return pixels.reshape(height, width, channels)


def list_class_folders(root) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """``(files, labels, class_names)`` of the class-folder dataset at ``root``; files are
    sorted by class, then by name. DataError for anything that is not such a dataset."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--dataset {root}: no such folder (give a folder with one sub-folder "
                        "of images per class)")
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as error:
        raise DataError(f"--dataset {root}: cannot list this folder ({error.strerror})") from None
    if not folders:
        raise DataError(f"--dataset {root}: no class sub-folders (put each class's images "
                        "in a sub-folder named after the class)")
    files, labels = [], []
    for label, folder in enumerate(folders):
        images = sorted(p for p in folder.iterdir() if p.is_file()
                        and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"--dataset {root}: class folder {folder.name!r} has no PNG or "
                            "JPEG images")
        files += images
        labels += [label] * len(images)
    if len(folders) < 2:
        raise DataError(f"--dataset {root}: only one class ({folders[0].name!r}); metric "
                        "learning needs at least 2 class sub-folders")
    return files, np.asarray(labels, np.int64), tuple(p.name for p in folders)


def image_format(files, image_size: int | None, default_size: int) -> tuple[int, int, int]:
    """``(height, width, channels)`` the dataset is read at, from the image headers only.

    Channels: 1 when every image is grayscale, else 3. Size: ``image_size`` square if
    given; otherwise the images' own size when they all share one no larger than
    ``default_size`` on either side (28 x 28 digits stay 28 x 28), else ``default_size``
    square."""
    from PIL import Image, UnidentifiedImageError

    sizes, gray = set(), True
    for path in files:
        try:
            with Image.open(path) as image:  # reads the header, not the pixels
                sizes.add(image.size)
                gray = gray and image.mode in GRAY_MODES
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"{path}: cannot read this image ({error})") from None
    channels = 1 if gray else 3
    if image_size is not None:
        return image_size, image_size, channels
    if len(sizes) == 1:
        ((width, height),) = sizes
        if max(width, height) <= default_size:
            return height, width, channels
    return default_size, default_size, channels


def read_images(files, height: int, width: int, channels: int) -> np.ndarray:
    """All ``files`` as one uint8 array (N, height, width, channels), decoded in parallel
    (Pillow releases the GIL while it decodes)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        images = list(pool.map(lambda path: read_image(path, height, width, channels), files))
    return np.stack(images)
