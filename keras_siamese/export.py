"""Export a trained run as a TensorFlow SavedModel that serves without this package.

The SavedModel holds the shared embedding net (normalisation included) and takes raw
pixels, float32 ``[batch, H, W, C]`` in 0..255. Its signatures:

- ``serving_default(image) -> {"embedding": [batch, D]}``
- ``distance(first, second) -> {"distance": [batch]}``, the Euclidean distance
  ``d = sqrt(sum_k (e1_k - e2_k)^2)`` between the embeddings of two image batches
  (exact: the epsilon that training adds for finite gradients is not needed here);
- ``same_probability(first, second) -> {"same_probability": [batch]}``, only for a BCE run:
  the trained head ``sigmoid(w . |e1 - e2| + b)``, the probability of the same class.

Reload it with plain TensorFlow: ``tf.saved_model.load(path).signatures["serving_default"]``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import tensorflow as tf

from keras_siamese import models
from keras_siamese.evaluation import load_run_model
from keras_siamese.errors import OutputError
from keras_siamese.outputs import atomic_path

SAVED_MODEL = "saved_model"  # the export's folder name inside a run folder


def export_saved_model(model: keras.Model, path) -> Path:
    """Write ``model``'s embedding net (and a BCE model's head) as a SavedModel at ``path``.

    ``model`` is any model built by :mod:`keras_siamese.models` (or the embedding net
    itself). The folder appears complete or not at all.
    """
    embedding = models.embedding_of(model)
    image = tf.TensorSpec([None, *embedding.input_shape[1:]], tf.float32)

    archive = keras.export.ExportArchive()
    archive.track(embedding)
    archive.add_endpoint(
        "serving_default", lambda image: {"embedding": embedding(image, training=False)},
        input_signature=[image])

    def distance(first, second):
        difference = embedding(first, training=False) - embedding(second, training=False)
        return {"distance": tf.sqrt(tf.reduce_sum(tf.square(difference), axis=-1))}

    archive.add_endpoint("distance", distance, input_signature=[image, image])

    if model.name == "siamese_bce":
        head = model.get_layer("same_probability")
        archive.track(head)

        def same_probability(first, second):
            difference = tf.abs(embedding(first, training=False)
                                - embedding(second, training=False))
            return {"same_probability": tf.squeeze(head(difference), axis=-1)}

        archive.add_endpoint("same_probability", same_probability,
                             input_signature=[image, image])

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            archive.write_out(str(tmp), verbose=False)
            if path.exists():  # os.replace cannot replace a non-empty folder
                shutil.rmtree(path)
    except OSError as error:
        raise OutputError(f"cannot write the SavedModel to {path}: "
                          f"{error.strerror or error}") from None
    return path


def export_run(run_dir, out=None) -> Path:
    """Export the finished run in ``run_dir`` (its ``model.keras``) to ``out``, by default
    ``run_dir/saved_model``."""
    target = out if out is not None else Path(run_dir) / SAVED_MODEL
    return export_saved_model(load_run_model(run_dir), target)

