"""``siamese-keras serve``: the real server in a child process on a free port of 127.0.0.1,
spoken to over HTTP with urllib, its answers set against the SavedModel run in-process."""

import base64
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from helpers import CLI, run_main
from keras_siamese import experiment, serving
from keras_siamese.config import TrainConfig

STARTUP_TIMEOUT_S = 300  # TensorFlow's import and an export, on two busy cores
MAX_BATCH = 8  # the module server's --max-batch-size


class Server:
    """``siamese-keras serve ARGS --port 0`` as a child process; ``url`` is the model's
    address from its start-up line, waited for (never a sleep)."""

    def __init__(self, *args):
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file: a full pipe would block it
        env = {**os.environ, "KERAS_SIAMESE_OFFLINE": "1"}
        self.process = subprocess.Popen([CLI, "serve", *map(str, args), "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.next_line(STARTUP_TIMEOUT_S)
        assert line is not None and line.startswith("serving "), (line, self.log())
        self.startup_line = line
        self.url = re.search(r"http://\S+", line).group(0)
        self.base = self.url.split("/v1/")[0]

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-5000:]

    def stop(self, number) -> int:
        """Send signal ``number`` to this process only; its exit code."""
        self.process.send_signal(number)
        return self.process.wait(timeout=120)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)


def call(url, body=None, method=None):
    """(status, headers, JSON answer) of one HTTP request; ``body``: bytes or a JSON value."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def png_b64(pixels: np.ndarray, size=None, mode="L", fmt="PNG") -> dict:
    image = Image.fromarray(np.asarray(pixels, np.uint8)[..., 0]).convert(mode)
    if size is not None:
        image = image.resize(size, Image.Resampling.BILINEAR)
    stream = io.BytesIO()
    image.save(stream, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return {"b64": base64.b64encode(stream.getvalue()).decode()}


def counters(server) -> dict:
    with urllib.request.urlopen(f"{server.base}/monitoring/prometheus/metrics") as response:
        text = response.read().decode()
    return {(m[1], m[0]): int(m[2]) for m in
            re.findall(r'siamese_serve_(\w+)_total\{signature="([^"]+)"\} (\d+)', text)}


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist):
    """One short real BCE run (every signature: same_probability too), an index of 200
    test digits, and the same export the server makes, in this process."""
    from keras_siamese.export import export_run
    from keras_siamese.gallery import read_gallery
    from keras_siamese.index import Index

    root = tmp_path_factory.mktemp("serve")
    config = TrainConfig(loss="bce", epochs=1, limit=600, frames=False, projector=False,
                         output_dir=str(root / "out"), log_dir=str(root / "logs"))
    run_dir = experiment.run(config).run_dir
    picked = np.concatenate([np.flatnonzero(mnist.y_test == d)[:20] for d in range(10)])
    np.save(root / "gallery.npy", mnist.x_test[picked])
    np.save(root / "labels.npy", mnist.y_test[picked])
    gallery = read_gallery(str(root / "gallery.npy"), (28, 28, 1), str(root / "labels.npy"))
    Index.build(run_dir, gallery).save(root / "index")
    exported = export_run(run_dir, root / "exported" / "1", index_dir=root / "index")
    return {"dir": run_dir, "index": root / "index", "exported": exported, "root": root}


@pytest.fixture(scope="module")
def saved_model(run):
    import tensorflow as tf

    return tf.saved_model.load(str(run["exported"])).signatures


@pytest.fixture(scope="module")
def server(run):
    """The run folder served with its index (so a fresh export into a temporary folder);
    a batch wait (200 ms) long enough that concurrent requests meet in a batch even on a
    busy machine, short enough that the single requests of the other tests stay quick."""
    started = Server(run["dir"], "--index", run["index"], "--max-batch-size", MAX_BATCH,
                     "--batch-wait-ms", 200)
    yield started
    started.kill()  # only if a test failed before stopping it


def in_process(saved_model, signature: str, **images) -> dict:
    import tensorflow as tf

    outputs = saved_model[signature](**{k: tf.constant(v, tf.float32) for k, v in images.items()})
    return {key: value.numpy() for key, value in outputs.items()}


def assert_same(served, expected: np.ndarray):
    served = np.asarray(served)
    if expected.dtype.kind in "fc":
        # Batched server-side, an image may meet other images in a batch: the last bits move.
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    elif expected.dtype.kind in "SO":
        assert served.tolist() == [v.decode() for v in expected.tolist()]
    else:
        np.testing.assert_array_equal(served, expected)


def test_start_up_line_status_and_metadata_follow_tensorflow_serving(server, run):
    assert server.startup_line.startswith(f"serving {run['dir'].name} at http://127.0.0.1:")
    assert server.url.endswith(f"/v1/models/{run['dir'].name}")
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}
    for url in (server.url, f"{server.url}/versions/1"):
        code, headers, answer = call(url)
        assert (code, answer) == (200, status)
        assert headers["content-type"] == "application/json"
    code, _, metadata = call(f"{server.url}/versions/1/metadata")
    assert code == 200
    assert metadata["model_spec"] == {"name": run["dir"].name, "signature_name": "",
                                      "version": "1"}
    defs = metadata["metadata"]["signature_def"]["signature_def"]
    assert defs == serving.signature_defs(run["exported"])  # the same export, in TF's words
    assert {"serving_default", "distance", "verify", "classify", "same_probability"} <= set(defs)
    image = defs["serving_default"]["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert defs["verify"]["outputs"]["same"]["dtype"] == "DT_BOOL"


def test_every_signature_answers_as_the_saved_model_does(server, saved_model, mnist):
    x = mnist.x_test[:6].astype(np.float32)
    y = mnist.x_test[6:12].astype(np.float32)
    pixels, others = x.tolist(), y.tolist()
    single = {"serving_default": "embedding", "classify": None}
    for signature in ("serving_default", "classify"):
        expected = in_process(saved_model, signature, image=x)
        # Row format: one image per instance, bare or named; columnar: the batch.
        rows = {"signature_name": signature,
                "instances": [p if i % 2 else {"image": p} for i, p in enumerate(pixels)]}
        code, _, answer = call(f"{server.url}:predict", rows)
        assert code == 200, answer
        if single[signature]:
            assert_same(answer["predictions"], expected[single[signature]])
        else:
            for key, value in expected.items():
                assert_same([row[key] for row in answer["predictions"]], value)
        code, _, answer = call(f"{server.url}:predict",
                               {"signature_name": signature, "inputs": {"image": pixels}})
        assert code == 200, answer
        outputs = answer["outputs"]
        for key, value in expected.items():
            assert_same(outputs if single[signature] else outputs[key], value)

    for signature in ("distance", "verify", "same_probability"):
        expected = in_process(saved_model, signature, first=x, second=y)
        code, _, answer = call(f"{server.url}:predict", {
            "signature_name": signature,
            "instances": [{"first": a, "second": b} for a, b in zip(pixels, others)]})
        assert code == 200, answer
        if len(expected) == 1:
            assert_same(answer["predictions"], next(iter(expected.values())))
        else:
            for key, value in expected.items():
                assert_same([row[key] for row in answer["predictions"]], value)
        code, _, answer = call(f"{server.url}/versions/1:predict", {
            "signature_name": signature, "inputs": {"first": pixels, "second": others}})
        assert code == 200, answer
        outputs = answer["outputs"]
        for key, value in expected.items():
            assert_same(outputs if len(expected) == 1 else outputs[key], value)


def test_b64_images_are_read_as_embed_reads_files(server, saved_model, mnist, tmp_path):
    from keras_siamese.image_folders import read_image

    x = mnist.x_test[20:24]
    instances = ([p.tolist() for p in x] + [p[..., 0].tolist() for p in x]  # (H, W) too
                 + [png_b64(p) for p in x] + [png_b64(p, mode="RGB") for p in x]
                 + [png_b64(p, size=(56, 56), fmt="JPEG") for p in x])
    code, _, answer = call(f"{server.url}:predict", {"instances": instances})
    assert code == 200, answer
    served = np.array(answer["predictions"], np.float32).reshape(5, 4, -1)
    # Pixel lists with or without the channel axis and lossless PNGs, gray or RGB: equal.
    for kind in range(1, 4):
        np.testing.assert_allclose(served[kind], served[0], rtol=1e-6, atol=1e-7)
    # The JPEG at twice the size meets embed's reader: the same pixels as that file read.
    files = []
    for i, item in enumerate(instances[16:]):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(base64.b64decode(item["b64"]))
        files.append(read_image(path, 28, 28, 1))
    expected = in_process(saved_model, "serving_default", image=np.stack(files))["embedding"]
    np.testing.assert_allclose(served[4], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(served[4] - served[0]).max() > 0  # it was resized, not passed through


def test_concurrent_single_image_requests_are_batched(server, saved_model, mnist):
    x = mnist.x_test[30:62].astype(np.float32)
    expected = in_process(saved_model, "serving_default", image=x)["embedding"]
    before = counters(server)
    with ThreadPoolExecutor(len(x)) as pool:
        answers = list(pool.map(lambda p: call(f"{server.url}:predict",
                                               {"instances": [p.tolist()]}), x))
    after = counters(server)
    assert [code for code, _, _ in answers] == [200] * len(x)
    served = np.array([answer["predictions"][0] for _, _, answer in answers])
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    requests, batches, rows = (after[("serving_default", what)] -
                               before[("serving_default", what)]
                               for what in ("requests", "batches", "rows"))
    assert requests == rows == len(x)
    assert len(x) / MAX_BATCH <= batches < len(x)  # batched, never beyond --max-batch-size


def _bad_requests(server, mnist, tmp_path):
    """(what, method, address, body, status, words of the error, or a tuple of the
    words of either error that may come)."""
    good = mnist.x_test[0].tolist()
    small = png_b64(mnist.x_test[0])
    Image.fromarray(mnist.x_test[1, ..., 0]).save(tmp_path / "digit.png")
    path = str(tmp_path / "digit.png")
    predict = f"{server.url}:predict"
    deep = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        ("malformed JSON", "POST", predict, b'{"instances": [[1, 2', 400, "malformed JSON"),
        # json stops at its recursion limit, orjson reads it and the image is refused
        ("JSON nested 100,000 deep", "POST", predict, deep, 400,
         ("nested too deeply", "not rectangular")),
        ("not an object", "POST", predict, [good], 400, "JSON object"),
        ("no instances", "POST", predict, {"signature_name": "serving_default"}, 400,
         '"instances"'),
        ("both formats", "POST", predict, {"instances": [good], "inputs": [good]}, 400,
         "not both"),
        ("wrong shape", "POST", predict, {"instances": [good[:27]]}, 400, "shape (27, 28, 1)"),
        ("ragged rows", "POST", predict, {"instances": [[[1, 2], [3]]]}, 400, "rectangular"),
        ("wrong dtype: strings", "POST", predict,
         {"instances": [[["x"] * 28] * 28]}, 400, "numbers"),
        ("wrong dtype: booleans", "POST", predict,
         {"instances": [[[True] * 28] * 28]}, 400, "numbers"),
        ("pixels above 255", "POST", predict, {"instances": [[[300] * 28] * 28]}, 400,
         "outside 0..255"),
        ("10,000 images", "POST", predict, {"instances": [small] * 10_000}, 400,
         "at most 1,000"),
        ("unknown signature", "POST", predict, {"signature_name": "nope",
                                                "instances": [good]}, 404, "'nope'"),
        ("unknown model: predict", "POST", f"{server.base}/v1/models/nope:predict",
         {"instances": [good]}, 404, "'nope'"),
        ("unknown model: status", "GET", f"{server.base}/v1/models/nope", None, 404, "'nope'"),
        ("unknown version", "GET", f"{server.url}/versions/7", None, 404, "version 7"),
        ("over-size body", "POST", predict, b'{"instances": [' + b"0," * (6 << 20) + b"0]}",
         413, "over the limit"),
        ("a file path for an image", "POST", predict, {"instances": [path]}, 400,
         "never opens files"),
        ("a file path for a named image", "POST", predict,
         {"signature_name": "verify", "instances": [{"first": good, "second": path}]}, 400,
         "instances[0].second: a string is not an image"),
        ("a file path as b64", "POST", predict,
         {"instances": [{"b64": base64.b64encode(path.encode()).decode()}]}, 400,
         "neither a PNG nor a JPEG"),
        ("not base64", "POST", predict, {"instances": [{"b64": "%%%"}]}, 400, "base64"),
        ("a damaged PNG", "POST", predict, {"instances": [{"b64": base64.b64encode(
            base64.b64decode(small["b64"])[:40]).decode()}]}, 400, "cannot read"),
        ("a pair signature given one image", "POST", predict,
         {"signature_name": "distance", "instances": [good]}, 400, "'first' and 'second'"),
        ("columns of different lengths", "POST", predict,
         {"signature_name": "distance", "inputs": {"first": [good, good], "second": [good]}},
         400, "same number"),
        ("GET on predict", "GET", predict, None, 405, "POST"),
        ("another API's method", "POST", f"{server.url}:regress", {"instances": [good]}, 404,
         ":predict"),
        ("an address outside the API", "GET", f"{server.base}/index.html", None, 404,
         "/v1/models/"),
    ]


def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(server, mnist, tmp_path):
    good = {"instances": [mnist.x_test[0].tolist()]}
    for what, method, url, body, status, words in _bad_requests(server, mnist, tmp_path):
        code, headers, answer = call(url, body, method)
        assert code == status, (what, code, answer)
        assert headers["content-type"] == "application/json", what
        words = (words,) if isinstance(words, str) else words
        assert list(answer) == ["error"], (what, answer)
        assert any(word in answer["error"] for word in words), (what, answer)
        assert "Traceback" not in answer["error"] and "\n" not in answer["error"], what
        code, _, answer = call(f"{server.url}:predict", good)
        assert code == 200 and len(answer["predictions"]) == 1, (what, answer)
    assert server.process.poll() is None
    assert "Traceback" not in server.log()


def test_a_saved_model_folder_is_served_and_ctrl_c_stops_it(run, saved_model, mnist):
    second = Server(run["exported"], "--name", "digits")
    try:
        assert second.url.endswith("/v1/models/digits")
        code, _, status = call(second.url)
        assert code == 200 and status["model_version_status"][0]["version"] == "1"
        x = mnist.x_test[40:44].astype(np.float32)
        code, _, answer = call(f"{second.url}/versions/1:predict",
                               {"signature_name": "classify", "inputs": x.tolist()})
        assert code == 200, answer
        for key, value in in_process(saved_model, "classify", image=x).items():
            assert_same(answer["outputs"][key], value)
        assert second.stop(signal.SIGINT) == 0, second.log()
        assert second.next_line(60) == "stopped"
        assert "Traceback" not in second.log()
    finally:
        second.kill()


def test_which_saved_model_a_run_folder_serves(run, tmp_path):
    from keras_siamese.export import export_run

    run_dir = run["dir"]
    # Training's own export has no verify: serving the run exports afresh...
    assert serving.stale_export(run_dir) == "its saved_model/ has no verify signature"
    export_run(run_dir)  # ...until siamese-keras export has written one with it
    assert serving.stale_export(run_dir) is None
    assert serving.saved_model_to_serve(run_dir) == (run_dir / "saved_model", None)
    model_time = os.stat(run_dir / "saved_model" / "saved_model.pb").st_mtime + 10
    os.utime(run_dir / "model.keras", (model_time, model_time))
    assert serving.stale_export(run_dir) == "its saved_model/ is older than model.keras"
    assert serving.default_name(run["exported"]) == "exported"  # TF Serving's base/1 layout
    assert serving.default_name(run_dir / "saved_model") == run_dir.name


def test_usage_errors_are_one_line(run, capsys, monkeypatch):
    code, lines = run_main(capsys, "serve", run["exported"], "--index", run["index"],
                           "--port", "0")
    assert code == 2 and len(lines) == 1 and "--index needs a run folder" in lines[0], lines
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = run_main(capsys, "serve", run["exported"], "--port", port)
    assert code == 2 and len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0]
    code, lines = run_main(capsys, "serve", run["exported"], "--name", "a/b", "--port", "0")
    assert code == 2 and lines == ["siamese-keras: error: --name 'a/b': use letters, digits, "
                                   "'.', '_' and '-' (it is part of every URL)"]
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the serve extra not installed
    code, lines = run_main(capsys, "serve", run["exported"], "--port", "0")
    assert (code, lines) == (1, ["siamese-keras: error: serve needs uvicorn and starlette: "
                                 "pip install 'keras-siamese[serve]'"])


def test_sigterm_stops_the_server_with_exit_code_0(server):
    assert server.stop(signal.SIGTERM) == 0, server.log()
    assert server.next_line(60) == "stopped"
    assert "Traceback" not in server.log()
