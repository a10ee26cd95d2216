"""The collapse monitor: its statistics against brute force, its rule (two epochs in a row,
across a resume), and real MNIST runs: batch-hard in its documented collapsing setting is
stopped with one line and a kept run folder, Hermans et al.'s setting trains on."""

import csv
import dataclasses
import itertools
import json
import math

import keras
import numpy as np
import pytest

from helpers import assert_refused, run_cli
from keras_siamese.callbacks import (COLLAPSE_FRACTION, CollapseMonitor, HistoryCSV,
                                     embedding_statistics)

COLUMNS = ["val_positive_distance", "val_negative_distance", "val_distance_gap", "val_spread",
           "val_spread_ratio"]


def test_statistics_match_brute_force():
    rng = np.random.default_rng(0)
    e, labels = rng.normal(size=(30, 5)), rng.integers(0, 4, 30)
    positive, negative = [], []
    for i, j in itertools.combinations(range(30), 2):
        (positive if labels[i] == labels[j] else negative).append(np.linalg.norm(e[i] - e[j]))
    got = embedding_statistics(e.astype(np.float32), labels)
    assert got["positive_distance"] == pytest.approx(np.mean(positive), rel=1e-6)
    assert got["negative_distance"] == pytest.approx(np.mean(negative), rel=1e-6)
    assert got["distance_gap"] == pytest.approx(np.mean(negative) - np.mean(positive), rel=1e-5)
    centroid = e.mean(axis=0)
    spread = math.sqrt(np.mean([np.sum((x - centroid) ** 2) for x in e]))
    assert got["spread"] == pytest.approx(spread, rel=1e-6)
    one_point = embedding_statistics(np.ones((4, 3)), [0, 0, 1, 1])
    assert one_point["spread"] == 0.0 and one_point["distance_gap"] == 0.0
    assert math.isnan(embedding_statistics(e[:3], [0, 1, 2])["positive_distance"])


def shrinking_net():
    keras.utils.set_random_seed(0)
    image = keras.Input((2, 2, 1))
    embedding = keras.layers.Dense(2)(keras.layers.Flatten()(image))
    return keras.Model(image, embedding, name="embedding")


def shrink(net, factor):
    net.set_weights([w * factor for w in net.get_weights()])


def run_epochs(monitor, epochs, history=None):
    """on_epoch_end for ``epochs``, through a HistoryCSV as in a run; the logs of each."""
    logged = []
    for epoch in epochs:
        logs = {"loss": 1.0}
        monitor.on_epoch_end(epoch, logs)
        if history is not None:
            history.on_epoch_end(epoch, logs)
        logged.append(logs)
    return logged


def test_two_collapsed_epochs_in_a_row_stop_training_also_after_a_resume(tmp_path, caplog):
    net = shrinking_net()
    net.stop_training = False  # as fit sets it
    images = np.random.default_rng(1).normal(size=(40, 2, 2, 1)).astype(np.float32)
    labels = np.arange(40) % 4

    def monitor(resume_after=0, stop=True):
        found = CollapseMonitor(net, images, labels, tmp_path, "HINT", stop, resume_after,
                                tmp_path / "history.csv")
        found.set_model(net)
        found.on_train_begin()
        return found

    first = monitor()
    spread = json.loads((tmp_path / "checkpoints" / "collapse_monitor.json").read_text())
    assert spread["spread_before_training"] == pytest.approx(
        embedding_statistics(net(images).numpy(), labels)["spread"], rel=1e-6)
    history = HistoryCSV(tmp_path / "history.csv")
    (logs,) = run_epochs(first, [0], history)  # unchanged: ratio 1
    assert set(COLUMNS) <= set(logs) and logs["val_spread_ratio"] == pytest.approx(1.0)
    shrink(net, 0.01)
    run_epochs(first, [1], history)  # one collapsed epoch (ratio 0.01): not yet
    assert first.collapse is None and not net.stop_training
    weights = net.get_weights()

    # Stopped here and resumed (epochs 1-2 in history.csv): the next collapsed epoch stops.
    resumed = monitor(resume_after=2)
    run_epochs(resumed, [2])
    assert net.stop_training
    message = str(resumed.collapse)
    assert message.startswith("the embeddings collapsed: their spread fell to 1.0% and 1.0% "
                              "of its value before training in epochs 2 and 3, so training "
                              "stopped") and message.endswith("; HINT")
    assert resumed.collapse.epoch == 3

    # The uninterrupted run stops at the same epoch.
    net.stop_training = False
    net.set_weights(weights)
    run_epochs(first, [2])
    assert str(first.collapse) == message and net.stop_training

    # --no-stop-on-collapse: a warning, training goes on; a recovery resets the count.
    net.stop_training = False
    quiet = monitor(resume_after=2, stop=False)
    run_epochs(quiet, [2])
    assert quiet.collapse is None and not net.stop_training
    assert "--no-stop-on-collapse: training on" in caplog.text
    shrink(net, 100.0)
    again = monitor(resume_after=2)
    run_epochs(again, [2])
    shrink(net, 0.01)
    run_epochs(again, [3])
    assert again.collapse is None  # epochs 2 (collapsed), 3 (recovered), 4 (collapsed)


