"""Hostile option values: each is refused with one line and exit 2 before any TensorFlow
work, and nothing on disk changes (a user's file already in the output folder stays).

The command line runs in this process (``main(argv)``, the console script's own entry
point): a fresh process per case would spend 5 s importing TensorFlow; the process-level
behaviour (stderr, exit codes) is checked through the real console script below."""

import hashlib

import pytest

from helpers import file_hashes, run_cli, run_main

CASES = [
    (["--seed", "4294967296"], "seed must be between 0 and 4294967295"),
    (["--seed", "-1"], "seed must be between 0 and 4294967295"),
    (["--embedding-dim", "1000000"], "embedding dimension must be <= 4096"),
    (["--embedding-dim", "0"], "embedding dimension must be > 0"),
    (["--image-size", "100000"], "--image-size must be <= 1024"),
    (["--gif-frame-ms", "100000000"], "--gif-frame-ms must be <= 655350"),
    (["--gif-frame-ms", "0"], "--gif-frame-ms must be > 0"),
    (["--lr", "inf"], "learning rate must be a finite number"),
    (["--lr", "nan"], "learning rate must be > 0, got nan"),
    (["--margin", "inf"], "margin must be a finite number"),
    (["--margin", "nan"], "margin must be > 0, got nan"),
    (["--test-split", "nan"], "--test-split must be between 0 and 1"),
    (["--test-split", "-0.5"], "--test-split must be between 0 and 1"),
    (["--run-name", "x" * 300], "give a --run-name of at most 200"),
    (["--run-name", ".hidden"], "must be a plain folder name"),
    (["--run-name", ""], "must be a plain folder name"),
    (["--run-name", "a/b"], "must be a plain folder name"),
    (["--frame-images", "0"], "--frame-images must be > 0"),
    (["--projector-every", "-1"], "--projector-every must be >= 0"),
    (["--eval-every", "-2"], "--eval-every must be >= 0"),
    (["--limit", "0"], "limit must be > 0"),
    (["--batch-size", "0"], "batch size must be > 0"),
    (["--classes-per-batch", "1", "--loss", "triplet", "--mining", "batch-all"],
     "--classes-per-batch and --images-per-class must be >= 2"),
    (["--holdout-classes", "a,b"], "is not a comma-separated list of class numbers"),
    (["--epochs", "1e3"], "'1e3' is not a valid integer"),
    (["--mining", "hardest"], "'hardest' is not one of"),
    # Options a loss cannot use, and losses on cosine similarity without unit vectors.
    *[(["--loss", loss, "--no-normalize"], f"--no-normalize: --loss {loss} is defined on "
       "the cosine similarity of unit vectors") for loss in
      ("multi-similarity", "circle", "supcon", "proxy-anchor", "arcface", "cosface")],
    (["--loss", "vae", "--normalize"], "--normalize does not apply to --loss vae"),
    (["--loss", "supcon", "--margin", "0.2"], "--margin does not apply to --loss supcon"),
    (["--loss", "multi-similarity", "--margin", "0.2"],
     "--margin does not apply to --loss multi-similarity"),
    (["--loss", "contrastive", "--sub-centers", "3"],
     "--sub-centers 3: only arcface, cosface have sub-centres, not --loss contrastive"),
    (["--loss", "proxy-anchor", "--sub-centers", "2"], "only arcface, cosface have sub-centres"),
    (["--loss", "arcface", "--sub-centers", "0"], "--sub-centers must be between 1 and 64"),
    (["--loss", "circle", "--mining", "random"],
     "--mining 'random' does not apply to --loss circle: choose one of all-pairs"),
    (["--loss", "arcface", "--mining", "batch-hard"],
     "--mining 'batch-hard' does not apply to --loss arcface: choose one of random"),
    (["--loss", "cosface", "--margin", "0"], "margin must be > 0"),
    # Options these settings would silently ignore.
    (["--loss", "supcon", "--batch-size", "64"],
     "--batch-size does not apply to --loss supcon (it trains on P x K batches"),
    (["--loss", "softmax", "--images-per-class", "4"],
     "--images-per-class does not apply to --loss softmax (only online mining"),
    (["--loss", "arcface", "--classes-per-batch", "4", "--images-per-class", "4"],
     "--classes-per-batch does not apply to --loss arcface (only online mining draws P x K "
     "batches); --images-per-class does not apply to --loss arcface (only online mining "
     "draws P x K batches): drop them"),
    (["--loss", "contrastive", "--mining", "hard-negative", "--memory-warmup", "5"],
     "--memory-warmup does not apply without --memory: drop it"),
]


@pytest.fixture
def user_folder(tmp_path):
    """An output folder that already holds a user's file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    return out


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_value_is_one_line_and_changes_nothing(tmp_path, user_folder, capsys, args,
                                                   message):
    before = file_hashes(tmp_path)
    code, lines = run_main(capsys, "train", "--output-dir", user_folder, "--log-dir",
                           tmp_path / "logs", *args)
    assert code == 2, lines
    assert len(lines) == 1 and message in lines[0], lines
    assert file_hashes(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no logs/ made


def test_overlapping_output_and_log_folders(tmp_path, user_folder, capsys):
    for log_dir in (user_folder, user_folder / "contrastive_mnist" / "tb"):
        code, lines = run_main(capsys, "train", "--output-dir", user_folder, "--log-dir",
                               log_dir)
        assert code == 2
        (line,) = lines
        assert "overlap: give --output-dir and --log-dir that are apart" in line
    assert file_hashes(tmp_path) == {user_folder / "notes.txt":
                                     hashlib.sha256(b"my notes").hexdigest()}


def test_stderr_holds_only_our_lines():
    """TensorFlow's start-up INFO lines are held back: --help writes nothing to stderr,
    a usage error exactly its one line."""
    result = run_cli("--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    result = run_cli("train", "--epochs", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["siamese-keras: error: epochs must be > 0, got 0"]


def test_the_native_filter_keeps_warnings_and_errors():
    from keras_siamese.native_logs import filter_native_lines

    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\n"
            "I0000 00:00:1795964162.231138    3627 port.cc:153] oneDNN custom operations\n"
            "I0000 00:00:1795964166.656306    3670 cpu_feature_guard.cc:227] This binary\n"
            "To enable the following instructions: AVX2 AVX512F\n"
            "E0000 00:00:1795964204.988162    3874 cuda_platform.cc:52] failed call to cuInit\n"
            "W0000 00:00:1795964204.988162    3874 x.cc:1] a real warning\n"
            "E0000 00:00:1795964204.988162    3874 y.cc:2] a real error\n"
            "Traceback (most recent call last):\n")
    assert filter_native_lines(text) == (
        "W0000 00:00:1795964204.988162    3874 x.cc:1] a real warning\n"
        "E0000 00:00:1795964204.988162    3874 y.cc:2] a real error\n"
        "Traceback (most recent call last):\n")
