"""The small layers that join twin and triplet branches of the shared embedding net.

Registered for serialisation, so saved models reload with ``keras.models.load_model``
(after ``import keras_siamese``) without ``custom_objects``; ``Lambda`` layers would not.
"""

import keras
from keras import ops

from keras_siamese.distances import EPSILON, euclidean_distance


@keras.saving.register_keras_serializable(package="keras_siamese")
class EuclideanDistance(keras.layers.Layer):
    """``[a, b] -> sqrt(max(||a - b||^2, eps))`` with shape (batch, 1)."""

    def __init__(self, eps: float = EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps

    def call(self, inputs):
        a, b = inputs
        return ops.expand_dims(euclidean_distance(a, b, self.eps), -1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="keras_siamese")
class AbsoluteDifference(keras.layers.Layer):
    """``[a, b] -> |a - b|`` element-wise (Koch et al. 2015's L1 Siamese join)."""

    def call(self, inputs):
        a, b = inputs
        return ops.abs(a - b)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="keras_siamese")
class TripletDistances(keras.layers.Layer):
    """``[anchor, positive, negative] -> [d(a, p), d(a, n)]`` with shape (batch, 2)."""

    def __init__(self, eps: float = EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps

    def call(self, inputs):
        anchor, positive, negative = inputs
        return ops.stack([euclidean_distance(anchor, positive, self.eps),
                          euclidean_distance(anchor, negative, self.eps)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="keras_siamese")
class GaussianSample(keras.layers.Layer):
    """``[mean, log_var] -> mean + exp(log_var / 2) * eps``, eps ~ N(0, I) (the VAE's
    reparameterisation trick); at inference (``training`` false) just the mean."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mean, log_var = inputs
        if not training:
            return mean
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
