"""ONNX and LiteRT exports (issue 17): each file, run by its own runtime on real MNIST test
images, gives the Keras model's embeddings; bad requests are one line and write nothing.

Needs the ``onnx`` and ``litert`` extras (tf2onnx, onnx, onnxruntime, ai-edge-litert),
which the ``test`` extra installs; skipped only where they are missing.
"""

import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import assert_refused, file_hashes, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")
pytest.importorskip("ai_edge_litert")

# Runs in a fresh interpreter with onnxruntime and numpy only: a client of the ONNX file
# needs neither this package nor TensorFlow.
ONNX_ALONE = """
import json, sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
(image,), (embedding,) = session.get_inputs(), session.get_outputs()
out = session.run(["embedding"], {"image": np.load(sys.argv[2])})[0]
print(json.dumps({
    "input": [image.name, image.shape, image.type], "output": [embedding.name, embedding.shape],
    "embedding": out.tolist(),
    "imported": sorted({name.split(".")[0] for name in sys.modules} & {"keras_siamese",
                       "tensorflow", "keras", "tf2onnx"}),
}))
"""

DIFFERENCE = re.compile(r"max \|difference\| from the Keras model (\S+) on (\d+) test images")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short real contrastive run on an MNIST slice (600 training images, the full
    10,000 test images)."""
    root = tmp_path_factory.mktemp("export_formats")
    result = run_cli("train", "--loss", "contrastive", "--epochs", "1", "--limit", "600",
                     "--no-frames", "--no-projector", "--no-export", "--output-dir",
                     root / "out", "--log-dir", root / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out" / "contrastive_mnist"


@pytest.fixture(scope="module")
def embedding(run):
    from keras_siamese.run_folder import load_embedding

    return load_embedding(run)


def keras_embeddings(embedding, images):
    from keras_siamese.models import embed_images

    return embed_images(embedding, images)


def export_here(capsys, *args) -> tuple[int, list[str], list[str]]:
    """``siamese-keras export ARGS`` in this process (no TensorFlow start-up per call): the
    exit code and its stdout and stderr lines; its signal handlers are undone."""
    from keras_siamese.cli.main import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(["export", *map(str, args)])
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def measured(line: str) -> tuple[float, int]:
    difference, images = DIFFERENCE.search(line).groups()
    return float(difference), int(images)


def test_onnx_export_runs_in_onnxruntime_alone(run, embedding, mnist, tmp_path):
    result = run_cli("export", run, "--format", "onnx")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"ONNX: {run / 'model.onnx'}  (") and "MiB" in line, line
    difference, images = measured(line)
    assert difference <= 1e-4 and images == 1024 and "within 0.0001" in line

    # A client with onnxruntime only, on test images the export check did not use.
    x = mnist.x_test[-48:].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    alone = subprocess.run([sys.executable, "-c", ONNX_ALONE, str(run / "model.onnx"),
                            str(tmp_path / "x.npy")], capture_output=True, text=True,
                           timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    served = json.loads(alone.stdout.strip().splitlines()[-1])
    assert served["imported"] == []
    assert served["input"] == ["image", ["batch", 28, 28, 1], "tensor(float)"]
    assert served["output"] == ["embedding", ["batch", 2]]
    assert np.abs(np.array(served["embedding"]) - keras_embeddings(embedding, x)).max() <= 1e-4


def test_litert_float32_and_quantized_exports(run, embedding, mnist, capsys):
    from ai_edge_litert.interpreter import Interpreter

    x = mnist.x_test[-48:].astype(np.float32)
    expected = keras_embeddings(embedding, x)
    sizes = {}
    for quantize, name in [(None, "model.tflite"), ("float16", "model_float16.tflite"),
                           ("dynamic-int8", "model_dynamic_int8.tflite")]:
        code, out, err = export_here(capsys, run, "--format", "litert",
                                     *(["--quantize", quantize] if quantize else []))
        assert code == 0, err
        assert out[0].startswith(f"LiteRT ({quantize or 'float32'}): {run / name}  ("), out
        difference, _ = measured(out[0])
        sizes[name] = (run / name).stat().st_size

        # The file on its own, through the LiteRT interpreter's signature.
        runner = Interpreter(model_path=str(run / name)).get_signature_runner("serving_default")
        got = runner(image=x)["embedding"]
        assert got.shape == expected.shape
        if quantize is None:
            assert out == [out[0]] and "within 0.0001" in out[0]
            assert difference <= 1e-4 and np.abs(got - expected).max() <= 1e-4
            continue
        # Quantized: a small difference, and the P@1 / MAP@R it costs, printed.
        scale = np.abs(expected).max()
        assert 0 < difference < 0.05 * scale and np.abs(got - expected).max() < 0.05 * scale
        quality = re.fullmatch(r"test-set quality, Keras -> export: P@1 (\S+) -> (\S+) \((.+)\), "
                               r"MAP@R (\S+) -> (\S+) \((.+)\)", out[1])
        assert quality, out
        p1_keras, p1_export, _, map_keras, map_export, _ = quality.groups()
        metrics = json.loads((run / "metrics.json").read_text())
        assert float(p1_keras) == round(metrics["precision_at_1"], 4)  # metrics.json's figure
        assert float(map_keras) == round(metrics["map_at_r"], 4)
        assert abs(float(p1_keras) - float(p1_export)) <= 0.02
        assert abs(float(map_keras) - float(map_export)) <= 0.02
    assert sizes["model_float16.tflite"] < 0.6 * sizes["model.tflite"]
    assert sizes["model_dynamic_int8.tflite"] < 0.35 * sizes["model.tflite"]


def test_an_export_replaces_its_own_earlier_file_and_a_foreign_one_only_with_overwrite(
        run, capsys, tmp_path):
    target = tmp_path / "served" / "digits.onnx"
    for _ in range(2):  # the second replaces the first: it records the run it came from
        code, out, err = export_here(capsys, run, "--format", "onnx", "--out", target)
        assert code == 0, err
        assert out[0].startswith(f"ONNX: {target}  (")
    assert sorted(p.name for p in target.parent.iterdir()) == ["digits.onnx"]  # no temp files

    foreign = tmp_path / "theirs.tflite"
    foreign.write_bytes(b"someone else's model")
    code, _, err = export_here(capsys, run, "--format", "litert", "--out", foreign)
    assert code == 2 and foreign.read_bytes() == b"someone else's model", err
    code, _, err = export_here(capsys, run, "--format", "litert", "--out", foreign,
                               "--overwrite")
    assert code == 0, err
    assert foreign.read_bytes()[4:8] == b"TFL3"  # a LiteRT flatbuffer now


def test_bad_exports_are_one_line_and_write_nothing(run, capsys, tmp_path, monkeypatch):
    import tensorflow as tf

    from keras_siamese import export_formats

    (tmp_path / "notes.onnx").write_text("my notes")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "index").mkdir()
    cases = [
        ("--quantize with onnx", 2, ["--format", "onnx", "--quantize", "float16"],
         "--quantize is for --format litert only (onnx exports are float32)"),
        ("--quantize with the SavedModel", 2, ["--quantize", "dynamic-int8"],
         "--quantize is for --format litert only (saved_model exports are float32)"),
        ("--index with litert", 2, ["--format", "litert", "--index", tmp_path / "index"],
         "--index adds the classify signature of a SavedModel"),
        ("an existing unrelated file", 2, ["--format", "onnx", "--out", tmp_path / "notes.onnx"],
         f"--out {tmp_path / 'notes.onnx'} exists and is not an earlier export of this run: "
         "choose a new file name, or pass --overwrite to replace it"),
        ("a file of another kind", 2, ["--format", "onnx", "--out", tmp_path / "notes.txt",
                                        "--overwrite"],
         f"--out {tmp_path / 'notes.txt'}: give a .onnx file name for --format onnx"),
        ("the run's own model", 2, ["--format", "litert", "--out", run / "model.keras",
                                     "--overwrite"],
         f"--out {run / 'model.keras'}: give a .tflite file name for --format litert"),
        ("a folder", 2, ["--format", "onnx", "--out", tmp_path / "folder.onnx"],
         f"--out {tmp_path / 'folder.onnx'} is a folder"),
    ]
    before = file_hashes(run, tmp_path)
    for what, code, args, message in cases:
        got, out, err = export_here(capsys, run, *args)
        assert (got, out) == (code, []), (what, err)
        assert len(err) == 1 and err[0].startswith(f"siamese-keras: error: {message}"), (what, err)
        assert file_hashes(run, tmp_path) == before, what

    # A missing extra names the pip install, before anything is loaded or written.
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "tf2onnx", None)  # makes `import tf2onnx` fail
        assert export_here(capsys, run, "--format", "onnx")[::2] == (1, [
            "siamese-keras: error: --format onnx needs tf2onnx, onnx and onnxruntime: "
            "pip install tf2onnx onnx onnxruntime"])
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ai_edge_litert", None)
        patch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
        patch.delattr(tf.lite, "Interpreter")
        assert export_here(capsys, run, "--format", "litert")[::2] == (1, [
            "siamese-keras: error: --format litert needs the LiteRT interpreter to check the "
            "export: pip install ai-edge-litert"])

    # An export its runtime does not reproduce within 1e-4 (times the largest |embedding|)
    # is refused and never written.
    call = export_formats.OnnxRuntime.__call__
    with monkeypatch.context() as patch:
        patch.setattr(export_formats.OnnxRuntime, "__call__",
                      lambda self, images: call(self, images) + np.float32(1.0))
        got, out, err = export_here(capsys, run, "--format", "onnx", "--out",
                                    tmp_path / "off.onnx")
    assert (got, out, len(err)) == (1, [], 1), err
    assert re.fullmatch(r"siamese-keras: error: the onnx export of \S+ differs from the Keras "
                        r"model by up to 1 on 1024 test images \(more than 0\.0001( x "
                        r"\S+, the largest \|embedding\|)?\): not written", err[0]), err
    assert file_hashes(run, tmp_path) == before


def test_quantize_with_onnx_through_the_console_script(run):
    """The same refusal as a user meets it: one line, exit 2, no traceback."""
    before = file_hashes(run)
    result = run_cli("export", run, "--format", "onnx", "--quantize", "float16")
    assert_refused(result, 2, "--quantize is for --format litert only")
    assert file_hashes(run) == before
