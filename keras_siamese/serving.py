"""Serve an exported SavedModel over HTTP with TensorFlow Serving's REST API.

``siamese-keras serve MODEL`` answers the requests that TensorFlow Serving's REST API
documents, so its clients and examples work unchanged here, and a user who outgrows one
machine moves the same SavedModel and the same requests to TensorFlow Serving:

- ``GET  /v1/models/NAME``: the model's status (``model_version_status``);
- ``GET  /v1/models/NAME/metadata``: its signatures with their inputs and outputs
  (``signature_def`` map, dtypes and shapes, as TensorFlow Serving writes them);
- ``POST /v1/models/NAME:predict`` with ``{"signature_name": ..., "instances": [...]}`` (row
  format, answered ``{"predictions": [...]}``) or ``{"inputs": ...}`` (columnar, answered
  ``{"outputs": ...}``). ``/versions/N`` may follow NAME.

Each image is a nested list of raw pixels ``[H][W][C]`` (``[H][W]`` for a one-channel model)
in 0..255, or ``{"b64": "..."}``: base64 PNG or JPEG bytes, converted and resized by the
reader of ``siamese-keras embed`` (:func:`keras_siamese.image_folders.read_image`). A
signature of two images (``distance``, ``verify``, ``same_probability``) takes instances
``{"first": ..., "second": ...}``. The signatures are those of the SavedModel
(:mod:`keras_siamese.export`): ``serving_default``, ``distance``, and ``verify``,
``classify`` and ``same_probability`` where it has them. Errors are ``{"error": "..."}``
with status 400 (a bad request), 404 (an unknown model, version, signature or address),
405 (a wrong method) or 413 (a body over the limit); a fault of the server is a 500 with
one line (the trace goes to the server's log), never a stack trace in the answer.
Counters per signature (requests, model calls, images) are at
``/monitoring/prometheus/metrics``, TensorFlow Serving's address for them.

Why these libraries: uvicorn is the reference ASGI server (HTTP/1.1 keep-alive, HTTP
parsing in C through httptools, graceful shutdown on SIGINT/SIGTERM), maintained with
Starlette by the Encode team and used under FastAPI in production; Starlette is the small
layer above it that we use for routing, requests and responses.
Both are asyncio, which is what batching needs: requests wait on futures while one batch
runs. A WSGI server (waitress) would give each request a thread and batching would need
locks and condition variables instead.

Batching (as TensorFlow Serving's batching session does): concurrent requests of one
signature are queued; a batch takes the waiting requests, up to ``max_batch_size`` images,
waiting at most ``batch_wait_ms`` for more when fewer are queued, and runs on the one
model thread, off the event loop, while the loop reads the next requests. The requests
that arrive while a batch runs make the next batch, so batches grow with the load without
any wait: the default wait is 0, which measured best here at every load (with 32 clients
the mean batch is about 16, two batches taking turns: one runs while the next is read; a
1 ms wait halved the requests per second of one client and gained nothing with 32).

Safe by default: it binds 127.0.0.1 (no authentication, no TLS: a wider ``host`` is the
user's explicit choice), refuses bodies over ``max_body_bytes``, requests over
``max_images`` images and connections beyond ``max_connections`` (503), never opens a path
that a request names (a string where an image is expected is a 400), decodes only PNG and
JPEG and only up to ``MAX_IMAGE_PIXELS``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import gc
import io
import json
import logging
import os
import re
import signal
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from keras_siamese.errors import ConfigError, DataError, MissingDependencyError

log = logging.getLogger(__name__)

try:  # JSON of pixel lists is most of a request's cost: orjson parses it twice as fast
    from orjson import dumps as _dumps, loads as _loads  # writes NaN as null
except ImportError:  # pragma: no cover  (the serve extra installs it)
    _loads = json.loads

    def _dumps(value) -> bytes:
        return json.dumps(value).encode()

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # a model name that needs no escaping in a URL
# /v1/models/ then NAME, an optional /versions/N (or /labels/L, which we refuse), then
# nothing (status), /metadata, or :predict (:classify and :regress are refused).
_ROUTE = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|"
                    r"/labels/(?P<label>[^/:]+))?(?P<action>/metadata|:[A-Za-z]+)?")
JPEG_SIGNATURE = b"\xff\xd8\xff"
MAX_IMAGE_PIXELS = 4096 * 4096  # a PNG of 10 KB can unpack to gigabytes: refuse before decoding
_INLINE_BODY_BYTES = 256 * 1024  # smaller bodies parse on the event loop (a thread hop costs more)
_DRAIN_BYTES = 64 * 1024 * 1024  # what an over-size body may still send before we answer 413


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """The server's limits; the defaults suit MNIST-sized models on a small machine."""

    max_batch_size: int = 64  # images per model call when requests are batched together
    batch_wait_ms: float = 0.0  # how long a batch that is not full waits for more requests
    max_images: int = 1000  # images in one request (pairs count twice)
    max_body_bytes: int = 10 * 1024 * 1024  # 1,000 MNIST digits as pixel lists fit
    max_connections: int = 256  # beyond it uvicorn answers 503: bounds memory per server


