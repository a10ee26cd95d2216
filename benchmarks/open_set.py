"""The README's "Use a trained model" walk-through, with the figures it reports.

Given a run trained with ``--holdout-classes 7,8,9`` (digits, or Fashion-MNIST classes,
the model never saw), it runs the commands a user would:

1. ``siamese-keras calibrate RUN --target precision=0.99`` (held-out test pairs);
2. ``siamese-keras index RUN seen.npy --labels seen_labels.npy --out INDEX``: the training
   images of the seen classes;
3. ``siamese-keras index RUN new.npy --labels new_labels.npy --add INDEX``: 1 (then 5)
   training images of each of the classes 7 and 8; class 9 stays in no gallery;
4. ``siamese-keras classify INDEX test.npy`` on the test images, at the index's own
   open-set threshold (the default) and with ``--threshold calibrated`` (the pair
   threshold of step 1),

and prints, for each threshold: accuracy on the seen classes' test images, on classes 7
and 8 after adding 1 and 5 examples (an "unknown" answer counts as wrong), and the share
of class 9's test images answered "unknown" (the right answer: it is in no gallery), with
the share of seen-class images wrongly called "unknown".

Usage: python benchmarks/open_set.py output/contrastive_mnist_holdout --work /tmp/open_set
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ADDED, ABSENT = (7, 8), 9
CLI = str(Path(sys.executable).parent / "siamese-keras")


def command(*args) -> str:
    result = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def save(work: Path, name: str, images, labels, class_names) -> Path:
    np.save(work / f"{name}.npy", images[..., 0] if images.shape[-1] == 1 else images)
    np.save(work / f"{name}_labels.npy", np.array([class_names[c] for c in labels]))
    return work / f"{name}.npy"


THRESHOLDS = ("gallery", "calibrated")


def classified(index: Path, images: Path, threshold: str) -> list[str]:
    return [line.split("\t")[1] for line in
            command("classify", index, images, "--threshold", threshold).splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/open_set"))
    parser.add_argument("--target", default="precision=0.99")
    args = parser.parse_args()
    from keras_siamese.data import load_dataset
    from keras_siamese.run_folder import read_config

    config = read_config(args.run)[0]
    assert set(config.holdout_classes) == {*ADDED, ABSENT}, "train with --holdout-classes 7,8,9"
    data = load_dataset(config.dataset, config.data_dir)
    names = data.class_names
    args.work.mkdir(parents=True, exist_ok=True)
    calibration = json.loads(command("calibrate", args.run, "--target", args.target)
                             .split("\nwritten:")[0])
    seen = ~np.isin(data.y_train, config.holdout_classes)
    gallery = save(args.work, "seen", data.x_train[seen], data.y_train[seen], names)
    index = args.work / "index"
    command("index", args.run, gallery, "--labels", args.work / "seen_labels.npy",
            "--out", index, "--overwrite")
    tests = {kind: (np.isin(data.y_test, classes)) for kind, classes in
             (("seen", [c for c in range(len(names)) if c not in config.holdout_classes]),
              ("added", ADDED), ("absent", [ABSENT]))}
    truth = {kind: [names[c] for c in data.y_test[mask]] for kind, mask in tests.items()}
    files = {kind: save(args.work, f"test_{kind}", data.x_test[mask], data.y_test[mask], names)
             for kind, mask in tests.items()}
    rows = {"calibrated_threshold": calibration["threshold"], "target": args.target}
    for threshold in THRESHOLDS:
        answers = classified(index, files["seen"], threshold)
        rows[threshold] = {"seen_accuracy": _accuracy(answers, truth["seen"]),
                           "seen_unknown": answers.count("unknown") / len(answers)}
    total = 0
    for shots in (1, 5):
        picked = np.concatenate([np.flatnonzero(data.y_train == c)[total:shots]
                                 for c in ADDED])
        new = save(args.work, f"new{shots}", data.x_train[picked], data.y_train[picked], names)
        command("index", args.run, new, "--labels", args.work / f"new{shots}_labels.npy",
                "--add", index)
        total = shots
        for threshold in THRESHOLDS:
            rows[threshold][f"added_accuracy_{shots}_shot"] = _accuracy(
                classified(index, files["added"], threshold), truth["added"])
    rows["gallery_threshold"] = json.loads(_meta(index))["unknown_threshold"]
    for threshold in THRESHOLDS:
        rows[threshold]["absent_unknown"] = classified(
            index, files["absent"], threshold).count("unknown") / len(truth["absent"])
    print(json.dumps(rows, indent=2))


def _meta(index: Path) -> str:
    with np.load(index / "index.npz", allow_pickle=False) as arrays:
        return str(arrays["meta"])


def _accuracy(answers: list[str], truth: list[str]) -> float:
    return float(np.mean([a == t for a, t in zip(answers, truth)]))


if __name__ == "__main__":
    main()
