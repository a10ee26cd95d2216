"""Running the installed ``siamese-keras`` console script the way a user does."""

import os
import shutil
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