class RequestError(Exception):
    """A request the server refuses: ``status`` and a one-line message for ``{"error"}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _server_libraries():
    """uvicorn and starlette, or the one-line error naming the extra to install."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise MissingDependencyError("serve needs uvicorn and starlette: pip install "
                                     "'keras-siamese[serve]'") from None
    return uvicorn


def check_libraries() -> None:
    """Raise MissingDependencyError now, before a model is loaded, if the extra is missing."""
    _server_libraries()


# -- which SavedModel to serve --------------------------------------------------------------

def default_name(model) -> str:
    """The model's name in the URLs: a TensorFlow Serving version folder (``digits/1``) is
    named after its parent, an export of ours after its run, anything else after its folder;
    ``model`` (TensorFlow Serving's own default) when that name would need URL escaping."""
    from keras_siamese.export import export_origin

    path = Path(os.path.abspath(model))
    origin = export_origin(path) if (path / "saved_model.pb").is_file() else None
    if path.name.isdigit():
        name = path.parent.name
    elif origin:
        name = Path(origin).name
    else:
        name = path.name
    return name if re.fullmatch(NAME_PATTERN, name) else "model"


def stale_export(run_dir) -> str | None:
    """Why the run folder's own ``saved_model/`` cannot be served as it is, or None if it
    can: missing, older than ``model.keras`` or ``calibration.json`` (it would answer with
    an old model or threshold), or without ``verify`` although the run has a decision
    threshold (training exports before the run is scored; ``siamese-keras export`` adds it)."""
    from keras_siamese.run_folder import CALIBRATION, MODEL, SAVED_MODEL, decision_threshold
    from keras_siamese.errors import SiameseError

    run_dir = Path(run_dir)
    graph = run_dir / SAVED_MODEL / "saved_model.pb"
    if not graph.is_file():
        return f"it has no {SAVED_MODEL}/"
    exported = graph.stat().st_mtime
    for newer in (MODEL, CALIBRATION):
        if (run_dir / newer).is_file() and (run_dir / newer).stat().st_mtime > exported:
            return f"its {SAVED_MODEL}/ is older than {newer}"
    if "verify" not in signature_defs(run_dir / SAVED_MODEL):
        try:
            decision_threshold(run_dir)
        except SiameseError:
            return None  # no threshold: a new export would have no verify either
        return f"its {SAVED_MODEL}/ has no verify signature"
    return None


