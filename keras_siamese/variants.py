"""The table of what a run can train: one :class:`Variant` per loss, or loss with an online
mining rule.

A variant says everything that differs between, say, a contrastive Siamese twin and a
triplet network with semi-hard mining: how its model and loss are built around a fresh
embedding net, which training and validation streams feed it, what it checks before
training and what it draws after. :mod:`keras_siamese.experiment` reads the table and
never branches on a loss name, the command line offers its names as ``--loss`` /
``--mining`` choices, ``reproduce`` as grid columns, and ``diagram`` draws its models. A
new loss or mining rule is one entry here plus its own code (its loss in
:mod:`keras_siamese.losses`, :mod:`keras_siamese.pair_losses` or
:mod:`keras_siamese.proxy_losses`, its miner in :mod:`keras_siamese.mining`).

Names: a variant's ``name`` is its loss (``triplet``) for the study's offline pairs and
triplets (``mining = "random"``) and for the row ``--loss`` alone trains (``default``:
``supcon`` is SupCon over all pairs of P x K batches), else ``<loss>-<mining>``
(``triplet-batch-hard``): the run folder's default name starts with it. Every loss has
exactly one row named by it, whose mining is the loss's default ``--mining``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import keras
import numpy as np

from keras_siamese import models, streams
from keras_siamese.errors import ConfigError
from keras_siamese.losses import (BernoulliReconstructionLoss, ContrastiveLoss, GaussianKLLoss,
                                  OnlineContrastiveLoss, OnlineTripletLoss, TripletLoss)
from keras_siamese.pair_losses import MultiSimilarityLoss, SupConLoss
from keras_siamese.proxy_losses import ArcFaceLoss, ClassProxies, CosFaceLoss, ProxyAnchorLoss
from keras_siamese.plots import manifold_image, reconstruction_strip

if TYPE_CHECKING:
    from keras_siamese.config import TrainConfig


log = logging.getLogger(__name__)

OFFLINE = "random"  # the mining value of the study's offline pairs and triplets


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """What every model's embedding net is built from: the images' shape, the training
    pixels' mean and standard deviation (the net's normalisation layer) and the classes."""

    input_shape: tuple[int, int, int]
    pixel_mean: float
    pixel_std: float
    num_classes: int

    def embedding_net(self, config: TrainConfig) -> keras.Model:
        """A fresh shared embedding net as ``config`` sets it up."""
        return models.embedding_net(self.input_shape, config.embedding_dim,
                                    mean=self.pixel_mean, std=self.pixel_std,
                                    backbone=config.backbone, normalize=config.normalize)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One trainable model: its loss, mining rule and the parts that differ between runs.

    Attributes:
        loss: the ``--loss`` name.
        mining: the ``--mining`` name; ``"random"`` for offline pairs / triplets / images.
        summary: one line of help: for ``--loss`` on the row named by its loss, else a
            description of the mining rule.
        build: ``(config, net) -> (model, loss, metrics)``, the model around a fresh
            embedding net (:class:`NetSpec`), and what it compiles with.
        streams: ``(config, seen split, start epoch) -> (train, validation)`` datasets.
        check: ``(config, seen split) -> None``, raises ConfigError before any folder is
            made when the settings cannot train on this data (or logs a warning).
        figures: ``(model, embedding, data, run folder) -> None``, extra pictures drawn
            after training, or None.
        activations_per_image: how many forward passes' activations one training image
            costs (the VAE's decoder doubles them): for the memory check.
        image_multiple: image sides must be multiples of it (the VAE's two 2x upsamplings).
        default: this row is what ``--loss`` alone trains, and is named by its loss (as
            every offline row is); for a loss with online rows only.
        margin: the ``--margin`` the loss trains with unless one is given; None: the loss
            has no margin and ``--margin`` is refused.
        unit_vectors: the loss is defined on unit embeddings (cosine similarities):
            ``--normalize`` is on by default and ``--no-normalize`` is refused.
        normalizable: False where ``--normalize`` is refused (the VAE: its embedding is
            the mean of its posterior, which the ELBO needs unconstrained).
        sub_centers: the loss takes ``--sub-centers`` (more than one vector per class).
        memory: whether ``--memory`` applies: its loss mines against references beyond
            the batch (``batch_loss(labels, embeddings, references)``, see
            :mod:`keras_siamese.cross_batch_memory`) and ``build`` passes
            ``config.memory`` on to :func:`models.online_model`.
        collapse_hint: the likely cause of collapsed embeddings and a setting that
            trains, for the line that stops a collapsed run (:mod:`callbacks`).
    """

    loss: str
    mining: str
    summary: str
    build: Callable
    streams: Callable
    check: Callable = lambda config, seen: None
    figures: Callable | None = None
    activations_per_image: int = 1
    image_multiple: int = 1
    default: bool = False
    margin: float | None = 1.0
    unit_vectors: bool = False
    normalizable: bool = True
    sub_centers: bool = False
    memory: bool = False
    collapse_hint: str = "try a smaller --learning-rate or a larger --embedding-dim"

    @property
    def name(self) -> str:
        named_by_loss = self.mining == OFFLINE or self.default
        return self.loss if named_by_loss else f"{self.loss}-{self.mining}"

    @property
    def online(self) -> bool:
        """Whether it trains on P x K batches mined online."""
        return self.mining != OFFLINE


