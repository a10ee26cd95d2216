"""Refuse a run up front when it cannot fit in memory, instead of being killed midway.

Linux over-commits memory: a run that needs more than the machine has is not told so by
an allocation error but killed by the kernel, without a word, often minutes in. So a run
estimates what it will hold before it loads or trains, and stops with one line when that
exceeds the memory available now (``MemAvailable``, or a smaller container limit).

The estimates are deliberately rough upper-side figures:

- images: ``count * height * width * channels`` bytes (uint8), as they are held in memory;
- training: every layer output of the embedding net, for every image of a step, kept for
  back-propagation with its gradient and two temporaries (4 x 4 bytes per value), plus the
  weights with their gradients and Adam's two moments (4 x 4 bytes per weight).

Checked against a real run: 512 x 512 MNIST pairs at ``--batch-size 8`` (16 images a step)
grew by about 9 GiB once training (resident 18.6 GiB), where 3 x 4 bytes per value gives
9.1 GiB; 4 x 4 (10.8 GiB) leaves a margin for what that sample missed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from keras_siamese.errors import ConfigError, OutOfMemoryError

GIB = 1024**3


def available_bytes() -> int | None:
    """Memory this process can still take: ``MemAvailable`` of ``/proc/meminfo``, lowered
    to what a cgroup (v2 or v1) limit leaves; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                found.append(int(limit) - int(Path(usage_file).read_text()))
        except (OSError, ValueError):
            continue
    return min(found) if found else None


IMAGE_BUDGET_ENV = "KERAS_SIAMESE_IMAGE_MEMORY"
# Decoded images may take this share of the memory available: training needs the rest.
IMAGE_SHARE = 0.5


def image_budget() -> float:
    """Bytes of decoded images a run may hold in memory; a class folder that needs more
    streams from disk (:mod:`image_cache`). ``$KERAS_SIAMESE_IMAGE_MEMORY`` (bytes) sets
    it; else half of :func:`available_bytes` (unlimited where that is unknown)."""
    given = os.environ.get(IMAGE_BUDGET_ENV)
    if given:
        try:
            return float(int(given))
        except ValueError:
            raise ConfigError(f"{IMAGE_BUDGET_ENV}={given!r}: give a number of bytes") \
                from None
    available = available_bytes()
    return math.inf if available is None else available * IMAGE_SHARE


def image_bytes(count: int, height: int, width: int, channels: int) -> int:
    return count * height * width * channels


def training_bytes(embedding, images_per_step: int) -> int:
    """Rough peak of a training step: see the module doc."""
    values_per_image = sum(math.prod(d for d in tensor.shape[1:] if d)
                           for layer in _layers(embedding) for tensor in _outputs(layer))
    weights = sum(math.prod(w.shape) for w in embedding.weights)
    return images_per_step * values_per_image * 4 * 4 + weights * 4 * 4


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model or block
            yield from _layers(layer)
        else:
            yield layer


def _outputs(layer) -> list:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # a layer that was never called symbolically
        return []
    return list(output) if isinstance(output, (list, tuple)) else [output]


def require(needed: int, what: str, advice: str) -> None:
    """OutOfMemoryError when ``needed`` bytes exceed what is available."""
    available = available_bytes()
    if available is not None and needed > available:
        raise OutOfMemoryError(f"{what} needs about {needed / GIB:.1f} GiB of memory and "
                               f"{available / GIB:.1f} GiB are available: {advice}")
