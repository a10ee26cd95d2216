"""Time the full metric suite on MNIST-sized embeddings and print seconds and peak memory.

    python benchmarks/eval_speed.py [--dims 2,64] [--repeats 2] [--json PATH]

For each dimension, a fresh process embeds nothing: it draws synthetic clustered
embeddings (10 classes, 60k training and 10k test items, class centres plus noise so
neighbourhoods mix a little), the fixed evaluation pairs of both splits, and times
``metrics.embedding_metrics`` (P@1 and 5-NN against 60k references, R-precision and
MAP@R leave-one-out on 10k, pair AUC and verification accuracy, 5- and 10-way one-shot
over 1000 episodes each), then each part on its own. Peak memory is the process's
maximum resident set size (``getrusage``), which includes TensorFlow itself; the
resident size just before the first call is printed for comparison. The load average
is printed too: other work on the machine slows the figures down.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TRAIN, TEST, CLASSES = 60_000, 10_000, 10


def _rss_mib() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _clustered(rng, n, centres, spread):
    labels = rng.integers(0, len(centres), n)
    return (centres[labels] + spread * rng.standard_normal((n, centres.shape[1]))).astype(
        "float32"), labels


def measure(dims: int, repeats: int) -> dict:
    """One dimension, in this process: timings (s) and memory (MiB)."""
    import numpy as np

    from keras_siamese import metrics, neighbours, streams

    rng = np.random.default_rng(dims)
    centres = 3.0 * rng.standard_normal((CLASSES, dims))
    spread = 0.5 * (dims / 2) ** 0.6  # classes overlap a little in 2-D and in 64-D alike
    train, train_labels = _clustered(rng, TRAIN, centres, spread)
    test, test_labels = _clustered(rng, TEST, centres, spread)

    def fixed_pairs(labels):
        pairs = streams.sample_pairs(streams.class_index(labels), streams.EVAL_SEED, 0)
        return metrics.Pairs(*(np.asarray(t) for t in pairs))

    test_pairs, train_pairs = fixed_pairs(test_labels), fixed_pairs(train_labels)
    rss_before = _rss_mib()

    suite, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = metrics.embedding_metrics(train, train_labels, test, test_labels,
                                           test_pairs, train_pairs, seed=streams.EVAL_SEED)
        suite.append(time.perf_counter() - started)

    def timed(function, *args, **kwargs):
        started = time.perf_counter()
        function(*args, **kwargs)
        return time.perf_counter() - started

    parts = {
        "nearest_neighbours_k5": timed(neighbours.nearest_neighbours, test, train, 5),
        "map_at_r": timed(metrics.map_at_r, test, test_labels),
        "pairs": timed(lambda: (
            metrics.roc_auc(metrics.pair_distances(test, test_pairs.first, test_pairs.second),
                            test_pairs.same),
            metrics.best_threshold(
                metrics.pair_distances(train, train_pairs.first, train_pairs.second),
                train_pairs.same))),
        "one_shot_5_and_10way": timed(lambda: [
            metrics.n_way_one_shot_accuracy(test, test_labels, n, 1000, 0) for n in (5, 10)]),
    }
    return {"dims": dims, "train": TRAIN, "test": TEST, "suite_seconds": suite,
            "parts_seconds": parts, "rss_before_mib": rss_before, "peak_rss_mib": _peak_mib(),
            "metrics": result}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one dimension, in-process
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.repeats)))
        return 0

    load_before = os.getloadavg()
    rows = []
    for dims in map(int, args.dims.split(",")):
        # A fresh process per dimension, so each peak RSS is its own.
        out = subprocess.run([sys.executable, __file__, "--worker", str(dims),
                              "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    load_after = os.getloadavg()

    print(f"cores: {os.cpu_count()}, load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    print(f"{'dims':>4} {'suite first s':>13} {'suite best s':>12} {'peak RSS MiB':>12} "
          f"{'RSS before MiB':>14}")
    for row in rows:
        print(f"{row['dims']:>4} {row['suite_seconds'][0]:13.2f} {min(row['suite_seconds']):12.2f} "
              f"{row['peak_rss_mib']:12.0f} {row['rss_before_mib']:14.0f}")
        print("     parts: " + ", ".join(f"{k} {v:.2f} s" for k, v in row["parts_seconds"].items()))
        print("     metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_before": load_before, "load_after": load_after,
                       "cores": os.cpu_count(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
