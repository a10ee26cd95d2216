"""Standard metrics of an embedding: pure functions of numpy embeddings and labels.

- retrieval of test queries against training references: :func:`precision_at_1`,
  :func:`knn_accuracy`;
- leave-one-out retrieval within one set: :func:`r_precision`, :func:`map_at_r`, as defined
  by Musgrave, Belongie, Lim 2020, "A Metric Learning Reality Check";
- verification of labelled :class:`Pairs`: :func:`pair_distances`, :func:`roc_auc`,
  :func:`best_threshold`, :func:`accuracy_at_threshold`;
- N-way one-shot classification (Koch 2015): :func:`one_shot_episodes`,
  :func:`n_way_one_shot_accuracy`;

and :func:`embedding_metrics` computes them all at once into a flat dict.

Pair label convention (:class:`Pairs`): ``same = 1`` means the two items show the SAME
class, ``0`` DIFFERENT classes; a smaller distance means "more likely the same class".

The retrieval metrics search neighbours with :mod:`keras_siamese.neighbours`, the one
module of the metric code that uses TensorFlow: the ranking is exact (squared Euclidean
distances in float64, equal distances ranked by the lowest index), and a ``chunk_size``
argument bounds memory to ``chunk_size x len(references)`` float64 scores at a time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from keras_siamese.neighbours import (CHUNK_SIZE, as_embeddings, nearest_neighbours,
                                      neighbour_chunks, squared_distances)


class Pairs(NamedTuple):
    """Labelled pairs of items, as indices into one set of embeddings.

    Pair ``i`` is items ``first[i]`` and ``second[i]``; ``same[i]`` is 1 when they show the
    same class, 0 when different classes. E.g. the ``(first, second, same)`` of
    ``streams.sample_pairs``, as numpy arrays.
    """

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray


def _labels(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    return y


def majority_vote(neighbour_labels) -> np.ndarray:
    """Per row, the most frequent label; on a tie, the tied label met first (nearest)."""
    votes = (neighbour_labels[:, :, None] == neighbour_labels[:, None, :]).sum(axis=2)
    winner = np.argmax(votes, axis=1)  # the first of equal maxima
    return neighbour_labels[np.arange(len(winner)), winner]


def precision_at_1(query_embeddings, query_labels, reference_embeddings, reference_labels,
                   chunk_size: int = CHUNK_SIZE) -> float:
    """Precision@1 (1-nearest-neighbour accuracy) of queries against references.

    ``P@1 = mean_q [ label(nearest reference of q) == label(q) ]``

    The nearest reference is exact (see :func:`~keras_siamese.neighbours.nearest_neighbours`);
    on equal distances the lowest reference index wins.

    Args:
        query_embeddings, query_labels: (n, D) and (n,), e.g. the test split.
        reference_embeddings, reference_labels: (m, D) and (m,), e.g. the training split.
        chunk_size: queries per chunk (memory ``chunk_size * m`` float64 values).

    Returns:
        P@1 in [0, 1]; NaN when there are no queries.

    Example:
    >>> precision_at_1([[0.0], [5.0]], [0, 1], [[1.0], [4.0], [9.0]], [0, 0, 1])
    0.5
    """
    return knn_accuracy(query_embeddings, query_labels, reference_embeddings,
                        reference_labels, k=1, chunk_size=chunk_size)


def knn_accuracy(query_embeddings, query_labels, reference_embeddings, reference_labels,
                 k: int = 5, chunk_size: int = CHUNK_SIZE) -> float:
    """Accuracy of a majority vote over the ``k`` nearest references.

    ``acc = mean_q [ mode(labels of the k nearest references of q) == label(q) ]``

    Ties, deterministically: the k nearest are exact, equal distances ranked by the lowest
    reference index (see :func:`~keras_siamese.neighbours.nearest_neighbours`); when two or
    more labels share the most votes, the one whose nearest voter is nearest wins.
    ``k = 1`` is P@1.

    Args:
        query_embeddings, query_labels: (n, D) and (n,), e.g. the test split.
        reference_embeddings, reference_labels: (m, D) and (m,), e.g. the training split.
        k: voters per query, 1 <= k <= m.
        chunk_size: queries per chunk (memory ``chunk_size * m`` float64 values).

    Returns:
        Accuracy in [0, 1]; NaN when there are no queries.

    Example:
    >>> knn_accuracy([[0.0]], [1], [[1.0], [-2.0], [3.0]], [0, 1, 1], k=3)
    1.0
    """
    query_labels = _labels(query_labels, len(np.asarray(query_embeddings)), "query labels")
    reference_labels = _labels(reference_labels, len(np.asarray(reference_embeddings)),
                               "reference labels")
    neighbours = nearest_neighbours(query_embeddings, reference_embeddings, k, chunk_size)
    return _vote_accuracy(neighbours, query_labels, reference_labels)


def _vote_accuracy(neighbours, query_labels, reference_labels) -> float:
    if len(neighbours) == 0:
        return math.nan
    return float(np.mean(majority_vote(reference_labels[neighbours]) == query_labels))


def _leave_one_out_at_r(embeddings, labels, chunk_size: int):
    """Per query with R >= 1: (R-precision, average precision at R); see :func:`map_at_r`."""
    embeddings = as_embeddings(embeddings, "embeddings")
    labels = _labels(labels, len(embeddings), "labels")
    _, cls, count = np.unique(labels, return_inverse=True, return_counts=True)
    r = count[cls.reshape(-1)] - 1
    # Queries of large classes first: a chunk then asks for similar R, so little top-k is
    # wasted on rows that need fewer neighbours.
    queries = np.flatnonzero(r > 0)
    queries = queries[np.argsort(-r[queries], kind="stable")]
    precision, average = np.zeros(len(queries)), np.zeros(len(queries))
    if len(queries) == 0:
        return precision, average
    # Each query skips itself: leave-one-out. Rows end in filler past R (masked below).
    for start, neighbours in neighbour_chunks(embeddings[queries], embeddings, r[queries],
                                              skip=queries, chunk_size=chunk_size):
        q = queries[start:start + len(neighbours)]
        rank = np.arange(1, neighbours.shape[1] + 1)
        relevant = (labels[neighbours] == labels[q][:, None]) & (rank <= r[q][:, None])
        precision_at_i = np.cumsum(relevant, axis=1) / rank
        precision[start:start + len(q)] = relevant.sum(axis=1) / r[q]
        average[start:start + len(q)] = (precision_at_i * relevant).sum(axis=1) / r[q]
    return precision, average


def r_precision(embeddings, labels, chunk_size: int = CHUNK_SIZE) -> float:
    """R-precision, leave-one-out within one set (Musgrave et al. 2020).

    ``RP = mean_q (1/R_q) * sum_{i=1..R_q} rel_q(i)``

    where ``R_q`` is the number of OTHER items of the query's class, the query itself is
    never retrieved, and ``rel_q(i) = 1`` when the i-th nearest other item has the query's
    class. Queries whose class has no other member (``R_q = 0``) are left out. Ranking as
    in :func:`~keras_siamese.neighbours.nearest_neighbours`: exact distances, equal
    distances by lowest index.

    Args:
        embeddings: (n, D), e.g. the test split.
        labels: (n,).
        chunk_size: queries per chunk (memory ``chunk_size * n`` float64 values).

    Returns:
        R-precision in [0, 1]; NaN when no query has another item of its class.

    Example (R = 1 for all; only the query at 2.5 finds the other class first):
    >>> r_precision([[0.0], [1.0], [2.5], [9.0]], [0, 0, 1, 1])
    0.75
    """
    return _mean(_leave_one_out_at_r(embeddings, labels, chunk_size)[0])


def map_at_r(embeddings, labels, chunk_size: int = CHUNK_SIZE) -> float:
    """MAP@R, leave-one-out within one set (Musgrave et al. 2020).

    ``MAP@R = mean_q (1/R_q) * sum_{i=1..R_q} P_q(i) * rel_q(i)``

    with ``P_q(i)`` the precision of the ``i`` nearest other items, and ``R_q``, ``rel_q``
    as in :func:`r_precision`: the query itself is never retrieved, queries whose class has
    no other member are left out, equal distances rank the lowest index first (so for all
    embeddings identical, item order alone decides).

    Args:
        embeddings: (n, D), e.g. the test split.
        labels: (n,).
        chunk_size: queries per chunk (memory ``chunk_size * n`` float64 values).

    Returns:
        MAP@R in [0, 1]; NaN when no query has another item of its class.

    Example (R = 2 for all; the query at 4 retrieves its classmate at 5, then at the tied
    distance 2 the item at 2 (class 1, lower index) before its classmate at 6: AP = 1/2;
    the other five queries score 1):
    >>> map_at_r([[0.0], [1.0], [2.0], [4.0], [5.0], [6.0]], [1, 1, 1, 0, 0, 0])
    0.9166666666666666
    """
    return _mean(_leave_one_out_at_r(embeddings, labels, chunk_size)[1])


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def pair_distances(embeddings, first, second) -> np.ndarray:
    """Euclidean distances ``|e[first] - e[second]|`` of index pairs, in float64.

    Args:
        embeddings: (n, D).
        first, second: (p,) integer indices into ``embeddings``, e.g. the ``first`` and
            ``second`` of ``streams.sample_pairs`` (whose ``same`` is 1 for same class).

    Returns:
        (p,) float64 distances.

    Example:
    >>> pair_distances([[0.0, 0.0], [3.0, 4.0]], [0, 1], [1, 1]).tolist()
    [5.0, 0.0]
    """
    embeddings = as_embeddings(embeddings, "embeddings")
    a, b = embeddings[np.asarray(first)], embeddings[np.asarray(second)]
    return np.sqrt(squared_distances(a, b))


def labelled_distances(distances, same) -> tuple[np.ndarray, np.ndarray]:
    """Pair distances as float64 and their ``same`` labels as bool, checked to match;
    ValueError for labels other than 1 (same class) and 0, or NaN distances."""
    distances = np.asarray(distances, np.float64).reshape(-1)
    same = np.asarray(same).reshape(-1)
    if same.shape != distances.shape:
        raise ValueError(f"{len(distances)} distances but {len(same)} pair labels")
    if not np.isin(same, (0, 1)).all():
        raise ValueError("pair labels must be 1 (same class) or 0 (different classes)")
    if np.isnan(distances).any():
        raise ValueError("pair distances contain NaN")
    return distances, same.astype(bool)


def roc_auc(distances, same) -> float:
    """Area under the ROC curve of pair distances as same-class scores (Mann-Whitney).

    ``AUC = P(d+ < d-) + P(d+ = d-) / 2``

    over all (same-class pair, different-class pair) combinations: smaller distance means
    "more likely the same class", ties count one half. Exact, computed from mid-ranks:
    ``AUC = (sum of the ranks of the different-class distances - n-(n- + 1)/2) / (n+ n-)``.

    Args:
        distances: (p,) pair distances.
        same: (p,) 1 for same-class pairs, 0 for different-class pairs.

    Returns:
        AUC in [0, 1] (0.5 for constant distances); NaN without pairs of both kinds.

    Example:
    >>> roc_auc([0.1, 0.5, 0.5, 0.9], [1, 1, 0, 0])
    0.875
    """
    distances, same = labelled_distances(distances, same)
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if n_same == 0 or n_diff == 0:
        return math.nan
    order = np.argsort(distances, kind="stable")
    ordered = distances[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    # Twice the mid-rank of each run of equal distances (1-based ranks start+1 .. end).
    twice_rank = np.empty(len(ordered))
    twice_rank[order] = np.repeat(starts + ends + 1, ends - starts)
    u = twice_rank[~same].sum() / 2 - n_diff * (n_diff + 1) / 2
    return float(u / (n_same * n_diff))


def best_threshold(distances, same) -> float:
    """The distance threshold that classifies the given pairs most accurately.

    A pair is predicted "same class" when ``distance <= threshold``; the threshold
    maximises ``accuracy = mean [ (d <= t) == same ]``. Choose it on pairs other than the
    ones you score (e.g. training pairs) and apply it with :func:`accuracy_at_threshold`.

    Among the cuts between sorted distinct distances, the best one (the lowest on equal
    accuracy) is returned as the midpoint between the distances on either side of it; the
    largest distance when everything is best called "same", and just below the smallest
    distance when everything is best called "different".

    Args:
        distances: (p,) pair distances, p >= 1.
        same: (p,) 1 for same-class pairs, 0 for different-class pairs.

    Returns:
        The threshold.

    Example:
    >>> best_threshold([0.1, 0.4, 0.6, 0.9], [1, 1, 0, 0])
    0.5
    """
    distances, same = labelled_distances(distances, same)
    if len(distances) == 0:
        raise ValueError("best_threshold needs at least one pair")
    order = np.argsort(distances, kind="stable")
    ordered, is_same = distances[order], same[order]
    last = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])  # end of each run
    same_below = np.cumsum(is_same)[last]  # same pairs with d <= value of the run
    diff_below = (last + 1) - same_below
    correct = np.r_[len(same) - same.sum(), same_below + (~same).sum() - diff_below]
    best = int(np.argmax(correct)) - 1  # -1: no run is called "same"
    values = ordered[last]
    if best < 0:
        return float(np.nextafter(values[0], -np.inf))
    if best == len(values) - 1:
        return float(values[-1])
    low, high = values[best], values[best + 1]
    middle = low + (high - low) / 2
    return float(middle if low <= middle < high else low)


def accuracy_at_threshold(distances, same, threshold: float) -> float:
    """Verification accuracy of pairs at a distance threshold.

    ``accuracy = mean [ (d <= threshold) == same ]``

    Args:
        distances: (p,) pair distances.
        same: (p,) 1 for same-class pairs, 0 for different-class pairs.
        threshold: e.g. :func:`best_threshold` of other (training) pairs.

    Returns:
        Accuracy in [0, 1]; NaN without pairs.

    Example:
    >>> accuracy_at_threshold([0.1, 0.4, 0.6, 0.9], [1, 0, 0, 0], 0.5)
    0.75
    """
    distances, same = labelled_distances(distances, same)
    return float(np.mean((distances <= threshold) == same)) if len(same) else math.nan


def one_shot_episodes(labels, n_way: int = 5, episodes: int = 1000, seed: int = 0):
    """Seeded N-way one-shot episodes (Koch, Zemel, Salakhutdinov 2015) over labelled items.

    Each episode draws ``n_way`` distinct classes in random order, one support item per
    class, and one query of one of those classes that is not that class's support. Only
    classes with two or more items take part. The draw depends only on ``seed`` and the
    labels (NumPy's PCG64 generator): the same seed gives the same episodes.

    Args:
        labels: (n,) labels of the items.
        n_way: classes per episode, at least 2.
        episodes: number of episodes.
        seed: seed of the draw.

    Returns:
        ``(supports, queries, answers)``: (episodes, n_way) item indices of the supports,
        (episodes,) item indices of the queries, and (episodes,) the column of
        ``supports`` that holds the query's class.
    """
    labels = np.asarray(labels).reshape(-1)
    if n_way < 2 or episodes < 1:
        raise ValueError(f"need n_way >= 2 and episodes >= 1, got {n_way} and {episodes}")
    _, cls, count = np.unique(labels, return_inverse=True, return_counts=True)
    cls = cls.reshape(-1)
    eligible = np.flatnonzero(count >= 2)
    if len(eligible) < n_way:
        raise ValueError(f"{n_way}-way episodes need {n_way} classes with two or more "
                         f"items, the labels have {len(eligible)}")
    members = np.argsort(cls, kind="stable")  # class c: members[start[c]:start[c]+count[c]]
    start = np.r_[0, np.cumsum(count)[:-1]]
    rng = np.random.default_rng(seed)
    rows = np.arange(episodes)
    classes = eligible[np.argsort(rng.random((episodes, len(eligible))), axis=1)[:, :n_way]]
    support_rank = rng.integers(0, count[classes])
    answers = rng.integers(0, n_way, size=episodes)
    query_class, query_support = classes[rows, answers], support_rank[rows, answers]
    # Skip 1 .. count-1 places past the support within its class: never the support.
    skip = 1 + rng.integers(0, count[query_class] - 1)
    query_rank = (query_support + skip) % count[query_class]
    return (members[start[classes] + support_rank], members[start[query_class] + query_rank],
            answers)


def n_way_one_shot_accuracy(embeddings, labels, n_way: int = 5, episodes: int = 1000,
                            seed: int = 0) -> float:
    """N-way one-shot classification accuracy (Koch, Zemel, Salakhutdinov 2015).

    ``acc = mean_episodes [ class of the support nearest to the query == query's class ]``

    over the episodes of :func:`one_shot_episodes` (``n_way`` distinct classes, one support
    each, a query of one of them that is not its support; classes with one item sit out).
    Distances are exact; when supports tie, the one drawn first wins, and as classes come
    in random order a tie is a fair draw, not a free win.

    Args:
        embeddings: (n, D), e.g. the test split.
        labels: (n,).
        n_way: classes per episode, at least 2.
        episodes: number of episodes.
        seed: seed of the episodes; pass a fixed one (e.g. ``streams.EVAL_SEED``) so that
            every model is scored on the same episodes.

    Returns:
        Accuracy in [0, 1] (chance is ``1 / n_way``).

    Example:
    >>> n_way_one_shot_accuracy([[0.0], [0.1], [5.0], [5.1]], [0, 0, 1, 1], n_way=2,
    ...                         episodes=10)
    1.0
    """
    embeddings = as_embeddings(embeddings, "embeddings")
    _labels(labels, len(embeddings), "labels")
    supports, queries, answers = one_shot_episodes(labels, n_way, episodes, seed)
    distances = squared_distances(embeddings[supports], embeddings[queries][:, None, :])
    return float(np.mean(np.argmin(distances, axis=1) == answers))  # argmin: first of ties


def embedding_metrics(train_embeddings, train_labels, test_embeddings, test_labels,
                      test_pairs: Pairs, train_pairs: Pairs, *, k: int = 5, n_ways=(5, 10),
                      episodes: int = 1000, seed: int = 0, chunk_size: int = CHUNK_SIZE) -> dict:
    """All metrics of one embedding, as a flat dict of floats.

    - ``precision_at_1``, ``knn_accuracy`` (k voters): test queries against training
      references (:func:`precision_at_1`, :func:`knn_accuracy`);
    - ``r_precision``, ``map_at_r``: leave-one-out within the test set;
    - ``roc_auc``: of the test pairs' distances;
    - ``threshold``: :func:`best_threshold` of the TRAINING pairs, and
      ``verification_accuracy``: the test pairs' accuracy at that threshold;
    - ``one_shot_5way``, ``one_shot_10way`` (one per ``n_ways``): on the test set (NaN
      with too few classes).

    Args:
        train_embeddings, train_labels: (m, D), (m,).
        test_embeddings, test_labels: (n, D), (n,).
        test_pairs: :class:`Pairs` of the test set (``same`` = 1 for same class, 0 for
            different), e.g. of ``streams.sample_pairs``.
        train_pairs: :class:`Pairs` of the training set.
        k: voters of ``knn_accuracy``.
        n_ways: the N of the one-shot accuracies reported.
        episodes, seed: of the one-shot episodes.
        chunk_size: queries per chunk (memory ``chunk_size * m`` float64 values).
    """
    train_embeddings = as_embeddings(train_embeddings, "training embeddings")
    test_embeddings = as_embeddings(test_embeddings, "test embeddings")
    train_labels = _labels(train_labels, len(train_embeddings), "training labels")
    test_labels = _labels(test_labels, len(test_embeddings), "test labels")
    # One neighbour search serves both P@1 (the first column) and the k-NN vote.
    neighbours = nearest_neighbours(test_embeddings, train_embeddings, k, chunk_size)
    r_precisions, averages = _leave_one_out_at_r(test_embeddings, test_labels, chunk_size)
    test_pairs, train_pairs = Pairs(*test_pairs), Pairs(*train_pairs)  # plain 3-tuples work too
    test_distances = pair_distances(test_embeddings, test_pairs.first, test_pairs.second)
    threshold = best_threshold(
        pair_distances(train_embeddings, train_pairs.first, train_pairs.second),
        train_pairs.same)
    metrics = {
        "precision_at_1": _vote_accuracy(neighbours[:, :1], test_labels, train_labels),
        "knn_accuracy": _vote_accuracy(neighbours, test_labels, train_labels),
        "r_precision": _mean(r_precisions),
        "map_at_r": _mean(averages),
        "roc_auc": roc_auc(test_distances, test_pairs.same),
        "verification_accuracy": accuracy_at_threshold(test_distances, test_pairs.same,
                                                       threshold),
        "threshold": threshold,
    }
    _, count = np.unique(test_labels, return_counts=True)
    classes = int((count >= 2).sum())  # classes that one-shot episodes can use
    for n_way in n_ways:
        metrics[f"one_shot_{n_way}way"] = (
            n_way_one_shot_accuracy(test_embeddings, test_labels, n_way, episodes, seed)
            if classes >= n_way else math.nan)
    return metrics