def saved_model_to_serve(model, index_dir=None, scratch=None) -> tuple[Path, str | None]:
    """The SavedModel folder to serve for ``model``, and why it was exported (None if not).

    ``model`` is an exported SavedModel folder (served as it is) or a run folder: its
    ``saved_model/`` when :func:`stale_export` finds nothing wrong with it, else a fresh
    export (:func:`keras_siamese.export.export_run`) into ``scratch``, a temporary folder
    the caller removes; the run folder itself is never written. ``index_dir`` (an index of
    the run, for ``classify``) always means a fresh export, which stores the index.
    """
    from keras_siamese.export import export_run
    from keras_siamese.image_folders import shown
    from keras_siamese.run_folder import MODEL, SAVED_MODEL

    path = Path(model)
    if (path / "saved_model.pb").is_file():
        if index_dir is not None:
            raise ConfigError(f"--index needs a run folder, and {shown(path)} is an exported "
                              "SavedModel: serve the run folder, or export it with "
                              "siamese-keras export RUN --index INDEX_DIR and serve that")
        return path, None
    if not (path / MODEL).is_file():
        raise ConfigError(f"{shown(path)}: neither a run folder (no {MODEL}) nor an exported "
                          "SavedModel folder (no saved_model.pb)")
    reason = "--index adds classify" if index_dir is not None else stale_export(path)
    if reason is None:
        return path / SAVED_MODEL, None
    if scratch is None:
        raise ValueError("a run folder that needs exporting needs a scratch folder")
    # "1": TensorFlow Serving's version-folder layout, for whoever looks at the folder.
    return export_run(path, Path(scratch) / "1", index_dir=index_dir), reason


