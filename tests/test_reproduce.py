"""The `reproduce` grid: a run in it equals the same run alone, and seeds give intervals.

Issue 20: a reader must get the grid's numbers from the printed command, and differences
between losses are shown with their spread over seeds (Student's t 95 % intervals).
"""

import dataclasses
import doctest
import json
import math

import keras
import numpy as np
import pytest
from helpers import run_cli, run_main

from keras_siamese import intervals, reproduce
from keras_siamese.errors import ConfigError
from keras_siamese.intervals import Interval, student_t_interval, t_quantile_975
from keras_siamese.plots import new_figure, save_figure
from keras_siamese.variants import VARIANTS

TIMING = {"seconds_per_epoch"}  # differs between any two runs; not a result


# ---- the statistics, against values worked out by hand ------------------------------------

def test_student_t_interval_matches_hand_computed_values():
    # n = 3: s = 0.005, t(0.975, 2) = 4.302653; half-width = 4.302653 * 0.005 / sqrt(3).
    three = student_t_interval([0.98, 0.99, 0.985])
    assert three.mean == pytest.approx(0.985)
    assert three.half_width == pytest.approx(0.0124206886, abs=1e-9)
    assert (three.low, three.high) == pytest.approx((0.9725793114, 0.9974206886), abs=1e-9)
    assert three.n == 3 and three.values == (0.98, 0.99, 0.985)
    # n = 5: s = sqrt(2.5), t(0.975, 4) = 2.776445; half-width = 2.776445 * sqrt(2.5 / 5).
    five = student_t_interval([1, 2, 3, 4, 5])
    assert (five.mean, five.half_width) == pytest.approx((3.0, 1.9632431), abs=1e-6)
    # n = 2: s = 0.1 * sqrt(2), t(0.975, 1) = 12.706205: wide, and not clipped to [0, 1].
    two = student_t_interval([0.5, 0.7])
    assert (two.low, two.high) == pytest.approx((0.6 - 1.2706205, 0.6 + 1.2706205))
    # Equal values: an interval of width 0; one value: none at all.
    assert student_t_interval([0.9, 0.9]).half_width == 0.0
    one = student_t_interval([0.97])
    assert (one.mean, one.low, one.high, one.half_width) == (0.97, None, None, None)
    assert one.text() == "0.970" and three.text() == "0.985 ± 0.012"
    with pytest.raises(ValueError):
        student_t_interval([])


def test_t_quantiles_and_overlaps():
    # Published t(0.975, df): the table, and the series beyond df = 30.
    assert [t_quantile_975(df) for df in (1, 2, 9, 30)] == [12.706205, 4.302653, 2.262157,
                                                            2.042272]
    for df, exact in ((31, 2.039513), (40, 2.021075), (120, 1.979930), (10**6, 1.959966)):
        assert t_quantile_975(df) == pytest.approx(exact, abs=2e-6)
    with pytest.raises(ValueError):
        t_quantile_975(0)
    a, b = Interval(0.5, 0.0, 1.0, (0, 1)), Interval(1.5, 1.0, 2.0, (1, 2))
    assert a.overlaps(b) and b.overlaps(a)  # touching counts
    assert not a.overlaps(Interval(1.55, 1.1, 2.0, (1.1, 2.0)))
    assert not a.overlaps(Interval(0.5, None, None, (0.5,)))  # one seed: nothing to compare
    assert a.to_json() == {"mean": 0.5, "ci_low": 0.0, "ci_high": 1.0, "values": [0, 1],
                           "n": 2, "method": "student-t 95%"}
    result = doctest.testmod(intervals)
    assert result.attempted > 0 and result.failed == 0


# ---- the results page, from made-up runs (no training) -------------------------------------

def _rows(tmp_path, p_at_1: dict) -> list[dict]:
    """Runs as reproduce records them: per loss its P@1 per seed, MAP@R = P@1 - 0.1."""
    rows = []
    for loss, values in p_at_1.items():
        for seed, value in enumerate(values):
            run_dir = tmp_path / f"{loss}_mnist_seed{seed}"
            run_dir.mkdir()
            figure = new_figure((2, 2), 20)
            figure.subplots().plot([0, 1])
            save_figure(figure, run_dir / "embedding.png")
            rows.append({"loss": loss, "dataset": "mnist", "seed": seed, "run_dir": str(run_dir),
                         "precision_at_1": value, "map_at_r": value - 0.1,
                         "one_shot_10way": None, "seconds_per_epoch": 2.0 + seed,
                         "holdout_classes": [], "test_images": 10000})
    return rows


