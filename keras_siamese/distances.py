"""Euclidean distance that is safe to differentiate.

``d(a, b) = sqrt(max(sum((a - b)^2), eps))``: the epsilon inside the square root keeps the
gradient finite when two embeddings coincide (the derivative of sqrt at 0 is infinite).
"""

from keras import ops

EPSILON = 1e-9


def euclidean_distance(a, b, eps: float = EPSILON):
    """Row-wise distance between ``a`` and ``b`` of shape (batch, dim) -> (batch,)."""
    squared = ops.sum(ops.square(a - b), axis=-1)
    return ops.sqrt(ops.maximum(squared, eps))
