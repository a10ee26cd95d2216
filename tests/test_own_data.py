"""A user's own images: class folders of real PNG/JPEG files, TFDS datasets by name, and
the ResNet backbone, from loading through training, the projector sprite and export."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import error_lines, run_cli
from keras_siamese import config, data, image_folders
from keras_siamese.errors import DataError

CLASSES = ("zero", "one", "seven")
DIGITS = (0, 1, 7)


def write_digits(root, mnist, per_class=40, colour_every=0, size=28):
    """Real MNIST test digits as PNG and JPEG files, one folder per class; every
    ``colour_every``-th image an RGB JPEG of another size (0: none)."""
    for name, digit in zip(CLASSES, DIGITS):
        folder = root / name
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(mnist.y_test == digit)[:per_class]):
            image = Image.fromarray(mnist.x_test[index, ..., 0])
            if colour_every and i % colour_every == 0:
                image.convert("RGB").resize((size + 9, size + 9)).save(folder / f"{i:03d}.jpg")
            else:
                image.resize((size, size)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist):
    return write_digits(tmp_path_factory.mktemp("own") / "digits", mnist)


def test_classes_come_from_sorted_folder_names(digits):
    (digits / ".ipynb_checkpoints").mkdir()
    (digits / "notes.txt").write_text("not a class")
    (digits / "seven" / "notes.txt").write_text("not an image")
    loaded = data.load_dataset(str(digits))
    assert loaded.class_names == ("one", "seven", "zero")
    assert loaded.x_train.shape[1:] == (28, 28, 1) and loaded.x_train.dtype == np.uint8
    assert len(loaded.y_train) + len(loaded.y_test) == 120
    # 20 % of each class tested on, the same images on every load.
    assert np.bincount(loaded.y_test).tolist() == [8, 8, 8]
    again = data.load_dataset(str(digits))
    np.testing.assert_array_equal(loaded.x_test, again.x_test)
    assert not loaded.light_on_dark  # the sprite shows the images as they are


def test_the_pixels_are_the_files_pixels(digits, mnist):
    loaded = data.load_dataset(str(digits))
    zero = np.asarray(Image.open(digits / "zero" / "000.png"))[..., None]
    images = np.concatenate([loaded.x_train[loaded.y_train == 2], loaded.x_test[loaded.y_test == 2]])
    assert sum(np.array_equal(zero, image) for image in images) == 1


def test_colour_and_mixed_sizes_become_rgb_at_the_default_size(tmp_path, mnist):
    root = write_digits(tmp_path / "mixed", mnist, per_class=10, colour_every=3)
    loaded = data.load_dataset(str(root))
    # Sizes 28 and 37 differ, so the stated default square applies.
    assert loaded.x_train.shape[1:] == (data.DEFAULT_IMAGE_SIZE, data.DEFAULT_IMAGE_SIZE, 3)
    assert data.load_dataset(str(root), image_size=32).x_test.shape[1:] == (32, 32, 3)


def test_split_by_class_is_stratified_and_keeps_one_to_train():
    labels = np.repeat([0, 1, 2], [10, 3, 2])
    test = data.split_by_class(labels, 0.2)
    assert [int(test[labels == c].sum()) for c in range(3)] == [2, 1, 1]
    assert [int((~test)[labels == c].sum()) for c in range(3)] == [8, 2, 1]
    np.testing.assert_array_equal(test, data.split_by_class(labels, 0.2))
    with pytest.raises(DataError, match="class 1 has 1 image"):
        data.split_by_class(np.array([0, 0, 1]), 0.2)


@pytest.mark.parametrize("arrange,message", [
    (lambda root: None, "no such folder"),
    (lambda root: root.mkdir(), "no class sub-folders"),
    (lambda root: (root / "a").mkdir(parents=True), "class folder 'a' has no PNG or JPEG"),
    (lambda root: _image(root / "only" / "1.png"), "only one class ('only')"),
    (lambda root: (_image(root / "a" / "1.png"), _image(root / "a" / "2.png"),
                   _image(root / "b" / "1.png")), "class 'b' has 1 image"),
    (lambda root: (_image(root / "a" / "1.png"), _image(root / "a" / "2.png"),
                   _image(root / "b" / "1.png"), _image(root / "b" / "2.png"),
                   (root / "b" / "3.jpg").write_bytes(b"not a jpeg")), "3.jpg: cannot read"),
])
def test_bad_folders_give_one_clear_line_and_no_run_folder(tmp_path, arrange, message):
    root = tmp_path / "data"
    arrange(root)
    result = run_cli("train", "--dataset", root, "--epochs", "1", "--output-dir",
                     tmp_path / "out", "--log-dir", tmp_path / "logs")
    assert result.returncode == 1, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out" / "contrastive_data").exists()


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(path)


def test_unknown_dataset_name_is_a_usage_error(tmp_path):
    result = run_cli("train", "--dataset", "mnsit", "--output-dir", tmp_path)
    assert result.returncode == 2
    assert error_lines(result) == ["siamese-keras: error: unknown dataset 'mnsit': choose "
                                   "mnist, fashion_mnist, tfds:NAME or a folder with one "
                                   "sub-folder of images per class"]


def test_backbone_names_match_the_models():
    from keras_siamese import models

    assert set(config.BACKBONES) == set(models.BACKBONES)


def test_resnet_backbone_shares_the_head_and_round_trips(tmp_path):
    import keras

    from keras_siamese import models

    embedding = models.embedding_net((64, 64, 3), 2, backbone="resnet")
    assert embedding.get_layer("fc_embedding").output.shape == (None, 2)
    assert sum(isinstance(layer, keras.layers.Add) for layer in embedding.layers) == 6
    twin = models.contrastive_model(embedding)
    assert [layer.name for layer in twin.layers].count("embedding") == 1
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype("float32")
    embedding.save(tmp_path / "resnet.keras")
    loaded = keras.models.load_model(tmp_path / "resnet.keras")
    np.testing.assert_allclose(loaded(x, training=False), embedding(x, training=False),
                               atol=1e-5)


# Serves the exported model in a fresh interpreter that imports TensorFlow only.
SERVE = """
import json, sys
import numpy as np, tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
print(json.dumps(serve(image=tf.constant(np.load(sys.argv[2])))["embedding"].numpy().tolist()))
"""


def test_train_export_and_embed_a_colour_class_folder(tmp_path, mnist):
    """The issue's user story: own colour images of two sizes, the ResNet backbone, online
    mining on P x K batches, the sprite of real thumbnails, a SavedModel, embed."""
    root = write_digits(tmp_path / "digits", mnist, per_class=40, colour_every=2)
    result = run_cli("train", "--dataset", root, "--image-size", "32", "--backbone", "resnet",
                     "--loss", "triplet", "--mining", "batch-all", "--classes-per-batch", "3",
                     "--images-per-class", "8", "--epochs", "2", "--output-dir",
                     tmp_path / "out", "--log-dir", tmp_path / "logs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "out" / "triplet-batch-all_digits"
    settings = json.loads((run / "config.json").read_text())
    assert settings["dataset"] == str(root)  # absolute: evaluate works from anywhere
    assert settings["backbone"] == "resnet" and settings["image_size"] == 32
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["precision_at_1"] <= 1 and "3-way" in result.stdout

    # The projector's sprite: 24 real 32 x 32 colour thumbnails (8 per class) in a 5 x 5 grid.
    board = tmp_path / "logs" / "triplet-batch-all_digits" / "projector"
    sprite = np.asarray(Image.open(board / "sprite.png"))
    assert sprite.shape == (5 * 32, 5 * 32, 3)
    assert "single_image_dim: 32" in (board / "projector_config.pbtxt").read_text()
    loaded = data.load_dataset(str(root), image_size=32)
    first_cell = sprite[:32, :32]
    assert any(np.array_equal(first_cell, image) for image in loaded.x_test)

    # The SavedModel, served without this package, equals embed's output on the files.
    files = sorted((root / "seven").iterdir())[:4]
    pixels = np.stack([image_folders.read_image(f, 32, 32, 3) for f in files]).astype("float32")
    np.save(tmp_path / "x.npy", pixels)
    served = subprocess.run([sys.executable, "-c", SERVE, str(run / "saved_model"),
                             str(tmp_path / "x.npy")], capture_output=True, text=True,
                            timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    embedded = run_cli("embed", run / "saved_model", *files, "--out", tmp_path / "e.npy")
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), json.loads(served.stdout),
                               atol=1e-5)

    evaluated = run_cli("evaluate", run, "--json", cwd="/")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["precision_at_1"] == metrics["precision_at_1"]


def test_tfds_dataset_by_name_trains(tmp_path):
    """``tfds:NAME`` through TFDS's offline mock data (random 32 x 32 colour images)."""
    import tensorflow_datasets as tfds

    from keras_siamese import experiment, run_folder

    settings = config.TrainConfig(dataset="tfds:cifar10", epochs=1, batch_size=32,
                                  frame_images=20, output_dir=str(tmp_path / "out"),
                                  log_dir=str(tmp_path / "logs"), export=False)
    with tfds.testing.mock_data(num_examples=64):
        result = experiment.run(settings)
    assert result.run_dir.name == "contrastive_cifar10"
    assert (result.run_dir / "metrics.json").is_file()
    model = run_folder.load_embedding(result.run_dir)
    assert tuple(model.input_shape[1:]) == (32, 32, 3)


