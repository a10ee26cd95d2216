"""Export a trained run as a TensorFlow SavedModel that serves without this package.

The SavedModel holds the shared embedding net (normalisation included) and takes raw
pixels, float32 ``[batch, H, W, C]`` in 0..255. Its signatures:

- ``serving_default(image) -> {"embedding": [batch, D]}``
- ``distance(first, second) -> {"distance": [batch]}``, the Euclidean distance
  ``d = sqrt(sum_k (e1_k - e2_k)^2)`` between the embeddings of two image batches
  (exact: the epsilon that training adds for finite gradients is not needed here);
- ``same_probability(first, second) -> {"same_probability": [batch]}``, only for a BCE run:
  the trained head ``sigmoid(w . |e1 - e2| + b)``, the probability of the same class;
- ``verify(first, second) -> {"distance": [batch] float64, "same": [batch] bool}``:
  ``same = distance <= t`` at the run's decision threshold ``t`` (``calibration.json``,
  else the accuracy-optimal one of its training pairs), written when the run is exported
  by ``siamese-keras export`` (or when ``export_saved_model`` is given a threshold);
- ``classify(image) -> {"class_index", "class_name", "distance", "unknown"}``, given
  ``--index INDEX_DIR``: the gallery's embeddings, labels and class names stored inside the
  SavedModel; the nearest gallery item (1-NN, distances in float64, the lowest position
  first on a tie), its class, its distance, and ``unknown = distance > u`` at the index's
  open-set threshold ``u`` (:mod:`keras_siamese.index`; ``t`` for a one-item gallery), as
  ``siamese-keras classify`` answers by default.

Every signature checks its images and refuses, with an ``InvalidArgumentError`` saying
what it expects, a batch of another size than the model's (TensorFlow's signatures let
some through: 29 to 31 px images reached a 28 px model and were embedded as if 28 px),
NaN or infinite pixels, and pixels outside 0..255.

Reload it with plain TensorFlow: ``tf.saved_model.load(path).signatures["serving_default"]``.

The export folder also holds ``assets.extra/keras_siamese.json`` (the run it came from),
so ``siamese-keras export`` knows a folder it may replace; ``assets.extra`` is the
SavedModel convention for files TensorFlow Serving ignores.

ONNX and LiteRT files of the embedding net: :mod:`keras_siamese.export_formats`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from keras_siamese import models
from keras_siamese.errors import ConfigError, OutputError
from keras_siamese.outputs import is_inside, replace_folder
from keras_siamese.run_folder import SAVED_MODEL, load_model
from keras_siamese.run_lock import RunLock

ORIGIN = Path("assets.extra") / "keras_siamese.json"  # which run an export came from


def _checked_images(image, height: int, width: int, channels: int):
    """``image`` once the graph has checked it is [batch, height, width, channels] finite
    raw pixels 0..255 (see module doc)."""
    expected = f"[batch, {height}, {width}, {channels}] float32 raw pixels 0..255"
    checks = [
        tf.debugging.assert_equal(tf.shape(image)[1:], tf.constant([height, width, channels]),
                                  message=f"images must be {expected}"),
        tf.debugging.assert_all_finite(image, f"images hold NaN or inf: must be {expected}"),
        tf.debugging.assert_greater_equal(image, 0.0, message=f"pixels below 0: must be "
                                          f"{expected}"),
        tf.debugging.assert_less_equal(image, 255.0, message=f"pixels above 255: must be "
                                       f"{expected}"),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(image)


def export_saved_model(model: keras.Model, path, origin=None, threshold: float | None = None,
                       index=None) -> Path:
    """Write ``model``'s embedding net (and a BCE model's head) as a SavedModel at ``path``.

    ``model`` is any model built by :mod:`keras_siamese.models` (or the embedding net
    itself); ``origin`` is the run folder it came from. With the run's decision
    ``threshold`` it adds ``verify``, and with an :class:`~keras_siamese.index.Index` of its
    gallery also ``classify`` (see the module doc). The folder appears complete or not at
    all, and an earlier folder at ``path`` is replaced only once it is.
    """
    origin = str(origin) if origin is not None else None
    embedding = models.embedding_of(model)
    shape = embedding.input_shape[1:]
    image = tf.TensorSpec([None, *shape], tf.float32)

    def embed(images):
        return embedding(_checked_images(images, *shape), training=False)

    archive = keras.export.ExportArchive()
    archive.track(embedding)
    archive.add_endpoint("serving_default", lambda image: {"embedding": embed(image)},
                         input_signature=[image])

    def distance(first, second):
        difference = embed(first) - embed(second)
        return {"distance": tf.sqrt(tf.reduce_sum(tf.square(difference), axis=-1))}

    archive.add_endpoint("distance", distance, input_signature=[image, image])

    if threshold is not None:
        _add_decisions(archive, embed, image, threshold, index)

    if model.name == "siamese_bce":
        head = model.get_layer("same_probability")
        archive.track(head)

        def same_probability(first, second):
            difference = tf.abs(embed(first) - embed(second))
            return {"same_probability": tf.squeeze(head(difference), axis=-1)}

        archive.add_endpoint("same_probability", same_probability,
                             input_signature=[image, image])

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        archive.write_out(str(tmp), verbose=False)
        (tmp / ORIGIN).parent.mkdir(exist_ok=True)
        (tmp / ORIGIN).write_text(json.dumps({"run": origin}) + "\n")
        replace_folder(tmp, path)
    except (OSError, tf.errors.OpError) as error:  # TensorFlow reports a full disk its way
        message = getattr(error, "strerror", None) or getattr(error, "message", None) or error
        raise OutputError(f"cannot write the SavedModel to {path}: {message}") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _add_decisions(archive, embed, image, threshold: float, index) -> None:
    """The ``verify`` endpoint and, with an index, ``classify`` (see the module doc)."""
    def distance_of(first, second):
        difference = tf.cast(embed(first) - embed(second), tf.float64)
        return tf.sqrt(tf.reduce_sum(tf.square(difference), axis=-1))

    def verify(first, second):
        distance = distance_of(first, second)
        return {"distance": distance, "same": distance <= threshold}

    archive.add_endpoint("verify", verify, input_signature=[image, image])
    if index is None:
        return
    gallery = tf.constant(index.embeddings, tf.float64)
    norms = tf.reduce_sum(tf.square(gallery), axis=1)
    labels = tf.constant(index.labels, tf.int64)
    names = tf.constant(index.class_names)
    unknown_beyond = index.open_set_threshold()  # as the classify command's default

    def classify(image):
        # |q - g|^2 = |q|^2 - 2 q.g + |g|^2 in float64; the first of equal minima wins.
        queries = tf.cast(embed(image), tf.float64)
        squared = tf.maximum(tf.reduce_sum(tf.square(queries), axis=1, keepdims=True)
                             - 2.0 * tf.matmul(queries, gallery, transpose_b=True)
                             + norms[None, :], 0.0)
        nearest = tf.argmin(squared, axis=1)
        distance = tf.sqrt(tf.gather(squared, nearest, batch_dims=1))
        label = tf.gather(labels, nearest)
        return {"class_index": label, "class_name": tf.gather(names, label),
                "distance": distance, "unknown": distance > unknown_beyond}

    archive.add_endpoint("classify", classify, input_signature=[image])


def export_origin(path) -> str | None:
    """The run folder an export folder came from, or None if it is not one of ours."""
    try:
        return json.loads((Path(path) / ORIGIN).read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return None


def check_export_target(run_dir, out, overwrite: bool) -> Path:
    """``out`` if exporting the run there destroys nothing the user did not ask to: never
    the run folder or a folder holding it; an existing non-empty folder only when it is an
    earlier export of this run, or with ``overwrite``."""
    run_dir, out = Path(run_dir).absolute(), Path(out).absolute()
    if is_inside(run_dir, out):
        raise ConfigError(f"--out {out} would replace the run folder {run_dir} (or a folder "
                          "that holds it): choose another folder")
    if out.is_file() or out.is_symlink():
        raise ConfigError(f"--out {out} is a file, not a folder: choose a folder name")
    ours = out == run_dir / SAVED_MODEL or export_origin(out) == str(run_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite and not ours:
        raise ConfigError(f"--out {out} is a folder that holds other files (not an earlier "
                          "export of this run): choose a new folder, or pass --overwrite to "
                          "replace it")
    return out


def export_run(run_dir, out=None, overwrite: bool = False, index_dir=None) -> Path:
    """Export the finished run in ``run_dir`` (its ``model.keras``) to ``out``, by default
    ``run_dir/saved_model``, as :func:`check_export_target` allows; with ``index_dir``,
    an index of that run's model for the ``classify`` signature."""
    from keras_siamese.index import Index
    from keras_siamese.run_folder import decision_threshold

    target = check_export_target(run_dir, out if out is not None else
                                 Path(run_dir) / SAVED_MODEL, overwrite)
    index = Index.load(index_dir) if index_dir is not None else None
    if index is not None and Path(index.run) != Path(run_dir).absolute():
        raise ConfigError(f"--index {index_dir} was made with the run {index.run}, not "
                          f"{run_dir}")
    with RunLock(run_dir, "exporting", writes=target.parent == Path(run_dir).absolute()):
        model = load_model(run_dir)
        threshold, _ = decision_threshold(run_dir)
        if index is not None:
            index.embedding(models.embedding_of(model))  # refuses a model changed since
        return export_saved_model(model, target, Path(run_dir).absolute(), threshold, index)
