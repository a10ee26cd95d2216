"""keras_siamese.calibration against brute-force references (loops over every candidate
threshold), hand-made examples, bad targets, the written files, and MNIST pixels.

Pair label convention: same = 1 same class, 0 different; "same" is predicted when
distance <= threshold.
"""

import json
import math

import numpy as np
import pytest

from keras_siamese import calibration
from keras_siamese.errors import ConfigError, DataError, OutputError
from keras_siamese.evaluation import fixed_pairs
from keras_siamese.metrics import Pairs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------- brute-force references


def brute_point(distances, same, t):
    """Counts and rates at threshold t, by a loop over the pairs."""
    tp = fp = tn = fn = 0
    for d, s in zip(distances, same):
        accepted = d <= t
        if s == 1:
            tp, fn = tp + accepted, fn + (not accepted)
        else:
            fp, tn = fp + accepted, tn + (not accepted)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "tar": recall, "recall": recall,
            "far": fp / (fp + tn), "frr": 1 - recall, "precision": precision, "f1": f1}


def brute_candidates(distances):
    distinct = sorted(set(float(d) for d in distances))
    return [np.nextafter(distinct[0], -np.inf)] + distinct


def random_pairs(seed, n):
    """Pairs with many exact ties (distances rounded to one decimal); both kinds present."""
    rng = np.random.default_rng(seed)
    same = rng.integers(0, 2, n)
    same[:2] = (0, 1)
    distances = np.round(rng.random(n) + 0.4 * (1 - same), 1)
    return distances, same


CASES = [random_pairs(seed, n) for seed, n in [(0, 5), (1, 20), (2, 60), (3, 200)]]


# ---------------------------------------------------------------- operating points


@pytest.mark.parametrize("distances, same", CASES)
def test_operating_points_equal_brute_force(distances, same):
    points = calibration.operating_points(distances, same)
    candidates = brute_candidates(distances)
    np.testing.assert_array_equal(points["threshold"], candidates)
    assert len(candidates) < len(distances) + 1 or len(distances) < 10  # ties do occur
    for i, t in enumerate(candidates):
        expected = brute_point(distances, same, t)
        for name, value in expected.items():
            assert points[name][i] == pytest.approx(value, abs=1e-12), (name, t)


def test_first_point_accepts_nothing_and_last_everything():
    distances, same = CASES[2]
    points = calibration.operating_points(distances, same)
    assert (points["tp"][0], points["fp"][0], points["precision"][0]) == (0, 0, 1.0)
    assert points["threshold"][0] < distances.min()
    assert (points["tar"][-1], points["far"][-1]) == (1.0, 1.0)


def test_ties_are_accepted_together():
    points = calibration.operating_points([0.5, 0.5, 0.5, 1.0], [1, 0, 1, 0])
    assert points["threshold"].tolist()[1:] == [0.5, 1.0]
    assert (points["tp"][1], points["fp"][1]) == (2, 1)


def test_needs_both_kinds_of_pair():
    with pytest.raises(DataError, match="same-class and different-class"):
        calibration.operating_points([0.1, 0.2], [1, 1])
    with pytest.raises(DataError, match="NaN or inf"):
        calibration.operating_points([0.1, math.nan], [1, 0])


# ---------------------------------------------------------------- choosing a threshold


@pytest.mark.parametrize("distances, same", CASES)
@pytest.mark.parametrize("target", [("precision", 0.6), ("precision", 0.8),
                                    ("far", 0.1), ("far", 0.3)])
def test_threshold_meets_target_and_is_the_largest(distances, same, target):
    kind, value = target

    def meets(t):
        point = brute_point(distances, same, t)
        ok = point["precision"] >= value if kind == "precision" else point["far"] <= value
        return ok and point["tp"] > 0

    qualifying = [t for t in brute_candidates(distances) if meets(t)]
    if not qualifying:
        with pytest.raises(DataError, match="achievable"):
            calibration.choose_threshold(distances, same, target)
        return
    threshold = calibration.choose_threshold(distances, same, target)
    assert meets(threshold)
    assert threshold == max(qualifying)


