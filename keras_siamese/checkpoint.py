"""Per-epoch checkpoints, resuming an interrupted run, and stopping on a non-finite loss.

After every epoch the whole model (weights, optimiser state with its step count, hence
the learning-rate schedule's position, and a cross-batch memory's entries, which are
weights of the model) is written atomically to ``checkpoints/epoch_NNN.keras`` and the
previous checkpoint removed. The epoch number in the file name is the only state besides
the run's ``config.json`` (and the collapse monitor's spread before training,
``checkpoints/collapse_monitor.json``, written once before the first epoch): the
training streams re-sample epoch ``e`` from the stateless seed ``(seed, e)``
(:mod:`keras_siamese.streams`), so a resumed run sees exactly the examples an
uninterrupted one would.

The checkpoint callback runs after every other callback, so a checkpoint for epoch ``e``
means that the records of epoch ``e`` (history row, frame, stored embeddings, projector
entry) are complete; records of a later, unfinished epoch are dropped on resume.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import zipfile
from pathlib import Path

import keras

from keras_siamese.errors import DataError, OutputError, SiameseError
from keras_siamese.outputs import atomic_path

CHECKPOINT_DIR = "checkpoints"
# For tests that stop a run between epochs, however fast or slow the machine: with this
# variable set to N, a run waits for a signal once epoch N's checkpoint is on disk.
HOLD_AFTER_EPOCH = "KERAS_SIAMESE_HOLD_AFTER_EPOCH"
_NAME = re.compile(r"epoch_(\d{3,})\.keras")
# Set by the command line's Ctrl-C / SIGTERM handler, whose KeyboardInterrupt can be lost:
# raised while Python runs a finaliser (a ``__del__``, a weakref callback, often during the
# garbage collection a checkpoint's save sets off), it is printed as "Exception ignored"
# and training would go on. The checkpoint callback raises it again at the next step.
STOP_REQUESTED = threading.Event()


class NonFiniteLossError(SiameseError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""

    def __init__(self, message: str, summary: str = ""):
        super().__init__(message)
        self.summary = summary or message  # what happened, without what was kept


def checkpoint_path(run_dir, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:03d}.keras"


def last_checkpoint(run_dir) -> tuple[int, Path] | None:
    """``(epoch, path)`` of the newest checkpoint in ``run_dir``, or None."""
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / CHECKPOINT_DIR).glob("epoch_*.keras")
             if (m := _NAME.fullmatch(p.name))]
    return max(found) if found else None


def load_checkpoint(path) -> keras.Model:
    """The compiled model with its optimiser state, as saved after its epoch."""
    return load_keras_file(path, compile=True, advice="train again with --overwrite")


def load_keras_file(path, compile: bool, advice: str) -> keras.Model:
    """``keras.saving.load_model`` with one clear line for a damaged file: Keras reports
    a truncated archive as "File not found" and a bit-flipped one with a zip traceback."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"cannot load {path}: not a complete .keras archive (truncated or "
                        f"damaged); {advice}")
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as error:  # zip, h5py, JSON and Keras errors all mean a damaged file
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(f"cannot load {path}: damaged ({type(error).__name__}: "
                        f"{first[:200]}); {advice}") from error


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the model after every finished epoch; keep only the newest checkpoint."""

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = Path(run_dir)

    def on_train_batch_end(self, batch, logs=None):
        if STOP_REQUESTED.is_set():
            raise KeyboardInterrupt

    def on_epoch_end(self, epoch, logs=None):
        path = checkpoint_path(self.run_dir, epoch + 1)
        try:
            path.parent.mkdir(exist_ok=True)
            with atomic_path(path) as tmp:
                self.model.save(tmp)
        except OSError as error:  # a full disk, most often; the last checkpoint is intact
            raise OutputError(f"cannot write the checkpoint {path}: "
                              f"{error.strerror or error}") from error
        for older in path.parent.glob("epoch_*.keras"):
            if older != path:
                older.unlink()
        if os.environ.get(HOLD_AFTER_EPOCH) == str(epoch + 1):
            while not STOP_REQUESTED.is_set():  # until Ctrl-C or SIGTERM
                time.sleep(0.05)
            raise KeyboardInterrupt


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise :class:`NonFiniteLossError` at the first batch whose running loss is NaN or
    infinite, before that epoch's checkpoint or any final output is written."""

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            kept = last_checkpoint(self.run_dir)
            where = (f"the last good checkpoint (epoch {kept[0]}) is kept: {kept[1]}"
                     if kept else "no epoch had finished, so there is no checkpoint")
            summary = f"training loss became {loss} at epoch {self.epoch + 1}, step {batch + 1}"
            raise NonFiniteLossError(f"{summary}; {where}; try a smaller --learning-rate",
                                     summary)