def signature_defs(saved_model) -> dict:
    """The ``signature_def`` map of a SavedModel folder as TensorFlow Serving's metadata
    shows it (proto field names, default values written out, int64 as strings)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model) / "saved_model.pb").read_bytes())
    defs = proto.meta_graphs[0].signature_def
    try:
        return {name: json_format.MessageToDict(
            defs[name], preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True) for name in defs}
    except TypeError:  # protobuf before 5.26 named the option differently
        return {name: json_format.MessageToDict(
            defs[name], preserving_proto_field_name=True,
            including_default_value_fields=True) for name in defs}


# -- the loaded model ------------------------------------------------------------------------

class ServedModel:
    """A loaded SavedModel: its signatures that take images, their input image shape, the
    status and metadata answers, and ``run(signature, inputs)`` for the model thread."""

    def __init__(self, path, name: str):
        import tensorflow as tf

        path = Path(path)
        self.name = name
        # A TensorFlow Serving version folder ("digits/1") keeps its number; else 1.
        self.version = int(path.name) if path.name.isdigit() else 1
        try:
            self._loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as error:
            message = getattr(error, "message", None) or str(error)
            raise DataError(f"{path}: cannot load this SavedModel "
                            f"({message.strip().splitlines()[0]})") from None
        self.signatures = {}  # name -> concrete function, those whose inputs are images
        self.inputs = {}  # name -> {input name: (H, W, C)}
        for key, function in self._loaded.signatures.items():
            specs = function.structured_input_signature[1]
            shapes = {input_name: tuple(spec.shape[1:]) for input_name, spec in specs.items()
                      if spec.dtype == tf.float32 and spec.shape.rank == 4
                      and None not in spec.shape[1:]}
            if specs and len(shapes) == len(specs):
                self.signatures[key] = function
                self.inputs[key] = dict(sorted(shapes.items()))
        if "serving_default" not in self.signatures:
            raise DataError(f"{path}: no serving_default signature that takes images")
        self.metadata = {
            "model_spec": {"name": name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs(path)}},
        }
        self.status = {"model_version_status": [{
            "version": str(self.version), "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}

    def run(self, signature: str, inputs: dict) -> dict:
        """The signature's outputs for ``inputs`` (name -> float32 images), as NumPy arrays;
        in chunks of :func:`~keras_siamese.models.inference_batch_size` images, the rule of
        every other inference here, so a large request does not need gigabytes at once."""
        import tensorflow as tf

        from keras_siamese.models import inference_batch_size

        function = self.signatures[signature]
        rows = len(next(iter(inputs.values())))
        height, width, _ = next(iter(self.inputs[signature].values()))
        chunk = inference_batch_size(height, width)
        parts = []
        for start in range(0, rows, chunk):
            result = function(**{key: tf.constant(value[start:start + chunk])
                                 for key, value in inputs.items()})
            parts.append({key: value.numpy() for key, value in result.items()})
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def warm_up(self) -> None:
        """Call every signature once, so the first request does not pay for TensorFlow's
        first-call set-up."""
        for signature, shapes in self.inputs.items():
            self.run(signature, {key: np.zeros((1, *shape), np.float32)
                                 for key, shape in shapes.items()})


# -- reading a predict request ---------------------------------------------------------------

@dataclasses.dataclass
class Prediction:
    """A parsed predict request: the signature, its inputs (name -> float32 images, all of
    the same length ``rows``) and whether it came in columnar (``inputs``) format."""

    signature: str
    inputs: dict
    rows: int
    columnar: bool


def parse_predict(body: bytes, model: ServedModel, options: ServeOptions) -> Prediction:
    """The :class:`Prediction` in a ``:predict`` body, or a RequestError saying what is
    wrong with it."""
    try:
        request = _loads(body)
    except UnicodeDecodeError:
        raise RequestError("the body is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:  # orjson's error is one too
        raise RequestError(f"malformed JSON: {error}") from None
    except RecursionError:
        raise RequestError("malformed JSON: nested too deeply") from None
    if not isinstance(request, dict):
        raise RequestError('the body must be a JSON object: {"instances": [...]} or '
                           '{"inputs": ...}')
    signature = request.get("signature_name", "serving_default")
    if not isinstance(signature, str):
        raise RequestError("signature_name must be a string")
    if signature not in model.signatures:
        raise RequestError(f"no signature {signature!r} in this model; it has: "
                           f"{', '.join(sorted(model.signatures))}", 404)
    if ("instances" in request) == ("inputs" in request):
        raise RequestError('give either "instances" (row format) or "inputs" (columnar '
                           "format), not both" if "inputs" in request else
                           'give "instances" (row format) or "inputs" (columnar format)')
    shapes = model.inputs[signature]
    if "instances" in request:
        columns = _row_columns(request["instances"], list(shapes), options.max_images)
    else:
        columns = _named_columns(request["inputs"], list(shapes), "inputs")
    rows = {len(values) for values, _ in columns.values()}
    if len(rows) > 1:
        raise RequestError(f"inputs {' and '.join(shapes)} must hold the same number of "
                           "images")
    (count,) = rows
    if count == 0:
        raise RequestError("no images in the request")
    if count * len(shapes) > options.max_images:
        raise RequestError(f"{count * len(shapes):,} images in one request: at most "
                           f"{options.max_images:,} (send several requests)")
    inputs = {key: _images(values, where, shapes[key])
              for key, (values, where) in columns.items()}
    return Prediction(signature, inputs, count, "inputs" in request)


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _row_columns(instances, names: list[str], max_images: int) -> dict:
    """Row format: one instance per image (or pair), as name -> (values, where-function)."""
    if not isinstance(instances, list):
        raise RequestError('"instances" must be a list: one image (or one object of named '
                           "images) per instance")
    if len(instances) > max_images:  # before any work on them
        raise RequestError(f"{len(instances):,} images in one request: at most "
                           f"{max_images:,} (send several requests)")
    columns = {name: [] for name in names}
    for i, instance in enumerate(instances):
        if isinstance(instance, dict) and not _is_b64(instance):
            unknown = sorted(set(instance) - set(names))
            missing = [name for name in names if name not in instance]
            if unknown or missing:
                raise RequestError(f"instances[{i}]: " + (
                    f"unknown input {unknown[0]!r}" if unknown else f"no {missing[0]!r}") +
                    f"; this signature takes {', '.join(names)}")
            for name in names:
                columns[name].append(instance[name])
        elif len(names) == 1:
            columns[names[0]].append(instance)
        else:
            raise RequestError(f"instances[{i}]: give an object with "
                               f"{' and '.join(repr(n) for n in names)}, one image each")
    single = len(names) == 1
    return {name: (values, (lambda i, name=name: f"instances[{i}]" if single
                            else f"instances[{i}].{name}")) for name, values in columns.items()}


def _named_columns(inputs, names: list[str], where: str) -> dict:
    """Columnar format: a list of images per input name (the name may be left out when the
    signature has one input)."""
    if isinstance(inputs, dict) and not _is_b64(inputs):
        unknown = sorted(set(inputs) - set(names))
        missing = [name for name in names if name not in inputs]
        if unknown or missing:
            raise RequestError(f"{where}: " + (f"unknown input {unknown[0]!r}" if unknown else
                               f"no {missing[0]!r}") + f"; this signature takes "
                               f"{', '.join(names)}")
        columns = {name: (inputs[name], f"{where}.{name}") for name in names}
    elif len(names) == 1:
        columns = {names[0]: (inputs, where)}
    else:
        raise RequestError(f"{where}: give an object with {' and '.join(map(repr, names))}, "
                           "a list of images each")
    for name, (values, label) in columns.items():
        if not isinstance(values, list):
            raise RequestError(f"{label}: give a list of images (a batch), not a single value")
    return {name: (values, (lambda i, label=label: f"{label}[{i}]"))
            for name, (values, label) in columns.items()}


def _images(values: list, where: Callable[[int], str], shape: tuple) -> np.ndarray:
    """A list of images as float32 (N, H, W, C): pixel lists checked, b64 images decoded."""
    from keras_siamese.embed import check_pixels  # embed's rule and message for raw pixels

    if all(isinstance(value, list) for value in values):
        # The common case in one NumPy call; on any doubt image by image, for the message.
        with contextlib.suppress(ValueError, DataError):
            array = np.asarray(values)
            if array.dtype.kind in "iuf" and array.shape[1:] in _shapes(shape):
                array = array.reshape(len(values), *shape)
                check_pixels("the images", array)
                return array.astype(np.float32, copy=False)
    return np.stack([_image(value, where(i), shape) for i, value in enumerate(values)])


def _shapes(shape: tuple) -> list[tuple]:
    """The shapes an image of a model taking ``shape`` may have: (H, W, C), and (H, W) for
    a one-channel model (as ``embed`` reads (N, H, W) arrays)."""
    return [shape, shape[:2]] if shape[2] == 1 else [shape]


def _image(value, where: str, shape: tuple) -> np.ndarray:
    """One image: a nested list of pixels of exactly the model's shape, or {"b64": ...}."""
    from keras_siamese.embed import check_pixels

    if _is_b64(value):
        return _decode(value["b64"], where, shape)
    if isinstance(value, str):
        # Never a path: a server that opened files named by requests would serve its disk.
        raise RequestError(f"{where}: a string is not an image (this server never opens "
                           'files): send pixels as nested lists, or {"b64": "<base64 PNG '
                           'or JPEG bytes>"}')
    if not isinstance(value, list):
        got = {bool: "true/false", int: "a number", float: "a number", dict: "an object",
               type(None): "null"}.get(type(value), type(value).__name__)
        raise RequestError(f"{where}: an image is a nested list of pixels or "
                           f'{{"b64": "<base64 PNG or JPEG bytes>"}}, not {got}')
    try:
        array = np.asarray(value)
    except ValueError:
        raise RequestError(f"{where}: the pixel lists are not rectangular (rows of "
                           "different lengths)") from None
    if array.dtype.kind not in "iuf":
        kind = {"b": "true/false", "U": "strings", "O": "objects or numbers out of range"}
        raise RequestError(f"{where}: pixels must be numbers 0..255, got "
                           f"{kind.get(array.dtype.kind, array.dtype.name)}")
    if array.shape not in _shapes(shape):
        raise RequestError(f"{where}: an image of shape {array.shape}; the model takes "
                           f"{' or '.join(map(str, _shapes(shape)))} raw pixels 0..255 (or "
                           '{"b64": ...}, PNG/JPEG bytes of any size, resized)')
    array = array.reshape(shape)
    try:
        check_pixels(where, array)
    except DataError as error:
        raise RequestError(str(error)) from None
    return array.astype(np.float32, copy=False)


