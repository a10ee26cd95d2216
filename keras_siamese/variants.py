"""The table of what a run can train: one :class:`Variant` per loss, or loss with an online
mining rule.

A variant says everything that differs between, say, a contrastive Siamese twin and a
triplet network with semi-hard mining: how its model and loss are built around a fresh
embedding net, which training and validation streams feed it, what it checks before
training and what it draws after. :mod:`keras_siamese.experiment` reads the table and
never branches on a loss name, the command line offers its names as ``--loss`` /
``--mining`` choices, ``reproduce`` as grid columns, and ``diagram`` draws its models. A
new loss or mining rule is one entry here plus its own code (its loss in
:mod:`keras_siamese.losses`, its miner in :mod:`keras_siamese.mining`).

Names: a variant's ``name`` is its loss (``triplet``) for the study's offline pairs and
triplets (``mining = "random"``), else ``<loss>-<mining>`` (``triplet-batch-hard``): the
run folder's default name starts with it.
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
                                    backbone=config.backbone)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One trainable model: its loss, mining rule and the parts that differ between runs.

    Attributes:
        loss: the ``--loss`` name.
        mining: the ``--mining`` name; ``"random"`` for offline pairs / triplets / images.
        summary: one line of help for ``--loss`` (offline) or ``--mining`` (online).
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
    memory: bool = False
    collapse_hint: str = "try a smaller --learning-rate or a larger --embedding-dim"

    @property
    def name(self) -> str:
        return self.loss if self.mining == OFFLINE else f"{self.loss}-{self.mining}"

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
            figures=_vae_figures, activations_per_image=2, image_multiple=4),
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
)

VARIANTS: dict[str, Variant] = {variant.name: variant for variant in _TABLE}


def losses() -> tuple[str, ...]:
    """The ``--loss`` names, in the table's order."""
    return tuple(dict.fromkeys(variant.loss for variant in VARIANTS.values()))


def mining_rules(loss: str | None = None) -> tuple[str, ...]:
    """The ``--mining`` names ``loss`` trains with (all of them, sorted, without a loss)."""
    if loss is None:
        return tuple(sorted({variant.mining for variant in VARIANTS.values()}))
    return tuple(variant.mining for variant in VARIANTS.values() if variant.loss == loss)


def variant_of(loss: str, mining: str = OFFLINE) -> Variant:
    """The variant of ``--loss`` and ``--mining``; KeyError if there is none."""
    return VARIANTS[loss if mining == OFFLINE else f"{loss}-{mining}"]
