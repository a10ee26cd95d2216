"""keras_siamese.metrics and keras_siamese.neighbours against brute-force NumPy references
(loops, obvious code).

The cases are small and include exact ties (integer grids, duplicated embeddings), near
ties far from the origin (which a float64 matrix product alone misorders), classes
with a single member, perfect embeddings (every metric 1) and degenerate ones.
"""

import math
from collections import Counter

import numpy as np
import pytest

from keras_siamese import metrics, neighbours

# ---------------------------------------------------------------- brute-force references


def brute_squared_distances(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=2)


def brute_neighbours(queries, references, k, skip_self=False):
    d = brute_squared_distances(queries, references)
    rows = []
    for i in range(len(queries)):
        order = np.lexsort((np.arange(len(references)), d[i]))  # by distance, then index
        if skip_self:
            order = order[order != i]
        rows.append(order[:k])
    return np.array(rows, dtype=np.int64).reshape(len(queries), k)


def brute_knn_accuracy(queries, query_labels, references, reference_labels, k):
    hits = []
    for i, row in enumerate(brute_neighbours(queries, references, k)):
        voters = [reference_labels[j] for j in row]
        counts = Counter(voters)
        best = max(counts.values())
        winner = next(label for label in voters if counts[label] == best)  # nearest first
        hits.append(winner == query_labels[i])
    return float(np.mean(hits)) if hits else math.nan


def brute_at_r(embeddings, labels):
    """(mean R-precision, MAP@R), leave-one-out, with the paper's definitions."""
    n = len(labels)
    order = brute_neighbours(embeddings, embeddings, n - 1, skip_self=True)
    r_precisions, averages = [], []
    for i in range(n):
        r = int(np.sum(labels == labels[i])) - 1
        if r == 0:
            continue
        found, precision_sum = 0, 0.0
        for p, j in enumerate(order[i][:r], start=1):
            if labels[j] == labels[i]:  # rel(p) = 1: add P(p)
                found += 1
                precision_sum += found / p
        r_precisions.append(found / r)
        averages.append(precision_sum / r)
    if not averages:
        return math.nan, math.nan
    return float(np.mean(r_precisions)), float(np.mean(averages))


def brute_auc(distances, same):
    positives = [d for d, s in zip(distances, same) if s == 1]
    negatives = [d for d, s in zip(distances, same) if s == 0]
    wins = sum(1.0 if p < q else 0.5 if p == q else 0.0 for p in positives for q in negatives)
    return wins / (len(positives) * len(negatives))


def brute_best_accuracy(distances, same):
    candidates = [-np.inf] + sorted(set(distances))
    return max(np.mean([(d <= t) == s for d, s in zip(distances, same)]) for t in candidates)


# ---------------------------------------------------------------------------- test data


def random_case(seed, n=30, m=50, dims=3, classes=4):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dims)).astype(np.float32), rng.integers(0, classes, n),
            rng.standard_normal((m, dims)).astype(np.float32), rng.integers(0, classes, m))


def grid_case(seed, n=30, m=60, dims=2, classes=3):
    """Integer coordinates in {0, 1, 2}: lots of exactly equal distances."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 3, (n, dims)).astype(np.float32), rng.integers(0, classes, n),
            rng.integers(0, 3, (m, dims)).astype(np.float32), rng.integers(0, classes, m))


def duplicate_case(seed, n=30, m=60, dims=4, classes=3):
    """Embeddings copied from a pool of 5 points: exact duplicates with mixed labels."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((5, dims)).astype(np.float32)
    return (pool[rng.integers(0, 5, n)], rng.integers(0, classes, n),
            pool[rng.integers(0, 5, m)], rng.integers(0, classes, m))


def far_case(seed, n=30, m=60, dims=3, classes=3):
    """Points 1000 from the origin, 1e-4 apart: the float64 product 2 q.r - |r|^2 alone
    gets the order of such distances wrong (its rounding error is about their size)."""
    rng = np.random.default_rng(seed)

    def points(count):
        spread = 1e-4 * rng.standard_normal((count, dims - 1))
        return np.c_[np.full(count, 1000.0), spread].astype(np.float32)

    return (points(n), rng.integers(0, classes, n), points(m), rng.integers(0, classes, m))


