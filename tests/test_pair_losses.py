"""Multi-Similarity, SupCon and Keras' Circle loss against brute-force NumPy loops over the
pairs of small batches (float64, each paper's formula written out per anchor and pair)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siamese import models
from keras_siamese.pair_losses import (MultiSimilarityLoss, SupConLoss, multi_similarity_loss,
                                       multi_similarity_pairs, supcon_loss)


def unit(rows):
    rows = np.asarray(rows, np.float64)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def cosines(e):
    return np.minimum(np.asarray(e, np.float64) @ np.asarray(e, np.float64).T, 1.0)


def pairs_of(labels, i):
    n = len(labels)
    return ([k for k in range(n) if k != i and labels[k] == labels[i]],
            [k for k in range(n) if labels[k] != labels[i]])


def brute_ms(labels, e, alpha=2.0, beta=50.0, lam=0.5, eps=0.1, mine=True,
             memory_labels=(), memory_e=None):
    """Wang et al. 2019: mining (Eq. 4, 5), then Eq. 6 per anchor; mean over anchors.
    With a memory, the anchor's pairs are the other batch items and every memory entry
    (index B + m)."""
    refs = np.concatenate([e, memory_e]) if memory_e is not None else e
    s, losses = np.minimum(np.asarray(e, np.float64) @ np.asarray(refs, np.float64).T, 1.0), []
    every_label = np.concatenate([labels, memory_labels]).astype(int)
    for i in range(len(labels)):
        positives, negatives = pairs_of(every_label, i)
        if mine:
            least_positive = min((s[i, k] for k in positives), default=math.inf)
            most_negative = max((s[i, k] for k in negatives), default=-math.inf)
            kept_p = [k for k in positives if s[i, k] < most_negative + eps]
            kept_n = [k for k in negatives if s[i, k] > least_positive - eps]
        else:
            kept_p, kept_n = positives, negatives
        pull = math.log(1 + sum(math.exp(-alpha * (s[i, k] - lam)) for k in kept_p)) / alpha
        push = math.log(1 + sum(math.exp(beta * (s[i, k] - lam)) for k in kept_n)) / beta
        losses.append(pull + push)
    return np.array(losses)


def brute_supcon(labels, e, tau=0.1):
    """Khosla et al. 2020, Eq. 2 (L^sup_out) per anchor."""
    z, losses = np.asarray(e, np.float64), []
    for i in range(len(labels)):
        positives, _ = pairs_of(labels, i)
        if not positives:
            losses.append(0.0)
            continue
        denominator = sum(math.exp(z[i] @ z[a] / tau) for a in range(len(labels)) if a != i)
        losses.append(-sum(math.log(math.exp(z[i] @ z[p] / tau) / denominator)
                           for p in positives) / len(positives))
    return np.array(losses)


def brute_circle(labels, e, gamma=80.0, m=0.4):
    """Sun et al. 2020, Eq. 6 with pair-wise labels, per anchor, O_p = 1 + m, O_n = -m,
    Delta_p = 1 - m, Delta_n = m."""
    s, losses = cosines(e), []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, i)
        pulls = sum(math.exp(-gamma * max(0.0, 1 + m - s[i, k]) * (s[i, k] - (1 - m)))
                    for k in positives)
        pushes = sum(math.exp(gamma * max(0.0, s[i, k] + m) * (s[i, k] - m))
                     for k in negatives)
        losses.append(math.log1p(pushes * pulls))
    return np.array(losses)


def pk_batch(seed, p=3, k=4, dim=5):
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(p), k), unit(rng.normal(size=(p * k, dim)))


def ties_batch():
    """Three directions shared across classes: many equal similarities, and items of
    different classes that coincide."""
    angles = np.array([0.0, 1.0, 2.2, 0.0, 1.0, 2.2, 1.0, 0.0])
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    return labels, unit(np.stack([np.cos(angles), np.sin(angles)], 1))


BATCHES = {
    "P x K": pk_batch(0),
    "P x K, 2-D": pk_batch(1, p=4, k=3, dim=2),
    "uneven classes": (np.array([0, 0, 1, 2, 2, 2, 3]),
                       unit(np.random.default_rng(2).normal(size=(7, 4)))),
    "one class": (np.zeros(6, np.int64), unit(np.random.default_rng(3).normal(size=(6, 3)))),
    "all equal": (np.repeat(np.arange(3), 2), unit(np.ones((6, 4)))),
    "ties": ties_batch(),
}


@pytest.mark.parametrize("batch", BATCHES, ids=list(BATCHES))
@pytest.mark.parametrize("mine", [True, False], ids=["ms-mining", "all-pairs"])
def test_multi_similarity_matches_the_paper(batch, mine):
    labels, e = BATCHES[batch]
    rule = "ms-mining" if mine else "all-pairs"
    got = multi_similarity_loss(labels, e, mining_rule=rule).numpy()
    np.testing.assert_allclose(got, brute_ms(labels, e, mine=mine), rtol=1e-5, atol=1e-6)
    reduced = float(MultiSimilarityLoss(mining_rule=rule)(labels, e))
    assert reduced == pytest.approx(brute_ms(labels, e, mine=mine).mean(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mine", [True, False], ids=["ms-mining", "all-pairs"])
@pytest.mark.parametrize("written", [0, 5, 15], ids=["empty", "half filled", "wrapped"])
def test_multi_similarity_against_a_memory_matches_the_paper(mine, written):
    """``--memory``: each anchor's pairs are the rest of the batch and the memory's filled
    slots; the memory's entries are the last ones written."""
    from keras_siamese.cross_batch_memory import CrossBatchMemory

    labels, e = pk_batch(4, p=3, k=2, dim=3)
    rng = np.random.default_rng(5)
    memory = CrossBatchMemory(10)
    memory.build((None, 3))
    memory_labels, memory_e = rng.integers(0, 4, written), unit(rng.normal(size=(written, 3)))
    for start in range(0, written, 4):
        memory.enqueue(memory_e[start:start + 4], memory_labels[start:start + 4])
    kept_e, kept_labels = memory.contents()
    rule = "ms-mining" if mine else "all-pairs"
    got = float(MultiSimilarityLoss(mining_rule=rule).batch_loss(
        labels, e, memory.references(e, labels)))
    want = brute_ms(labels, e, mine=mine, memory_labels=kept_labels, memory_e=kept_e).mean()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    if written == 0:  # an empty memory: the loss of the batch alone
        assert got == pytest.approx(float(MultiSimilarityLoss(mining_rule=rule)(labels, e)),
                                    rel=1e-6)


