"""Exact nearest neighbours of embeddings: the search behind the metrics and a gallery.

Nearest neighbours are ranked by the squared Euclidean distance ``|q - r|^2`` computed
exactly (in float64, from coordinate differences); equal distances are ranked by the
lowest reference index. So the ranking equals sorting brute-force float64 distances by
``(distance, index)``, ties included. :func:`nearest_neighbours` explains how this stays
fast. Queries are handled ``chunk_size`` at a time, so memory stays bounded however many
queries there are (``benchmarks/search_speed.py``: 10,000 queries against 1,000,000 64-D
vectors at about 55 % of TensorFlow's float32 matmul rate, 0.5 to 0.8 GiB beyond the
gallery).

- :func:`nearest_neighbours`: the ``k`` nearest references of each query;
- :func:`neighbour_chunks`: the same, a chunk of queries at a time, with a number of
  neighbours per query and, optionally, one reference per query that it never returns
  (itself, for leave-one-out search within one set);
- :func:`neighbour_distances`: the exact Euclidean distances of given neighbours;
- :func:`as_embeddings`, :func:`squared_distances`: the validation and exact distances
  shared with :mod:`keras_siamese.metrics`.

This is the one module of the metric code that uses TensorFlow: for the matrix products
and top-k that score each chunk.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

_BLOCK = 32  # references per block: a block's best score stands for the block
_TILE = 1024  # references scored at a time in _best_blocks (their scores stay in cache)
CHUNK_SIZE = 1024  # queries per chunk: measured fastest here with _TILE (2 cores, 2 MiB L2)
_ROWS = 65536  # references converted at a time: bounds the float64 temporaries
_SPARE = 8  # candidates beyond the neighbours needed (see _top)
_SPARE_BLOCKS = 2  # blocks searched beyond the neighbours needed (see _candidates)
_FULL_SCORES = 2**25  # most scores held at once when whole rows are scored (256 MiB float64)


def _slack(dims: int) -> int:
    """Scores are rounded; ``_slack(D) * eps * (|q'| + max |r'|)^2`` bounds, per query, how
    far a score may be from the exact ``|q'|^2 - |q' - r'|^2`` (eps: the machine epsilon of
    the scores' dtype, twice its unit roundoff u; q', r' centred, see _score_references): a
    (D + 1)-term dot product errs by at most (D + 1) u, rounding the inputs a few u more,
    and the rest is room for the float64 distances it is compared with."""
    return 2 * dims + 16


# float32 scores need squares of |q'| + max |r'| that neither overflow nor lose digits
# to underflow; outside this range the scores are computed in float64.
_FLOAT32_RANGE = (1e-15, 1e15)


def as_embeddings(x, name: str = "embeddings") -> np.ndarray:
    """``x`` as a finite (examples, dimensions) float64 array, or a ValueError naming it.

    Example:
    >>> as_embeddings([[1, 2]]).dtype
    dtype('float64')
    """
    return _as_exact(x, name).astype(np.float64, copy=False)


def _as_exact(x, name: str) -> np.ndarray:
    """``x`` validated as :func:`as_embeddings` does, float32 kept as it is (converting it
    to float64 is exact, so a gallery needs no float64 copy)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (examples, dimensions), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values (did training diverge?)")
    return x