CASES = {"random": random_case, "grid": grid_case, "duplicates": duplicate_case,
         "far": far_case}


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_neighbours_match_brute_force(case, seed):
    queries, _, references, _ = CASES[case](seed)
    for k in (1, 4, len(references)):
        expected = brute_neighbours(queries, references, k)
        np.testing.assert_array_equal(neighbours.nearest_neighbours(queries, references, k),
                                      expected)
    # Chunking changes nothing.
    np.testing.assert_array_equal(
        neighbours.nearest_neighbours(queries, references, 3, chunk_size=7),
        brute_neighbours(queries, references, 3))


def test_many_references_match_brute_force():
    """Enough distinct references for the blocked top-k, with duplicates and grid ties."""
    rng = np.random.default_rng(3)
    references = rng.integers(0, 64, (2500, 2)).astype(np.float32)  # ~1900 distinct
    queries = rng.integers(0, 64, (20, 2)).astype(np.float32)
    assert len(np.unique(references, axis=0)) * 1.0 > 6 * 64 * 4
    for k in (1, 5):
        np.testing.assert_array_equal(neighbours.nearest_neighbours(queries, references, k),
                                      brute_neighbours(queries, references, k))


def test_galleries_of_many_tiles_match_brute_force():
    """Several tiles of the cached block-maxima pass, with duplicates and many exact ties,
    and float data far from the origin, where float32 scores cannot tell neighbours apart
    on their own (the exact re-ranking must)."""
    rng = np.random.default_rng(5)
    grid = rng.integers(0, 20, (6000, 3)).astype(np.float32)  # ~4,200 distinct, ties
    far = (1e4 + rng.standard_normal((5000, 8))).astype(np.float32)
    for references in (grid, far):
        queries = references[rng.integers(0, len(references), 25)] + \
            rng.integers(-1, 2, (25, references.shape[1])).astype(np.float32)
        for k in (1, 7, 300):  # 300: the large-k path
            np.testing.assert_array_equal(
                neighbours.nearest_neighbours(queries, references, k),
                brute_neighbours(queries, references, k))


def test_neighbours_finer_than_the_scores_rounding_match_brute_force():
    """One far outlier makes the float32 scores' rounding larger than every distance
    among the other points: the candidates their scores pick are arbitrary, and only the
    exact re-ranking of every point within the rounding bound gets the order right."""
    rng = np.random.default_rng(7)
    references = np.r_[1e-3 * rng.standard_normal((700, 3)), [[1e6, 0.0, 0.0]]]
    queries = 1e-3 * rng.standard_normal((20, 3))
    for k in (1, 3, 20):
        np.testing.assert_array_equal(neighbours.nearest_neighbours(queries, references, k),
                                      brute_neighbours(queries, references, k))


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_extreme_magnitudes_match_brute_force(scale):
    """Embeddings whose squares would underflow or overflow float32 scores."""
    rng = np.random.default_rng(6)
    references, queries = scale * rng.standard_normal((500, 4)), \
        scale * rng.standard_normal((10, 4))
    for k in (1, 5):
        np.testing.assert_array_equal(neighbours.nearest_neighbours(queries, references, k),
                                      brute_neighbours(queries, references, k))


