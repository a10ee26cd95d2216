"""Class-folder data larger than memory: streamed training against in-memory training.

    python benchmarks/streaming.py [--images 200000] [--root /tmp/ks_stream_bench]
                                   [--steps 100] [--warmup 30] [--rounds 2]

In one run it

1. generates (once; reused while complete) a class-folder dataset of ``--images`` 64 x 64
   RGB JPEGs, 100 classes, fully determined by its seed: each class a smooth random
   pattern, each image that pattern shifted with noise added;
2. builds the image cache (:mod:`keras_siamese.image_cache`) in a child process: every
   JPEG decoded once; prints its seconds and images/s;
3. trains the contrastive model (``siamese-keras train``'s own code: the run's data as
   :func:`run_folder.load_run_data` reads it, its streams and compiled model, batch 128,
   seed 0) in child processes, alternately on the streamed folder (the whole of it,
   under a ``KERAS_SIAMESE_IMAGE_MEMORY`` budget of 1 GiB, which its 2.4 GB of decoded
   pixels exceed, so it streams without being asked) and on the same pixels held in
   memory (the first 30,000 training images, read from the cache: the throughput of a
   step does not depend on how many images it draws from). Each child trains ``--warmup``
   steps, then ``--steps`` timed steps; pairs/s are summed over ``--rounds`` of each;
4. prints the streamed run's peak resident memory (``VmHWM``), over loading the data,
   its fingerprint and pixel statistics, training, and embedding all 40,000 test images
   (the consumer evaluation and plots use), against the bytes the decoded images take.

Other work on the machine slows every figure: they are printed as ratios of figures
measured in the same run, with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZE = 64
CLASSES = 100
SEED = 20261203
BUDGET = 1024**3  # the image memory budget of the runs: the folder's pixels exceed it
IN_MEMORY_IMAGES = 30000
COMPLETE = "generated.json"


def generate(root: Path, count: int) -> float:
    """Write the dataset (see module doc); seconds taken, 0 when it was already there."""
    import numpy as np
    from PIL import Image

    marker = root / COMPLETE
    wanted = {"images": count, "classes": CLASSES, "size": SIZE, "seed": SEED}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return 0.0
    started = time.perf_counter()
    per_class = [count // CLASSES + (c < count % CLASSES) for c in range(CLASSES)]
    for c, n in enumerate(per_class):
        rng = np.random.default_rng([SEED, c])
        coarse = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.BILINEAR),
                          np.int16)
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        shifts = rng.integers(-6, 7, (n, 2))
        for i in range(n):
            noise = rng.integers(-24, 25, (SIZE, SIZE, 3), dtype=np.int16)
            pixels = np.clip(np.roll(base, tuple(shifts[i]), axis=(0, 1)) + noise, 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    marker.write_text(json.dumps(wanted))
    return time.perf_counter() - started


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child_build(root: Path) -> dict:
    from keras_siamese import data

    started = time.perf_counter()
    loaded = data.load_dataset(str(root), stream=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": len(loaded.y_train) + len(loaded.y_test)}


def child_train(root: Path, streamed: bool, steps: int, warmup: int) -> dict:
    import keras
    import numpy as np

    from keras_siamese import experiment, models, run_folder
    from keras_siamese.config import TrainConfig
    from keras_siamese.data import fingerprint, is_streamed, pixel_statistics
    from keras_siamese.splits import Split, evaluation_sets
    from keras_siamese.variants import NetSpec

    config = TrainConfig(dataset=str(root), loss="contrastive", batch_size=128, seed=0,
                         epochs=2, output_dir="/tmp/unused-out", log_dir="/tmp/unused-logs")
    data = run_folder.load_run_data(config)
    assert is_streamed(data), "the folder fits the budget: it would not stream"
    sets = evaluation_sets(data)
    seen = sets.seen
    if streamed:
        fingerprint(data)  # what a run records: reads every image once
    else:  # the same pixels, held in memory: every k-th training image, all classes
        every = slice(None, None, max(1, len(seen.train_labels) // IN_MEMORY_IMAGES))
        seen = Split(np.asarray(seen.train_images[every]), seen.train_labels[every],
                     np.asarray(seen.test_images[:2000]), seen.test_labels[:2000])
    mean, std = pixel_statistics(seen.train_images)
    keras_model = experiment.compiled_model(
        config, NetSpec(seen.train_images.shape[1:], mean, std, data.num_classes), steps)
    train, _ = experiment.training_streams(config, seen, 0)
    marks = {}

    class Timer(keras.callbacks.Callback):
        """Time from the end of the warm-up steps (tracing, first reads) to the last."""

        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 in (warmup, warmup + steps):
                marks[batch + 1] = time.perf_counter()

    keras_model.fit(train, epochs=1, steps_per_epoch=warmup + steps, verbose=0,
                    callbacks=[Timer()])
    pairs_per_second = steps * config.batch_size / (marks[warmup + steps] - marks[warmup])
    embedded = 0
    if streamed:  # the evaluation's consumer: every test image, embedded batch by batch
        embedded = len(models.embed_images(models.embedding_of(keras_model),
                                           sets.seen.test_images))
    return {"pairs_per_second": pairs_per_second, "peak_rss": _status_kib("VmHWM") * 1024,
            "train_images": len(seen.train_labels), "embedded": embedded,
            "decoded_bytes": int(np.prod(data.x_train.shape)) + int(np.prod(data.x_test.shape))}


def _child(args: list[str], env: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                            env={**os.environ, **env})
    if result.returncode:
        sys.exit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/ks_stream_bench"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=BUDGET,
                        help="image memory budget of the runs, bytes")
    parser.add_argument("--child", choices=("build", "streamed", "memory"))
    args = parser.parse_args()
    folder = args.root / "images"
    env = {"KERAS_SIAMESE_CACHE": str(args.root / "cache"),
           "KERAS_SIAMESE_IMAGE_MEMORY": str(args.budget)}
    if args.child == "build":
        print(json.dumps(child_build(folder)))
        return 0
    if args.child:
        print(json.dumps(child_train(folder, args.child == "streamed", args.steps,
                                     args.warmup)))
        return 0

    generated = generate(folder, args.images)
    print(f"dataset: {args.images:,} JPEGs of {SIZE}x{SIZE}x3 in {CLASSES} classes under "
          f"{folder} ({'generated in %.0f s' % generated if generated else 'already there'})")
    built = _child(["--child", "build", "--root", str(args.root)], env)
    print(f"image cache: {built['images']:,} images ready in {built['seconds']:.0f} s "
          f"({built['images'] / built['seconds']:,.0f} images/s; decoding them happens only "
          "when the cache is missing or stale)")
    runs = {"streamed": [], "memory": []}
    common = ["--root", str(args.root), "--steps", str(args.steps), "--warmup",
              str(args.warmup)]
    for _ in range(args.rounds):
        for kind in runs:
            runs[kind].append(_child(["--child", kind, *common], env))
    speed = {kind: sum(r["pairs_per_second"] for r in rs) / len(rs) for kind, rs in runs.items()}
    streamed = runs["streamed"][0]
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}")
    print(f"contrastive, batch 128 pairs, {args.steps} timed steps after {args.warmup} "
          f"warm-up steps, mean of {args.rounds} alternating rounds:")
    for kind in runs:
        each = ", ".join(f"{r['pairs_per_second']:.0f}" for r in runs[kind])
        print(f"  {kind:9s} {runs[kind][0]['train_images']:>7,} training images: "
              f"{speed[kind]:7.1f} pairs/s ({2 * speed[kind]:.0f} images/s; rounds: {each})")
    print(f"  streamed / in-memory throughput: {speed['streamed'] / speed['memory']:.3f}")
    peak = max(r["peak_rss"] for r in runs["streamed"])
    print(f"streamed run peak RSS (VmHWM): {peak / 1024**3:.2f} GiB over loading, fingerprint, "
          f"statistics, training and embedding {streamed['embedded']:,} test images; the "
          f"decoded images take {streamed['decoded_bytes'] / 1024**3:.2f} GiB (peak / data "
          f"{peak / streamed['decoded_bytes']:.2f}); image memory budget "
          f"{args.budget / 1024**3:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
