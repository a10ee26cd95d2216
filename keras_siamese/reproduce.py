"""The study's results grid: every loss on every dataset, as pictures and numbers.

:func:`reproduce` trains one run per (dataset, variant: a loss, or a loss with online
mining) with the same settings, one after
the other in this process, and writes into its output folder:

- ``<loss>_<dataset>/``: the ordinary run folders (model, metrics.json, frames, ...);
- ``results.png``: the study's table of test-embedding plots, datasets as rows and losses
  as columns, with P@1, MAP@R and 10-way one-shot accuracy under each plot;
- ``results.md``: the same as a Markdown page (table of numbers, the figure, and the
  command, epochs and seed that made it), ``results.json`` for machines.

A run folder that already holds a ``metrics.json`` made with the same settings is kept,
not retrained, so an interrupted grid continues where it stopped (``--overwrite``
retrains everything).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import keras

from keras_siamese.config import TrainConfig
from keras_siamese.report import json_safe
from keras_siamese.run_folder import EMBEDDING_PLOT, finished_metrics
from keras_siamese.variants import VARIANTS
from keras_siamese.outputs import write_json, write_text
from keras_siamese.plots import new_figure, read_png, save_figure

log = logging.getLogger(__name__)

# The numbers printed under each plot and in the Markdown table.
SHOWN = (("precision_at_1", "P@1"), ("map_at_r", "MAP@R"), ("one_shot_10way", "10-way 1-shot"))
TABLE = SHOWN[:2] + (("r_precision", "R-prec."), ("knn_accuracy", "5-NN acc."),
                     ("roc_auc", "pair AUC"), ("verification_accuracy", "verif. acc.")) + SHOWN[2:]


PER_ROW = 5  # plots side by side in results.png


def grid_configs(variants, datasets, **settings) -> list[TrainConfig]:
    """One TrainConfig per (dataset, variant), datasets outermost, all with ``settings``.
    A variant is a loss (``triplet``) or a loss with online mining (``triplet-batch-hard``)."""
    return [TrainConfig(loss=VARIANTS[variant].loss, mining=VARIANTS[variant].mining,
                        dataset=dataset, **settings)
            for dataset in datasets for variant in variants]


def reproduce(configs: list[TrainConfig], out_dir, command: str, echo=print) -> list[dict]:
    """Train (or reuse) every run, then write the results page; returns one row per run."""
    from keras_siamese import experiment  # TensorFlow loads only when there is work to do

    rows, spent, trained = [], 0.0, 0
    for number, config in enumerate(configs, 1):
        metrics = None if config.overwrite else finished_metrics(config)
        if metrics is not None:
            echo(f"[{number}/{len(configs)}] {config.name}: kept (finished earlier)")
        else:
            left = len(configs) - number + 1
            eta = f", about {spent / trained * left / 60:.0f} min left" if trained else ""
            echo(f"[{number}/{len(configs)}] {config.name}: training {config.epochs} "
                 f"epochs{eta}")
            started = time.perf_counter()
            keras.backend.clear_session()  # each run starts from a fresh graph and naming
            metrics = experiment.run(dataclasses.replace(config, overwrite=True)).metrics
            spent += time.perf_counter() - started
            trained += 1
        rows.append({"loss": config.variant, "dataset": config.dataset,
                     "run_dir": str(config.run_dir), **json_safe(metrics)})
    write_results(rows, configs[0], Path(out_dir), command)
    return rows


def _value(row: dict, key: str) -> str:
    value = row.get(key)
    return "n/a" if value is None else f"{value:.3f}"


def results_figure(rows: list[dict], path) -> None:
    """The grid of ``embedding.png`` plots, one row per dataset, numbers under each."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    # At most PER_ROW plots side by side: a dataset's runs wrap onto further rows.
    columns = min(len(losses), PER_ROW)
    wraps = -(-len(losses) // columns)
    fig = new_figure((4.2 * columns, 4.6 * len(datasets) * wraps), 80)
    axes = fig.subplots(len(datasets) * wraps, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row in rows:
        at = losses.index(row["loss"])
        ax = axes[datasets.index(row["dataset"]) * wraps + at // columns][at % columns]
        ax.imshow(read_png(Path(row["run_dir"]) / EMBEDDING_PLOT))
        ax.set_title(f"{row['loss']} · {row['dataset']}", fontsize=12)
        ax.text(0.5, -0.02, "   ".join(f"{label} {_value(row, key)}" for key, label in SHOWN),
                transform=ax.transAxes, ha="center", va="top", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def results_markdown(rows: list[dict], settings: TrainConfig, command: str,
                     figure: str) -> str:
    header = "| dataset | loss | " + " | ".join(label for _, label in TABLE) + " | s/epoch |"
    lines = [
        "# Results",
        "",
        f"Made by `{command}`: {settings.epochs} epochs, seed {settings.seed}, batch "
        f"{settings.batch_size}, {settings.embedding_dim}-D embeddings"
        + (f", {settings.limit} training images" if settings.limit else ", all training images")
        + ". Test images are queried against the training images (P@1, 5-NN); MAP@R and "
        "R-precision are leave-one-out on the test set; pair AUC and verification accuracy "
        "use the fixed test pairs, the threshold chosen on training pairs; one-shot "
        "accuracy over 1000 seeded test episodes.",
        "",
        header,
        "|" + "---|" * (len(TABLE) + 3),
    ]
    for row in rows:
        numbers = " | ".join(_value(row, key) for key, _ in TABLE)
        seconds = row.get("seconds_per_epoch")
        lines.append(f"| {row['dataset']} | {row['loss']} | {numbers} | "
                     f"{'n/a' if seconds is None else f'{seconds:.1f}'} |")
    lines += ["", f"![test embeddings of every run]({figure})", ""]
    return "\n".join(lines)


def write_results(rows: list[dict], settings: TrainConfig, out_dir: Path, command: str) -> None:
    results_figure(rows, out_dir / "results.png")
    write_text(out_dir / "results.md", results_markdown(rows, settings, command, "results.png"))
    write_json(out_dir / "results.json", {"command": command, "rows": rows})
