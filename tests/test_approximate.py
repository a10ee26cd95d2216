"""The approximate (faiss HNSW) search: recall against exact search, exact distances,
added vectors, repeatable results and one-line errors.

Skipped only where faiss is not installed: CI installs it with the ``test`` extra.
"""

import doctest
import sys

import numpy as np
import pytest

from keras_siamese import approximate
from keras_siamese.errors import ConfigError, MissingDependencyError

DIMS = 16


@pytest.fixture(scope="module")
def faiss():
    return pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def gallery():
    return np.random.default_rng(0).standard_normal((2000, DIMS)).astype(np.float32)


@pytest.fixture(scope="module")
def queries():
    return np.random.default_rng(1).standard_normal((300, DIMS))


@pytest.fixture(scope="module")
def search(faiss, gallery):
    return approximate.ApproximateSearch(gallery)


def brute_force(queries, gallery, k):
    """Indices and Euclidean distances of the k nearest, by numpy (ties by index)."""
    distances = np.linalg.norm(queries[:, None, :] - gallery[None, :, :].astype(np.float64),
                               axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def test_recall_at_10_against_exact_search(search, gallery, queries):
    indices, _ = search.search(queries, 10)
    exact, _ = brute_force(queries, gallery, 10)
    assert indices.shape == (300, 10) and indices.dtype == np.int64
    assert approximate.recall_at_k(indices, exact) >= 0.95
    # the project's exact engine agrees with the brute force it is compared to here
    from keras_siamese.neighbours import nearest_neighbours

    assert np.array_equal(nearest_neighbours(queries, gallery, 10), exact)


def test_distances_are_euclidean_and_ascending(search, gallery, queries):
    indices, distances = search.search(queries, 10)
    expected = np.linalg.norm(queries[:, None, :] - gallery[indices].astype(np.float64), axis=2)
    assert distances.dtype == np.float64
    np.testing.assert_allclose(distances, expected, rtol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()
    # the same distances, bit for bit, as the exact engine's for the same neighbours
    from keras_siamese.neighbours import neighbour_distances

    assert np.array_equal(distances, neighbour_distances(queries, gallery, indices))


def test_a_gallery_vector_finds_itself_first(search, gallery):
    indices, distances = search.search(gallery[:50], 1)
    assert indices[:, 0].tolist() == list(range(50)) and (distances == 0).all()


def test_added_vectors_are_found(faiss, gallery):
    search = approximate.ApproximateSearch(gallery[:1000])
    new = gallery[1000:1100] + 100.0  # far from everything else: each finds itself first
    assert search.add(new) is None and len(search) == 1100
    indices, distances = search.search(new, 3)
    assert indices[:, 0].tolist() == list(range(1000, 1100))
    assert (distances[:, 0] == 0).all() and (indices[:, 1:] >= 1000).all()


def test_ties_rank_by_lowest_index(faiss):
    # Four copies of one point: equal distances come back by index, as in exact search.
    gallery = np.array([[1.0, 0.0], [5.0, 5.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    indices, distances = approximate.ApproximateSearch(gallery).search([[0.0, 0.0]], 5)
    assert indices.tolist() == [[0, 2, 3, 4, 1]]
    assert distances[0, :4].tolist() == [1.0] * 4


def test_results_repeat_exactly(faiss, gallery, queries):
    first = approximate.ApproximateSearch(gallery).search(queries, 10)
    again = approximate.ApproximateSearch(gallery)
    # batching does not matter either: each query is searched on its own
    second = [again.search(queries[i:i + 7], 10) for i in range(0, len(queries), 7)]
    assert np.array_equal(first[0], np.vstack([s[0] for s in second]))
    assert np.array_equal(first[1], np.vstack([s[1] for s in second]))


def test_short_results_are_completed_by_brute_force(search, gallery, queries, monkeypatch):
    # If the graph walk cannot reach k vectors it pads with -1: those rows are searched
    # exhaustively instead of returning holes.
    index = search._index
    walk = index.search

    def short_walk(x, k):
        distances, labels = walk(x, k)
        labels[::2, -3:] = -1
        return distances, labels

    monkeypatch.setattr(search, "_index", type("Short", (), {
        "search": staticmethod(short_walk), "storage": index.storage,
        "reconstruct_batch": index.reconstruct_batch, "ntotal": index.ntotal, "d": index.d})())
    indices, distances = search.search(queries[:20], 10)
    exact, exact_distances = brute_force(queries[:20], gallery, 10)
    assert (indices >= 0).all()
    assert np.array_equal(indices[::2], exact[::2])
    np.testing.assert_allclose(distances[::2], exact_distances[::2], rtol=1e-12)


def test_ef_search_can_change(search, queries):
    search.ef_search = 10
    try:
        assert search.ef_search == 10
        assert search.search(queries[:5], 10)[0].shape == (5, 10)  # at least k are kept
    finally:
        search.ef_search = approximate.EF_SEARCH


def test_empty_query_set(search):
    indices, distances = search.search(np.zeros((0, DIMS)), 4)
    assert indices.shape == distances.shape == (0, 4)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(DIMS), "2-D"),
    (np.zeros((2, 3)), "3 dimensions, the gallery 16"),
    (np.full((2, DIMS), np.nan), "NaN or infinite"),
    (np.full((2, DIMS), 1e300), "NaN or infinite"),
    (np.array([["a"] * DIMS]), "must be numbers"),
])
def test_bad_queries_raise(search, bad, match):
    with pytest.raises(ValueError, match=match):
        search.search(bad, 1)


@pytest.mark.parametrize("k", [0, -1, 2001, 2.0, True, None])
def test_k_outside_the_gallery_raises(search, k):
    with pytest.raises(ConfigError, match="k must be an integer between 1 and the 2000"):
        search.search(np.zeros((1, DIMS)), k)


def test_bad_galleries_and_settings_raise(faiss, gallery):
    with pytest.raises(ValueError, match="gallery vectors must be a 2-D array"):
        approximate.ApproximateSearch(gallery[0])
    with pytest.raises(ValueError, match="gallery vectors contain NaN"):
        approximate.ApproximateSearch(np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        approximate.ApproximateSearch(np.zeros((3, 0)))
    with pytest.raises(ConfigError, match="links must be at least 1"):
        approximate.ApproximateSearch(gallery, links=0)
    with pytest.raises(ConfigError, match="ef_construction must be an integer"):
        approximate.ApproximateSearch(gallery, ef_construction=1.5)
    search = approximate.ApproximateSearch(gallery[:10])
    with pytest.raises(ConfigError, match="ef_search must be at least 1"):
        search.ef_search = 0
    with pytest.raises(ValueError, match="added vectors have 3 dimensions"):
        search.add(np.zeros((1, 3)))
    assert len(search) == 10  # nothing was added by the failed call


def test_an_empty_gallery_grows(faiss):
    search = approximate.ApproximateSearch(np.zeros((0, 2)))
    with pytest.raises(ConfigError, match="between 1 and the 0 gallery vectors"):
        search.search([[0.0, 0.0]], 1)
    search.add([[3.0, 4.0]])
    assert search.search([[0.0, 0.0]], 1)[1].tolist() == [[5.0]]


def test_recall_at_k():
    assert approximate.recall_at_k([[1, 2], [3, 4]], [[2, 1], [3, 5]]) == 0.75
    # an index of another row does not count; -1 (no neighbour) never counts
    assert approximate.recall_at_k([[5, -1], [-1, 0]], [[0, -1], [5, -1]]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        approximate.recall_at_k([[1, 2]], [[1, 2, 3]])
    with pytest.raises(ValueError, match="integer array"):
        approximate.recall_at_k([[1.0]], [[1]])


def test_docstring_examples(faiss):
    result = doctest.testmod(approximate)
    assert result.attempted > 0 and result.failed == 0


def test_without_faiss_the_module_imports_and_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(MissingDependencyError,
                       match="^the approximate backend needs faiss: pip install faiss-cpu$"):
        approximate.ApproximateSearch(np.zeros((3, 2)))
    assert approximate.recall_at_k([[0]], [[0]]) == 1.0  # needs no faiss


def test_a_saved_index_builds_its_graph_once_and_rebuilds_it_when_it_changes(
        faiss, gallery, queries, tmp_path, monkeypatch):
    """The graph is saved beside index.npz for exactly these embeddings: reloaded, not
    rebuilt; an index changed by --add gets a new graph and loses the stale one; a
    damaged graph file is built again."""
    from keras_siamese.index import Index

    index = Index(gallery[:1500].copy(), np.zeros(1500, np.int32), ["a"],
                  [f"g{i}" for i in range(1500)], "/nowhere", "fingerprint", (28, 28, 1))
    index.save(tmp_path)
    loaded = Index.load(tmp_path)
    first = loaded.search(queries, 5, "approximate")
    graphs = list(tmp_path.glob("hnsw-*.faiss"))
    assert len(graphs) == 1

    def no_building(*args, **kwargs):
        raise AssertionError("the saved graph should have been loaded")

    with monkeypatch.context() as patch:
        patch.setattr(approximate.ApproximateSearch, "__init__", no_building)
        again = Index.load(tmp_path).search(queries, 5, "approximate")
    np.testing.assert_array_equal(again.indices, first.indices)
    np.testing.assert_array_equal(again.distances, first.distances)

    loaded.embeddings = gallery.copy()  # as --add would: more items, a new digest
    loaded.labels, loaded.sources = np.zeros(2000, np.int32), [f"g{i}" for i in range(2000)]
    loaded.save(tmp_path)
    grown = Index.load(tmp_path).search(gallery[1700:1710], 1, "approximate")
    assert grown.indices[:, 0].tolist() == list(range(1700, 1710))
    (graph,) = tmp_path.glob("hnsw-*.faiss")
    assert graph != graphs[0]

    graph.write_bytes(b"not a faiss index")
    repaired = Index.load(tmp_path).search(queries, 5, "approximate")
    assert repaired.indices.shape == (300, 5) and graph.stat().st_size > 1000
