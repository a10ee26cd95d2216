"""``siamese-keras``: train Siamese, triplet and softmax embedding models from the shell.

The only place that prints and exits: library errors become one line on stderr with
exit code 2 (usage) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import sys
import threading

import click

from keras_siamese import variants
from keras_siamese.checkpoint import STOP_REQUESTED
from keras_siamese.cli import serve, use
from keras_siamese.config import DATASETS, LR_SCHEDULES, PRECISIONS, TrainConfig
from keras_siamese.errors import Interrupted, SiameseError

PROG = "siamese-keras"


def _class_list(ctx, param, value) -> tuple[int, ...]:
    """'7,8,9' -> (7, 8, 9); '' -> ()."""
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as error:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of class "
                                 "numbers") from error


def _dataset(ctx, param, value) -> str:
    """A class-folder path becomes absolute, so config.json finds it from anywhere."""
    if value in DATASETS or value.startswith("tfds:") or not os.path.isdir(value):
        return value
    return os.path.abspath(value)


def _seed_list(ctx, param, value) -> tuple[int, ...] | None:
    """'0,1,2' -> (0, 1, 2), each seed once; None when not given."""
    if value is None:
        return None
    try:
        seeds = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as error:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of seeds") \
            from error
    if not seeds or len(set(seeds)) < len(seeds):
        raise click.BadParameter(f"{value!r}: give one or more seeds, each once (e.g. 0,1,2)")
    return seeds


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


_TYPES = {"int": int, "float": float, "str": str}
# Options whose text the command line turns into the field's value.
_CALLBACKS = {"dataset": _dataset, "holdout_classes": _class_list}


def _setting_option(field: dataclasses.Field):
    """The click option of one TrainConfig field: name, default, help and choices all come
    from the field (see ``config.setting``), so they are defined once."""
    meta, name = field.metadata, f"--{field.name.replace('_', '-')}"
    settings = dict(help=meta["help"], callback=_CALLBACKS.get(field.name))
    if field.type.split(" | ")[0] == "bool":  # "bool | None": None leaves it to the loss
        switch = meta.get("switch", False)  # --x/--no-x, else a one-way flag
        flags = [f"{name}/--no-{field.name.replace('_', '-')}" if switch else name]
        settings.update(default=field.default, show_default=meta.get("default_text", switch))
        if not switch:
            settings["is_flag"] = True
    else:
        flags = [name, *meta.get("aliases", ())]
        kind = _TYPES.get(field.type.split(" | ")[0], str)
        if "choices" in meta:
            kind = click.Choice(meta["choices"])
        elif meta.get("path"):
            kind = click.Path()
        default = field.default
        if isinstance(default, tuple):  # parsed back by its callback
            default = ",".join(map(str, default))
        settings.update(type=kind, default=default, metavar=meta.get("metavar"),
                        show_default=meta.get("default_text", default not in (None, "")))
    return click.option(*flags, field.name, **settings)


def _train_options(command):
    """Every TrainConfig field as an option of ``command``, in the dataclass's order."""
    for field in reversed(dataclasses.fields(TrainConfig)):
        command = _setting_option(field)(command)
    return command


@app.command()
@_train_options
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
        unused = config.unused_options(
            [name for name in options
             if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE])
        if unused:
            pronoun = "it" if len(unused) == 1 else "them"
            raise click.UsageError(f"{'; '.join(unused)}: drop {pronoun}")
    else:
        given = [f"--{name.replace('_', '-')}" for name in options
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"--resume continues a run with its saved settings; drop "
                                   f"{', '.join(given)}")
    from keras_siamese import experiment, latent, run_folder
    from keras_siamese.report import format_table

    if resume_folder is not None:
        config = run_folder.read_config(resume_folder)[0]
    result = experiment.run(config, resume=resume_folder is not None)
    if not result.chief:
        click.echo("worker finished; the chief writes the run folder and TensorBoard logs")
        return
    click.echo(format_table(result.metrics))
    outputs = [run_folder.CONFIG, run_folder.HISTORY, run_folder.MODEL,
               run_folder.EMBEDDING_PLOT, run_folder.METRICS]
    if config.export:
        outputs.append(f"{run_folder.SAVED_MODEL}/")
    if config.frames:
        outputs += [latent.GIF_FILE, f"{latent.FRAMES_DIR}/", latent.EMBEDDINGS_FILE]
    click.echo(f"run folder: {result.run_dir}  ({', '.join(outputs)})")
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

    from keras_siamese.report import format_table
    from keras_siamese.run_folder import evaluate_run

    metrics, written, data = evaluate_run(run_folder, changed_data)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(format_table(metrics, data.class_names))
        click.echo(f"written: {written}")