def test_cells_intervals_overlap_notes_and_figure(tmp_path, monkeypatch):
    rows = _rows(tmp_path, {"softmax": [0.90, 0.92, 0.91], "contrastive": [0.91, 0.93, 0.92],
                            "triplet": [0.98, 0.981, 0.982]})
    cells = reproduce.summarise(rows)
    assert [(c.dataset, c.loss, c.seeds) for c in cells] == [
        ("mnist", "softmax", [0, 1, 2]), ("mnist", "contrastive", [0, 1, 2]),
        ("mnist", "triplet", [0, 1, 2])]
    softmax = cells[0]
    # s = 0.01, half-width = 4.302653 * 0.01 / sqrt(3) = 0.024841...
    assert softmax.metrics["precision_at_1"].mean == pytest.approx(0.91)
    assert softmax.metrics["precision_at_1"].half_width == pytest.approx(0.0248414, abs=1e-6)
    assert softmax.metrics["one_shot_10way"] is None  # a metric some run lacks: no mean
    assert list(softmax.metrics) == ["precision_at_1", "map_at_r", "one_shot_10way",
                                     "seconds_per_epoch"]  # no seed, list or count
    # softmax and contrastive overlap; triplet's interval lies above both.
    assert softmax.overlaps == {"precision_at_1": ["contrastive"], "map_at_r": ["contrastive"]}
    assert cells[2].overlaps == {"precision_at_1": [], "map_at_r": []}

    settings = {"epochs": 2, "batch_size": 128, "classes_per_batch": 8, "images_per_class": 16,
                "embedding_dim": 2, "limit": 300}
    page = reproduce.results_markdown({"command": "siamese-keras reproduce --seeds 0,1,2",
                                       "settings": settings, "rows": rows}, "results.png")
    assert "2 epochs, seeds 0, 1, 2 (n = 3 runs per cell" in page
    assert "| notes |" in page and "Student's t" in page
    assert ("| mnist | softmax | 0.910 ± 0.025 | 0.810 ± 0.025 | n/a |" in page)
    assert "| P@1 ≈ contrastive; MAP@R ≈ contrastive |" in page
    assert page.count("| — |") == 1  # triplet: no overlap
    saved = cells[0].to_json()
    assert saved["seeds"] == [0, 1, 2] and saved["n"] == 3
    assert saved["metrics"]["precision_at_1"]["values"] == [0.90, 0.92, 0.91]
    assert saved["metrics"]["one_shot_10way"] == {"mean": None, "ci_low": None, "ci_high": None,
                                                  "values": [None] * 3, "n": 3,
                                                  "method": "student-t 95%"}

    drawn = {}
    monkeypatch.setattr(reproduce, "save_figure", lambda fig, path: drawn.update(fig=fig))
    reproduce.results_figure(cells, tmp_path / "results.png")
    plots, chart = drawn["fig"].axes[:3], drawn["fig"].axes[3]
    under = [text.get_text() for ax in plots for text in ax.texts]
    assert under[0] == "P@1 0.910 ± 0.025\nMAP@R 0.810 ± 0.025\n10-way 1-shot n/a"
    assert [ax.get_title() for ax in plots] == [f"{loss} · mnist (seed 0)" for loss in
                                                ("softmax", "contrastive", "triplet")]
    assert len(chart.containers) == 3  # P@1, MAP@R and (empty) one-shot error bars
    assert "95 % interval over seeds 0, 1, 2" in chart.get_title()

    one_seed = [row for row in rows if row["seed"] == 0]
    page = reproduce.results_markdown({"command": "x", "settings": settings, "rows": one_seed},
                                      "results.png")
    assert "seed 0 (one seed: no confidence interval" in page and "notes" not in page
    assert "(code: unrecorded)" in page  # rows of a grid made before codes were kept
    assert "| mnist | softmax | 0.900 | 0.800 | n/a |" in page


def test_run_names_per_seed_and_refused_seeds(capsys, tmp_path):
    one = reproduce.grid_configs(["softmax", "triplet-batch-hard"], ["mnist"], (3,))
    assert [(c.name, c.seed) for c in one] == [("softmax_mnist", 3),
                                               ("triplet-batch-hard_mnist", 3)]
    several = reproduce.grid_configs(["softmax"], ["mnist", "fashion_mnist"], (0, 1))
    assert [c.name for c in several] == ["softmax_mnist_seed0", "softmax_fashion_mnist_seed0",
                                         "softmax_mnist_seed1", "softmax_fashion_mnist_seed1"]
    with pytest.raises(ConfigError, match="distinct"):
        reproduce.grid_configs(["softmax"], ["mnist"], (1, 1))
    out = ["--output-dir", tmp_path / "g", "--log-dir", tmp_path / "l"]
    for args, words in ((["--seeds", "1,1"], "each once"), (["--seeds", "0,x"], "list of seeds"),
                        (["--seed", 1, "--seeds", "0,1"], "not both"),
                        (["--precision", "half"], "half"),
                        (["--embedding-dim", 0], "embedding dimension")):
        code, errors = run_main(capsys, "reproduce", *args, *out)
        assert code == 2 and len(errors) == 1 and words in errors[0], errors
    assert not (tmp_path / "g").exists()


