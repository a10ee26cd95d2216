"""experiment.run(config): the one place that wires data, streams, models and losses.

It trains the variant chosen by ``config.loss`` and ``config.mining``
(:mod:`keras_siamese.variants`) and leaves in the run folder
(:mod:`keras_siamese.run_folder`): ``config.json``, ``history.csv``, ``model.keras``,
``embedding.png``, ``metrics.json``, the SavedModel ``saved_model/``
(:mod:`keras_siamese.export`), plus the latent-space frames (``frames/``, ``latent.gif``,
``latent_embeddings.npz``, see :mod:`keras_siamese.latent`) and the variant's own figures
(the VAE's ``manifold.png`` and ``reconstructions.png``). While it trains,
``checkpoints/`` holds the last finished epoch, so an interrupted run can resume
(:mod:`keras_siamese.checkpoint`). Every epoch the collapse monitor
(:class:`callbacks.CollapseMonitor`) logs the spread and pair distances of fixed test
embeddings and stops a run whose embeddings collapsed: exit 1 with the records up to
that epoch and its checkpoint kept, no ``model.keras``. TensorBoard scalars go to
``<log_dir>/<run name>/train`` and ``/validation``, the embedding metrics
(:mod:`keras_siamese.evaluation`) to ``/metrics``, projector data to ``/projector``
(:mod:`keras_siamese.projector`). With ``--strategy`` the model trains under a
``tf.distribute`` strategy and only the chief writes any of this
(:mod:`keras_siamese.distribute`).

One run, step by step (:func:`_train`): read the data its settings name
(:func:`run_folder.load_run_data`) -> split it into seen / unseen classes
(:func:`splits.evaluation_sets`) -> let the variant check its settings against the data ->
seed and build the variant's model (or load the checkpoint) -> check memory -> make the
folders and ``config.json`` -> the variant's streams -> ``fit`` with the callbacks ->
save, export, score, plot (:func:`_finish`). :func:`run` wraps that in the run's lock and
the staging that keeps an earlier run intact until the new one has finished.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from keras_siamese import (checkpoint, distribute, export, latent, memory, models, precision,
                           projector, streams)
from keras_siamese import run_folder
from keras_siamese.callbacks import CollapseMonitor, HistoryCSV, monitor_sample
from keras_siamese.config import TrainConfig
from keras_siamese.data import fingerprint as data_fingerprint, pixel_statistics
from keras_siamese.errors import (CollapseError, ConfigError, DataError, Interrupted,
                                  OutOfMemoryError, OutputError, SiameseError)
from keras_siamese.evaluation import EvaluationLog, evaluate, log_scalars
from keras_siamese.outputs import (atomic_path, check_run_folders, create_run_folders,
                                   replace_folder)
from keras_siamese.plots import scatter_embeddings
from keras_siamese.run_lock import RunLock
from keras_siamese.splits import EvaluationSets, Split, evaluation_sets
from keras_siamese.variants import NetSpec

log = logging.getLogger(__name__)

METRICS_RUN = "metrics"  # TensorBoard run (beside train/ and validation/) of the metrics


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    log_dir: Path
    metrics: dict  # empty on a worker that is not the chief: it writes nothing
    model: keras.Model  # the trained model (on the chief: a copy without replicas)
    chief: bool = True


def compiled_model(config: TrainConfig, net: NetSpec, steps_per_epoch: int) -> keras.Model:
    """The variant's model around a fresh shared embedding net (:mod:`variants`), compiled
    with its loss, metrics and Adam on the learning-rate schedule of ``--lr-schedule``."""
    with precision.building_in(config.precision):
        model, loss, metrics = config.model_variant.build(config, net)
    optimizer = keras.optimizers.Adam(learning_rate_schedule(config, steps_per_epoch))
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


# The study's PyTorch reference: StepLR(optimizer, step_size=8, gamma=0.1), per epoch.
STEP_EPOCHS, STEP_FACTOR = 8, 0.1


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """``lr(step)`` for Adam, a function of the optimiser's step count (so a resumed run,
    whose optimiser state holds that count, continues on the same curve):

    - cosine: ``lr0 * (1 + cos(pi * step / S)) / 2``, ``S`` the run's total steps;
    - constant: ``lr0``;
    - step: ``lr0 * 0.1 ** floor(step / (8 * steps_per_epoch))``.
    """
    total = steps_per_epoch * config.epochs
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total)
    if config.lr_schedule == "step":
        every = STEP_EPOCHS * steps_per_epoch
        # Keras keeps a rate up to and including its boundary step: the last step of epoch 8.
        boundaries = list(range(every - 1, total - 1, every))
        rates = [config.learning_rate * STEP_FACTOR ** k for k in range(len(boundaries) + 1)]
        if boundaries:  # a run of 8 epochs or fewer never steps
            return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, rates)
    return config.learning_rate


def training_streams(config: TrainConfig, seen: Split, start_epoch: int):
    """``(train, validation)``: the variant's training examples from the run's training
    images, epochs ``start_epoch`` on; validation ones from the test images of the trained
    classes."""
    return config.model_variant.streams(config, seen, start_epoch)


def _callbacks(config: TrainConfig, embedding, shown: latent.FrameImages,
               sets: EvaluationSets, metrics_writer, start_epoch: int) -> list:
    """Records written while training: the collapse monitor's statistics (it stops a
    collapsed run), history, TensorBoard scalars, frames, projector, metrics every
    ``--eval-every`` epochs; a resumed run keeps those of epochs up to ``start_epoch``.
    The NaN guard comes before, the checkpoint after all of them."""
    run_dir = config.run_dir
    images, labels = monitor_sample(sets.seen.test_images, sets.seen.test_labels)
    callbacks = [checkpoint.StopOnNonFiniteLoss(run_dir),
                 CollapseMonitor(embedding, images, labels, run_dir,
                                 config.model_variant.collapse_hint, config.stop_on_collapse,
                                 resume_after=start_epoch,
                                 history_path=run_dir / run_folder.HISTORY),
                 HistoryCSV(run_dir / run_folder.HISTORY, resume_after=start_epoch),
                 keras.callbacks.TensorBoard(str(config.tensorboard_dir), write_graph=False)]
    if config.eval_every:
        callbacks.append(EvaluationLog(embedding, sets, metrics_writer,
                                                  config.eval_every))
    if config.frames:
        callbacks.append(latent.LatentFrames(embedding, shown, run_dir, config.name,
                                             config.gif_frame_ms, resume_after=start_epoch))
    if config.projector:
        callbacks.append(projector.ProjectorLog(embedding, shown, config.tensorboard_dir,
                                                config.projector_every,
                                                resume_after=start_epoch))
    return callbacks + [checkpoint.EpochCheckpoint(run_dir)]


def _resume_point(run_dir: Path, epochs: int) -> tuple[int, Path]:
    """The epoch and checkpoint an interrupted run continues from."""
    found = checkpoint.last_checkpoint(run_dir)
    if found is None:
        if (run_dir / run_folder.METRICS).is_file():
            raise ConfigError(f"{run_dir} has already finished: nothing to resume")
        raise ConfigError(f"{run_dir} has no checkpoint (no epoch finished): train it again "
                          "with --overwrite")
    if found[0] > epochs:
        raise DataError(f"{found[1]} is past the run's {epochs} epochs: not this run's checkpoint")
    return found


def run(config: TrainConfig, resume: bool = False) -> RunResult:
    """Train one model as configured and write its run folder (see module doc).

    With ``resume``, continue the interrupted run in ``config.run_dir`` (made with these
    settings, see :func:`run_folder.read_config`) from its last checkpoint. Under ``--strategy
    multi-worker`` every worker runs this; only the chief writes (:mod:`distribute`).

    The chief holds the run's lock (:mod:`run_lock`) throughout. A run that replaces an
    earlier one (``overwrite``) trains in hidden folders beside it and takes its place only
    once finished, so a failed or interrupted new run leaves the earlier one as it was; a
    new run that fails before its first checkpoint leaves no folder behind."""
    strategy = distribute.make_strategy(config.strategy)  # before any other TensorFlow work
    # "auto" becomes what it means here, in config.json too: a resumed run keeps it.
    config = dataclasses.replace(config, precision=precision.resolve(config.precision))
    if not distribute.is_chief(strategy):
        return _train(config, strategy, resume, chief=False)
    with RunLock(config.run_dir, "training"):
        _remove_leftovers(config)
        replacing = False
        if not resume:
            check_run_folders([config.run_dir, config.tensorboard_dir], config.overwrite)
            replacing = config.run_dir.exists() or config.tensorboard_dir.exists()
        work = _staging(config) if replacing else config
        try:
            result = _train(work, strategy, resume, record=config)
        except BaseException as error:
            created = not resume and work.run_dir.exists()
            kept = resume or (not replacing and
                              checkpoint.last_checkpoint(config.run_dir) is not None)
            if created and not kept:  # nothing resumable: remove what this run made
                for folder in (work.run_dir, work.tensorboard_dir):
                    shutil.rmtree(folder.parent if replacing else folder, ignore_errors=True)
            explained = _explained(error, config, replacing, kept, created)
            if explained is error:
                raise
            raise explained from error
        if replacing:
            _swap_into_place(work, config)
            result = dataclasses.replace(result, run_dir=config.run_dir,
                                         log_dir=config.tensorboard_dir)
        return result


def _staging(config: TrainConfig) -> TrainConfig:
    """Where a run that replaces an earlier one trains: hidden folders beside it."""
    hidden = f".{config.name}.new-{os.getpid()}"
    return dataclasses.replace(config, output_dir=str(Path(config.output_dir) / hidden),
                               log_dir=str(Path(config.log_dir) / hidden))


def _swap_into_place(work: TrainConfig, config: TrainConfig) -> None:
    """Move the finished new run's folders to the earlier run's places (see
    :func:`outputs.replace_folder`)."""
    for new, target in ((work.run_dir, config.run_dir),
                        (work.tensorboard_dir, config.tensorboard_dir)):
        try:
            replace_folder(new, target)
        except OSError as error:
            raise OutputError(f"cannot move the new run into {target}: "
                              f"{error.strerror or error}; it is in {new}") from error
        shutil.rmtree(new.parent, ignore_errors=True)


def _remove_leftovers(config: TrainConfig) -> None:
    """Delete what killed commands left behind: temporary files of interrupted writes
    (``.NAME.tmp-PID``) in the run's folders, and hidden folders of an interrupted
    replacement beside them. The caller holds the run's lock, so nothing else writes."""
    for folder in (config.run_dir, config.tensorboard_dir):
        if folder.is_dir():
            for path in sorted(folder.rglob(".*.tmp-*"), reverse=True):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        for pattern in (f".{config.name}.new-*", f".{config.name}.replaced-*"):
            for path in folder.parent.glob(pattern):
                shutil.rmtree(path, ignore_errors=True)