def squared_distances(a, b):
    """Exact ``|a - b|^2 = sum_j (a_j - b_j)^2`` along the last axis, for broadcastable
    (..., D) arrays, in float64.

    Sums dimension by dimension in a fixed order, so identical points always get
    bit-identical distances (a matrix product does not guarantee that).

    Example:
    >>> squared_distances([[0.0, 0.0], [1.0, 1.0]], [[3.0, 4.0]]).tolist()
    [25.0, 13.0]
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    total = np.zeros(np.broadcast_shapes(a.shape, b.shape)[:-1])
    for j in range(a.shape[-1]):
        total += np.square(a[..., j] - b[..., j])
    return total


class _Groups(NamedTuple):
    """The distinct rows of an array and which rows repeat each of them.

    Distinct row ``g`` is ``vectors[g]``; the rows equal to it are
    ``members[start[g] : start[g] + count[g]]``, in ascending order.
    """

    vectors: np.ndarray
    members: np.ndarray
    start: np.ndarray
    count: np.ndarray


def _all_distinct(x) -> bool:
    """True if no two rows of ``x`` are equal (False may also mean a hash collision).

    Sorting a 64-bit hash of each row's bits is several times faster than sorting the
    rows themselves, and equal rows always hash alike."""
    words = np.ascontiguousarray(x).view(np.uint32)
    multipliers = np.random.default_rng(0).integers(1, 2**63, words.shape[1], np.uint64) | 1
    hashes = np.concatenate([  # a random linear hash, modulo 2^64 (wrapping by design)
        (words[start:start + _ROWS].astype(np.uint64) * multipliers).sum(axis=1)
        for start in range(0, len(words), _ROWS)] or [np.zeros(0, np.uint64)])
    hashes.sort()
    return not np.any(hashes[1:] == hashes[:-1])


def _groups(x) -> _Groups:
    if np.any(np.signbit(x) & (x == 0)):
        x = x + x.dtype.type(0)  # -0.0 becomes 0.0: one vector, one group
    if _all_distinct(x):  # the usual case: no copy, each row its own group
        every = np.arange(len(x))
        return _Groups(x, every, every, np.ones(len(x), np.int64))
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.itemsize * x.shape[1]))).ravel()
    _, first, inverse, count = np.unique(rows, return_index=True, return_inverse=True,
                                         return_counts=True)
    del rows
    members = np.argsort(inverse.reshape(-1), kind="stable")
    return _Groups(x[first], members, np.r_[0, np.cumsum(count)[:-1]], count)


def _members(groups: _Groups, chosen, take):
    """Concatenated first ``take[j]`` members of each group ``chosen[j]`` (flat arrays)."""
    chosen, take = chosen[take > 0], take[take > 0]  # padding columns are never taken
    total = int(take.sum())
    first = np.repeat(groups.start[chosen] - (np.cumsum(take) - take), take)
    return groups.members[first + np.arange(total)]


class _Scored(NamedTuple):
    """References ready to be scored against any chunk of queries (see _score_references).

    ``tiles`` holds row ``(r', |r'|^2)`` per distinct reference vector
    ``r' = r - centre``,
    padded with rows that score -inf to whole tiles, shaped (tiles, tile rows, D + 1);
    ``count`` is the number of references per row (0 for padding); ``radius`` the largest
    ``|r'|``; ``eps`` the machine epsilon of the scores' dtype.
    """

    groups: _Groups
    tiles: tf.Tensor
    count: np.ndarray
    centre: np.ndarray
    radius: float
    eps: float

    @property
    def flat(self) -> tf.Tensor:
        return tf.reshape(self.tiles, (-1, self.tiles.shape[-1]))


def _blocked(top: int, width: int) -> bool:
    """Whether :func:`_candidates` finds ``top`` candidates among ``width`` by blocks."""
    return top * _BLOCK * 4 <= width


def _score_references(references, most_needed: int) -> _Scored:
    """References ready for :func:`_search` of at most ``most_needed`` neighbours."""
    # Identical references get one score and one exact distance: a collapsed model (many
    # images on one point) then costs no more than a healthy one.
    groups = _groups(references)
    vectors = groups.vectors
    distinct, dims = vectors.shape
    # Distances do not change when every point moves by the same vector, but the scores'
    # rounding error grows with |q| + |r|: centring the references shrinks it, so fewer
    # queries need the exact re-ranking (embeddings often sit far from the origin).
    centre = vectors.mean(axis=0, dtype=np.float64)
    # One matrix product gives every score ``2 q'.r' - |r'|^2 = |q'|^2 - |q' - r'|^2``
    # (larger = nearer); padding rows score -inf.
    tile = min(_TILE, -(-distinct // _BLOCK) * _BLOCK)
    width = -(-distinct // tile) * tile
    # float32 scores (twice float64's speed) when few neighbours are needed: then the
    # exact distances of a few candidates per query settle the order (_search). Many
    # neighbours (MAP@R's R) would need too many: float64 scores order them directly.
    blocked = _blocked(_top(most_needed, width), width)
    for dtype in (np.float32, np.float64) if blocked else (np.float64,):
        augmented = np.zeros((width, dims + 1), dtype)
        augmented[distinct:, dims] = np.inf
        radius2 = 0.0
        for start in range(0, distinct, _ROWS):  # bounded float64 temporaries
            part = vectors[start:start + _ROWS] - centre
            norms2 = np.sum(np.square(part), axis=1)
            radius2 = max(radius2, float(norms2.max()))
            augmented[start:start + len(part), :dims] = part
            augmented[start:start + len(part), dims] = norms2
        radius = math.sqrt(radius2)
        if radius == 0 or _FLOAT32_RANGE[0] < radius < _FLOAT32_RANGE[1]:
            break
    tiles = tf.convert_to_tensor(augmented.reshape(width // tile, tile, dims + 1))
    del augmented
    count = np.r_[groups.count, np.zeros(width - distinct, np.int64)]
    return _Scored(groups, tiles, count, centre, radius, float(np.finfo(dtype).eps))


def _best_blocks(queries, tiles, blocks, top):
    """The ``top`` best scores of each query among the references of its ``blocks``
    blocks of ``_BLOCK`` with the best maxima, as (values, columns, bound): ``bound`` is
    at least every score outside them (see :func:`_candidates`).

    Scoring one tile at a time and keeping only its block maxima keeps each tile's scores
    in cache: the whole (n, references) score matrix never goes through memory, which
    would take longer than the product itself."""
    n, columns = tf.shape(queries)[0], tf.shape(tiles)[-1]

    def tile_maxima(tile):
        scores = tf.matmul(queries, tile, transpose_b=True)
        return tf.reduce_max(tf.reshape(scores, (n, -1, _BLOCK)), axis=2)

    maxima = tf.map_fn(tile_maxima, tiles, parallel_iterations=2,
                       fn_output_signature=queries.dtype)  # (tiles, n, blocks per tile)
    maxima = tf.reshape(tf.transpose(maxima, (1, 0, 2)), (n, -1))
    best_maxima, best = tf.math.top_k(maxima, blocks)
    vectors = tf.gather(tf.reshape(tiles, (-1, _BLOCK, columns)), best)
    scores = tf.einsum("nd,nbd->nb", queries, tf.reshape(vectors, (n, -1, columns)))
    values, position = tf.math.top_k(scores, top)
    chosen = tf.gather(best, position // _BLOCK, batch_dims=1) * _BLOCK + position % _BLOCK
    # Others: in a chosen block, at most the top-th value; elsewhere, at most the
    # best maximum of the blocks not chosen.
    return values, chosen, tf.maximum(values[:, -1], best_maxima[:, -1])


# One trace per dtype for any shapes: a search traces once per process.
_BEST_BLOCKS = {dtype: tf.function(_best_blocks, input_signature=[
    tf.TensorSpec((None, None), dtype), tf.TensorSpec((None, None, None), dtype),
    tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)])
    for dtype in (tf.float32, tf.float64)}


def _candidates(scored: _Scored, augmented_queries, top: int):
    """The ``top`` best-scoring distinct vectors of each query, best first, as (values,
    columns), and a bound that every other vector's score is at most.

    For small ``top``: only the blocks with the best maxima are scored again
    (:func:`_best_blocks`); the best ``b`` blocks hold the ``b`` best scores, as their
    maxima are at least as large as every score of any other block. Fewer blocks than
    candidates are searched (a block often holds several near neighbours): the bound
    then says how good the rest could be. For large ``top``, all scores of a few queries
    at a time and a linear-time partial sort (``np.argpartition``).
    """
    n = augmented_queries.shape[0]
    width = len(scored.count)
    if _blocked(top, width):
        values, columns, bound = _BEST_BLOCKS[augmented_queries.dtype](
            augmented_queries, scored.tiles, max(1, top - _SPARE + _SPARE_BLOCKS), top)
        return values.numpy(), columns.numpy().astype(np.int64), bound.numpy()
    values = np.zeros((n, top), augmented_queries.dtype.as_numpy_dtype)
    columns = np.zeros((n, top), np.int64)
    step = max(1, _FULL_SCORES // width)
    rows = np.arange(min(n, step))[:, None]
    for start in range(0, n, step):
        scores = tf.matmul(augmented_queries[start:start + step], scored.flat,
                           transpose_b=True).numpy()
        part = np.argpartition(scores, width - top, axis=1)[:, width - top:]
        part_values = scores[rows[:len(scores)], part]
        order = np.argsort(-part_values, axis=1)
        values[start:start + step] = part_values[rows[:len(scores)], order]
        columns[start:start + step] = part[rows[:len(scores)], order]
    # Every other vector scores at most the top-th value (-inf: there are none).
    bound = values[:, -1] if top < width else np.full(n, -np.inf)
    return values, columns, bound


def _top(most_needed: int, width: int) -> int:
    """Candidates per query: the distinct vectors needed, one more to see a tie at the
    edge, and ``_SPARE`` more so that edge is usually well beyond the last one needed."""
    return min(most_needed + 1 + _SPARE, width)


def _search(scored: _Scored, q, need) -> np.ndarray:
    """The exact ``need[i]`` nearest references of each query ``q[i]``, -1 after them.

    Rounded scores pick a few candidates per query, then their order is proven:

    - float64 scores (precise): where the candidates' scores are spaced more than twice
      the rounding bound apart, up to the last one needed and the next, their order is
      the exact order, and every other vector is farther;
    - float32 scores: the candidates' exact distances (float64, from coordinate
      differences) rank them; the order is proven where the last one needed is nearer
      than any vector outside the candidates could be, given the scores' rounding.

    A query whose order is not proven (ties, near-ties) is ranked again from the exact
    distances of every vector that could be among its nearest.
    """
    groups, count = scored.groups, scored.count
    n, dims = q.shape
    vectors = groups.vectors
    distinct = len(vectors)
    centred = q - scored.centre
    dtype = scored.tiles.dtype.as_numpy_dtype
    augmented = tf.constant(np.hstack([2.0 * centred, -np.ones((n, 1))]).astype(dtype))
    norm2 = np.sum(np.square(centred), axis=1)
    error = _slack(dims) * scored.eps * (np.sqrt(norm2) + scored.radius) ** 2
    top = _top(int(need.max()), len(count))
    values, chosen, bound = _candidates(scored, augmented, top)
    rows, position = np.arange(n), np.arange(top)
    if dtype == np.float64:
        covered = np.cumsum(count[chosen], axis=1)  # references in the first j+1 vectors
        last = np.sum(covered < need[:, None], axis=1)  # the last vector needed per row
        following = np.hstack([values[:, 1:], np.full((n, 1), -np.inf)])
        following[rows, last] = np.maximum(following[rows, last], bound)
        with np.errstate(invalid="ignore"):  # -inf - -inf beyond the padding: not needed
            unsure = np.any((values - following <= 2 * error[:, None]) &
                            (position <= last[:, None]), axis=1)
        floor = values[rows, last] - 2 * error  # the least score a needed vector can have
    else:
        exact = np.where(np.isfinite(values),  # padding rows (count 0) score -inf
                         squared_distances(q[:, None, :],
                                           vectors[np.minimum(chosen, distinct - 1)]),
                         np.inf)
        order = np.lexsort((chosen, exact), axis=1)
        chosen = np.take_along_axis(chosen, order, axis=1)
        exact = np.take_along_axis(exact, order, axis=1)
        covered = np.cumsum(count[chosen], axis=1)
        last = np.sum(covered < need[:, None], axis=1)
        # Proven: every vector outside the candidates is farther than the last one
        # needed (its exact distance is at least |q'|^2 - bound - error), and the vectors
        # needed and the next one have distinct distances (else their members interleave).
        with np.errstate(invalid="ignore"):  # inf - inf beyond the padding: never needed
            ties = (exact[:, 1:] == exact[:, :-1]) & (position[:-1] <= last[:, None])
        unsure = (exact[rows, last] >= norm2 - bound - error) | ties.any(axis=1)
        floor = norm2 - exact[rows, last] - error
    take = np.clip(need[:, None] - (covered - count[chosen]), 0, count[chosen])
    neighbours = np.full((n, need.max()), -1, np.int64)
    flat_rows = np.repeat(rows, need)
    neighbours[flat_rows, np.arange(len(flat_rows)) - np.repeat(np.cumsum(need) - need, need)] \
        = _members(groups, chosen.ravel(), take.ravel())
    unsure = np.flatnonzero(unsure)
    step = max(1, _FULL_SCORES // len(count))  # rows scored at once: one pass over them all
    for start in range(0, len(unsure), step):
        some = unsure[start:start + step]
        scores = tf.matmul(tf.gather(augmented, some), scored.flat, transpose_b=True).numpy()
        for i, row in zip(some, scores[:, :distinct]):
            # Every vector that could be as near as the last one needed, by exact distance.
            window = np.flatnonzero(row >= floor[i])
            exact_window = np.repeat(squared_distances(q[i], vectors[window]),
                                     groups.count[window])
            members = _members(groups, window, groups.count[window])
            neighbours[i, :need[i]] = members[np.lexsort((members, exact_window))[:need[i]]]
    return neighbours


def _drop_skipped(neighbours, skip, need) -> np.ndarray:
    """Drop each row's skipped reference, wherever it ranks (else its ``need``-th one)."""
    itself = neighbours == skip[:, None]
    itself &= np.arange(neighbours.shape[1]) < need[:, None]
    position = np.where(itself.any(axis=1), np.argmax(itself, axis=1), need - 1)
    columns = np.arange(neighbours.shape[1] - 1)
    return np.take_along_axis(neighbours, columns + (columns >= position[:, None]), axis=1)


