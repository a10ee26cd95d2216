"""The gallery index, search, classify, calibrate and verify, on a real (small) MNIST run."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import error_lines, file_hashes, run_cli
from keras_siamese import experiment, index as index_module, run_folder
from keras_siamese.config import TrainConfig
from keras_siamese.errors import ConfigError, DataError
from keras_siamese.gallery import Gallery, read_gallery
from keras_siamese.index import Index


def _index_of(embeddings, labels):
    names = [str(c) for c in range(int(max(labels)) + 1)]
    return Index(np.asarray(embeddings, np.float32), np.asarray(labels, np.int32), names,
                 [f"item{i}" for i in range(len(labels))], "run", "fingerprint", (28, 28, 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_equals_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    gallery = np.round(rng.normal(size=(300, 3)), 1).astype(np.float32)  # many ties
    gallery[100:110] = gallery[5]  # duplicates tie exactly
    queries = np.vstack([np.round(rng.normal(size=(40, 3)), 1), gallery[[5, 7]]])
    index = _index_of(gallery, rng.integers(0, 4, 300))
    result = index.search(queries, k=12)
    g, q = gallery.astype(np.float64), queries.astype(np.float64)
    exact = ((q[:, None, :] - g[None, :, :]) ** 2).sum(axis=2)
    for row in range(len(q)):
        expected = np.lexsort((np.arange(len(g)), exact[row]))[:12]
        np.testing.assert_array_equal(result.indices[row], expected)
        np.testing.assert_allclose(result.distances[row], np.sqrt(exact[row][expected]),
                                   rtol=1e-12, atol=1e-12)
    assert result.classes[0] == [index.class_names[index.labels[i]] for i in result.indices[0]]


def test_classify_votes_and_answers_unknown_beyond_the_threshold():
    index = _index_of([[0.0], [0.1], [0.2], [5.0]], [0, 1, 1, 2])
    assert index.classify([[0.05]], threshold=1.0, k=3) == [("1", 0.05)]
    assert index.classify([[0.05]], threshold=1.0, k=1)[0][0] == "0"
    assert index.classify([[20.0]], threshold=1.0)[0][0] == "unknown"
    with pytest.raises(ConfigError, match="-k must be between 1"):
        index.search([[0.0]], k=5)


def test_the_gallery_threshold_is_the_quantile_of_leave_one_out_neighbour_distances(
        tmp_path, monkeypatch):
    """classify's default threshold: the UNKNOWN_QUANTILE quantile of each gallery item's
    distance to its nearest other item, by brute force here; on a sample when large."""
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(400, 3)).astype(np.float32)
    index = _index_of(gallery, rng.integers(0, 4, 400))
    d = np.sqrt(((gallery[:, None, :].astype(np.float64) - gallery[None]) ** 2).sum(axis=2))
    np.fill_diagonal(d, np.inf)
    expected = np.quantile(d.min(axis=1), index_module.UNKNOWN_QUANTILE)
    assert index._gallery_threshold() == pytest.approx(expected, rel=1e-12)
    index.unknown_threshold = index._gallery_threshold()
    assert Index.load(index.save(tmp_path / "ix")).unknown_threshold == index.unknown_threshold
    far = np.r_[gallery[:3], [[50.0, 0.0, 0.0]]]
    assert index.classify(far) == index.classify(far, threshold=index.unknown_threshold)
    assert index.classify(far)[-1][0] == "unknown"
    monkeypatch.setattr(index_module, "THRESHOLD_SAMPLE", 100)
    sampled = index._gallery_threshold()
    assert sampled != index.unknown_threshold and sampled == index._gallery_threshold()
    assert _index_of([[0.0]], [0])._gallery_threshold() is None


def test_save_and_load_round_trip_and_refuse_what_is_not_an_index(tmp_path):
    index = _index_of(np.arange(8.0).reshape(4, 2), [0, 1, 1, 0])
    index.sources[1] = "ünïcode folder/über.png"
    loaded = Index.load(index.save(tmp_path / "ix"))
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    np.testing.assert_array_equal(loaded.labels, index.labels)
    assert (loaded.sources, loaded.class_names, loaded.run, loaded.fingerprint,
            loaded.input_shape) == (index.sources, index.class_names, "run", "fingerprint",
                                    (28, 28, 1))
    with pytest.raises(ConfigError, match="is not an index"):
        Index.load(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read the index"):
        Index.load(tmp_path / "bad")


KILLED_SAVE = """
import sys
import numpy as np
from keras_siamese.index import Index
size = int(sys.argv[2])
while True:
    for value in (1.0, 2.0):
        index = Index(np.full((size, 64), value, np.float32), np.zeros(size, np.int32), ["a"],
                      ["s"] * size, "run", str(value), (28, 28, 1))
        print("saving", flush=True)
        index.save(sys.argv[1])
