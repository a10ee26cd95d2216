"""Checkpoints and resume: a run killed with SIGKILL continues to the same final weights;
a non-finite loss stops training and keeps the last good checkpoint."""

import csv
import json
import signal

import numpy as np
import pytest

from helpers import error_lines, run_cli, stop_after_first_checkpoint

EPOCHS = 4
ARGS = ["--loss", "contrastive", "--epochs", str(EPOCHS), "--limit", "2000", "--batch-size",
        "64", "--seed", "3", "--projector-every", "1", "--frame-images", "200"]


def weights(run_dir):
    import keras

    import keras_siamese  # noqa: F401

    return [w.numpy() for w in keras.models.load_model(run_dir / "model.keras").weights]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run and a killed one, same settings."""
    tmp_path = tmp_path_factory.mktemp("resume")
    result = run_cli("train", *ARGS, "--output-dir", tmp_path / "out", "--log-dir",
                     tmp_path / "logs", "--run-name", "full")
    assert result.returncode == 0, result.stderr[-3000:]
    cut, code, _ = stop_after_first_checkpoint(tmp_path, signal.SIGKILL, ARGS)
    assert code == -signal.SIGKILL
    return tmp_path / "out" / "full", cut


def test_killed_run_resumes_to_the_uninterrupted_result(runs, tmp_path):
    full, cut = runs
    assert not (cut / "metrics.json").exists()
    (saved,) = (cut / "checkpoints").glob("epoch_*.keras")
    assert int(saved.stem[-3:]) < EPOCHS

    # A broken copy first: a truncated checkpoint is a clear error, not a traceback.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(cut, broken)
    (checkpoint,) = (broken / "checkpoints").glob("epoch_*.keras")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    result = run_cli("train", "--resume", broken)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert line.startswith(f"siamese-keras: error: cannot load {checkpoint}: not a complete "
                           ".keras archive")

    result = run_cli("train", "--resume", cut)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ["model.keras", "metrics.json", "embedding.png", "latent.gif",
                 "saved_model/saved_model.pb"]:
        assert (cut / name).exists(), name
    assert not (cut / "checkpoints").exists()  # finished: model.keras is the final state

    # Same seed, same examples per epoch, optimiser state restored: bit-identical on CPU.
    for a, b in zip(weights(full), weights(cut)):
        np.testing.assert_array_equal(a, b)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (full, cut)]
    for m in metrics:
        m.pop("seconds_per_epoch")
    assert metrics[0] == metrics[1]

    rows = list(csv.DictReader(open(cut / "history.csv")))
    full_rows = list(csv.DictReader(open(full / "history.csv")))
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    assert [r["loss"] for r in rows] == [r["loss"] for r in full_rows]
    assert rows == full_rows  # every column: validation and the collapse monitor's too
    with np.load(cut / "latent_embeddings.npz") as stored, \
            np.load(full / "latent_embeddings.npz") as reference:
        assert stored["epochs"].tolist() == list(range(EPOCHS + 1))
        np.testing.assert_array_equal(stored["embeddings"], reference["embeddings"])
    from PIL import Image

    assert Image.open(cut / "latent.gif").n_frames == EPOCHS + 1
    projector = (cut.parents[1] / "logs" / "cut" / "projector" / "projector_config.pbtxt")
    listed = projector.read_text()
    assert all(f'tensor_name: "epoch_{e:03d}"' in listed for e in range(1, EPOCHS + 1))


def test_resume_refuses_finished_runs_and_new_settings(runs):
    full, _ = runs
    result = run_cli("train", "--resume", full)
    assert result.returncode == 2
    assert error_lines(result) == [f"siamese-keras: error: {full} has already finished: "
                                   "nothing to resume"]
    result = run_cli("train", "--resume", full, "--epochs", "20", "--lr", "0.1")
    assert result.returncode == 2
    assert error_lines(result) == ["siamese-keras: error: --resume continues a run with its "
                                   "saved settings; drop --epochs, --learning-rate"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    import keras
    import tensorflow as tf

    from keras_siamese.checkpoint import (EpochCheckpoint, NonFiniteLossError,
                                          StopOnNonFiniteLoss, last_checkpoint)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((6, 3), np.float32)
    x[5] = np.nan  # epoch 1: batches 1-2 fine; epoch 2: batch 1 fine, batch 2 NaN
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros((6, 1), np.float32))).batch(1)
    with pytest.raises(NonFiniteLossError) as error:
        model.fit(data, epochs=3, steps_per_epoch=4, verbose=0, shuffle=False,
                  callbacks=[StopOnNonFiniteLoss(tmp_path), EpochCheckpoint(tmp_path)])
    assert "training loss became nan at epoch 2, step 2" in str(error.value)
    assert "last good checkpoint (epoch 1) is kept" in str(error.value)
    epoch, path = last_checkpoint(tmp_path)
    assert epoch == 1
    restored = keras.models.load_model(path)
    assert all(np.isfinite(w.numpy()).all() for w in restored.weights)


def test_a_lost_ctrl_c_still_stops_training_at_the_next_step(tmp_path):
    """Ctrl-C's KeyboardInterrupt is lost when it is raised inside a finaliser (Python
    prints "Exception ignored"); the stop request it leaves behind ends the run anyway."""
    import keras
    import tensorflow as tf

    from keras_siamese.checkpoint import STOP_REQUESTED, EpochCheckpoint

    class LoseTheInterrupt(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps == 2:
                STOP_REQUESTED.set()  # what the signal handler does before raising

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensor_slices((np.ones((8, 3), np.float32),
                                               np.zeros((8, 1), np.float32))).batch(1)
    counter = LoseTheInterrupt()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.fit(data, epochs=2, verbose=0, callbacks=[counter, EpochCheckpoint(tmp_path)])
    finally:
        STOP_REQUESTED.clear()
    assert counter.steps == 2


def test_a_signal_inside_a_finaliser_is_delivered_again_outside_it():
    """The handler sees the frame it interrupts: inside a ``__del__`` (where the
    KeyboardInterrupt of the test above would be lost) it sends the signal again later."""
    import sys

    from keras_siamese.cli.main import inside_finaliser

    seen = []

    class Probe:
        def __del__(self):
            seen.append(inside_finaliser(sys._getframe()))

    def nested():
        return inside_finaliser(sys._getframe())

    Probe()  # collected at once: its __del__ runs here
    assert seen == [True] and nested() is False


def test_an_exploding_run_stops_with_one_clear_line(tmp_path):
    result = run_cli("train", "--learning-rate", "1e30", "--limit", "600", "--epochs", "2",
                     "--output-dir", tmp_path / "out", "--log-dir", tmp_path / "logs")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert line.startswith("siamese-keras: error: training loss became nan at epoch 1")
    assert "try a smaller --learning-rate" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "contrastive_mnist" / "model.keras").exists()


def test_ctrl_c_stops_with_the_finished_epochs_saved(tmp_path):
    run, code, stderr = stop_after_first_checkpoint(tmp_path, signal.SIGINT, ARGS,
                                                    name="stopped")
    assert code == 130, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("siamese-keras:")]
    assert len(lines) == 1 and "interrupted after epoch 1 of 4" in lines[0], stderr[-2000:]
    assert lines[0].endswith(f"continue with: siamese-keras train --resume {run}")
    assert any((run / "checkpoints").glob("epoch_*.keras"))
    assert not (run / "metrics.json").exists()


def test_resume_of_a_folder_that_is_no_run(tmp_path):
    result = run_cli("train", "--resume", tmp_path)
    assert result.returncode == 2
    assert error_lines(result) == [f"siamese-keras: error: {tmp_path} is not a run folder "
                                   "(no config.json)"]
