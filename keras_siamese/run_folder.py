"""A run folder: the names of its files, its settings, its data, its model, its scores.

Every command that works on a finished (or interrupted) run goes through here, so there
is one reading of ``config.json``, one way to load a run's model and one way to score it
(:func:`evaluate_run`, behind ``evaluate``; ``export``, ``embed`` and ``reproduce`` use the
loaders). A run folder holds:

- ``config.json``: the :class:`~keras_siamese.config.TrainConfig` that made it, plus the
  fingerprint of its data (:func:`keras_siamese.data.fingerprint`);
- ``history.csv``, ``metrics.json`` (``metrics_changed_data.json`` from ``evaluate
  --changed-data``), ``model.keras``, ``embedding.png``, ``saved_model/``;
- ``calibration.json`` and ``calibration.png`` from ``calibrate``
  (:func:`calibrate_run`, :mod:`keras_siamese.calibration`);
- the latent frames (:mod:`keras_siamese.latent`), the checkpoints of an unfinished run
  (:mod:`keras_siamese.checkpoint`) and a variant's own figures (the VAE's).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import keras
import numpy as np

from keras_siamese import memory, models
from keras_siamese.checkpoint import load_keras_file
from keras_siamese.config import TrainConfig
from keras_siamese.data import (ImageData, fingerprint, is_streamed, load_dataset,
                                resize_dataset)
from keras_siamese.errors import ConfigError, DataError, SiameseError
from keras_siamese.outputs import write_json, write_text
from keras_siamese.report import json_safe
from keras_siamese.splits import used_images
from keras_siamese.variants import variant_of

log = logging.getLogger(__name__)

CONFIG = "config.json"
HISTORY = "history.csv"
MODEL = "model.keras"
METRICS = "metrics.json"
CHANGED_DATA_METRICS = "metrics_changed_data.json"  # evaluate --changed-data
CALIBRATION = "calibration.json"  # siamese-keras calibrate (and calibration.png)
EMBEDDING_PLOT = "embedding.png"
SAVED_MODEL = "saved_model"


def read_config(run_folder) -> tuple[TrainConfig, dict | None]:
    """The settings of the run in ``run_folder`` (its ``config.json``), pointed at that
    folder wherever it now is, and the fingerprint of the data it was trained on (None for
    runs made before fingerprints were recorded)."""
    run_dir = Path(run_folder)
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {CONFIG})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    config, recorded = TrainConfig.from_json(text, path)
    try:
        config = dataclasses.replace(config, output_dir=str(run_dir.parent),
                                     run_name=run_dir.name, overwrite=False)
    except ConfigError as error:
        raise DataError(f"{path}: {error}") from error
    return config, recorded


def write_config(run_dir: Path, config: TrainConfig, data_fingerprint: dict) -> None:
    write_text(run_dir / CONFIG, config.to_json(data_fingerprint))


def read_metrics(path) -> dict:
    """A ``metrics.json`` (or any JSON object file of a run)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: give the folder of a finished training run")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a JSON {type(value).__name__}, not an object: damaged")
    return value


def write_metrics(path, metrics: dict) -> dict:
    """Write ``metrics`` as strict JSON (NaN as null); returns what was written."""
    metrics = json_safe(metrics)
    write_json(path, metrics)
    return metrics


def finished_metrics(config: TrainConfig) -> dict | None:
    """The metrics of the run in ``config.run_dir`` if it finished with exactly these
    settings (settings added to TrainConfig after it was made count as their defaults)."""
    try:
        recorded, _ = read_config(config.run_dir)
        metrics = read_metrics(config.run_dir / METRICS)
    except SiameseError:
        return None
    # A finished run was never stopped for collapse: that switch did not change it.
    recorded = dataclasses.replace(recorded, stop_on_collapse=config.stop_on_collapse)
    return metrics if recorded == _as_read(config) else None


def _as_read(config: TrainConfig) -> TrainConfig:
    """``config`` as :func:`read_config` would give it back from its run folder."""
    return dataclasses.replace(config, output_dir=str(config.run_dir.parent),
                               run_name=config.run_dir.name, overwrite=False)


