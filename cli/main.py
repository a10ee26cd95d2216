"""``siamese-keras``: train Siamese, triplet and softmax embedding models from the shell.

The only place that prints and exits: library errors become one line on stderr with
exit code 2 (usage) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from keras_siamese.config import DATASETS, LOSSES, TrainConfig
from keras_siamese.errors import SiameseError

PROG = "siamese-keras"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def app():
    """Siamese networks and friends: metric learning on MNIST and Fashion-MNIST."""


@app.command()
@click.option("--loss", type=click.Choice(LOSSES), default="contrastive", show_default=True,
              help="softmax: classifier baseline; contrastive / bce: Siamese pairs; "
                   "triplet: anchor-positive-negative.")
@click.option("--dataset", type=click.Choice(DATASETS), default="mnist", show_default=True,
              help="Dataset; loaded offline from --data-dir, TFDS or the packaged copies.")
@click.option("--epochs", type=int, default=10, show_default=True,
              help="Passes over the training images (one pair/triplet per image and epoch).")
@click.option("--batch-size", type=int, default=128, show_default=True,
              help="Pairs, triplets or images per training step.")
@click.option("--learning-rate", "--lr", type=float, default=1e-3, show_default=True,
              help="Adam's initial learning rate (cosine-decayed to 0 over the run).")
@click.option("--margin", type=float, default=1.0, show_default=True,
              help="Margin of the contrastive and triplet losses (> 0).")
@click.option("--embedding-dim", type=int, default=2, show_default=True,
              help="Size of the embedding; plots show a PCA projection when > 2.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of weights and training pairs; same seed, same run.")
@click.option("--limit", type=int, default=None,
              help="Train on a class-balanced subset of N training images (quick runs).")
@click.option("--data-dir", type=click.Path(), default=None,
              help="Folder with the four idx files (or a TFDS data dir) to load from.")
@click.option("--output-dir", type=click.Path(), default="output", show_default=True,
              help="Root of the run folders (model, plots, config, history, metrics).")
@click.option("--log-dir", type=click.Path(), default="logs", show_default=True,
              help="Root of the TensorBoard run folders.")
@click.option("--run-name", default=None,
              help="Name of the run folder  [default: <loss>_<dataset>]")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing run folder of the same name.")
@click.option("--frames/--no-frames", default=True, show_default=True,
              help="Plot the latent space of fixed test images before training and after "
                   "every epoch (frames/*.png, latent.gif, latent_embeddings.npz).")
@click.option("--frame-images", type=int, default=2000, show_default=True,
              help="Number of fixed test images (same number per class, same in every run) "
                   "shown by the frames and the TensorBoard projector.")
@click.option("--gif-frame-ms", type=int, default=500, show_default=True,
              help="Duration of one GIF frame in milliseconds (the last is held 4x).")
@click.option("--projector/--no-projector", default=True, show_default=True,
              help="Write TensorBoard projector data (embeddings, labels, image sprite) into "
                   "<log-dir>/<run>/projector after the last epoch.")
@click.option("--projector-every", type=int, default=0, show_default=True,
              help="Also write the projector every K epochs (one entry per epoch); "
                   "0: only after the last epoch.")
def train(**options):
    """Train a model and write its run folder.

    Example: siamese-keras train --loss contrastive --dataset mnist
    """
    config = TrainConfig(**options)
    from keras_siamese import experiment  # TensorFlow loads only when there is work to do

    result = experiment.run(config)
    click.echo(f"P@1 (test vs train, 1-NN): {result.metrics['precision_at_1']:.4f}")
    outputs = "config.json, history.csv, model.keras, embedding.png, metrics.json"
    if config.frames:
        outputs += ", latent.gif, frames/, latent_embeddings.npz"
    click.echo(f"run folder: {result.run_dir}  ({outputs})")
    board = "scalars" + (", projector" if config.projector else "")
    click.echo(f"TensorBoard ({board}): tensorboard --logdir {result.log_dir.parent}")


@app.command()
@click.argument("run_folder", type=click.Path(exists=True, file_okay=False))
@click.option("--frame-ms", type=int, default=500, show_default=True,
              help="Duration of one frame in milliseconds (the last is held 4x).")
def gif(run_folder, frame_ms):
    """Redraw a run's latent-space frames and latent.gif.

    Works on finished and interrupted runs: it reads RUN_FOLDER/latent_embeddings.npz.

    Example: siamese-keras gif output/contrastive_mnist --frame-ms 300
    """
    from keras_siamese.latent import make_gif

    click.echo(f"GIF: {make_gif(run_folder, frame_ms)}")


@app.command()
@click.option("--out", type=click.Path(file_okay=False), default="output/diagrams",
              show_default=True, help="Folder for the diagram PNGs.")
def diagram(out):
    """Draw the architecture of every model (needs graphviz and pydot).

    Example: siamese-keras diagram --out output/diagrams
    """
    from keras_siamese.diagrams import draw_models

    paths = draw_models(out)
    click.echo(f"diagrams: {', '.join(str(p) for p in paths)}")


def main(argv=None) -> int:
    """Console-script entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # TensorFlow's Python INFO lines (one per checkpoint saved, ...) are not ours to show.
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        app.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as help_shown:
        click.echo(help_shown.ctx.get_help())
        return 0
    except click.UsageError as error:
        click.echo(f"{PROG}: error: {error.format_message()}", err=True)
        return 2
    except SiameseError as error:
        click.echo(f"{PROG}: error: {error}", err=True)
        return error.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo(f"{PROG}: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