def _explained(error: BaseException, config: TrainConfig, replacing: bool, kept: bool,
               created: bool) -> BaseException:
    """The error a failed run reports, with what became of the folders it ``created`` (a
    resumed run creates none: its errors stand as they are, but for an interrupt's)."""
    if isinstance(error, OSError):  # a full disk, most often, while writing a record
        error = OutputError(f"cannot write {error.filename or 'the run'}: "
                            f"{error.strerror or error}")
    found = checkpoint.last_checkpoint(config.run_dir) if kept else None
    if replacing:
        outcome = f"the new run was discarded and {config.run_dir} is unchanged"
    elif found and created:
        outcome = (f"epochs up to {found[0]} are kept; continue with: siamese-keras train "
                   f"--resume {config.run_dir}")
    elif created:
        outcome = "no epoch had finished, so nothing was kept"
    else:
        outcome = ""
    if isinstance(error, KeyboardInterrupt):
        if found:
            return Interrupted(f"interrupted after epoch {found[0]} of {config.epochs}; "
                               f"continue with: siamese-keras train --resume {config.run_dir}")
        return Interrupted("interrupted" + (f"; {outcome}" if outcome else ""))
    if isinstance(error, CollapseError) and found and created and not replacing:
        kept = ["config.json", "history.csv"] + (["the latent frames"] if config.frames else [])
        return CollapseError(f"{error}; {config.run_dir} keeps {', '.join(kept)} and the epoch "
                             f"{found[0]} checkpoint (no model.keras): train again with "
                             "--overwrite", error.epoch)
    if isinstance(error, checkpoint.NonFiniteLossError):
        if found:
            return error  # its message names the checkpoint that is kept
        return checkpoint.NonFiniteLossError(f"{error.summary}; {outcome}; try a smaller "
                                             "--learning-rate")
    if isinstance(error, SiameseError) and outcome:
        return type(error)(f"{error}; {outcome}")
    return error


