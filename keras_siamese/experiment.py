"""experiment.run(config): the one place that wires data, streams, models and losses.

It trains the model chosen by ``config.loss`` and leaves in the run folder:
``config.json``, ``history.csv``, ``model.keras``, ``embedding.png``, ``metrics.json``, the
SavedModel ``saved_model/`` (:mod:`keras_siamese.export`), plus the latent-space frames (``frames/``, ``latent.gif``, ``latent_embeddings.npz``, see
:mod:`keras_siamese.latent`). TensorBoard scalars go to ``<log_dir>/<run name>/train`` and
``/validation``, the embedding metrics (:mod:`keras_siamese.evaluation`) to ``/metrics``,
projector data to ``/projector`` (:mod:`keras_siamese.projector`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from keras_siamese import evaluation, export, latent, models, projector, streams
from keras_siamese.callbacks import HistoryCSV
from keras_siamese.config import TrainConfig
from keras_siamese.data import load_dataset
from keras_siamese.evaluation import Split
from keras_siamese.losses import ContrastiveLoss, TripletLoss
from keras_siamese.outputs import (atomic_path, check_run_folders, create_run_folders,
                                   write_json, write_text)
from keras_siamese.plots import scatter_embeddings

log = logging.getLogger(__name__)

METRICS_RUN = "metrics"  # TensorBoard run (beside train/ and validation/) of the metrics


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    log_dir: Path
    metrics: dict


@dataclasses.dataclass(frozen=True)
class _Task:
    """What one loss needs: its model around the shared embedding net, loss, streams."""

    model: keras.Model
    loss: keras.losses.Loss
    metrics: list
    train: tf.data.Dataset
    validation: tf.data.Dataset


def _task(config: TrainConfig, embedding, num_classes: int, seen: Split) -> _Task:
    """Training streams from the run's training images, validation ones from the test
    images of the same (not held-out) classes."""
    b, seed = config.batch_size, config.seed
    x_train, y_train, x_test, y_test = (seen.train_images, seen.train_labels,
                                        seen.test_images, seen.test_labels)
    if config.loss == "softmax":
        return _Task(models.classifier_model(embedding, num_classes),
                     keras.losses.SparseCategoricalCrossentropy(), ["sparse_categorical_accuracy"],
                     streams.image_stream(x_train, y_train, b, seed),
                     streams.evaluation_images(x_test, y_test, b))
    if config.loss == "triplet":
        return _Task(models.triplet_model(embedding), TripletLoss(config.margin), [],
                     streams.triplet_stream(x_train, y_train, b, seed),
                     streams.evaluation_triplets(x_test, y_test, b))
    pairs = streams.pair_stream(x_train, y_train, b, seed)
    evaluation = streams.evaluation_pairs(x_test, y_test, b)
    if config.loss == "bce":
        return _Task(models.bce_model(embedding), keras.losses.BinaryCrossentropy(),
                     ["binary_accuracy"], pairs, evaluation)
    return _Task(models.contrastive_model(embedding), ContrastiveLoss(config.margin), [],
                 pairs, evaluation)


def _callbacks(config: TrainConfig, embedding, shown: latent.FrameImages,
               sets: evaluation.EvaluationSets, metrics_writer) -> list:
    """Records written while training: history, TensorBoard scalars, frames, projector,
    metrics every ``--eval-every`` epochs."""
    callbacks = [HistoryCSV(config.run_dir / "history.csv"),
                 keras.callbacks.TensorBoard(str(config.tensorboard_dir), write_graph=False)]
    if config.eval_every:
        callbacks.append(evaluation.EvaluationLog(embedding, sets, metrics_writer,
                                                  config.eval_every))
    if config.frames:
        callbacks.append(latent.LatentFrames(embedding, shown, config.run_dir, config.name,
                                             config.gif_frame_ms))
    if config.projector:
        callbacks.append(projector.ProjectorLog(embedding, shown, config.tensorboard_dir,
                                                config.projector_every))
    return callbacks


def run(config: TrainConfig) -> RunResult:
    """Train one model as configured and write its run folder (see module doc)."""
    run_dir, log_dir = config.run_dir, config.tensorboard_dir
    check_run_folders([run_dir, log_dir], config.overwrite)
    data = load_dataset(config.dataset, config.data_dir)  # before touching any old run
    # Both check the settings against the data before any folder is made.
    sets = evaluation.evaluation_sets(data, config.holdout_classes, config.limit, config.seed)
    shown = latent.frame_images(data, config.frame_images)
    x_train, y_train = sets.seen.train_images, sets.seen.train_labels
    create_run_folders([run_dir, log_dir], config.overwrite)
    write_text(run_dir / "config.json", config.to_json())

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()  # bit-identical CPU runs for one seed
    embedding = models.embedding_net(x_train.shape[1:], config.embedding_dim,
                                     mean=float(x_train.mean()), std=float(x_train.std()))
    task = _task(config, embedding, data.num_classes, sets.seen)
    steps = streams.steps_per_epoch(len(y_train), config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate,
                                                      decay_steps=steps * config.epochs)
    task.model.compile(optimizer=keras.optimizers.Adam(schedule), loss=task.loss,
                       metrics=task.metrics)
    log.info("training %s on %d %s images for %d epochs", task.model.name, len(y_train),
             config.dataset, config.epochs)

    metrics_writer = tf.summary.create_file_writer(str(log_dir / METRICS_RUN))
    started = time.perf_counter()
    task.model.fit(
        task.train, epochs=config.epochs, steps_per_epoch=steps,
        validation_data=task.validation, shuffle=False,  # streams shuffle themselves
        callbacks=_callbacks(config, embedding, shown, sets, metrics_writer),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    seconds_per_epoch = (time.perf_counter() - started) / config.epochs

    with atomic_path(run_dir / "model.keras") as tmp:
        task.model.save(tmp)
    if config.export:
        export.export_saved_model(task.model, run_dir / export.SAVED_MODEL)
    metrics = evaluation.evaluate(embedding, sets)
    evaluation.log_scalars(metrics_writer, metrics, config.epochs)
    metrics_writer.close()
    metrics["seconds_per_epoch"] = seconds_per_epoch
    write_json(run_dir / "metrics.json", evaluation.to_json(metrics))
    scatter_embeddings(
        evaluation.embed(embedding, data.x_test), data.y_test, data.class_names,
        f"{config.name}: test embeddings after {config.epochs} epochs "
        f"(P@1 {metrics['precision_at_1']:.4f})",
        run_dir / "embedding.png",
    )
    return RunResult(run_dir, log_dir, metrics)
