"""``siamese-keras``: train Siamese, triplet and softmax embedding models from the shell.

The only place that prints and exits: library errors become one line on stderr with
exit code 2 (usage) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys

import click

from keras_siamese.config import (BACKBONES, DATASETS, LOSSES, MINING, STRATEGIES, VARIANTS,
                                  TrainConfig)
from keras_siamese.errors import Interrupted, SiameseError

PROG = "siamese-keras"


def _class_list(ctx, param, value) -> tuple[int, ...]:
    """'7,8,9' -> (7, 8, 9); '' -> ()."""
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of class "
                                 "numbers") from None


def _dataset(ctx, param, value) -> str:
    """A class-folder path becomes absolute, so config.json finds it from anywhere."""
    if value in DATASETS or value.startswith("tfds:") or not os.path.isdir(value):
        return value
    return os.path.abspath(value)


def _choices(allowed):
    """A callback that splits 'a,b' and checks every part is one of ``allowed``."""
    def check(ctx, param, value) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in value.split(",") if part.strip())
        unknown = [part for part in chosen if part not in allowed]
        if unknown or not chosen:
            raise click.BadParameter(f"{value!r}: choose from {', '.join(allowed)}")
        return chosen
    return check


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def app():
    """Siamese networks and friends: metric learning on MNIST and Fashion-MNIST."""


@app.command()
@click.option("--loss", type=click.Choice(LOSSES), default="contrastive", show_default=True,
              help="softmax: classifier baseline; contrastive / bce: Siamese pairs; "
                   "triplet: anchor-positive-negative; vae: variational autoencoder (its "
                   "latent mean is the embedding).")
@click.option("--dataset", callback=_dataset, default="mnist", show_default=True,
              metavar="mnist|fashion_mnist|tfds:NAME|FOLDER",
              help="mnist or fashion_mnist (offline from --data-dir, TFDS or the packaged "
                   "copies); tfds:NAME, a TFDS image-classification dataset prepared on this "
                   "machine; or FOLDER with one sub-folder of PNG/JPEG images per class.")
@click.option("--image-size", type=int, default=None,
              help="Read images at N x N pixels  [default: MNIST-like data keeps 28 x 28; "
                   "other data keeps its size if all images share one up to 64 x 64, "
                   "else 64 x 64]")
@click.option("--test-split", type=float, default=0.2, show_default=True,
              help="Share of each class held out for testing (fixed seed), for datasets "
                   "without a test split of their own (class folders, some TFDS sets).")
@click.option("--backbone", type=click.Choice(BACKBONES), default="small", show_default=True,
              help="small: the study's 2-conv network; resnet: a small ResNet (6 residual "
                   "blocks, batch norm) for larger colour images.")
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
@click.option("--holdout-classes", callback=_class_list, default="", metavar="C1,C2,...",
              help="Leave these class numbers out of training and report the metrics on "
                   "them separately (e.g. 7,8,9): the one-shot setting.")
@click.option("--eval-every", type=int, default=0, show_default=True,
              help="Also log the embedding metrics to TensorBoard every K epochs "
                   "(they are always computed after the last one).")
@click.option("--mining", type=click.Choice(sorted({m for ms in MINING.values() for m in ms})),
              default="random", show_default=True,
              help="random: the study's offline pairs/triplets. Online, on P x K batches: "
                   "triplet: batch-all, batch-hard, semi-hard; contrastive: hard-negative.")
@click.option("--classes-per-batch", type=int, default=8, show_default=True,
              help="P: classes in each online-mining batch (batch size P x K).")
@click.option("--images-per-class", type=int, default=16, show_default=True,
              help="K: images of each class in each online-mining batch.")
@click.option("--export/--no-export", default=True, show_default=True,
              help="Export the embedding net as a TensorFlow SavedModel "
                   "(<run folder>/saved_model) for serving without this package.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="default",
              show_default=True,
              help="tf.distribute: mirrored: this machine's GPUs (--batch-size is the global "
                   "batch); multi-worker: one process per machine, each with its TF_CONFIG "
                   "(see the README); only the chief writes outputs.")
@click.option("--resume", "resume_folder", type=click.Path(file_okay=False), default=None,
              metavar="RUN_FOLDER",
              help="Continue the interrupted run in RUN_FOLDER from its last finished epoch, "
                   "with that run's own settings (give no other option).")
@click.pass_context
def train(ctx, resume_folder, **options):
    """Train a model and write its run folder.

    Example: siamese-keras train --loss contrastive --dataset mnist
    """
    if resume_folder is None:
        config = TrainConfig(**options)
    else:
        given = [f"--{name.replace('_', '-')}" for name in options
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"--resume continues a run with its saved settings; drop "
                                   f"{', '.join(given)}")
    from keras_siamese import experiment  # TensorFlow loads only when there is work to do
    from keras_siamese.evaluation import format_table

    if resume_folder is not None:
        config = experiment.run_config(resume_folder)
    result = experiment.run(config, resume=resume_folder is not None)
    if not result.chief:
        click.echo("worker finished; the chief writes the run folder and TensorBoard logs")
        return
    click.echo(format_table(result.metrics))
    outputs = "config.json, history.csv, model.keras, embedding.png, metrics.json"
    if config.export:
        outputs += ", saved_model/"
    if config.frames:
        outputs += ", latent.gif, frames/, latent_embeddings.npz"
    click.echo(f"run folder: {result.run_dir}  ({outputs})")
    board = "scalars" + (", projector" if config.projector else "")
    click.echo(f"TensorBoard ({board}): tensorboard --logdir {result.log_dir.parent}")


@app.command()
@click.argument("run_folder", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON instead.")
@click.option("--changed-data", is_flag=True,
              help="Score the model on its dataset as it is now although it changed since "
                   "training; the result goes to metrics_changed_data.json, never over "
                   "the training metrics.json.")
def evaluate(run_folder, as_json, changed_data):
    """Score a finished run: print its metrics and rewrite its metrics.json.

    Uses the run's config.json (dataset, --limit, --holdout-classes, seed), so the figures
    equal those training wrote. A dataset that changed since training (checked against the
    fingerprint in config.json) is refused unless --changed-data is given.

    Example: siamese-keras evaluate output/contrastive_mnist
    """
    import json
    from pathlib import Path

    from keras_siamese import evaluation
    from keras_siamese.experiment import check_data_unchanged, load_run_data, read_run
    from keras_siamese.data import fingerprint
    from keras_siamese.outputs import write_json
    from keras_siamese.run_lock import RunLock

    run_dir = Path(run_folder)
    config, recorded = read_run(run_dir)
    with RunLock(run_dir, "evaluating"):
        embedding = evaluation.load_embedding(run_dir)  # checked before the data is loaded
        data = load_run_data(config)
        target = run_dir / "metrics.json"
        if changed_data:
            target = run_dir / "metrics_changed_data.json"
        else:
            check_data_unchanged(run_dir, recorded, fingerprint(data),
                                 "its metrics.json stays as it is; to score the model on the "
                                 "data as it is now, pass --changed-data (writes "
                                 "metrics_changed_data.json)")
        sets = evaluation.evaluation_sets(data, config.holdout_classes, config.limit,
                                          config.seed)
        metrics = evaluation.evaluate(embedding, sets)
        if not changed_data:  # keep the training speed, the one figure evaluate cannot make
            try:
                metrics["seconds_per_epoch"] = evaluation.read_json(
                    run_dir / "metrics.json").get("seconds_per_epoch")
            except SiameseError:  # missing or damaged: it is being rewritten now
                metrics["seconds_per_epoch"] = None
        metrics = evaluation.to_json(metrics)
        write_json(target, metrics)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(evaluation.format_table(metrics, data.class_names))
        click.echo(f"written: {target}")


@app.command()
@click.option("--losses", callback=_choices(VARIANTS), default=",".join(LOSSES),
              show_default=True,
              help="Comma-separated losses, or losses with online mining such as "
                   "triplet-batch-hard (columns of the grid). All: " + ",".join(VARIANTS))
@click.option("--datasets", callback=_choices(DATASETS), default=",".join(DATASETS),
              show_default=True, help="Comma-separated datasets (rows of the grid).")
@click.option("--epochs", type=int, default=10, show_default=True, help="Epochs of every run.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every run.")
@click.option("--limit", type=int, default=None,
              help="Train every run on a class-balanced subset of N images (quick grids).")
@click.option("--output-dir", type=click.Path(), default="output/reproduce", show_default=True,
              help="Folder of the grid's run folders and its results page.")
@click.option("--log-dir", type=click.Path(), default="logs/reproduce", show_default=True,
              help="Root of the grid's TensorBoard run folders.")
@click.option("--data-dir", type=click.Path(), default=None,
              help="Folder with the idx files (or a TFDS data dir) to load from.")
@click.option("--overwrite", is_flag=True,
              help="Retrain every run, even those an earlier grid finished.")
def reproduce(losses, datasets, epochs, seed, limit, output_dir, log_dir, data_dir, overwrite):
    """Train the study's grid (every loss on every dataset) and write its results page.

    Writes OUTPUT_DIR/results.md, results.png (the embedding plots with P@1, MAP@R and
    one-shot accuracy under each) and results.json. Runs an earlier grid finished with the
    same settings are kept, so an interrupted grid continues.

    Example: siamese-keras reproduce --epochs 10
    """
    from keras_siamese.reproduce import grid_configs, reproduce as run_grid

    configs = grid_configs(losses, datasets, epochs=epochs, seed=seed, limit=limit,
                           output_dir=output_dir, log_dir=log_dir, data_dir=data_dir,
                           overwrite=overwrite)
    command = (f"{PROG} reproduce --losses {','.join(losses)} --datasets {','.join(datasets)} "
               f"--epochs {epochs} --seed {seed}" + (f" --limit {limit}" if limit else ""))
    rows = run_grid(configs, output_dir, command, echo=click.echo)
    for row in rows:
        click.echo(f"{row['dataset']:<14} {row['loss']:<12} P@1 {row['precision_at_1']:.4f}  "
                   f"MAP@R {row['map_at_r']:.4f}")
    click.echo(f"results: {output_dir}/results.md, results.png, results.json")


@app.command("export")
@click.argument("run_folder", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(), default=None,
              help="Folder of the SavedModel  [default: RUN_FOLDER/saved_model]; an "
                   "existing folder is replaced only if it holds an earlier export of "
                   "this run.")
@click.option("--overwrite", is_flag=True,
              help="Replace an --out folder that holds something else (never the run "
                   "folder or a folder holding it).")
def export_command(run_folder, out, overwrite):
    """Export a finished run's embedding net as a TensorFlow SavedModel.

    Signatures: serving_default (image -> embedding), distance (first, second -> distance),
    and for BCE runs same_probability. Inputs are raw pixels, float32 0..255.

    Example: siamese-keras export output/contrastive_mnist --out /srv/models/digits/1
    """
    from keras_siamese.export import export_run

    path = export_run(run_folder, out, overwrite)
    click.echo(f"SavedModel: {path}  (inspect: saved_model_cli show --all --dir {path})")


@app.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Output file: .csv (name,e0,e1,... per input) or .npy (with the input "
                   "names in OUT.names.txt).")
@click.option("--invert", is_flag=True,
              help="Use 255 - pixel: for dark strokes on light paper (MNIST is light on dark).")
def embed(model, inputs, out, invert):
    """Embed images with a trained model.

    MODEL is a run folder, a .keras file or an exported SavedModel folder. INPUTS are
    PNG/JPEG files, folders of them, or .npy arrays (N, H, W[, C]) of raw pixels 0..255;
    images are converted to the model's channels and resized to its input size.

    Example: siamese-keras embed output/contrastive_mnist digits/ --out digits.csv
    """
    from keras_siamese.embed import Embedder, check_output, read_inputs, write_embeddings
    from keras_siamese.image_folders import shown

    check_output(out, inputs)  # before the model loads
    embedder = Embedder(model)
    images, names = read_inputs(inputs, embedder.input_shape, invert)
    written = write_embeddings(out, embedder(images), names)
    click.echo(f"embedded {len(names)} images: {', '.join(map(shown, written))}")


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


_interrupts = 0


def _interrupt(signum, frame):
    """Ctrl-C and SIGTERM (``kill``, a scheduler's stop) end a run the same way: the first
    raises KeyboardInterrupt, so the run removes or keeps its folders and says which; a
    second while that clean-up runs is ignored (raised inside the clean-up it would leave
    a half-removed run and a traceback); a third ends the process at once."""
    global _interrupts
    _interrupts += 1
    if _interrupts == 1:
        raise KeyboardInterrupt
    if _interrupts >= 3:
        click.echo(f"{PROG}: interrupted again: stopping without cleaning up", err=True)
        os._exit(130)


def describe_os_error(error: OSError) -> str:
    """One line for a fault of the machine (full disk, lost permission) that no library
    call turned into its own error."""
    where = f" ({error.filename})" if error.filename else ""
    if error.errno == errno.ENOSPC:
        return f"no space left on the device{where}: free some space and run the command again"
    return f"{error.strerror or error}{where}"


def main(argv=None) -> int:
    """Console-script entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # TensorFlow's Python INFO lines (one per checkpoint saved, ...) are not ours to show.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # "Assets written to: ..."
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored in background jobs
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
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
        if isinstance(error, Interrupted):
            _quiet_interrupted_tasks()
        return error.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo(f"{PROG}: interrupted", err=True)
        _quiet_interrupted_tasks()
        return 130
    except OSError as error:
        click.echo(f"{PROG}: error: {describe_os_error(error)}", err=True)
        return 1
    return 0


def _quiet_interrupted_tasks() -> None:
    """An interrupt in the middle of loading leaves the data reader's asyncio tasks pending;
    at exit each would log "Task was destroyed but it is pending!" (about 120 lines)."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