"""


def test_an_index_killed_while_saving_is_the_old_or_the_new_one(tmp_path):
    folder = tmp_path / "ix"
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(folder), "200000"],
                                   stdout=subprocess.PIPE, text=True)
        for _ in range(3):  # a few saves in, whichever moment that is
            assert process.stdout.readline() == "saving\n"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        loaded = Index.load(folder)
        assert loaded.fingerprint in ("1.0", "2.0")
        assert np.all(loaded.embeddings == float(loaded.fingerprint))
        assert loaded.embeddings.shape == (200000, 64)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A contrastive run on MNIST without the digits 7, 8, 9 (held out)."""
    root = tmp_path_factory.mktemp("index_run")
    config = TrainConfig(epochs=2, limit=2000, holdout_classes=(7, 8, 9), frames=False,
                         projector=False, export=False, embedding_dim=8,
                         output_dir=str(root / "out"), log_dir=str(root / "logs"))
    return experiment.run(config).run_dir


def _write_digits(folder, mnist, digit, count, start=0):
    folder.mkdir(parents=True)
    for i in np.flatnonzero(mnist.y_test == digit)[start:start + count]:
        Image.fromarray(mnist.x_test[i, ..., 0]).save(folder / f"{i}.png")


def test_index_add_and_search_from_the_command_line(run, tmp_path, mnist):
    ix = tmp_path / "digits.index"
    result = run_cli("index", run, "mnist:train", "--out", ix)
    assert result.returncode == 0, result.stderr[-2000:]
    index = Index.load(ix)
    assert len(index.labels) == 60000 and index.class_names == [str(d) for d in range(10)]
    new = tmp_path / "new"
    _write_digits(new / "eight", mnist, 8, 5)
    result = run_cli("index", run, new, "--add", ix)
    assert result.returncode == 0, result.stderr[-2000:]
    index = Index.load(ix)
    assert index.class_names[-1] == "eight" and len(index.labels) == 60005
    query = sorted((new / "eight").iterdir())[0]
    out = tmp_path / "found.json"
    result = run_cli("search", ix, query, "-k", "3", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())
    # The query itself; its embedding in a batch of 1 and of 5 differs in the last bits.
    assert rows[0]["class"] == "eight" and rows[0]["distance"] < 1e-5
    assert rows[0]["source"].endswith(query.name) and [r["rank"] for r in rows] == [1, 2, 3]


def test_calibrate_then_classify_and_verify(run, tmp_path, mnist):
    result = run_cli("calibrate", run, "--target", "precision=0.95")
    assert result.returncode == 0, result.stderr[-2000:]
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["precision"] >= 0.95
    assert (run / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    threshold, calibrated = run_folder.decision_threshold(run)
    assert calibrated and threshold == calibration["threshold"]
    ix = tmp_path / "ix"
    assert run_cli("index", run, "mnist:train", "--out", ix).returncode == 0
    queries = tmp_path / "q"
    _write_digits(queries / "x", mnist, 3, 2)
    result = run_cli("classify", ix, queries / "x")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split()[1] in ("3", "unknown") for line in lines)
    first, second = sorted((queries / "x").iterdir())
    result = run_cli("verify", run, first, first)
    assert result.returncode == 0 and result.stdout.startswith("same  distance 0.0000"), \
        result.stdout + result.stderr[-2000:]


def test_a_changed_model_is_refused(run, tmp_path):
    ix = tmp_path / "ix"
    embedding = run_folder.load_embedding(run)
    Index.build(run, Gallery(np.zeros((3, 28, 28, 1), np.float32), ["a", "b", "a"],
                             ["1", "2", "3"]), embedding).save(ix)
    index = Index.load(ix)
    index.fingerprint = "0" * 64  # as if the run had been retrained since
    index.save(ix)
    query = tmp_path / "q.npy"
    np.save(query, np.zeros((1, 28, 28), np.uint8))
    before = file_hashes(tmp_path)
    result = run_cli("search", ix, query)
    assert result.returncode == 1
    assert error_lines(result) == [error_lines(result)[0]] and "has changed" in \
        error_lines(result)[0]
    assert file_hashes(tmp_path) == before