# --- models and losses ----------------------------------------------------------------


def _classifier(config, net):
    model = models.classifier_model(net.embedding_net(config), net.num_classes)
    return model, keras.losses.SparseCategoricalCrossentropy(), ["sparse_categorical_accuracy"]


def _contrastive(config, net):
    return models.contrastive_model(net.embedding_net(config)), ContrastiveLoss(config.margin), []


def _bce(config, net):
    return models.bce_model(net.embedding_net(config)), keras.losses.BinaryCrossentropy(), \
        ["binary_accuracy"]


def _triplet(config, net):
    return models.triplet_model(net.embedding_net(config)), TripletLoss(config.margin), []


def _vae(config, net):
    encoder = models.vae_encoder(net.input_shape, config.embedding_dim, mean=net.pixel_mean,
                                 std=net.pixel_std, backbone=config.backbone)
    model = models.vae_model(encoder, models.vae_decoder(config.embedding_dim, net.input_shape))
    return model, {"reconstruction": BernoulliReconstructionLoss(),
                   "posterior": GaussianKLLoss()}, []


def _online_model(config, net):
    """image -> embedding, with ``--memory`` a cross-batch memory after it."""
    return models.online_model(net.embedding_net(config), config.memory, config.memory_warmup)


def _online_triplet(config, net):
    return _online_model(config, net), OnlineTripletLoss(config.margin, config.mining), []


def _online_contrastive(config, net):
    return _online_model(config, net), OnlineContrastiveLoss(config.margin), []


def _multi_similarity(config, net):
    return _online_model(config, net), MultiSimilarityLoss(mining_rule=config.mining), []


def _circle(config, net):
    """Keras' own ``keras.losses.Circle`` as it is: it takes what the online model gives
    (integer labels, unit embeddings) and returns a loss per anchor (how, and how its mean
    treats a P x K batch: :mod:`keras_siamese.pair_losses`); ``--margin`` is its m, gamma
    stays 80."""
    return models.online_model(net.embedding_net(config)), \
        keras.losses.Circle(margin=config.margin), []


def _supcon(config, net):
    return models.online_model(net.embedding_net(config)), SupConLoss(), []


# Proxy-Anchor trains its proxies 100x faster than the network (Kim et al. 2020);
# ArcFace and CosFace train their class centres as fast as the rest.
PROXY_LR_MULTIPLIER = 100.0


def _class_proxies(loss, lr_multiplier: float = 1.0):
    """``build`` of a loss against learned class vectors: image -> embedding -> one vector
    (or ``--sub-centers`` vectors) per class -> cosines, compiled with ``loss(config)`` and
    the accuracy of the nearest class vector. There is a vector for every class of the
    dataset: a class left out with ``--holdout-classes`` keeps one that only ever meets
    negatives (Proxy-Anchor's mean over all proxies counts it)."""
    def build(config, net):
        head = ClassProxies(net.num_classes, config.sub_centers, lr_multiplier, name="proxies",
                            dtype=models.OUTPUT_DTYPE)
        return (models.proxy_model(net.embedding_net(config), head), loss(config),
                ["sparse_categorical_accuracy"])
    return build


# --- streams ---------------------------------------------------------------------------


def _offline_streams(train_stream, validation_stream):
    """``streams`` of an offline variant: ``--batch-size`` examples drawn from the seen
    classes' training images each epoch, and fixed ones from their test images."""
    def make(config, seen, start_epoch):
        return (train_stream(seen.train_images, seen.train_labels, config.batch_size,
                             config.seed, start_epoch),
                validation_stream(seen.test_images, seen.test_labels, config.batch_size))
    return make


