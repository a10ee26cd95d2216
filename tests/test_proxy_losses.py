"""Proxy-Anchor, ArcFace and CosFace, and the class-vector head, against brute-force NumPy
loops of the papers' formulas; the proxies' learning-rate multiplier; .keras round trips."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siamese import models
from keras_siamese.proxy_losses import (ArcFaceLoss, ClassProxies, CosFaceLoss, ProxyAnchorLoss,
                                        arcface_loss, cosface_loss, proxy_anchor_loss)


def brute_cosines(e, proxies):
    """cos to the nearest sub-centre of each class; proxies (C, K, D)."""
    e, proxies = np.asarray(e, np.float64), np.asarray(proxies, np.float64)
    out = np.empty((len(e), len(proxies)))
    for i, x in enumerate(e):
        for j, centres in enumerate(proxies):
            out[i, j] = max(x @ c / (np.linalg.norm(x) * np.linalg.norm(c)) for c in centres)
    return out


def brute_proxy_anchor(labels, cos, alpha=32.0, delta=0.1):
    """Kim et al. 2020, Eq. 4: a term per proxy with positives, and per proxy."""
    cos, pulls, pushes = np.asarray(cos, np.float64), [], []
    for p in range(cos.shape[1]):
        positives = [i for i in range(len(labels)) if labels[i] == p]
        negatives = [i for i in range(len(labels)) if labels[i] != p]
        if positives:
            pulls.append(math.log(1 + sum(math.exp(-alpha * (cos[i, p] - delta))
                                          for i in positives)))
        pushes.append(math.log(1 + sum(math.exp(alpha * (cos[i, p] + delta))
                                       for i in negatives)))
    return (sum(pulls) / len(pulls) if pulls else 0.0) + sum(pushes) / len(pushes)


def brute_softmax_margin(labels, cos, target_logit, s):
    """-log softmax of the image's class, its logit from ``target_logit(cos)``."""
    cos, losses = np.asarray(cos, np.float64), []
    for i, y in enumerate(labels):
        logits = [s * target_logit(c) if j == y else s * c for j, c in enumerate(cos[i])]
        top = max(logits)
        losses.append(-(logits[y] - top - math.log(sum(math.exp(v - top) for v in logits))))
    return np.array(losses)


def arcface_target(m):
    """cos(theta + m) (Deng et al. 2019, Eq. 3); past theta + m = pi the official code's
    cos(theta) - m sin(m)."""
    def target(c):
        theta = math.acos(min(1.0, max(-1.0, c)))
        return math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
    return target


def brute_arcface(labels, cos, s=64.0, m=0.5):
    return brute_softmax_margin(labels, cos, arcface_target(m), s)


def brute_cosface(labels, cos, s=64.0, m=0.35):
    return brute_softmax_margin(labels, cos, lambda c: c - m, s)


def random_cosines(seed, n=9, classes=4):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, n), rng.uniform(-1, 1, (n, classes)).astype(np.float32)


BATCHES = {
    "random": random_cosines(0),
    "random, far apart": random_cosines(1, n=12, classes=3),
    "one class": (np.zeros(5, np.int64), random_cosines(2, n=5)[1]),
    "all equal": (np.array([0, 1, 2, 0]), np.full((4, 3), 0.3, np.float32)),
    # ties, images on their centres (cos 1), opposite them (cos -1), and past pi - m
    "ties": (np.array([0, 1, 1, 2, 0]),
             np.array([[1.0, 1.0, -1.0], [0.2, 0.2, 0.2], [-1.0, 1.0, 1.0],
                       [-0.95, -0.95, -0.95], [-0.9, 0.5, 0.5]], np.float32)),
}


