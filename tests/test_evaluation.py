"""Held-out classes, `evaluate` on a finished run, and the `reproduce` grid, on real MNIST."""

import json

import numpy as np
import pytest

from helpers import error_lines, run_cli
from keras_siamese import splits
from keras_siamese.errors import ConfigError

HOLDOUT = [7, 8, 9]
METRICS = {"precision_at_1", "knn_accuracy", "r_precision", "map_at_r", "roc_auc",
           "verification_accuracy", "threshold"}


def test_holdout_classes_leave_training_and_form_the_unseen_split(mnist):
    sets = splits.evaluation_sets(mnist, HOLDOUT, limit=700, seed=3)
    assert set(np.unique(sets.seen.train_labels)) == set(range(7))
    assert len(sets.seen.train_labels) == 700  # the limit applies to the trained classes
    assert set(np.unique(sets.seen.test_labels)) == set(range(7))
    assert set(np.unique(sets.unseen.train_labels)) == set(HOLDOUT)
    assert set(np.unique(sets.unseen.test_labels)) == set(HOLDOUT)
    assert len(sets.seen.test_labels) + len(sets.unseen.test_labels) == len(mnist.y_test)
    assert len(sets.unseen.train_labels) == np.isin(mnist.y_train, HOLDOUT).sum()
    assert splits.evaluation_sets(mnist).unseen is None


@pytest.mark.parametrize("classes, message", [([10], "classes are 0 to 9"),
                                              ([-1], "classes are 0 to 9"),
                                              (list(range(9)), "keep at least 2")])
def test_impossible_holdouts_are_config_errors(mnist, classes, message):
    with pytest.raises(ConfigError, match=message):
        splits.check_holdout(mnist, classes)


@pytest.mark.parametrize("value", ["7,x", "10", "0,1,2,3,4,5,6,7,8"])
def test_bad_holdout_option_is_one_line_usage_error(tmp_path, value):
    result = run_cli("train", "--holdout-classes", value, "--output-dir", tmp_path / "out",
                     "--log-dir", tmp_path / "logs", "--epochs", "1", "--limit", "100")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "--holdout-classes" in error_lines(result)[0]
    assert not (tmp_path / "out" / "contrastive_mnist").exists()  # checked before any run folder


@pytest.fixture(scope="module")
def holdout_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout")
    result = run_cli("train", "--loss", "contrastive", "--epochs", 2, "--limit", 700,
                     "--holdout-classes", "7,8,9", "--frame-images", 100, "--no-projector",
                     "--output-dir", root / "out", "--log-dir", root / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out" / "contrastive_mnist", result


def test_training_reports_trained_and_held_out_classes(holdout_run, mnist):
    run_dir, result = holdout_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["holdout_classes"] == HOLDOUT
    assert metrics["train_images"] == 700
    assert metrics["test_images"] == (~np.isin(mnist.y_test, HOLDOUT)).sum()
    assert METRICS | {"one_shot_5way"} <= set(metrics)
    assert metrics["seconds_per_epoch"] > 0
    assert "one_shot_10way" not in metrics  # 7 trained classes: no 10-way episode exists
    unseen = metrics["unseen"]
    assert METRICS | {"one_shot_3way"} <= set(unseen)
    for block in (metrics, unseen):
        assert all(0.0 <= block[name] <= 1.0 for name in METRICS - {"threshold"})
    # Never trained on, yet far above chance (1/3): the embedding generalises.
    assert unseen["precision_at_1"] > 0.5 and unseen["one_shot_3way"] > 0.45
    assert "held-out classes" in result.stdout and "3-way one-shot" in result.stdout


def test_evaluate_reproduces_the_metrics_training_wrote(holdout_run):
    run_dir, _ = holdout_run
    written = json.loads((run_dir / "metrics.json").read_text())
    result = run_cli("evaluate", run_dir, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed == written  # the same figures, bit for bit, from a fresh process
    assert json.loads((run_dir / "metrics.json").read_text()) == written
    table = run_cli("evaluate", run_dir)
    assert table.returncode == 0
    p_at_1 = next(line for line in table.stdout.splitlines() if line.startswith("Precision@1"))
    assert p_at_1.split()[-2:] == [f"{written['precision_at_1']:.4f}",
                                   f"{written['unseen']['precision_at_1']:.4f}"]
    assert "7, 8, 9" in table.stdout


def test_evaluate_without_a_finished_run_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = run_cli("evaluate", tmp_path)
    assert result.returncode == 2
    assert error_lines(result) == [f"siamese-keras: error: {tmp_path / 'model.keras'} not "
                                   "found: give the folder of a finished training run"]


def test_reproduce_writes_the_results_page_and_keeps_finished_runs(tmp_path):
    args = ["reproduce", "--losses", "softmax,triplet", "--datasets", "mnist", "--epochs", 1,
            "--limit", 400, "--output-dir", tmp_path / "grid", "--log-dir", tmp_path / "logs"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[1/2] softmax_mnist: training 1 epochs" in first.stdout
    assert "[2/2] triplet_mnist: training 1 epochs, about" in first.stdout  # time left
    results = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert [(r["dataset"], r["loss"]) for r in results["rows"]] == [("mnist", "softmax"),
                                                                    ("mnist", "triplet")]
    page = (tmp_path / "grid" / "results.md").read_text()
    assert results["command"] in page and "--epochs 1 --seed 0 --limit 400" in page
    for row in results["rows"]:
        metrics = json.loads((tmp_path / "grid" / f"{row['loss']}_mnist" / "metrics.json")
                             .read_text())
        assert row["precision_at_1"] == metrics["precision_at_1"]
        assert f"| mnist | {row['loss']} | {metrics['precision_at_1']:.3f} |" in page
    assert (tmp_path / "grid" / "results.png").read_bytes()[:4] == b"\x89PNG"

    again = run_cli(*args)  # a finished grid is not retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[1/2] softmax_mnist: kept" in again.stdout and "training" not in again.stdout
    assert json.loads((tmp_path / "grid" / "results.json").read_text()) == results


def test_reproduce_rejects_unknown_losses(tmp_path):
    result = run_cli("reproduce", "--losses", "softmax,hinge", "--output-dir", tmp_path / "g")
    assert result.returncode == 2 and "hinge" in error_lines(result)[0]
    assert not (tmp_path / "g").exists()