def _bad_inputs(run, tmp_path):
    (tmp_path / "empty").mkdir()
    unreadable = tmp_path / "unreadable" / "a"
    unreadable.mkdir(parents=True)
    (unreadable / "x.png").write_bytes(b"not a png")
    (tmp_path / "unreadable" / "b").mkdir()
    (tmp_path / "unreadable" / "b" / "y.png").write_bytes(b"not a png either")
    np.save(tmp_path / "rgb.npy", np.zeros((1, 28, 28, 3), np.uint8))
    np.save(tmp_path / "nan.npy", np.full((1, 28, 28), np.nan, np.float32))
    ix = tmp_path / "ix"
    Index(np.zeros((2, 8), np.float32), np.zeros(2, np.int32), ["a"], ["1", "2"], str(run),
          "f", (28, 28, 1)).save(ix)
    return {
        "empty gallery": (["index", run, tmp_path / "empty", "--out", tmp_path / "o"], 1,
                          "no class sub-folders"),
        "unreadable class": (["index", run, tmp_path / "unreadable", "--out", tmp_path / "o"],
                             1, "cannot read this image"),
        "k 0": (["search", ix, tmp_path / "rgb.npy", "-k", "0"], 2, "-k"),
        "target": (["calibrate", run, "--target", "precision=1.5"], 2, "between 0 and 1"),
        "channels": (["classify", ix, tmp_path / "rgb.npy", "--threshold", "1"], 1,
                     "the model takes (N, 28, 28, 1)"),
        "nan": (["search", ix, tmp_path / "nan.npy"], 1, "NaN"),
        "threshold": (["classify", ix, tmp_path / "nan.npy", "--threshold", "-1"], 2,
                      "must be gallery, calibrated or a distance >= 0"),
        "not an index": (["search", tmp_path / "empty", tmp_path / "nan.npy"], 2,
                         "is not an index"),
    }


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path):
    for case, (args, code, words) in _bad_inputs(run, tmp_path).items():
        if case in ("channels", "nan"):  # the model check must pass to reach the images
            index = Index.load(tmp_path / "ix")
            index.fingerprint = index_module.model_fingerprint(run_folder.load_embedding(run))
            index.save(tmp_path / "ix")
        before = file_hashes(tmp_path, run)
        result = run_cli(*args)
        lines = error_lines(result)
        assert result.returncode == code, (case, result.stderr[-2000:])
        assert len(lines) == 1 and words in lines[0], (case, lines, result.stderr[-1500:])
        assert "Traceback" not in result.stderr, case
        assert file_hashes(tmp_path, run) == before, case


def test_gallery_sources_read_the_pixels_the_model_was_trained_on(tmp_path, mnist):
    split = read_gallery("mnist:test", (28, 28, 1))
    np.testing.assert_array_equal(split.images, mnist.x_test.astype(np.float32))
    assert split.classes[:3] == [mnist.class_names[c] for c in mnist.y_test[:3]]
    np.save(tmp_path / "x.npy", mnist.x_test[:4, ..., 0])
    np.save(tmp_path / "y.npy", np.array(["a", "b", "a", "c"]))
    arrays = read_gallery(str(tmp_path / "x.npy"), (28, 28, 1), str(tmp_path / "y.npy"))
    assert arrays.classes == ["a", "b", "a", "c"] and len(arrays.sources) == 4
    with pytest.raises(ConfigError, match="needs --labels"):
        read_gallery(str(tmp_path / "x.npy"), (28, 28, 1))


PLAIN_TF = """
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2]).astype(np.float32)[..., None]
found = model.signatures["classify"](image=tf.constant(images))
checked = model.signatures["verify"](first=tf.constant(images[:1]), second=tf.constant(images))
assert not [name for name in sys.modules if name.startswith("keras_siamese")]
print(json.dumps({"names": [n.decode() for n in found["class_name"].numpy()],
                  "unknown": found["unknown"].numpy().tolist(),
                  "distance": found["distance"].numpy().tolist(),
                  "same": checked["same"].numpy().tolist(),
                  "pair_distance": checked["distance"].numpy().tolist()}))
"""


def test_the_exported_model_answers_as_the_commands_do(run, tmp_path, mnist):
    ix = tmp_path / "ix"
    assert run_cli("index", run, "mnist:train", "--out", ix).returncode == 0
    queries = tmp_path / "q.npy"
    picked = np.r_[np.flatnonzero(mnist.y_test == 3)[:4], np.flatnonzero(mnist.y_test == 8)[:4]]
    np.save(queries, mnist.x_test[picked, ..., 0])
    exported = tmp_path / "sm"
    result = run_cli("export", run, "--out", exported, "--index", ix)
    assert result.returncode == 0, result.stderr[-2000:]
    plain = subprocess.run([sys.executable, "-c", PLAIN_TF, exported, queries],
                           capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    answers = json.loads(plain.stdout.strip().splitlines()[-1])
    classified = run_cli("classify", ix, queries)
    assert classified.returncode == 0, classified.stderr[-2000:]
    for line, name, unknown, distance in zip(classified.stdout.strip().splitlines(),
                                             answers["names"], answers["unknown"],
                                             answers["distance"]):
        _, label, shown_distance = line.split()
        assert label == ("unknown" if unknown else name)
        assert shown_distance == f"{distance:.4f}"
    threshold, _ = run_folder.decision_threshold(run)
    for same, distance in zip(answers["same"], answers["pair_distance"]):
        assert same == (distance <= threshold)
