"""tf.data streams of pairs, triplets and labelled images for training and evaluation.

Label convention for pairs: ``y = 1`` means the two images show the SAME class,
``y = 0`` DIFFERENT classes.

Training streams are endless and re-sampled every epoch: epoch ``e`` draws its
indices from the stateless seed ``(seed, e)``, so a run is repeatable and can resume
at any epoch. Every epoch has one example per training image (that image is the
anchor), batched within the epoch, so ``steps_per_epoch(n, batch_size)`` batches of the
stream are exactly one epoch. Evaluation streams are finite and drawn once from the
test split with the fixed ``EVAL_SEED``, so every run is scored on the same examples.

Only indices are sampled (vectorised TensorFlow ops, no per-example Python); images are
gathered per batch from one in-memory uint8 tensor and cast to float32 raw pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_siamese.errors import ConfigError, DataError
from keras_siamese.image_cache import DiskImages

EVAL_SEED = 20061984  # fixed: the evaluation examples never depend on the training seed
AUTOTUNE = tf.data.AUTOTUNE


class ClassIndex(NamedTuple):
    """Lookup tables to draw same-class and other-class partners with vectorised ops.

    ``order`` lists the example indices sorted by class; class ``c`` occupies
    ``order[start[c] : start[c] + count[c]]`` and example ``i`` sits at
    ``start[cls[i]] + rank[i]`` there.
    """

    cls: tf.Tensor  # (N,) class position 0..K-1 of each example
    order: tf.Tensor
    start: tf.Tensor
    count: tf.Tensor
    rank: tf.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.count.shape[0])


def class_index(labels: np.ndarray) -> ClassIndex:
    """Build the :class:`ClassIndex` of a label array; every class needs two or more examples."""
    labels = np.asarray(labels)
    classes, cls, count = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"pairs and triplets need at least 2 classes, got {len(classes)}")
    if count.min() < 2:
        raise DataError(f"class {classes[count.argmin()]} has a single example: pairs and "
                        "triplets need at least 2 per class")
    order = np.argsort(cls, kind="stable")
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    rank = np.empty(len(cls), np.int64)
    rank[order] = np.arange(len(cls)) - start[cls[order]]
    return ClassIndex(*(tf.constant(a, tf.int32) for a in (cls, order, start, count, rank)))


def _uniform_below(n: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One uniform integer in [0, n) per element of ``n`` (int32), from a stateless seed."""
    u = tf.random.stateless_uniform(tf.shape(n), seed, dtype=tf.float64)
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, tf.float64)), tf.int32), n - 1)


def _seed(seed: int, epoch, stream: int) -> tf.Tensor:
    # A distinct stateless seed per (run seed, epoch, random draw).
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * 8 + stream])


def _anchors(index: ClassIndex, seed: int, epoch) -> tf.Tensor:
    """Every example once, in a fresh random order."""
    u = tf.random.stateless_uniform(tf.shape(index.cls), _seed(seed, epoch, 0))
    return tf.cast(tf.argsort(u), tf.int32)


def _positives(index: ClassIndex, anchors, seed: int, epoch) -> tf.Tensor:
    """Another example of the anchor's class, never the anchor itself."""
    cls = tf.gather(index.cls, anchors)
    count = tf.gather(index.count, cls)
    # Skip 1..count-1 places ahead of the anchor within its class, wrapping around.
    step = 1 + _uniform_below(count - 1, _seed(seed, epoch, 1))
    slot = (tf.gather(index.rank, anchors) + step) % count
    return tf.gather(index.order, tf.gather(index.start, cls) + slot)


def _negatives(index: ClassIndex, anchors, seed: int, epoch) -> tf.Tensor:
    """An example of a uniformly chosen other class."""
    k = index.num_classes
    cls = tf.gather(index.cls, anchors)
    other = (cls + 1 + _uniform_below(tf.fill(tf.shape(cls), k - 1), _seed(seed, epoch, 2))) % k
    slot = _uniform_below(tf.gather(index.count, other), _seed(seed, epoch, 3))
    return tf.gather(index.order, tf.gather(index.start, other) + slot)


