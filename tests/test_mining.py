"""Online mining and online losses against brute-force enumeration over every pair and
triplet of small batches (NumPy, float64)."""


import numpy as np
import pytest
import tensorflow as tf

from helpers import brute_contrastive, brute_triplet
from keras_siamese import mining
from keras_siamese.losses import (OnlineContrastiveLoss, OnlineTripletLoss,
                                  online_contrastive_loss, online_triplet_loss)


def brute_d2(e):
    e = np.asarray(e, np.float64)
    return ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)


def batches():
    rng = np.random.default_rng(0)
    yield "random", rng.integers(0, 3, 12), rng.normal(size=(12, 4))
    yield "random 2-D wide", rng.integers(0, 4, 16), 2.0 * rng.normal(size=(16, 2))
    # Integer points with duplicates: many exactly tied distances, two coinciding embeddings.
    yield "ties", np.array([0, 0, 1, 1, 2, 2, 0, 1]), np.array(
        [[0, 0], [1, 0], [0, 1], [1, 1], [0, 0], [2, 0], [1, 0], [0, 0]], float)
    yield "single member class", np.array([0, 0, 0, 1, 2, 2]), rng.normal(size=(6, 3))
    yield "margin violations", np.array([0, 0, 1, 1]), np.array(
        [[0, 0], [3, 0], [0.1, 0], [3, 0.2]], float)


CASES = list(batches())


@pytest.mark.parametrize("rule", mining.TRIPLET_MINERS)
@pytest.mark.parametrize("name,labels,e", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_online_triplet_loss_matches_enumeration(rule, name, labels, e, margin):
    got = float(online_triplet_loss(labels, e.astype(np.float32), margin, rule))
    assert got == pytest.approx(brute_triplet(labels, e, margin, rule), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("name,labels,e", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("margin", [0.5, 2.0])
def test_online_contrastive_loss_matches_enumeration(name, labels, e, margin):
    got = float(online_contrastive_loss(labels, e.astype(np.float32), margin))
    assert got == pytest.approx(brute_contrastive(labels, e, margin), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("labels", [[1, 1, 1, 1], [0, 1, 2, 3]], ids=["one class", "no pairs"])
def test_batches_without_a_valid_triplet_select_nothing_and_cost_zero(labels):
    e = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    d2 = mining.squared_distances(e)
    for rule, miner in mining.TRIPLET_MINERS.items():
        assert not bool(tf.reduce_any(miner(tf.constant(labels), d2))), rule
        assert float(online_triplet_loss(labels, e, 1.0, rule)) == 0.0
    positive, _ = mining.hard_negative_pairs(tf.constant(labels), d2)
    if labels[0] == labels[1]:  # one class: positives only, no negative pair exists
        assert int(tf.math.count_nonzero(positive)) == 6
    else:
        assert float(online_contrastive_loss(labels, e, 1.0)) == 0.0


def test_miners_select_what_they_promise():
    labels = tf.constant([0, 0, 0, 1, 1, 2])
    e = np.array([[0, 0], [1, 0], [4, 0], [0, 1], [5, 5], [2, 0]], np.float32)
    d2 = mining.squared_distances(e)
    np.testing.assert_allclose(d2.numpy(), brute_d2(e), atol=1e-5)
    valid = mining.batch_all(labels, d2).numpy()
    assert valid.sum() == 3 * 2 * 3 + 2 * 1 * 4  # class 0: 3 anchors x 2 pos x 3 neg; class 1
    hard = mining.batch_hard(labels, d2).numpy()
    assert sorted(map(tuple, np.argwhere(hard))) == [(0, 2, 3), (1, 2, 5), (2, 0, 5),
                                                     (3, 4, 0), (4, 3, 2)]
    semi = mining.semi_hard(labels, d2).numpy()
    # Anchor 0, positive 1 (d2 1): negatives farther than 1 are 5 (d2 4), 4 (d2 50) -> 5.
    assert np.argwhere(semi[0, 1]).ravel().tolist() == [5]
    # Anchor 2, positive 1 (d2 9): negatives farther are 3 (d2 17) and 4 (d2 26) -> 3.
    assert np.argwhere(semi[2, 1]).ravel().tolist() == [3]
    # Anchor 3, positive 4 (d2 41): no negative farther -> the farthest negative, 2 (d2 17).
    assert np.argwhere(semi[3, 4]).ravel().tolist() == [2]
    assert semi.sum() == 8  # one negative per positive pair (6 in class 0, 2 in class 1)


def test_gradients_stay_finite_when_embeddings_coincide():
    e = tf.Variable([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    labels = tf.constant([0, 0, 1, 1])
    for loss in [lambda: online_contrastive_loss(labels, e, 1.0),
                 *[lambda r=r: online_triplet_loss(labels, e, 1.0, r)
                   for r in mining.TRIPLET_MINERS]]:
        with tf.GradientTape() as tape:
            value = loss()
        grad = tape.gradient(value, e)
        assert np.isfinite(value.numpy()) and np.isfinite(grad.numpy()).all()


def test_online_losses_round_trip_their_config():
    import keras

    for loss in [OnlineTripletLoss(0.3, "semi-hard"), OnlineContrastiveLoss(0.7)]:
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(again) is type(loss) and again.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="unknown triplet mining"):
        OnlineTripletLoss(1.0, "hardest")


@pytest.mark.parametrize("rule", mining.TRIPLET_MINERS)
def test_loss_classes_give_the_batch_loss(rule):
    labels, e = CASES[2][1], CASES[2][2]
    np.testing.assert_allclose(OnlineTripletLoss(0.5, rule)(labels, e),
                               online_triplet_loss(labels, e, 0.5, rule), rtol=1e-6)
    np.testing.assert_allclose(OnlineContrastiveLoss(0.5)(labels, e),
                               online_contrastive_loss(labels, e, 0.5), rtol=1e-6)
