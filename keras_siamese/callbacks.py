"""Keras callbacks that write a run's records as training goes."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import keras

from keras_siamese.outputs import write_text


class HistoryCSV(keras.callbacks.Callback):
    """Rewrite ``history.csv`` (one row per epoch, every logged value) after each epoch.

    Unlike ``keras.callbacks.CSVLogger`` the file is replaced atomically, so it is always
    complete up to the last finished epoch.
    """

    def __init__(self, path, resume_after: int = 0):
        """``resume_after``: keep the rows of epochs up to this one from an existing file."""
        super().__init__()
        self.path = Path(path)
        self.rows = []
        if resume_after and self.path.is_file():
            with open(self.path, newline="") as stream:
                self.rows = [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
                             for row in csv.DictReader(stream)
                             if int(row["epoch"]) <= resume_after]

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buffer.getvalue())