def _train(config: TrainConfig, strategy, resume: bool, chief: bool = True,
           record: TrainConfig | None = None) -> RunResult:
    """Train and write ``config.run_dir`` (see :func:`run`); ``config.json`` holds
    ``record``, the settings as the user gave them (``config`` may point to staging)."""
    start_epoch, saved = _resume_point(config.run_dir, config.epochs) if resume else (0, None)
    data = run_folder.load_run_data(config)
    fingerprint = data_fingerprint(data)
    if resume:
        recorded = run_folder.read_config(config.run_dir)[1]
        run_folder.check_data_unchanged(config.run_dir, recorded, fingerprint,
                                        "resuming would train on other data; restore the data "
                                        "or train a new run")
    # These check the settings against the data before any folder is made.
    sets = evaluation_sets(data, config.holdout_classes, config.limit, config.seed)
    shown = latent.frame_images(data, config.frame_images)
    config.model_variant.check(config, sets.seen)
    steps = streams.steps_per_epoch(len(sets.seen.train_labels), config.training_batch_size)
    model = _model(config, strategy, saved, start_epoch, NetSpec(
        sets.seen.train_images.shape[1:], *pixel_statistics(sets.seen.train_images),
        data.num_classes), steps)
    _check_training_memory(config, model)
    if chief:
        _create_folders(config, record, fingerprint, resume)
    data_streams = map(distribute.shard_by_data,
                       training_streams(config, sets.seen, start_epoch))
    log.info("training %s on %d %s images for %d epochs", model.name,
             len(sets.seen.train_labels), config.dataset_name, config.epochs)
    if not chief:
        _fit(config, model, data_streams, start_epoch, steps,
             [checkpoint.StopOnNonFiniteLoss(config.run_dir)])
        return RunResult(config.run_dir, config.tensorboard_dir, {}, model, chief=False)
    metrics_writer = tf.summary.create_file_writer(str(config.tensorboard_dir / METRICS_RUN))
    seconds_per_epoch = _fit(config, model, data_streams, start_epoch, steps, _callbacks(
        config, models.embedding_of(model), shown, sets, metrics_writer, start_epoch))
    return _finish(config, record or config, model, data, sets, seconds_per_epoch,
                   metrics_writer)


