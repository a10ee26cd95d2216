import gzip
import hashlib
import os

import numpy as np
import pytest

from keras_siamese import data
from keras_siamese.data import (IDX_MD5, _idx_bytes, balanced_subset, example_set_digest,
                                load_dataset)
from keras_siamese.errors import DataError


def write_idx_dir(folder, dataset, compress=True):
    """Write a dataset back as the four original idx files."""
    arrays = {"train-images": dataset.x_train[..., 0], "train-labels": dataset.y_train,
              "t10k-images": dataset.x_test[..., 0], "t10k-labels": dataset.y_test}
    for key, array in arrays.items():
        name = f"{key}-idx{3 if 'images' in key else 1}-ubyte"
        raw = _idx_bytes(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (folder / name).write_bytes(raw)
    return folder


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_packaged_copies_are_the_verified_originals(name, request):
    dataset = request.getfixturevalue(name)
    assert dataset.x_train.shape == (60000, 28, 28, 1) and dataset.x_train.dtype == np.uint8
    assert dataset.x_test.shape == (10000, 28, 28, 1)
    assert dataset.y_train.shape == (60000,) and set(np.unique(dataset.y_train)) == set(range(10))
    assert len(dataset.class_names) == 10
    # The loader checked these md5s; check them independently here too.
    assert hashlib.md5(_idx_bytes(dataset.x_test[..., 0])).hexdigest() == \
        IDX_MD5[name]["t10k-images"]
    assert hashlib.md5(_idx_bytes(dataset.y_train)).hexdigest() == IDX_MD5[name]["train-labels"]


def test_fashion_class_names(fashion_mnist):
    assert fashion_mnist.class_names[0] == "T-shirt/top"
    assert fashion_mnist.class_names[9] == "Ankle boot"


@pytest.mark.parametrize("compress", [True, False])
def test_data_dir_with_idx_files(tmp_path, mnist, compress):
    loaded = load_dataset("mnist", write_idx_dir(tmp_path, mnist, compress))
    np.testing.assert_array_equal(loaded.x_train, mnist.x_train)
    np.testing.assert_array_equal(loaded.y_test, mnist.y_test)
    assert str(tmp_path) in loaded.source


def test_corrupted_idx_file_fails_md5(tmp_path, mnist):
    write_idx_dir(tmp_path, mnist, compress=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] = (raw[100] + 1) % 10
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="md5"):
        load_dataset("mnist", tmp_path)


def test_truncated_gzip_is_a_clear_error(tmp_path, mnist):
    write_idx_dir(tmp_path, mnist)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("mnist", tmp_path)


def test_wrong_dataset_in_data_dir_fails_md5(tmp_path, mnist):
    write_idx_dir(tmp_path, mnist)
    with pytest.raises(DataError, match="not the original fashion_mnist"):
        load_dataset("fashion_mnist", tmp_path)


def test_missing_idx_file(tmp_path, mnist):
    write_idx_dir(tmp_path, mnist)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no t10k-images idx file"):
        load_dataset("mnist", tmp_path)


def test_data_dir_that_is_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="not a readable folder"):
        load_dataset("mnist", tmp_path / "missing")


def test_no_source_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError) as error:
        load_dataset("fashion_mnist")
    message = str(error.value)
    assert "TFDS data dir" in message and "not-installed" in message
    assert "KERAS_SIAMESE_OFFLINE" in message and "apt-get install dataset-fashion-mnist" in message
    assert "\n" not in message


def test_a_name_that_is_no_dataset_is_looked_for_as_a_folder():
    with pytest.raises(DataError, match="--dataset cifar10: no such folder"):
        load_dataset("cifar10")


def test_tfds_source_is_read_and_verified(tmp_path, monkeypatch):
    """A prepared TFDS dataset is used first; TFDS's mock data (random images) is not the
    original MNIST, so verification must reject it with a clear message."""
    import tensorflow_datasets as tfds

    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=20):
        with pytest.raises(DataError, match="TFDS copy of mnist .*checksum mismatch"):
            load_dataset("mnist")


def test_tfds_source_accepts_the_original_examples_in_any_order(tmp_path, monkeypatch, mnist):
    """TFDS stores examples shuffled: the order-independent digest must still match."""
    rng = np.random.default_rng(0)
    train, test = rng.permutation(60000), rng.permutation(10000)
    splits = {"train": (mnist.x_train[train], mnist.y_train[train]),
              "test": (mnist.x_test[test], mnist.y_test[test])}
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def fake_load(name, split, as_supervised=False, **kwargs):  # as tfds.load answers
        images, labels = splits[split]
        if as_supervised:
            return tf.data.Dataset.from_tensor_slices((images, labels))
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    monkeypatch.setattr(tfds, "load", fake_load)
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    loaded = load_dataset("mnist", tmp_path)
    assert loaded.source.startswith("TFDS")
    np.testing.assert_array_equal(loaded.y_train, mnist.y_train[train])


def test_example_set_digest_ignores_order_but_not_content():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, 50)
    perm = rng.permutation(50)
    assert example_set_digest(images, labels) == example_set_digest(images[perm], labels[perm])
    changed = labels.copy()
    changed[0] = (changed[0] + 1) % 10
    assert example_set_digest(images, changed) != example_set_digest(images, labels)


def test_balanced_subset(mnist):
    x, y = balanced_subset(mnist.x_train, mnist.y_train, 2005, seed=3)
    assert len(y) == 2005
    counts = np.bincount(y, minlength=10)
    assert counts.max() - counts.min() <= 1
    x2, y2 = balanced_subset(mnist.x_train, mnist.y_train, 2005, seed=3)
    np.testing.assert_array_equal(x, x2)
    x3, _ = balanced_subset(mnist.x_train, mnist.y_train, 2005, seed=4)
    assert not np.array_equal(x, x3)
    with pytest.raises(DataError):
        balanced_subset(mnist.x_train, mnist.y_train, 5, seed=0)


def test_no_network_attempt_when_offline(monkeypatch, tmp_path):
    """With KERAS_SIAMESE_OFFLINE set (as in these tests), no socket is ever opened."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "none")
    monkeypatch.setattr(data, "_reachable", lambda *a: pytest.fail("network attempted"))
    assert os.environ["KERAS_SIAMESE_OFFLINE"]
    with pytest.raises(DataError):
        load_dataset("fashion_mnist")
