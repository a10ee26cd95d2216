import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_siamese import models
from keras_siamese.losses import ContrastiveLoss, TripletLoss


@pytest.fixture
def embedding():
    keras.utils.set_random_seed(0)
    return models.embedding_net((28, 28, 1), embedding_dim=2, mean=33.3, std=78.6)


def images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 28, 28, 1)).astype(np.float32)


def test_embedding_net_is_the_studys_network(embedding):
    names = [layer.name for layer in embedding.layers]
    assert names == ["image", "normalize", "conv1", "prelu1", "pool1", "conv2", "prelu2",
                     "pool2", "flatten", "fc1", "prelu3", "fc2", "prelu4", "fc_embedding"]
    assert embedding.get_layer("conv1").kernel.shape == (5, 5, 1, 32)
    assert embedding.get_layer("conv2").kernel.shape == (5, 5, 32, 64)
    assert embedding.get_layer("fc1").kernel.shape == (4 * 4 * 64, 256)
    assert embedding.output_shape == (None, 2)
    # Normalisation is inside the model: raw 0..255 pixels in.
    x = np.full((1, 28, 28, 1), 33.3, np.float32)
    np.testing.assert_allclose(embedding.get_layer("normalize")(x), 0.0, atol=1e-5)


@pytest.mark.parametrize("build", [models.contrastive_model, models.bce_model,
                                   models.triplet_model,
                                   lambda e: models.classifier_model(e, 10)])
def test_models_share_one_embedding_instance(embedding, build):
    model = build(embedding)
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert nested == [embedding]  # ONE sub-model, called on every input branch
    embedding_ids = {id(w) for w in embedding.weights}
    model_weights = [id(w) for w in model.weights]
    assert len(model_weights) == len(set(model_weights))  # no duplicated variables
    assert embedding_ids <= set(model_weights)


def test_one_shared_update_per_step_sums_both_branches(embedding):
    """With plain SGD, one train step changes the shared weights by exactly
    -lr * (gradient through branch 1 + gradient through branch 2)."""
    import tensorflow as tf

    model = models.contrastive_model(embedding)
    lr = 0.01
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=ContrastiveLoss(1.0))
    x1, x2 = images(8, 1), images(8, 2)
    y = np.array([1, 0] * 4, np.float32)
    before = [w.numpy().copy() for w in embedding.trainable_weights]
    with tf.GradientTape() as tape:
        loss = ContrastiveLoss(1.0)(y, model([x1, x2]))
    grads = tape.gradient(loss, embedding.trainable_weights)
    model.train_on_batch([x1, x2], y)
    assert int(model.optimizer.iterations) == 1
    for w, w0, g in zip(embedding.trainable_weights, before, grads):
        np.testing.assert_allclose(w.numpy(), w0 - lr * g.numpy(), rtol=1e-4, atol=1e-6)
    assert any(np.any(w.numpy() != w0) for w, w0 in zip(embedding.trainable_weights, before))


def test_output_shapes(embedding):
    x = images(3)
    assert models.contrastive_model(embedding)([x, x]).shape == (3, 1)
    assert np.all(np.asarray(models.contrastive_model(embedding)([x, x])) < 1e-3)
    p = np.asarray(models.bce_model(embedding)([x, x]))
    assert p.shape == (3, 1) and np.all((p > 0) & (p < 1))
    assert models.triplet_model(embedding)([x, x, x]).shape == (3, 2)
    probs = np.asarray(models.classifier_model(embedding, 10)(x))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


ROUND_TRIP = """
import sys, numpy as np, keras
import keras_siamese  # registers the package's layers and losses
model = keras.models.load_model(sys.argv[1])  # no custom_objects
x = np.load(sys.argv[2])
np.save(sys.argv[3], model([x] * len(model.inputs) if len(model.inputs) > 1 else x))
print(type(model.loss).__name__, getattr(model.loss, "margin", None))
"""


@pytest.mark.parametrize("kind", ["contrastive", "triplet"])
def test_keras_file_round_trip_in_a_fresh_process(tmp_path, embedding, kind):
    if kind == "contrastive":
        model, loss = models.contrastive_model(embedding), ContrastiveLoss(0.7)
    else:
        model, loss = models.triplet_model(embedding), TripletLoss(0.3)
    model.compile(optimizer="adam", loss=loss)
    x = images(4, 3)
    np.save(tmp_path / "x.npy", x)
    model.save(tmp_path / "model.keras")
    out = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(tmp_path / "model.keras"),
                          str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [type(loss).__name__, str(loss.margin)]
    expected = model([x] * len(model.inputs))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)


def test_bce_model_round_trips(tmp_path, embedding):
    model = models.bce_model(embedding)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.save(tmp_path / "bce.keras")
    restored = keras.models.load_model(tmp_path / "bce.keras")
    x = images(2)
    np.testing.assert_allclose(restored([x, x[::-1]]), model([x, x[::-1]]), rtol=1e-6)


def test_normalize_ends_the_embedding_net_in_unit_vectors_ranked_as_by_cosine():
    """--normalize: the net's last layer makes unit vectors, whose squared Euclidean
    distance is 2 - 2 cos, so nearest neighbours by distance are those by cosine."""
    keras.utils.set_random_seed(0)
    net = models.embedding_net((28, 28, 1), 8, mean=33.3, std=78.6, normalize=True)
    assert isinstance(net.layers[-1], keras.layers.UnitNormalization)
    assert [layer.name for layer in net.layers][-2:] == ["fc_embedding", "unit_normalize"]
    e = models.embed_images(net, images(40, 4)).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    d2 = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    cos = e @ e.T
    np.testing.assert_allclose(d2, 2 - 2 * cos, atol=1e-6)
    for row_d2, row_cos in zip(d2, cos):
        assert np.all(np.diff(row_cos[np.argsort(row_d2)]) <= 1e-6)  # nearest first
    # Without it the net is as ever, its embeddings not unit vectors.
    plain = models.embedding_net((28, 28, 1), 8)
    assert plain.layers[-1].name == "fc_embedding"