def _model(config: TrainConfig, strategy, saved: Path | None, start_epoch: int, net: NetSpec,
           steps: int) -> keras.Model:
    """The compiled model: fresh from the run's seed, or as the checkpoint ``saved`` left
    it (weights, optimiser state, step count), with its variables on every replica."""
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()  # bit-identical CPU runs for one seed
    with strategy.scope():
        if saved is None:
            return compiled_model(config, net, steps)
        log.info("resuming %s after epoch %d of %d", config.run_dir, start_epoch, config.epochs)
        return checkpoint.load_checkpoint(saved)


def _create_folders(config: TrainConfig, record: TrainConfig | None, fingerprint: dict,
                    resume: bool) -> None:
    """The run folder with its ``config.json`` and the TensorBoard folder (a resumed run
    has its run folder already)."""
    if resume:
        config.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        return
    create_run_folders([config.run_dir, config.tensorboard_dir])
    run_folder.write_config(config.run_dir, record or config, fingerprint)


def _fit(config: TrainConfig, model: keras.Model, data_streams, start_epoch: int,
         steps: int, callbacks: list) -> float | None:
    """Train on ``data_streams`` (training, validation) from ``start_epoch`` to the last
    epoch; returns the seconds per epoch (None when no epoch was left to train)."""
    train, validation = data_streams
    started = time.perf_counter()
    try:
        model.fit(
            train, epochs=config.epochs, initial_epoch=start_epoch, steps_per_epoch=steps,
            validation_data=validation, shuffle=False,  # streams shuffle themselves
            callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2,
        )
    except tf.errors.OpError as error:
        explained = _training_error(error, config, model)
        if explained is None:
            raise
        raise explained from error
    for callback in callbacks:  # stopped by the collapse monitor: the epoch's records are out
        if isinstance(callback, CollapseMonitor) and callback.collapse is not None:
            raise callback.collapse
    trained = config.epochs - start_epoch
    return (time.perf_counter() - started) / trained if trained else None


