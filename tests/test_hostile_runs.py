"""Hostile use of run folders, exports, signals, disks and memory, through the real
console script: every case ends with one clear line and the right exit code, and nothing
that was on disk before is lost or changed (checked file by file, by md5)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import CLI, assert_refused, file_hashes, main_result, run_cli, run_main
from keras_siamese.checkpoint import HOLD_AFTER_EPOCH
from keras_siamese.run_lock import lock_path

QUICK = ["--limit", "600", "--epochs", "1", "--frame-images", "100"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A short real contrastive run on an MNIST slice (module-wide, never modified:
    tests that change a run work on a copy)."""
    root = tmp_path_factory.mktemp("finished")
    result = run_cli("train", *QUICK, "--output-dir", root / "out", "--log-dir", root / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out" / "contrastive_mnist"


@pytest.fixture
def run_copy(finished, tmp_path):
    copy = tmp_path / "out" / finished.name
    shutil.copytree(finished, copy)
    return copy


# --- export never destroys a folder it was not asked to replace ----------------------------

def test_export_refuses_a_folder_of_documents(capsys, finished, tmp_path):
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    before = file_hashes(tmp_path)
    assert_refused(main_result(capsys, "export", finished, "--out", docs), 2,
                   "holds other files (not an earlier export of this run)", "--overwrite")
    assert file_hashes(tmp_path) == before


@pytest.mark.parametrize("where", ["run", "output root", "its parent"])
def test_export_never_replaces_the_run_or_a_folder_holding_it(capsys, run_copy, where):
    target = {"run": run_copy, "output root": run_copy.parent,
              "its parent": run_copy.parent.parent}[where]
    before = file_hashes(run_copy.parent)
    for extra in ([], ["--overwrite"]):
        assert_refused(main_result(capsys, "export", run_copy, "--out", target, *extra), 2,
                       "would replace the run folder")
    assert file_hashes(run_copy.parent) == before


def test_export_refuses_a_file(capsys, finished, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"not a folder")
    assert_refused(main_result(capsys, "export", finished, "--out", target), 2,
                   "is a file, not a folder")
    assert target.read_bytes() == b"not a folder"


def test_export_replaces_its_own_earlier_export_and_with_overwrite_a_foreign_folder(
        finished, tmp_path):
    out = tmp_path / "served"
    for _ in range(2):  # the second replaces the first: an earlier export of this run
        result = run_cli("export", finished, "--out", out)
        assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "assets.extra" / "keras_siamese.json").read_text())["run"] == \
        str(finished.absolute())
    other = tmp_path / "other"
    other.mkdir()
    (other / "old.txt").write_text("replace me")
    result = run_cli("export", finished, "--out", other, "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (other / "saved_model.pb").is_file() and not (other / "old.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


# --- damaged run folders -------------------------------------------------------------------

@pytest.mark.parametrize("damage,words", [
    ("truncate", "not a complete .keras archive (truncated or damaged)"),
    ("flip", "damaged"),
])
@pytest.mark.parametrize("command", ["evaluate", "export", "embed"])
def test_damaged_model_file_is_one_line(run_copy, tmp_path, capsys, damage, words, command):
    model = run_copy / "model.keras"
    raw = bytearray(model.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:  # flip bytes inside the stored weights
        for i in range(len(raw) // 3, len(raw) // 3 + 64):
            raw[i] ^= 0xFF
    model.write_bytes(bytes(raw))
    before = file_hashes(run_copy)
    args = {"evaluate": ["evaluate", run_copy], "export": ["export", run_copy],
            "embed": ["embed", run_copy, tmp_path / "x.npy", "--out", tmp_path / "e.csv"]}
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    code, lines = run_main(capsys, *args[command])
    assert code == 1 and len(lines) == 1, lines
    assert f"cannot load {model}" in lines[0] and words in lines[0], lines
    assert "File not found" not in lines[0]
    assert file_hashes(run_copy) == before


@pytest.mark.parametrize("content,words", [
    ("[1, 2]", "holds a JSON list, not a run's settings"),
    ('{"dataset": null}', "dataset is null, not a value of type str"),
    ('{"epochs": -3}', "epochs must be > 0"),
    ('{"loss": "contrastive", "colour": "red"}', "settings this version does not know (colour)"),
    ("{not json", "is not valid JSON"),
])
@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_malformed_config_json_is_one_line(run_copy, capsys, content, words, command):
    (run_copy / "config.json").write_text(content)
    before = file_hashes(run_copy)
    args = ["evaluate", run_copy] if command == "evaluate" else ["train", "--resume", run_copy]
    code, lines = run_main(capsys, *args)
    assert code == 1 and len(lines) == 1, lines
    assert str(run_copy / "config.json") in lines[0] and words in lines[0], lines
    assert file_hashes(run_copy) == before


# --- train --overwrite replaces a run only with a finished one ---------------------------

def test_failed_overwrite_leaves_the_earlier_run_as_it_was(finished, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    shutil.copytree(finished, out / finished.name)
    shutil.copytree(finished.parents[1] / "logs" / finished.name, logs / finished.name)
    before = file_hashes(tmp_path)
    failed = run_cli("train", *QUICK, "--output-dir", out, "--log-dir", logs, "--overwrite",
                     "--lr", "1e30")
    assert_refused(failed, 1, "training loss became nan",
                   f"the new run was discarded and {out / finished.name} is unchanged")
    assert file_hashes(tmp_path) == before  # no hidden staging folder left either

    result = run_cli("train", *QUICK, "--output-dir", out, "--log-dir", logs, "--overwrite",
                     "--seed", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / finished.name / "config.json").read_text())["seed"] == 5
    assert sorted(p.name for p in out.iterdir()) == [finished.name]
    assert sorted(p.name for p in logs.iterdir()) == [finished.name]


def test_a_new_run_that_fails_leaves_no_stub(tmp_path):
    args = ["train", *QUICK, "--output-dir", tmp_path / "out", "--log-dir", tmp_path / "logs"]
    assert_refused(run_cli(*args, "--lr", "1e30"), 1, "training loss became nan at epoch 1",
                   "no epoch had finished, so nothing was kept")
    assert not (tmp_path / "out" / "contrastive_mnist").exists()
    assert not (tmp_path / "logs" / "contrastive_mnist").exists()


# --- locks, signals, resume ----------------------------------------------------------------

def start_held_run(tmp_path, *extra):
    """A run that holds after epoch 1's checkpoint until a signal comes (a state it
    reports on disk, so nothing here depends on how fast the machine is)."""
    out = tmp_path / "out"
    command = [CLI, "train", "--limit", "600", "--epochs", "3", "--frame-images", "100",
               "--output-dir", out, "--log-dir", tmp_path / "logs", *extra]
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "KERAS_SIAMESE_OFFLINE": "1",
                                    HOLD_AFTER_EPOCH: "1"})
    run = out / "contrastive_mnist"
    while not any((run / "checkpoints").glob("epoch_001.keras")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)
    return process, run


def test_a_run_in_training_is_locked_and_sigterm_keeps_its_epochs(capsys, tmp_path):
    process, run = start_held_run(tmp_path)
    try:
        holder = json.loads(lock_path(run).read_text())
        assert holder["pid"] == process.pid
        before = file_hashes(run)
        out, logs = tmp_path / "out", tmp_path / "logs"
        for args in (["train", "--limit", "600", "--output-dir", out, "--log-dir", logs,
                      "--overwrite"],
                     ["train", "--resume", run], ["evaluate", run], ["export", run]):
            assert_refused(main_result(capsys, *args), 1, f"{run} is in use",
                           f"process {process.pid}",
                           "wait for it to finish or stop it")
        assert file_hashes(run) == before

        process.send_signal(signal.SIGTERM)  # as a scheduler or `kill` stops a job
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("siamese-keras:")]
    assert lines == [f"siamese-keras: error: interrupted after epoch 1 of 3; continue with: "
                     f"siamese-keras train --resume {run}"]
    assert not lock_path(run).exists()

    # Temporary files of a write that was killed halfway are removed when it resumes.
    leftovers = [run / ".model.keras.tmp-99999.keras",
                 run / "checkpoints" / ".epoch_002.keras.tmp-99999.keras"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    result = run_cli("train", "--resume", run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(path.exists() for path in leftovers)
    assert (run / "metrics.json").is_file() and not lock_path(run).exists()


def test_a_stale_lock_is_taken_over_and_a_garbled_one_refused(capsys, run_copy):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    lock = lock_path(run_copy)
    lock.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(),
                                "doing": "training", "started": "earlier"}))
    result = run_cli("evaluate", run_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed the stale lock" in result.stderr and not lock.exists()

    lock.write_text("\x00\x01 garbage")
    before = file_hashes(run_copy.parent)
    assert_refused(main_result(capsys, "evaluate", run_copy), 1, "which cannot be read",
                   "if no siamese-keras command is working on this run, delete that file")
    assert file_hashes(run_copy.parent) == before


def test_ctrl_c_while_loading_is_one_quiet_line_and_leaves_nothing(tmp_path):
    """SIGINT as soon as the data is loaded (the run says so on stderr), and SIGTERM right
    behind it (a scheduler stopping the job too): the second lands in the clean-up."""
    command = [CLI, "train", "--output-dir", tmp_path / "out", "--log-dir", tmp_path / "logs"]
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "KERAS_SIAMESE_OFFLINE": "1"})
    try:
        seen = []
        for line in process.stderr:
            seen.append(line)
            if line.startswith("loaded mnist"):
                process.send_signal(signal.SIGINT)
                process.send_signal(signal.SIGTERM)
                break
        rest = process.stderr.read()
        process.wait(timeout=300)
    finally:
        process.kill()
        process.wait()
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr[-3000:]
    assert "Task was destroyed" not in stderr and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("siamese-keras:")]
    assert len(lines) == 1 and lines[0].startswith("siamese-keras: error: interrupted"), stderr
    assert not (tmp_path / "out" / "contrastive_mnist").exists()


