"""Architecture diagrams: drawn with graphviz, one shared embedding box, clear errors."""

import os
import subprocess
import sys

import keras
import pytest
from PIL import Image

from helpers import CLI, error_lines
from keras_siamese import diagrams
from keras_siamese.errors import MissingDependencyError

NAMES = ["embedding", "classifier", "siamese_contrastive", "siamese_bce", "triplet", "vae",
         "online_embedding", "class_proxies", "architecture"]


def test_draws_every_model_and_the_overview(tmp_path):
    paths = diagrams.draw_models(tmp_path / "diagrams")
    assert [p.name for p in paths] == [f"{name}.png" for name in NAMES]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert Image.open(paths[-1]).size == (2600, 1650)  # 7 models, 3 rows
    assert not [p for p in (tmp_path / "diagrams").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name,branches,net", [
    ("siamese_contrastive", 2, "embedding"), ("siamese_bce", 2, "embedding"),
    ("triplet", 3, "embedding"), ("classifier", 1, "embedding"),
    ("online_embedding", 1, "embedding"), ("class_proxies", 1, "embedding"),
    ("vae", 1, "encoder")])
def test_every_branch_runs_through_one_embedding_box(name, branches, net):
    dot = keras.utils.model_to_dot(diagrams.architectures()[name], show_shapes=True)
    boxes = [node for node in dot.get_nodes() if net in (node.get("label") or "")]
    assert len(boxes) == 1
    into_box = [edge for edge in dot.get_edges() if edge.get_destination() == boxes[0].get_name()]
    assert len(into_box) == branches


def test_missing_pydot_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)  # "import pydot" now fails
    with pytest.raises(MissingDependencyError, match="pip install pydot"):
        diagrams.draw_models(tmp_path / "diagrams")
    assert not (tmp_path / "diagrams").exists()


def test_missing_graphviz_is_one_line_from_the_cli(tmp_path):
    empty = tmp_path / "no-programs"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}  # no dot on PATH
    result = subprocess.run([CLI, "diagram", "--out", tmp_path / "diagrams"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "apt-get install graphviz" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "diagrams").exists()


def test_diagram_command(tmp_path):
    result = subprocess.run([CLI, "diagram", "--out", tmp_path / "d"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(tmp_path / "d" / "architecture.png") in result.stdout