def test_collapsed_embeddings_are_exact_and_fast():
    """A collapsed model maps whole classes onto one point: ties of thousands of items."""
    rng = np.random.default_rng(4)
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    group = rng.integers(0, 3, 20_000)
    nearest = neighbours.nearest_neighbours(points[[0, 1, 2, 0]], points[group], 3)
    for query, row in zip([0, 1, 2, 0], nearest):
        np.testing.assert_array_equal(row, np.flatnonzero(group == query)[:3])
    embeddings, labels = points[group[:600]], group[:600] % 2
    assert metrics.map_at_r(embeddings, labels) == \
        pytest.approx(brute_at_r(embeddings, labels)[1], abs=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_neighbour_chunks_match_brute_force(case, seed):
    """Each query skips itself and asks for its own k; rows end in -1 past k."""
    embeddings, _, _, _ = CASES[case](seed, n=40)
    k = np.random.default_rng(seed).integers(1, len(embeddings), len(embeddings))
    expected = brute_neighbours(embeddings, embeddings, len(embeddings) - 1, skip_self=True)
    for chunk_size in (256, 7):
        seen = 0
        for start, rows in neighbours.neighbour_chunks(embeddings, embeddings, k,
                                                       skip=np.arange(len(embeddings)),
                                                       chunk_size=chunk_size):
            assert start == seen and rows.shape == (min(chunk_size, 40 - start),
                                                    k[start:start + chunk_size].max())
            for i, row in enumerate(rows, start):
                np.testing.assert_array_equal(row[:k[i]], expected[i, :k[i]])
                assert (row[k[i]:] == -1).all()
            seen += len(rows)
        assert seen == len(embeddings)


def test_neighbour_chunks_without_skip_and_bad_arguments():
    queries, _, references, _ = grid_case(2)
    (start, rows), = neighbours.neighbour_chunks(queries, references, 4)
    assert start == 0
    np.testing.assert_array_equal(rows, brute_neighbours(queries, references, 4))
    with pytest.raises(ValueError, match="between 1 and 59 \\(the 60 references less"):
        neighbours.neighbour_chunks(queries, references, 60, skip=np.arange(30))
    with pytest.raises(ValueError, match="k must be an int or 30 ints"):
        neighbours.neighbour_chunks(queries, references, [1, 2])
    with pytest.raises(ValueError, match="skip must be 30 integer"):
        neighbours.neighbour_chunks(queries, references, 1, skip=[0])
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        neighbours.nearest_neighbours(queries, references, 1, chunk_size=0)


@pytest.mark.parametrize("case", CASES)
def test_neighbour_distances_are_exact_and_ascending(case):
    queries, _, references, _ = CASES[case](0)
    nearest = neighbours.nearest_neighbours(queries, references, 10)
    distances = neighbours.neighbour_distances(queries, references, nearest)
    assert distances.shape == (30, 10) and distances.dtype == np.float64
    brute = np.sqrt(brute_squared_distances(queries, references))
    np.testing.assert_allclose(distances, np.take_along_axis(brute, nearest, axis=1),
                               rtol=1e-12, atol=0)
    assert (np.diff(distances, axis=1) >= 0).all()  # the ranking's order
    # Bit-identical to the metrics' pair distances of the same points.
    both = np.concatenate([queries, references]).astype(np.float64)
    first, second = np.repeat(np.arange(30), 10), 30 + nearest.ravel()
    np.testing.assert_array_equal(distances.ravel(), metrics.pair_distances(both, first, second))


def test_neighbour_distances_reject_bad_indices():
    queries, references = np.zeros((2, 3)), np.ones((4, 3))
    assert neighbours.neighbour_distances(queries, references, [[3], [0]]).tolist() == \
        [[math.sqrt(3)], [math.sqrt(3)]]
    with pytest.raises(ValueError, match="indices of the 4 references, got -1 .. 0"):
        neighbours.neighbour_distances(queries, references, [[-1], [0]])
    with pytest.raises(ValueError, match="neighbours must be \\(2, k\\) integer"):
        neighbours.neighbour_distances(queries, references, [0, 1])
    with pytest.raises(ValueError, match="dimensions"):
        neighbours.neighbour_distances(queries, np.ones((4, 2)), [[0], [1]])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_precision_at_1_and_knn_accuracy_match_brute_force(case, seed):
    queries, query_labels, references, reference_labels = CASES[case](seed)
    assert metrics.precision_at_1(queries, query_labels, references, reference_labels) == \
        brute_knn_accuracy(queries, query_labels, references, reference_labels, 1)
    for k in (1, 2, 4, 7):
        assert metrics.knn_accuracy(queries, query_labels, references, reference_labels, k=k) \
            == brute_knn_accuracy(queries, query_labels, references, reference_labels, k)


def test_knn_vote_ties_go_to_the_nearest_voter():
    references = np.array([[1.0], [2.0], [3.0], [4.0]])
    # Votes 0, 1, 1, 0 at k = 4: a 2-2 tie, and class 0 has the nearest voter.
    assert metrics.knn_accuracy([[0.0]], [0], references, [0, 1, 1, 0], k=4) == 1.0
    assert metrics.knn_accuracy([[0.0]], [1], references, [0, 1, 1, 0], k=4) == 0.0
    # Equal distances: the lowest reference index is nearer.
    assert metrics.precision_at_1([[0.0]], [7], [[1.0], [-1.0]], [7, 8]) == 1.0
    assert metrics.precision_at_1([[0.0]], [7], [[1.0], [-1.0]], [8, 7]) == 0.0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_r_precision_and_map_at_r_match_brute_force(case, seed):
    embeddings, labels, _, _ = CASES[case](seed, n=40)
    expected_rp, expected_map = brute_at_r(embeddings, labels)
    assert metrics.r_precision(embeddings, labels) == pytest.approx(expected_rp, abs=1e-12)
    assert metrics.map_at_r(embeddings, labels) == pytest.approx(expected_map, abs=1e-12)
    assert metrics.map_at_r(embeddings, labels, chunk_size=3) == \
        pytest.approx(expected_map, abs=1e-12)


def test_map_at_r_leaves_out_single_member_classes():
    embeddings = np.array([[0.0], [1.0], [2.0], [10.0], [3.0]])
    labels = np.array([0, 0, 1, 1, 2])  # class 2 has a single member: not a query
    expected_rp, expected_map = brute_at_r(embeddings, labels)
    assert metrics.r_precision(embeddings, labels) == pytest.approx(expected_rp)
    assert metrics.map_at_r(embeddings, labels) == pytest.approx(expected_map)
    # Queries 0, 1 find their classmate first (AP 1); 2 and 10 find class 0 / 2 first.
    assert metrics.map_at_r(embeddings, labels) == pytest.approx(0.5)
    assert math.isnan(metrics.map_at_r(embeddings[:3], [0, 1, 2]))
    assert math.isnan(metrics.r_precision(embeddings[:3], [0, 1, 2]))


def test_map_at_r_of_identical_embeddings_follows_item_order():
    # All distances tie, so each query ranks the others by index.
    embeddings = np.zeros((6, 2))
    labels = np.array([0, 0, 0, 1, 1, 1])
    # Class 0 queries rank the other class-0 items first (AP 1); class 1 queries see
    # 0, 1, 2 first, so nothing relevant in their top R = 2 (AP 0).
    assert metrics.map_at_r(embeddings, labels) == 0.5
    assert metrics.r_precision(embeddings, labels) == 0.5
    assert metrics.map_at_r(embeddings, labels) == brute_at_r(embeddings, labels)[1]


def perfect_embeddings(labels, dims):
    """Each class collapsed onto its own point, far from the others (dims >= classes)."""
    centres = 100.0 * np.eye(max(labels) + 1, dims)
    return centres[labels].astype(np.float32)


def test_perfect_embeddings_score_one_everywhere():
    rng = np.random.default_rng(0)
    train_labels, test_labels = rng.integers(0, 10, 300), rng.integers(0, 10, 120)
    train, test = perfect_embeddings(train_labels, 12), perfect_embeddings(test_labels, 12)
    test_pairs = metrics_pairs(test_labels, 1)
    train_pairs = metrics_pairs(train_labels, 2)
    result = metrics.embedding_metrics(train, train_labels, test, test_labels, test_pairs,
                                       train_pairs, episodes=200)
    assert set(result) == {"precision_at_1", "knn_accuracy", "r_precision", "map_at_r",
                           "roc_auc", "verification_accuracy", "threshold", "one_shot_5way",
                           "one_shot_10way"}
    for name, value in result.items():
        if name != "threshold":
            assert value == 1.0, name
    assert 0.0 <= result["threshold"] < 100.0 * math.sqrt(2)


def metrics_pairs(labels, seed, count=200):
    """Random index pairs with ``same`` = 1 for same class, both kinds present."""
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(labels), count), rng.integers(0, len(labels), count)
    return metrics.Pairs(first, second, (labels[first] == labels[second]).astype(np.float32))


