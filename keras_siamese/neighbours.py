"""Exact nearest neighbours of embeddings: the search behind the metrics and a gallery.

Nearest neighbours are ranked by the squared Euclidean distance ``|q - r|^2`` computed
exactly (in float64, from coordinate differences); equal distances are ranked by the
lowest reference index. So the ranking equals sorting brute-force float64 distances by
``(distance, index)``, ties included. :func:`nearest_neighbours` explains how this stays
fast. Queries are handled ``chunk_size`` at a time, so memory holds
``chunk_size x len(references)`` float64 scores at a time, however many queries there are.

- :func:`nearest_neighbours`: the ``k`` nearest references of each query;
- :func:`neighbour_chunks`: the same, a chunk of queries at a time, with a number of
  neighbours per query and, optionally, one reference per query that it never returns
  (itself, for leave-one-out search within one set);
- :func:`neighbour_distances`: the exact Euclidean distances of given neighbours;
- :func:`as_embeddings`, :func:`squared_distances`: the validation and exact distances
  shared with :mod:`keras_siamese.metrics`.

This is the one module of the metric code that uses TensorFlow: for the matrix product
and top-k that score each chunk.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

_BLOCK = 64  # references per block in _largest's two-stage top-k

# ``(2D + 8) * _ROUNDING * (|q| + max |r|)^2`` bounds, per query, the rounding error of
# the matrix-product scores plus that of the exact float64 distances: at most
# (2D + 1) + (D + 3) units of 2^-53, so the bound has room to spare.
_ROUNDING = 2.0 ** -52


def as_embeddings(x, name: str = "embeddings") -> np.ndarray:
    """``x`` as a finite (examples, dimensions) float64 array, or a ValueError naming it.

    Example:
    >>> as_embeddings([[1, 2]]).dtype
    dtype('float64')
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (examples, dimensions), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values (did training diverge?)")
    return x


def squared_distances(a, b):
    """Exact ``|a - b|^2 = sum_j (a_j - b_j)^2`` along the last axis, for broadcastable
    (..., D) arrays.

    Sums dimension by dimension in a fixed order, so identical points always get
    bit-identical distances (a matrix product does not guarantee that).

    Example:
    >>> squared_distances([[0.0, 0.0], [1.0, 1.0]], [[3.0, 4.0]]).tolist()
    [25.0, 13.0]
    """
    a, b = np.asarray(a), np.asarray(b)
    total = np.zeros(np.broadcast_shapes(a.shape, b.shape)[:-1])
    for j in range(a.shape[-1]):
        total += np.square(a[..., j] - b[..., j])
    return total


def _largest(scores, k: int):
    """Values and columns (numpy) of the k largest scores per row, largest first.

    Equal scores come in no particular order: :func:`_search` never trusts the order of
    scores closer than the rounding bound, let alone equal ones.

    For small k, rows are cut into blocks of ``_BLOCK`` columns (the width is a multiple
    of it): the k blocks with the largest maxima hold the k largest scores, as those k
    maxima are at least as large as every score of any other block. So a max per block
    plus a top-k of ``k * _BLOCK`` candidates replaces a top-k of the whole row. For large
    k, a linear-time partial sort (``np.argpartition``) beats ``tf.math.top_k``, which
    slows down as k grows.
    """
    n, width = scores.shape
    if k * _BLOCK * 4 <= width:
        blocks = tf.reshape(scores, (n, width // _BLOCK, _BLOCK))
        _, best = tf.math.top_k(tf.reduce_max(blocks, axis=2), k)
        candidates = tf.reshape(tf.gather(blocks, best, batch_dims=1), (n, k * _BLOCK))
        values, position = tf.math.top_k(candidates, k)
        columns = tf.gather(best, position // _BLOCK, batch_dims=1) * _BLOCK + \
            position % _BLOCK
        return values.numpy(), columns.numpy()
    scores = scores.numpy()
    rows = np.arange(n)[:, None]
    columns = np.argpartition(scores, width - k, axis=1)[:, width - k:]
    values = scores[rows, columns]
    order = np.argsort(-values, axis=1)
    return values[rows, order], columns[rows, order]


class _Groups(NamedTuple):
    """The distinct rows of an array and which rows repeat each of them.

    Distinct row ``g`` is ``vectors[g]``; the rows equal to it are
    ``members[start[g] : start[g] + count[g]]``, in ascending order.
    """

    vectors: np.ndarray
    members: np.ndarray
    start: np.ndarray
    count: np.ndarray


def _groups(x) -> _Groups:
    x = x + 0.0  # -0.0 becomes 0.0: one vector, one group
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.itemsize * x.shape[1]))).ravel()
    _, first, inverse, count = np.unique(rows, return_index=True, return_inverse=True,
                                         return_counts=True)
    members = np.argsort(inverse.reshape(-1), kind="stable")
    return _Groups(x[first], members, np.r_[0, np.cumsum(count)[:-1]], count)


