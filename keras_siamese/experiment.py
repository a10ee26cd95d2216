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
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_siamese import (checkpoint, distribute, evaluation, export, latent, memory, models,
                           projector, streams)
from keras_siamese.callbacks import HistoryCSV
from keras_siamese.config import TrainConfig
from keras_siamese.data import fingerprint as data_fingerprint
from keras_siamese.data import load_dataset, resize_dataset
from keras_siamese.errors import (ConfigError, DataError, Interrupted, OutOfMemoryError,
                                  OutputError, SiameseError)
from keras_siamese.evaluation import Split
from keras_siamese.losses import (BernoulliReconstructionLoss, ContrastiveLoss, GaussianKLLoss,
                                  OnlineContrastiveLoss, OnlineTripletLoss, TripletLoss)
from keras_siamese.outputs import (atomic_path, check_run_folders, create_run_folders,
                                   replace_folder, write_json, write_text)
from keras_siamese.plots import manifold_image, reconstruction_strip, scatter_embeddings
from keras_siamese.run_lock import RunLock

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


def read_run(run_folder) -> tuple[TrainConfig, dict | None]:
    """The settings of the run in ``run_folder`` (its ``config.json``), pointed at that
    folder wherever it now is, and the fingerprint of the data it was trained on (None for
    runs made before fingerprints were recorded)."""
    run_dir = Path(run_folder)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.json)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    config, fingerprint = TrainConfig.from_json(text, path)
    try:
        config = dataclasses.replace(config, output_dir=str(run_dir.parent),
                                     run_name=run_dir.name, overwrite=False)
    except ConfigError as error:
        raise DataError(f"{path}: {error}") from None
    return config, fingerprint


def run_config(run_folder) -> TrainConfig:
    """The settings of the run in ``run_folder``, see :func:`read_run`."""
    return read_run(run_folder)[0]


def check_data_unchanged(run_dir, recorded: dict | None, current: dict, doing: str) -> None:
    """DataError when the data a run recorded differs from what its settings load now."""
    if recorded is None:
        log.warning("%s records no fingerprint of its data (made by an older version): "
                    "cannot check that the data is unchanged", run_dir)
    elif recorded != current:
        then = f"{recorded.get('train_images')} training / {recorded.get('test_images')} test"
        now = f"{current['train_images']} training / {current['test_images']} test"
        what = (f"{then} images then, {now} now" if then != now else
                f"the same {now} images, other content")
        raise DataError(f"the data of {run_dir} has changed since it was trained ({what}): "
                        f"{doing}")


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
    multi-worker`` every worker runs this; only the chief writes (:mod:`distribute`).

    The chief holds the run's lock (:mod:`run_lock`) throughout. A run that replaces an
    earlier one (``overwrite``) trains in hidden folders beside it and takes its place only
    once finished, so a failed or interrupted new run leaves the earlier one as it was; a
    new run that fails before its first checkpoint leaves no folder behind."""
    strategy = distribute.make_strategy(config.strategy)  # before any other TensorFlow work
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
            raise _explained(error, config, replacing, kept, created) from None
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
                              f"{error.strerror or error}; it is in {new}") from None
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
    run_dir, log_dir = config.run_dir, config.tensorboard_dir
    recorded = None
    if resume:
        start_epoch, saved = _resume_point(run_dir, config.epochs)
        recorded = read_run(run_dir)[1]
    else:
        start_epoch, saved = 0, None
    data = load_run_data(config)
    fingerprint = data_fingerprint(data)
    if resume:
        check_data_unchanged(run_dir, recorded, fingerprint, "resuming would train on other "
                             "data; restore the data or train a new run")
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
    _check_training_memory(config, model, data)
    if chief:
        if resume:
            log_dir.mkdir(parents=True, exist_ok=True)
        else:
            create_run_folders([run_dir, log_dir])
            write_text(run_dir / "config.json", (record or config).to_json(fingerprint))
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
    except tf.errors.OpError as error:
        if "space left" in error.message:  # TensorBoard's writers on a full disk
            raise OutputError(f"cannot write the TensorBoard logs in {log_dir}: No space "
                              "left on device") from None
        if not isinstance(error, tf.errors.ResourceExhaustedError):
            raise
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
        export.export_saved_model(model, run_dir / export.SAVED_MODEL,
                                  origin=(record or config).run_dir.absolute())
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
    """The data a run trains and is scored on, read as its settings say: the training
    images it does not use (outside its ``--limit`` subset) are dropped before the rest is
    resized to ``--image-size``, once the memory for it is known to be there. ConfigError
    where the images cannot work with its model."""
    data = load_dataset(config.dataset, config.data_dir, config.image_size, config.test_split,
                        resize=False)
    data = evaluation.used_images(data, config.holdout_classes, config.limit, config.seed)
    height, width, channels = data.x_train.shape[1:]
    if config.image_size is not None:
        height = width = config.image_size
    count = len(data.y_train) + len(data.y_test)
    memory.require(memory.image_bytes(count, height, width, channels),
                   f"holding {count} images of {height}x{width}x{channels}",
                   "lower --image-size or --limit")
    data = resize_dataset(data, config.image_size)
    if config.loss == "vae" and (height % 4 or width % 4):
        raise ConfigError(f"the VAE's decoder needs image sides that are multiples of 4; "
                          f"{config.dataset} has {height}x{width}: pass --image-size")
    return data


def _check_training_memory(config: TrainConfig, model: keras.Model, data) -> None:
    """OutOfMemoryError before training when a step would not fit (see :mod:`memory`)."""
    images = config.training_batch_size * len(model.inputs) * (2 if config.loss == "vae" else 1)
    height, width, _ = data.x_train.shape[1:]
    memory.require(memory.training_bytes(models.embedding_of(model), images),
                   f"training {config.training_batch_size} examples of {height}x{width} "
                   "images per step", "lower --batch-size or --image-size")


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
