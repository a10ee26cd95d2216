"""Training speed against PyTorch, in one run: prints a table, writes JSON.

    python benchmarks/compare_pytorch.py [--steps 300] [--models contrastive,triplet,
        triplet-batch-all] [--precisions float32,auto] [--json PATH]

Needs PyTorch: ``pip install -e ".[bench]" --extra-index-url
https://download.pytorch.org/whl/cpu`` (its CPU wheel).

For each model it trains, on real MNIST, for ``--steps`` steps after a warm-up:

1. PyTorch: the study's network (Bielski's siamese-triplet EmbeddingNet: conv 32 5x5,
   PReLU, max-pool, conv 64 5x5, PReLU, max-pool, dense 256, PReLU, dense 256, PReLU,
   dense 2), its losses and Adam at 1e-3, written here from scratch in plain PyTorch, with
   the batch our run uses and the examples drawn as ours are (pairs half positive,
   triplets, P x K = 8 x 16 batches with batch-all triplet mining). The sampling is
   vectorised tensor code, not the reference's per-item Python ``Dataset``: this measures
   the framework, not a data loader;
2. ours: the model, loss and ``tf.data`` stream exactly as ``siamese-keras train`` builds
   them (``benchmarks/train_speed.py``), once per ``--precisions`` entry;
3. PyTorch again, so a machine that got busier or quieter during the run shows: the
   ratio uses the mean of the two PyTorch windows, and both are printed.

Samples/s are pairs, triplets or images per second. The ratio is ours over PyTorch's.
The achieved GFLOP/s of ours (counted FLOPs of the embedding net, 3 x forward for a
training step) is printed as a share of TensorFlow's own float32 4096 x 4096 matmul,
measured at the start and at the end of the run (the mean is used). Torch uses all cores
(``torch.get_num_threads()``), as TensorFlow does. The load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import matmul_peak_gflops, training_speed  # noqa: E402

MODELS = ("contrastive", "triplet", "triplet-batch-all")
MARGIN = 1.0
BATCH = 128  # ours: --batch-size for pairs and triplets, P x K = 8 x 16 for online mining
P, K = 8, 16


def torch_modules():
    try:
        import torch
    except ImportError:
        raise SystemExit('PyTorch is missing: pip install -e ".[bench]" --extra-index-url '
                         "https://download.pytorch.org/whl/cpu") from None
    return torch


def embedding_net(torch, mean: float, std: float):
    """The study's EmbeddingNet (2-D output), normalisation inside like ours."""
    nn = torch.nn

    class EmbeddingNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.convnet = nn.Sequential(
                nn.Conv2d(1, 32, 5), nn.PReLU(), nn.MaxPool2d(2, stride=2),
                nn.Conv2d(32, 64, 5), nn.PReLU(), nn.MaxPool2d(2, stride=2))
            self.fc = nn.Sequential(nn.Linear(64 * 4 * 4, 256), nn.PReLU(),
                                    nn.Linear(256, 256), nn.PReLU(), nn.Linear(256, 2))

        def forward(self, x):
            x = (x - mean) / std
            return self.fc(self.convnet(x).flatten(1))

    return EmbeddingNet()