def sample_pairs(index: ClassIndex, seed: int, epoch):
    """One epoch of pairs: returns ``(first, second, same)``, ``same`` 1.0 for same class.

    Each example is the first image once; exactly half the pairs (rounded up) are positive.
    """
    anchors = _anchors(index, seed, epoch)
    is_positive = tf.range(tf.size(anchors)) % 2 == 0
    partners = tf.where(is_positive, _positives(index, anchors, seed, epoch),
                        _negatives(index, anchors, seed, epoch))
    return anchors, partners, tf.cast(is_positive, tf.float32)


def sample_triplets(index: ClassIndex, seed: int, epoch):
    """One epoch of triplets ``(anchor, positive, negative)``, each example the anchor once."""
    anchors = _anchors(index, seed, epoch)
    return (anchors, _positives(index, anchors, seed, epoch),
            _negatives(index, anchors, seed, epoch))


def sample_pk_batches(index: ClassIndex, classes_per_batch: int, images_per_class: int,
                      steps: int, seed: int, epoch) -> tf.Tensor:
    """``steps`` balanced batches, flattened: each holds ``classes_per_batch`` (P) distinct
    classes with ``images_per_class`` (K) distinct images each, class by class.

    The P classes are the first P of a fresh random order of all classes; a class's K
    images are K consecutive places, from a random start, in a fresh random order of its
    members (wrapping around), so they are distinct when the class has K or more.
    """
    p, k = classes_per_batch, images_per_class
    u = tf.random.stateless_uniform((steps, index.num_classes), _seed(seed, epoch, 4))
    classes = tf.reshape(tf.argsort(u, axis=1)[:, :p], (-1,))  # (steps * P,)
    # Members of each class in a fresh random order: sort by (class, random key).
    key = tf.cast(index.cls, tf.float64) + tf.random.stateless_uniform(
        tf.shape(index.cls), _seed(seed, epoch, 5), dtype=tf.float64)
    shuffled = tf.cast(tf.argsort(key), tf.int32)
    count = tf.gather(index.count, classes)
    first = _uniform_below(count, _seed(seed, epoch, 6))
    slots = (first[:, None] + tf.range(k)[None, :]) % count[:, None]  # (steps * P, K)
    return tf.reshape(tf.gather(shuffled, tf.gather(index.start, classes)[:, None] + slots),
                      (-1,))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def _gatherer(images):
    """Index batch -> float32 pixels: gathered from a constant of in-memory images, or
    read row by row from streamed ones (:class:`image_cache.DiskImages`), which are never
    all in memory; both give the same values."""
    if isinstance(images, DiskImages):
        shape = images.image_shape

        def read(idx):
            # stateful=False: the rows are a pure function of idx, so tf.data may run
            # batches in parallel (their order is kept: deterministic).
            pixels = tf.numpy_function(images.take, [idx], tf.uint8, stateful=False)
            pixels.set_shape((None, *shape))
            return tf.cast(pixels, tf.float32)

        return read

    pixels = tf.constant(images)  # uint8, kept once in memory; batches are gathered from it

    def gather(idx):
        return tf.cast(tf.gather(pixels, idx), tf.float32)

    return gather


def _endless(epoch_sample, batch_size: int, start_epoch: int) -> tf.data.Dataset:
    """Epochs start_epoch, start_epoch+1, ... each sampled afresh and batched on its own."""
    epochs = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max)
    return epochs.flat_map(
        lambda epoch: tf.data.Dataset.from_tensor_slices(epoch_sample(epoch)).batch(batch_size)
    )


