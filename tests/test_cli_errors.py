"""Every bad input gives one clear line, a non-zero exit, no traceback, and touches nothing.

The bad options run the command line's ``main(argv)`` in this process, as
``test_hostile_options.py`` does (a fresh process per case spends 5 s importing
TensorFlow); the other cases go through the real console script."""

import pytest

from helpers import error_lines, run_cli, run_main

CASES = [
    (["--loss", "hinge"], 2, "'hinge' is not one of"),
    (["--dataset", "cifar10"], 2, "unknown dataset 'cifar10': choose mnist, fashion_mnist, "
     "tfds:NAME or a folder"),
    (["--image-size", "8"], 2, "--image-size must be >= 16"),
    (["--test-split", "1"], 2, "--test-split must be between 0 and 1"),
    (["--backbone", "vgg"], 2, "'vgg' is not one of 'small', 'resnet'"),
    (["--strategy", "tpu"], 2, "'tpu' is not one of"),
    (["--loss", "vae", "--image-size", "30"], 2, "--image-size 30: --loss vae needs a multiple of 4"),
    (["--margin", "0"], 2, "margin must be > 0"),
    (["--margin", "-1"], 2, "margin must be > 0"),
    (["--epochs", "0"], 2, "epochs must be > 0"),
    (["--batch-size", "-4"], 2, "batch size must be > 0"),
    (["--learning-rate", "0"], 2, "learning rate must be > 0"),
    (["--epochs", "two"], 2, "'two' is not a valid integer"),
    (["--run-name", "../escape"], 2, "plain folder name"),
    (["--data-dir", "/nonexistent/mnist"], 1, "not a readable folder"),
    (["--loss", "bce", "--mining", "batch-hard"], 2, "--mining 'batch-hard' does not apply"),
    (["--loss", "triplet", "--mining", "semi-hard", "--classes-per-batch", "11"], 2,
     "--classes-per-batch 11: only 10 classes"),
    (["--loss", "triplet", "--mining", "semi-hard", "--limit", "100", "--images-per-class",
      "11"], 2, "--images-per-class 11: the smallest class has only 10 images"),
    (["--loss", "arcface", "--no-normalize"], 2,
     "--no-normalize: --loss arcface is defined on the cosine similarity of unit vectors"),
]


@pytest.mark.parametrize("args,code,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_option(tmp_path, capsys, args, code, message):
    exit_code, lines = run_main(capsys, "train", "--output-dir", tmp_path / "out", "--log-dir",
                                tmp_path / "logs", *args)
    assert exit_code == code, lines
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("train", "--output-dir", blocker / "out", "--log-dir", tmp_path / "logs")
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "cannot write to" in lines[0]
    assert blocker.read_text() == "not a folder"


def test_existing_run_is_not_touched(tmp_path):
    run = tmp_path / "out" / "contrastive_mnist"
    run.mkdir(parents=True)
    (run / "model.keras").write_text("earlier result")
    result = run_cli("train", "--output-dir", tmp_path / "out", "--log-dir", tmp_path / "logs")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "already exists: pass --overwrite" in lines[0]
    assert (run / "model.keras").read_text() == "earlier result"
    assert not (tmp_path / "logs" / "contrastive_mnist").exists()


def test_missing_data_keeps_an_existing_run_even_with_overwrite(tmp_path):
    run = tmp_path / "out" / "contrastive_mnist"
    run.mkdir(parents=True)
    (run / "model.keras").write_text("earlier result")
    empty = tmp_path / "empty-data"
    empty.mkdir()
    result = run_cli("train", "--output-dir", tmp_path / "out", "--log-dir", tmp_path / "logs",
                     "--data-dir", empty, "--overwrite")
    assert result.returncode == 1
    assert "has no train-images idx file" in error_lines(result)[0]
    assert (run / "model.keras").read_text() == "earlier result"


def test_help_explains_every_option():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for option in ["--loss", "--dataset", "--epochs", "--batch-size", "--learning-rate",
                   "--margin", "--embedding-dim", "--seed", "--limit", "--data-dir",
                   "--output-dir", "--log-dir", "--run-name", "--overwrite", "--image-size",
                   "--test-split", "--backbone", "--strategy", "--normalize",
                   "--sub-centers"]:
        assert option in result.stdout


def test_corrupted_data_file_is_one_line(tmp_path, mnist):
    from test_data import write_idx_dir

    (tmp_path / "data").mkdir()
    data_dir = write_idx_dir(tmp_path / "data", mnist, compress=False)
    labels = data_dir / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[100] = (raw[100] + 1) % 10
    labels.write_bytes(bytes(raw))
    result = run_cli("train", "--data-dir", data_dir, "--output-dir", tmp_path / "out",
                     "--log-dir", tmp_path / "logs")
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert "md5" in line and str(labels) in line, line
    assert not (tmp_path / "out" / "contrastive_mnist").exists()