def _chunks(queries, references, k, skip, chunk_size: int):
    scored = _score_references(references, int(k.max(initial=1)) + (skip is not None))
    for start in range(0, len(queries), chunk_size):
        stop = start + chunk_size
        need = k[start:stop] + (skip is not None)  # a query may find itself
        neighbours = _search(scored, queries[start:stop], need)
        if skip is not None:
            neighbours = _drop_skipped(neighbours, skip[start:stop], need)
        yield start, neighbours


def _queries_and_references(query_embeddings, reference_embeddings, chunk_size: int):
    queries = _as_exact(query_embeddings, "query embeddings")
    references = _as_exact(reference_embeddings, "reference embeddings")
    if queries.shape[1] != references.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, references "
                         f"{references.shape[1]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return queries, references


def nearest_neighbours(query_embeddings, reference_embeddings, k: int = 1,
                       chunk_size: int = CHUNK_SIZE) -> np.ndarray:
    """Indices of the ``k`` nearest references of each query, nearest first.

    Ranked by squared Euclidean distance ``|q - r|^2`` computed in float64, with equal
    distances ranked by the lowest reference index; this ranking is exact (equal to
    sorting brute-force float64 distances by ``(distance, index)``).

    How: identical references are merged (they tie exactly and rank by index). A matrix
    product ``2 q.r - |r|^2`` scores every distinct reference (after centring, which
    shrinks its rounding); it is fast, but its rounding can swap distances that tie or
    nearly tie. For small ``k`` the product is float32, a cache-sized tile at a time,
    keeping only each block's best score; the best blocks give a few candidates, whose
    exact difference-based float64 distances rank them. For large ``k`` it is float64
    and the scores rank the candidates directly. Either way a bound on the rounding
    proves the order per query; a query it does not prove (ties, near-ties) is ranked
    again from the exact distances of every reference that could be among its ``k``
    nearest. So the cost is one matrix product, plus a little for queries with ties.

    Args:
        query_embeddings: (n, D) array.
        reference_embeddings: (m, D) array, ``m >= k``.
        k: how many neighbours.
        chunk_size: queries per chunk; memory holds about ``chunk_size * m / 32`` scores
            (``chunk_size * m`` for large ``k``, at most 256 MiB at a time).

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
                     chunk_size: int = CHUNK_SIZE):
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
        chunk_size: queries per chunk (memory: as :func:`nearest_neighbours`).

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
