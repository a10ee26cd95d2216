"""Training speed against the machine's limit, in one run: prints a table, writes JSON.

    python benchmarks/train_speed.py [--steps 150] [--epochs 2] [--json PATH]

On real MNIST at the default batch size (128) and settings, it measures

1. the machine's float32 peak: a 4096 x 4096 matrix product (2 n^3 FLOP), best of 5;
2. for every model kind (the four losses with the study's offline pairs/triplets, online
   mining on P x K = 8 x 16 batches, the VAE), training examples/s (pairs, triplets or
   images per second) and images/s, the best of three windows of ``--steps / 3`` steps
   after a warm-up; the achieved GFLOP/s from the counted FLOPs (forward: 2 x the
   multiply-adds of every conv, transposed-conv and dense layer of the embedding net, or
   of the VAE's encoder and decoder; training: 3 x forward, the backward pass costing about
   twice the forward) and its share of the peak; the Siamese heads (a distance, a 2 -> 1
   or 2 -> 10 dense layer) are left out of the count;
3. the training stream alone (examples/s, no model), and how many times faster than
   training it is;
4. seconds per full MNIST epoch of the contrastive model (``siamese-keras train``'s own
   code, ``--epochs`` epochs, best of ``--repeats`` interleaved runs) with the callbacks
   off (no frames, no projector), at the defaults (frames, projector, history, TensorBoard
   scalars), and with the metrics every epoch too (``--eval-every 1``);
5. the process's peak resident memory;
6. what bounds the training speed: the embedding net's forward and backward pass alone
   (one ``tf.function``, a constant batch of 256 images, no optimiser, no data pipeline,
   no Keras ``fit``), and the same for each conv and dense layer on its own at the shapes
   it has inside the network: its milliseconds and GFLOP/s show which kernel holds
   training back.

Other work on the machine slows every figure: the 1-minute load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = ("softmax", "contrastive", "bce", "triplet", "triplet-batch-all", "triplet-batch-hard",
          "triplet-semi-hard", "contrastive-hard-negative", "vae")
IMAGES_PER_EXAMPLE = {"softmax": 1, "contrastive": 2, "bce": 2, "triplet": 3}  # online: 1


def matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.matmul(a, b).numpy()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def forward_multiply_adds(network) -> int:
    """Multiply-adds of one image through the conv, transposed-conv and dense layers of
    ``network`` (the embedding net; for the VAE, encoder and decoder)."""
    import keras

    total = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):  # every input pixel scatters
            _, height, width, channels = layer.input.shape
            kh, kw = layer.kernel_size
            total += kh * kw * channels * layer.filters * height * width
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, filters = layer.output.shape
            kh, kw = layer.kernel_size
            total += kh * kw * layer.input.shape[-1] * filters * height * width
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def _setup(variant: str, data, precision: str = "float32"):
    """The model and training stream exactly as ``siamese-keras train`` builds them."""
    import keras
    import tensorflow as tf

    from keras_siamese import experiment, models, streams
    from keras_siamese.config import TrainConfig
    from keras_siamese.splits import evaluation_sets
    from keras_siamese.variants import VARIANTS, NetSpec

    keras.backend.clear_session()
    config = TrainConfig(loss=VARIANTS[variant].loss, mining=VARIANTS[variant].mining,
                         precision=precision)
    sets = evaluation_sets(data, (), None, config.seed)
    x = sets.seen.train_images
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    batch = config.training_batch_size
    steps = streams.steps_per_epoch(len(x), batch)
    net = NetSpec(x.shape[1:], float(x.mean()), float(x.std()), data.num_classes)
    model = experiment.compiled_model(config, net, steps)
    embedding = models.embedding_of(model)
    train, _ = experiment.training_streams(config, sets.seen, 0)
    return config, embedding, model, train, batch


def training_speed(loss: str, data, steps: int, warmup: int = 20, windows: int = 3,
                   precision: str = "float32") -> dict:
    """Examples/s of the best of ``windows`` timed windows of ``steps // windows`` steps:
    the best, because other tenants of a shared machine only ever slow a window down."""
    config, embedding, model, train, batch = _setup(loss, data, precision)
    model.fit(train, epochs=1, steps_per_epoch=warmup, verbose=0)  # traces the step
    window = max(1, steps // windows)
    seconds = float("inf")
    for _ in range(windows):
        started = time.perf_counter()
        model.fit(train, epochs=1, steps_per_epoch=window, verbose=0)
        seconds = min(seconds, time.perf_counter() - started)
    examples = window * batch / seconds
    networks = ([model.get_layer("encoder"), model.get_layer("decoder")] if loss == "vae"
                else [embedding])
    return {"examples_per_s": examples,
            "images_per_s": examples * IMAGES_PER_EXAMPLE.get(loss, 1),
            "train_flop_per_image": 3 * 2 * sum(map(forward_multiply_adds, networks))}


def pass_seconds(network, input_gradient: bool, images: int = 256, repeats: int = 20) -> float:
    """Best seconds of ``network``'s forward and backward pass on a constant batch of
    ``images``: the gradients of every weight, and of the input if ``input_gradient``; no
    optimiser, no data pipeline, no Keras ``fit``."""
    import tensorflow as tf

    x = tf.random.uniform((images, *network.input_shape[1:]), 0, 255)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(network(x, training=True)))
        return tape.gradient(loss, ([x] if input_gradient else []) + network.trainable_weights)

    step()  # traces
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), step())
        best = min(best, time.perf_counter() - started)
    return best


def pass_ceilings(embedding, images: int = 256) -> list[dict]:
    """What bounds training: :func:`pass_seconds` of the embedding net, and of each of its
    conv and dense layers alone (a one-layer model at the input shape it has in the net).
    FLOP as training needs them: forward, weight gradient, and the input gradient for every
    layer but the first (backprop never needs the image's gradient)."""
    import keras

    rows, first = [], True
    for layer in embedding.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            alone = keras.Sequential([keras.Input(layer.input.shape[1:]),
                                      layer.__class__.from_config(layer.get_config())])
            passes = 2 if first else 3
            first = False
            flop = 2 * forward_multiply_adds(alone) * passes
            if flop > 1e6:  # not the 256 -> 2 embedding head
                rows.append({"part": layer.name, "flop_per_image": flop,
                             "seconds": pass_seconds(alone, passes == 3, images)})
    net_flop = sum(row["flop_per_image"] for row in rows)
    rows.insert(0, {"part": "embedding net", "flop_per_image": net_flop,
                    "seconds": pass_seconds(embedding, False, images)})
    for row in rows:
        row["gflops"] = row["flop_per_image"] * images / row["seconds"] / 1e9
    return rows


def stream_speed(loss: str, data, steps: int) -> float:
    """Examples/s of the training stream alone (sampling, gathering, batching)."""
    config, _, _, train, batch = _setup(loss, data)
    batches = iter(train)
    for _ in range(20):
        next(batches)
    started = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return steps * batch / (time.perf_counter() - started)


def epoch_seconds(data_dir, epochs: int, **options) -> float:
    """Seconds per epoch of a real contrastive MNIST run with these TrainConfig options."""
    import keras

    from keras_siamese import experiment
    from keras_siamese.config import TrainConfig

    keras.backend.clear_session()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(loss="contrastive", epochs=epochs, output_dir=f"{tmp}/out",
                             log_dir=f"{tmp}/logs", data_dir=data_dir, export=False,
                             **options)
        return experiment.run(config).metrics["seconds_per_epoch"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="timed training steps")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the callback runs")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each callback setting")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", default="output/benchmarks/train_speed.json")
    args = parser.parse_args()

    import keras_siamese  # noqa: F401
    from keras_siamese.data import load_dataset

    data = load_dataset("mnist")
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak: {peak:.0f} GFLOP/s on {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    rows = []
    for loss in args.models.split(","):
        row = {"model": loss, **training_speed(loss, data, args.steps)}
        row["gflops"] = row["images_per_s"] * row["train_flop_per_image"] / 1e9
        row["share_of_peak"] = row["gflops"] / peak
        row["stream_examples_per_s"] = stream_speed(loss, data, args.steps)
        row["stream_vs_training"] = row["stream_examples_per_s"] / row["examples_per_s"]
        rows.append(row)
        print(f"  {loss}: {row['examples_per_s']:.0f} examples/s, {row['gflops']:.0f} GFLOP/s "
              f"({row['share_of_peak']:.0%} of peak)", flush=True)

    settings = {"callbacks_off": {"frames": False, "projector": False}, "defaults": {},
                "defaults_eval_every_epoch": {"eval_every": 1}}
    epochs = {name: float("inf") for name in settings}
    for _ in range(args.repeats):  # interleaved, best of each: the machine's state drifts
        for name, options in settings.items():
            epochs[name] = min(epochs[name], epoch_seconds(None, args.epochs, **options))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _, embedding, *_ = _setup("contrastive", data)
    ceilings = pass_ceilings(embedding)

    print(f"\n{'model':<12} {'examples/s':>10} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8} "
          f"{'stream x':>9}")
    for row in rows:
        print(f"{row['model']:<12} {row['examples_per_s']:10.0f} {row['images_per_s']:9.0f} "
              f"{row['gflops']:8.0f} {row['share_of_peak']:8.0%} "
              f"{row['stream_vs_training']:8.1f}x")
    off = epochs["callbacks_off"]
    print(f"\ncontrastive MNIST, seconds per epoch ({args.epochs} epochs): callbacks off "
          f"{off:.2f}, defaults {epochs['defaults']:.2f} "
          f"(+{epochs['defaults'] / off - 1:.1%}), with --eval-every 1 "
          f"{epochs['defaults_eval_every_epoch']:.2f} "
          f"(+{epochs['defaults_eval_every_epoch'] / off - 1:.1%})")
    print(f"peak RSS {peak_rss:.0f} MiB; load average {os.getloadavg()[0]:.1f}")
    print("\nwhat bounds training: forward + backward of 256 images alone (no optimiser, "
          "no pipeline)")
    print(f"  {'part':<14} {'MFLOP/image':>11} {'ms':>6} {'GFLOP/s':>8} {'of peak':>8}")
    for row in ceilings:
        print(f"  {row['part']:<14} {row['flop_per_image'] / 1e6:11.2f} "
              f"{row['seconds'] * 1e3:6.1f} {row['gflops']:8.0f} {row['gflops'] / peak:8.0%}")

    result = {"matmul_peak_gflops": peak, "cpu_count": os.cpu_count(), "batch_size": 128,
              "steps": args.steps, "models": rows, "seconds_per_epoch": epochs,
              "peak_rss_mib": peak_rss, "pass_ceilings": ceilings,
              "command": " ".join(sys.argv)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