def test_embedding_metrics_agree_with_the_single_functions():
    train, train_labels, test, test_labels = duplicate_case(5, n=60, m=80)
    test_pairs, train_pairs = metrics_pairs(test_labels, 3), metrics_pairs(train_labels, 4)
    result = metrics.embedding_metrics(train, train_labels, test, test_labels, test_pairs,
                                       train_pairs, k=3, episodes=50, seed=9)
    test_distances = metrics.pair_distances(test, test_pairs.first, test_pairs.second)
    threshold = metrics.best_threshold(
        metrics.pair_distances(train, train_pairs.first, train_pairs.second), train_pairs.same)
    expected = {
        "precision_at_1": metrics.precision_at_1(test, test_labels, train, train_labels),
        "knn_accuracy": metrics.knn_accuracy(test, test_labels, train, train_labels, k=3),
        "r_precision": metrics.r_precision(test, test_labels),
        "map_at_r": metrics.map_at_r(test, test_labels),
        "roc_auc": metrics.roc_auc(test_distances, test_pairs.same),
        "verification_accuracy": metrics.accuracy_at_threshold(test_distances, test_pairs.same,
                                                               threshold),
        "threshold": threshold,
    }
    assert {name: result[name] for name in expected} == expected
    # Only 3 classes: no 5- or 10-way episodes.
    assert math.isnan(result["one_shot_5way"]) and math.isnan(result["one_shot_10way"])
    # Plain (first, second, same) tuples are read as Pairs.
    again = metrics.embedding_metrics(train, train_labels, test, test_labels, tuple(test_pairs),
                                      tuple(train_pairs), k=3, episodes=50, seed=9)
    assert {name: again[name] for name in expected} == expected


