"""The metrics as people read them: the aligned table that ``train`` and ``evaluate``
print, and the strict JSON form of ``metrics.json`` and ``results.json``."""

from __future__ import annotations

import math

NOT_SHOWN = {"seconds_per_epoch"}  # in metrics.json, but a training figure

# The order and wording of the printed table.
METRIC_NAMES = {
    "precision_at_1": "Precision@1 (test vs train, 1-NN)",
    "knn_accuracy": "k-NN accuracy (k=5, majority vote)",
    "r_precision": "R-precision (test, leave-one-out)",
    "map_at_r": "MAP@R (test, leave-one-out)",
    "roc_auc": "ROC-AUC (fixed test pairs)",
    "verification_accuracy": "Verification accuracy (threshold from train pairs)",
    "threshold": "Distance threshold (from train pairs)",
}


def metric_label(name: str) -> str:
    if name.startswith("one_shot_"):
        return f"{name[len('one_shot_'):-3]}-way one-shot accuracy (test)"
    return METRIC_NAMES.get(name, name)


def format_table(metrics: dict, class_names=None) -> str:
    """The metrics as an aligned text table: one column for the trained classes and, with
    a holdout, one for the held-out classes."""
    unseen = metrics.get("unseen")
    blocks = [metrics] + ([unseen] if unseen else [])
    names = [name for block in blocks for name, value in block.items()
             if name not in NOT_SHOWN and not isinstance(value, (dict, list, int))]
    header = ["metric", "trained classes"] + (["held-out classes"] if unseen else [])
    rows = [header]
    for name in dict.fromkeys(names):
        rows.append([metric_label(name)] + [_number(block.get(name)) for block in blocks])
    if unseen and class_names is not None:
        held = ", ".join(class_names[c] for c in metrics["holdout_classes"])
        rows.append(["held-out classes", "", held])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value) -> str:
    """4 decimals; "n/a" for a metric the split cannot have (NaN, None, missing)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def json_safe(value):
    """``value`` with NaN replaced by None, so metrics.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