# ---- real training: the grid equals a fresh process; two seeds end to end -----------------

def _metrics(run_dir) -> dict:
    """A run's metrics.json without its timing."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if key not in TIMING}


def _weights(run_dir) -> list[np.ndarray]:
    return keras.saving.load_model(run_dir / "model.keras", compile=False).get_weights()


def test_a_run_in_the_grid_equals_the_same_run_alone(tmp_path):
    # Two different runs in this process (which may have trained before, under xdist): an
    # online-mining run with every callback and the export (the most process state touched),
    # then a VAE, whose sampling layer seeds itself from Python's global random. Then the
    # VAE alone in a fresh process: same metrics, same weights, bit for bit.
    quiet = dict(frames=False, projector=False, export=False)
    first, second = reproduce.grid_configs(
        ["triplet-batch-hard", "vae"], ["mnist"], epochs=1, limit=600,
        output_dir=str(tmp_path / "grid"), log_dir=str(tmp_path / "logs"))
    configs = [dataclasses.replace(first, frame_images=200),
               dataclasses.replace(second, **quiet)]
    reproduce.reproduce(configs, tmp_path / "grid", "test", echo=lambda line: None)

    variant = VARIANTS["vae"]
    alone = run_cli("train", "--loss", variant.loss, "--mining", variant.mining,
                    "--dataset", "mnist", "--epochs", 1, "--limit", 600, "--no-frames",
                    "--no-projector", "--no-export", "--output-dir", tmp_path / "alone",
                    "--log-dir", tmp_path / "alone_logs")
    assert alone.returncode == 0, alone.stderr[-3000:]

    in_grid, by_itself = tmp_path / "grid" / "vae_mnist", tmp_path / "alone" / "vae_mnist"
    assert _metrics(in_grid) == _metrics(by_itself)
    assert not math.isnan(_metrics(in_grid)["precision_at_1"])
    grid_weights, alone_weights = _weights(in_grid), _weights(by_itself)
    assert len(grid_weights) == len(alone_weights) > 0
    for number, (a, b) in enumerate(zip(grid_weights, alone_weights)):
        assert a.shape == b.shape and np.array_equal(a, b), f"weight array {number} differs"


def test_reproduce_with_two_seeds_reports_intervals(capsys, tmp_path):
    grid = tmp_path / "grid"
    code, errors = run_main(capsys, "reproduce", "--losses", "softmax", "--datasets", "mnist",
                            "--epochs", 1, "--limit", 300, "--seeds", "0,1",
                            "--embedding-dim", 3, "--lr-schedule", "constant",
                            "--output-dir", grid,
                            "--log-dir", tmp_path / "logs")
    assert code == 0, errors
    results = json.loads((grid / "results.json").read_text())
    assert results["command"].endswith("--epochs 1 --seeds 0,1 --limit 300 --embedding-dim 3 "
                                       "--lr-schedule constant")
    for seed in (0, 1):  # the fair-comparison settings reach every run
        config = json.loads((grid / f"softmax_mnist_seed{seed}" / "config.json").read_text())
        assert (config["embedding_dim"], config["precision"], config["lr_schedule"]) == \
            (3, "float32", "constant")
    assert results["seeds"] == [0, 1] and results["interval"] == "student-t 95%"
    assert {row["code"] for row in results["rows"]} == {reproduce.code_version()}
    assert [(r["seed"], r["run_dir"]) for r in results["rows"]] == [
        (0, str(grid / "softmax_mnist_seed0")), (1, str(grid / "softmax_mnist_seed1"))]
    runs = [_metrics(grid / f"softmax_mnist_seed{seed}") for seed in (0, 1)]
    assert runs[0] != runs[1]  # the seed reaches the run

    (cell,) = results["cells"]
    assert (cell["loss"], cell["dataset"], cell["seeds"], cell["n"]) == ("softmax", "mnist",
                                                                         [0, 1], 2)
    values = [run["precision_at_1"] for run in runs]
    half = 12.706205 * abs(values[0] - values[1]) / 2  # t(0.975, 1) * s / sqrt(2)
    summary = cell["metrics"]["precision_at_1"]
    assert summary["values"] == values and summary["method"] == "student-t 95%"
    assert summary["mean"] == pytest.approx(sum(values) / 2)
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(
        (summary["mean"] - half, summary["mean"] + half))

    page = (grid / "results.md").read_text()
    assert results["command"] in page and "seeds 0, 1 (n = 2 runs per cell" in page
    assert f"| mnist | softmax | {summary['mean']:.3f} ± {half:.3f} |" in page
    assert (grid / "results.png").read_bytes()[:4] == b"\x89PNG"