@app.command()
@click.option("--losses", callback=_choices(variants.VARIANTS),
              default=",".join(variants.STUDY),
              show_default=True,
              help="Comma-separated losses, or losses with online mining such as "
                   "triplet-batch-hard (columns of the grid); the default is the study's "
                   "models. All: " + ",".join(variants.VARIANTS))
@click.option("--datasets", callback=_choices(DATASETS), default=",".join(DATASETS),
              show_default=True, help="Comma-separated datasets (rows of the grid).")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True,
              help="Epochs of every run.")
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True,
              help="Seed of every run (one run per cell: no confidence intervals).")
@click.option("--seeds", callback=_seed_list, default=None, metavar="S1,S2,...",
              help="Train every cell once per seed (run folders <loss>_<dataset>_seed<S>) and "
                   "report each metric as mean ± its Student's t 95% confidence interval "
                   "over the seeds; instead of --seed.")
@click.option("--limit", type=int, default=None,
              help="Train every run on a class-balanced subset of N images (quick grids).")
@click.option("--embedding-dim", type=int, default=TrainConfig.embedding_dim,
              show_default=True, help="Embedding size of every run (a fair comparison: one "
              "backbone, embedding size, batch, epochs and seed for every loss; give each "
              "size its own --output-dir).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=TrainConfig.precision,
              show_default=True, help="Arithmetic of every run (see train --precision).")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=TrainConfig.lr_schedule,
              show_default=True, help="Learning-rate schedule of every run (see train "
              "--lr-schedule).")
@click.option("--output-dir", type=click.Path(), default="output/reproduce", show_default=True,
              help="Folder of the grid's run folders and its results page.")
@click.option("--log-dir", type=click.Path(), default="logs/reproduce", show_default=True,
              help="Root of the grid's TensorBoard run folders.")
@click.option("--data-dir", type=click.Path(), default=None,
              help="Folder with the idx files (or a TFDS data dir) to load from.")
@click.option("--overwrite", is_flag=True,
              help="Retrain every run, even those an earlier grid finished.")
@click.option("--readme", type=click.Path(dir_okay=False), default=None,
              help="Also write the results page into this Markdown file, between its "
                   "marker lines of --readme-block (checked before training), and copy "
                   "results.json and results.png to its docs/ folder as <block>.json, .png.")
@click.option("--readme-block", default="results", show_default=True,
              help="Name of the block that --readme replaces: the lines between "
                   "'<!-- reproduce:NAME begin ...-->' and '<!-- reproduce:NAME end -->'.")
@click.pass_context
def reproduce(ctx, losses, datasets, epochs, seed, seeds, limit, embedding_dim, precision,
              lr_schedule, output_dir, log_dir, data_dir, overwrite, readme, readme_block):
    """Train the study's grid (every loss on every dataset) and write its results page.

    Writes OUTPUT_DIR/results.md, results.png (the embedding plots with P@1, MAP@R and
    one-shot accuracy under each) and results.json. Runs an earlier grid finished with the
    same settings are kept, so an interrupted grid continues. With --seeds every figure is
    a mean over seeds with its 95% confidence interval (Student's t).

    Example: siamese-keras reproduce --epochs 10 --seeds 0,1,2
    """
    from keras_siamese import readme_block as block
    from keras_siamese.reproduce import grid_configs, reproduce as run_grid

    if readme is not None:
        block.check(readme, readme_block)
    elif ctx.get_parameter_source("readme_block") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--readme-block names a block of the --readme file: give both")
    if seeds and ctx.get_parameter_source("seed") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("give --seed (one run per cell) or --seeds (several), not both")
    seeds = seeds or (seed,)
    configs = grid_configs(losses, datasets, seeds, epochs=epochs, limit=limit,
                           embedding_dim=embedding_dim, precision=precision,
                           lr_schedule=lr_schedule, output_dir=output_dir, log_dir=log_dir,
                           data_dir=data_dir, overwrite=overwrite)
    # One seed keeps the command as it always read; several name them all.
    seed_option = (f"--seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else
                   f"--seed {seeds[0]}")
    command = (f"{PROG} reproduce --losses {','.join(losses)} --datasets {','.join(datasets)} "
               f"--epochs {epochs} {seed_option}" + (f" --limit {limit}" if limit else "")
               + (f" --embedding-dim {embedding_dim}"
                  if embedding_dim != TrainConfig.embedding_dim else "")
               + (f" --precision {precision}" if precision != TrainConfig.precision else "")
               + (f" --lr-schedule {lr_schedule}"
                  if lr_schedule != TrainConfig.lr_schedule else ""))
    cells = run_grid(configs, output_dir, command, echo=click.echo)
    for cell in cells:
        click.echo(f"{cell.dataset:<14} {cell.loss:<12} P@1 {cell.text('precision_at_1', 4)}  "
                   f"MAP@R {cell.text('map_at_r', 4)}")
    if len(seeds) > 1:
        click.echo(f"mean ± half-width of the 95% confidence interval over seeds "
                   f"{', '.join(map(str, seeds))} (Student's t)")
    click.echo(f"results: {output_dir}/results.md, results.png, results.json")
    if readme is not None:
        block.write(readme, readme_block, output_dir)
        click.echo(f"block {readme_block!r} of {readme} rewritten, with "
                   f"{block.results_path(readme_block)} and {block.figure_path(readme_block)}")