def _decode(text, where: str, shape: tuple) -> np.ndarray:
    """A ``{"b64"}`` image: PNG or JPEG bytes read by ``embed``'s reader, resized."""
    from PIL import Image

    from keras_siamese.image_folders import DECODE_ERRORS, PNG_SIGNATURE, decode_image

    if not isinstance(text, str):
        raise RequestError(f'{where}: "b64" must be a base64 string')
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # TensorFlow Serving also takes the URL-safe alphabet
            data = base64.b64decode(text, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: b64 is not valid base64") from None
    if not data.startswith((PNG_SIGNATURE, JPEG_SIGNATURE)):
        # Pillow reads dozens of formats; a server exposes only the two it documents
        raise RequestError(f"{where}: b64 holds neither a PNG nor a JPEG image")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except DECODE_ERRORS:
        raise RequestError(f"{where}: cannot read this image (damaged or truncated)") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise RequestError(f"{where}: a {width}x{height} image; at most "
                           f"{MAX_IMAGE_PIXELS:,} pixels")
    try:  # embed's reader: b64 images get exactly its conversion and checks
        pixels = decode_image(data, where, *shape)
    except DataError as error:
        raise RequestError(str(error)) from None
    return pixels.astype(np.float32)


# -- answers ---------------------------------------------------------------------------------

def _json_values(array: np.ndarray):
    """An output array as JSON values; strings as text, or ``{"b64"}`` when not UTF-8 (as
    TensorFlow Serving writes them)."""
    if array.dtype.kind not in "SO":
        return array.tolist()

    def text(value):
        if isinstance(value, list):
            return [text(item) for item in value]
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}

    return text(array.tolist())