def test_tfds_dataset_that_is_not_prepared_fails_clearly(tmp_path):
    with pytest.raises(DataError, match="cannot read tfds:cifar10 .*tfds build cifar10"):
        data.load_dataset("tfds:cifar10", data_dir=tmp_path)
    with pytest.raises(DataError, match="tfds:no_such_set"):
        data.load_dataset("tfds:no_such_set", data_dir=tmp_path)


def test_embedding_batches_shrink_with_the_image_size():
    """Large images are embedded in smaller batches (same results), so scoring 256 x 256
    images does not ask for gigabytes at once."""
    from keras_siamese import models

    embedding = models.embedding_net((64, 64, 3), 2)
    x = np.random.default_rng(1).integers(0, 256, (300, 64, 64, 3)).astype("float32")
    # 1,024 x 28 x 28 pixels per batch: 196 images of 64 x 64, so two batches here.
    np.testing.assert_allclose(models.embed_images(embedding, x),
                               embedding(x, training=False), atol=1e-5)


def test_running_out_of_memory_is_one_clear_error(tmp_path, monkeypatch):
    import keras
    import tensorflow as tf

    from keras_siamese import experiment
    from keras_siamese.errors import OutOfMemoryError

    def exhausted(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(keras.Model, "fit", exhausted)
    settings = config.TrainConfig(epochs=1, limit=500, output_dir=str(tmp_path / "out"),
                                  log_dir=str(tmp_path / "logs"))
    with pytest.raises(OutOfMemoryError, match="out of memory training 128 examples of "
                                               "28x28 images per step: lower --batch-size"):
        experiment.run(settings)
