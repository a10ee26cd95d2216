"""A user's own images: a folder with one sub-folder of PNG/JPEG images per class.

    my_images/
        cats/   001.jpg  002.png ...
        dogs/   ...

Class names are the sub-folder names, sorted; a label is a class's position in that order.
A name that is not valid UTF-8 (a Linux folder ``b"caf\\xe9"``) is shown with backslash
escapes (``caf\\xe9``) wherever it is displayed or stored; the files keep their real paths.
Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``) and files that are not PNG/JPEG are
skipped. Every image is read the way ``siamese-keras embed`` reads one
(:func:`read_image`), so a served model sees exactly the pixels it was trained on.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from keras_siamese.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow modes that carry no colour: such images are read as one channel.
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Every mode read_image maps faithfully onto 0..255: as they are, 16-bit scaled, or through
# Pillow's conversion to RGB (palette looked up, alpha dropped, CMYK multiplied out).
READABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK",
                  "YCbCr") + SIXTEEN_BIT_MODES
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAY_TYPES = (0, 4)  # IHDR colour types without colour: gray, gray + alpha
# Errors Pillow raises for a damaged or hostile file, besides OSError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def display_name(name: str) -> str:
    """A file or folder name as safe text: bytes that are not UTF-8 (Linux names such as
    ``b"caf\\xe9"``) and control characters (tab, newline) as backslash escapes, so plots,
    tables, ``metadata.tsv`` and JSON can hold it; printable text is kept as it is."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in text)


def shown(path) -> str:
    """A path as it appears in a one-line message: :func:`display_name` of the whole path."""
    return display_name(os.fspath(path))


def read_image(path, height: int, width: int, channels: int) -> np.ndarray:
    """One image file as uint8 (height, width, channels): converted to grayscale (1) or RGB
    (3), and resized with Pillow's bilinear filter (antialiased when shrinking).

    16-bit images are scaled to 0..255 (``round(v * 255 / 65535)``); palette images are
    looked up; alpha is dropped. Modes without a known 0..255 scale (32-bit integer or float
    pixels), images over Pillow's decompression-bomb limit and damaged files raise
    DataError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{shown(path)}: cannot read this file "
                        f"({error.strerror or error})") from error
    return decode_image(data, path, height, width, channels)


def decode_image(data: bytes, source, height: int, width: int, channels: int) -> np.ndarray:
    """Image bytes as :func:`read_image` reads a file (the same conversion and checks);
    ``source`` is the file, or any name, that error messages give."""
    from PIL import Image

    if channels not in (1, 3):
        raise DataError(f"{shown(source)}: the model takes {channels}-channel images; only "
                        "1 (grayscale) and 3 (RGB) can be made from image files")
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_mode(image, source)
            if _png_header(data)[0] == 16 and image.mode not in SIXTEEN_BIT_MODES:
                image = _sixteen_bit_colour_png(data)
            else:
                image = _eight_bit(image)
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise DataError(_too_large(source, data)) from error
    except DECODE_ERRORS as error:
        raise DataError(f"{shown(source)}: cannot read this image ({_reason(error)})") \
            from error
    return pixels.reshape(height, width, channels)


def _check_mode(image, path) -> None:
    """DataError unless :func:`read_image` can map ``image``'s pixels faithfully."""
    if image.mode in READABLE_MODES or (image.mode == "I" and image.format == "PNG"):
        return  # Pillow before 11 opened 16-bit gray PNGs as "I", still 0..65535
    kind = {"I": "32-bit integer", "F": "32-bit float"}.get(image.mode, "an unsupported mode")
    raise DataError(f"{shown(path)}: {image.format or 'image'} of mode {image.mode} ({kind} "
                    "pixels) has no known 0..255 scale; save it as an 8- or 16-bit PNG or as "
                    "a JPEG")