def test_resume_refuses_data_that_changed_and_a_damaged_checkpoint(capsys, tmp_path):
    process, run = start_held_run(tmp_path)
    process.kill()
    process.wait()
    checkpoint = run / "checkpoints" / "epoch_001.keras"
    intact = checkpoint.read_bytes()
    flipped = bytearray(intact)
    for i in range(len(flipped) // 2, len(flipped) // 2 + 64):
        flipped[i] ^= 0xFF
    checkpoint.write_bytes(bytes(flipped))
    assert_refused(main_result(capsys, "train", "--resume", run), 1, f"cannot load {checkpoint}",
                   "train again with --overwrite")
    assert checkpoint.read_bytes() == bytes(flipped)
    checkpoint.write_bytes(intact)

    config = json.loads((run / "config.json").read_text())
    config["data_fingerprint"]["sha256"] = "0" * 64  # as if the data had been edited since
    (run / "config.json").write_text(json.dumps(config))
    before = file_hashes(run)
    assert_refused(main_result(capsys, "train", "--resume", run), 1,
                   "has changed since it was trained",
                   "restore the data or train a new run")
    assert file_hashes(run) == before


# --- data that changed after training ------------------------------------------------------

def test_evaluate_refuses_a_folder_that_changed_and_never_overwrites_metrics(capsys, tmp_path,
                                                                            mnist):
    root = tmp_path / "digits"
    for digit in (0, 1, 7):
        (root / f"d{digit}").mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(mnist.y_test == digit)[:12]):
            Image.fromarray(mnist.x_test[index, ..., 0]).save(root / f"d{digit}" / f"{i}.png")
    result = run_cli("train", "--dataset", root, "--epochs", "1", "--frame-images", "6",
                     "--output-dir", tmp_path / "out", "--log-dir", tmp_path / "logs")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "out" / "contrastive_digits"
    assert run_cli("evaluate", run).returncode == 0  # unchanged data: scored again

    Image.fromarray(mnist.x_test[0, ..., 0]).save(root / "d7" / "new.png")
    before = file_hashes(run)
    assert_refused(main_result(capsys, "evaluate", run), 1, "has changed since it was trained",
                   "(30 training / 6 test images then, 30 training / 7 test now)",
                   "pass --changed-data")
    assert file_hashes(run) == before

    result = run_cli("evaluate", run, "--changed-data")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "metrics_changed_data.json").is_file()
    after = file_hashes(run)
    after.pop(run / "metrics_changed_data.json")
    assert after == before


