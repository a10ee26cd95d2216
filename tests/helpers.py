"""Running the installed ``siamese-keras`` console script the way a user does."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

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


def run_main(capsys, *args) -> tuple[int, list[str]]:
    """The command line's ``main(args)`` in this process (no 5 s TensorFlow start-up per
    call): its exit code and the lines it wrote to stderr. Its signal handlers are undone."""
    from keras_siamese.cli.main import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main([str(a) for a in args])
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    return code, capsys.readouterr().err.splitlines()


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