def predict_answer(outputs: dict, columnar: bool) -> dict:
    """``{"predictions": ...}`` (row format: one value per image, or one object per image
    when there are several outputs) or ``{"outputs": ...}`` (columnar)."""
    columns = {key: _json_values(outputs[key]) for key in sorted(outputs)}
    if columnar:
        return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [dict(zip(columns, row)) for row in zip(*columns.values())]}


# -- batching --------------------------------------------------------------------------------

@dataclasses.dataclass
class _Waiting:
    inputs: dict
    rows: int
    future: asyncio.Future


class Batcher:
    """Concurrent requests of one signature, run together (see the module doc).

    ``run(inputs) -> outputs`` is called on ``executor``, one batch at a time; each request
    gets its own rows of the outputs back. If a batch of several requests fails, each is
    run again alone, so one bad request cannot fail the others.
    """

    def __init__(self, run: Callable[[dict], dict], executor: ThreadPoolExecutor,
                 max_batch_size: int, batch_wait_ms: float):
        self._run = run
        self._executor = executor
        self._max_rows = max_batch_size
        self._wait = batch_wait_ms / 1000
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.requests = self.batches = self.rows = 0  # counters for /monitoring

    async def predict(self, inputs: dict, rows: int) -> dict:
        if self._task is None:  # made on first use, inside the server's event loop
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._batches())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Waiting(inputs, rows, future))
        self.requests += 1
        return await future

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        carried = None
        while True:
            first = carried or await self._queue.get()
            batch, rows, carried = [first], first.rows, None
            deadline = loop.time() + self._wait
            while rows < self._max_rows:
                if self._queue.empty():
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        waiting = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                else:
                    waiting = self._queue.get_nowait()
                if rows + waiting.rows > self._max_rows:
                    carried = waiting  # starts the next batch
                    break
                batch.append(waiting)
                rows += waiting.rows
            await self._run_batch([w for w in batch if not w.future.done()])

    async def _run_batch(self, batch: list) -> None:
        if not batch:
            return
        loop = asyncio.get_running_loop()
        inputs = batch[0].inputs if len(batch) == 1 else {
            key: np.concatenate([w.inputs[key] for w in batch]) for key in batch[0].inputs}
        self.batches += 1
        self.rows += sum(w.rows for w in batch)
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, inputs)
        except Exception as error:  # noqa: BLE001  (handed to the waiting requests)
            if len(batch) > 1:
                for waiting in batch:
                    await self._run_batch([waiting])
            elif not batch[0].future.done():
                batch[0].future.set_exception(error)
            return
        start = 0
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_result({key: value[start:start + waiting.rows]
                                           for key, value in outputs.items()})
            start += waiting.rows

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the application -------------------------------------------------------------------------

