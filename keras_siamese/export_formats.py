"""Export a run's embedding net as an ONNX or a LiteRT (TFLite) file, checked by its own runtime.

``siamese-keras export RUN --format onnx|litert [--quantize float16|dynamic-int8]``. The file
holds the same computation as the SavedModel's ``serving_default``
(:mod:`keras_siamese.export`): raw pixels float32 ``[batch, H, W, C]`` in 0..255 (the
normalisation is inside), one input ``image``, one output ``embedding`` ``[batch, D]``, any
batch size. Unlike the SavedModel it does not check its images (ONNX and the LiteRT
built-in ops have no assertions): a client sends raw pixels 0..255 of the model's size.

- ONNX: the net as a frozen TensorFlow graph converted by tf2onnx (opset 15, which every
  current ONNX runtime reads). Not Keras' own ``Model.export(format="onnx")``: Keras 3.15
  hands tf2onnx the traced function with its captured constants, so the normalisation's
  mean and variance become two extra required inputs of the ONNX graph
  (``embedding_1/normalize_1/Sub/y:0``...) that a client would have to feed. Here the
  constants are frozen into the graph first and only ``image`` is an input.
- LiteRT: ``tf.lite.TFLiteConverter`` (what Keras' ``export(format="litert")`` uses), in
  float32, or with post-training quantization: ``float16`` (weights stored as float16,
  computed in float32) or ``dynamic-int8`` (weights stored as int8, activations
  quantized on the fly; no calibration data needed).

Each file is checked before it takes its name: the runtime a client would use (onnxruntime;
the LiteRT interpreter, ``ai_edge_litert`` or else ``tf.lite.Interpreter``) embeds
:data:`CHECK_IMAGES` real test images of the run's dataset and the result is compared with
the Keras model's. A float32 export differing by more than :data:`TOLERANCE` (max absolute
difference; relative to the largest |embedding| where that is above 1, since float32
round-off grows with the values) is not written. A quantized one is expected to differ;
its quality is measured instead: P@1 (test queries against the run's training images)
and MAP@R (leave-one-out on the test set) of the quantized and of the Keras embeddings,
exactly as ``metrics.json`` computes them (:mod:`keras_siamese.metrics`).

ONNX and LiteRT files compute in float32: a run trained in bfloat16 or float16
(``--precision``) is exported with the same weights computing in float32, checked
against that float32 net, and the largest difference from the 16-bit model is reported.

The file records the run it came from (ONNX ``metadata_props``, a LiteRT metadata entry,
key :data:`ORIGIN_KEY`), so exporting the run again replaces its own earlier file, while
any other existing file is replaced only with ``overwrite``.

The converters and runtimes are optional extras (``pip install tf2onnx onnx onnxruntime``,
``pip install ai-edge-litert``); they are imported only when an export needs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from keras_siamese import models, precision
from keras_siamese.errors import ConfigError, DataError, MissingDependencyError, OutputError
from keras_siamese.outputs import atomic_path

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "onnx", "litert")
QUANTIZATIONS = ("float16", "dynamic-int8")
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}
# The max |difference| allowed between a float32 export and the Keras model, for
# embeddings of unit scale; for larger ones, relative to the largest |embedding| (float32
# round-off grows with the values: a 2-epoch softmax run with values up to 44 differs by
# 1.5e-5, and longer runs grow their embeddings further).
TOLERANCE = 1e-4
CHECK_IMAGES = 1024  # test images compared when an export is written
ORIGIN_KEY = "keras_siamese.run"  # the run folder an export file came from
ONNX_OPSET = 15
_ORIGIN_MAX_BYTES = 2**30  # a larger file is not read to find its origin: not ours


def _onnx_modules():
    """``(tf2onnx, onnx, onnxruntime)``, or MissingDependencyError naming the install."""
    try:
        import onnx
        import onnxruntime
        import tf2onnx
    except ImportError:
        raise MissingDependencyError("--format onnx needs tf2onnx, onnx and onnxruntime: "
                                     "pip install tf2onnx onnx onnxruntime") from None
    return tf2onnx, onnx, onnxruntime


def _litert_interpreter():
    """What makes a LiteRT interpreter (``Interpreter(model_path=...)``): ``ai_edge_litert``'s,
    else TensorFlow's own (which TensorFlow marks deprecated in its favour), or
    MissingDependencyError."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    import tensorflow as tf

    interpreter = getattr(tf.lite, "Interpreter", None)
    if interpreter is None:
        raise MissingDependencyError("--format litert needs the LiteRT interpreter to check "
                                     "the export: pip install ai-edge-litert")

    def deprecated_interpreter(**options):
        # One line instead of TensorFlow's five-line deprecation warning per interpreter.
        log.warning("checking with TensorFlow's deprecated tf.lite.Interpreter; for the "
                    "LiteRT one: pip install ai-edge-litert")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            return interpreter(**options)

    return deprecated_interpreter


