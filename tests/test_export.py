"""SavedModel export served by plain TensorFlow, and ``siamese-keras embed`` on real images."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import error_lines, run_cli

# Runs in a fresh interpreter that imports TensorFlow only: a served model must not need us.
SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
signatures = model.signatures
out = {
    "signatures": sorted(signatures),
    "embedding": signatures["serving_default"](image=tf.constant(x))["embedding"].numpy().tolist(),
    "distance": signatures["distance"](first=tf.constant(x), second=tf.constant(x[::-1]))
                ["distance"].numpy().tolist(),
    "same": signatures["same_probability"](first=tf.constant(x), second=tf.constant(x[::-1]))
            ["same_probability"].numpy().tolist(),
    "ours_imported": any(name.startswith("keras_siamese") for name in sys.modules),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bce_run(tmp_path_factory):
    """One short real BCE run on an MNIST slice: it has all three signatures."""
    root = tmp_path_factory.mktemp("export")
    result = run_cli("train", "--loss", "bce", "--epochs", "1", "--limit", "600",
                     "--no-frames", "--no-projector", "--output-dir", root / "out",
                     "--log-dir", root / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out" / "bce_mnist"


@pytest.fixture(scope="module")
def trained(bce_run):
    import keras

    import keras_siamese  # noqa: F401

    return keras.models.load_model(bce_run / "model.keras", compile=False)


def serve(saved_model: Path, images: np.ndarray, tmp_path) -> dict:
    np.save(tmp_path / "x.npy", images)
    result = subprocess.run([sys.executable, "-c", SERVE, str(saved_model),
                             str(tmp_path / "x.npy")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_exported_saved_model_serves_like_the_trained_model(bce_run, trained, mnist, tmp_path):
    x = mnist.x_test[:32].astype(np.float32)
    served = serve(bce_run / "saved_model", x, tmp_path)
    assert served["signatures"] == ["distance", "same_probability", "serving_default"]
    assert not served["ours_imported"]

    expected = trained.get_layer("embedding").predict(x, verbose=0)
    embedding = np.array(served["embedding"])
    assert embedding.shape == (32, 2)
    assert np.abs(embedding - expected).max() <= 1e-5
    np.testing.assert_allclose(served["distance"],
                               np.linalg.norm(expected - expected[::-1], axis=1),
                               rtol=1e-5, atol=1e-5)
    assert served["distance"][0] > 0 and served["distance"][16] == served["distance"][15]
    same = trained.predict([x, x[::-1]], verbose=0)[:, 0]
    np.testing.assert_allclose(served["same"], same, rtol=1e-5, atol=1e-6)


def test_export_command_and_saved_model_cli_list_the_signatures(bce_run, tmp_path):
    out = tmp_path / "served" / "1"
    result = run_cli("export", bce_run, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(out) in result.stdout and (out / "saved_model.pb").is_file()
    again = run_cli("export", bce_run, "--out", out)  # replaces an earlier export
    assert again.returncode == 0, again.stderr[-2000:]

    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--all", "--dir", str(out)], capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ["signature_def['serving_default']", "signature_def['distance']",
                 "signature_def['same_probability']"]:
        assert name in shown.stdout
    assert "shape: (-1, 28, 28, 1)" in shown.stdout and "shape: (-1, 2)" in shown.stdout


def test_export_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    result = run_cli("export", tmp_path)
    assert result.returncode == 2
    assert error_lines(result) == [f"siamese-keras: error: {tmp_path / 'model.keras'} not found: "
                                   "give the folder of a finished training run"]


def write_images(folder: Path, images: np.ndarray) -> list[Path]:
    """MNIST digits as files a user would have: PNG, RGB PNG, JPEG at 56x56."""
    from PIL import Image

    folder.mkdir()
    paths = []
    for i, pixels in enumerate(images[..., 0]):
        image = Image.fromarray(pixels)
        if i % 3 == 0:
            path = folder / f"{i:02d}.png"
            image.save(path)
        elif i % 3 == 1:
            path = folder / f"{i:02d}_rgb.png"
            image.convert("RGB").save(path)
        else:
            path = folder / f"{i:02d}_large.jpg"
            image.resize((56, 56), Image.Resampling.BILINEAR).save(path, quality=95)
        paths.append(path)
    return paths


def read_csv(path: Path):
    rows = list(csv.reader(open(path)))
    return rows[0], [row[0] for row in rows[1:]], np.array([row[1:] for row in rows[1:]], float)


def test_embed_converts_files_folders_and_arrays(bce_run, trained, mnist, tmp_path):
    images = mnist.x_test[:9]
    paths = write_images(tmp_path / "digits", images)
    np.save(tmp_path / "more.npy", mnist.x_test[9:12, :, :, 0])  # (N, 28, 28) uint8
    result = run_cli("embed", bce_run, tmp_path / "digits", tmp_path / "more.npy",
                     "--out", tmp_path / "e.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "embedded 12 images" in result.stdout

    header, names, embeddings = read_csv(tmp_path / "e.csv")
    assert header == ["name", "e0", "e1"]
    assert names == [str(p) for p in paths] + [f"{tmp_path / 'more.npy'}[{i}]" for i in range(3)]
    expected = trained.get_layer("embedding").predict(
        mnist.x_test[:12].astype(np.float32), verbose=0)
    exact = [i for i in range(12) if i % 3 != 2 or i >= 9]  # lossless files and the array
    np.testing.assert_allclose(embeddings[exact], expected[exact], rtol=1e-5, atol=1e-5)
    # A JPEG at twice the size, resized back: the same digit lands near its original.
    scale = np.abs(expected).max()
    lossy = [2, 5, 8]
    assert np.abs(embeddings[lossy] - expected[lossy]).max() < 0.25 * scale

    # The SavedModel gives the same numbers; .npy output carries the names beside it.
    result = run_cli("embed", bce_run / "saved_model", tmp_path / "digits", tmp_path / "more.npy",
                     "--out", tmp_path / "e.npy")
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), embeddings, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "e.npy.names.txt").read_text().splitlines() == names

    # --invert: dark strokes on light paper embed like the original digit.
    (tmp_path / "paper").mkdir()
    from PIL import Image

    Image.fromarray(255 - images[0, :, :, 0]).save(tmp_path / "paper" / "scan.png")
    result = run_cli("embed", bce_run, tmp_path / "paper", "--invert", "--out",
                     tmp_path / "inv.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(read_csv(tmp_path / "inv.csv")[2][0], expected[0],
                               rtol=1e-5, atol=1e-5)


def test_embed_bad_inputs_name_the_file_and_write_nothing(bce_run, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    np.save(tmp_path / "wide.npy", np.zeros((2, 28, 32), np.uint8))
    (tmp_path / "empty").mkdir()
    cases = [
        ([tmp_path / "broken.png"], "e.csv", 1, f"{tmp_path / 'broken.png'}: cannot read this image"),
        ([tmp_path / "wide.npy"], "e.csv", 1, f"{tmp_path / 'wide.npy'}: images of shape (28, 32, 1)"),
        ([tmp_path / "empty"], "e.csv", 1, f"{tmp_path / 'empty'}: no .png, .jpg, .jpeg or .npy"),
        ([tmp_path / "missing.png"], "e.csv", 1, f"{tmp_path / 'missing.png'}: no such file"),
        ([tmp_path / "wide.npy"], "e.txt", 2, "--out"),
    ]
    for inputs, out, code, message in cases:
        result = run_cli("embed", bce_run, *inputs, "--out", tmp_path / out)
        assert result.returncode == code, (inputs, result.stderr[-2000:])
        (line,) = error_lines(result)
        assert line.startswith(f"siamese-keras: error: {message}"), line
        assert not (tmp_path / out).exists()
