"""Class folders larger than memory: images streamed from the on-disk image cache
(:mod:`keras_siamese.image_cache`) are the pixels the in-memory path reads, so streamed
runs equal in-memory runs bit for bit, and resume bit for bit too."""

import json
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from helpers import assert_refused, file_hashes, run_cli, stop_after_first_checkpoint
from keras_siamese import data, image_cache, image_folders, streams
from keras_siamese.image_cache import DiskImages

DIGITS = (0, 1, 7)
EPOCHS = 3
ARGS = ["--loss", "contrastive", "--epochs", str(EPOCHS), "--batch-size", "16", "--seed", "5",
        "--image-size", "32", "--frame-images", "30", "--projector-every", "1"]
TINY_BUDGET = {"KERAS_SIAMESE_IMAGE_MEMORY": "1000"}  # bytes: any folder is over it


def write_folder(root, mnist, per_class=24):
    """Real MNIST test digits, one folder per class: every third an RGB JPEG of another
    size (decoded and resized), the others gray PNGs."""
    for digit in DIGITS:
        folder = root / f"digit_{digit}"
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(mnist.y_test == digit)[:per_class]):
            image = Image.fromarray(mnist.x_test[index, ..., 0])
            if i % 3 == 0:
                image.convert("RGB").resize((37, 37)).save(folder / f"{i:03d}.jpg")
            else:
                image.save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory, mnist):
    return write_folder(tmp_path_factory.mktemp("stream") / "digits", mnist)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(image_cache.CACHE_ENV, str(root))
    return root / "images"


def test_streamed_images_are_the_in_memory_pixels(folder, cache):
    held = data.load_dataset(str(folder), image_size=32, stream=False)
    streamed = data.load_dataset(str(folder), image_size=32, stream=True)
    assert isinstance(streamed.x_train, DiskImages) and data.is_streamed(streamed)
    assert not data.is_streamed(held)
    assert streamed.x_train.shape == held.x_train.shape and held.x_train.shape[-1] == 3
    for name in ("x_train", "x_test", "y_train", "y_test"):
        np.testing.assert_array_equal(np.asarray(getattr(streamed, name)), getattr(held, name))
    assert data.fingerprint(streamed) == data.fingerprint(held)
    assert data.pixel_statistics(streamed.x_train) == data.pixel_statistics(held.x_train)

    # Selecting rows reads nothing; reading them gives the same pixels, in any order.
    view = streamed.x_train[held.y_train == 1][::2]
    assert isinstance(view, DiskImages)
    np.testing.assert_array_equal(np.asarray(view), held.x_train[held.y_train == 1][::2])
    rows = np.array([5, 0, 7, 7, 3, 6])
    np.testing.assert_array_equal(streamed.x_train.take(rows), held.x_train[rows])
    np.testing.assert_array_equal(streamed.x_train[4], held.x_train[4])


def test_limits_and_held_out_classes_select_the_same_images(folder, cache):
    from keras_siamese.splits import evaluation_sets, used_images

    held = data.load_dataset(str(folder), image_size=32, stream=False)
    streamed = data.load_dataset(str(folder), image_size=32, stream=True)
    for holdout, limit in (((2,), None), ((), 21), ((0,), 12)):
        a = evaluation_sets(used_images(held, holdout, limit, 4), holdout, limit, 4)
        b = evaluation_sets(used_images(streamed, holdout, limit, 4), holdout, limit, 4)
        assert isinstance(b.seen.train_images, DiskImages)
        for split_a, split_b in ((a.seen, b.seen), (a.unseen, b.unseen)):
            if split_a is None:
                assert split_b is None
                continue
            for x, y in zip(vars(split_a).values(), vars(split_b).values()):
                np.testing.assert_array_equal(np.asarray(y), x)


@pytest.mark.parametrize("make", [
    lambda x, y: streams.pair_stream(x, y, 8, seed=3, start_epoch=1),
    lambda x, y: streams.triplet_stream(x, y, 8, seed=3),
    lambda x, y: streams.image_stream(x, y, 8, seed=3),
    lambda x, y: streams.pk_stream(x, y, 3, 4, seed=3),
    lambda x, y: streams.evaluation_pairs(x, y, 8),
    lambda x, y: streams.evaluation_images(x, y, 8),
], ids=["pairs", "triplets", "images", "pk", "evaluation-pairs", "evaluation-images"])
def test_streams_give_the_same_batches_from_disk(folder, cache, make):
    import tensorflow as tf

    held = data.load_dataset(str(folder), image_size=32, stream=False)
    streamed = data.load_dataset(str(folder), image_size=32, stream=True)
    for a, b in zip(make(held.x_train, held.y_train).take(6),
                    make(streamed.x_train, streamed.y_train).take(6)):
        for u, v in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
            np.testing.assert_array_equal(u.numpy(), v.numpy())