@pytest.mark.parametrize("distances, same", CASES)
def test_f1_threshold_is_the_brute_force_argmax(distances, same):
    candidates = brute_candidates(distances)
    f1 = [brute_point(distances, same, t)["f1"] for t in candidates]
    best = max(f1)
    lowest_best = min(t for t, v in zip(candidates, f1) if math.isclose(v, best))
    assert calibration.choose_threshold(distances, same, ("f1", None)) == lowest_best


def test_f1_tie_takes_the_lowest_threshold():
    # F1 at t = 1, 2, 3, 4: 2/3, 1/2, 2/5, 2/3
    assert calibration.choose_threshold([1.0, 2.0, 3.0, 4.0], [1, 0, 0, 1], ("f1", None)) == 1.0


def test_precision_target_hand_made():
    # precision at 0.1..0.4: 1, 1, 2/3, 3/4; at 0.5: 3/5
    distances, same = [0.1, 0.2, 0.3, 0.4, 0.5], [1, 1, 0, 1, 0]
    assert calibration.choose_threshold(distances, same, ("precision", 0.9)) == 0.2
    assert calibration.choose_threshold(distances, same, ("precision", 0.7)) == 0.4
    assert calibration.choose_threshold(distances, same, ("far", 0.5)) == 0.4
    assert calibration.choose_threshold(distances, same, ("far", 0.4)) == 0.2


def test_unreachable_targets_raise_data_error_with_the_best():
    distances, same = [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]  # a negative is nearest
    with pytest.raises(DataError, match=r"precision 0\.9 .*best achievable is 0\.5;"):
        calibration.choose_threshold(distances, same, ("precision", 0.9))
    with pytest.raises(DataError, match=r"lowest achievable FAR is 0\.5;"):
        calibration.choose_threshold(distances, same, ("far", 0.2))


@pytest.mark.parametrize("text", ["precision=1.5", "far=0", "far=1", "foo=1", "precision=abc",
                                  "precision", "f1=0.5", "precision=nan", "", "far=-0.1"])
def test_bad_targets_are_config_errors(text):
    with pytest.raises(ConfigError) as error:
        calibration.parse_target(text)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"--target {text}")


def test_bad_target_messages():
    with pytest.raises(ConfigError, match="^--target precision=1.5: the value must be between"):
        calibration.parse_target("precision=1.5")
    with pytest.raises(ConfigError, match="precision=P .* far=F .* or f1"):
        calibration.parse_target("foo=1")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        calibration.choose_threshold([0.1, 0.2], [1, 0], ("far", 0.0))
    with pytest.raises(ConfigError):
        calibration.choose_threshold([0.1, 0.2], [1, 0], ("recall", 0.5))


def test_parse_target_forms():
    assert calibration.parse_target("precision=0.99") == ("precision", 0.99)
    assert calibration.parse_target("far=0.001") == ("far", 0.001)
    assert calibration.parse_target(" f1 ") == ("f1", None)
    assert calibration.format_target(("far", 0.001)) == "far=0.001"
    assert calibration.format_target(("f1", None)) == "f1"


# ---------------------------------------------------------------- summary


def test_equal_error_rate_interpolates_between_points():
    # FAR/FRR at t = 1, 2, 3: (0, 1/2), (1/3, 1/2), (1/3, 0): they cross between t=2 and 3,
    # a third of the way (gap -1/6 then +1/3), where FAR = FRR = 1/3.
    s = calibration.summary([1.0, 2.0, 3.0, 4.0, 5.0], [1, 0, 1, 0, 0], 3.0)
    assert s["eer"] == pytest.approx(1 / 3)
    assert s["eer_threshold"] == pytest.approx(2 + 1 / 3)


