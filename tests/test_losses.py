import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siamese.distances import euclidean_distance
from keras_siamese.layers import EuclideanDistance, TripletDistances
from keras_siamese.losses import (ContrastiveLoss, OnlineContrastiveLoss, OnlineTripletLoss,
                                  TripletLoss, contrastive_loss, online_contrastive_loss,
                                  triplet_loss)


def contrastive_reference(y, d, margin):
    loss = np.empty(len(y))
    for i, (same, dist) in enumerate(zip(y, d)):  # one pair at a time, as in the paper
        loss[i] = 0.5 * dist**2 if same == 1 else 0.5 * max(0.0, margin - dist) ** 2
    return loss


def triplet_reference(d_ap, d_an, margin):
    return np.array([max(0.0, p**2 - n**2 + margin) for p, n in zip(d_ap, d_an)])


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
def test_contrastive_matches_reference(margin):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(np.float32)
    d = rng.uniform(0, 3, 200).astype(np.float32)
    d[:4] = [0.0, 0.0, margin, margin]  # d = 0 and exactly at the margin
    y[:4] = [1, 0, 1, 0]
    got = np.asarray(contrastive_loss(y, d, margin))
    np.testing.assert_allclose(got, contrastive_reference(y, d, margin), rtol=1e-6, atol=1e-7)
    assert got[0] == 0.0 and got[1] == pytest.approx(0.5 * margin**2) and got[3] == 0.0
    # Margin violations: negatives closer than the margin cost something, beyond it nothing.
    negatives = y == 0
    assert np.all(got[negatives & (d < margin)] > 0)
    assert np.all(got[negatives & (d >= margin)] == 0)


@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_matches_reference(margin):
    rng = np.random.default_rng(1)
    d = rng.uniform(0, 2, (300, 2)).astype(np.float32)
    d[0] = [0.0, 0.0]  # everything collapsed: loss = margin
    d[1] = [0.0, 5.0]  # easy triplet: no loss
    got = np.asarray(triplet_loss(np.zeros(300), d, margin))
    np.testing.assert_allclose(got, triplet_reference(d[:, 0], d[:, 1], margin), rtol=1e-5,
                               atol=1e-6)
    assert got[0] == pytest.approx(margin) and got[1] == 0.0


def test_loss_classes_reduce_to_the_mean_and_round_trip_their_config():
    y = np.array([1.0, 0.0, 0.0], np.float32)
    d = np.array([[0.3], [0.2], [1.5]], np.float32)
    loss = ContrastiveLoss(margin=0.8)
    assert float(loss(y, d)) == pytest.approx(contrastive_reference(y, d[:, 0], 0.8).mean())
    for cls, margin in [(ContrastiveLoss, 0.8), (TripletLoss, 0.3)]:
        original = cls(margin=margin)
        restored = keras.losses.deserialize(keras.losses.serialize(original))
        assert type(restored) is cls and restored.margin == margin


def test_gradients_stay_finite_when_embeddings_coincide():
    a = tf.Variable(np.ones((4, 2), np.float32))
    b = tf.Variable(np.ones((4, 2), np.float32))  # identical: d = 0
    n = tf.Variable(np.ones((4, 2), np.float32))
    with tf.GradientTape() as tape:
        d = EuclideanDistance()([a, b])
        total = tf.reduce_sum(contrastive_loss(np.array([1, 0, 1, 0]), d, 1.0))
        total += tf.reduce_sum(triplet_loss(None, TripletDistances()([a, b, n]), 1.0))
    grads = tape.gradient(total, [a, b, n])
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy()))
    # A hair apart (above the epsilon), the violated negative pair pushes the embeddings apart.
    with tf.GradientTape() as tape:
        d = EuclideanDistance()([a, b + 1e-3])
        total = tf.reduce_sum(contrastive_loss(np.zeros(4), d, 1.0))
    grad = tape.gradient(total, a).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad > 0)  # a moves away from b (loss falls)