def test_the_cache_is_built_once_and_replaced_when_the_folder_changes(folder, cache, tmp_path,
                                                                      monkeypatch, mnist):
    root = shutil.copytree(folder, tmp_path / "copy")
    data.load_dataset(str(root), image_size=32, stream=True)
    (first,) = cache.iterdir()
    assert sorted(p.name for p in first.iterdir()) == ["images.json", "images.u8"]

    # Reused: nothing is decoded, no header is read again.
    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(image_folders, "read_image", refuse)
        patch.setattr(image_folders, "image_format", refuse)
        again = data.load_dataset(str(root), image_size=32, stream=True)
    assert again.x_train.path.parent == first

    # Another size is another cache; a changed file makes that folder's cache stale.
    data.load_dataset(str(root), image_size=16, stream=True)
    assert len(list(cache.iterdir())) == 2
    changed = root / "digit_7" / "001.png"
    Image.fromarray(mnist.x_test[0, ..., 0]).save(changed)  # a 7 becomes another digit
    streamed = data.load_dataset(str(root), image_size=32, stream=True)
    held = data.load_dataset(str(root), image_size=32, stream=False)
    np.testing.assert_array_equal(np.asarray(streamed.x_train), held.x_train)
    assert not first.exists() and len(list(cache.iterdir())) == 2


def test_a_folder_over_the_memory_budget_streams_without_being_asked(folder, cache,
                                                                     monkeypatch):
    monkeypatch.setenv("KERAS_SIAMESE_IMAGE_MEMORY", "1000")
    assert data.is_streamed(data.load_dataset(str(folder), image_size=32))
    assert not data.is_streamed(data.load_dataset(str(folder), image_size=32, stream=False))
    monkeypatch.setenv("KERAS_SIAMESE_IMAGE_MEMORY", str(10**9))
    assert not data.is_streamed(data.load_dataset(str(folder), image_size=32))


def test_a_streamed_run_never_reads_more_than_a_block_of_images_at_once(tmp_path,
                                                                       monkeypatch):
    """Training, validation, the collapse monitor, the metrics, the frames and the
    projector each read batches or blocks (here at most 196 images: an embedding batch at
    64 x 64), never the 1,500 images of the folder at once: memory is bounded by those
    buffers, not by the dataset."""
    from keras_siamese import experiment
    from keras_siamese.config import TrainConfig

    rng = np.random.default_rng(7)
    for c in range(3):
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        base = rng.integers(0, 256, (64, 64, 3))
        for i in range(500):
            pixels = np.clip(base + rng.integers(-40, 41, base.shape), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "data" / f"c{c}" /
                                                          f"{i:03d}.jpg")
    monkeypatch.setenv(image_cache.CACHE_ENV, str(tmp_path / "cache"))
    largest = []
    take = DiskImages.take

    def recorded(self, positions):
        largest.append(len(positions))
        return take(self, positions)

    monkeypatch.setattr(DiskImages, "take", recorded)
    monkeypatch.setattr(image_cache, "READ_BYTES", 64 * 64 * 3 * 100)  # blocks of 100
    settings = TrainConfig(dataset=str(tmp_path / "data"), stream=True, epochs=1,
                           batch_size=64, frame_images=30, output_dir=str(tmp_path / "out"),
                           log_dir=str(tmp_path / "logs"))
    result = experiment.run(settings)
    assert result.metrics["train_images"] == 1200
    assert largest and max(largest) <= 196, max(largest)


def weights(run_dir):
    import keras

    import keras_siamese  # noqa: F401

    return [w.numpy() for w in keras.models.load_model(run_dir / "model.keras").weights]


def assert_same_run(a, b):
    for u, v in zip(weights(a), weights(b), strict=True):
        np.testing.assert_array_equal(u, v)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (a, b)]
    for m in metrics:
        m.pop("seconds_per_epoch")
    assert metrics[0] == metrics[1]
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()
    with np.load(a / "latent_embeddings.npz") as x, np.load(b / "latent_embeddings.npz") as y:
        np.testing.assert_array_equal(x["embeddings"], y["embeddings"])


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    """In memory; streamed because the folder is over a tiny budget; streamed and killed
    after its first checkpoint (``--stream``); all with the same settings."""
    tmp_path = tmp_path_factory.mktemp("runs")
    cache = {image_cache.CACHE_ENV: str(tmp_path / "cache")}
    common = ["--dataset", folder, *ARGS, "--output-dir", tmp_path / "out", "--log-dir",
              tmp_path / "logs"]
    held = run_cli("train", *common, "--no-stream", "--run-name", "held", env=cache)
    assert held.returncode == 0, held.stderr[-3000:]
    assert not (tmp_path / "cache").exists()
    streamed = run_cli("train", *common, "--run-name", "streamed", env={**cache, **TINY_BUDGET})
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    assert len(list((tmp_path / "cache" / "images").iterdir())) == 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(image_cache.CACHE_ENV, cache[image_cache.CACHE_ENV])
        cut, code, _ = stop_after_first_checkpoint(tmp_path, signal.SIGKILL,
                                                   ["--dataset", folder, *ARGS, "--stream"])
    assert code == -signal.SIGKILL
    out = tmp_path / "out"
    return out / "held", out / "streamed", cut, cache


