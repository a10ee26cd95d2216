"""Plots leave the user's matplotlib alone: no backend switch on import, no pyplot figures."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Imports every module that draws, then draws: a notebook user's backend must survive it.
DRAW = """
import sys
import numpy as np
import keras_siamese
from keras_siamese import diagrams, experiment, latent, plots, projector, reproduce
import matplotlib
after_import = matplotlib.get_backend()
plots.scatter_embeddings(np.random.default_rng(0).normal(size=(50, 2)), np.arange(50) % 3,
                         ["a", "b", "c"], "t", sys.argv[1])
# Keras imports pyplot itself; the figures drawn here must not be registered with it.
pyplot = sys.modules.get("matplotlib.pyplot")
print(after_import, matplotlib.get_backend(), pyplot.get_fignums() if pyplot else [])
"""


def _run(code: str, *args, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    environ.update(env, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=environ,
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def test_importing_and_drawing_keep_the_users_backend(tmp_path):
    # svg, not agg: importing the package used to switch any backend to agg.
    after_import, after_drawing, figures = _run(DRAW, tmp_path / "a.png", MPLBACKEND="svg")
    assert (after_import, after_drawing, figures) == ("svg", "svg", "[]")
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")  # still a PNG


def test_default_backend_is_matplotlibs_own(tmp_path):
    (plain,) = _run("import matplotlib; print(matplotlib.get_backend())")
    after_import, after_drawing, _ = _run(DRAW, tmp_path / "b.png")
    assert after_import == after_drawing == plain
