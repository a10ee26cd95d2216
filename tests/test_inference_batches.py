"""One batching rule for every inference path: evaluation's embed_images and the embed
command's Embedder (which may hold a SavedModel) cut images into the same batches."""

import numpy as np
import pytest

from keras_siamese import models
from keras_siamese.embed import Embedder


@pytest.mark.parametrize("size,batch", [((28, 28), 1024), ((16, 16), 1024), ((64, 64), 196),
                                        ((40, 30), 669), ((256, 256), 12), ((2000, 2000), 1)])
def test_batches_hold_as_many_pixels_as_1024_mnist_digits(size, batch):
    assert models.inference_batch_size(*size) == batch


def test_embedder_batches_by_the_same_rule():
    seen = []

    def record(x):
        seen.append(len(x))
        return x.reshape(len(x), -1)[:, :2] * 2.0

    embedder = Embedder.__new__(Embedder)  # as a loaded model would be, without the loading
    embedder.input_shape, embedder._embed = (64, 64, 1), record
    images = np.random.default_rng(0).integers(0, 256, (500, 64, 64, 1)).astype(np.float32)
    got = embedder(images)
    assert seen == [196, 196, 108]
    np.testing.assert_array_equal(got, images.reshape(500, -1)[:, :2] * 2.0)
