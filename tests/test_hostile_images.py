"""Hostile and unusual user files, read faithfully or refused: 16-bit, palette, alpha and
CMYK images, decompression bombs, modes without a 0..255 scale, broken files, Linux file
names that are not UTF-8, classes too small to train, ``.npy`` arrays that are not raw
pixels, and ``embed --out`` naming one of its own inputs.

Every refusal is checked as a user meets it: the command line's own ``main`` (in this
process, to spare a TensorFlow start-up per case; runs that train use the console script),
its exit code, exactly one ``siamese-keras: error:`` line with the expected words, no
traceback, and every file that was there before byte-for-byte unchanged."""

import io
import json
import os
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import (assert_refused, file_hashes, main_result, run_cli,
                     stop_after_first_checkpoint)
from keras_siamese import data, image_folders
from keras_siamese.errors import DataError

CAFE = os.fsdecode(b"caf\xe9")  # a Linux folder name that is not UTF-8 (Latin-1 'café')
BAD_FILE = os.fsdecode(b"\xff00.png")


# --- files ----------------------------------------------------------------------------

def png_bytes(pixels, colour_type: int, bit_depth: int = 16) -> bytes:
    """A PNG of ``pixels`` (H, W[, C]) at ``bit_depth``, written by hand: Pillow cannot
    write 16-bit colour PNGs."""
    pixels = np.asarray(pixels)
    dtype = ">u2" if bit_depth == 16 else ">u1"
    raw = b"".join(b"\0" + np.ascontiguousarray(row, dtype).tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], bit_depth, colour_type,
                         0, 0, 0)
    return (image_folders.PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def bomb_png(side: int = 20000) -> bytes:
    """A real, valid 1-bit PNG of side x side pixels (400 million by default, over Pillow's
    limit of 179 million) that takes about 50 KB on disk."""
    row = b"\0" + bytes((side + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (image_folders.PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))


def broken_chunk_png() -> bytes:
    """A PNG whose second data chunk has a type that is not letters: Pillow raises
    SyntaxError (not OSError) while decoding it."""
    packed = zlib.compress(b"".join(b"\0" + bytes(range(16)) for _ in range(16)))
    header = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    return (image_folders.PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", packed[:10]) + _chunk(b"\x01\x02\x03\x04", packed[10:])
            + _chunk(b"IEND", b""))


def tiff_as_png(path: Path, pixels: np.ndarray) -> Path:
    """A 32-bit integer ("I") or float ("F") TIFF saved under a .png name."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "TIFF")
    path.write_bytes(buffer.getvalue())
    return path


def class_folders(root: Path, sizes: dict, side: int = 28) -> Path:
    """Class folders of small gray PNGs, ``{folder name: number of images}``; a class's
    images differ in brightness from the others'."""
    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(sizes.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(rng.normal(40 + 80 * c, 25, (side, side)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


def train(root: Path, dataset: Path, *options, capsys=None):
    """``siamese-keras train`` on ``dataset``: in this process when given ``capsys`` (for
    refusals, which stop before training), else through the console script."""
    args = ["train", "--dataset", dataset, "--output-dir", root / "out", "--log-dir",
            root / "logs", *options]
    return main_result(capsys, *args) if capsys else run_cli(*args)


# --- one small trained run on a dataset with names that are not UTF-8 -------------------

@pytest.fixture(scope="module")
def names_data(tmp_path_factory) -> Path:
    """Three classes of 12 images: folders b'caf\\xe9', 'plain' (holding a file
    b'\\xff00.png') and 'zeta'."""
    root = class_folders(tmp_path_factory.mktemp("names") / "shop",
                         {CAFE: 12, "plain": 12, "zeta": 12})
    (root / "plain" / "00.png").rename(root / "plain" / BAD_FILE)
    return root


@pytest.fixture(scope="module")
def names_run(names_data, tmp_path_factory):
    """(run folder, log folder, stdout, hashes of the dataset before) of one epoch."""
    root = tmp_path_factory.mktemp("names_run")
    before = file_hashes(names_data)
    result = train(root, names_data, "--epochs", "1", "--frame-images", "30")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert file_hashes(names_data) == before
    return root / "out" / "contrastive_shop", root / "logs" / "contrastive_shop", result.stdout


def test_names_that_are_not_utf8_train_and_show_escaped(names_run, names_data):
    run, logs, stdout = names_run
    assert "3-way one-shot accuracy" in stdout
    assert (run / "embedding.png").is_file() and (run / "latent.gif").is_file()
    rows = (logs / "projector" / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "label\tclass"
    assert {row for row in rows[1:]} == {"0\tcaf\\xe9", "1\tplain", "2\tzeta"}
    with np.load(run / "latent_embeddings.npz") as saved:
        assert saved["class_names"].tolist() == ["caf\\xe9", "plain", "zeta"]
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["dataset"] == str(names_data)
    # Every image was read from its real path: 12 per class, b'\xff00.png' included.
    loaded = data.load_dataset(str(names_data))
    assert loaded.class_names == ("caf\\xe9", "plain", "zeta")
    assert len(loaded.y_train) + len(loaded.y_test) == 36
    assert image_folders.read_image(names_data / "plain" / BAD_FILE, 28, 28, 1).shape == (28, 28, 1)


def test_a_run_on_names_that_are_not_utf8_resumes(names_data, tmp_path):
    """Ctrl-C after the first epoch, then --resume finishes the run."""
    before = file_hashes(names_data)
    # The run holds after epoch 1 until the signal: its 30-image epochs never outrun it.
    run, code, stderr = stop_after_first_checkpoint(
        tmp_path, signal.SIGINT, ["--dataset", names_data, "--epochs", "8",
                                  "--frame-images", "30"], name="contrastive_shop")
    assert code == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "siamese-keras: error: interrupted after epoch" in stderr, stderr[-3000:]
    resumed = run_cli("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["test_images"] == 6
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 8  # a header and every epoch once
    assert file_hashes(names_data) == before


# --- faithful pixels: read_image on its own ---------------------------------------------

SIXTEEN = np.array([0, 128, 129, 385, 32767, 32896, 65280, 65535], np.uint16)
SCALED = np.array([0, 0, 1, 1, 127, 128, 254, 255], np.uint8)  # round(v * 255 / 65535)


def read(tmp_path, payload: bytes, channels: int = 1, name: str = "x.png") -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(payload)
    return image_folders.read_image(path, 1, len(SIXTEEN), channels)


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    assert (SCALED == np.round(SIXTEEN.astype(float) * 255 / 65535)).all()
    gray = read(tmp_path, png_bytes(SIXTEEN[None], 0))
    assert gray[0, :, 0].tolist() == SCALED.tolist()  # Pillow's convert("L") gives 0, 255...
    assert read(tmp_path, png_bytes(SIXTEEN[None], 0), 3)[0].tolist() == \
        np.stack([SCALED] * 3, -1).tolist()
    rgb = np.stack([SIXTEEN, SIXTEEN[::-1], SIXTEEN], -1)[None]
    expected = np.stack([SCALED, SCALED[::-1], SCALED], -1)
    assert read(tmp_path, png_bytes(rgb, 2), 3)[0].tolist() == expected.tolist()  # not v >> 8
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], -1)  # all transparent
    assert read(tmp_path, png_bytes(rgba, 6), 3)[0].tolist() == expected.tolist()
    as_gray = np.asarray(Image.fromarray(expected[None]).convert("L"))
    assert read(tmp_path, png_bytes(rgb, 2), 1)[..., 0].tolist() == as_gray.tolist()
    gray_alpha = np.stack([SIXTEEN, SIXTEEN[::-1]], -1)[None]
    assert read(tmp_path, png_bytes(gray_alpha, 4))[0, :, 0].tolist() == SCALED.tolist()


def test_16_bit_gray_and_gray_alpha_count_as_grayscale(tmp_path):
    files = []
    for name, payload in [("g.png", png_bytes(SIXTEEN[None], 0)),
                          ("ga.png", png_bytes(np.stack([SIXTEEN] * 2, -1)[None], 4))]:
        files.append(tmp_path / name)
        files[-1].write_bytes(payload)
    assert image_folders.image_format(files, None, 64) == (1, 8, 1)
    (tmp_path / "rgb.png").write_bytes(png_bytes(np.stack([SIXTEEN] * 3, -1)[None], 2))
    assert image_folders.image_format(files + [tmp_path / "rgb.png"], None, 64)[2] == 3


def test_palette_alpha_cmyk_and_1_bit_images_convert_to_their_colours(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
    palette = Image.new("P", (4, 1))
    palette.putpalette([v for colour in colours for v in colour] + [0] * (252 * 3))
    palette.putdata([0, 1, 2, 3])
    luma = [round(0.299 * r + 0.587 * g + 0.114 * b) for r, g, b in colours]  # ITU-R 601
    for i, options in enumerate([{}, {"transparency": 1},
                                 {"transparency": bytes([255, 128, 0, 255])}]):
        path = tmp_path / f"p{i}.png"
        palette.save(path, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "Palette images with Transparency" warning
            assert image_folders.read_image(path, 1, 4, 3)[0].tolist() == \
                [list(c) for c in colours]
            assert image_folders.read_image(path, 1, 4, 1)[0, :, 0].tolist() == luma

    pixels = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    assert image_folders.read_image(tmp_path / "rgba.png", 1, 2, 3)[0].tolist() == \
        [[10, 20, 30], [200, 100, 50]]  # alpha dropped, colour kept
    Image.fromarray(pixels[..., [0, 3]], "LA").save(tmp_path / "la.png")
    assert image_folders.read_image(tmp_path / "la.png", 1, 2, 1)[0, :, 0].tolist() == [10, 200]

    cmyk = np.array([[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [100, 50, 25, 60]],
                    np.uint8)
    blocks = np.repeat(np.repeat(cmyk[None], 8, 0), 8, 1)  # flat 8 x 8 blocks: JPEG keeps them
    Image.fromarray(blocks, "CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    got = image_folders.read_image(tmp_path / "cmyk.jpg", 8, 32, 3)[4, 4::8].astype(int)
    c, m, y, k = cmyk.T.astype(float) / 255
    expected = 255 * np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], -1)
    assert np.abs(got - expected).max() <= 2, got  # (0,255,255), black, (119,157,176)

    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(tmp_path / "bits.png")
    assert image_folders.read_image(tmp_path / "bits.png", 1, 2, 1)[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize("pixels,mode", [(np.array([[0, 300, 70000]], np.int32), "mode I"),
                                         (np.array([[0.0, 0.5, 1.0]], np.float32), "mode F")])
def test_modes_without_a_0_to_255_scale_are_refused(tmp_path, pixels, mode):
    path = tiff_as_png(tmp_path / "x.png", pixels)
    with pytest.raises(DataError, match=f"x.png: TIFF of {mode} .* no known 0..255 scale"):
        image_folders.read_image(path, 1, 3, 1)
    with pytest.raises(DataError, match=mode):
        image_folders.image_format([path], None, 64)


def test_a_class_folder_of_16_bit_images_loads_scaled(tmp_path):
    for name, value in [("dim", 257 * 40), ("bright", 257 * 200 + 100)]:
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = np.full((6, 6), value + i, np.uint16)
            (tmp_path / name / f"{i}.png").write_bytes(png_bytes(pixels, 0))
    loaded = data.load_dataset(str(tmp_path))
    assert loaded.x_train.shape[1:] == (6, 6, 1)
    values = np.concatenate([loaded.x_train, loaded.x_test])
    labels = np.concatenate([loaded.y_train, loaded.y_test])
    assert set(np.unique(values[labels == loaded.class_names.index("dim")])) == {40}
    assert set(np.unique(values[labels == loaded.class_names.index("bright")])) == {200}


# --- the CLI: training folders -------------------------------------------------------------

def _bomb(path):
    path.write_bytes(bomb_png())
    assert path.stat().st_size < 100_000  # huge in pixels, small on disk


BAD_FILES = {  # file -> (how to write it, what the one line says)
    "b/huge.png": (_bomb, [": 20,000 x 20,000 pixels", "decompression bombs",
                           "shrink the image"]),
    "a/scan.png": (lambda path: tiff_as_png(path, np.full((28, 28), 70000, np.int32)),
                   [": TIFF of mode I", "no known 0..255 scale", "8- or 16-bit PNG"]),
    "b/cut.png": (lambda path: path.write_bytes(broken_chunk_png()),  # Pillow: SyntaxError
                  [": cannot read this image", "broken PNG file"]),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_file_in_a_class_folder_is_named(capsys, tmp_path, name):
    """A decompression bomb, a 32-bit TIFF named .png, a PNG broken inside its data."""
    dataset = class_folders(tmp_path / "photos", {"a": 5, "b": 5})
    write, words = BAD_FILES[name]
    write(dataset / name)
    before = file_hashes(dataset)
    result = train(tmp_path, dataset, "--epochs", "1", capsys=capsys)
    assert_refused(result, 1, f"{dataset / name}{words[0]}", *words[1:])
    assert file_hashes(dataset) == before and not (tmp_path / "out" / "contrastive_photos").exists()


@pytest.mark.parametrize("sizes,named", [
    ({"cats": 6, "two": 2}, "class 'two' has 2 images"),
    ({CAFE: 3, "plain": 6}, "class 'caf\\xe9' has 3 images"),
])
def test_a_class_too_small_to_train_is_named_by_its_folder(capsys, tmp_path, sizes, named):
    """Pairs need two training images of a class and the fixed test pairs two test images:
    four in all. The error names the folder, not a class number."""
    dataset = class_folders(tmp_path / "photos", sizes)
    small = image_folders.display_name(min(sizes, key=sizes.get))
    before = file_hashes(dataset)
    result = train(tmp_path, dataset, "--epochs", "1", capsys=capsys)
    assert_refused(result, 1, named, "each class needs at least 4 (2 to train on, 2 to test on)",
                   f"add images to {dataset / small}")
    assert file_hashes(dataset) == before and not (tmp_path / "out" / "contrastive_photos").exists()


def test_four_images_are_enough_for_a_class(tmp_path):
    """The smallest class that trains: two images to train on, two to test on."""
    dataset = class_folders(tmp_path / "photos", {"four": 4, "more": 9})
    result = train(tmp_path, dataset, "--epochs", "1", "--no-frames", "--no-projector",
                   "--no-export")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "contrastive_photos" / "metrics.json").read_text())
    assert metrics["test_images"] == 2 + 2 and metrics["train_images"] == 2 + 7


# --- the CLI: embed ------------------------------------------------------------------------

def embed(capsys, run, *args):
    """``siamese-keras embed`` in this process (each call would otherwise spend 5 s
    starting TensorFlow)."""
    return main_result(capsys, "embed", run, *args)


def test_embed_reads_16_bit_and_palette_images_as_their_8_bit_pixels(capsys, names_run, tmp_path):
    run = names_run[0]
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 65536, (28, 28)).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(png_bytes(wide, 0))
    colours = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    indices = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette(colours.tobytes())
    palette.save(tmp_path / "palette.png", transparency=5)
    gray = np.asarray(Image.fromarray(colours[indices]).convert("L"))
    np.save(tmp_path / "expected.npy", np.stack([(wide.astype(np.int64) + 128) // 257, gray]))
    result = embed(capsys, run, tmp_path / "deep.png", tmp_path / "palette.png",
                   tmp_path / "expected.npy", "--out", tmp_path / "e.npy")
    assert result.returncode == 0, result.stderr[-3000:]
    embeddings = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(embeddings[:2], embeddings[2:], atol=1e-6)


def test_embed_refuses_a_decompression_bomb(capsys, names_run, tmp_path):
    (tmp_path / "huge.png").write_bytes(bomb_png())
    before = file_hashes(tmp_path, names_run[0])
    result = embed(capsys, names_run[0], tmp_path / "huge.png", "--out", tmp_path / "e.csv")
    assert_refused(result, 1, f"{tmp_path / 'huge.png'}: 20,000 x 20,000 pixels is over the "
                   "178,956,970 pixels Pillow reads")
    assert file_hashes(tmp_path, names_run[0]) == before and not (tmp_path / "e.csv").exists()


def test_embed_refuses_a_float_image(capsys, names_run, tmp_path):
    tiff_as_png(tmp_path / "depth.png", np.linspace(0, 1, 28 * 28, dtype=np.float32)
                .reshape(28, 28))
    before = file_hashes(tmp_path)
    result = embed(capsys, names_run[0], tmp_path / "depth.png", "--out", tmp_path / "e.csv")
    assert_refused(result, 1, f"{tmp_path / 'depth.png'}: TIFF of mode F (32-bit float pixels)")
    assert file_hashes(tmp_path) == before


@pytest.mark.parametrize("name,array,words", [
    ("nan.npy", np.where(np.arange(2 * 784).reshape(2, 28, 28) % 500 == 0, np.nan, 9.0),
     "holds 4 NaN values"),
    ("inf.npy", np.full((1, 28, 28), -np.inf, np.float32), "holds 784 infinite values"),
    ("negative.npy", np.full((1, 28, 28), -1, np.int16),
     "holds 784 values outside 0..255 (from -1 to -1)"),
    ("deep.npy", np.arange(784, dtype=np.uint16).reshape(1, 28, 28) * 80,
     "holds 780 values outside 0..255 (from 0 to 62640); the model takes raw pixels "
     "0..255; scale 16-bit images with * 255 / 65535"),
])
def test_embed_refuses_arrays_that_are_not_pixels_0_to_255(capsys, names_run, tmp_path, name, array,
                                                           words):
    np.save(tmp_path / name, array)
    before = file_hashes(tmp_path, names_run[0])
    result = embed(capsys, names_run[0], tmp_path / name, "--out", tmp_path / "e.csv")
    assert_refused(result, 1, f"{tmp_path / name}: {words}")
    assert file_hashes(tmp_path, names_run[0]) == before and not (tmp_path / "e.csv").exists()


def test_embed_refuses_an_npz_or_empty_file_named_npy(capsys, names_run, tmp_path):
    np.savez(tmp_path / "archive", images=np.zeros((1, 28, 28), np.uint8))
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    before = file_hashes(tmp_path)
    for name, words in [("archive.npy", "a .npz archive, not a .npy array"),
                        ("empty.npy", "cannot read this .npy file")]:
        result = embed(capsys, names_run[0], tmp_path / name, "--out", tmp_path / "e.csv")
        assert_refused(result, 1, f"{tmp_path / name}: {words}")
    assert file_hashes(tmp_path) == before


def _inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "batch.npy", np.arange(2 * 784).reshape(2, 28, 28) % 256)
    return folder


@pytest.mark.parametrize("arrange,inputs,out,words", [
    (None, ["in/batch.npy"], "in/batch.npy", "--out {t}/in/batch.npy is the input"),
    (None, ["in/batch.npy"], "in/./../in/batch.npy", "is the input {t}/in/batch.npy"),
    (None, ["in"], "in/batch.npy", "is the input {t}/in/batch.npy"),  # found in a folder
    (lambda t: (t / "alias.npy").symlink_to(t / "in" / "batch.npy"), ["in/batch.npy"],
     "alias.npy", "--out {t}/alias.npy is the input"),
    (lambda t: (t / "in" / "link.npy").symlink_to(t / "e.npy"), ["in/link.npy"], "e.npy",
     "--out {t}/e.npy is the input {t}/in/link.npy"),
    # An input that is (a link to) the names file a .npy output writes beside it.
    (lambda t: (t / "in" / "names.npy").symlink_to(t / "e.npy.names.txt"), ["in/names.npy"],
     "e.npy", "--out {t}/e.npy (its names file {t}/e.npy.names.txt) is the input"),
])
def test_embed_refuses_an_output_that_is_one_of_its_inputs(capsys, names_run, tmp_path, arrange,
                                                           inputs, out, words):
    _inputs(tmp_path)
    np.save(tmp_path / "e.npy", np.zeros((2, 28, 28), np.uint8))  # an earlier output
    (tmp_path / "e.npy.names.txt").write_text("earlier names\n")
    if arrange:
        arrange(tmp_path)
    before = file_hashes(tmp_path)
    result = embed(capsys, names_run[0], *[tmp_path / i for i in inputs], "--out",
                   tmp_path / out)
    assert_refused(result, 2, words.format(t=tmp_path), "choose another output file")
    assert file_hashes(tmp_path) == before


def test_embed_checks_its_output_before_loading_the_model(capsys, tmp_path):
    """The same refusal with a MODEL that is no model: the output was checked first."""
    _inputs(tmp_path)
    before = file_hashes(tmp_path)
    result = embed(capsys, tmp_path, tmp_path / "in" / "batch.npy", "--out",
                   tmp_path / "in/batch.npy")
    assert_refused(result, 2, "is the input")
    assert file_hashes(tmp_path) == before


def test_check_output_sees_hard_links_and_lets_new_files_pass(tmp_path):
    from keras_siamese.embed import check_output
    from keras_siamese.errors import ConfigError

    np.save(tmp_path / "a.npy", np.zeros((1, 28, 28), np.uint8))
    os.link(tmp_path / "a.npy", tmp_path / "b.npy")
    with pytest.raises(ConfigError, match="b.npy is the input .*a.npy"):
        check_output(tmp_path / "b.npy", [tmp_path / "a.npy"])
    assert check_output(tmp_path / "c.npy", [tmp_path]) == tmp_path / "c.npy"
    assert check_output(tmp_path / "a.csv", [tmp_path / "a.npy"]) == tmp_path / "a.csv"


def test_embed_names_that_are_not_utf8_are_escaped_in_its_output(capsys, names_run, names_data,
                                                                 tmp_path):
    folder = tmp_path / CAFE
    folder.mkdir()
    (folder / BAD_FILE).write_bytes((names_data / "plain" / BAD_FILE).read_bytes())
    (folder / "tab\there.png").write_bytes((names_data / "zeta" / "01.png").read_bytes())
    result = embed(capsys, names_run[0], folder, "--out", tmp_path / "e.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "e.csv").read_text(encoding="utf-8").splitlines()
    assert [row.split(",")[0] for row in rows] == [
        "name", f"{tmp_path}/caf\\xe9/tab\\x09here.png", f"{tmp_path}/caf\\xe9/\\xff00.png"]
