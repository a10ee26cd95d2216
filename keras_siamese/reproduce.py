"""The study's results grid: every loss on every dataset, as pictures and numbers.

:func:`reproduce` trains one run per (dataset, variant: a loss, or a loss with online
mining) and seed with the same settings, one after the other in this process, and writes
into its output folder:

- ``<variant>_<dataset>/``: the ordinary run folders (model, metrics.json, frames, ...);
  with several seeds one per seed, ``<variant>_<dataset>_seed<S>/``;
- ``results.png``: the study's table of test-embedding plots, datasets as rows and losses
  as columns, with P@1, MAP@R and 10-way one-shot accuracy under each plot; with several
  seeds these are means ± 95 % intervals, and a chart per dataset shows them as error bars;
- ``results.md``: the same as a Markdown page (table of numbers, the figure, and the
  command, epochs and seeds that made it), ``results.json`` for machines: every run's
  metrics (``rows``) and every cell's summary over seeds (``cells``).

A cell's figure over seeds is its mean with a Student's t 95 % confidence interval
(:mod:`keras_siamese.intervals`). One seed (the default, for a quick grid) gives no
interval, and the page says so. Where two losses' intervals overlap on a dataset the page
ranks neither above the other: its notes column names the overlaps.

A run in the grid is the same run as ``siamese-keras train`` with the same settings in a
fresh process, bit for bit (tests/test_reproduce.py): every run seeds Python, NumPy,
TensorFlow and Keras itself before it builds its model, and its data streams draw from
stateless seeds, so nothing an earlier run did in this process reaches it.

A run folder that already holds a ``metrics.json`` made with the same settings is kept,
not retrained, so an interrupted grid continues where it stopped (``--overwrite``
retrains everything).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path

import keras

from keras_siamese.config import TrainConfig
from keras_siamese.errors import ConfigError
from keras_siamese.intervals import METHOD, Interval, student_t_interval
from keras_siamese.outputs import write_json, write_text
from keras_siamese.plots import new_figure, read_png, save_figure
from keras_siamese.report import json_safe
from keras_siamese.run_folder import EMBEDDING_PLOT, finished_metrics
from keras_siamese.variants import VARIANTS

log = logging.getLogger(__name__)

# The numbers printed under each plot and in the Markdown table.
SHOWN = (("precision_at_1", "P@1"), ("map_at_r", "MAP@R"), ("one_shot_10way", "10-way 1-shot"))
TABLE = SHOWN[:2] + (("r_precision", "R-prec."), ("knn_accuracy", "5-NN acc."),
                     ("roc_auc", "pair AUC"), ("verification_accuracy", "verif. acc.")) + SHOWN[2:]
RANKED = SHOWN[:2]  # the metrics whose overlapping intervals the notes column names
RUN_KEYS = ("loss", "dataset", "seed", "run_dir", "code")  # a row's fields that are no metric
# A kept run whose code no earlier results.json recorded.
UNRECORDED = "unrecorded"
# The grid's shared settings that results.json records and its page states.
PAGE_SETTINGS = ("epochs", "batch_size", "classes_per_batch", "images_per_class",
                 "embedding_dim", "limit")

PER_ROW = 5  # plots side by side in results.png


def grid_configs(variants, datasets, seeds=(TrainConfig.seed,), **settings) -> list[TrainConfig]:
    """One TrainConfig per (seed, dataset, variant), all with ``settings``.

    A variant is a loss (``triplet``) or a loss with online mining (``triplet-batch-hard``).
    Seeds are outermost, so an interrupted grid has whole grids of its first seeds. With one
    seed a run folder is ``<variant>_<dataset>`` as ever (an earlier grid's folders are
    found again); with several, ``<variant>_<dataset>_seed<S>``, so seeds never collide.
    Runs of the grid train on through a collapse (``stop_on_collapse`` off)."""
    seeds = tuple(seeds)
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if not seeds or repeated:
        raise ConfigError(f"seeds must be distinct and at least one, got "
                          f"{', '.join(map(str, seeds)) or 'none'}: give each seed once")
    configs = []
    for seed in seeds:
        for dataset in datasets:
            for variant in variants:
                # A grid measures every cell: a collapsed one (2-D batch-hard) is a result,
                # so its runs never stop for collapse (the monitor still logs it).
                config = TrainConfig(loss=VARIANTS[variant].loss, mining=VARIANTS[variant].mining,
                                     dataset=dataset, seed=seed,
                                     **{"stop_on_collapse": False, **settings})
                if len(seeds) > 1:
                    config = dataclasses.replace(config, run_name=f"{config.name}_seed{seed}")
                configs.append(config)
    return configs


@dataclasses.dataclass
class Cell:
    """One (dataset, variant) of the grid: its runs (one per seed, as ``results.json``
    rows), each metric over them (None where a run has no value), and, per :data:`RANKED`
    metric, the other variants on the dataset whose interval overlaps this one's."""

    loss: str
    dataset: str
    runs: list[dict]
    metrics: dict[str, Interval | None]
    overlaps: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [run["seed"] for run in self.runs]

    def text(self, key: str, decimals: int = 3) -> str:
        """The metric as the page shows it: ``0.981 ± 0.004``, ``0.981`` or ``n/a``."""
        interval = self.metrics.get(key)
        return "n/a" if interval is None else interval.text(decimals)

    def to_json(self) -> dict:
        return {"loss": self.loss, "dataset": self.dataset, "seeds": self.seeds,
                "n": len(self.runs), "run_dirs": [run["run_dir"] for run in self.runs],
                "metrics": {key: _interval_json(interval, [run.get(key) for run in self.runs])
                            for key, interval in self.metrics.items()},
                "overlaps": self.overlaps}


