"""Galleries: labelled images a trained model indexes (``siamese-keras index``, ``--add``).

A gallery is read for one model, so every image gets exactly the pixels the model was
trained on (same reader, same resizing, the model's channels). Sources:

- a class-folder tree (one sub-folder of PNG/JPEG images per class), read as
  ``--dataset FOLDER`` reads it (:mod:`keras_siamese.image_folders`);
- a split of a dataset ``train`` knows: ``mnist:train``, ``fashion_mnist:test``,
  ``tfds:NAME:train``; the split is the one the model's runs use (:mod:`keras_siamese.data`);
- an ``.npy`` of raw-pixel images (N, H, W[, C]) with an ``.npy`` of labels (``labels``):
  strings are class names, integers are class numbers shown as their decimal digits.

A gallery's classes keep their own order (the dataset's, the sorted folder names, the
sorted labels), so an index built from ``mnist:train`` numbers the digits 0 to 9.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from keras_siamese.data import TFDS_PREFIX, load_dataset, resize_images
from keras_siamese.errors import ConfigError, DataError
from keras_siamese.image_folders import display_name, list_class_folders, read_images, shown

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Gallery:
    """Images with their class names and where each came from."""

    images: np.ndarray  # float32 (N, H, W, C) raw pixels 0..255
    classes: list[str]  # class name of each image
    sources: list[str]  # file path, or dataset:split[i], or file.npy[i]
    class_names: tuple[str, ...] = ()  # the classes in their own order; default: as met

    def __post_init__(self):
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(dict.fromkeys(self.classes)))


def read_gallery(source: str, input_shape, labels: str | None = None,
                 data_dir=None) -> Gallery:
    """The gallery named by ``source`` (see the module doc) for a model of ``input_shape``
    (H, W, C); DataError for a gallery without images or with an unreadable one."""
    if labels is not None or source.lower().endswith(".npy"):
        gallery = _from_arrays(Path(source), labels, input_shape)
    elif Path(source).is_dir():
        gallery = _from_folders(Path(source), input_shape)
    elif _split_name(source) is not None:
        gallery = _from_split(*_split_name(source), input_shape, data_dir)
    else:
        raise ConfigError(f"gallery {source!r}: give a class-folder tree, a dataset split "
                          "(mnist:train, fashion_mnist:test, tfds:NAME:split) or an .npy of "
                          "images with --labels")
    if not len(gallery.images):
        raise DataError(f"gallery {source}: no images")
    return gallery


def _split_name(source: str) -> tuple[str, str] | None:
    """``("mnist", "train")`` for ``mnist:train``, ``("tfds:NAME", split)`` for TFDS."""
    name, _, split = source.rpartition(":")
    if split in SPLITS and name and (name in ("mnist", "fashion_mnist")
                                     or name.startswith(TFDS_PREFIX)):
        return name, split
    return None


def _from_folders(root: Path, input_shape) -> Gallery:
    files, labels, class_names = list_class_folders(root, min_classes=1, what="gallery")
    images = read_images(files, *input_shape).astype(np.float32)
    return Gallery(images, [class_names[i] for i in labels],
                   [display_name(str(path)) for path in files], tuple(class_names))


def _from_split(name: str, split: str, input_shape, data_dir) -> Gallery:
    data = load_dataset(name, data_dir)
    images, labels = (data.x_train, data.y_train) if split == "train" else \
        (data.x_test, data.y_test)
    height, width, channels = input_shape
    if images.shape[-1] != channels:
        raise DataError(f"gallery {name}:{split} has {images.shape[-1]}-channel images, the "
                        f"model takes {channels}")
    if images.shape[1:3] != (height, width):
        images = resize_images(images, height, width)
    return Gallery(images.astype(np.float32), [data.class_names[i] for i in labels],
                   [f"{name}:{split}[{i}]" for i in range(len(labels))],
                   tuple(data.class_names))


def _from_arrays(path: Path, labels: str | None, input_shape) -> Gallery:
    from keras_siamese.embed import read_inputs  # one reader of .npy images for all commands

    if labels is None:
        raise ConfigError(f"gallery {shown(path)}: an .npy of images needs --labels "
                          "LABELS.npy (one class per image)")
    images, sources = read_inputs([path], input_shape)
    try:
        names = np.load(labels, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"--labels {shown(labels)}: cannot read this .npy file "
                        f"({display_name(str(error))})") from error
    if names.shape != (len(images),) or names.dtype.kind not in "iuU":
        raise DataError(f"--labels {shown(labels)}: needs one integer or string label per "
                        f"image, {len(images)} of them; it holds {names.dtype} {names.shape}")
    return Gallery(images, [str(name) for name in names.tolist()], sources,
                   tuple(str(name) for name in np.unique(names).tolist()))