def _pk_streams(config, seen, start_epoch):
    """P x K batches (P classes, K images each) for online mining."""
    p, k = config.classes_per_batch, config.images_per_class
    return (streams.pk_stream(seen.train_images, seen.train_labels, p, k, config.seed,
                              start_epoch),
            streams.evaluation_pk_batches(seen.test_images, seen.test_labels, p, k))


# --- checks and figures ----------------------------------------------------------------


# A triplet miner's masks hold B x (B + N) x (B + N) elements per step with a memory of N
# (B = P x K). 2^24 of them cost 80-140 ms a step on 2 cores (about twice the network's
# own step at B = 128); beyond that mining would dominate training.
MAX_TRIPLET_MASK = 2**24
# Hermans et al.'s setting, in which batch-hard mining trains (README, 'Online mining').
BATCH_HARD_SETTING = "--embedding-dim 64 --classes-per-batch 10 --images-per-class 4"


def _check_pk(config, seen) -> None:
    for labels in (seen.train_labels, seen.test_labels):
        streams.check_pk(labels, config.classes_per_batch, config.images_per_class)
    _check_memory(config, seen)


def _check_memory(config, seen) -> None:
    """``--memory`` at most the training images (more would hold stale copies of the same
    images); a warning when the warm-up outlasts the run."""
    if not config.memory:
        return
    images = len(seen.train_labels)
    if config.memory > images:
        raise ConfigError(f"--memory {config.memory} is more than the {images} training "
                          f"images: it would hold stale copies of the same images; give at "
                          f"most {images}")
    steps = streams.steps_per_epoch(images, config.training_batch_size) * config.epochs
    if config.memory_warmup >= steps:
        log.warning("--memory-warmup %d: the run has only %d training steps, so the memory "
                    "is never used; lower --memory-warmup", config.memory_warmup, steps)


