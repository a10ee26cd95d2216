"""Screenshot of TensorBoard's projector tab for a log folder, taken with headless chromium.

    python scripts/projector_screenshot.py logs/ --out projector.png

Starts ``tensorboard --logdir LOGDIR`` on 127.0.0.1 and a free port, waits until its
projector lists a run, renders ``#projector`` in headless chromium (software WebGL), saves
the PNG and stops TensorBoard. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from keras_siamese.errors import MissingDependencyError, SiameseError
from keras_siamese.tensorboard_server import get_json, tensorboard

# Software WebGL (SwiftShader) so the projector's 3-D view renders without a GPU; the
# virtual time budget lets the page load its data before the screenshot; the rest keeps
# chromium from reaching for the network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--virtual-time-budget=20000", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1400,900",
]


def chromium_executable() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise MissingDependencyError("chromium is not installed: "
                                 "apt-get install -y --no-install-recommends chromium")


def wait_for_projector_run(url: str, timeout: float) -> list:
    """The projector's runs, once it lists any and TensorBoard calls it active (both are
    found in the background after TensorBoard starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = get_json(f"{url}/data/plugin/projector/runs")
        active = get_json(f"{url}/data/plugins_listing").get("projector", {}).get("enabled")
        if runs and active:
            return runs
        time.sleep(1)
    raise SiameseError(f"TensorBoard's projector lists no run after {timeout:.0f} s: "
                       "does the log folder hold projector data?")


def screenshot(logdir, out, timeout: float = 120.0) -> list:
    """Save the projector tab of ``logdir`` as the PNG ``out``; returns the projector runs."""
    chromium = chromium_executable()
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tensorboard(logdir, timeout=60) as url:
        runs = wait_for_projector_run(url, timeout=60)
        with tempfile.TemporaryDirectory() as profile:
            result = subprocess.run(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--screenshot={out}", f"{url}/#projector"],
                capture_output=True, text=True, timeout=timeout,
            )
    if result.returncode != 0 or not out.is_file():
        tail = result.stderr.strip().splitlines()[-1:]
        raise SiameseError(f"chromium failed (exit {result.returncode}): {' '.join(tail)}")
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="TensorBoard log folder (e.g. logs/ or logs/<run>)")
    parser.add_argument("--out", default="projector.png", help="PNG to write")
    args = parser.parse_args(argv)
    try:
        runs = screenshot(args.logdir, args.out)
    except SiameseError as error:
        print(f"projector_screenshot: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"{args.out}: projector of {', '.join(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
