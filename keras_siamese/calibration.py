"""Choosing the distance threshold at which an embedding says "same class" for a pair.

The threshold is calibrated on HELD-OUT pairs (e.g. :func:`keras_siamese.evaluation.fixed_pairs` of the test
split), never on training pairs, whose distances the training made small.

Pair label convention: ``same = 1`` means the two items show the SAME class, ``0``
DIFFERENT classes. A pair is predicted "same" when ``distance <= threshold``. With
P same-class pairs (positives) and N different-class pairs (negatives), at threshold t:

- ``TP = #{same, d <= t}``, ``FP = #{different, d <= t}``, ``TN = N - FP``, ``FN = P - TP``
- ``TAR = recall = TP / (TP + FN)``   (true accept rate)
- ``FAR = FP / (FP + TN)``            (false accept rate)
- ``FRR = 1 - TAR``                   (false reject rate)
- ``precision = TP / (TP + FP)``, defined as 1.0 where nothing is accepted (TP + FP = 0):
  no accepted pair is wrong
- ``F1 = 2 TP / (2 TP + FP + FN)`` (the harmonic mean of precision and recall; 0 where
  nothing is accepted)

The candidate thresholds (:func:`operating_points`) are the distinct distances, plus one
just below the smallest, where nothing is accepted; between two neighbouring distinct
distances every threshold classifies the pairs alike, so these are all the operating
points there are (the ROC and precision-recall curves).

The equal-error rate (EER) is the error where FAR = FRR. FAR grows and FRR falls with t;
at the first operating point i where ``FAR_i >= FRR_i`` the curves have crossed since
point i-1, and the EER is the crossing of the straight lines between the two points:
``g = FAR - FRR``, ``w = -g_(i-1) / (g_i - g_(i-1))``,
``EER = FAR_(i-1) + w (FAR_i - FAR_(i-1))`` (= the same interpolation of FRR).

TAR@FAR=f is the highest TAR among thresholds with ``FAR <= f``. It is only meaningful
with at least ``1/f`` negatives (fewer cannot show a false accept rate as small as f):
otherwise :func:`summary` reports None and says why in its ``notes``.

No models or data are loaded here: the caller passes embeddings or distances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_siamese.errors import ConfigError, DataError, OutputError
from keras_siamese.metrics import Pairs, labelled_distances, pair_distances
from keras_siamese.outputs import write_json
from keras_siamese.plots import new_figure, save_figure
from keras_siamese.report import json_safe

TARGET_KINDS = ("precision", "far", "f1")
TARGET_FORMS = "precision=P (e.g. precision=0.99), far=F (e.g. far=0.001) or f1"
TAR_AT_FAR = {"1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4}  # reported in summary()


def _checked_pairs(distances, same):
    """Distances as float64 and labels as bool; both kinds of pair must be present."""
    if not np.isfinite(np.asarray(distances, np.float64)).all():
        raise DataError("the pair distances contain NaN or inf: the embeddings diverged")
    distances, same = labelled_distances(distances, same)
    positives = int(np.count_nonzero(same))
    if positives == 0 or positives == len(same):
        raise DataError(f"calibration needs same-class and different-class pairs, got "
                        f"{positives} same-class and {len(same) - positives} different-class")
    return distances, same


def _rates(tp, fp, positives: int, negatives: int) -> dict:
    """The counts and rates of operating points from their TP and FP (see module doc)."""
    tp, fp = np.asarray(tp, np.int64), np.asarray(fp, np.int64)
    fn, tn = positives - tp, negatives - fp
    accepted = tp + fp
    tar = tp / positives
    precision = np.where(accepted > 0, tp / np.maximum(accepted, 1), 1.0)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "tar": tar, "recall": tar,
            "far": fp / negatives, "frr": 1.0 - tar, "precision": precision,
            "f1": 2 * tp / (2 * tp + fp + fn)}


def operating_points(distances, same) -> dict:
    """Counts and rates at every candidate threshold: the ROC and precision-recall curves.

    The candidates, ascending, are a value just below the smallest distance (nothing is
    accepted) and each distinct distance t (every pair with ``d <= t`` is accepted, so a
    threshold accepts all pairs tied at its distance). Formulas in the module doc;
    precision is 1.0 where nothing is accepted. Exact: one sort, cumulative sums.

    Args:
        distances: (p,) pair distances.
        same: (p,) 1 for same-class pairs, 0 for different-class pairs; both must occur.

    Returns:
        A dict of equal-length numpy arrays: ``threshold``, ``tp``, ``fp``, ``tn``, ``fn``,
        ``tar``, ``recall`` (= tar), ``far``, ``frr``, ``precision``, ``f1``.

    Example:
    >>> points = operating_points([0.1, 0.5, 0.5, 0.9], [1, 1, 0, 0])
    >>> points["tp"].tolist(), points["fp"].tolist(), points["precision"].tolist()
    ([0, 1, 2, 2], [0, 0, 1, 2], [1.0, 1.0, 0.6666666666666666, 0.5])
    """
    distances, same = _checked_pairs(distances, same)
    order = np.argsort(distances, kind="stable")
    ordered, is_same = distances[order], same[order]
    last = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])  # end of each tie run
    tp = np.r_[0, np.cumsum(is_same)[last]]
    fp = np.r_[0, last + 1] - tp
    below = np.nextafter(ordered[0], -np.inf)
    points = _rates(tp, fp, int(same.sum()), int((~same).sum()))
    return {"threshold": np.r_[below, ordered[last]], **points}


def parse_target(text: str) -> tuple:
    """A ``--target`` string as ``(kind, value)``: ``"precision=0.99"`` gives
    ``("precision", 0.99)``, ``"far=0.001"`` ``("far", 0.001)``, ``"f1"`` ``("f1", None)``.

    Raises:
        ConfigError: any other form, or a value outside (0, 1).

    Example:
    >>> parse_target("precision=0.99")
    ('precision', 0.99)
    """
    text = str(text).strip()
    if text == "f1":
        return ("f1", None)
    kind, sign, value = text.partition("=")
    if not sign or kind.strip() not in ("precision", "far"):
        raise ConfigError(f"--target {text}: use {TARGET_FORMS}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"--target {text}: the value must be a number between 0 and 1, "
                          f"e.g. {kind.strip()}=0.99") from None
    return check_target((kind.strip(), number))


def format_target(target) -> str:
    """The ``--target`` string of a ``(kind, value)`` target, e.g. ``"far=0.001"``."""
    kind, value = check_target(target)
    return kind if value is None else f"{kind}={value:g}"


def check_target(target) -> tuple:
    """``target`` as a valid ``(kind, value)`` tuple, or a ConfigError (see choose_threshold)."""
    if not isinstance(target, (tuple, list)) or len(target) != 2:
        raise ConfigError(f"--target {target!r}: use {TARGET_FORMS}")
    kind, value = target
    if kind == "f1":
        if value is not None:
            raise ConfigError(f"--target f1={value}: f1 takes no value, write just f1")
        return ("f1", None)
    if kind not in TARGET_KINDS:
        raise ConfigError(f"--target {kind}={value}: use {TARGET_FORMS}")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise ConfigError(f"--target {kind}={value}: the value must be a number between 0 and 1")
    if not 0.0 < float(value) < 1.0:  # also rejects NaN
        raise ConfigError(f"--target {kind}={value}: the value must be between 0 and 1")
    return (kind, float(value))


def choose_threshold(distances, same, target) -> float:
    """The distance threshold meeting ``target`` on the given (held-out) pairs.

    - ``("precision", p)``: the LARGEST threshold whose precision >= p, i.e. the most
      recall at that precision (thresholds that accept nothing do not count);
    - ``("far", f)``: the largest threshold whose FAR <= f (it must accept at least one
      same-class pair);
    - ``("f1", None)``: the threshold with the highest F1, the lowest one on ties.

    The threshold is one of the candidates of :func:`operating_points` (a pair distance);
    a pair is "same" when ``distance <= threshold``.

    Args:
        distances: (p,) pair distances.
        same: (p,) 1 for same-class pairs, 0 for different-class pairs; both must occur.
        target: ``(kind, value)`` as :func:`parse_target` returns it.

    Returns:
        The threshold.

    Raises:
        ConfigError: a malformed target or a value outside (0, 1).
        DataError: no threshold meets the target; the message gives the best achievable.

    Example:
    >>> choose_threshold([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 1], ("precision", 0.7))
    0.4
    """
    kind, value = check_target(target)
    points = operating_points(distances, same)
    if kind == "f1":
        return float(points["threshold"][int(np.argmax(points["f1"]))])
    if kind == "precision":
        meets = (points["precision"] >= value) & (points["tp"] > 0)
    else:
        meets = (points["far"] <= value) & (points["tp"] > 0)
    if not meets.any():
        raise DataError(_unreachable(kind, value, points))
    return float(points["threshold"][np.flatnonzero(meets)[-1]])


def _unreachable(kind: str, value: float, points: dict) -> str:
    """The one-line message for a target no threshold meets, with the best achievable."""
    accepting = points["tp"] > 0  # the last point accepts everything, so never empty
    if kind == "precision":
        best = points["precision"][accepting].max()
        return (f"no threshold reaches precision {value:g} on these pairs: the best "
                f"achievable is {best:.4g}; lower the target or train a better embedding")
    best = points["far"][accepting].min()
    return (f"no threshold with FAR <= {value:g} accepts a same-class pair here: the "
            f"lowest achievable FAR is {best:.4g}; raise the target or use more pairs")


def _equal_error(points: dict) -> tuple[float, float]:
    """The EER and its threshold, interpolated linearly between the two operating points
    where FAR - FRR changes sign (see module doc)."""
    gap = points["far"] - points["frr"]
    i = int(np.flatnonzero(gap >= 0)[0])  # >= 1: the first point has FAR 0, FRR 1
    weight = -gap[i - 1] / (gap[i] - gap[i - 1])
    far, t = points["far"], points["threshold"]
    eer = far[i - 1] + weight * (far[i] - far[i - 1])
    return float(eer), float(t[i - 1] + weight * (t[i] - t[i - 1]))


def _tar_at_far(points: dict, negatives: int) -> tuple[dict, list]:
    """TAR at each FAR of TAR_AT_FAR (None where there are fewer than 1/FAR negatives)."""
    tars, notes = {}, []
    for name, far in TAR_AT_FAR.items():
        needed = round(1 / far)
        if negatives < needed:
            tars[name] = None
            notes.append(f"TAR@FAR={name} needs at least {needed} different-class pairs, "
                         f"there are {negatives}")
        else:
            tars[name] = float(points["tar"][points["far"] <= far].max())
    return tars, notes


def summary(distances, same, threshold: float) -> dict:
    """How a threshold does on the given pairs, plus threshold-free figures of the curve.

    Args:
        distances: (p,) pair distances.
        same: (p,) 1 for same-class pairs, 0 for different-class pairs; both must occur.
        threshold: a pair is "same" when ``distance <= threshold``.

    Returns:
        A dict of plain Python values: ``threshold``, ``precision`` (1.0 if nothing is
        accepted), ``recall``, ``f1``, ``far``, ``frr``, ``positives``, ``negatives``
        (pair counts), ``eer`` and ``eer_threshold`` (linear interpolation, module doc),
        ``tar_at_far`` ({"1e-2": TAR or None, "1e-3": ..., "1e-4": ...}) and ``notes``
        (a list of sentences, e.g. why a TAR@FAR is None).

    Example:
    >>> s = summary([1.0, 2.0, 3.0, 4.0, 5.0], [1, 0, 1, 0, 0], 3.0)
    >>> s["precision"], s["recall"], round(s["eer"], 4), round(s["eer_threshold"], 4)
    (0.6666666666666666, 1.0, 0.3333, 2.3333)
    """
    distances, same = _checked_pairs(distances, same)
    accepted = distances <= threshold
    positives, negatives = int(same.sum()), int((~same).sum())
    at = _rates(np.count_nonzero(accepted & same), np.count_nonzero(accepted & ~same),
                positives, negatives)
    points = operating_points(distances, same)
    eer, eer_threshold = _equal_error(points)
    tars, notes = _tar_at_far(points, negatives)
    rates = {name: float(at[name]) for name in ("precision", "recall", "f1", "far", "frr")}
    return {"threshold": float(threshold), **rates, "positives": positives,
            "negatives": negatives, "eer": eer, "eer_threshold": eer_threshold,
            "tar_at_far": tars, "notes": notes}


def calibration_figure(distances, same, threshold: float, path) -> None:
    """Save a PNG with the ROC curve (FAR on a log axis against TAR) and the
    precision-recall curve, the point of ``threshold`` marked and labelled on both.

    A log axis cannot show FAR = 0: those points are drawn at ``1 / (2 x negatives)``,
    half the smallest non-zero FAR, as the axis label says. Written atomically.
    """
    points = operating_points(distances, same)
    s = summary(distances, same, threshold)
    floor = 0.5 / s["negatives"]
    fig = new_figure((11, 4.8), 100)
    roc, pr = fig.subplots(1, 2)
    roc.plot(np.maximum(points["far"], floor), points["tar"])
    roc.set_xscale("log")
    roc.set_xlabel(f"FAR (log scale; FAR = 0 drawn at {floor:.2g})")
    roc.set_ylabel("TAR (recall)")
    roc.set_title(f"ROC, {s['negatives']} different-class pairs (EER {s['eer']:.3g})")
    pr.plot(points["recall"], points["precision"])
    pr.set_xlabel("recall (TAR)")
    pr.set_ylabel("precision")
    pr.set_title(f"precision-recall, {s['positives']} same-class pairs")
    label = (f"threshold {threshold:.4g}\nprecision {s['precision']:.3f}, "
             f"recall {s['recall']:.3f}\nFAR {s['far']:.3g}")
    for ax, x, y in ((roc, max(s["far"], floor), s["recall"]),
                     (pr, s["recall"], s["precision"])):
        ax.plot([x], [y], "o", color="tab:red", label=label)
        ax.legend(loc="lower right" if ax is roc else "lower left", fontsize="small")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def calibrate(embeddings, pairs: Pairs, target) -> dict:
    """Choose the threshold meeting ``target`` on held-out ``pairs`` of ``embeddings`` and
    summarise it: :func:`summary` plus ``target`` (its string form, e.g. "precision=0.99").

    Args:
        embeddings: (n, D) embeddings of held-out items (never the training split).
        pairs: :class:`~keras_siamese.metrics.Pairs` indexing them (same = 1 same class),
            e.g. :func:`keras_siamese.evaluation.fixed_pairs` of their labels.
        target: a ``--target`` string (:func:`parse_target`) or a ``(kind, value)`` tuple.
    """
    return calibrate_distances(pair_distances(embeddings, pairs.first, pairs.second),
                               pairs.same, target)


def calibrate_distances(distances, same, target) -> dict:
    """:func:`calibrate` on pair distances already measured (``same`` = 1 same class)."""
    target = parse_target(target) if isinstance(target, str) else check_target(target)
    threshold = choose_threshold(distances, same, target)
    return {"target": format_target(target), **summary(distances, same, threshold)}


def write_calibration(run_dir, result: dict, distances, same) -> tuple[Path, Path]:
    """Write ``calibration.json`` (``result`` as strict JSON) and ``calibration.png``
    (:func:`calibration_figure` at ``result["threshold"]``) into ``run_dir``, atomically.

    Returns:
        The two paths written.

    Raises:
        OutputError: a file cannot be written.
    """
    json_path, png_path = Path(run_dir) / "calibration.json", Path(run_dir) / "calibration.png"
    try:
        write_json(json_path, json_safe(result))
        calibration_figure(distances, same, result["threshold"], png_path)
    except OSError as error:
        raise OutputError(f"cannot write {error.filename or run_dir}: "
                          f"{error.strerror or error}; choose another folder") from error
    return json_path, png_path