# --- full disks ------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real file system of a few hundred KB (tmpfs; needs root, as CI has)."""
    mounted = []

    def make(kilobytes: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_while_checkpointing(tmp_path, small_disk):
    disk = small_disk(3000)
    result = run_cli("train", *QUICK, "--output-dir", disk / "out", "--log-dir",
                     tmp_path / "logs")
    assert_refused(result, 1, "cannot write the checkpoint",
                   "No space left on device", "nothing was kept")
    assert list((disk / "out").iterdir()) == []


def test_full_disk_for_the_tensorboard_logs(tmp_path, small_disk):
    disk = small_disk(60)
    result = run_cli("train", *QUICK, "--output-dir", tmp_path / "out", "--log-dir",
                     disk / "logs")
    assert_refused(result, 1, "No space left on device")
    assert not (tmp_path / "out" / "contrastive_mnist").exists()


def test_full_disk_for_the_projector(tmp_path, small_disk):
    """Room for the scalars, not for the projector's sprite of 2,000 images."""
    disk = small_disk(300)
    result = run_cli("train", "--limit", "600", "--epochs", "1", "--output-dir",
                     tmp_path / "out", "--log-dir", disk / "logs")
    assert_refused(result, 1, "No space left on device", "nothing was kept")
    assert not (tmp_path / "out" / "contrastive_mnist").exists()


def test_full_disk_while_exporting(capsys, finished, small_disk):
    disk = small_disk(500)
    before = file_hashes(finished)
    assert_refused(main_result(capsys, "export", finished, "--out", disk / "model"), 1,
                   f"cannot write the SavedModel to {disk / 'model'}")
    assert list(disk.iterdir()) == [] and file_hashes(finished) == before


# --- memory -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--image-size", "512", "--limit", "200"], ["training 128 examples of 512x512 images per "
                                                 "step needs about", "lower --batch-size"]),
    (["--image-size", "1024"], ["holding 70000 images of 1024x1024x1 needs about",
                                "lower --image-size or --limit"]),
])
def test_a_run_too_large_for_memory_is_refused_up_front(tmp_path, args, words):
    result = run_cli("train", *args, "--output-dir", tmp_path / "out", "--log-dir",
                     tmp_path / "logs")
    assert_refused(result, 1, "GiB are available", *words)
    assert not (tmp_path / "out" / "contrastive_mnist").exists()