def require(fmt: str) -> None:
    """MissingDependencyError now, before any work, if exporting ``fmt`` cannot work here."""
    if fmt == "onnx":
        _onnx_modules()
    elif fmt == "litert":
        _litert_interpreter()


def check_options(fmt: str, quantize: str | None) -> None:
    """ConfigError for a format or quantization that does not exist or does not combine."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize {quantize}: choose from {', '.join(QUANTIZATIONS)}")
    if quantize is not None and fmt != "litert":
        raise ConfigError(f"--quantize is for --format litert only ({fmt} exports are "
                          "float32)")


def default_path(run_dir, fmt: str, quantize: str | None = None) -> Path:
    """``RUN/model.onnx``, ``RUN/model.tflite``, ``RUN/model_float16.tflite``,
    ``RUN/model_dynamic_int8.tflite``: one name per kind, so they do not replace each other."""
    tag = f"_{quantize.replace('-', '_')}" if quantize else ""
    return Path(run_dir) / f"model{tag}{SUFFIXES[fmt]}"


# --- writing -------------------------------------------------------------------------


def _serving_function(embedding):
    """The concrete function ``image -> {"embedding": ...}`` both converters start from:
    the SavedModel's ``serving_default`` without its input checks."""
    import tensorflow as tf

    shape = embedding.input_shape[1:]

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="image")])
    def serve(image):
        return {"embedding": embedding(image, training=False)}

    return serve.get_concrete_function()