def torch_speed(model: str, images: np.ndarray, labels: np.ndarray, steps: int,
                warmup: int = 20) -> float:
    """Samples/s of ``steps`` PyTorch training steps of ``model`` after ``warmup``."""
    torch = torch_modules()
    torch.manual_seed(0)
    x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    net = embedding_net(torch, float(images.mean()), float(images.std()))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    classes = [torch.nonzero(y == c).flatten() for c in range(int(y.max()) + 1)]
    count = torch.tensor([len(c) for c in classes])
    generator = torch.Generator().manual_seed(0)

    def same_class(anchors):
        """A random image of each anchor's class."""
        c = y[anchors]
        pick = (torch.rand(len(c), generator=generator) * count[c]).long()
        return torch.stack([classes[int(k)][int(i)] for k, i in zip(c, pick)])

    def other_class(anchors):
        """A random image of another class than each anchor's."""
        while True:
            others = torch.randint(len(y), (len(anchors),), generator=generator)
            clash = y[others] == y[anchors]
            if not clash.any():
                return others
            others[clash] = other_class(anchors[clash])
            return others

    def step():
        if model == "contrastive":
            a = torch.randint(len(y), (BATCH,), generator=generator)
            same = (torch.arange(BATCH) % 2 == 0)
            b = torch.where(same, same_class(a), other_class(a))
            d2 = (net(x[a]) - net(x[b])).pow(2).sum(1)
            d = (d2 + 1e-9).sqrt()
            target = same.float()
            loss = 0.5 * (target * d2 + (1 - target) * torch.relu(MARGIN - d).pow(2)).mean()
        elif model == "triplet":
            a = torch.randint(len(y), (BATCH,), generator=generator)
            e_a, e_p, e_n = net(x[a]), net(x[same_class(a)]), net(x[other_class(a)])
            loss = torch.relu((e_a - e_p).pow(2).sum(1) - (e_a - e_n).pow(2).sum(1)
                              + MARGIN).mean()
        else:  # batch-all triplet mining on a P x K batch
            picked = torch.randperm(len(classes), generator=generator)[:P]
            index = torch.cat([classes[int(c)][torch.randint(len(classes[int(c)]), (K,),
                                                             generator=generator)]
                               for c in picked])
            e, labels_ = net(x[index]), y[index]
            d2 = torch.cdist(e, e).pow(2)
            same = labels_[:, None] == labels_[None, :]
            eye = torch.eye(len(index), dtype=torch.bool)
            valid = ((same & ~eye)[:, :, None] & ~same[:, None, :])
            losses = torch.relu(d2[:, :, None] - d2[:, None, :] + MARGIN)[valid]
            positive = losses[losses > 1e-16]
            loss = positive.mean() if len(positive) else losses.sum() * 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precisions", default="float32,auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch = torch_modules()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from keras_siamese import precision
    from keras_siamese.data import load_dataset

    data = load_dataset("mnist")
    precisions = [precision.resolve(p) for p in args.precisions.split(",")]
    peak_before = matmul_peak_gflops()
    print(f"TensorFlow float32 matmul: {peak_before:.0f} GFLOP/s; torch threads "
          f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for model in args.models.split(","):
        before = torch_speed(model, data.x_train, data.y_train, args.steps)
        print(f"  {model:<18} PyTorch float32: {before:7.0f} samples/s", flush=True)
        ours = {}
        for chosen in precisions:
            measured = training_speed(model, data, args.steps, precision=chosen)
            ours[chosen] = measured
            print(f"  {model:<18} ours {chosen:<9}: {measured['examples_per_s']:7.0f} "
                  f"samples/s", flush=True)
        after = torch_speed(model, data.x_train, data.y_train, args.steps)
        print(f"  {model:<18} PyTorch float32: {after:7.0f} samples/s (again)", flush=True)
        rows.append({"model": model, "pytorch": [before, after], "ours": ours})
    peak_after = matmul_peak_gflops()
    peak = (peak_before + peak_after) / 2

    print()
    header = " | ".join(f"ours {p} | ratio" for p in precisions)
    print(f"| model | PyTorch samples/s (before, after) | {header} | "
          f"ours float32 share of TF matmul |")
    print("|---|---|" + "---|---|" * len(precisions) + "---|")
    for row in rows:
        reference = float(np.mean(row["pytorch"]))
        cells = []
        for chosen in precisions:
            measured = row["ours"][chosen]
            measured["ratio"] = measured["examples_per_s"] / reference
            cells.append(f"{measured['examples_per_s']:.0f} | {measured['ratio']:.2f}x")
        first = row["ours"][precisions[0]]
        share = first["images_per_s"] * first["train_flop_per_image"] / 1e9 / peak
        row["share_of_matmul_peak"] = share
        print(f"| {row['model']} | {reference:.0f} ({row['pytorch'][0]:.0f}, "
              f"{row['pytorch'][1]:.0f}) | {' | '.join(cells)} | {share:.0%} |")
    print(f"\nTensorFlow float32 matmul {peak_before:.0f} GFLOP/s at the start, "
          f"{peak_after:.0f} at the end; load average at the end "
          f"{os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "matmul_gflops": [peak_before, peak_after],
             "precisions": precisions, "steps": args.steps}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
