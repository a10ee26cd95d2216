"""Train every loss on every dataset with default settings and print P@1 and s/epoch.

    python benchmarks/train_grid.py [--epochs 10] [--out /tmp/grid] [--losses a,b] [--datasets a,b]

Each run is a plain ``siamese-keras train`` in its own process; the table is printed at
the end and written to ``<out>/grid.json``. Figures are from real full-size runs (2-D
embeddings, test queries against all training embeddings).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from keras_siamese.config import DATASETS, LOSSES


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="/tmp/keras-siamese-grid")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for dataset in args.datasets.split(","):
        for loss in args.losses.split(","):
            command = ["siamese-keras", "train", "--loss", loss, "--dataset", dataset,
                       "--epochs", str(args.epochs), "--output-dir", str(out / "output"),
                       "--log-dir", str(out / "logs"), "--overwrite"]
            print("running:", " ".join(command), flush=True)
            subprocess.run(command, check=True)
            metrics = json.loads((out / "output" / f"{loss}_{dataset}" / "metrics.json").read_text())
            rows.append({"loss": loss, "dataset": dataset, "epochs": args.epochs, **metrics})
    (out / "grid.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{'dataset':<14} {'loss':<12} {'P@1':>7} {'s/epoch':>8}")
    for row in rows:
        print(f"{row['dataset']:<14} {row['loss']:<12} {row['precision_at_1']:7.4f} "
              f"{row['seconds_per_epoch']:8.1f}")


if __name__ == "__main__":
    sys.exit(main())