@contextlib.contextmanager
def _quiet_converters():
    """tf2onnx logs each step at INFO and TensorFlow a deprecation WARNING for the freezing
    API tf2onnx calls: not the user's concern while the export is checked anyway."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_onnx(embedding, path, origin=None) -> Path:
    """Write ``embedding`` (a Keras embedding net) as an ONNX file at ``path``:
    ``image`` float32 ``[batch, H, W, C]`` -> ``embedding`` ``[batch, D]``."""
    tf2onnx, onnx, _ = _onnx_modules()
    import tf2onnx.tf_loader

    serve = _serving_function(embedding)
    # The first input is the image; the others are the captured weights and normalisation
    # constants, which freezing turns into constants (see the module doc).
    inputs = [serve.inputs[0].name]
    outputs = [tensor.name for tensor in serve.outputs]
    with _quiet_converters():
        graph = tf2onnx.tf_loader.from_function(serve, inputs, outputs)
        proto, _ = tf2onnx.convert.from_graph_def(
            graph, name="embedding", input_names=inputs, output_names=outputs,
            opset=ONNX_OPSET, tensors_to_rename={inputs[0]: "image", outputs[0]: "embedding"})
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # not tf2onnx's "unk__60"
    if origin is not None:
        onnx.helper.set_model_props(proto, {ORIGIN_KEY: str(origin)})
    onnx.save(proto, str(path))
    return Path(path)


def write_litert(embedding, path, quantize: str | None = None, origin=None) -> Path:
    """Write ``embedding`` as a LiteRT flatbuffer at ``path``, float32 or quantized
    (``float16``, ``dynamic-int8``); signature ``serving_default``: ``image`` ->
    ``embedding``."""
    import tensorflow as tf

    check_options("litert", quantize)
    # The converter saves the function with the object that tracks its variables: the
    # TensorFlow variables inside the Keras ones (handing it the Keras model instead
    # gives a file without weights, whose embeddings are NaN).
    holder = tf.Module()
    holder.weights = [variable.value for variable in embedding.variables]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_serving_function(embedding)],
                                                                holder)
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # without data: dynamic range
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
    with _quiet_converters():
        flatbuffer = converter.convert()
    if origin is not None:
        flatbuffer = _with_litert_origin(flatbuffer, str(origin))
    Path(path).write_bytes(flatbuffer)
    return Path(path)


def _with_litert_origin(flatbuffer: bytes, origin: str) -> bytes:
    """The model with a metadata entry :data:`ORIGIN_KEY` holding ``{"run": origin}`` (the
    place the LiteRT schema keeps such facts; the interpreter ignores unknown entries)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps({"run": origin}).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = ORIGIN_KEY, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def file_origin(path) -> str | None:
    """The run folder an ONNX or LiteRT file came from, or None (not one of ours, not
    readable, not a model at all)."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > _ORIGIN_MAX_BYTES:
            return None
        if path.suffix == ".onnx":
            import onnx

            props = onnx.load(str(path), load_external_data=False).metadata_props
            return next((p.value for p in props if p.key == ORIGIN_KEY), None)
        if path.suffix == ".tflite":
            from tensorflow.lite.tools import flatbuffer_utils

            model = flatbuffer_utils.convert_bytearray_to_object(bytearray(path.read_bytes()))
            for entry in model.metadata or []:
                name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
                if name == ORIGIN_KEY:
                    data = model.buffers[entry.buffer].data
                    return json.loads(bytes(np.asarray(data, np.uint8)).decode())["run"]
    except Exception:  # noqa: BLE001  any file we cannot parse is simply not ours
        return None
    return None


def check_file_target(run_dir, out, fmt: str, quantize: str | None, overwrite: bool) -> Path:
    """``out`` (absolute) if writing the export file there destroys nothing the user did
    not ask to: it has the format's suffix (so it is never ``model.keras``, a run's JSON or
    a user's image); it is not a folder, nor below a file; an existing file is replaced only
    when it is this run's default export file or records this run as its origin, or with
    ``overwrite``."""
    run_dir, out = Path(run_dir).absolute(), Path(out).absolute()
    suffix = SUFFIXES[fmt]
    if out.suffix != suffix:
        raise ConfigError(f"--out {out}: give a {suffix} file name for --format {fmt}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a file name such as "
                          f"{out / default_path('', fmt, quantize)}")
    blocking = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"--out {out}: {blocking} is a file, not a folder")
    ours = out in {default_path(run_dir, fmt, q) for q in (None, *QUANTIZATIONS)
                   if fmt == "litert" or q is None} or file_origin(out) == str(run_dir)
    if (out.exists() or out.is_symlink()) and not overwrite and not ours:
        raise ConfigError(f"--out {out} exists and is not an earlier export of this run: "
                          "choose a new file name, or pass --overwrite to replace it")
    return out


# --- running and checking -------------------------------------------------------------


class OnnxRuntime:
    """An ONNX export run by onnxruntime: ``runtime(images) -> embeddings``."""

    def __init__(self, path):
        _, _, onnxruntime = _onnx_modules()
        self._session = onnxruntime.InferenceSession(str(path),
                                                     providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: images})[0]


class LiteRTRuntime:
    """A LiteRT export run by the LiteRT interpreter through its ``serving_default``
    signature (which resizes the input to each batch): ``runtime(images) -> embeddings``."""

    def __init__(self, path):
        self._run = _litert_interpreter()(model_path=str(path)).get_signature_runner(
            "serving_default")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._run(image=images)["embedding"]


RUNTIMES = {"onnx": OnnxRuntime, "litert": LiteRTRuntime}


def embed_with(runtime, images: np.ndarray) -> np.ndarray:
    """Embeddings of raw-pixel ``images`` (N, H, W, C) by any ``runtime(batch)``, in
    batches of :func:`models.inference_batch_size` like the Keras model's."""
    batch = models.inference_batch_size(*images.shape[1:3])
    parts = [np.asarray(runtime(np.ascontiguousarray(images[i:i + batch], np.float32)))
             for i in range(0, len(images), batch)]
    return np.concatenate(parts)