def test_equal_error_rate_on_an_exact_crossing():
    s = calibration.summary([1.0, 2.0, 3.0, 4.0], [1, 0, 1, 0], 2.0)
    assert s["eer"] == pytest.approx(0.5)
    assert s["eer_threshold"] == pytest.approx(2.0)
    perfect = calibration.summary([1.0, 2.0, 3.0, 4.0], [1, 1, 0, 0], 2.0)
    assert perfect["eer"] == 0.0


def test_summary_at_threshold_equals_brute_force():
    distances, same = CASES[3]
    for t in (0.0, 0.35, 0.7, 2.0):
        s = calibration.summary(distances, same, t)
        expected = brute_point(distances, same, t)
        for name in ("precision", "recall", "f1", "far", "frr"):
            assert s[name] == pytest.approx(expected[name]), (name, t)
        assert (s["positives"], s["negatives"]) == (int(same.sum()), int((1 - same).sum()))


def test_tar_at_far_needs_enough_negatives():
    rng = np.random.default_rng(7)
    same = np.r_[np.ones(300, int), np.zeros(5000, int)]
    distances = np.r_[rng.random(300), rng.random(5000) + 0.5]
    s = calibration.summary(distances, same, 0.5)
    assert s["tar_at_far"]["1e-4"] is None
    assert ("TAR@FAR=1e-4 needs at least 10000 different-class pairs, there are 5000"
            in s["notes"])
    assert len(s["notes"]) == 1
    # brute force: the highest TAR among candidate thresholds with FAR <= 1e-3
    best = max(brute_point(distances, same, t)["tar"] for t in brute_candidates(distances)
               if brute_point(distances, same, t)["far"] <= 1e-3)
    assert s["tar_at_far"]["1e-3"] == pytest.approx(best)
    assert 0 < s["tar_at_far"]["1e-2"] <= 1


# ---------------------------------------------------------------- files


def test_write_calibration(tmp_path):
    distances, same = CASES[3]
    threshold = calibration.choose_threshold(distances, same, ("precision", 0.8))
    result = {"target": "precision=0.8", **calibration.summary(distances, same, threshold),
              "nan_here": math.nan}
    json_path, png_path = calibration.write_calibration(tmp_path, result, distances, same)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json",
                                                           "calibration.png"]
    raw = json_path.read_text()
    assert "NaN" not in raw
    loaded = json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert loaded["threshold"] == threshold and loaded["nan_here"] is None
    assert loaded["tar_at_far"]["1e-4"] is None and loaded["notes"]
    data = png_path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_figure_failure_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken.png"
    target.mkdir()  # os.replace onto a folder fails
    with pytest.raises(OSError):
        calibration.calibration_figure([0.1, 0.2], [1, 0], 0.1, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


def test_unwritable_run_folder_is_an_output_error(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(OutputError, match="cannot write .*calibration.json"):
        calibration.write_calibration(missing, {"threshold": 0.1}, [0.1, 0.2], [1, 0])


# ---------------------------------------------------------------- real data


def test_calibrate_raw_mnist_pixels(mnist, tmp_path):
    images, labels = mnist.x_test[:2000], mnist.y_test[:2000]
    embeddings = images.reshape(len(images), -1).astype(np.float64)
    pairs = fixed_pairs(labels)
    assert isinstance(pairs, Pairs) and len(pairs.same) == 2000
    assert np.array_equal(pairs.same, labels[pairs.first] == labels[pairs.second])
    result = calibration.calibrate(embeddings, pairs, "precision=0.9")
    assert result["target"] == "precision=0.9"
    assert result["precision"] >= 0.9 and result["recall"] > 0.05
    # independent check of what the threshold achieves on those pairs
    d = np.linalg.norm(embeddings[pairs.first] - embeddings[pairs.second], axis=1)
    accepted = d <= result["threshold"]
    assert pairs.same[accepted].mean() >= 0.9
    calibration.write_calibration(tmp_path, result, d, pairs.same)
    assert json.loads((tmp_path / "calibration.json").read_text())["precision"] >= 0.9