def test_a_streamed_run_equals_the_in_memory_run_bit_for_bit(runs):
    held, streamed, _, _ = runs
    assert_same_run(held, streamed)
    configs = [json.loads((run / "config.json").read_text()) for run in (held, streamed)]
    assert configs[0]["data_fingerprint"] == configs[1]["data_fingerprint"]  # the same fingerprint
    assert (configs[0]["stream"], configs[1]["stream"]) == (False, None)


def test_a_killed_streamed_run_resumes_to_the_same_result(runs):
    held, _, cut, cache = runs
    assert not (cut / "metrics.json").exists()
    result = run_cli("train", "--resume", cut, env=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(held, cut)


def test_evaluate_reads_a_streamed_run_to_its_own_metrics(runs):
    _, streamed, _, cache = runs
    recorded = json.loads((streamed / "metrics.json").read_text())
    result = run_cli("evaluate", streamed, "--json", env={**cache, **TINY_BUDGET})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == recorded


def test_a_streamed_run_on_two_replicas_equals_the_in_memory_one(folder, tmp_path):
    """``--strategy mirrored`` on two logical CPUs: the rows are read before the batches
    are split between the replicas. The 15 test images form one validation batch that
    splits 8 / 7, which Keras' own first-batch shape check failed on (AddN shape error,
    mended in :mod:`keras_siamese.distribute`)."""
    common = ["--dataset", folder, *ARGS, "--epochs", "2", "--strategy", "mirrored",
              "--no-frames", "--no-projector", "--no-export", "--output-dir", tmp_path / "out",
              "--log-dir", tmp_path / "logs"]
    env = {image_cache.CACHE_ENV: str(tmp_path / "cache"), "KERAS_SIAMESE_CPU_DEVICES": "2"}
    for mode in ("--stream", "--no-stream"):
        result = run_cli("train", *common, mode, "--run-name", mode[2:], env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads((tmp_path / "out" / name / "metrics.json").read_text())
               for name in ("stream", "no-stream")]
    for m in metrics:
        m.pop("seconds_per_epoch")
    assert metrics[0] == metrics[1]
    for a, b in zip(weights(tmp_path / "out" / "stream"), weights(tmp_path / "out" / "no-stream"),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_stream_is_refused_for_datasets_held_in_memory(tmp_path):
    result = run_cli("train", "--dataset", "mnist", "--stream", "--output-dir", tmp_path)
    assert_refused(result, 2, "--stream", "mnist is always held in memory")


def test_an_image_that_fails_while_caching_is_one_line_and_leaves_nothing(folder, tmp_path):
    root = shutil.copytree(folder, tmp_path / "data")
    broken = root / "digit_1" / "003.jpg"
    broken.write_bytes(broken.read_bytes()[:-50])  # the header reads, the pixels do not
    before = file_hashes(root)
    cache = tmp_path / "cache"
    result = run_cli("train", "--dataset", root, "--stream", "--epochs", "1", "--output-dir",
                     tmp_path / "out", "--log-dir", tmp_path / "logs",
                     env={image_cache.CACHE_ENV: str(cache)})
    line = assert_refused(result, 1, "003.jpg: cannot read this image")
    assert "digit_1" in line
    assert file_hashes(root) == before
    assert (cache / "images").is_dir()  # caching had begun ...
    assert not [p for p in cache.rglob("*") if p.is_file()]  # ... and left no partial cache
    assert not (tmp_path / "out" / "contrastive_data").exists()


def test_an_unwritable_cache_is_one_line(folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_cli("train", "--dataset", folder, "--stream", "--epochs", "1", "--output-dir",
                     tmp_path / "out", "--log-dir", tmp_path / "logs",
                     env={image_cache.CACHE_ENV: str(blocker / "cache")})
    assert_refused(result, 1, "cannot write the image cache", image_cache.CACHE_ENV)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