def test_pair_distances_are_euclidean():
    embeddings = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(metrics.pair_distances(embeddings, [0, 1, 2], [1, 2, 2]),
                               [5.0, math.sqrt(13.0), 0.0])


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_matches_mann_whitney_brute_force(seed):
    rng = np.random.default_rng(seed)
    same = rng.integers(0, 2, 60)
    distances = np.round(rng.random(60) + 0.3 * (1 - same), 1)  # rounding makes ties
    assert metrics.roc_auc(distances, same) == pytest.approx(brute_auc(distances, same), abs=1e-12)


def test_roc_auc_known_values():
    assert metrics.roc_auc([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 0]) == 0.5  # constant scores
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.0
    assert math.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))  # no different-class pair
    with pytest.raises(ValueError, match="1 \\(same class\\) or 0"):
        metrics.roc_auc([0.1, 0.2], [1, 2])


@pytest.mark.parametrize("seed", range(4))
def test_best_threshold_maximises_accuracy(seed):
    rng = np.random.default_rng(seed)
    same = rng.integers(0, 2, 50)
    distances = np.round(rng.random(50) + 0.4 * (1 - same), 1)
    threshold = metrics.best_threshold(distances, same)
    assert metrics.accuracy_at_threshold(distances, same, threshold) == \
        pytest.approx(brute_best_accuracy(distances, same))


def test_best_threshold_rules():
    # The midpoint between the last "same" and the first "different" distance.
    assert metrics.best_threshold([0.1, 0.4, 0.6, 0.9], [1, 1, 0, 0]) == pytest.approx(0.5)
    # All same: the largest distance; all different: just below the smallest.
    assert metrics.best_threshold([0.3, 0.1, 0.2], [1, 1, 1]) == 0.3
    below = metrics.best_threshold([0.3, 0.1, 0.2], [0, 0, 0])
    assert below < 0.1 and below == np.nextafter(0.1, -1)
    # Equal accuracy: the lowest cut wins (here: nothing called "same", or the 0.1 pair).
    assert metrics.best_threshold([0.1, 0.2], [1, 0]) == pytest.approx(0.15)
    assert metrics.accuracy_at_threshold([0.2, 0.4, 0.6], [1, 0, 0], 0.4) == pytest.approx(2 / 3)