@app.command("export")
@click.argument("run_folder", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["saved_model", "onnx", "litert"]),
              default="saved_model", show_default=True,
              help="saved_model: a TensorFlow SavedModel folder with all signatures; onnx, "
                   "litert: one file with the embedding (image -> embedding), checked by "
                   "onnxruntime / the LiteRT interpreter when written.")
@click.option("--quantize", type=click.Choice(["float16", "dynamic-int8"]), default=None,
              help="With --format litert: store the weights as float16 or int8 (dynamic "
                   "range); prints the P@1 and MAP@R it costs on the test set.")
@click.option("--out", type=click.Path(), default=None,
              help="Folder of the SavedModel  [default: RUN_FOLDER/saved_model], or the "
                   "file of an onnx / litert export  [default: RUN_FOLDER/model.onnx, "
                   "model.tflite, model_float16.tflite, model_dynamic_int8.tflite]; an "
                   "existing one is replaced only if it holds an earlier export of this run.")
@click.option("--overwrite", is_flag=True,
              help="Replace an --out folder or file that holds something else (never the "
                   "run folder or a folder holding it).")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False),
              default=None, help="Store this index's gallery in the SavedModel and add the "
                                 "classify signature.")
def export_command(run_folder, fmt, quantize, out, overwrite, index_dir):
    """Export a finished run's embedding net as a TensorFlow SavedModel, ONNX or LiteRT.

    SavedModel signatures: serving_default (image -> embedding), distance (first, second ->
    distance), verify (first, second -> distance, same at the run's threshold), with --index
    classify (image -> class, distance, unknown), and for BCE runs same_probability. ONNX
    and LiteRT files hold serving_default's computation (input image, output embedding).
    Inputs are raw pixels, float32 0..255.

    Example: siamese-keras export output/contrastive_mnist --out /srv/models/digits/1

    Example: siamese-keras export output/contrastive_mnist --format litert --quantize
    dynamic-int8
    """
    if quantize is not None and fmt != "litert":
        raise click.UsageError(f"--quantize is for --format litert only ({fmt} exports are "
                               "float32)")
    if index_dir is not None and fmt != "saved_model":
        raise click.UsageError("--index adds the classify signature of a SavedModel: only "
                               "with --format saved_model")
    if fmt != "saved_model":
        from keras_siamese.export_formats import describe, export_file

        for line in describe(export_file(run_folder, fmt, out, overwrite, quantize)):
            click.echo(line)
        return
    from keras_siamese.export import export_run

    path = export_run(run_folder, out, overwrite, index_dir)
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


use.register(app)  # index, search, classify, calibrate, verify
serve.register(app)  # serve

_interrupts = 0


def _interrupt(signum, frame):
    """Ctrl-C and SIGTERM (``kill``, a scheduler's stop) end a run the same way: the first
    raises KeyboardInterrupt, so the run removes or keeps its folders and says which; a
    second while that clean-up runs is ignored (raised inside the clean-up it would leave
    a half-removed run and a traceback); a third ends the process at once."""
    global _interrupts
    if _interrupts == 0 and inside_finaliser(frame):
        # Raised here, KeyboardInterrupt would be printed as "Exception ignored in ..." and
        # lost: deliver the signal again once the finaliser has returned.
        again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        again.daemon = True
        again.start()
        return
    _interrupts += 1
    if _interrupts == 1:
        STOP_REQUESTED.set()  # in case a library swallows the KeyboardInterrupt all the same
        raise KeyboardInterrupt
    if _interrupts >= 3:
        click.echo(f"{PROG}: interrupted again: stopping without cleaning up", err=True)
        os._exit(130)


def inside_finaliser(frame) -> bool:
    """Whether ``frame`` runs inside a ``__del__`` (garbage collection can run one at any
    point, e.g. a ``zipfile`` closing itself), where an exception cannot propagate."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


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