def _members(groups: _Groups, chosen, take):
    """Concatenated first ``take[j]`` members of each group ``chosen[j]`` (flat arrays)."""
    chosen, take = chosen[take > 0], take[take > 0]  # padding columns are never taken
    total = int(take.sum())
    first = np.repeat(groups.start[chosen] - (np.cumsum(take) - take), take)
    return groups.members[first + np.arange(total)]


class _Scored(NamedTuple):
    """References ready to be scored against any chunk of queries.

    ``augmented`` holds row ``(r, |r|^2)`` per distinct reference vector, padded with
    rows that score -inf to a multiple of ``_BLOCK`` rows; ``count`` is the number of
    references per row (0 for padding), ``max_norm`` the largest ``|r|``.
    """

    groups: _Groups
    augmented: tf.Tensor
    count: np.ndarray
    max_norm: float


def _score_references(references) -> _Scored:
    dims = references.shape[1]
    # Identical references get one score and one exact distance: a collapsed model (many
    # images on one point) then costs no more than a healthy one.
    groups = _groups(references)
    distinct = len(groups.vectors)
    norms2 = np.sum(np.square(groups.vectors), axis=1)
    # One matrix product gives every score ``2 q.r - |r|^2 = |q|^2 - |q - r|^2`` (larger
    # = nearer). Padding vectors score -inf, so the width is a multiple of _BLOCK.
    width = -(-distinct // _BLOCK) * _BLOCK
    augmented = np.zeros((width, dims + 1))
    augmented[:distinct, :dims] = groups.vectors
    augmented[:distinct, dims] = norms2
    augmented[distinct:, dims] = np.inf
    count = np.r_[groups.count, np.zeros(width - distinct, np.int64)]
    return _Scored(groups, tf.constant(augmented), count, math.sqrt(norms2.max()))


def _search(scored: _Scored, q, need) -> np.ndarray:
    """The exact ``need[i]`` nearest references of each query ``q[i]``, -1 after them."""
    groups, count = scored.groups, scored.count
    n, dims = q.shape
    scores = tf.matmul(tf.constant(np.hstack([2.0 * q, -np.ones((n, 1))])), scored.augmented,
                       transpose_b=True)
    top = min(int(need.max()) + 1, len(count))
    values, chosen = _largest(scores, top)  # distinct vectors, nearest first
    values = np.hstack([values, np.full((n, 1), -np.inf)])
    covered = np.cumsum(count[chosen], axis=1)  # references in the first j+1 vectors
    last = np.sum(covered < need[:, None], axis=1)  # the last vector needed per row
    # Why not trust the product: its rounding can swap distances that tie or nearly
    # tie. Where the scores of the vectors needed, and of the next one, are spaced more
    # than twice the rounding bound apart, their order is provably exact; members of one
    # vector tie exactly and rank by index. Other rows are ranked again below.
    error = (2 * dims + 8) * _ROUNDING * (np.linalg.norm(q, axis=1) + scored.max_norm) ** 2
    with np.errstate(invalid="ignore"):  # -inf - -inf beyond the padding: not needed
        gaps = values[:, :-1] - values[:, 1:]
    unsure = np.any((gaps <= 2 * error[:, None]) & (np.arange(top) <= last[:, None]),
                    axis=1)
    take = np.clip(need[:, None] - (covered - count[chosen]), 0, count[chosen])
    neighbours = np.full((n, need.max()), -1, np.int64)
    rows = np.repeat(np.arange(n), need)
    neighbours[rows, np.arange(len(rows)) - np.repeat(np.cumsum(need) - need, need)] = \
        _members(groups, chosen.ravel(), take.ravel())
    for i in np.flatnonzero(unsure):
        # Every vector that could rank among the first need[i], by exact distance.
        row = scores[i].numpy()
        window = np.flatnonzero(row >= values[i, last[i]] - 2 * error[i])
        exact = np.repeat(squared_distances(q[i], groups.vectors[window]), count[window])
        members = _members(groups, window, count[window])
        neighbours[i, :need[i]] = members[np.lexsort((members, exact))[:need[i]]]
    return neighbours


def _drop_skipped(neighbours, skip, need) -> np.ndarray:
    """Drop each row's skipped reference, wherever it ranks (else its ``need``-th one)."""
    itself = neighbours == skip[:, None]
    itself &= np.arange(neighbours.shape[1]) < need[:, None]
    position = np.where(itself.any(axis=1), np.argmax(itself, axis=1), need - 1)
    columns = np.arange(neighbours.shape[1] - 1)
    return np.take_along_axis(neighbours, columns + (columns >= position[:, None]), axis=1)


def _chunks(queries, references, k, skip, chunk_size: int):
    scored = _score_references(references)
    for start in range(0, len(queries), chunk_size):
        stop = start + chunk_size
        need = k[start:stop] + (skip is not None)  # a query may find itself
        neighbours = _search(scored, queries[start:stop], need)
        if skip is not None:
            neighbours = _drop_skipped(neighbours, skip[start:stop], need)
        yield start, neighbours


def _queries_and_references(query_embeddings, reference_embeddings, chunk_size: int):
    queries = as_embeddings(query_embeddings, "query embeddings")
    references = as_embeddings(reference_embeddings, "reference embeddings")
    if queries.shape[1] != references.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, references "
                         f"{references.shape[1]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return queries, references


def nearest_neighbours(query_embeddings, reference_embeddings, k: int = 1,
                       chunk_size: int = 256) -> np.ndarray:
    """Indices of the ``k`` nearest references of each query, nearest first.

    Ranked by squared Euclidean distance ``|q - r|^2`` computed in float64, with equal
    distances ranked by the lowest reference index; this ranking is exact (equal to
    sorting brute-force float64 distances by ``(distance, index)``).

    How: identical references are merged (they tie exactly and rank by index). A float64
    matrix product ``2 q.r - |r|^2`` scores every distinct reference; it is fast, but its
    rounding can swap distances that tie or nearly tie. Where the scores a query needs
    are spaced more than a rounding bound apart, their order is provably exact; any other
    query is ranked again from exact, difference-based distances of the few references
    that could be among its ``k`` nearest. So the cost is one matrix product, plus a
    little for queries with ties.

    Args:
        query_embeddings: (n, D) array.
        reference_embeddings: (m, D) array, ``m >= k``.
        k: how many neighbours.
        chunk_size: queries per chunk; memory holds ``chunk_size * m`` float64 values.

    Returns:
        (n, k) int64 array of reference indices.

    Example:
    >>> nearest_neighbours([[0.0], [2.9]], [[3.0], [1.0], [-1.0]], k=2).tolist()
    [[1, 2], [0, 1]]
    """
    queries, references = _queries_and_references(query_embeddings, reference_embeddings,
                                                  chunk_size)
    if not 1 <= k <= len(references):
        raise ValueError(f"k must be between 1 and the {len(references)} references, got {k}")
    neighbours = np.zeros((len(queries), k), np.int64)
    for start, chunk in _chunks(queries, references, np.full(len(queries), k), None,
                                chunk_size):
        neighbours[start:start + len(chunk)] = chunk
    return neighbours


def neighbour_chunks(query_embeddings, reference_embeddings, k, skip=None,
                     chunk_size: int = 256):
    """The nearest references of each query, ranked as in :func:`nearest_neighbours`,
    a chunk of ``chunk_size`` queries at a time.

    Each query has its own number of neighbours ``k[i]`` and, with ``skip``, a reference
    ``skip[i]`` it never returns: itself, when queries are references too (leave-one-out
    search). Chunks keep memory bounded when some ``k[i]`` are large.

    Args:
        query_embeddings: (n, D) array.
        reference_embeddings: (m, D) array.
        k: an int, or (n,) ints, each between 1 and m (m - 1 with ``skip``).
        skip: None, or (n,) reference indices: ``skip[i]`` is never a neighbour of query i
            (the others close up; a ``skip[i]`` outside the references skips nothing).
        chunk_size: queries per chunk; memory holds ``chunk_size * m`` float64 values.

    Returns:
        An iterator of ``(start, neighbours)``: queries ``start .. start + c - 1`` and a
        (c, max k over the chunk) int64 array whose row ``i`` holds the indices of the
        ``k[start + i]`` nearest references, nearest first, then -1 (no neighbour).

    Example (each point is also a reference; it skips itself):
    >>> points = [[0.0], [1.0], [3.0]]
    >>> [(start, rows.tolist()) for start, rows in
    ...  neighbour_chunks(points, points, k=[1, 2, 1], skip=[0, 1, 2], chunk_size=2)]
    [(0, [[1, -1], [0, 2]]), (2, [[1]])]
    """
    queries, references = _queries_and_references(query_embeddings, reference_embeddings,
                                                  chunk_size)
    n, limit = len(queries), len(references) - (skip is not None)
    per_query = np.asarray(k)
    if per_query.shape not in ((), (n,)) or not np.issubdtype(per_query.dtype, np.integer):
        raise ValueError(f"k must be an int or {n} ints (one per query), got {k!r}")
    per_query = np.broadcast_to(per_query.astype(np.int64), (n,))
    if n and not 1 <= per_query.min() <= per_query.max() <= limit:
        raise ValueError(f"k must be between 1 and {limit} (the {len(references)} "
                         f"references{' less the skipped one' if skip is not None else ''}), "
                         f"got {per_query.min()} .. {per_query.max()}")
    if skip is not None:
        skip = np.asarray(skip)
        if skip.shape != (n,) or not np.issubdtype(skip.dtype, np.integer):
            raise ValueError(f"skip must be {n} integer reference indices (one per query), "
                             f"got shape {skip.shape}")
    return _chunks(queries, references, per_query, skip, chunk_size)


def neighbour_distances(query_embeddings, reference_embeddings, neighbours) -> np.ndarray:
    """Euclidean distances of given neighbours, e.g. of :func:`nearest_neighbours`.

    ``d[i, j] = |q_i - r_{neighbours[i, j]}| = sqrt(sum_d (q_id - r_{neighbours[i, j] d})^2)``

    computed in float64 from coordinate differences (:func:`squared_distances`), exactly
    as the metrics' pair distances: identical points get bit-identical distances, and the
    rows of :func:`nearest_neighbours` come out in ascending order.

    Args:
        query_embeddings: (n, D) array.
        reference_embeddings: (m, D) array.
        neighbours: (n, k) integer indices into the references, in [0, m).

    Returns:
        (n, k) float64 distances; memory holds ``n * k * D`` float64 values at once.

    Example:
    >>> neighbour_distances([[0.0], [2.0]], [[3.0], [1.0], [-1.0]], [[1, 2], [1, 0]]).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    queries, references = _queries_and_references(query_embeddings, reference_embeddings, 1)
    neighbours = np.asarray(neighbours)
    if neighbours.ndim != 2 or len(neighbours) != len(queries) or \
            not np.issubdtype(neighbours.dtype, np.integer):
        raise ValueError(f"neighbours must be ({len(queries)}, k) integer indices (one row "
                         f"per query), got {neighbours.dtype} of shape {neighbours.shape}")
    if neighbours.size and not 0 <= neighbours.min() <= neighbours.max() < len(references):
        raise ValueError(f"neighbours must be indices of the {len(references)} references, "
                         f"got {neighbours.min()} .. {neighbours.max()}")
    return np.sqrt(squared_distances(queries[:, None, :], references[neighbours]))