# --- the exported model checks what it is given -----------------------------------------------

CHECK_INPUTS = """
import json, sys
import numpy as np
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
answers = {}
for name, images in [("28 px", np.zeros((1, 28, 28, 1))), ("29 px", np.zeros((1, 29, 29, 1))),
                     ("31 px", np.zeros((1, 31, 31, 1))), ("NaN", np.full((1, 28, 28, 1), np.nan)),
                     ("negative", np.full((1, 28, 28, 1), -1.0)),
                     ("above 255", np.full((1, 28, 28, 1), 256.0))]:
    try:
        serve(image=tf.constant(images, tf.float32))
        answers[name] = "embedded"
    except tf.errors.InvalidArgumentError as error:
        answers[name] = error.message
print(json.dumps(answers))
"""


def test_the_saved_model_refuses_wrong_sizes_and_bad_pixels(finished):
    result = subprocess.run([sys.executable, "-c", CHECK_INPUTS,
                             str(finished / "saved_model")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.splitlines()[-1])
    assert answers["28 px"] == "embedded"
    expected = "[batch, 28, 28, 1] float32 raw pixels 0..255"
    for name in ("29 px", "31 px"):
        assert f"images must be {expected}" in answers[name]
    assert f"images hold NaN or inf: must be {expected}" in answers["NaN"]
    assert "pixels below 0" in answers["negative"]
    assert "pixels above 255" in answers["above 255"]