def test_multi_similarity_mining_keeps_the_papers_pairs():
    labels, e = BATCHES["P x K, 2-D"]
    positive, negative = (m.numpy() for m in multi_similarity_pairs(
        labels, tf.constant(cosines(e), tf.float32), 0.1))
    s = cosines(e)
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, i)
        least_positive = min(s[i, k] for k in positives)
        most_negative = max(s[i, k] for k in negatives)
        assert set(np.flatnonzero(positive[i])) == {k for k in positives
                                                    if s[i, k] < most_negative + 0.1}
        assert set(np.flatnonzero(negative[i])) == {k for k in negatives
                                                    if s[i, k] > least_positive - 0.1}
    # The mining drops easy pairs: fewer pairs than all of them, but some.
    assert 0 < positive.sum() + negative.sum() < len(labels) * (len(labels) - 1)


@pytest.mark.parametrize("batch", BATCHES, ids=list(BATCHES))
def test_supcon_matches_the_paper(batch):
    labels, e = BATCHES[batch]
    np.testing.assert_allclose(supcon_loss(labels, e).numpy(), brute_supcon(labels, e),
                               rtol=1e-5, atol=1e-5)
    assert float(SupConLoss()(labels, e)) == pytest.approx(brute_supcon(labels, e).mean(),
                                                           rel=1e-5, abs=1e-5)


