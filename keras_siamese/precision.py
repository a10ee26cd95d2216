"""The numeric precision a model trains and runs in: ``--precision``.

``float32`` is plain single precision. ``bfloat16`` and ``float16`` are Keras' mixed
precision policies (``mixed_bfloat16``, ``mixed_float16``): every layer keeps its weights
in float32 and computes in the 16-bit type, which halves the memory traffic and, on
hardware with 16-bit arithmetic, doubles the multiply rate (on a CPU with AVX512_BF16,
``benchmarks/compare_pytorch.py`` measures the gain; the README gives it). ``float16``
has too few exponent bits for gradients, so Keras scales the loss (``LossScaleOptimizer``,
added by ``compile``); bfloat16 has float32's exponent range and needs no scaling.

What stays float32 whatever the policy (see :data:`keras_siamese.models.OUTPUT_DTYPE`): the
embedding layer and everything after it (the unit normalisation, distances, the BCE and
softmax heads, the class vectors, the cross-batch memory, the VAE's posterior and
logits), so losses, distances, metrics and the exported model's outputs are float32: a
16-bit embedding would keep only 3 significant digits, too coarse to rank neighbours.

``auto`` picks float16 where TensorFlow sees a GPU, bfloat16 on a CPU that has bfloat16
arithmetic (AVX512_BF16 or AMX), float32 otherwise, and the run records what it picked,
so ``--resume`` and a rerun elsewhere use the same policy.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import keras

log = logging.getLogger(__name__)

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
CHOICES = (*POLICIES, "auto")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names of bfloat16 arithmetic


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no such file)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def gpus() -> list:
    """TensorFlow's GPUs (listing them does not start TensorFlow's runtime)."""
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def resolve(choice: str) -> str:
    """The precision ``choice`` means on this machine: ``auto`` becomes float16 with a GPU,
    bfloat16 on a CPU with bfloat16 arithmetic, else float32; other choices stay. Logs
    what it picked, and warns where a 16-bit type has no hardware to run on."""
    has_gpu = bool(gpus())
    has_bf16 = bool(cpu_flags() & set(BF16_CPU_FLAGS))
    if choice == "auto":
        picked = "float16" if has_gpu else "bfloat16" if has_bf16 else "float32"
        why = ("a GPU is visible" if has_gpu else "this CPU has bfloat16 arithmetic"
               if has_bf16 else "no GPU and no bfloat16 arithmetic on this CPU")
        log.info("--precision auto: %s (%s)", picked, why)
        return picked
    if not has_gpu and (choice == "float16" or (choice == "bfloat16" and not has_bf16)):
        log.warning("--precision %s: this machine has no %s arithmetic (no GPU%s), so it is "
                    "emulated and slower than float32", choice, choice,
                    "" if choice == "float16" else ", no AVX512_BF16 or AMX")
    return choice


@contextlib.contextmanager
def building_in(precision: str):
    """Layers made inside take ``precision``'s Keras policy; the previous global policy
    comes back afterwards, so one run's choice never leaks into the next run of a process
    (``reproduce``). Layers keep the policy they were made with, and so do saved models."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def computes_in_float32(model: keras.Model) -> bool:
    """Whether every layer of ``model`` (nested models included) computes in float32."""
    def layers(layer):
        yield layer
        for inner in getattr(layer, "layers", ()):
            yield from layers(inner)

    return all(layer.dtype_policy.compute_dtype == "float32" for layer in layers(model))


def float32_twin(model: keras.Model) -> keras.Model:
    """``model`` if it computes in float32; else the same net with the same weights, every
    layer computing in float32. ONNX and LiteRT run float32 kernels on CPUs (onnxruntime
    cannot even load a graph that mixes float16 and bfloat16), so a 16-bit run is exported
    as this twin."""
    if computes_in_float32(model):
        return model

    def float32_policies(value):
        if isinstance(value, dict):
            if value.get("class_name") == "DTypePolicy" and "config" in value:
                return {**value, "config": {**value["config"], "name": "float32"}}
            return {key: float32_policies(item) for key, item in value.items()}
        if isinstance(value, list):
            return [float32_policies(item) for item in value]
        return value

    twin = model.__class__.from_config(float32_policies(model.get_config()))
    twin.set_weights(model.get_weights())
    return twin
