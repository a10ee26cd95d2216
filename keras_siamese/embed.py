"""Embed a user's own images with a trained model: ``siamese-keras embed``.

Inputs are PNG/JPEG files, folders of them (sorted by name, not recursive) or ``.npy``
arrays of images (N, H, W) or (N, H, W, C) holding raw pixels 0..255. Images are
converted the way the model needs them: to grayscale or RGB by its channel count and
resized (bilinear) to its input size. MNIST-like models expect light strokes on a dark
background; ``invert`` turns dark-on-light scans around (pixel -> 255 - pixel).

The model is a run folder (its ``model.keras``), a ``.keras`` file, or an exported
SavedModel folder (:mod:`keras_siamese.export`).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from keras_siamese.errors import ConfigError, DataError, OutputError
from keras_siamese.image_folders import IMAGE_SUFFIXES, display_name, read_image, shown
from keras_siamese.models import inference_batch_size
from keras_siamese.outputs import atomic_path

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".npy", ".csv")


class Embedder:
    """A loaded model: ``input_shape`` (H, W, C) and ``__call__(images) -> embeddings``."""

    def __init__(self, model_path):
        import tensorflow as tf

        path = Path(model_path)
        if (path / "saved_model.pb").is_file():
            serve = tf.saved_model.load(str(path)).signatures.get("serving_default")
            if serve is None:
                raise DataError(f"{shown(path)} has no serving_default signature")
            ((name, spec),) = serve.structured_input_signature[1].items()
            self.input_shape = tuple(spec.shape[1:])
            self._embed = lambda x: next(iter(serve(**{name: tf.constant(x)}).values())).numpy()
            return
        if path.is_file() and path.suffix != ".keras":
            raise ConfigError(f"{model_path}: not a run folder, .keras file or SavedModel folder")
        from keras_siamese.run_folder import load_embedding

        embedding = load_embedding(path)
        self.input_shape = tuple(embedding.input_shape[1:])
        self._embed = lambda x: embedding(x, training=False).numpy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Embeddings of ``images`` (N, H, W, C), batched as :func:`models.embed_images`
        batches (:func:`models.inference_batch_size`)."""
        batch = inference_batch_size(*images.shape[1:3])
        return np.concatenate([self._embed(images[i:i + batch])
                               for i in range(0, len(images), batch)])


def read_inputs(inputs, input_shape, invert: bool = False) -> tuple[np.ndarray, list[str]]:
    """All images named by ``inputs`` as float32 (N, H, W, C) for a model of
    ``input_shape``, with one name per image (file name, or ``file.npy[i]``; bytes that
    are not UTF-8 and control characters as backslash escapes, see
    :func:`image_folders.display_name`)."""
    images, names = [], []
    for source in _expand(inputs):
        if source.suffix.lower() == ".npy":
            batch = _read_array(source, input_shape)
            images.append(batch)
            names += [f"{display_name(str(source))}[{i}]" for i in range(len(batch))]
        else:
            images.append(read_image(source, *input_shape)[None])
            names.append(display_name(str(source)))
    if not names:
        raise DataError("no images given")
    pixels = np.concatenate(images).astype(np.float32)
    return (255.0 - pixels if invert else pixels), names


def _expand(inputs) -> list[Path]:
    """Files as given, folders as their image and .npy files sorted by name."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES + (".npy",))
            if not found:
                raise DataError(f"{shown(item)}: no .png, .jpg, .jpeg or .npy files in this "
                                "folder")
            files += found
        elif not item.is_file():
            raise DataError(f"{shown(item)}: no such file or folder")
        elif item.suffix.lower() not in IMAGE_SUFFIXES + (".npy",):
            raise DataError(f"{shown(item)}: not a .png, .jpg, .jpeg or .npy file")
        else:
            files.append(item)
    return files


def _read_array(path: Path, input_shape) -> np.ndarray:
    """A .npy array of images (N, H, W[, C]) for a model of ``input_shape``; DataError for
    anything that is not raw pixels 0..255 (NaN, infinities, values outside 0..255)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{shown(path)}: cannot read this .npy file "
                        f"({display_name(str(error))})") from error
    if not isinstance(array, np.ndarray):  # np.load opens a .npz archive whatever its name
        array.close()
        raise DataError(f"{shown(path)}: a .npz archive, not a .npy array; save the images "
                        "with numpy.save")
    height, width, channels = input_shape
    if array.ndim == 3 and channels == 1:
        array = array[..., None]
    if array.ndim != 4 or array.shape[1:] != (height, width, channels):
        raise DataError(f"{shown(path)}: images of shape {array.shape[1:]} (array "
                        f"{array.shape}), the model takes (N, {height}, {width}, {channels}) "
                        "raw pixels 0..255")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{shown(path)}: {array.dtype} is not a numeric image array")
    check_pixels(path, array)
    if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
        log.warning("%s: pixel values are all <= 1; the model expects 0..255 "
                    "(multiply by 255 if they were scaled)", path)
    return array