def retrieval_quality(train_embeddings, train_labels, test_embeddings, test_labels) -> dict:
    """P@1 (test queries against training references) and MAP@R (leave-one-out on the
    test set), as ``metrics.json`` has them (:func:`metrics.embedding_metrics`)."""
    from keras_siamese.metrics import map_at_r, precision_at_1

    return {"precision_at_1": precision_at_1(test_embeddings, test_labels, train_embeddings,
                                             train_labels),
            "map_at_r": map_at_r(test_embeddings, test_labels)}


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """What checking an export file measured.

    ``max_difference``: the largest absolute difference between its embeddings and the
    Keras model's over ``images`` test images; ``scale``: the largest absolute value of the
    Keras model's embeddings there. ``quality`` (quantized exports):
    ``{"keras": {...}, "export": {...}}``, each with ``precision_at_1`` and ``map_at_r``.
    The Keras model computes in float32: for a run trained in 16 bits (``--precision``) it
    is the run's net made to compute in float32 (:func:`precision.float32_twin`), and
    ``from_16_bit`` is the largest difference between the two on the same images.
    """

    path: Path
    fmt: str
    quantize: str | None
    size: int
    images: int
    max_difference: float
    scale: float
    quality: dict | None = None
    from_16_bit: float | None = None

    @property
    def allowed(self) -> str:
        """The bound :attr:`within_tolerance` applies, in words."""
        return f"{TOLERANCE:g}" + (f" x {self.scale:.3g}, the largest |embedding|"
                                   if self.scale > 1 else "")

    @property
    def within_tolerance(self) -> bool:
        """Whether ``max_difference <= TOLERANCE * max(1, scale)`` (False for NaN)."""
        return bool(self.max_difference <= TOLERANCE * max(1.0, self.scale))


def check_export(embedding, runtime, split, quality: bool, path, fmt: str,
                 quantize: str | None = None) -> ExportCheck:
    """Compare ``runtime`` (an export of ``embedding``) with the Keras model on the first
    :data:`CHECK_IMAGES` test images of ``split`` (:class:`splits.Split`), and with
    ``quality`` also P@1 and MAP@R on the whole split."""
    count = min(CHECK_IMAGES, len(split.test_images))
    # With quality, the whole test set is embedded anyway: its first images are compared.
    images = split.test_images if quality else split.test_images[:count]
    keras_test, export_test = models.embed_images(embedding, images), embed_with(runtime, images)
    expected = keras_test[:count]
    difference = np.abs(export_test[:count] - expected)
    measured = None
    if quality:
        measured = {
            "keras": retrieval_quality(models.embed_images(embedding, split.train_images),
                                       split.train_labels, keras_test, split.test_labels),
            "export": retrieval_quality(embed_with(runtime, split.train_images),
                                        split.train_labels, export_test, split.test_labels)}
    biggest = float(difference.max()) if difference.size and np.isfinite(difference).all() \
        else float("nan")
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return ExportCheck(Path(path), fmt, quantize, Path(path).stat().st_size, count, biggest,
                       scale, measured)


def run_split(run_dir):
    """The seen-class split a run is scored on (its test images as queries, the training
    images it used as references), from its ``config.json``."""
    from keras_siamese.run_folder import read_config, run_sets

    config, recorded = read_config(run_dir)
    return run_sets(config, recorded, "checking the export on it would not describe the "
                    "model's test data")[1].seen


