"""The run folder and atomic file writes.

A file is written under a temporary name beside its target and moved into place with
``os.replace``, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from keras_siamese.errors import ConfigError, OutputError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path (same folder and suffix) that becomes ``path`` on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:  # name the file the user knows, not its temporary name
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def replace_folder(new, target) -> None:
    """Put the finished folder ``new`` at ``target``, replacing what is there: the old folder
    moves aside, ``new`` takes its name (each ``os.replace`` is atomic, so a crash leaves
    one complete folder or the other under ``target``), then the old one is deleted."""
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def is_inside(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (compared as absolute paths)."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def check_run_folders(folders, overwrite: bool) -> None:
    """Fail early, touching nothing, if a run folder exists (without overwrite) or cannot be
    written; creating the missing parent roots (``output/``, ``logs/``) is harmless."""
    for folder in map(Path, folders):
        if folder.exists() and not overwrite:
            raise ConfigError(f"{folder} already exists: pass --overwrite to replace it "
                              "or --run-name to start another run")
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            probe = folder.parent / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise OutputError(f"cannot write to {folder.parent}: {error.strerror or error}; "
                              "choose another folder") from error


def create_run_folders(folders) -> None:
    """Create fresh, empty run folders (an earlier run is replaced only once the new one
    has finished, see :func:`keras_siamese.experiment.run`)."""
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True)
        except OSError as error:
            raise OutputError(f"cannot create {folder}: {error.strerror or error}") from error