def check_pixels(path, array: np.ndarray) -> None:
    """DataError unless every value of ``array`` is a finite number in 0..255; messages
    name ``path`` (a file, or any name such as a request field)."""
    if np.issubdtype(array.dtype, np.floating):
        for count, what in ((np.isnan(array).sum(), "NaN"),
                            (np.isinf(array).sum(), "infinite")):
            if count:
                raise DataError(f"{shown(path)}: holds {count:,} {what} value"
                                f"{'' if count == 1 else 's'}; the model takes raw pixels "
                                "0..255")
    if array.size and (array.min() < 0 or array.max() > 255):
        low, high = array.min(), array.max()
        outside = int(np.count_nonzero((array < 0) | (array > 255)))
        hint = ("; scale 16-bit images with * 255 / 65535" if high <= 65535 and low >= 0
                else "")
        raise DataError(f"{shown(path)}: holds {outside:,} value{'' if outside == 1 else 's'} "
                        f"outside 0..255 (from {low:g} to {high:g}); the model takes raw pixels "
                        f"0..255{hint}")


def check_output(path, inputs=(), suffixes=OUTPUT_SUFFIXES) -> Path:
    """The output file name, if it has one of ``suffixes`` (by default those
    :func:`write_embeddings` writes) and neither it nor the names file beside a ``.npy`` is
    one of ``inputs`` (files, or files in the folders given): however it is spelled,
    through a symlink or a hard link."""
    path = Path(path)
    if path.suffix not in suffixes:
        raise ConfigError(f"--out {shown(path)}: give a {' or '.join(suffixes)} file name")
    if not inputs:
        return path
    written = [path] + ([names_path(path)] if path.suffix == ".npy" else [])
    for source in _expand(inputs):
        for target in written:
            if _same_file(target, source):
                what = "" if target == path else f" (its names file {shown(target)})"
                raise ConfigError(f"--out {shown(path)}{what} is the input {shown(source)}: "
                                  "choose another output file; the input is left as it is")
    return path


def names_path(path) -> Path:
    """The file beside a ``.npy`` output that holds the input names."""
    path = Path(path)
    return path.with_name(path.name + ".names.txt")


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve() or (
            first.exists() and second.exists() and first.samefile(second))
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def write_embeddings(path, embeddings: np.ndarray, names: list[str]) -> list[Path]:
    """``.csv``: a header ``name,e0,e1,...`` and one row per input; ``.npy``: the (N, D)
    array, with the input names line by line in ``<path>.names.txt``. Returns the files."""
    path = check_output(path)
    try:
        if path.suffix == ".csv":
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
                writer = csv.writer(stream)
                writer.writerow(["name"] + [f"e{i}" for i in range(embeddings.shape[1])])
                writer.writerows([name, *map(repr, map(float, row))]
                                 for name, row in zip(names, embeddings))
            return [path]
        names_file = names_path(path)
        with atomic_path(path) as tmp:
            np.save(tmp, embeddings)
        with atomic_path(names_file) as tmp:
            tmp.write_text("".join(name + "\n" for name in names), encoding="utf-8")
        return [path, names_file]
    except OSError as error:
        raise OutputError(f"cannot write {shown(path)}: {error.strerror or error}") from error
