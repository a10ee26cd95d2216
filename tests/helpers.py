"""Running the installed ``siamese-keras`` console script the way a user does, and the
online losses by brute-force enumeration that several test modules check against."""

import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

CLI = shutil.which("siamese-keras", path=str(Path(sys.executable).parent)) or "siamese-keras"


def run_cli(*args, cwd=None, timeout=600, env=None, unset=()):
    """Run the command with ``env`` added to this environment and ``unset`` names removed."""
    env = {**os.environ, "KERAS_SIAMESE_OFFLINE": "1", **(env or {})}
    for name in unset:
        env.pop(name, None)
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def error_lines(result):
    """The lines of stderr this program wrote (TensorFlow's own start-up lines left out)."""
    return [line for line in result.stderr.splitlines() if line.startswith("siamese-keras:")]


def main_result(capsys, *args) -> subprocess.CompletedProcess:
    """The command line's ``main(args)`` in this process (no 5 s TensorFlow start-up per
    call), as :func:`run_cli` reports a process: exit code, stdout and stderr. Its signal
    handlers are undone. For refusals and short commands; the process-level behaviour
    (exit status, TensorFlow's own stderr lines) is checked through the console script."""
    args = [str(a) for a in args]
    capsys.readouterr()  # drop what the test printed before
    code = call_main(*args)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def call_main(*args) -> int:
    """The command line's ``main(args)`` in this process, its exit code; the signal
    handlers it installs are undone."""
    from keras_siamese.cli.main import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return main([str(a) for a in args])
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def run_main(capsys, *args) -> tuple[int, list[str]]:
    """:func:`main_result`'s exit code and the lines written to stderr."""
    result = main_result(capsys, *args)
    return result.returncode, result.stderr.splitlines()


def file_hashes(*roots) -> dict:
    """sha256 of every file under ``roots`` (or of the files given, hidden ones too), by
    path: equal before and after a command means it changed nothing there."""
    found = {}
    for root in map(Path, roots):
        for path in ([root] if root.is_file() else sorted(root.rglob("*"))):
            if path.is_file():
                found[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_refused(result, code: int, *words) -> str:
    """Exit ``code``, one error line holding ``words``, no traceback; returns the line."""
    lines = error_lines(result)
    assert result.returncode == code, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith("siamese-keras: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def stop_after_first_checkpoint(tmp_path, signal_number, args, name="cut"):
    """Start ``train`` with ``args``, send it ``signal_number`` as soon as an epoch's
    checkpoint is on disk; returns the run folder, the exit code and stderr."""
    import time

    from keras_siamese.checkpoint import HOLD_AFTER_EPOCH

    command = [CLI, "train", *args, "--output-dir", tmp_path / "out", "--log-dir",
               tmp_path / "logs", "--run-name", name]
    # The run holds after epoch 1's checkpoint until the signal comes: however slow this
    # machine is, the signal reaches it between epochs 1 and 2, never after the last one.
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "KERAS_SIAMESE_OFFLINE": "1",
                                    HOLD_AFTER_EPOCH: "1"})
    checkpoints = tmp_path / "out" / name / "checkpoints"
    try:
        while not any(checkpoints.glob("epoch_*.keras")):
            assert process.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.05)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=120)  # a busy machine: seconds, not a hang
    finally:
        process.kill()
        process.wait(timeout=60)
    return tmp_path / "out" / name, process.returncode, stderr


# --- online losses by enumeration (float64), for test_mining and test_memory ------------


def brute_references(labels, e, memory_labels=(), memory_e=None):
    """Distances (float64) of every query to every usable reference: the other batch
    members (batch index j) and the filled memory entries, if any (index B + m)."""
    e = np.asarray(e, np.float64)
    memory_e = np.zeros((0, e.shape[1])) if memory_e is None else memory_e
    refs = np.concatenate([e, memory_e]).astype(np.float64)
    ref_labels = np.concatenate([labels, memory_labels])
    d2 = ((e.astype(np.float64)[:, None, :] - refs[None, :, :]) ** 2).sum(-1)
    usable = [[j for j in range(len(refs)) if j != a] for a in range(len(labels))]
    return d2, ref_labels, usable


def brute_triplet(labels, e, margin, rule, memory_labels=(), memory_e=None):
    """The online triplet loss by enumeration: ``rule`` batch-all (mean over the triplets
    with a positive loss), batch-hard, or semi-hard with the farthest-negative fallback."""
    d2, ref_labels, usable = brute_references(labels, e, memory_labels, memory_e)
    losses = []
    for a in range(len(labels)):
        positives = [p for p in usable[a] if ref_labels[p] == labels[a]]
        negatives = [q for q in usable[a] if ref_labels[q] != labels[a]]
        if not positives or not negatives:
            continue
        if rule == "batch-all":
            losses += [max(0.0, d2[a, p] - d2[a, q] + margin)
                       for p, q in itertools.product(positives, negatives)]
        elif rule == "batch-hard":
            losses.append(max(0.0, max(d2[a, p] for p in positives)
                              - min(d2[a, q] for q in negatives) + margin))
        else:  # semi-hard, with the farthest-negative fallback
            for p in positives:
                farther = [d2[a, q] for q in negatives if d2[a, q] > d2[a, p]]
                d_an = min(farther) if farther else max(d2[a, q] for q in negatives)
                losses.append(max(0.0, d2[a, p] - d_an + margin))
    if rule == "batch-all":
        losses = [value for value in losses if value > 0]
    return float(np.mean(losses)) if losses else 0.0


def brute_contrastive(labels, e, margin, memory_labels=(), memory_e=None):
    """The online contrastive loss by enumeration: every positive pair and as many nearest
    negative pairs, each pair once."""
    d2, ref_labels, _ = brute_references(labels, e, memory_labels, memory_e)
    b = len(labels)
    pairs = [(i, j) for i in range(b) for j in range(i + 1, b + len(memory_labels))]
    positive = [ij for ij in pairs if labels[ij[0]] == ref_labels[ij[1]]]
    negative = sorted((ij for ij in pairs if labels[ij[0]] != ref_labels[ij[1]]),
                      key=lambda ij: d2[ij])[:len(positive)]
    d = np.sqrt(np.maximum(d2, 1e-9))
    terms = ([0.5 * d[ij] ** 2 for ij in positive]
             + [0.5 * max(0.0, margin - d[ij]) ** 2 for ij in negative])
    return float(np.mean(terms)) if terms else 0.0
