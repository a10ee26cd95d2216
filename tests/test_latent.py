"""Latent-space frames and GIF: real training, one frame per epoch, one shared axis range."""

import keras
import numpy as np
import pytest
from PIL import Image

from helpers import error_lines, run_cli
from keras_siamese import latent, models
from keras_siamese.errors import ConfigError

EPOCHS = 2
FRAME_IMAGES = 200


def gif_frames(path):
    """(number of frames, duration of each in ms, loop count) of a GIF."""
    with Image.open(path) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
        return gif.n_frames, durations, gif.info.get("loop")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny real contrastive run with frames on (the projector off: tested elsewhere)."""
    root = tmp_path_factory.mktemp("latent")
    result = run_cli("train", "--loss", "contrastive", "--epochs", EPOCHS, "--limit", 500,
                     "--batch-size", 64, "--frame-images", FRAME_IMAGES, "--gif-frame-ms", 200,
                     "--no-projector", "--output-dir", root / "out", "--log-dir", root / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "latent.gif" in result.stdout
    return root / "out" / "contrastive_mnist"


def test_one_frame_per_epoch_and_the_untrained_net(trained):
    frames = sorted((trained / "frames").glob("*.png"))
    assert [f.name for f in frames] == [f"epoch_{e:03d}.png" for e in range(EPOCHS + 1)]
    sizes = {Image.open(f).size for f in frames}
    assert len(sizes) == 1  # same pixel size, so the GIF never jumps
    assert gif_frames(trained / "latent.gif") == (EPOCHS + 1, [200] * EPOCHS + [800], 0)


def test_stored_embeddings_are_the_fixed_stratified_test_images(trained, mnist):
    history = latent.LatentHistory.load(trained / latent.EMBEDDINGS_FILE)
    assert history.epochs == list(range(EPOCHS + 1))
    assert np.isnan(history.losses[0]) and all(np.isfinite(history.losses[1:]))
    assert np.stack(history.embeddings).shape == (EPOCHS + 1, FRAME_IMAGES, 2)
    assert len(set(history.indices.tolist())) == FRAME_IMAGES
    np.testing.assert_array_equal(history.labels, mnist.y_test[history.indices])
    assert np.bincount(history.labels).tolist() == [FRAME_IMAGES // 10] * 10
    # Same images in every run, whatever the training seed.
    np.testing.assert_array_equal(latent.frame_images(mnist, FRAME_IMAGES).indices,
                                  history.indices)
    assert history.class_names == mnist.class_names and history.title == "contrastive_mnist"


def test_last_frame_shows_the_trained_embedding_net(trained, mnist):
    history = latent.LatentHistory.load(trained / latent.EMBEDDINGS_FILE)
    embedding = keras.models.load_model(trained / "model.keras").get_layer("embedding")
    images = mnist.x_test[history.indices].astype(np.float32)
    np.testing.assert_allclose(history.embeddings[-1], embedding.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(history.embeddings[0], history.embeddings[-1])


def test_every_frame_has_the_same_axes_holding_every_epoch(trained, tmp_path):
    history = latent.LatentHistory.load(trained / latent.EMBEDDINGS_FILE)
    (tmp_path / latent.FRAMES_DIR).mkdir()
    drawn = latent.render_frames(history, tmp_path)
    assert len(drawn) == EPOCHS + 1 and all(limits == drawn[0] for limits in drawn)
    (xmin, xmax), (ymin, ymax) = drawn[0]
    points = np.concatenate(history.embeddings)
    assert xmin < points[:, 0].min() and points[:, 0].max() < xmax
    assert ymin < points[:, 1].min() and points[:, 1].max() < ymax
    # The frames left by training are exactly these redrawn ones: same range in every file.
    for epoch in history.epochs:
        redrawn = latent.frame_path(tmp_path, epoch).read_bytes()
        assert latent.frame_path(trained, epoch).read_bytes() == redrawn


def test_wide_embeddings_share_one_pca_and_one_range(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    history = latent.LatentHistory(np.arange(30), labels, ("a", "b", "c"), "wide")
    for epoch in range(3):  # the cloud grows each epoch: a per-frame range would hide that
        history.add(epoch, 1.0 / (epoch + 1), rng.normal(size=(30, 6)) * (epoch + 1))
    (tmp_path / latent.FRAMES_DIR).mkdir()
    drawn = latent.render_frames(history, tmp_path)
    assert len(drawn) == 3 and all(limits == drawn[0] for limits in drawn)
    assert drawn[0][0][1] - drawn[0][0][0] > 4  # wide enough for the last, largest epoch


def test_a_zero_spread_frame_still_gets_a_range():
    (xlim, ylim) = latent.shared_limits([np.array([[1.0, 0.0], [1.0, 0.0]])])
    assert xlim[0] < 1.0 < xlim[1] and ylim[0] < 0.0 < ylim[1]


class StopAfter(keras.callbacks.Callback):
    """Interrupts training like Ctrl-C after ``epochs`` epochs."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


def test_gif_command_rebuilds_an_interrupted_run(tmp_path, mnist):
    shown = latent.frame_images(mnist, 50)
    embedding = models.embedding_net(embedding_dim=2, mean=33.0, std=78.0)
    classifier = models.classifier_model(embedding, 10)
    classifier.compile("adam", "sparse_categorical_crossentropy")
    run = tmp_path / "run"
    run.mkdir()
    frames = latent.LatentFrames(embedding, shown, run, "interrupted")
    with pytest.raises(KeyboardInterrupt):
        classifier.fit(mnist.x_train[:256].astype(np.float32), mnist.y_train[:256], epochs=5,
                       batch_size=64, verbose=0, callbacks=[frames, StopAfter(2)])
    assert not (run / latent.GIF_FILE).exists()  # training never reached its end
    assert latent.LatentHistory.load(run / latent.EMBEDDINGS_FILE).epochs == [0, 1, 2]

    result = run_cli("gif", run, "--frame-ms", 100)
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(run / latent.GIF_FILE) in result.stdout
    assert gif_frames(run / latent.GIF_FILE) == (3, [100, 100, 400], 0)
    assert len(list((run / latent.FRAMES_DIR).glob("*.png"))) == 3


def test_gif_command_errors_are_one_line(tmp_path):
    result = run_cli("gif", tmp_path)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "latent_embeddings.npz not found" in lines[0], result.stderr
    (tmp_path / latent.EMBEDDINGS_FILE).write_text("not an npz")
    result = run_cli("gif", tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(error_lines(result)) == 1 and "cannot read" in error_lines(result)[0]
    assert run_cli("gif", tmp_path / "missing").returncode == 2


@pytest.mark.parametrize("args,message", [
    (["--frame-images", "5"], "fewer than the 10 classes"),
    (["--frame-images", "0"], "--frame-images must be > 0"),
    (["--gif-frame-ms", "0"], "--gif-frame-ms must be > 0"),
    (["--projector-every", "-1"], "--projector-every must be >= 0"),
])
def test_bad_frame_options_fail_before_any_folder_is_made(tmp_path, args, message):
    result = run_cli("train", "--output-dir", tmp_path / "out", "--log-dir", tmp_path / "logs",
                     *args)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out" / "contrastive_mnist").exists()


def test_frame_images_are_capped_by_the_smallest_class(mnist):
    shown = latent.frame_images(mnist, 9000)  # the smallest test class has 892 images
    assert np.bincount(shown.labels).tolist() == [892] * 10
    with pytest.raises(ConfigError, match="fewer than the 10 classes"):
        latent.frame_images(mnist, 9)