def test_distance_has_epsilon_inside_the_root():
    a = np.zeros((1, 2), np.float32)
    assert float(euclidean_distance(a, a)[0]) == pytest.approx(np.sqrt(1e-9))
    assert float(euclidean_distance(a, a + [[3.0, 4.0]])[0]) == pytest.approx(5.0)


ONLINE_LOSSES = [lambda **kw: OnlineTripletLoss(0.5, "batch-all", **kw),
                 lambda **kw: OnlineTripletLoss(0.5, "semi-hard", **kw),
                 lambda **kw: OnlineContrastiveLoss(0.5, **kw)]


@pytest.mark.parametrize("make", ONLINE_LOSSES)
@pytest.mark.parametrize("reduction", ["sum", "mean", "none", None, "mean_with_sample_weight"])
def test_online_losses_refuse_a_reduction_they_cannot_honour(make, reduction):
    # The loss is one mean over the batch's mined pairs or triplets: "sum" would multiply
    # it by the batch size, "none" would hand out copies of it as per-example losses.
    with pytest.raises(ValueError, match="only reduction='sum_over_batch_size'.*whole batch"):
        make(reduction=reduction)


@pytest.mark.parametrize("make", ONLINE_LOSSES)
def test_online_losses_refuse_sample_weights(make):
    labels = np.array([0, 0, 1, 1, 2, 2])
    e = np.random.default_rng(3).normal(size=(6, 2)).astype(np.float32)
    loss = make()
    assert np.isfinite(float(loss(labels, e)))
    for weights in (np.ones(6, np.float32), np.array([1, 0, 1, 0, 1, 0], np.float32)):
        with pytest.raises(ValueError, match="no sample_weight"):
            loss(labels, e, sample_weight=weights)
    # Also as Keras passes them, from fit(..., sample_weight=...).
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=loss)
    with pytest.raises(ValueError, match="no sample_weight"):
        model.fit(e, labels, sample_weight=np.ones(6, np.float32), batch_size=6, epochs=1,
                  verbose=0)


@pytest.mark.parametrize("make", ONLINE_LOSSES)
def test_online_losses_reload_with_their_reduction(make, tmp_path):
    loss = make()
    config = keras.losses.serialize(loss)
    assert config["config"]["reduction"] == "sum_over_batch_size"
    again = keras.losses.deserialize(config)
    assert type(again) is type(loss) and again.get_config() == loss.get_config()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=loss)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(reloaded.loss) is type(loss) and reloaded.loss.get_config() == loss.get_config()


def test_online_contrastive_loss_is_contrastive_loss_over_the_mined_pairs():
    """Brute force in float64: every positive pair (i < j), as many nearest negative pairs,
    the contrastive loss of each (d with the epsilon inside the root), their mean."""
    rng = np.random.default_rng(7)
    for labels, e in [(rng.integers(0, 3, 10), rng.normal(size=(10, 3))),
                      (np.array([0, 0, 1, 1, 1]), np.array([[0, 0], [0, 0], [0.3, 0], [2, 0],
                                                            [0, 0]], float))]:  # duplicates
        d = np.sqrt(np.maximum(((e[:, None] - e[None]) ** 2).sum(-1), 1e-9))
        pairs = [(i, j) for i in range(len(e)) for j in range(i + 1, len(e))]
        positive = [ij for ij in pairs if labels[ij[0]] == labels[ij[1]]]
        negative = sorted((ij for ij in pairs if labels[ij[0]] != labels[ij[1]]),
                          key=lambda ij: d[ij])[:len(positive)]
        chosen = positive + negative
        y = np.array([1.0] * len(positive) + [0.0] * len(negative))
        expected = contrastive_reference(y, np.array([d[ij] for ij in chosen]), 0.8).mean()
        got = float(online_contrastive_loss(labels, e.astype(np.float32), 0.8))
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert float(OnlineContrastiveLoss(0.8)(labels, e.astype(np.float32))) == \
            pytest.approx(expected, rel=1e-5, abs=1e-6)
