"""The shared embedding network, the models built around ONE instance of it (the softmax
classifier, the contrastive and the BCE Siamese twins, the triplet network, the
online-mining model, image -> embedding, and the class-proxy model, image -> embedding ->
learned class vectors), and the VAE, whose encoder is a network of the
same architecture (its own weights) with a mean and a log-variance head.

Every model takes raw pixels (float32, 0..255, shape H x W x C); normalisation is the
embedding net's first layer, so exported models need no client-side preprocessing.
The twin and triplet models call the same ``embedding`` sub-model on each input, so
there is one set of weights, updated once per step from all branches.
"""

import weakref

import keras
import numpy as np

from keras_siamese.cross_batch_memory import memory_model
from keras_siamese.layers import (AbsoluteDifference, EuclideanDistance, GaussianSample,
                                  TripletDistances)

# The embedding layer and every head after it compute in float32 whatever the run's
# precision (keras_siamese.precision): losses, distances and metrics need float32, and a
# 16-bit embedding would keep only 3 significant digits.
OUTPUT_DTYPE = "float32"


def _prelu(name: str, shared_axes=None, dtype=None):
    # PyTorch's PReLU starts at slope 0.25 (Keras at 0, a plain ReLU); keep the study's start.
    return keras.layers.PReLU(keras.initializers.Constant(0.25), shared_axes=shared_axes,
                              name=name, dtype=dtype)


