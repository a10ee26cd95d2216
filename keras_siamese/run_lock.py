"""One process at a time per run folder: a lock file beside it, with its holder.

Training, resuming, evaluating and exporting a run each hold ``<output>/.<run>.lock``
while they work, so a second ``train --overwrite`` (or ``--resume``, ``evaluate``) of a
run that is still being trained is refused with a line naming the holder, instead of
deleting files under the running process. The lock sits beside the run folder, not in
it, so it stays put while ``--overwrite`` swaps a finished new run into place.

The lock file is JSON ``{"pid", "host", "doing", "started", "process_start"}``, created
complete in one step (written under a temporary name, then hard-linked to the lock name,
which fails if the lock exists). A lock whose process is gone (same host, no such PID, or
a PID reused by a process that started later) is stale: it is removed with a warning. A
lock of another host is never taken over: that host may still be training on a shared disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from keras_siamese.errors import OutputError, SiameseError

log = logging.getLogger(__name__)


class RunLockedError(SiameseError):
    """Another process holds the run's lock."""


def lock_path(run_dir) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a
    live holder from a later process that got the same PID; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


class RunLock:
    """``with RunLock(run_dir, "training"):`` holds the run's lock for the block."""

    def __init__(self, run_dir, doing: str, writes: bool = True):
        """``writes``: the command writes into the run folder. One that only reads it
        (exporting elsewhere) goes on without a lock where the folder is read-only:
        nothing can be training there either."""
        self.run_dir, self.doing, self.writes = Path(run_dir), doing, writes
        self.path = lock_path(self.run_dir)
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "doing": self.doing,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "process_start": _process_start(os.getpid())}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record) + "\n")
        except OSError as error:
            if not self.writes and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return
            raise OutputError(f"cannot write to {self.path.parent}: "
                              f"{error.strerror or error}; choose another folder") from error
        try:
            for _ in range(2):  # a second try after removing a stale lock
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    self._refuse_or_clear()
        except OSError as error:
            raise OutputError(f"cannot lock {self.run_dir}: {error.strerror or error} "
                              f"({self.path})") from error
        finally:
            tmp.unlink(missing_ok=True)
        raise RunLockedError(f"cannot lock {self.run_dir}: {self.path} keeps coming back")

    def _refuse_or_clear(self) -> None:
        """Remove a stale lock; raise RunLockedError naming a live holder."""
        try:
            holder = json.loads(self.path.read_text())
            if not isinstance(holder, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError) as error:
            raise RunLockedError(f"{self.run_dir} is locked by {self.path}, which cannot be "
                                 "read: if no siamese-keras command is working on this run, "
                                 "delete that file") from error
        here = holder.get("host") == socket.gethostname()
        if here and not _alive(holder):
            log.warning("removed the stale lock of %s (process %s is gone)", self.run_dir,
                        holder.get("pid"))
            self.path.unlink(missing_ok=True)
            return
        where = "this machine" if here else f"host {holder.get('host')}"
        raise RunLockedError(
            f"{self.run_dir} is in use: {holder.get('doing', 'a command')} by process "
            f"{holder.get('pid')} on {where} since {holder.get('started')}; wait for it to "
            f"finish or stop it (lock file {self.path})")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