def load_model(path) -> keras.Model:
    """The trained model of a finished run: ``path`` is its folder (``model.keras`` in it)
    or a ``.keras`` file. The package's ``__init__`` registers the custom layers and losses
    it needs."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL
    if not path.is_file():
        raise ConfigError(f"{path} not found: give the folder of a finished training run")
    return load_keras_file(path, compile=False, advice="retrain the run with --overwrite")


def load_embedding(path) -> keras.Model:
    """The embedding net of the finished run in ``path`` (or of a ``.keras`` file)."""
    return models.embedding_of(load_model(path))


def load_run_data(config: TrainConfig) -> ImageData:
    """The data a run trains and is scored on, read as its settings say: the training
    images it does not use (outside its ``--limit`` subset) are dropped before the rest is
    resized to ``--image-size``, once the memory for it is known to be there. ConfigError
    where the images cannot work with its model."""
    data = load_dataset(config.dataset, config.data_dir, config.image_size, config.test_split,
                        resize=False, stream=config.stream)
    data = used_images(data, config.holdout_classes, config.limit, config.seed)
    height, width, channels = data.x_train.shape[1:]
    if config.image_size is not None:
        height = width = config.image_size
    count = len(data.y_train) + len(data.y_test)
    if not is_streamed(data):  # streamed images are read at their size, a batch at a time
        memory.require(memory.image_bytes(count, height, width, channels),
                       f"holding {count} images of {height}x{width}x{channels}",
                       "lower --image-size or --limit")
        data = resize_dataset(data, config.image_size)
    variant = variant_of(config.loss, config.mining)
    if height % variant.image_multiple or width % variant.image_multiple:
        raise ConfigError(f"--loss {variant.name} needs image sides that are multiples of "
                          f"{variant.image_multiple}; {config.dataset} has {height}x{width}: "
                          "pass --image-size")
    return data


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


def evaluate_run(run_folder, changed_data: bool = False) -> tuple[dict, Path, ImageData]:
    """Score a finished run on the data its settings load and write the metrics:
    ``(metrics as written, the file, the data)``.

    Uses the run's ``config.json`` (dataset, ``--limit``, ``--holdout-classes``, seed), so
    the figures equal those training wrote. Data that changed since training (checked
    against the recorded fingerprint) is refused unless ``changed_data``: those figures go
    to ``metrics_changed_data.json``, never over the training ``metrics.json``."""
    from keras_siamese.evaluation import evaluate
    from keras_siamese.run_lock import RunLock

    run_dir = Path(run_folder)
    config, recorded = read_config(run_dir)
    with RunLock(run_dir, "evaluating"):
        embedding = load_embedding(run_dir)  # checked before the data is loaded
        target = run_dir / (CHANGED_DATA_METRICS if changed_data else METRICS)
        data, sets = run_sets(config, recorded, None if changed_data else (
            "its metrics.json stays as it is; to score the model on the data as it is now, "
            f"pass --changed-data (writes {CHANGED_DATA_METRICS})"))
        metrics = evaluate(embedding, sets)
        if not changed_data:  # keep the training speed, the one figure evaluate cannot make
            metrics["seconds_per_epoch"] = _recorded_speed(run_dir)
        return write_metrics(target, metrics), target, data


def _recorded_speed(run_dir: Path) -> float | None:
    try:
        return read_metrics(run_dir / METRICS).get("seconds_per_epoch")
    except SiameseError:  # missing or damaged: it is being rewritten now
        return None


def decision_threshold(run_dir) -> tuple[float, bool]:
    """The distance at or below which the run calls two images the same class, and whether
    it is calibrated: ``calibration.json``'s threshold (chosen on held-out pairs), else the
    accuracy-optimal threshold of its training pairs in ``metrics.json``."""
    run_dir = Path(run_dir)
    calibrated = (run_dir / CALIBRATION).is_file()
    path = run_dir / (CALIBRATION if calibrated else METRICS)
    threshold = read_metrics(path).get("threshold")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) \
            or not math.isfinite(threshold):
        raise DataError(f"{path} holds no valid threshold ({threshold!r}): damaged; run "
                        "siamese-keras " + ("calibrate" if calibrated else "evaluate") +
                        f" {run_dir} again")
    return float(threshold), calibrated


def calibrate_run(run_folder, target, pairs_source: str | None = None) -> tuple[dict, list]:
    """Choose the run's threshold for ``target`` (:func:`calibration.parse_target`) on
    held-out pairs: the fixed test pairs of its trained classes, or pairs drawn the same
    way from the gallery ``pairs_source`` (:mod:`gallery`). Writes ``calibration.json``
    and ``calibration.png``; returns the result and the files written."""
    from keras_siamese import calibration
    from keras_siamese.evaluation import fixed_pairs
    from keras_siamese.metrics import pair_distances
    from keras_siamese.run_lock import RunLock

    run_dir = Path(run_folder)
    config, recorded = read_config(run_dir)
    with RunLock(run_dir, "calibrating"):
        embedding = load_embedding(run_dir)
        images, labels, described = _held_out_images(config, recorded, embedding,
                                                     pairs_source)
        pairs = fixed_pairs(labels)
        distances = pair_distances(models.embed_images(embedding, images), pairs.first,
                                   pairs.second)
        result = {**calibration.calibrate_distances(distances, pairs.same, target),
                  "pairs": f"{len(pairs.same)} {described}"}
        return result, calibration.write_calibration(run_dir, result, distances, pairs.same)


def _held_out_images(config: TrainConfig, recorded, embedding, pairs_source):
    """``(images, integer labels, description)`` of the pairs' images: the run's test
    images of its trained classes, or a gallery's."""
    if pairs_source is not None:
        from keras_siamese.gallery import read_gallery

        gallery = read_gallery(pairs_source, tuple(embedding.input_shape[1:]))
        labels = np.unique(gallery.classes, return_inverse=True)[1].reshape(-1)
        return gallery.images, labels, f"pairs drawn from {pairs_source}"
    seen = run_sets(config, recorded, "calibrating on it would not describe the model's "
                    "test data")[1].seen
    return seen.test_images, seen.test_labels, "fixed test pairs of the trained classes"


def run_sets(config: TrainConfig, recorded: dict | None, doing: str | None):
    """``(data, evaluation sets)`` of a finished run, its data checked to be the one it
    recorded (DataError ending in ``doing``) unless ``doing`` is None."""
    from keras_siamese.splits import evaluation_sets

    data = load_run_data(config)
    if doing is not None:
        check_data_unchanged(config.run_dir, recorded, fingerprint(data), doing)
    return data, evaluation_sets(data, config.holdout_classes, config.limit, config.seed)