def test_one_shot_episodes_are_valid_and_seeded():
    labels = np.repeat(np.arange(12), 5)
    labels[-4:] = 99  # class 99 has 4 items, class 11 one item left
    labels = np.r_[labels, 50]  # class 50 has one item too: 11 and 50 never take part
    supports, queries, answers = metrics.one_shot_episodes(labels, n_way=5, episodes=300, seed=1)
    assert supports.shape == (300, 5) and queries.shape == (300,) and answers.shape == (300,)
    for row, query, answer in zip(supports, queries, answers):
        classes = labels[row]
        assert len(set(classes)) == 5 and not {11, 50} & set(classes)
        assert labels[query] == classes[answer] and query != row[answer]
    again = metrics.one_shot_episodes(labels, n_way=5, episodes=300, seed=1)
    for a, b in zip((supports, queries, answers), again):
        np.testing.assert_array_equal(a, b)
    other = metrics.one_shot_episodes(labels, n_way=5, episodes=300, seed=2)
    assert not np.array_equal(supports, other[0])
    # Every class and answer column turns up.
    assert set(np.unique(labels[supports])) == set(np.unique(labels)) - {11, 50}
    assert set(answers) == set(range(5))


def test_one_shot_accuracy_matches_brute_force_on_its_episodes():
    queries, labels, _, _ = duplicate_case(0, n=80, classes=6)
    labels = np.arange(80) % 6
    supports, query_items, answers = metrics.one_shot_episodes(labels, 4, 100, seed=3)
    hits = []
    for row, query, answer in zip(supports, query_items, answers):
        d = brute_squared_distances(queries[[query]], queries[row])[0]
        hits.append(int(np.argmin(d)) == answer)  # first of equal distances
    assert metrics.n_way_one_shot_accuracy(queries, labels, 4, 100, seed=3) == np.mean(hits)


def test_one_shot_accuracy_extremes():
    labels = np.repeat(np.arange(10), 4)
    assert metrics.n_way_one_shot_accuracy(perfect_embeddings(labels, 10), labels, 10, 200) == 1.0
    # Identical embeddings: every support ties, the first drawn wins: about 1 in n_way.
    accuracy = metrics.n_way_one_shot_accuracy(np.zeros((40, 2)), labels, 5, 2000)
    assert abs(accuracy - 0.2) < 0.03
    with pytest.raises(ValueError, match="10-way episodes need 10 classes"):
        metrics.n_way_one_shot_accuracy(np.zeros((8, 2)), np.arange(8) % 4, 10, 10)


def test_identical_embeddings():
    labels = np.array([0, 1, 1, 0, 1])
    zeros = np.zeros((5, 3))
    # Every reference ties: the lowest index (label 0) is everybody's nearest.
    assert metrics.precision_at_1(zeros, labels, zeros, labels) == 0.4
    distances = metrics.pair_distances(zeros, [0, 1, 2, 3], [3, 2, 0, 4])
    assert metrics.roc_auc(distances, [1, 1, 0, 0]) == 0.5


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.precision_at_1([[np.nan]], [0], [[0.0]], [0])
    with pytest.raises(ValueError, match="k must be between 1 and the 2 references"):
        metrics.knn_accuracy([[0.0]], [0], [[0.0], [1.0]], [0, 1], k=3)
    with pytest.raises(ValueError, match="dimensions"):
        metrics.precision_at_1([[0.0, 1.0]], [0], [[0.0]], [0])
    with pytest.raises(ValueError, match="labels must have shape"):
        metrics.map_at_r([[0.0], [1.0]], [0])
    assert math.isnan(metrics.precision_at_1(np.zeros((0, 2)), [], [[0.0, 0.0]], [1]))
