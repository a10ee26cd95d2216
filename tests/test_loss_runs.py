"""Each loss of issue 18 trains for real through the command line, with no option but the
loss, on a slice of MNIST (500 training images, one epoch), and leaves a run folder with
finite metrics whose embedding net ends in unit vectors.

The runs go through the command line's ``main`` in this process (the console script's
own entry point, without a TensorFlow start-up per run); one fresh process reloads every
run's ``model.keras`` after ``import keras_siamese``, as a user's would. One run
(``FULL``) also draws its frames, writes its projector and exports its SavedModel; the
others skip those to keep the module near a minute on two cores."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from helpers import call_main
from keras_siamese import models, run_folder

LOSSES = ["multi-similarity", "circle", "supcon", "proxy-anchor", "arcface", "cosface"]
FULL = "arcface"  # the class-proxy model: its SavedModel must hold the embedding net only
QUICK = ["--epochs", "1", "--limit", "500", "--dataset", "mnist"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every loss trained once: ``{loss: (exit code, run folder)}``."""
    root = tmp_path_factory.mktemp("loss_runs")
    done = {}
    for loss in LOSSES:
        extra = (["--frame-images", "200"] if loss == FULL else
                 ["--no-frames", "--no-projector", "--no-export"])
        code = call_main("train", "--loss", loss, *QUICK, *extra, "--output-dir", root / "out",
                     "--log-dir", root / "logs")
        done[loss] = code, root / "out" / f"{loss}_mnist"
    return done


@pytest.mark.parametrize("loss", LOSSES)
def test_trains_with_its_defaults_to_finite_metrics(runs, loss):
    code, run = runs[loss]
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == loss and config["normalize"] is True
    assert config["mining"] == run_folder.read_config(run)[0].model_variant.mining
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"]))
    assert math.isfinite(float(rows[0]["val_loss"]))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_images"] == 500
    for name in ("precision_at_1", "map_at_r", "r_precision", "roc_auc", "one_shot_10way"):
        assert math.isfinite(metrics[name]), name
    assert 0.1 < metrics["precision_at_1"] <= 1.0  # above chance after 4 steps


@pytest.mark.parametrize("loss", LOSSES)
def test_every_command_gets_the_unit_vectors_it_trained(runs, loss, mnist):
    embedding = run_folder.load_embedding(runs[loss][1])
    assert embedding.name == "embedding" and embedding.layers[-1].name == "unit_normalize"
    e = models.embed_images(embedding, mnist.x_test[:20])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)


def test_the_full_run_exports_the_embedding_net_with_its_frames_and_projector(runs, mnist):
    import tensorflow as tf

    code, run = runs[FULL]
    assert code == 0
    assert (run / "latent.gif").is_file() and (run / "frames").is_dir()
    assert (run.parent.parent / "logs" / f"{FULL}_mnist" / "projector").is_dir()
    serving = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    x = mnist.x_test[:8].astype(np.float32)
    (exported,) = serving(tf.constant(x)).values()
    expected = models.embed_images(run_folder.load_embedding(run), x)
    np.testing.assert_allclose(exported.numpy(), expected, rtol=1e-5, atol=1e-6)


RELOAD = """
import sys, numpy as np, keras
import keras_siamese  # registers the package's layers and losses
for path in sys.argv[1:]:
    model = keras.models.load_model(path)  # compiled, no custom_objects
    e = model.get_layer("embedding")(np.zeros((2, 28, 28, 1), np.float32)).numpy()
    print(type(model.loss).__name__, np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5))
"""


def test_model_files_reload_in_a_fresh_process(runs):
    paths = [runs[loss][1] / "model.keras" for loss in LOSSES]
    out = subprocess.run([sys.executable, "-c", RELOAD, *map(str, paths)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:len(LOSSES)] == [
        "MultiSimilarityLoss True", "Circle True", "SupConLoss True", "ProxyAnchorLoss True",
        "ArcFaceLoss True", "CosFaceLoss True"]