def reproduce(configs: list[TrainConfig], out_dir, command: str, echo=print) -> list[Cell]:
    """Train (or reuse) every run, then write the results page; returns the grid's cells."""
    from keras_siamese import experiment  # TensorFlow loads only when there is work to do

    code = code_version()  # the code this process loaded, whatever is edited meanwhile
    earlier = _codes_of_earlier_runs(Path(out_dir))
    rows, spent, trained = [], 0.0, 0
    for number, config in enumerate(configs, 1):
        metrics = None if config.overwrite else finished_metrics(config)
        if metrics is not None:
            echo(f"[{number}/{len(configs)}] {config.name}: kept (finished earlier)")
            made_by = earlier.get(str(config.run_dir), UNRECORDED)
        else:
            left = len(configs) - number + 1
            eta = f", about {spent / trained * left / 60:.0f} min left" if trained else ""
            echo(f"[{number}/{len(configs)}] {config.name}: training {config.epochs} "
                 f"epochs{eta}")
            started = time.perf_counter()
            # Frees the previous run's graphs and restarts layer names; the seeds are
            # experiment.run's own business (see the module doc).
            keras.backend.clear_session()
            metrics = experiment.run(dataclasses.replace(config, overwrite=True)).metrics
            spent += time.perf_counter() - started
            trained += 1
            made_by = code
        rows.append({"loss": config.variant, "dataset": config.dataset, "seed": config.seed,
                     "run_dir": str(config.run_dir), "code": made_by, **json_safe(metrics)})
    cells = summarise(rows)
    write_results(rows, cells, configs[0], Path(out_dir), command)
    return cells