def _training_error(error: tf.errors.OpError, config: TrainConfig,
                    model: keras.Model) -> SiameseError | None:
    """What a TensorFlow failure during ``fit`` means for the user, if we know."""
    if "space left" in error.message:  # TensorBoard's writers on a full disk
        return OutputError(f"cannot write the TensorBoard logs in {config.tensorboard_dir}: "
                           "No space left on device")
    if not isinstance(error, tf.errors.ResourceExhaustedError):
        return None
    height, width, _ = model.inputs[0].shape[1:]
    return OutOfMemoryError(f"out of memory training {config.training_batch_size} examples "
                            f"of {height}x{width} images per step: lower --batch-size or "
                            "--image-size")


def _finish(config: TrainConfig, record: TrainConfig, model: keras.Model, data,
            sets: EvaluationSets, seconds_per_epoch: float | None,
            metrics_writer) -> RunResult:
    """Save, export and score the trained model, draw its pictures, drop the checkpoint."""
    run_dir = config.run_dir
    with atomic_path(run_dir / run_folder.MODEL) as tmp:
        model.save(tmp)
    if config.strategy != "default":
        # Export and scoring need no replicas: work on a plain copy of the trained model.
        model = checkpoint.load_checkpoint(run_dir / run_folder.MODEL)
    embedding = models.embedding_of(model)
    if config.export:
        export.export_saved_model(model, run_dir / run_folder.SAVED_MODEL,
                                  origin=record.run_dir.absolute())
    metrics = evaluate(embedding, sets)
    log_scalars(metrics_writer, metrics, config.epochs)
    metrics_writer.close()
    metrics["seconds_per_epoch"] = seconds_per_epoch
    run_folder.write_metrics(run_dir / run_folder.METRICS, metrics)
    scatter_embeddings(
        models.embed_images(embedding, data.x_test), data.y_test, data.class_names,
        f"{config.name}\ntest embeddings after {config.epochs} epochs "
        f"(P@1 {metrics['precision_at_1']:.4f})",
        run_dir / run_folder.EMBEDDING_PLOT,
    )
    if config.model_variant.figures is not None:
        config.model_variant.figures(model, embedding, data, run_dir)
    # Finished: model.keras holds the final state, the checkpoint is no longer needed.
    shutil.rmtree(run_dir / checkpoint.CHECKPOINT_DIR, ignore_errors=True)
    return RunResult(run_dir, config.tensorboard_dir, metrics, model)


def _check_training_memory(config: TrainConfig, model: keras.Model) -> None:
    """OutOfMemoryError before training when a step would not fit (see :mod:`memory`)."""
    images = (config.training_batch_size * len(model.inputs) *
              config.model_variant.activations_per_image)
    height, width, _ = model.inputs[0].shape[1:]
    memory.require(memory.training_bytes(models.embedding_of(model), images),
                   f"training {config.training_batch_size} examples of {height}x{width} "
                   "images per step", "lower --batch-size or --image-size")
