"""TensorBoard projector and scalars, read back through a real ``tensorboard`` server."""

import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli
from keras_siamese import latent, models, projector
from keras_siamese.plots import CLASS_COLOURS
from keras_siamese.tensorboard_server import get, get_json, tensorboard

EPOCHS = 2
FRAME_IMAGES = 100
RUN = "bce_mnist"
SCREENSHOT = Path(__file__).parents[1] / "scripts" / "projector_screenshot.py"


def wait_for(probe, timeout=60.0):
    """probe()'s first truthy value; TensorBoard loads logs in the background."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A tiny real BCE run (it has a metric besides the loss), projector every epoch, and a
    TensorBoard serving its log root; yields (url, run folder)."""
    root = tmp_path_factory.mktemp("projector")
    result = run_cli("train", "--loss", "bce", "--epochs", EPOCHS, "--limit", 500,
                     "--batch-size", 64, "--frame-images", FRAME_IMAGES, "--projector-every", 1,
                     "--eval-every", 1,
                     "--output-dir", root / "out", "--log-dir", root / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    with tensorboard(root / "logs", timeout=60) as url:
        assert wait_for(lambda: get_json(f"{url}/data/plugin/projector/runs"))
        yield url, root / "out" / RUN


def test_only_the_projector_folder_is_a_projector_run(board):
    url, _ = board
    assert get_json(f"{url}/data/plugin/projector/runs") == [f"{RUN}/projector"]
    assert sorted(get_json(f"{url}/data/runs")) == [f"{RUN}/metrics", f"{RUN}/projector",
                                                    f"{RUN}/train", f"{RUN}/validation"]


def test_one_entry_per_epoch_with_the_stored_embeddings(board):
    url, run_dir = board
    run = f"{RUN}/projector"
    info = get_json(f"{url}/data/plugin/projector/info?run={run}")
    entries = {e["tensorName"]: e for e in info["embeddings"]}
    assert sorted(entries) == ["epoch_001", "epoch_002"]
    history = latent.LatentHistory.load(run_dir / latent.EMBEDDINGS_FILE)
    for epoch in (1, 2):
        name = f"epoch_{epoch:03d}"
        assert entries[name]["tensorShape"] == [FRAME_IMAGES, 3]  # 2-D, one zero column
        assert entries[name]["sprite"]["singleImageDim"] == [28, 28]
        served = get(f"{url}/data/plugin/projector/tensor?run={run}&name={name}")
        # The very embeddings the latent frames stored for that epoch, as float32 bytes.
        expected = projector.projector_tensor(history.embeddings[epoch])
        assert served == expected.tobytes()
        assert np.all(expected[:, 2] == 0) and np.any(expected[:, :2] != 0)


def test_metadata_rows_are_the_labels(board, mnist):
    url, run_dir = board
    history = latent.LatentHistory.load(run_dir / latent.EMBEDDINGS_FILE)
    text = get(f"{url}/data/plugin/projector/metadata?run={RUN}/projector&name=epoch_002")
    lines = text.decode().splitlines()
    assert lines[0] == "label\tclass"
    labels = mnist.y_test[history.indices]
    assert lines[1:] == [f"{y}\t{mnist.class_names[y]}" for y in labels]


def test_sprite_is_a_square_png_of_thumbnails(board):
    url, _ = board
    png = get(f"{url}/data/plugin/projector/sprite_image?run={RUN}/projector&name=epoch_001")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    side = math.ceil(math.sqrt(FRAME_IMAGES)) * 28
    assert Image.open(io.BytesIO(png)).size == (side, side)


def test_scalars_for_every_loss_and_metric_train_and_validation(board):
    url, _ = board
    tags = wait_for(lambda: get_json(f"{url}/data/plugin/scalars/tags").get(f"{RUN}/validation"))
    assert {"epoch_loss", "epoch_binary_accuracy"} <= set(tags)
    every = get_json(f"{url}/data/plugin/scalars/tags")
    assert {"epoch_loss", "epoch_binary_accuracy"} <= set(every[f"{RUN}/train"])
    for split in ("train", "validation"):
        for tag in ("epoch_loss", "epoch_binary_accuracy"):
            points = get_json(f"{url}/data/plugin/scalars/scalars?run={RUN}/{split}&tag={tag}")
            assert [step for _, step, _ in points] == list(range(EPOCHS))


def test_embedding_metrics_every_epoch_end_with_those_of_metrics_json(board):
    url, run_dir = board
    written = json.loads((run_dir / "metrics.json").read_text())
    tags = get_json(f"{url}/data/plugin/scalars/tags")[f"{RUN}/metrics"]
    assert {f"metrics/{name}" for name in ("precision_at_1", "map_at_r", "roc_auc",
                                            "one_shot_10way")} <= set(tags)
    for name in ("precision_at_1", "map_at_r", "one_shot_10way"):
        points = get_json(f"{url}/data/plugin/scalars/scalars?run={RUN}/metrics&tag=metrics/{name}")
        assert [step for _, step, _ in points] == list(range(1, EPOCHS + 1))  # --eval-every 1
        assert points[-1][2] == pytest.approx(written[name], abs=1e-6)  # stored as float32


def test_a_running_tensorboard_shows_entries_written_later(tmp_path, mnist):
    shown = latent.frame_images(mnist, 20)
    embedding = models.embedding_net(embedding_dim=4)
    log = projector.ProjectorLog(embedding, shown, tmp_path / "run", every=1)
    log.on_train_begin()
    with tensorboard(tmp_path, timeout=60) as url:
        def entries():
            info = get_json(f"{url}/data/plugin/projector/info?run=run/projector")
            return [e["tensorName"] for e in info["embeddings"]]

        assert wait_for(lambda: get_json(f"{url}/data/runs")) == ["run/projector"]
        assert get_json(f"{url}/data/plugin/projector/runs") == []  # nothing logged yet
        log.on_epoch_end(0)
        assert wait_for(lambda: get_json(f"{url}/data/plugin/projector/runs"), 30)
        assert entries() == ["epoch_001"]
        log.on_epoch_end(1)
        log.on_train_end()
        assert wait_for(lambda: entries() == ["epoch_001", "epoch_002"], 30)
        served = get(f"{url}/data/plugin/projector/tensor?run=run/projector&name=epoch_002")
        assert np.frombuffer(served, np.float32).shape == (20 * 4,)  # 4-D: no padding


def test_sprite_draws_each_thumbnail_in_its_class_colour():
    images = np.zeros((5, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = 255  # one full-ink pixel per image
    labels = np.array([0, 1, 2, 3, 4])
    grid = projector.sprite(images, labels)
    assert grid.shape == (6, 6, 3)  # 3 x 3 cells of 2 x 2 for 5 images
    for i, label in enumerate(labels):
        row, col = divmod(i, 3)
        ink = grid[row * 2, col * 2] / 255.0
        np.testing.assert_allclose(ink, CLASS_COLOURS[label], atol=1 / 255)
        assert (grid[row * 2 + 1, col * 2 + 1] == 255).all()  # background stays white
    assert (grid[4:, 4:] == 255).all()  # unused cells are white


def screenshot(logdir, out, env=None):
    return subprocess.run([sys.executable, SCREENSHOT, logdir, "--out", out], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt)")
def test_screenshot_shows_coloured_thumbnails(board, tmp_path):
    _, run_dir = board
    result = screenshot(run_dir.parents[1] / "logs", tmp_path / "projector.png")
    assert result.returncode == 0, result.stderr[-2000:]
    shot = np.asarray(Image.open(tmp_path / "projector.png").convert("RGB"))
    assert shot.shape == (900, 1400, 3)
    plot = shot[150:850, 320:1090].astype(float)  # the projector's drawing area
    # Pixels of each class's hue (chromaticity, so a grey overlay does not matter): the
    # thumbnails' ink. A page without points has none; grey (class 7) never counts.
    chroma = plot / np.maximum(plot.sum(axis=-1, keepdims=True), 1)
    vivid = plot.max(axis=-1) - plot.min(axis=-1) > 40
    counts = [(vivid & (np.abs(chroma - np.array(c) / sum(c)).max(axis=-1) < 0.03)).sum()
              for c in CLASS_COLOURS]
    assert sum(count >= 30 for count in counts) >= 8, counts


def test_screenshot_without_chromium_says_so(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no chromium on PATH
    result = screenshot(tmp_path, tmp_path / "shot.png", env=env)
    assert result.returncode == 1
    assert "chromium is not installed: apt-get install" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "shot.png").exists()


def test_sprite_of_own_images_shows_them_as_they_are():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)
    grid = projector.sprite(colour, np.zeros(4, int), light_on_dark=False)
    assert grid.shape == (6, 6, 3)
    np.testing.assert_array_equal(grid[3:6, 0:3], colour[2])  # row-major cells
    gray = rng.integers(0, 256, (1, 2, 2, 1), dtype=np.uint8)
    np.testing.assert_array_equal(projector.sprite(gray, [0], light_on_dark=False),
                                  np.repeat(gray[0], 3, axis=-1))


def test_sprite_cells_shrink_to_stay_within_the_projectors_limit():
    assert projector.thumbnail_size(2000, 28, 28) == (28, 28)
    # 2,000 images of 256 pixels would need a 45 x 256 = 11,520 pixel grid: cells shrink.
    height, width = projector.thumbnail_size(2000, 256, 256)
    assert height == width and 45 * height <= projector.SPRITE_MAX < 45 * (height + 1)
    images = np.zeros((5, 4000, 100, 3), np.uint8)
    assert max(projector.sprite(images, np.zeros(5, int), False).shape) <= projector.SPRITE_MAX