def test_supcon_temperature():
    labels, e = BATCHES["P x K"]
    np.testing.assert_allclose(supcon_loss(labels, e, temperature=0.5).numpy(),
                               brute_supcon(labels, e, tau=0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", BATCHES, ids=list(BATCHES))
def test_keras_circle_is_the_papers_circle_loss(batch):
    """Keras' Circle, which the circle variant uses as it is, per anchor; and its mean,
    which leaves out the anchors whose loss is exactly 0 (those without a positive or a
    negative): in a P x K batch, none."""
    labels, e = BATCHES[batch]
    expected = brute_circle(labels, e)
    per_anchor = keras.losses.Circle(reduction=None)(labels, e).numpy()
    np.testing.assert_allclose(per_anchor, expected, rtol=1e-4, atol=1e-5)
    counted = expected[expected > 0]
    mean = counted.mean() if len(counted) else 0.0
    assert float(keras.losses.Circle()(labels, e)) == pytest.approx(mean, rel=1e-4, abs=1e-5)
    if batch.startswith("P x K"):
        assert len(counted) == len(labels)


def test_circle_margin_is_m():
    labels, e = BATCHES["P x K, 2-D"]
    np.testing.assert_allclose(keras.losses.Circle(margin=0.25, reduction=None)(labels, e),
                               brute_circle(labels, e, m=0.25), rtol=1e-4, atol=1e-5)


LOSSES = {"multi-similarity": MultiSimilarityLoss, "all-pairs": lambda: MultiSimilarityLoss(
    mining_rule="all-pairs"), "supcon": SupConLoss, "circle": keras.losses.Circle}


@pytest.mark.parametrize("make", LOSSES.values(), ids=list(LOSSES))
@pytest.mark.parametrize("batch", ["all equal", "one class", "ties"])
def test_gradients_stay_finite(make, batch):
    """Coinciding embeddings (all equal, or equal across classes), a batch of one class:
    the loss and its gradient are finite."""
    labels, e = BATCHES[batch]
    embeddings = tf.Variable(e)
    with tf.GradientTape() as tape:
        loss = make()(labels, embeddings)
    assert np.isfinite(float(loss))
    assert np.isfinite(tape.gradient(loss, embeddings).numpy()).all()


def test_the_losses_pull_classes_apart():
    """A few gradient steps on free unit embeddings lower each loss."""
    labels, e = BATCHES["P x K, 2-D"]
    for name, make in LOSSES.items():
        free = tf.Variable(e)
        loss_object = make()
        optimizer = keras.optimizers.Adam(0.05)
        first = None
        for _ in range(20):
            with tf.GradientTape() as tape:
                loss = loss_object(labels, tf.math.l2_normalize(free, axis=1))
            first = float(loss) if first is None else first
            optimizer.apply_gradients([(tape.gradient(loss, free), free)])
        assert float(loss) < first, name


def test_unknown_pair_mining_is_refused():
    with pytest.raises(ValueError, match="unknown pair mining 'batch-hard'"):
        MultiSimilarityLoss(mining_rule="batch-hard")


@pytest.mark.parametrize("loss", [MultiSimilarityLoss(alpha=3.0, base=0.6, epsilon=0.2,
                                                      mining_rule="all-pairs"),
                                  SupConLoss(temperature=0.2), keras.losses.Circle(margin=0.3)],
                         ids=["multi-similarity", "supcon", "circle"])
def test_keras_file_round_trip(tmp_path, loss):
    """An online model compiled with the loss reloads with it (config and all)."""
    model = models.online_model(models.embedding_net((28, 28, 1), 4, normalize=True))
    model.compile(optimizer="adam", loss=loss)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert type(restored.loss) is type(loss)
    assert restored.loss.get_config() == loss.get_config()
    x = np.random.default_rng(0).uniform(0, 255, (4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
