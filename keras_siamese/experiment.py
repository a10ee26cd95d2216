"""experiment.run(config): the one place that wires data, streams, models and losses.

It trains the model chosen by ``config.loss`` and leaves in the run folder:
``config.json``, ``history.csv``, ``model.keras``, ``embedding.png``, ``metrics.json``,
the SavedModel ``saved_model/`` (:mod:`keras_siamese.export`), plus the latent-space
frames (``frames/``, ``latent.gif``, ``latent_embeddings.npz``, see
:mod:`keras_siamese.latent`); a VAE run adds ``manifold.png`` and ``reconstructions.png``.
While it trains, ``checkpoints/`` holds the last finished epoch, so an interrupted run can
resume (:mod:`keras_siamese.checkpoint`). TensorBoard scalars go to
``<log_dir>/<run name>/train`` and ``/validation``, the embedding metrics
(:mod:`keras_siamese.evaluation`) to ``/metrics``, projector data to ``/projector``
(:mod:`keras_siamese.projector`). With ``--strategy`` the model trains under a
``tf.distribute`` strategy and only the chief writes any of this
(:mod:`keras_siamese.distribute`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_siamese import (checkpoint, distribute, evaluation, export, latent, models,
                           projector, streams)
from keras_siamese.callbacks import HistoryCSV
from keras_siamese.config import TrainConfig
from keras_siamese.data import load_dataset
from keras_siamese.errors import ConfigError, DataError, Interrupted, OutOfMemoryError
from keras_siamese.evaluation import Split
from keras_siamese.losses import (BernoulliReconstructionLoss, ContrastiveLoss, GaussianKLLoss,
                                  OnlineContrastiveLoss, OnlineTripletLoss, TripletLoss)
from keras_siamese.outputs import (atomic_path, check_run_folders, create_run_folders,
                                   write_json, write_text)
from keras_siamese.plots import manifold_image, reconstruction_strip, scatter_embeddings

log = logging.getLogger(__name__)

METRICS_RUN = "metrics"  # TensorBoard run (beside train/ and validation/) of the metrics


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    log_dir: Path
    metrics: dict  # empty on a worker that is not the chief: it writes nothing
    model: keras.Model  # the trained model (on the chief: a copy without replicas)
    chief: bool = True


def compiled_model(config: TrainConfig, input_shape, pixel_mean: float, pixel_std: float,
                   num_classes: int, steps_per_epoch: int) -> keras.Model:
    """The loss's model around a fresh shared embedding net (for the VAE: the encoder),
    compiled with its loss, metrics and Adam on a cosine-decayed learning rate."""
    net = dict(mean=pixel_mean, std=pixel_std, backbone=config.backbone)
    metrics = []
    if config.loss == "vae":
        model = models.vae_model(models.vae_encoder(input_shape, config.embedding_dim, **net),
                                 models.vae_decoder(config.embedding_dim, input_shape))
        loss = {"reconstruction": BernoulliReconstructionLoss(), "posterior": GaussianKLLoss()}
    else:
        embedding = models.embedding_net(input_shape, config.embedding_dim, **net)
        if config.online:
            model = models.online_model(embedding)
            loss = (OnlineTripletLoss(config.margin, config.mining) if config.loss == "triplet"
                    else OnlineContrastiveLoss(config.margin))
        elif config.loss == "softmax":
            model = models.classifier_model(embedding, num_classes)
            loss = keras.losses.SparseCategoricalCrossentropy()
            metrics = ["sparse_categorical_accuracy"]
        elif config.loss == "triplet":
            model, loss = models.triplet_model(embedding), TripletLoss(config.margin)
        elif config.loss == "bce":
            model = models.bce_model(embedding)
            loss, metrics = keras.losses.BinaryCrossentropy(), ["binary_accuracy"]
        else:
            model, loss = models.contrastive_model(embedding), ContrastiveLoss(config.margin)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=steps_per_epoch * config.epochs)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=metrics)
    return model


def training_streams(config: TrainConfig, seen: Split, start_epoch: int):
    """``(train, validation)``: training examples from the run's training images, epochs
    ``start_epoch`` on; validation ones from the test images of the trained classes."""
    b, seed = config.batch_size, config.seed
    x_train, y_train, x_test, y_test = (seen.train_images, seen.train_labels,
                                        seen.test_images, seen.test_labels)
    if config.online:
        p, k = config.classes_per_batch, config.images_per_class
        return (streams.pk_stream(x_train, y_train, p, k, seed, start_epoch),
                streams.evaluation_pk_batches(x_test, y_test, p, k))
    if config.loss == "vae":
        return (streams.vae_stream(x_train, y_train, b, seed, start_epoch),
                streams.evaluation_vae_images(x_test, y_test, b))
    if config.loss == "softmax":
        return (streams.image_stream(x_train, y_train, b, seed, start_epoch),
                streams.evaluation_images(x_test, y_test, b))
    if config.loss == "triplet":
        return (streams.triplet_stream(x_train, y_train, b, seed, start_epoch),
                streams.evaluation_triplets(x_test, y_test, b))
    return (streams.pair_stream(x_train, y_train, b, seed, start_epoch),
            streams.evaluation_pairs(x_test, y_test, b))


def _callbacks(config: TrainConfig, embedding, shown: latent.FrameImages,
               sets: evaluation.EvaluationSets, metrics_writer, start_epoch: int) -> list:
    """Records written while training: history, TensorBoard scalars, frames, projector,
    metrics every ``--eval-every`` epochs; a resumed run keeps those of epochs up to
    ``start_epoch``. The NaN guard comes before, the checkpoint after all of them."""
    run_dir = config.run_dir
    callbacks = [checkpoint.StopOnNonFiniteLoss(run_dir),
                 HistoryCSV(run_dir / "history.csv", resume_after=start_epoch),
                 keras.callbacks.TensorBoard(str(config.tensorboard_dir), write_graph=False)]
    if config.eval_every:
        callbacks.append(evaluation.EvaluationLog(embedding, sets, metrics_writer,
                                                  config.eval_every))
    if config.frames:
        callbacks.append(latent.LatentFrames(embedding, shown, run_dir, config.name,
                                             config.gif_frame_ms, resume_after=start_epoch))
    if config.projector:
        callbacks.append(projector.ProjectorLog(embedding, shown, config.tensorboard_dir,
                                                config.projector_every,
                                                resume_after=start_epoch))
    return callbacks + [checkpoint.EpochCheckpoint(run_dir)]


def run_config(run_folder) -> TrainConfig:
    """The settings of the run in ``run_folder`` (its ``config.json``), pointed at that
    folder wherever it now is."""
    run_dir = Path(run_folder)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.json)")
    settings = evaluation.read_json(run_dir / "config.json")
    settings.update(output_dir=str(run_dir.parent), run_name=run_dir.name, overwrite=False)
    settings["holdout_classes"] = tuple(settings.get("holdout_classes", ()))
    try:
        return TrainConfig(**settings)
    except TypeError as error:
        raise DataError(f"{run_dir / 'config.json'} is not a config of this version: "
                        f"{error}") from None


def _resume_point(run_dir: Path, epochs: int) -> tuple[int, Path]:
    """The epoch and checkpoint an interrupted run continues from."""
    found = checkpoint.last_checkpoint(run_dir)
    if found is None:
        if (run_dir / "metrics.json").is_file():
            raise ConfigError(f"{run_dir} has already finished: nothing to resume")
        raise ConfigError(f"{run_dir} has no checkpoint (no epoch finished): train it again "
                          "with --overwrite")
    if found[0] > epochs:
        raise DataError(f"{found[1]} is past the run's {epochs} epochs: not this run's checkpoint")
    return found


def run(config: TrainConfig, resume: bool = False) -> RunResult:
    """Train one model as configured and write its run folder (see module doc).

    With ``resume``, continue the interrupted run in ``config.run_dir`` (made with these
    settings, see :func:`run_config`) from its last checkpoint. Under ``--strategy
    multi-worker`` every worker runs this; only the chief writes (:mod:`distribute`)."""
    strategy = distribute.make_strategy(config.strategy)  # before any other TensorFlow work
    chief = distribute.is_chief(strategy)
    run_dir, log_dir = config.run_dir, config.tensorboard_dir
    if resume:
        start_epoch, saved = _resume_point(run_dir, config.epochs)
    else:
        start_epoch, saved = 0, None
        if chief:
            check_run_folders([run_dir, log_dir], config.overwrite)
    data = load_run_data(config)  # before touching any old run
    # Both check the settings against the data before any folder is made.
    sets = evaluation.evaluation_sets(data, config.holdout_classes, config.limit, config.seed)
    shown = latent.frame_images(data, config.frame_images)
    x_train, y_train = sets.seen.train_images, sets.seen.train_labels
    if config.online:
        for labels in (y_train, sets.seen.test_labels):
            streams.check_pk(labels, config.classes_per_batch, config.images_per_class)
    steps = streams.steps_per_epoch(len(y_train), config.training_batch_size)
    if config.mining == "batch-hard" and (config.embedding_dim < 16 or
                                          config.images_per_class > 4):
        log.warning("batch-hard mining collapsed every embedding into one point in our runs "
                    "below 16-D or with more than 4 images per class; it trains with e.g. "
                    "--embedding-dim 64 --classes-per-batch 10 --images-per-class 4 "
                    "(README, 'Online mining')")

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()  # bit-identical CPU runs for one seed
    with strategy.scope():  # the model's variables live on every replica
        if resume:
            model = checkpoint.load_checkpoint(saved)  # weights, optimiser state, step count
            log.info("resuming %s after epoch %d of %d", run_dir, start_epoch, config.epochs)
        else:
            model = compiled_model(config, x_train.shape[1:], float(x_train.mean()),
                                   float(x_train.std()), data.num_classes, steps)
    if chief:
        if resume:
            log_dir.mkdir(parents=True, exist_ok=True)
        else:
            create_run_folders([run_dir, log_dir], config.overwrite)
            write_text(run_dir / "config.json", config.to_json())
    embedding = models.embedding_of(model)
    train, validation = map(distribute.shard_by_data,
                            training_streams(config, sets.seen, start_epoch))
    log.info("training %s on %d %s images for %d epochs", model.name, len(y_train),
             config.dataset_name, config.epochs)

    metrics_writer = tf.summary.create_file_writer(str(log_dir / METRICS_RUN)) if chief else None
    callbacks = (_callbacks(config, embedding, shown, sets, metrics_writer, start_epoch)
                 if chief else [checkpoint.StopOnNonFiniteLoss(run_dir)])
    started = time.perf_counter()
    try:
        model.fit(
            train, epochs=config.epochs, initial_epoch=start_epoch, steps_per_epoch=steps,
            validation_data=validation, shuffle=False,  # streams shuffle themselves
            callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2,
        )
    except KeyboardInterrupt:
        kept = checkpoint.last_checkpoint(run_dir)
        raise Interrupted(f"interrupted after epoch {kept[0] if kept else 0} of "
                          f"{config.epochs}; continue with: siamese-keras train --resume "
                          f"{run_dir}") from None
    except tf.errors.ResourceExhaustedError:
        height, width, _ = x_train.shape[1:]
        raise OutOfMemoryError(f"out of memory training {config.training_batch_size} "
                               f"examples of {height}x{width} images per step: lower "
                               "--batch-size or --image-size") from None
    if not chief:
        return RunResult(run_dir, log_dir, {}, model, chief=False)
    trained = config.epochs - start_epoch
    seconds_per_epoch = (time.perf_counter() - started) / trained if trained else None

    with atomic_path(run_dir / "model.keras") as tmp:
        model.save(tmp)
    if config.strategy != "default":
        # Export and scoring need no replicas: work on a plain copy of the trained model.
        model = checkpoint.load_checkpoint(run_dir / "model.keras")
        embedding = models.embedding_of(model)
    if config.export:
        export.export_saved_model(model, run_dir / export.SAVED_MODEL)
    metrics = evaluation.evaluate(embedding, sets)
    evaluation.log_scalars(metrics_writer, metrics, config.epochs)
    metrics_writer.close()
    metrics["seconds_per_epoch"] = seconds_per_epoch
    write_json(run_dir / "metrics.json", evaluation.to_json(metrics))
    scatter_embeddings(
        models.embed_images(embedding, data.x_test), data.y_test, data.class_names,
        f"{config.name}: test embeddings after {config.epochs} epochs "
        f"(P@1 {metrics['precision_at_1']:.4f})",
        run_dir / "embedding.png",
    )
    if config.loss == "vae":
        vae_figures(model, embedding, data, run_dir)
    # Finished: model.keras holds the final state, the checkpoint is no longer needed.
    shutil.rmtree(run_dir / checkpoint.CHECKPOINT_DIR, ignore_errors=True)
    return RunResult(run_dir, log_dir, metrics, model)


def load_run_data(config: TrainConfig):
    """The dataset a run trains on, read as its settings say; ConfigError where the images
    cannot work with its model."""
    data = load_dataset(config.dataset, config.data_dir, config.image_size, config.test_split)
    height, width = data.x_train.shape[1:3]
    if config.loss == "vae" and (height % 4 or width % 4):
        raise ConfigError(f"the VAE's decoder needs image sides that are multiples of 4; "
                          f"{config.dataset} has {height}x{width}: pass --image-size")
    return data


def vae_figures(model: keras.Model, embedding: keras.Model, data, run_dir: Path) -> None:
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
