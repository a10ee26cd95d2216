"""Approximate nearest neighbours of embeddings: a faiss HNSW graph, for large galleries.

:mod:`keras_siamese.neighbours` ranks every reference exactly, at the cost of one matrix
product per query against the whole gallery. Here a hierarchical navigable small-world
graph (HNSW, Malkov and Yashunin 2018; ``faiss.IndexHNSWFlat``) walks from neighbour to
neighbour and scores only a few thousand gallery vectors per query.

What is approximate, and what is not:

- *Which* neighbours: the walk can miss a true neighbour and return a farther vector in
  its place. ``ef_search`` (candidates kept during the walk) trades speed for recall.
- The *order* and *distances* of what it returns are exact: the ``k`` vectors found are
  ranked by float64 Euclidean distance from coordinate differences, equal distances by
  the lowest index, as in :mod:`keras_siamese.neighbours` (the same distances, bit for bit).
- The graph is walked in float32: the gallery is stored in float32 and queries are rounded
  to float32 for the walk (not for the final distances).

How the defaults were chosen (``benchmarks/search_speed.py``: recall@10 against the exact
indices of :func:`keras_siamese.neighbours.nearest_neighbours` for 10,000 queries, 2 cores):

- 1,000,000 x 64-D embeddings with cluster structure (MNIST digits, shifted by up to 2
  pixels, through a fixed random 784 -> 64 projection; queries are the 10,000 MNIST test
  digits): with ``links=32, ef_construction=100``, recall@10 is 0.930 / 0.974 / 0.990 /
  0.997 at ``ef_search`` 16 / 32 / 64 / 128, searching 27x / 19x / 11.5x / 6x faster than
  exact search (which itself runs at about 55 % of the float32 matmul rate).
  ``ef_search=64`` leaves a margin above 0.95 for other embeddings. The build took 256 to
  341 s on one thread; an index saves the graph after its first approximate search. (On
  100,000 of these vectors, ``ef_construction=200`` built 1.8x slower than 80, for about
  +0.01 recall at equal ``ef_search``.)
- Structureless data is much harder: on 100,000 standard Gaussian vectors in 64-D,
  recall@10 is 0.75 at ``ef_search=64`` and 0.89 at 128 (0.95 took 256 in a trial).

So measure on your own embeddings with :func:`recall_at_k` before lowering ``ef_search``.

Determinism: the graph depends only on the vectors and the sequence of :meth:`add` calls.
It is built on one thread because faiss's multi-threaded insertion links vectors in
whichever order its threads reach them (two 2-thread builds of 30,000 and of 100,000
vectors gave identical results here, but nothing guarantees it); on 2 busy cores one
thread built 100,000 vectors in 10-13 s, two threads in 18-23 s. Searches run on
all of faiss's threads, one query per thread at a time, so results do not depend on the
thread count or on how queries are batched.

faiss is imported only when a search is built, so this module imports without it.
"""

from __future__ import annotations

import operator

import numpy as np

from keras_siamese.errors import ConfigError, MissingDependencyError
from keras_siamese.neighbours import squared_distances

LINKS = 32  # HNSW's M: links per vector per layer (2 * LINKS on the bottom layer)
EF_CONSTRUCTION = 100
EF_SEARCH = 64
_MAX_VECTORS = 2**31 - 1  # faiss's HNSW numbers vectors with int32
_CHUNK = 8192  # queries per faiss call: bounds the (chunk, k, D) float64 re-ranking


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError(
            "the approximate backend needs faiss: pip install faiss-cpu") from None
    return faiss


