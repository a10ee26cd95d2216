"""Hold back TensorFlow's native start-up lines, keep its real warnings and errors.

TensorFlow 2.21 logs through absl before absl is initialised, so ``TF_CPP_MIN_LOG_LEVEL``
does not reach its import-time lines ("oneDNN custom operations are on", "Could not find
cuda drivers", "This TensorFlow binary is optimized ..."): every command would print six of
them before its own first line. They are written by C++ straight to file descriptor 2,
so Python's ``sys.stderr`` cannot filter them. :func:`quiet_native_startup` points fd 2 at
a temporary file while the import runs, then writes back everything except absl INFO
records, so a warning or error from the import (a missing library, a bad CPU) still shows.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# An absl record starts with its severity letter and a date: "I0000 00:00:17...  123 file:1]".
_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ ")
_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called"
# Logged as an error on every machine without an NVIDIA driver, i.e. every CPU-only one.
_NO_GPU = "failed call to cuInit"


def filter_native_lines(text: str) -> str:
    """``text`` without absl INFO records (a record's continuation lines included), absl's
    pre-initialisation notice and the no-GPU cuInit error."""
    kept, in_info = [], False
    for line in text.splitlines(keepends=True):
        if _RECORD.match(line):
            in_info = line.startswith("I") or _NO_GPU in line
        elif line.startswith(_PRE_INIT):
            in_info = True  # the notice, then whatever INFO record follows
            continue
        if not in_info:
            kept.append(line)
    return "".join(kept)


_terminal_fd = 2  # where fd 2 pointed before a capture began


def write_to_terminal(text: str) -> None:
    """Write ``text`` to the real stderr, also while :func:`quiet_native_startup` holds
    fd 2 (a signal handler's last word before ``os._exit``)."""
    os.write(_terminal_fd, text.encode())


@contextlib.contextmanager
def quiet_native_startup():
    """Run the block with fd 2 captured; re-emit what is not absl INFO noise afterwards."""
    if os.environ.get("KERAS_SIAMESE_NATIVE_LOGS"):  # a user debugging an import wants all
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 (embedded interpreters): nothing to filter
        yield
        return
    global _terminal_fd
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        _terminal_fd = saved
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            _terminal_fd = 2
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = filter_native_lines(text)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