@pytest.mark.parametrize("batch", BATCHES, ids=list(BATCHES))
def test_proxy_anchor_matches_the_paper(batch):
    labels, cos = BATCHES[batch]
    assert float(proxy_anchor_loss(labels, cos)) == pytest.approx(
        brute_proxy_anchor(labels, cos), rel=1e-5, abs=1e-5)
    assert float(ProxyAnchorLoss(alpha=16.0, delta=0.2)(labels, cos)) == pytest.approx(
        brute_proxy_anchor(labels, cos, 16.0, 0.2), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("batch", BATCHES, ids=list(BATCHES))
def test_arcface_matches_the_paper(batch):
    labels, cos = BATCHES[batch]
    np.testing.assert_allclose(arcface_loss(labels, cos).numpy(), brute_arcface(labels, cos),
                               rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(ArcFaceLoss(scale=30.0, margin=0.3, reduction=None)(labels, cos),
                               brute_arcface(labels, cos, 30.0, 0.3), rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("batch", BATCHES, ids=list(BATCHES))
def test_cosface_matches_the_paper(batch):
    labels, cos = BATCHES[batch]
    np.testing.assert_allclose(cosface_loss(labels, cos).numpy(), brute_cosface(labels, cos),
                               rtol=1e-5, atol=2e-4)
    assert float(CosFaceLoss()(labels, cos)) == pytest.approx(
        brute_cosface(labels, cos).mean(), rel=1e-5, abs=2e-4)


def test_arcface_target_logit_keeps_falling_past_pi_minus_m():
    """cos(theta + m) rises again once theta + m > pi; the target logit does not."""
    theta = np.linspace(0.0, math.pi, 200)
    cos = np.stack([np.cos(theta), np.zeros_like(theta)], axis=1).astype(np.float32)
    losses = arcface_loss(np.zeros(len(theta), np.int64), cos).numpy()
    assert np.all(np.diff(losses) >= -1e-4)  # the farther from its centre, the larger


@pytest.mark.parametrize("sub_centers", [1, 3])
def test_head_gives_the_cosine_to_the_nearest_sub_centre(sub_centers):
    rng = np.random.default_rng(4)
    head = ClassProxies(5, sub_centers=sub_centers, lr_multiplier=10.0)
    e = rng.normal(size=(7, 4)).astype(np.float32)
    got = head(e).numpy()
    proxies = head.proxies.numpy()
    assert got.shape == (7, 5) and proxies.shape == (5, sub_centers, 4)
    np.testing.assert_allclose(proxies.reshape(-1, 4), 10.0 * head.scaled_proxies.numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(got, brute_cosines(e, proxies), rtol=1e-5, atol=1e-6)


LOSSES = {"proxy-anchor": ProxyAnchorLoss, "arcface": ArcFaceLoss, "cosface": CosFaceLoss}


@pytest.mark.parametrize("make", LOSSES.values(), ids=list(LOSSES))
@pytest.mark.parametrize("sub_centers", [1, 2])
def test_gradients_stay_finite_on_the_centres(make, sub_centers):
    """Images exactly on their class's vectors (cos 1), all images equal, one class: the
    loss and its gradients (embeddings and proxies) are finite."""
    head = ClassProxies(3, sub_centers=sub_centers)
    head.build((None, 4))
    centres = head.proxies.numpy()[:, 0, :]  # each class's first sub-centre
    for labels, e in [(np.array([0, 1, 2, 2]), centres[[0, 1, 2, 2]]),
                      (np.array([0, 1, 2, 0]), np.repeat(centres[:1], 4, axis=0)),
                      (np.zeros(4, np.int64), centres[[0, 0, 1, 2]])]:
        embeddings = tf.Variable(e)
        with tf.GradientTape() as tape:
            loss = make()(labels, head(embeddings))
        grads = tape.gradient(loss, [embeddings, head.scaled_proxies])
        assert np.isfinite(float(loss))
        assert all(np.isfinite(g.numpy()).all() for g in grads)


def _tiny_proxy_model(lr_multiplier, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    features = keras.layers.Dense(4, name="features")(inputs)
    head = ClassProxies(2, lr_multiplier=lr_multiplier, name="proxies")
    model = keras.Model(inputs, head(features))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ProxyAnchorLoss())
    return model


def test_proxies_learn_lr_multiplier_times_faster():
    """One Adam step moves every weight by about the learning rate (the gradient's sign):
    the network's by 1e-3, the stored V by 1e-3 too, so the proxies P = 100 V by 0.1."""
    x = np.random.default_rng(5).normal(size=(8, 3)).astype(np.float32)
    y = np.array([0, 1] * 4)
    moved = {}
    for c in (1.0, 100.0):
        model = _tiny_proxy_model(c)
        head = model.get_layer("proxies")
        before = head.proxies.numpy(), model.get_layer("features").kernel.numpy()
        model.train_on_batch(x, y)
        after = head.proxies.numpy(), model.get_layer("features").kernel.numpy()
        proxy_step, network_step = (np.abs(a - b) for a, b in zip(after, before))
        np.testing.assert_allclose(proxy_step, c * 1e-3, rtol=1e-3)
        np.testing.assert_allclose(network_step, 1e-3, rtol=1e-3)
        moved[c] = proxy_step
    np.testing.assert_allclose(moved[100.0] / moved[1.0], 100.0, rtol=1e-3)


def test_faster_proxies_turn_further():
    """Over several steps, with the proxies' directions (all the loss sees) compared."""
    x = np.random.default_rng(6).normal(size=(16, 3)).astype(np.float32)
    y = np.array([0, 1] * 8)
    turned = {}
    for c in (1.0, 100.0):
        model = _tiny_proxy_model(c)
        head = model.get_layer("proxies")
        start = tf.math.l2_normalize(head.proxies, axis=-1).numpy()
        for _ in range(5):
            model.train_on_batch(x, y)
        end = tf.math.l2_normalize(head.proxies, axis=-1).numpy()
        turned[c] = np.arccos(np.clip((start * end).sum(-1), -1, 1)).mean()
    assert turned[100.0] > 10 * turned[1.0]


def test_proxy_anchor_refuses_sample_weights_and_other_reductions():
    with pytest.raises(ValueError, match="one mean over the proxies"):
        ProxyAnchorLoss(reduction="sum")
    with pytest.raises(ValueError, match="takes no sample_weight"):
        ProxyAnchorLoss()(np.array([0, 1]), np.zeros((2, 2), np.float32), sample_weight=[1, 2])


@pytest.mark.parametrize("loss,sub_centers", [(ProxyAnchorLoss(delta=0.2), 1),
                                              (ArcFaceLoss(margin=0.4), 3),
                                              (CosFaceLoss(scale=30.0), 2)],
                         ids=["proxy-anchor", "arcface", "cosface"])
def test_keras_file_round_trip(tmp_path, loss, sub_centers):
    """A class-proxy model reloads compiled, with its head's settings and its vectors; its
    embedding net is still found as the ``embedding`` sub-model, unit vectors and all."""
    embedding = models.embedding_net((28, 28, 1), 3, normalize=True)
    head = ClassProxies(10, sub_centers=sub_centers, lr_multiplier=100.0, name="proxies")
    model = models.proxy_model(embedding, head)
    model.compile(optimizer="adam", loss=loss)
    x = np.random.default_rng(7).uniform(0, 255, (6, 28, 28, 1)).astype(np.float32)
    model.fit(x, np.arange(6), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert type(restored.loss) is type(loss) and restored.loss.get_config() == loss.get_config()
    restored_head = restored.get_layer("proxies")
    assert (restored_head.sub_centers, restored_head.lr_multiplier) == (sub_centers, 100.0)
    np.testing.assert_array_equal(restored_head.proxies.numpy(), head.proxies.numpy())
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    found = models.embedding_of(restored)
    assert found.name == "embedding" and found.layers[-1].name == "unit_normalize"
    np.testing.assert_allclose(np.linalg.norm(models.embed_images(found, x), axis=1), 1.0,
                               rtol=1e-5)
