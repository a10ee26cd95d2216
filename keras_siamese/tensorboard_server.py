"""A local TensorBoard server for scripts and tests: started, waited for, stopped.

It listens on 127.0.0.1 only, on a free port, and is stopped by its process id.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from keras_siamese.errors import MissingDependencyError, SiameseError


def tensorboard_executable() -> str:
    """The ``tensorboard`` beside this Python (its virtual environment), else on PATH."""
    found = (shutil.which("tensorboard", path=str(Path(sys.executable).parent))
             or shutil.which("tensorboard"))
    if found is None:
        raise MissingDependencyError("the tensorboard program is not installed: "
                                     "pip install tensorboard")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def get_json(url: str, timeout: float = 10.0):
    return json.loads(get(url, timeout))


@contextlib.contextmanager
def tensorboard(logdir, timeout: float = 60.0):
    """Run ``tensorboard --logdir LOGDIR`` on 127.0.0.1 and yield its base URL.

    Waits at most ``timeout`` seconds for it to answer; always stops it on exit.
    """
    port = free_port()
    command = [tensorboard_executable(), "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port)]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_serving(process, url, output, timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(process, url, output, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.seek(0)
            tail = output.read().decode(errors="replace").strip().splitlines()[-1:]
            raise SiameseError(f"tensorboard exited with code {process.returncode}: "
                               f"{' '.join(tail)}")
        try:
            get(f"{url}/data/runs", timeout=2)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise SiameseError(f"tensorboard did not answer on {url} within {timeout:.0f} s")