def _codes_of_earlier_runs(out_dir: Path) -> dict[str, str]:
    """``{run folder: code}`` from the grid's earlier ``results.json``, for the runs that
    are kept instead of retrained (empty if there is none or it cannot be read)."""
    try:
        rows = json.loads((out_dir / "results.json").read_text())["rows"]
        return {row["run_dir"]: row["code"] for row in rows if "code" in row}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def summarise(rows: list[dict]) -> list[Cell]:
    """The runs grouped by (dataset, variant), in the grid's order, with every numeric
    metric over their seeds and the overlaps of the :data:`RANKED` metrics' intervals."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["loss"]), []).append(row)
    cells = []
    for (dataset, loss), runs in groups.items():
        # Metrics are floats (None where a split cannot have one); integers are counts
        # (test_images, ...), the same for every seed.
        keys = [key for key, value in runs[0].items()
                if key not in RUN_KEYS and isinstance(value, (float, type(None)))]
        metrics = {}
        for key in keys:
            values = [run.get(key) for run in runs]
            # A metric a run could not have (None in its metrics.json) has no mean either.
            metrics[key] = None if None in values else student_t_interval(values)
        cells.append(Cell(loss, dataset, runs, metrics))
    for cell in cells:
        for key, _ in RANKED:
            cell.overlaps[key] = [other.loss for other in cells
                                  if other is not cell and other.dataset == cell.dataset
                                  and _overlap(cell, other, key)]
    return cells


def _overlap(cell: Cell, other: Cell, key: str) -> bool:
    mine, theirs = cell.metrics.get(key), other.metrics.get(key)
    return mine is not None and theirs is not None and mine.overlaps(theirs)


def _interval_json(interval: Interval | None, values: list) -> dict:
    if interval is None:
        return {"mean": None, "ci_low": None, "ci_high": None, "values": values,
                "n": len(values), "method": METHOD}
    return interval.to_json()


def _seeds_of(cells: list[Cell]) -> list[int]:
    return list(dict.fromkeys(seed for cell in cells for seed in cell.seeds))


def results_figure(cells: list[Cell], path) -> None:
    """The grid of ``embedding.png`` plots (each cell's first seed), one row per dataset,
    numbers under each; with several seeds, means ± half-widths, and below the plots one
    chart per dataset of the same numbers as points with 95 % error bars."""
    datasets = list(dict.fromkeys(cell.dataset for cell in cells))
    losses = list(dict.fromkeys(cell.loss for cell in cells))
    seeds = _seeds_of(cells)
    several = len(seeds) > 1
    # At most PER_ROW plots side by side: a dataset's runs wrap onto further rows.
    columns = min(len(losses), PER_ROW)
    wraps = -(-len(losses) // columns)
    plot_rows, chart_rows = len(datasets) * wraps, len(datasets) if several else 0
    plot_height = 5.2 if several else 4.6  # room for one number per line under the plot
    heights = [plot_height] * plot_rows + [3.6] * chart_rows
    # At least two plots wide: an interval chart's title and legend need the room.
    fig = new_figure((4.2 * max(columns, 2), sum(heights)), 80)
    grid = fig.add_gridspec(plot_rows + chart_rows, columns, height_ratios=heights)
    for cell in cells:
        at = losses.index(cell.loss)
        ax = fig.add_subplot(grid[datasets.index(cell.dataset) * wraps + at // columns,
                                  at % columns])
        ax.axis("off")
        ax.imshow(read_png(Path(cell.runs[0]["run_dir"]) / EMBEDDING_PLOT))
        seed = f" (seed {cell.seeds[0]})" if several else ""  # the plot is one seed's
        ax.set_title(f"{cell.loss} · {cell.dataset}{seed}", fontsize=12)
        numbers = [f"{label} {cell.text(key)}" for key, label in SHOWN]
        ax.text(0.5, -0.02, "\n".join(numbers) if several else "   ".join(numbers),
                transform=ax.transAxes, ha="center", va="top", fontsize=10)
    for row, dataset in enumerate(datasets[:chart_rows]):
        _interval_chart(fig.add_subplot(grid[plot_rows + row, :]), dataset,
                        [cell for cell in cells if cell.dataset == dataset], seeds)
    fig.tight_layout()
    save_figure(fig, path)


def _interval_chart(ax, dataset: str, cells: list[Cell], seeds: list[int]) -> None:
    """Each :data:`SHOWN` metric of every variant on ``dataset``: its mean as a point and
    its 95 % interval as an error bar, the metrics side by side around each variant."""
    for number, (key, label) in enumerate(SHOWN):
        offset = (number - (len(SHOWN) - 1) / 2) * 0.2
        found = [(x, cell.metrics[key]) for x, cell in enumerate(cells)
                 if cell.metrics.get(key) is not None]
        ax.errorbar([x + offset for x, _ in found], [i.mean for _, i in found],
                    yerr=[i.half_width or 0.0 for _, i in found], fmt="o", capsize=4,
                    label=label)
    ax.set_xticks(range(len(cells)), [cell.loss for cell in cells])
    ax.set_xlim(-0.5, len(cells) - 0.5)
    ax.set_title(f"{dataset}\nmean and Student's t 95 % interval over seeds "
                 f"{', '.join(map(str, seeds))}", fontsize=12)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def _notes(cell: Cell) -> str:
    """The notes column: which variants' intervals this one's overlaps, per ranked metric."""
    parts = [f"{label} ≈ {', '.join(cell.overlaps[key])}" for key, label in RANKED
             if cell.overlaps.get(key)]
    return "; ".join(parts) or "—"


def results_markdown(results: dict, figure: str) -> str:
    """The results page's text (without its title) from ``results.json``'s content: how
    it was made (command, code, settings, seeds), the table and the figure ``figure``."""
    cells = summarise(results["rows"])
    settings = TrainConfig(**results["settings"])
    command = results["command"]
    seeds = _seeds_of(cells)
    several = len(seeds) > 1
    header = "| dataset | loss | " + " | ".join(label for _, label in TABLE) + " | s/epoch |"
    if several:
        seed_text = (f"seeds {', '.join(map(str, seeds))} (n = {len(seeds)} runs per cell; "
                     "each figure is the mean ± the half-width of its 95 % confidence "
                     "interval over seeds, Student's t: mean ± t(0.975, n-1) · s / √n)")
        header += " notes |"
    else:
        seed_text = (f"seed {seeds[0]} (one seed: no confidence interval, so differences "
                     "between losses carry no estimate of their spread; `--seeds 0,1,2` "
                     "gives intervals)")
    codes = Counter(row.get("code", UNRECORDED) for row in results["rows"])
    code_text = (next(iter(codes)) if len(codes) == 1 else
                 ", ".join(f"{code} ({count} runs)" for code, count in codes.items()))
    lines = [
        f"Made by `{command}` (code: {code_text}): {settings.epochs} epochs, {seed_text}, batch "
        f"{settings.batch_size} or, with online mining, P x K = {settings.classes_per_batch} x "
        f"{settings.images_per_class}, {settings.embedding_dim}-D embeddings"
        + (f", {settings.limit} training images" if settings.limit else ", all training images")
        + ". Test images are queried against the training images (P@1, 5-NN); MAP@R and "
        "R-precision are leave-one-out on the test set; pair AUC and verification accuracy "
        "use the fixed test pairs, the threshold chosen on training pairs; one-shot "
        "accuracy over 1000 seeded test episodes.",
        "",
    ]
    if several:
        lines += ["Notes: \"P@1 ≈ X\" means this loss's P@1 interval overlaps X's on the same "
                  "dataset (likewise MAP@R): these seeds cannot tell which is better, so "
                  "neither is ranked above the other. Intervals that do not overlap are a "
                  "conservative sign of a real difference.", ""]
    lines += [header, "|" + "---|" * (len(TABLE) + 3 + several)]
    for cell in cells:
        numbers = " | ".join(cell.text(key) for key, _ in TABLE)
        seconds = cell.metrics.get("seconds_per_epoch")
        line = (f"| {cell.dataset} | {cell.loss} | {numbers} | "
                f"{'n/a' if seconds is None else f'{seconds.mean:.1f}'} |")
        lines.append(line + (f" {_notes(cell)} |" if several else ""))
    lines += ["", f"![test embeddings of every run]({figure})", ""]
    return "\n".join(lines)


def write_results(rows: list[dict], cells: list[Cell], settings: TrainConfig, out_dir: Path,
                  command: str) -> None:
    """``results.png``, ``results.json`` (how it was made, every run's metrics and code as
    ``rows`` and every cell over seeds as ``cells``) and ``results.md``, rendered from
    that JSON."""
    results_figure(cells, out_dir / "results.png")
    seeds = _seeds_of(cells)
    results = {
        "command": command, "settings": {key: getattr(settings, key) for key in PAGE_SETTINGS},
        "seeds": seeds, "interval": METHOD if len(seeds) > 1 else "none: one seed",
        "rows": rows, "cells": [cell.to_json() for cell in cells]}
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "results.md", "# Results\n\n" + results_markdown(results, "results.png"))


def code_version() -> str:
    """The code that made a grid, as its page names it: ``commit 1a2b3c4`` in a git
    checkout (``+ uncommitted changes`` when tracked files differ from it), else the
    installed package's version."""
    import subprocess

    import keras_siamese

    source = Path(keras_siamese.__file__).resolve().parent
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True,
                                  text=True, check=True, timeout=60).stdout.strip()

        # The package's own checkout, not a repository that merely holds an installed copy.
        git("ls-files", "--error-unmatch", "__init__.py")
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git, or not its checkout
        return f"keras-siamese {keras_siamese.__version__}"
    return f"commit {commit}" + (" + uncommitted changes" if changed else "")
