"""``--precision``: 16-bit training whose embeddings, reloads and exports stay float32."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import assert_refused, run_cli

from keras_siamese import precision

# A fresh interpreter, as a later user's: reload the run, embed through our code and through
# the SavedModel, and say what each layer computes in.
RELOAD = """
import json, sys
import numpy as np
import tensorflow as tf
import keras
import keras_siamese
from keras_siamese import models
from keras_siamese.data import load_dataset
run = sys.argv[1]
model = keras.models.load_model(run + "/model.keras", compile=False)
embedding = models.embedding_of(model)
x = load_dataset("mnist").x_test[:64].astype("float32")
ours = models.embed_images(embedding, x)
served = tf.saved_model.load(run + "/saved_model").signatures["serving_default"](
    image=tf.constant(x))["embedding"].numpy()
print(json.dumps({
    "global": keras.config.dtype_policy().name,
    "policies": {layer.name: layer.dtype_policy.name for layer in embedding.layers},
    "heads": {layer.name: layer.dtype_policy.name for layer in model.layers},
    "dtypes": [str(ours.dtype), str(served.dtype)],
    "max_difference": float(np.abs(ours - served).max()),
    "finite": bool(np.isfinite(ours).all()),
}))
"""


def train(root, *args):
    result = run_cli("train", "--epochs", "1", "--limit", "600", "--no-frames",
                     "--no-projector", "--output-dir", root / "out", "--log-dir",
                     root / "logs", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def bfloat16_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bfloat16")
    train(root, "--loss", "contrastive", "--precision", "bfloat16")
    return root / "out" / "contrastive_mnist"


def test_a_bfloat16_run_computes_in_bfloat16_and_answers_in_float32(bfloat16_run):
    config = json.loads((bfloat16_run / "config.json").read_text())
    assert config["precision"] == "bfloat16"
    metrics = json.loads((bfloat16_run / "metrics.json").read_text())
    assert 0 < metrics["precision_at_1"] <= 1 and 0 < metrics["map_at_r"] <= 1

    result = subprocess.run([sys.executable, "-c", RELOAD, str(bfloat16_run)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert reloaded["global"] == "float32"  # loading a 16-bit model changes nothing else
    assert reloaded["policies"]["conv1"] == "mixed_bfloat16"
    assert reloaded["policies"]["fc2"] == "mixed_bfloat16"
    assert reloaded["policies"]["fc_embedding"] == "float32"
    assert reloaded["heads"]["distance"] == "float32"
    assert reloaded["dtypes"] == ["float32", "float32"]
    assert reloaded["finite"]
    # Our embed and the SavedModel run the same graph in the same precision: identical.
    assert reloaded["max_difference"] == 0.0


def test_onnx_export_of_a_bfloat16_run_computes_in_float32(bfloat16_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    result = run_cli("export", bfloat16_run, "--format", "onnx", "--out",
                     tmp_path / "digits.onnx")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "within 0.0001" in result.stdout, result.stdout
    line = next(line for line in result.stdout.splitlines() if "16 bits" in line)
    difference = float(line.rsplit(" ", 1)[1])
    # bfloat16 keeps 8 significant bits: the float32 file differs, but only by that much.
    assert 0 < difference < 0.05, line
    assert (tmp_path / "digits.onnx").is_file()


@pytest.mark.parametrize("loss", ["softmax", "vae"])
def test_heads_of_other_models_train_in_bfloat16(loss, tmp_path):
    train(tmp_path, "--loss", loss, "--precision", "bfloat16", "--no-export")
    metrics = json.loads((tmp_path / "out" / f"{loss}_mnist" / "metrics.json").read_text())
    assert np.isfinite(metrics["precision_at_1"]) and metrics["precision_at_1"] > 0.2


def test_auto_is_recorded_as_what_it_picked(tmp_path):
    train(tmp_path, "--loss", "contrastive", "--precision", "auto", "--no-export")
    config = json.loads((tmp_path / "out" / "contrastive_mnist" / "config.json").read_text())
    assert config["precision"] == precision.resolve("auto") != "auto"


def test_an_unknown_precision_is_a_usage_error(tmp_path):
    result = run_cli("train", "--precision", "half", "--output-dir", tmp_path)
    assert_refused(result, 2, "half")
    assert not any(tmp_path.iterdir())


def test_auto_picks_float16_on_a_gpu_bfloat16_on_a_bfloat16_cpu_else_float32(monkeypatch):
    monkeypatch.setattr(precision, "gpus", lambda: ["GPU:0"])
    assert precision.resolve("auto") == "float16"
    monkeypatch.setattr(precision, "gpus", lambda: [])
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision.resolve("auto") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert precision.resolve("auto") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert precision.resolve("auto") == "float32"
    assert precision.resolve("bfloat16") == "bfloat16"  # a choice stays (with a warning)


def test_cpu_flags_reads_linux_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t\t: x\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_building_in_restores_the_global_policy_even_after_an_error():
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError):
        with precision.building_in("bfloat16"):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            raise RuntimeError("a build that fails")
    assert keras.config.dtype_policy().name == before


def test_float32_twin_has_the_weights_and_computes_in_float32():
    from keras_siamese import models

    with precision.building_in("bfloat16"):
        net = models.embedding_net((28, 28, 1), 4)
    assert not precision.computes_in_float32(net)
    twin = precision.float32_twin(net)
    assert precision.computes_in_float32(twin)
    for ours, theirs in zip(net.weights, twin.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    x = np.random.default_rng(0).uniform(0, 255, (8, 28, 28, 1)).astype("float32")
    expected = models.embed_images(twin, x)
    # The same net in bfloat16: close to float32, but not equal (8 significant bits).
    difference = np.abs(models.embed_images(net, x) - expected).max()
    assert 0 < difference <= 0.05 * max(1.0, np.abs(expected).max())
    assert precision.float32_twin(twin) is twin
