"""Real short training runs through the command line, on real MNIST / Fashion-MNIST slices."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from helpers import run_cli

QUICK = ["--epochs", "1", "--limit", "500", "--batch-size", "64"]


def train(tmp_path, *args):
    result = run_cli("train", "--output-dir", tmp_path / "out", "--log-dir", tmp_path / "logs",
                     *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


LOAD = """
import sys, numpy as np, keras
import keras_siamese
model = keras.models.load_model(sys.argv[1])
emb = model.get_layer("embedding")
x = np.load(sys.argv[2])
np.save(sys.argv[3], emb.predict(x, verbose=0))
"""


@pytest.mark.parametrize("loss", ["softmax", "contrastive", "bce", "triplet"])
def test_every_loss_trains_and_leaves_a_complete_run_folder(tmp_path, loss, mnist):
    result = train(tmp_path, "--loss", loss, "--dataset", "mnist", *QUICK)
    run = tmp_path / "out" / f"{loss}_mnist"
    assert str(run) in result.stdout
    for name in ["config.json", "history.csv", "model.keras", "embedding.png", "metrics.json",
                 "saved_model/saved_model.pb"]:
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == loss and config["limit"] == 500
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 1 and "loss" in rows[0] and "val_loss" in rows[0]
    assert np.isfinite(float(rows[0]["loss"]))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_images"] == 500 and metrics["test_images"] == 10000
    assert 0.2 < metrics["precision_at_1"] <= 1.0  # one tiny epoch: far above chance (0.1)
    assert (tmp_path / "logs" / f"{loss}_mnist" / "train").is_dir()  # TensorBoard scalars
    assert (run / "embedding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # model.keras reloads in a fresh process without custom_objects.
    np.save(tmp_path / "x.npy", mnist.x_test[:16].astype(np.float32))
    out = subprocess.run([sys.executable, "-c", LOAD, run / "model.keras", tmp_path / "x.npy",
                          tmp_path / "e.npy"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert np.load(tmp_path / "e.npy").shape == (16, 2)


def test_fashion_mnist_trains(tmp_path):
    train(tmp_path, "--loss", "triplet", "--dataset", "fashion_mnist", *QUICK)
    metrics = json.loads((tmp_path / "out" / "triplet_fashion_mnist" / "metrics.json").read_text())
    assert metrics["precision_at_1"] > 0.2


def test_same_seed_same_weights_and_overwrite(tmp_path):
    import keras

    import keras_siamese  # noqa: F401

    args = ["--loss", "contrastive", "--epochs", "2", "--limit", "300", "--seed", "7"]
    train(tmp_path, *args, "--run-name", "a")
    train(tmp_path, *args, "--run-name", "b")
    a = keras.models.load_model(tmp_path / "out" / "a" / "model.keras")
    b = keras.models.load_model(tmp_path / "out" / "b" / "model.keras")
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())  # bit-identical on CPU
    # --overwrite replaces the run with a fresh one, here with another seed and without
    # the first one's frames, projector and export, none of which may be left behind.
    train(tmp_path, "--loss", "contrastive", "--epochs", "1", "--limit", "300", "--seed", "8",
          "--run-name", "a", "--overwrite", "--no-frames", "--no-projector", "--no-export")
    c = keras.models.load_model(tmp_path / "out" / "a" / "model.keras")
    assert json.loads((tmp_path / "out" / "a" / "config.json").read_text())["seed"] == 8
    assert not any((tmp_path / "out" / "a" / name).exists()
                   for name in ("saved_model", "frames", "latent.gif"))
    assert not (tmp_path / "logs" / "a" / "projector").exists()
    assert any(not np.array_equal(wa.numpy(), wc.numpy()) for wa, wc in zip(a.weights, c.weights))


@pytest.mark.parametrize("variant", ["triplet-semi-hard", "contrastive-hard-negative"])
def test_online_mining_trains_on_pk_batches(tmp_path, variant):
    loss, _, mining = variant.partition("-")
    train(tmp_path, "--loss", loss, "--mining", mining, "--epochs", "1", "--limit", "1000",
          "--classes-per-batch", "5", "--images-per-class", "8", "--no-frames", "--no-projector")
    run = tmp_path / "out" / f"{variant}_mnist"
    config = json.loads((run / "config.json").read_text())
    assert config["mining"] == mining and config["classes_per_batch"] == 5
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert np.isfinite(float(rows[0]["loss"])) and np.isfinite(float(rows[0]["val_loss"]))
    assert json.loads((run / "metrics.json").read_text())["precision_at_1"] > 0.2


def test_batch_hard_trains_with_small_k_and_warns_where_it_collapsed(tmp_path):
    """Hermans et al.'s setting (K = 4 images per class) with 64-D embeddings learns; the
    2-D default, which collapses to one point, gets a warning naming that setting."""
    result = train(tmp_path, "--loss", "triplet", "--mining", "batch-hard", "--embedding-dim",
                   "64", "--classes-per-batch", "10", "--images-per-class", "4", "--epochs",
                   "3", "--limit", "6000", "--no-frames", "--no-projector", "--no-export")
    assert "collapsed" not in result.stderr
    metrics = json.loads((tmp_path / "out" / "triplet-batch-hard_mnist" / "metrics.json")
                         .read_text())
    assert metrics["precision_at_1"] > 0.9  # 0.980 measured; collapsed runs score ~0.1
    warned = run_cli("train", "--loss", "triplet", "--mining", "batch-hard", "--epochs", "1",
                     "--limit", "500", "--output-dir", tmp_path / "out2", "--no-frames",
                     "--no-projector", "--no-export", "--log-dir", tmp_path / "logs2")
    assert warned.returncode == 0
    assert "--embedding-dim 64 --classes-per-batch 10 --images-per-class 4" in warned.stderr


@pytest.mark.parametrize("schedule,rates", [
    ("cosine", [1e-3, 1e-3 * (1 + math.cos(math.pi * 80 / 200)) / 2, 0.0]),
    ("constant", [1e-3, 1e-3, 1e-3]),
    # The reference's StepLR(8, 0.1): epochs 1-8 at 1e-3, 9-16 at 1e-4, 17- at 1e-5.
    ("step", [1e-3, 1e-4, 1e-5]),
])
def test_learning_rate_schedules(schedule, rates):
    """The rate at the first step, the first step of epoch 9 (index 80 with 10 steps per
    epoch) and the first step of epoch 17 (index 160; the run's end for cosine)."""
    from keras_siamese.config import TrainConfig
    from keras_siamese.experiment import learning_rate_schedule

    rate = learning_rate_schedule(TrainConfig(epochs=20, lr_schedule=schedule), 10)
    steps = [0, 80, 200] if schedule == "cosine" else [0, 80, 160]
    got = [float(rate(step)) if callable(rate) else rate for step in steps]
    assert got == pytest.approx(rates, rel=1e-5, abs=1e-9)
    if schedule == "step":  # the last step of epoch 8 still at the first rate
        assert float(rate(79)) == pytest.approx(1e-3)
        assert learning_rate_schedule(TrainConfig(epochs=5, lr_schedule="step"), 10) == 1e-3
