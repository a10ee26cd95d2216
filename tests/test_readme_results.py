"""Result blocks of the README (issue 20): every block equals what its grid's results.json
renders to, and ``reproduce --readme`` writes a block, byte for byte outside it, or
refuses before it trains."""

import json
from pathlib import Path

import pytest
from helpers import file_hashes, run_main

from keras_siamese import readme_block

ROOT = Path(__file__).resolve().parent.parent


def test_every_readme_block_is_what_its_results_json_renders():
    text = (ROOT / "README.md").read_text()
    spans = readme_block.blocks(text, "README.md")
    assert spans, "the README should hold result blocks written by reproduce --readme"
    for name, (start, end) in spans.items():
        results = json.loads((ROOT / readme_block.results_path(name)).read_text())
        assert text[start:end] == readme_block.render(results, name), (
            f"README block {name!r} differs from {readme_block.results_path(name)}: "
            "rerun the command it names with --readme README.md")
        assert (ROOT / readme_block.figure_path(name)).read_bytes()[:4] == b"\x89PNG"


def _readme(tmp_path, name="tiny", newline="\n") -> Path:
    readme = tmp_path / "README.md"
    lines = ["# My project", "", "Before.", readme_block.BEGIN.format(name=name),
             "stale numbers", readme_block.END.format(name=name), "After, untouched.", ""]
    readme.write_bytes(newline.join(lines).encode())
    return readme


def test_reproduce_writes_its_block_and_nothing_else(capsys, tmp_path):
    readme = _readme(tmp_path, newline="\r\n")  # a Windows-edited README keeps its endings
    before = readme.read_bytes()
    grid = ["reproduce", "--losses", "softmax", "--datasets", "mnist", "--epochs", 1,
            "--limit", 300, "--output-dir", tmp_path / "grid", "--log-dir", tmp_path / "logs",
            "--readme", readme, "--readme-block", "tiny"]
    code, errors = run_main(capsys, *grid)
    assert code == 0, errors
    after = readme.read_bytes()
    head, tail = before.split(b"stale numbers\r\n")
    assert after.startswith(head) and after.endswith(tail) and b"stale" not in after
    assert b"\n" not in after.replace(b"\r\n", b"")

    results = json.loads((tmp_path / "docs" / "tiny.json").read_text())
    assert results == json.loads((tmp_path / "grid" / "results.json").read_text())
    (row,) = results["rows"]
    block = after.decode().replace("\r\n", "\n")[len(head.decode().replace("\r\n", "\n")):]
    assert block.startswith(readme_block.render(results, "tiny"))
    assert f"| mnist | softmax | {row['precision_at_1']:.3f} | {row['map_at_r']:.3f} |" in block
    assert "![test embeddings of every run](docs/tiny.png)" in block
    assert f"(code: {row['code']})" in block and row["code"].startswith("commit ")
    assert (tmp_path / "docs" / "tiny.png").read_bytes() == \
        (tmp_path / "grid" / "results.png").read_bytes()

    # Again: the run is kept, so the README comes out the same, byte for byte.
    code, errors = run_main(capsys, *grid)
    assert code == 0 and readme.read_bytes() == after, errors


BEGIN, END = readme_block.BEGIN.format(name="results"), readme_block.END.format(name="results")
BAD_READMES = {
    "no block": ("# Title\n", "no block 'results' to write; add the two lines"),
    "begin without end": (f"{BEGIN}\nx\n", "block 'results' has no end marker"),
    "end without begin": (f"x\n{END}\n", "line 2: the end of block 'results' without its begin"),
    "twice": (f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n", "line 3: a second block 'results'"),
    "nested": (f"{BEGIN}\n{readme_block.BEGIN.format(name='inner')}\n",
               "line 2: block 'inner' begins inside block 'results'"),
}


@pytest.mark.parametrize("case", BAD_READMES, ids=list(BAD_READMES))
def test_a_readme_without_one_good_block_is_refused_before_training(capsys, tmp_path, case):
    text, message = BAD_READMES[case]
    readme = tmp_path / "README.md"
    readme.write_text(text)
    code, errors = run_main(capsys, "reproduce", "--output-dir", tmp_path / "grid",
                            "--log-dir", tmp_path / "logs", "--readme", readme)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert readme.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # nothing trained


@pytest.mark.parametrize("args,message", [
    (["--readme", "missing.md"], "--readme missing.md: no such file"),
    (["--readme", "binary.md"], "--readme binary.md: not UTF-8 text (byte 2)"),
    (["--readme", "README.md", "--readme-block", "../x"], "--readme-block '../x': use lower"),
    (["--readme-block", "results"], "--readme-block names a block of the --readme file"),
], ids=["missing", "not UTF-8", "bad name", "block without file"])
def test_bad_readme_options_are_one_line_and_change_nothing(capsys, tmp_path, monkeypatch,
                                                            args, message):
    monkeypatch.chdir(tmp_path)
    _readme(tmp_path, name="results")
    (tmp_path / "binary.md").write_bytes(b"ok\xff\xfe")
    before = file_hashes(tmp_path)
    code, errors = run_main(capsys, "reproduce", "--output-dir", "grid", "--log-dir", "logs",
                            *args)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert file_hashes(tmp_path) == before