# --- real runs --------------------------------------------------------------------------

QUIET = ["--no-projector", "--no-export", "--frame-images", "200"]


def history(run):
    return list(csv.DictReader(open(run / "history.csv")))


def test_documented_batch_hard_collapse_is_stopped_with_one_line(tmp_path):
    """Batch-hard with the defaults (2-D, 8 x 16 batches) on 6,000 MNIST images: the spread
    of the test embeddings falls to 6.7 %, 3.7 %, 3.0 % of its start in epochs 1-3."""
    result = run_cli("train", "--loss", "triplet", "--mining", "batch-hard", "--epochs", "6",
                     "--limit", "6000", *QUIET, "--output-dir", tmp_path / "out",
                     "--log-dir", tmp_path / "logs")
    run = tmp_path / "out" / "triplet-batch-hard_mnist"
    line = assert_refused(result, 1, "the embeddings collapsed", "in epochs 2 and 3",
                          "--embedding-dim 64 --classes-per-batch 10 --images-per-class 4",
                          f"{run} keeps config.json, history.csv, the latent frames and the "
                          "epoch 3 checkpoint (no model.keras): train again with --overwrite")
    assert "Traceback" not in result.stderr, line
    rows = history(run)
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    ratios = [float(row["val_spread_ratio"]) for row in rows]
    assert ratios[0] > COLLAPSE_FRACTION > max(ratios[1:]), ratios
    for row in rows:
        assert float(row["val_distance_gap"]) == pytest.approx(
            float(row["val_negative_distance"]) - float(row["val_positive_distance"]))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "collapse_monitor.json", "epoch_003.keras"]
    assert (run / "config.json").is_file() and (run / "latent.gif").is_file()
    assert not (run / "model.keras").exists() and not (run / "metrics.json").exists()
    assert scalars(tmp_path / "logs" / "triplet-batch-hard_mnist" / "validation",
                   "epoch_spread_ratio") == pytest.approx(ratios, rel=1e-6)


def scalars(folder, tag):
    """The values TensorBoard shows for ``tag`` in an events folder, by step."""
    import tensorflow as tf

    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = float(tf.make_ndarray(value.tensor))
    return [found[step] for step in sorted(found)]


def test_a_healthy_batch_hard_run_is_not_stopped(tmp_path):
    """Hermans et al.'s setting: the spread dips after epoch 1 (about 20 % of its start),
    then grows; the run finishes."""
    result = run_cli("train", "--loss", "triplet", "--mining", "batch-hard", "--embedding-dim",
                     "64", "--classes-per-batch", "10", "--images-per-class", "4", "--epochs",
                     "3", "--limit", "2000", *QUIET, "--no-frames", "--output-dir",
                     tmp_path / "out", "--log-dir", tmp_path / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "collapsed" not in result.stderr
    run = tmp_path / "out" / "triplet-batch-hard_mnist"
    rows = history(run)
    assert len(rows) == 3 and set(COLUMNS) <= set(rows[0])
    assert min(float(row["val_spread_ratio"]) for row in rows) > 2 * COLLAPSE_FRACTION
    assert (run / "model.keras").is_file() and not (run / "checkpoints").exists()


def test_a_grid_keeps_runs_finished_before_it_switched_the_stop_off(tmp_path):
    """A finished run never stopped for collapse, so ``reproduce`` (which trains on
    through a collapse) reuses one trained with the stop on."""
    from keras_siamese import reproduce, run_folder

    (config,) = reproduce.grid_configs(["contrastive"], ["mnist"], output_dir=str(tmp_path))
    assert not config.stop_on_collapse
    config.run_dir.mkdir()
    run_folder.write_config(config.run_dir, dataclasses.replace(config, stop_on_collapse=True),
                            {})
    run_folder.write_metrics(config.run_dir / "metrics.json", {"precision_at_1": 0.5})
    assert run_folder.finished_metrics(config) == {"precision_at_1": 0.5}
    assert run_folder.finished_metrics(dataclasses.replace(config, margin=2.0)) is None