def export_file(run_dir, fmt: str, out=None, overwrite: bool = False,
                quantize: str | None = None) -> ExportCheck:
    """Export the finished run in ``run_dir`` as an ``onnx`` or ``litert`` file at ``out``
    (default :func:`default_path`), checked as the module doc says: the file appears only
    once it passed, replacing an earlier one only as :func:`check_file_target` allows.
    OutputError when a float32 export differs by more than :data:`TOLERANCE` (times the
    largest |embedding| where that is above 1)."""
    from keras_siamese.run_folder import load_embedding
    from keras_siamese.run_lock import RunLock

    check_options(fmt, quantize)
    if fmt not in SUFFIXES:
        raise ConfigError(f"--format {fmt} is not a single-file export: use "
                          "keras_siamese.export.export_run")
    require(fmt)  # before loading anything
    run_dir = Path(run_dir).absolute()
    target = check_file_target(run_dir, out if out is not None else
                               default_path(run_dir, fmt, quantize), fmt, quantize, overwrite)
    with RunLock(run_dir, "exporting", writes=target.parent == run_dir):
        trained = load_embedding(run_dir)
        embedding = precision.float32_twin(trained)  # what these runtimes compute in
        try:
            split = run_split(run_dir)
        except DataError as error:  # say why an export needs the data at all
            raise DataError(f"cannot check the export on the run's test images: {error}") \
                from error
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                if fmt == "onnx":
                    write_onnx(embedding, tmp, run_dir)
                else:
                    write_litert(embedding, tmp, quantize, run_dir)
                check = check_export(embedding, RUNTIMES[fmt](tmp), split, quantize is not None,
                                     tmp, fmt, quantize)
                if not np.isfinite(check.max_difference):  # quantized or not: broken
                    raise OutputError(f"the {fmt} export of {run_dir} gives NaN or infinite "
                                      "embeddings on the run's test images: not written")
                if quantize is None and not check.within_tolerance:
                    raise OutputError(
                        f"the {fmt} export of {run_dir} differs from the Keras model by up to "
                        f"{check.max_difference:.3g} on {check.images} test images (more than "
                        f"{check.allowed}): not written")
        except OSError as error:
            raise OutputError(f"cannot write {target}: {error.strerror or error}") from error
        if embedding is not trained:  # how far float32 arithmetic moves a 16-bit run
            images = split.test_images[:check.images]
            check = dataclasses.replace(check, from_16_bit=float(np.abs(
                models.embed_images(trained, images) -
                models.embed_images(embedding, images)).max()))
    return dataclasses.replace(check, path=target)


def describe(check: ExportCheck) -> list[str]:
    """Lines for the user: the file, its size and the measured difference; for a quantized
    export also the P@1 and MAP@R of the Keras model and of the export."""
    kind = {"onnx": "ONNX", "litert": "LiteRT"}[check.fmt] + (
        f" ({check.quantize})" if check.quantize else " (float32)" if check.fmt == "litert"
        else "")
    verdict = f"within {check.allowed}" if check.within_tolerance else "quantized"
    lines = [f"{kind}: {check.path}  ({check.size / 2**20:.2f} MiB; max |difference| from the "
             f"Keras model {check.max_difference:.3g} on {check.images} test images, "
             f"{verdict})"]
    if check.quality is not None:
        keras_, export = check.quality["keras"], check.quality["export"]
        parts = [f"{label} {keras_[key]:.4f} -> {export[key]:.4f} "
                 f"({_change(keras_[key] - export[key])})"
                 for label, key in (("P@1", "precision_at_1"), ("MAP@R", "map_at_r"))]
        lines.append("test-set quality, Keras -> export: " + ", ".join(parts))
    if check.from_16_bit is not None:
        lines.append(f"the run computes in 16 bits, this file in float32 (same weights): max "
                     f"|difference| from the 16-bit model {check.from_16_bit:.3g}")
    return lines


def _change(drop: float) -> str:
    """``drop 0.0012``, ``gain 0.0010`` or ``unchanged`` at four decimals."""
    shown = f"{abs(drop):.4f}"
    return "unchanged" if float(shown) == 0 else f"{'drop' if drop > 0 else 'gain'} {shown}"
