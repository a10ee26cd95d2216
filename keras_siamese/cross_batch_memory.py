"""Cross-batch memory (XBM; Wang, Zhang, Huang, Scott 2020, "Cross-Batch Memory for
Embedding Learning", CVPR): ``--memory N`` mines each batch's pairs and triplets against
the last N training embeddings as well as against the batch.

The paper's observation ("slow drift"): once the first rapid changes are over, the
embedding of an image changes little from one step to the next, so the embeddings of the
last few hundred batches are still useful references. A batch of B queries then meets
B + N references, with many more hard negatives among them, for the price of a larger
distance matrix; no image is embedded twice.

Where the memory lives, and why there
-------------------------------------
In the model, as weights. :class:`CrossBatchMemory` is a layer on the embedding net's
output that passes the embeddings through unchanged; its non-trainable weights ARE the
memory: ``embeddings`` (N, D) float32, ``labels`` (N,) int32, ``count`` (entries written
so far) and ``steps`` (training steps seen, for the warm-up), both int64. Being weights,
they go into every epoch's checkpoint and into ``model.keras``, and ``--resume`` restores
them with the weights and the optimiser state; as the streams re-draw epoch ``e`` from the
seed ``(seed, e)`` (:mod:`keras_siamese.streams`), a resumed run continues bit for bit as
an uninterrupted one (tested in ``tests/test_memory.py``). The memory costs ``N x (D + 1)``
numbers in those files; the exported embedding net does not carry it.

How the labels reach it: a Keras loss is given the labels but not whether it is training
or validating, a layer the other way round. So the online model with a memory is a
:class:`MemoryModel`, which overrides ``keras.Model.compute_loss``: Keras calls it with the
labels, the embeddings and ``training``.

- Training step: the references are the batch followed by the memory's filled slots
  (:func:`keras_siamese.mining.references`: memory embeddings detached, self-pairs and
  empty slots masked), the loss's ``batch_loss`` mines its pairs or triplets against
  them, and then the batch is written into the memory. (The reference code enqueues
  first and adds a batch-only and a memory term; here one mining step sees batch and
  memory together and a query never meets a detached copy of itself.)
- Validation: the loss of the batch alone, exactly as without a memory; the memory is
  neither read nor written, so ``val_loss`` stays comparable between runs.

Any loss with ``batch_loss(labels, embeddings, references)`` (every online loss of
:mod:`keras_siamese.losses`, and Multi-Similarity) trains with a memory; a variant says so
in its table entry (:mod:`keras_siamese.variants`).

FIFO: the next entry goes to slot ``count % N``, a ring buffer that holds the last N
training embeddings and labels; a batch of more than N keeps its last N. The memory
starts empty and fills up; slots not yet written are masked, never mined.

Warm-up, as in the paper (XBM starts after 1k iterations): during the first
``--memory-warmup`` training steps (default 1000) nothing is written, so the memory is
empty and the loss is the batch-only one: early embeddings drift fast and would be stale
references.

Cost: the pair losses' distance matrix is ``B x (B + N)``. The triplet miners' masks are
``B x (B + N) x (B + N)``, which limits their memory (``variants`` refuses more).

Not with ``--strategy``: every replica would write its own memory.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_siamese import mining

LAYER_NAME = "cross_batch_memory"


@keras.saving.register_keras_serializable(package="keras_siamese")
class CrossBatchMemory(keras.layers.Layer):
    """The last ``size`` training embeddings and their labels, as non-trainable weights
    (see the module doc); on the embedding net's output, where it changes nothing.

    Args:
        size: N, the number of slots.
        warmup: training steps (calls of :meth:`enqueue`) that write nothing.

    Example: a memory of 3 slots after batches of 2, then 2 entries (FIFO):
    >>> memory = CrossBatchMemory(3)
    >>> memory.build((None, 1))
    >>> memory.enqueue([[1.0], [2.0]], [1, 2])
    >>> memory.enqueue([[3.0], [4.0]], [3, 4])
    >>> memory.contents()[1].tolist()
    [2, 3, 4]
    """

    def __init__(self, size: int, warmup: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.warmup = int(warmup)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.embeddings = self.add_weight(shape=(self.size, dim), initializer="zeros",
                                          trainable=False, name="embeddings")
        self.labels = self.add_weight(shape=(self.size,), initializer="zeros", dtype="int32",
                                      trainable=False, name="labels")
        self.count = self.add_weight(shape=(), initializer="zeros", dtype="int64",
                                     trainable=False, name="count")
        self.steps = self.add_weight(shape=(), initializer="zeros", dtype="int64",
                                     trainable=False, name="steps")

    def call(self, embeddings):
        return embeddings

    def compute_output_shape(self, input_shape):
        return input_shape

    def filled(self) -> tf.Tensor:
        """How many slots hold entries: ``min(count, size)``, the slots ``0 .. filled-1``."""
        return tf.minimum(tf.convert_to_tensor(self.count), self.size)

    def references(self, embeddings, labels) -> mining.References:
        """The batch followed by the memory's slots, of which the empty ones are masked."""
        return mining.references(embeddings, labels, self.embeddings, self.labels,
                                 self.filled())

    def enqueue(self, embeddings, labels) -> None:
        """One training step: write the batch (detached) into the next slots, oldest
        first out, unless still warming up; count the step."""
        embeddings = tf.stop_gradient(tf.cast(embeddings, tf.float32))
        labels = tf.cast(tf.reshape(labels, (-1,)), tf.int32)
        batch = tf.shape(labels, out_type=tf.int64)[0]
        active = tf.convert_to_tensor(self.steps) >= self.warmup
        written = tf.where(active, batch, tf.constant(0, tf.int64))
        kept = tf.minimum(written, self.size)  # a batch larger than the memory: its last N
        first = batch - kept
        count = tf.convert_to_tensor(self.count)
        slots = (count + written - kept + tf.range(kept)) % self.size
        self.embeddings.assign(tf.tensor_scatter_nd_update(
            tf.convert_to_tensor(self.embeddings), slots[:, None], embeddings[first:]))
        self.labels.assign(tf.tensor_scatter_nd_update(
            tf.convert_to_tensor(self.labels), slots[:, None], labels[first:]))
        self.count.assign(count + written)
        self.steps.assign_add(tf.constant(1, tf.int64))

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings, labels)`` of the filled slots, oldest first (NumPy)."""
        count = int(self.count.numpy())
        order = np.arange(count) if count <= self.size else \
            (count + np.arange(self.size)) % self.size
        return self.embeddings.numpy()[order], self.labels.numpy()[order]

    def get_config(self):
        return {**super().get_config(), "size": self.size, "warmup": self.warmup}


@keras.saving.register_keras_serializable(package="keras_siamese")
class MemoryModel(keras.Model):
    """The online model with a cross-batch memory: image -> embedding net ->
    :class:`CrossBatchMemory`. Built like a functional model (``MemoryModel(inputs,
    outputs)``); its loss must have ``batch_loss(labels, embeddings, references)``.
    In training it mines against batch and memory, then writes the batch into the
    memory; in validation it takes the batch-only loss (see the module doc)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not training:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        if sample_weight is not None:
            raise ValueError("a loss mined against a cross-batch memory takes no "
                             "sample_weight: it is one mean over the mined pairs or triplets")
        memory = self.get_layer(LAYER_NAME)
        loss = self.loss.batch_loss(y, y_pred, memory.references(y_pred, y))
        # Written after the loss read the memory: TensorFlow keeps the program order of
        # reads and writes of one variable.
        memory.enqueue(y_pred, y)
        return loss


def memory_model(embedding: keras.Model, size: int, warmup: int) -> MemoryModel:
    """``image -> embedding -> memory`` of ``size`` slots, first written after ``warmup``
    training steps."""
    image = keras.Input(embedding.input_shape[1:], name="image")
    # float32 whatever the run's --precision: the memory holds embeddings as they are.
    output = CrossBatchMemory(size, warmup, name=LAYER_NAME, dtype="float32")(embedding(image))
    return MemoryModel(image, output, name="online_embedding")