def _eight_bit(image):
    """``image`` as mode L or RGB, its pixels 0..255."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        return Image.fromarray(_scale_16_bit(np.asarray(image)), "L")
    if image.mode in ("P", "PA"):
        # Through RGBA: the palette's colours; a transparency table is dropped like alpha.
        image = image.convert("RGBA")
    if image.mode in ("1", "L", "LA"):
        return image.convert("L")
    return image.convert("RGB")


def _scale_16_bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded: ``round(v * 255 / 65535)`` (= ``(v + 128) // 257``)."""
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"16-bit pixels outside 0..65535 ({values.min()}..{values.max()})")
    return ((values + 128) // 257).astype(np.uint8)


def _png_header(data: bytes) -> tuple[int | None, int | None]:
    """``(bit depth, colour type)`` from a PNG's IHDR chunk; ``(None, None)`` if not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 26:
        return None, None
    return data[24], data[25]


def _sixteen_bit_colour_png(data: bytes):
    """A 16-bit RGB, RGBA or gray + alpha PNG as an L or RGB image, every channel scaled
    from 16 bits. Pillow keeps only the high byte of these (v >> 8), so TensorFlow, which
    decodes them whole, reads them."""
    import tensorflow as tf
    from PIL import Image

    try:
        pixels = tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
    except tf.errors.OpError as error:
        raise OSError(error.message.splitlines()[0]) from error
    colour = pixels.shape[-1] >= 3
    pixels = _scale_16_bit(pixels[..., :3] if colour else pixels[..., 0])
    return Image.fromarray(pixels, "RGB" if colour else "L")


def _reason(error: Exception) -> str:
    """Pillow's message for an unreadable file, without the in-memory stream's address."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can identify: not a PNG or JPEG file"
    return display_name(str(error) or type(error).__name__)


def _too_large(path, data: bytes | None = None) -> str:
    """The message for a file (or its ``data``) over Pillow's decompression-bomb limit,
    with its size."""
    from PIL import Image

    size = _claimed_size(io.BytesIO(data) if data is not None else path)
    size_text = f"{size[0]:,} x {size[1]:,} pixels" if size else "its size"
    return (f"{shown(path)}: {size_text} is over the {2 * Image.MAX_IMAGE_PIXELS:,} pixels "
            "Pillow reads (a guard against decompression bombs); shrink the image")


def _claimed_size(source) -> tuple[int, int] | None:
    """(width, height) a file's header claims (a path or a binary stream), read by
    Pillow's format plugins without the pixel limit that Image.open applies; None if no
    plugin reads it."""
    from PIL import Image

    Image.init()
    try:
        with (source if hasattr(source, "read") else open(source, "rb")) as stream:
            prefix = stream.read(16)
            for name in Image.ID:
                factory, accept = Image.OPEN[name]
                accepted = accept is None or accept(prefix)
                if not accepted or isinstance(accepted, str):  # str: a warning, not a match
                    continue
                try:
                    stream.seek(0)
                    return factory(stream, str(source)).size
                except Exception:  # noqa: BLE001 - any plugin may refuse: try the next
                    continue
    except OSError:
        return None
    return None


def _listed(folder: Path, keep, failure: str) -> list[Path]:
    """The entries of ``folder`` that ``keep`` accepts, hidden ones left out, sorted;
    DataError ``failure (reason)`` when the folder cannot be listed."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and keep(p))
    except OSError as error:
        raise DataError(f"{failure} ({error.strerror})") from error


def list_class_folders(root, min_classes: int = 2, what: str = "--dataset"):
    """``(files, labels, class_names)`` of the class-folder dataset at ``root``; files are
    sorted by class, then by name. Class names are the folders' :func:`display_name` (the
    files keep their real names). DataError, its message starting with ``what`` and the
    folder, for anything that is not such a dataset with ``min_classes`` classes or more
    (training needs 2; a gallery that adds one new class, 1)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what} {shown(root)}: no such folder (give a folder with one "
                        "sub-folder of images per class)")
    folders = _listed(root, lambda p: p.is_dir(), f"{what} {shown(root)}: cannot list "
                      "this folder")
    if not folders:
        raise DataError(f"{what} {shown(root)}: no class sub-folders (put each class's "
                        "images in a sub-folder named after the class)")
    names = tuple(display_name(folder.name) for folder in folders)
    files, labels, seen = [], [], {}
    for label, (folder, name) in enumerate(zip(folders, names)):
        if name in seen:  # only names with a literal backslash escape can collide
            raise DataError(f"{what} {shown(root)}: class folders "
                            f"{os.fsencode(seen[name])!r} and {os.fsencode(folder.name)!r} "
                            f"both show as '{name}'; rename one")
        seen[name] = folder.name
        images = _listed(folder, lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES,
                         f"{what} {shown(root)}: cannot list class folder '{name}'")
        if not images:
            raise DataError(f"{what} {shown(root)}: class folder '{name}' has no PNG or "
                            "JPEG images")
        files += images
        labels += [label] * len(images)
    if len(folders) < min_classes:
        raise DataError(f"{what} {shown(root)}: only one class ('{names[0]}'); metric "
                        "learning needs at least 2 class sub-folders")
    return files, np.asarray(labels, np.int64), names


def image_format(files, image_size: int | None, default_size: int) -> tuple[int, int, int]:
    """``(height, width, channels)`` the dataset is read at, from the image headers only.

    Channels: 1 when every image is grayscale (16-bit gray and gray + alpha included), else
    3. Size: ``image_size`` square if given; otherwise the images' own size when they all
    share one no larger than ``default_size`` on either side (28 x 28 digits stay 28 x 28),
    else ``default_size`` square. DataError for a file :func:`read_image` would refuse by
    its header (unreadable, too large, a mode without a 0..255 scale)."""
    from PIL import Image

    sizes, gray = set(), True
    for path in files:
        try:
            with open(path, "rb") as stream:
                depth, colour_type = _png_header(stream.read(26))
            with Image.open(path) as image:  # reads the header, not the pixels
                _check_mode(image, path)
                sizes.add(image.size)
                gray = gray and (colour_type in PNG_GRAY_TYPES if depth is not None
                                 else image.mode in GRAY_MODES)
        except Image.DecompressionBombError as error:
            raise DataError(_too_large(path)) from error
        except DECODE_ERRORS as error:
            raise DataError(f"{shown(path)}: cannot read this image "
                            f"({_reason(error)})") from error
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