def create_app(model: ServedModel, options: ServeOptions):
    """The ASGI application (Starlette) that answers TensorFlow Serving's REST API for
    ``model``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import Response
    from starlette.routing import Route

    model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")  # TF uses every core
    parse_threads = ThreadPoolExecutor(2, thread_name_prefix="parse")
    batchers = {signature: Batcher(lambda inputs, signature=signature:
                                   _run_checked(model, signature, inputs), model_thread,
                                   options.max_batch_size, options.batch_wait_ms)
                for signature in model.signatures}

    def answer(value, status: int = 200, headers=None) -> Response:
        return Response(_dumps(value), status, headers, media_type="application/json")

    def error(message: str, status: int, headers=None) -> Response:
        return answer({"error": message}, status, headers)

    async def models(request):
        try:
            return await _models(request)
        except RequestError as refused:
            close = {"connection": "close"} if refused.status == 413 else None
            return error(str(refused), refused.status, close)
        except Exception as failure:  # noqa: BLE001  (one line for the client, trace in the log)
            log.exception("serve: %s %s failed", request.method, request.url.path)
            return error(f"internal error ({type(failure).__name__}); the server log has "
                         "the details", 500)

    async def _models(request):
        match = _ROUTE.fullmatch(request.path_params["rest"])
        if match is None:
            raise RequestError(f"no such address: {request.url.path}; see "
                               f"/v1/models/{model.name}/metadata", 404)
        name, version, label, action = match.group("name", "version", "label", "action")
        if name != model.name:
            raise RequestError(f"no model {name!r} here; this server serves {model.name!r}",
                               404)
        if label is not None:
            raise RequestError(f"no version label {label!r}: this server serves version "
                               f"{model.version} of {model.name!r} (give /versions/"
                               f"{model.version} or no version)", 404)
        if version is not None and version != str(model.version):
            raise RequestError(f"no version {version} of {model.name!r}; this server serves "
                               f"version {model.version}", 404)
        if action in (None, "/metadata"):
            if request.method not in ("GET", "HEAD"):
                raise RequestError(f"{request.method} is not allowed here: use GET", 405)
            return answer(model.status if action is None else model.metadata)
        if action != ":predict":
            raise RequestError(f"{action} is not served: this server answers :predict "
                               '(the classify signature too: "signature_name": "classify")',
                               404)
        if request.method != "POST":
            raise RequestError(f"{request.method} is not allowed here: POST a JSON body", 405)
        body = await _read_body(request, options.max_body_bytes)
        if len(body) <= _INLINE_BODY_BYTES:
            prediction = parse_predict(body, model, options)
        else:  # JSON of 1,000 images takes tenths of a second: keep the loop answering
            prediction = await asyncio.get_running_loop().run_in_executor(
                parse_threads, parse_predict, body, model, options)
        outputs = await batchers[prediction.signature].predict(prediction.inputs,
                                                               prediction.rows)
        return answer(predict_answer(outputs, prediction.columnar))

    async def metrics(request):
        """Counters in Prometheus' text format, at TensorFlow Serving's address for them."""
        lines = []
        for what, help_text in (("requests", "predict requests"),
                                ("batches", "model calls"), ("rows", "images run")):
            lines += [f"# HELP siamese_serve_{what}_total {help_text} by signature",
                      f"# TYPE siamese_serve_{what}_total counter"]
            lines += [f'siamese_serve_{what}_total{{signature="{key}"}} '
                      f"{getattr(batcher, what)}" for key, batcher in batchers.items()]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def elsewhere(request):
        return error(f"no such address: {request.url.path}; the API is under "
                     f"/v1/models/{model.name}", 404)

    async def http_error(request, exc):
        return error(f"{exc.detail}: {request.method} {request.url.path}", exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for batcher in batchers.values():
            await batcher.close()
        model_thread.shutdown(wait=True)
        parse_threads.shutdown(wait=True)

    every = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    routes = [Route("/v1/models/{rest:path}", models, methods=every),
              Route("/monitoring/prometheus/metrics", metrics, methods=["GET"]),
              Route("/{rest:path}", elsewhere, methods=every)]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error})


def _run_checked(model: ServedModel, signature: str, inputs: dict) -> dict:
    """``model.run``, with TensorFlow's refusal of an input (its checks in the graph) as a
    400 that says what the signature expects, not as a server fault."""
    import tensorflow as tf

    try:
        return model.run(signature, inputs)
    except tf.errors.InvalidArgumentError as refused:
        raise RequestError(refused.message.strip().splitlines()[0]) from None


async def _read_body(request, limit: int) -> bytes:
    """The body, or RequestError 413 once it passes ``limit`` bytes. An over-size body is
    still read (and dropped) up to a bound, because a client that is still sending when the
    connection closes never reads the answer; then the connection is closed."""
    too_large = RequestError(f"the request body is over the limit of {limit:,} bytes: send "
                             "fewer images per request", 413)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError("Content-Length is not a number")
        if int(declared) > limit:
            if int(declared) <= limit + _DRAIN_BYTES:
                await _drain(request)
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request)
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request) -> None:
    """Read and drop what is left of the body, up to ``_DRAIN_BYTES``."""
    dropped = 0
    async for chunk in request.stream():
        dropped += len(chunk)
        if dropped > _DRAIN_BYTES:
            return


# -- running it ------------------------------------------------------------------------------

def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening (port 0: any free port), or a
    ConfigError that names the address; made before the server starts, so the start-up
    line can name the real port."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: "
                          f"{error.strerror or error}: choose another --port or --host") \
            from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model, host: str = "127.0.0.1", port: int = 8501, name: str | None = None,
          index_dir=None, options: ServeOptions = ServeOptions(),
          on_ready: Callable[[str, ServedModel], None] | None = None) -> None:
    """Serve ``model`` (a run folder or an exported SavedModel folder, see
    :func:`saved_model_to_serve`) until SIGINT or SIGTERM, then return normally.

    ``on_ready(url, served_model)`` is called once the socket is listening and the model
    answers; ``url`` is the model's address (``http://HOST:PORT/v1/models/NAME``).
    """
    uvicorn = _server_libraries()
    name = name or default_name(model)
    if not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' "
                          "(it is part of every URL)")
    # Bound first, so a port in use fails at once rather than after a minute of export;
    # a client that connects meanwhile waits in the backlog until the model is ready.
    sock = listening_socket(host, port)
    address = f"{url_of(sock)}/v1/models/{name}"
    with sock, tempfile.TemporaryDirectory(prefix="siamese-serve-") as work:
        path, reason = saved_model_to_serve(model, index_dir, Path(work) / "export")
        if reason is not None:
            log.info("serving a fresh export of %s (%s), in a temporary folder removed at "
                     "exit", model, reason)
        served = ServedModel(path, name)
        served.warm_up()
        app = create_app(served, options)

        stopped_early = []  # SIGINT/SIGTERM before uvicorn has its own handlers

        class Server(uvicorn.Server):
            async def startup(self, sockets=None):
                await super().startup(sockets=sockets)
                if stopped_early:
                    self.should_exit = True
                elif self.started and not self.should_exit and on_ready is not None:
                    on_ready(address, served)

        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                                lifespan="on", server_header=False,
                                limit_concurrency=options.max_connections,
                                timeout_graceful_shutdown=10)
        # uvicorn stops on SIGINT/SIGTERM, then raises the signal again to the handler it
        # found, so that a plain script dies of it. Serving has stopped cleanly by then: the
        # handler it finds only takes note, so this returns and the command exits 0.
        main = threading.current_thread() is threading.main_thread()  # only it has signals
        previous = {number: signal.signal(number, lambda signum, frame:
                                          stopped_early.append(signum))
                    for number in (signal.SIGINT, signal.SIGTERM) if main}
        # TensorFlow holds millions of Python objects; every request makes hundreds (its
        # JSON), so the collector's full passes kept walking TensorFlow's: 0.2 to 0.5 s
        # stalls and half the throughput (measured). Objects alive now are never garbage.
        gc.collect()
        gc.freeze()
        try:
            Server(config).run(sockets=[sock])
        finally:
            gc.unfreeze()
            for number, handler in previous.items():
                signal.signal(number, handler)