def _as_vectors(x, name: str, dims: int | None = None) -> np.ndarray:
    """``x`` as a finite, C-ordered (count, dims) float32 array, or a ValueError naming it."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numbers, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (vectors, dimensions), got shape {x.shape}")
    if dims is not None and x.shape[1] != dims:
        raise ValueError(f"{name} have {x.shape[1]} dimensions, the gallery {dims}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least 1 dimension, got shape {x.shape}")
    with np.errstate(over="ignore"):  # too large for float32 becomes inf: refused below
        vectors = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError(f"{name} contain NaN or infinite values (or values beyond float32)")
    return vectors


def _at_least_one(value, name: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


class ApproximateSearch:
    """Approximate Euclidean k nearest neighbours in a gallery of vectors (faiss HNSW).

    Gallery vectors are numbered in the order they arrive: the constructor's ``0 .. m-1``,
    then each :meth:`add` continues the count. See the module doc for what is
    approximate, how the defaults were measured, and why results are repeatable.

    Args:
        gallery: (m, D) array of finite numbers, stored as float32 (the search holds its
            own copy: about ``m * (4 D + 8.5 * links + 20)`` bytes with the graph).
        links: HNSW's ``M``; more links raise recall and memory.
        ef_construction: candidates kept while linking each vector; more is slower to
            build and gives a better graph.
        ef_search: candidates kept while searching (at least ``k`` are); also an attribute
            that can be changed between searches.
        build_threads: threads that link new vectors; 1 (the default) keeps the graph, and
            so the results, identical from run to run.

    Example:
    >>> search = ApproximateSearch([[0.0], [3.0], [1.0]])
    >>> indices, distances = search.search([[0.9], [2.0]], k=2)
    >>> indices.tolist(), distances.tolist()
    ([[2, 0], [1, 2]], [[0.09999999999999998, 0.9], [1.0, 1.0]])
    """

    def __init__(self, gallery, *, links: int = LINKS, ef_construction: int = EF_CONSTRUCTION,
                 ef_search: int = EF_SEARCH, build_threads: int = 1):
        gallery = _as_vectors(gallery, "gallery vectors")
        links = _at_least_one(links, "links")
        ef_construction = _at_least_one(ef_construction, "ef_construction")
        self.build_threads = _at_least_one(build_threads, "build_threads")
        self._faiss = _faiss()
        self._index = self._faiss.IndexHNSWFlat(gallery.shape[1], links)
        self._index.hnsw.efConstruction = ef_construction
        self.ef_search = ef_search
        self.add(gallery)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dimensions(self) -> int:
        return int(self._index.d)

    @property
    def ef_search(self) -> int:
        return int(self._index.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._index.hnsw.efSearch = _at_least_one(value, "ef_search")

    def add(self, vectors) -> None:
        """Add (a, D) vectors to the gallery; they get the next ``a`` indices."""
        vectors = _as_vectors(vectors, "added vectors", self.dimensions)
        if len(self) + len(vectors) > _MAX_VECTORS:
            raise ConfigError(f"a gallery holds at most {_MAX_VECTORS} vectors, got "
                              f"{len(self)} + {len(vectors)}")
        if not len(vectors):
            return
        threads = self._faiss.omp_get_max_threads()
        self._faiss.omp_set_num_threads(self.build_threads)
        try:
            self._index.add(vectors)
        finally:
            self._faiss.omp_set_num_threads(threads)

    def save(self, path) -> None:
        """Write the graph and its vectors to ``path`` (faiss's own format), atomically."""
        from keras_siamese.outputs import atomic_path

        with atomic_path(path) as tmp:
            self._faiss.write_index(self._index, str(tmp))

    @classmethod
    def load(cls, path, ef_search: int = EF_SEARCH) -> "ApproximateSearch":
        """A search saved by :meth:`save`; ValueError if ``path`` holds no HNSW graph."""
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:  # faiss reports unreadable files this way
            raise ValueError(f"{path} is not a faiss index: {error}") from error
        if not hasattr(index, "hnsw"):
            raise ValueError(f"{path} holds a faiss index without an HNSW graph")
        search = cls.__new__(cls)
        search._faiss, search._index, search.build_threads = faiss, index, 1
        search.ef_search = ef_search
        return search

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery vectors the graph finds for each query, nearest first.

        Args:
            queries: (n, D) array of finite numbers.
            k: neighbours per query, between 1 and the gallery size.

        Returns:
            ``(indices, distances)``: (n, k) int64 gallery indices and (n, k) float64
            Euclidean distances (not squared), ascending, ties by lowest index.
        """
        vectors = _as_vectors(queries, "queries", self.dimensions)
        queries = np.asarray(queries, np.float64)  # the exact distances use the originals
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or \
                not 1 <= k <= len(self):
            raise ConfigError(f"k must be an integer between 1 and the {len(self)} gallery "
                              f"vectors, got {k!r}")
        indices = np.zeros((len(queries), k), np.int64)
        distances = np.zeros((len(queries), k))
        for start in range(0, len(queries), _CHUNK):
            stop = start + _CHUNK
            _, found = self._index.search(vectors[start:stop], k)
            indices[start:stop], distances[start:stop] = self._ranked(
                queries[start:stop], vectors[start:stop], found)
        return indices, distances

    def _ranked(self, queries, vectors, found):
        """``found`` in exact order with exact distances."""
        # The walk can end with fewer than k vectors (a part of the graph it cannot
        # reach); those rare rows are searched by brute force over the stored vectors.
        short = np.flatnonzero((found < 0).any(axis=1))
        if len(short):
            storage = self._faiss.downcast_index(self._index.storage)
            found[short] = storage.search(vectors[short], found.shape[1])[1]
        gallery = self._index.reconstruct_batch(found.ravel()).reshape(*found.shape, -1)
        squared = squared_distances(queries[:, None, :], gallery.astype(np.float64))
        order = np.lexsort((found, squared), axis=1)
        return (np.take_along_axis(found, order, axis=1),
                np.sqrt(np.take_along_axis(squared, order, axis=1)))


def recall_at_k(approximate_indices, exact_indices) -> float:
    """Share of the exact ``k`` nearest neighbours that an approximate search returned.

    ``recall@k = mean_i |A_i & E_i| / k`` over queries ``i``, with ``A_i`` and ``E_i`` the
    ``k`` indices of row ``i`` of each array (distinct per row; negative entries, meaning
    no neighbour, never count). Only indices are compared: where several vectors tie at the
    k-th distance, returning another of them counts as a miss.

    Example:
    >>> recall_at_k([[1, 2], [3, 4]], [[2, 1], [3, 5]])
    0.75
    """
    found, exact = np.asarray(approximate_indices), np.asarray(exact_indices)
    for name, array in (("approximate indices", found), ("exact indices", exact)):
        if array.ndim != 2 or not array.size or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must be a non-empty (queries, k) integer array, got "
                             f"{array.dtype} of shape {array.shape}")
    if found.shape != exact.shape:
        raise ValueError(f"approximate indices have shape {found.shape}, exact indices "
                         f"{exact.shape}: compare the same queries and k")
    # One number per (row, index) pair, so one isin call compares every row at once;
    # negative entries get keys that match nothing.
    width = int(max(found.max(), exact.max(), 0)) + 1
    rows = np.arange(len(found), dtype=np.int64)[:, None] * width
    hits = np.isin(np.where(found >= 0, rows + found, -1), np.where(exact >= 0, rows + exact, -2))
    return float(hits.sum() / exact.size)
