"""Retrieval metrics on embeddings: pure functions of embeddings and labels.

Distances are squared Euclidean, computed in chunks of queries so memory stays bounded
(chunk x references floats at a time) whatever the number of queries.
"""

import numpy as np
import tensorflow as tf


def _nearest_reference(queries, references, chunk_size: int):
    """Index of each query's nearest reference (lowest index on ties)."""
    refs = tf.constant(references, tf.float32)
    ref_norms = tf.reduce_sum(tf.square(refs), axis=1)
    nearest = []
    for start in range(0, len(queries), chunk_size):
        q = tf.constant(queries[start:start + chunk_size], tf.float32)
        # ||q - r||^2 = ||q||^2 - 2 q.r + ||r||^2; ||q||^2 is constant per row, so it is
        # left out of the argmin.
        d2 = ref_norms[None, :] - 2.0 * tf.matmul(q, refs, transpose_b=True)
        nearest.append(tf.argmin(d2, axis=1, output_type=tf.int64).numpy())
    return np.concatenate(nearest) if nearest else np.zeros(0, np.int64)


def precision_at_1(query_embeddings, query_labels, reference_embeddings, reference_labels,
                   chunk_size: int = 1024) -> float:
    """Precision@1 (1-nearest-neighbour accuracy) of queries against references.

    ``P@1 = mean_q [ label(nearest reference of q) == label(q) ]``
    """
    nearest = _nearest_reference(np.asarray(query_embeddings), np.asarray(reference_embeddings),
                                 chunk_size)
    return float(np.mean(np.asarray(reference_labels)[nearest] == np.asarray(query_labels)))
