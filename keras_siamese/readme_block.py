"""Result blocks in a README, written by the grid that made them.

``siamese-keras reproduce ... --readme README.md --readme-block NAME`` replaces the text
between two marker lines of the README with the grid's results page, so every number a
reader sees there is one that a command printed, and a hand edit or a stale block shows
in the diff::

    <!-- reproduce:NAME begin: written by `siamese-keras reproduce --readme`, do not edit -->
    Made by `siamese-keras reproduce ...` (code: commit 1a2b3c4): ...
    | dataset | loss | P@1 | MAP@R | ... |
    ![...](docs/NAME.png)
    <!-- reproduce:NAME end -->

Beside the README it writes ``docs/NAME.json`` (the grid's ``results.json``) and
``docs/NAME.png`` (its figure). The block is exactly :func:`render` of that JSON, which
``tests/test_readme_results.py`` checks for every block of the project's README.

Nothing is written unless the README holds exactly one well-formed block of that name:
:func:`check` says so before the grid trains (hours), and :func:`write` checks again,
since the file may have changed meanwhile. Everything outside the block stays byte for
byte as it was (line endings included); the file is replaced atomically.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from keras_siamese.errors import ConfigError, OutputError
from keras_siamese.outputs import atomic_path

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
BEGIN = ("<!-- reproduce:{name} begin: written by `siamese-keras reproduce --readme`, "
         "do not edit -->")
END = "<!-- reproduce:{name} end -->"
# Any marker line, to find the blocks of a README and to refuse unmatched ones.
_MARKER = re.compile(r"^<!-- reproduce:([^ ]+) (begin|end)\b.*-->[ \t]*\r?$", re.MULTILINE)


def figure_path(name: str) -> str:
    """Where the block's figure goes, relative to the README (as its Markdown links it)."""
    return f"docs/{name}.png"


def results_path(name: str) -> str:
    """Where the block's ``results.json`` goes, relative to the README."""
    return f"docs/{name}.json"


def render(results: dict, name: str) -> str:
    """The block's content: the results page of ``results`` (a ``results.json``) with its
    figure at :func:`figure_path`."""
    from keras_siamese.reproduce import results_markdown  # the page has one writer

    return results_markdown(results, figure_path(name)).rstrip("\n") + "\n"


def blocks(text: str, where) -> dict[str, tuple[int, int]]:
    """``{name: (start, end)}`` of the content of every block in ``text`` (from the line
    after its begin marker to its end marker's line). A begin without its end, an end
    without its begin, nested or repeated names are refused with one line."""
    found, open_name, start = {}, None, 0
    for marker in _MARKER.finditer(text):
        name, kind = marker.groups()
        line = text.count("\n", 0, marker.start()) + 1
        if kind == "begin":
            if open_name is not None:
                raise ConfigError(f"{where}, line {line}: block {name!r} begins inside block "
                                  f"{open_name!r}: end that one first")
            if name in found:
                raise ConfigError(f"{where}, line {line}: a second block {name!r}: each "
                                  "name may appear once")
            open_name, start = name, text.index("\n", marker.start()) + 1
        else:
            if open_name != name:
                raise ConfigError(f"{where}, line {line}: the end of block {name!r} without "
                                  "its begin")
            found[name], open_name = (start, marker.start()), None
    if open_name is not None:
        raise ConfigError(f"{where}: block {open_name!r} has no end marker "
                          f"({END.format(name=open_name)})")
    return found


def _read(readme: Path) -> str:
    try:
        return readme.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--readme {readme}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--readme {readme}: a folder, not a file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"--readme {readme}: not UTF-8 text (byte {error.start}); "
                          "nothing was changed") from None
    except OSError as error:
        raise ConfigError(f"--readme {readme}: {error.strerror or error}") from None


def check(readme, name: str) -> tuple[str, tuple[int, int]]:
    """The README's text and the span of block ``name``; one clear line if there is none
    to write into (so a grid refuses before it trains, not after)."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"--readme-block {name!r}: use lower-case letters, digits and "
                          "dashes (it names the block and its docs/ files)")
    readme = Path(readme)
    text = _read(readme)
    spans = blocks(text, readme)
    if name not in spans:
        raise ConfigError(f"--readme {readme}: no block {name!r} to write; add the two "
                          f"lines {BEGIN.format(name=name)} and {END.format(name=name)} "
                          "where the results belong")
    return text, spans[name]


def write(readme, name: str, out_dir) -> None:
    """Copy ``out_dir``'s ``results.json`` and ``results.png`` to the README's ``docs/``
    and replace block ``name`` with their :func:`render`."""
    readme, out_dir = Path(readme), Path(out_dir)
    text, (start, end) = check(readme, name)
    results = json.loads((out_dir / "results.json").read_text())
    newline = "\r\n" if "\r\n" in text else "\n"
    content = render(results, name).replace("\n", newline)
    docs = readme.parent
    try:
        for source, target in (("results.json", results_path(name)),
                               ("results.png", figure_path(name))):
            (docs / target).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(docs / target) as tmp:
                shutil.copyfile(out_dir / source, tmp)
        with atomic_path(readme) as tmp:
            tmp.write_bytes((text[:start] + content + text[end:]).encode("utf-8"))
            shutil.copymode(readme, tmp)
    except OSError as error:
        raise OutputError(f"cannot write the results block into {readme}: "
                          f"{error.strerror or error}") from error