def _small_trunk(x):
    """The study's network after normalisation, up to its last hidden layer (256 features):
    Conv 32 5x5, PReLU, MaxPool 2 -> Conv 64 5x5, PReLU, MaxPool 2 -> Dense 256, PReLU ->
    Dense 256, PReLU."""
    x = keras.layers.Conv2D(32, 5, name="conv1")(x)
    x = _prelu("prelu1", shared_axes=[1, 2])(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(64, 5, name="conv2")(x)
    x = _prelu("prelu2", shared_axes=[1, 2])(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(256, name="fc1")(x)
    x = _prelu("prelu3")(x)
    x = keras.layers.Dense(256, name="fc2")(x)
    return _prelu("prelu4")(x)


def _batch_norm(name: str):
    # Momentum 0.9, not Keras' 0.99: a small own dataset gives only tens of steps per
    # epoch, too few for 0.99's moving statistics to forget their start (mean 0, var 1).
    return keras.layers.BatchNormalization(momentum=0.9, name=name)


def _residual_block(x, filters: int, stride: int, name: str):
    """He et al. 2016's basic block: two 3x3 conv-BN, the input added back (through a
    strided 1x1 conv-BN where the shape changes), ReLU."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                       name=f"{name}_project")(x)
        shortcut = _batch_norm(f"{name}_project_bn")(shortcut)
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                            name=f"{name}_conv1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(_batch_norm(f"{name}_bn1")(x))
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = _batch_norm(f"{name}_bn2")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def _resnet_trunk(x):
    """A small ResNet for larger colour images, up to the same 256 features: Conv 32 3x3
    (stride 2 from 48 pixels up), BN, ReLU -> two basic blocks each of 32, 64 (stride 2),
    128 (stride 2) filters -> global average pool -> Dense 256, PReLU."""
    stride = 2 if min(x.shape[1:3]) >= 48 else 1  # keeps the cost of 64 px images low
    x = keras.layers.Conv2D(32, 3, strides=stride, padding="same", use_bias=False,
                            name="stem_conv")(x)
    x = keras.layers.ReLU(name="stem_relu")(_batch_norm("stem_bn")(x))
    for stage, (filters, first_stride) in enumerate([(32, 1), (64, 2), (128, 2)], start=1):
        x = _residual_block(x, filters, first_stride, f"stage{stage}_block1")
        x = _residual_block(x, filters, 1, f"stage{stage}_block2")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return _prelu("prelu_features")(keras.layers.Dense(256, name="fc_features")(x))


# The networks an embedding can be built on; each ends in 256 features for the same heads.
BACKBONES = {"small": _small_trunk, "resnet": _resnet_trunk}


def _trunk(image, mean, std, backbone: str):
    """Normalisation, then the backbone up to its 256 features."""
    x = keras.layers.Normalization(mean=mean, variance=float(std) ** 2, name="normalize")(image)
    return BACKBONES[backbone](x)


def embedding_net(input_shape=(28, 28, 1), embedding_dim: int = 2, mean=0.0, std=1.0,
                  backbone: str = "small", normalize: bool = False):
    """The shared embedding network as a Keras functional model: Normalize((x - mean) / std)
    -> the backbone's 256 features (by default the study's EmbeddingNet, Bielski's
    siamese-triplet) -> Dense ``embedding_dim`` -> with ``normalize``, L2 normalisation
    (Keras' ``UnitNormalization``, layer ``unit_normalize``).

    The normalisation is the net's last layer, so everything that uses the embedding net
    (metrics, latent frames, projector, index, export, serving) gets the unit vectors the
    run trained with. Between unit vectors ``|a - b|^2 = 2 - 2 cos(a, b)``: the Euclidean
    distance is a decreasing function of the cosine similarity, so the neighbours it ranks
    and the rank metrics it gives are exactly those of the cosine distance."""
    image = keras.Input(input_shape, name="image")
    embedding = keras.layers.Dense(embedding_dim, name="fc_embedding", dtype=OUTPUT_DTYPE)(
        _trunk(image, mean, std, backbone))
    if normalize:
        embedding = keras.layers.UnitNormalization(name="unit_normalize",
                                                   dtype=OUTPUT_DTYPE)(embedding)
    return keras.Model(image, embedding, name="embedding")


def embedding_of(model) -> keras.Model:
    """The embedding net inside any model built here: the shared ``embedding`` sub-model,
    or for the VAE the encoder's mean (the VAE's embedding is its latent mean)."""
    if model.name == "embedding":
        return model
    names = {layer.name for layer in model.layers}
    if "embedding" in names:
        return model.get_layer("embedding")
    encoder = model.get_layer("encoder")
    return keras.Model(encoder.input, encoder.outputs[0], name="embedding")


_compiled_calls = weakref.WeakKeyDictionary()  # embedding model -> its inference function


def inference_batch_size(height: int, width: int) -> int:
    """How many images of ``height`` x ``width`` pixels one inference batch holds: as many
    pixels as 1,024 MNIST digits (28 x 28), between 1 and 1,024 images, so activations
    stay near 100 MB whatever the image size (1,024 images of 256 x 256 would need 8 GB
    in the first conv layer alone). The one rule for :func:`embed_images` and for
    ``embed.Embedder`` (which may hold a SavedModel, not a Keras model)."""
    return max(1, min(1024, 1024 * 28 * 28 // (height * width)))


def embed_images(embedding, images, batch_size: int | None = None) -> np.ndarray:
    """Embeddings of raw-pixel images (N, H, W, C), in order, batch by batch through one
    ``tf.function`` per model. Not ``predict``: that runs the model's distribution
    strategy, whose collective ops would wait forever for the other workers when only
    the chief embeds. The default batch is :func:`inference_batch_size` of the model's
    input size."""
    import tensorflow as tf

    if batch_size is None:
        batch_size = inference_batch_size(*embedding.input_shape[1:3])

    if embedding not in _compiled_calls:
        model = weakref.ref(embedding)  # a strong one would keep the key alive forever
        _compiled_calls[embedding] = tf.function(lambda x: model()(x, training=False),
                                                 reduce_retracing=True)
    call = _compiled_calls[embedding]
    return np.concatenate(
        [call(np.asarray(images[i:i + batch_size], np.float32)).numpy()
         for i in range(0, len(images), batch_size)]
        or [np.zeros((0, embedding.output.shape[-1]), np.float32)])


def _inputs(embedding, *names):
    shape = embedding.input_shape[1:]
    return [keras.Input(shape, name=name) for name in names]


def classifier_model(embedding, num_classes: int):
    """Softmax baseline: embedding -> PReLU -> Dense(num_classes, softmax)."""
    (image,) = _inputs(embedding, "image")
    x = _prelu("prelu_head", dtype=OUTPUT_DTYPE)(embedding(image))
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="classes",
                                       dtype=OUTPUT_DTYPE)(x)
    return keras.Model(image, probabilities, name="classifier")


def contrastive_model(embedding):
    """Siamese twin for contrastive loss: (x1, x2) -> Euclidean distance, shape (batch, 1)."""
    first, second = _inputs(embedding, "first", "second")
    distance = EuclideanDistance(name="distance", dtype=OUTPUT_DTYPE)(
        [embedding(first), embedding(second)])
    return keras.Model([first, second], distance, name="siamese_contrastive")


def bce_model(embedding):
    """Siamese twin for BCE (Koch 2015): |e1 - e2| -> Dense(1, sigmoid) = P(same class)."""
    first, second = _inputs(embedding, "first", "second")
    difference = AbsoluteDifference(name="abs_difference", dtype=OUTPUT_DTYPE)(
        [embedding(first), embedding(second)])
    same = keras.layers.Dense(1, activation="sigmoid", name="same_probability",
                              dtype=OUTPUT_DTYPE)(difference)
    return keras.Model([first, second], same, name="siamese_bce")


def triplet_model(embedding):
    """Triplet network: (anchor, positive, negative) -> [d(a, p), d(a, n)], shape (batch, 2)."""
    anchor, positive, negative = _inputs(embedding, "anchor", "positive", "negative")
    distances = TripletDistances(name="distances", dtype=OUTPUT_DTYPE)(
        [embedding(anchor), embedding(positive), embedding(negative)]
    )
    return keras.Model([anchor, positive, negative], distances, name="triplet")


def online_model(embedding, memory: int = 0, warmup: int = 0):
    """For online mining: image -> embedding, so a loss sees a whole batch of embeddings
    (with the labels as ``y_true``) and mines its pairs or triplets. With ``memory`` > 0
    it also mines against the last ``memory`` training embeddings, kept by a layer after
    the embedding, from training step ``warmup`` on
    (:mod:`keras_siamese.cross_batch_memory`)."""
    if memory:
        return memory_model(embedding, memory, warmup)
    (image,) = _inputs(embedding, "image")
    return keras.Model(image, embedding(image), name="online_embedding")


def proxy_model(embedding, head):
    """For the losses against learned class vectors (Proxy-Anchor, ArcFace, CosFace):
    image -> embedding -> ``head``, a layer holding the class vectors that gives each
    image's cosine similarity to each class (``proxy_losses.ClassProxies``). The embedding
    net stays the ``embedding`` sub-model; the head only trains it."""
    (image,) = _inputs(embedding, "image")
    return keras.Model(image, head(embedding(image)), name="class_proxies")


def vae_encoder(input_shape=(28, 28, 1), latent_dim: int = 2, mean=0.0, std=1.0,
                backbone: str = "small"):
    """The embedding net with two heads: the mean and the log-variance of q(z | x)."""
    image = keras.Input(input_shape, name="image")
    features = _trunk(image, mean, std, backbone)
    z_mean = keras.layers.Dense(latent_dim, name="fc_embedding", dtype=OUTPUT_DTYPE)(features)
    z_log_var = keras.layers.Dense(latent_dim, name="fc_log_variance",
                                   dtype=OUTPUT_DTYPE)(features)
    return keras.Model(image, [z_mean, z_log_var], name="encoder")


def vae_decoder(latent_dim: int = 2, output_shape=(28, 28, 1)):
    """z -> Dense 256, PReLU -> Dense 64 x (H/4) x (W/4), PReLU -> ConvTranspose 64 4x4/2,
    PReLU -> ConvTranspose 32 4x4/2, PReLU -> Conv C 3x3: per-pixel Bernoulli logits."""
    height, width, channels = output_shape
    z = keras.Input((latent_dim,), name="z")
    x = _prelu("dec_prelu1")(keras.layers.Dense(256, name="dec_fc1")(z))
    x = keras.layers.Dense(64 * (height // 4) * (width // 4), name="dec_fc2")(x)
    x = keras.layers.Reshape((height // 4, width // 4, 64), name="dec_reshape")(
        _prelu("dec_prelu2")(x))
    x = keras.layers.Conv2DTranspose(64, 4, strides=2, padding="same", name="dec_up1")(x)
    x = _prelu("dec_prelu3", shared_axes=[1, 2])(x)
    x = keras.layers.Conv2DTranspose(32, 4, strides=2, padding="same", name="dec_up2")(x)
    x = _prelu("dec_prelu4", shared_axes=[1, 2])(x)
    logits = keras.layers.Conv2D(channels, 3, padding="same", name="dec_logits",
                                 dtype=OUTPUT_DTYPE)(x)
    return keras.Model(z, logits, name="decoder")


def vae_model(encoder, decoder):
    """Image -> q(z | x) -> sample z -> p(x | z); outputs the reconstruction logits and the
    posterior ``[mean, log_var]`` concatenated, for the two terms of the ELBO."""
    (image,) = _inputs(encoder, "image")
    z_mean, z_log_var = encoder(image)
    z = GaussianSample(name="sample", dtype=OUTPUT_DTYPE)([z_mean, z_log_var])
    posterior = keras.layers.Concatenate(name="posterior", dtype=OUTPUT_DTYPE)(
        [z_mean, z_log_var])
    return keras.Model(image, {"reconstruction": decoder(z), "posterior": posterior},
                       name="vae")