def _finish(dataset: tf.data.Dataset, to_element) -> tf.data.Dataset:
    return dataset.map(to_element, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _labelled_element(images, labels):
    """Index batch -> ``(images, labels)``, both gathered from in-memory tensors."""
    gather = _gatherer(images)
    label_tensor = tf.constant(np.asarray(labels), tf.int32)
    return lambda idx: (gather(idx), tf.gather(label_tensor, idx))


def _pair_element(gather):
    return lambda first, second, same: ((gather(first), gather(second)), same)


def _triplet_element(gather):
    # Triplet losses ignore y_true; Keras still wants one, so it is a zero per triplet.
    return lambda a, p, n: ((gather(a), gather(p), gather(n)), tf.zeros(tf.shape(a), tf.float32))


def pair_stream(images, labels, batch_size: int, seed: int, start_epoch: int = 0):
    """Endless training pairs ``((x1, x2), y)``, y = 1 same class, 0 different."""
    index = class_index(labels)
    stream = _endless(lambda e: sample_pairs(index, seed, e), batch_size, start_epoch)
    return _finish(stream, _pair_element(_gatherer(images)))


def triplet_stream(images, labels, batch_size: int, seed: int, start_epoch: int = 0):
    """Endless training triplets ``((anchor, positive, negative), 0)``."""
    index = class_index(labels)
    stream = _endless(lambda e: sample_triplets(index, seed, e), batch_size, start_epoch)
    return _finish(stream, _triplet_element(_gatherer(images)))


def image_stream(images, labels, batch_size: int, seed: int, start_epoch: int = 0):
    """Endless shuffled training batches ``(x, label)`` for the classifier."""
    index = class_index(labels)
    stream = _endless(lambda e: _anchors(index, seed, e), batch_size, start_epoch)
    return _finish(stream, _labelled_element(images, labels))


def check_pk(labels, classes_per_batch: int, images_per_class: int) -> None:
    """A P x K batch needs P classes and K distinct images of each."""
    _, count = np.unique(np.asarray(labels), return_counts=True)
    if classes_per_batch > len(count):
        raise ConfigError(f"--classes-per-batch {classes_per_batch}: only {len(count)} classes "
                          "to draw from")
    if images_per_class > count.min():
        raise ConfigError(f"--images-per-class {images_per_class}: the smallest class has only "
                          f"{count.min()} images")


def pk_stream(images, labels, classes_per_batch: int, images_per_class: int, seed: int,
              start_epoch: int = 0):
    """Endless balanced batches ``(x, label)`` of P classes x K images for online mining;
    an epoch is ``steps_per_epoch(N, P * K)`` batches, about N images."""
    check_pk(labels, classes_per_batch, images_per_class)
    index = class_index(labels)
    batch = classes_per_batch * images_per_class
    steps = steps_per_epoch(len(labels), batch)
    stream = _endless(lambda e: sample_pk_batches(index, classes_per_batch, images_per_class,
                                                  steps, seed, e), batch, start_epoch)
    return _finish(stream, _labelled_element(images, labels))


def evaluation_pk_batches(images, labels, classes_per_batch: int, images_per_class: int):
    """Fixed P x K batches ``(x, label)`` drawn once from (test) images with EVAL_SEED."""
    check_pk(labels, classes_per_batch, images_per_class)
    batch = classes_per_batch * images_per_class
    sample = sample_pk_batches(class_index(labels), classes_per_batch, images_per_class,
                               steps_per_epoch(len(labels), batch), EVAL_SEED, 0)
    stream = tf.data.Dataset.from_tensor_slices(sample).batch(batch)
    return _finish(stream, _labelled_element(images, labels))


def _vae_element(x, label):
    # The image is its own target; the KL term ignores its (dummy) target.
    del label
    return x, {"reconstruction": x, "posterior": tf.zeros((tf.shape(x)[0], 1))}


def vae_stream(images, labels, batch_size: int, seed: int, start_epoch: int = 0):
    """Endless shuffled batches for the VAE: ``(x, {"reconstruction": x, "posterior": 0})``."""
    return image_stream(images, labels, batch_size, seed, start_epoch).map(_vae_element)


def evaluation_vae_images(images, labels, batch_size: int):
    """All (test) images in stored order, as :func:`vae_stream` gives them."""
    return evaluation_images(images, labels, batch_size).map(_vae_element)


def evaluation_pairs(images, labels, batch_size: int):
    """The fixed evaluation pairs ``((x1, x2), y)`` drawn from (test) images with EVAL_SEED."""
    sample = sample_pairs(class_index(labels), EVAL_SEED, 0)
    stream = tf.data.Dataset.from_tensor_slices(sample).batch(batch_size)
    return _finish(stream, _pair_element(_gatherer(images)))


def evaluation_triplets(images, labels, batch_size: int):
    """The fixed evaluation triplets ``((anchor, positive, negative), 0)`` from EVAL_SEED."""
    sample = sample_triplets(class_index(labels), EVAL_SEED, 0)
    stream = tf.data.Dataset.from_tensor_slices(sample).batch(batch_size)
    return _finish(stream, _triplet_element(_gatherer(images)))


def evaluation_images(images, labels, batch_size: int):
    """All images ``(x, label)`` in their stored order."""
    stream = tf.data.Dataset.from_tensor_slices(np.arange(len(labels), dtype=np.int32))
    return _finish(stream.batch(batch_size), _labelled_element(images, labels))