def _check_triplets(config, seen) -> None:
    """A triplet miner's memory within :data:`MAX_TRIPLET_MASK`."""
    _check_pk(config, seen)
    batch = config.training_batch_size
    if config.memory and batch * (batch + config.memory) ** 2 > MAX_TRIPLET_MASK:
        largest = max(math.isqrt(MAX_TRIPLET_MASK // batch) - batch, 0)
        raise ConfigError(f"--memory {config.memory}: triplet mining compares each of the "
                          f"{batch} images of a batch with every pair of batch and memory "
                          f"entries, at most --memory {largest} with batches of {batch}; "
                          "--loss contrastive --mining hard-negative takes far more")


def _check_batch_hard(config, seen) -> None:
    _check_triplets(config, seen)
    if config.embedding_dim < 16 or config.images_per_class > 4:
        log.warning("batch-hard mining collapsed every embedding into one point in our runs "
                    "below 16-D or with more than 4 images per class; it trains with e.g. "
                    f"{BATCH_HARD_SETTING} (README, 'Online mining')")


def _vae_figures(model: keras.Model, embedding: keras.Model, data, run_dir: Path) -> None:
    """``manifold.png``: images decoded over the latent plane where the test means lie
    (2-D latents only); ``reconstructions.png``: test images above their reconstructions."""
    decoder = model.get_layer("decoder")
    if embedding.output.shape[-1] == 2:
        means = models.embed_images(embedding, data.x_test)
        low, high = np.percentile(means, [1, 99], axis=0)
        manifold_image(decoder, ((low[0], high[0]), (low[1], high[1])), run_dir / "manifold.png")
    shown = data.x_test[:12].astype("float32")
    reconstruction_strip(shown, decoder(embedding(shown, training=False)).numpy(),
                         run_dir / "reconstructions.png")


# --- the table ---------------------------------------------------------------------------

_TABLE = (
    Variant("softmax", OFFLINE, "classifier baseline", _classifier,
            _offline_streams(streams.image_stream, streams.evaluation_images)),
    Variant("contrastive", OFFLINE, "Siamese pairs, contrastive loss", _contrastive,
            _offline_streams(streams.pair_stream, streams.evaluation_pairs)),
    Variant("bce", OFFLINE, "Siamese pairs, binary cross-entropy", _bce,
            _offline_streams(streams.pair_stream, streams.evaluation_pairs)),
    Variant("triplet", OFFLINE, "anchor-positive-negative", _triplet,
            _offline_streams(streams.triplet_stream, streams.evaluation_triplets)),
    Variant("vae", OFFLINE, "variational autoencoder (its latent mean is the embedding)",
            _vae, _offline_streams(streams.vae_stream, streams.evaluation_vae_images),
            figures=_vae_figures, activations_per_image=2, image_multiple=4,
            normalizable=False),
    Variant("contrastive", "hard-negative", "every positive pair and as many nearest "
            "negative pairs", _online_contrastive, _pk_streams, check=_check_pk, memory=True),
    Variant("triplet", "batch-all", "every valid triplet with a positive loss",
            _online_triplet, _pk_streams, check=_check_triplets, memory=True),
    Variant("triplet", "batch-hard", "per anchor its farthest positive and nearest negative",
            _online_triplet, _pk_streams, check=_check_batch_hard, memory=True,
            collapse_hint="batch-hard mining collapses below 16-D or with more than 4 "
            f"images per class: it trains with {BATCH_HARD_SETTING} (README, 'Online "
            "mining')"),
    Variant("triplet", "semi-hard", "per positive pair the nearest negative beyond it",
            _online_triplet, _pk_streams, check=_check_triplets, memory=True),
    Variant("multi-similarity", "ms-mining", "Multi-Similarity (Wang et al. 2019) on the "
            "pairs its own mining keeps, P x K batches", _multi_similarity, _pk_streams,
            check=_check_pk, default=True, margin=None, unit_vectors=True, memory=True),
    Variant("multi-similarity", "all-pairs", "every pair of the batch",
            _multi_similarity, _pk_streams, check=_check_pk, margin=None, unit_vectors=True,
            memory=True),
    Variant("circle", "all-pairs", "Circle loss (Sun et al. 2020, Keras' own) on every pair "
            "of P x K batches", _circle, _pk_streams, check=_check_pk, default=True,
            margin=0.4, unit_vectors=True),
    Variant("supcon", "all-pairs", "supervised contrastive (Khosla et al. 2020) on P x K "
            "batches", _supcon, _pk_streams, check=_check_pk, default=True, margin=None,
            unit_vectors=True),
    Variant("proxy-anchor", OFFLINE, "Proxy-Anchor (Kim et al. 2020), learned class proxies",
            _class_proxies(lambda config: ProxyAnchorLoss(delta=config.margin),
                           PROXY_LR_MULTIPLIER),
            _offline_streams(streams.image_stream, streams.evaluation_images),
            margin=0.1, unit_vectors=True),
    Variant("arcface", OFFLINE, "additive angular margin softmax (Deng et al. 2019)",
            _class_proxies(lambda config: ArcFaceLoss(margin=config.margin)),
            _offline_streams(streams.image_stream, streams.evaluation_images),
            margin=0.5, unit_vectors=True, sub_centers=True),
    Variant("cosface", OFFLINE, "large margin cosine softmax (Wang et al. 2018)",
            _class_proxies(lambda config: CosFaceLoss(margin=config.margin)),
            _offline_streams(streams.image_stream, streams.evaluation_images),
            margin=0.35, unit_vectors=True, sub_centers=True),
)


def _index(table) -> dict[str, Variant]:
    """The table by variant name; every loss named by exactly one of its rows."""
    named = {}
    for variant in table:
        if variant.name in named:
            raise ValueError(f"two variants are named {variant.name!r}: at most one "
                             "default row per loss")
        named[variant.name] = variant
    unnamed = {variant.loss for variant in table} - set(named)
    if unnamed:
        raise ValueError(f"no default row for {', '.join(sorted(unnamed))}")
    return named


VARIANTS: dict[str, Variant] = _index(_TABLE)
# The original study's models: the grid that ``reproduce`` trains unless told otherwise.
STUDY = ("softmax", "contrastive", "bce", "triplet", "vae")


def losses() -> tuple[str, ...]:
    """The ``--loss`` names, in the table's order."""
    return tuple(dict.fromkeys(variant.loss for variant in VARIANTS.values()))


def mining_rules(loss: str | None = None) -> tuple[str, ...]:
    """The ``--mining`` names ``loss`` trains with (all of them, sorted, without a loss)."""
    if loss is None:
        return tuple(sorted({variant.mining for variant in VARIANTS.values()}))
    return tuple(variant.mining for variant in VARIANTS.values() if variant.loss == loss)


def default_mining(loss: str) -> str:
    """The ``--mining`` that ``--loss`` trains with unless one is given: its row named by
    the loss (``random`` for the study's losses); KeyError for an unknown loss."""
    return VARIANTS[loss].mining


def variant_of(loss: str, mining: str | None = None) -> Variant:
    """The variant of ``--loss`` and ``--mining`` (None: the loss's default); KeyError if
    there is none."""
    if mining is None:
        return VARIANTS[loss]
    for variant in VARIANTS.values():
        if (variant.loss, variant.mining) == (loss, mining):
            return variant
    raise KeyError(f"{loss}-{mining}")
