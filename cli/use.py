"""The commands that use a trained model: ``index``, ``search``, ``classify``, ``calibrate``
and ``verify``. Each is a thin wrapper of the library (:mod:`keras_siamese.index`,
:mod:`keras_siamese.gallery`, :mod:`keras_siamese.calibration`); TensorFlow loads only
when a command runs."""

from __future__ import annotations

import json
from pathlib import Path

import click


def register(app: click.Group) -> None:
    for command in (index_command, search, classify, calibrate, verify):
        app.add_command(command)


def _threshold(run_dir) -> float:
    """The run's decision threshold, saying which one when it is not calibrated."""
    from keras_siamese.run_folder import decision_threshold

    threshold, calibrated = decision_threshold(run_dir)
    if not calibrated:
        click.echo(f"note: {run_dir} is not calibrated: using the accuracy-optimal threshold "
                   f"{threshold:.4f} of its training pairs (metrics.json); run siamese-keras "
                   "calibrate for one chosen on held-out pairs", err=True)
    return threshold


def _unknown_threshold(index, choice: str) -> float:
    """classify's --threshold: 'gallery', 'calibrated' or a number (see its help)."""
    if choice == "calibrated":
        return _threshold(index.run)
    if choice == "gallery":
        if index.unknown_threshold is None:
            click.echo("note: a gallery of one item has no threshold of its own: using the "
                       "run's", err=True)
        return index.open_set_threshold()
    try:
        value = float(choice)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise click.BadParameter(f"must be gallery, calibrated or a distance >= 0, got "
                                 f"{choice!r}", param_hint="--threshold")
    return value


def _queries(index, queries, invert: bool):
    """The query images embedded by the index's (checked) model, and their names."""
    from keras_siamese.embed import read_inputs
    from keras_siamese.models import embed_images

    embedding = index.embedding()  # refuses a changed model before reading any image
    images, names = read_inputs(queries, index.input_shape, invert)
    return embed_images(embedding, images), names


@click.command("index")
@click.argument("run_folder", type=click.Path(exists=True, file_okay=False))
@click.argument("gallery")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder of the new index  [required unless --add]")
@click.option("--add", "add_to", type=click.Path(file_okay=False), default=None,
              metavar="INDEX_DIR", help="Append GALLERY to this index instead: more images of "
              "its classes, or new classes (one to five images each are enough).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="For a GALLERY .npy of images: an .npy of one label per image.")
@click.option("--data-dir", type=click.Path(), default=None,
              help="Where a dataset-split GALLERY is read from (as train's --data-dir).")
@click.option("--overwrite", is_flag=True, help="Replace the index already in --out.")
def index_command(run_folder, gallery, out, add_to, labels, data_dir, overwrite):
    """Embed a gallery of labelled images with a finished run's model.

    GALLERY is a class-folder tree, a dataset split (mnist:train, fashion_mnist:test,
    tfds:NAME:split) or an .npy of images with --labels.

    Example: siamese-keras index output/contrastive_mnist mnist:train --out digits.index
    """
    from keras_siamese.gallery import read_gallery
    from keras_siamese.index import Index, check_new_index

    if (out is None) == (add_to is None):
        raise click.UsageError("give --out NEW_INDEX_DIR, or --add INDEX_DIR to extend one")
    if add_to is not None:
        index = Index.load(add_to)
        if Path(index.run) != Path(run_folder).absolute():
            raise click.UsageError(f"{add_to} was made with the run {index.run}, not "
                                   f"{run_folder}")
        embedding = index.embedding()
        index.add(read_gallery(gallery, index.input_shape, labels, data_dir), embedding)
    else:
        from keras_siamese.run_folder import load_embedding

        check_new_index(out, overwrite)
        embedding = load_embedding(run_folder)
        gallery_images = read_gallery(gallery, tuple(embedding.input_shape[1:]), labels,
                                      data_dir)
        index = Index.build(run_folder, gallery_images, embedding)
    target = index.save(add_to or out)
    click.echo(f"index: {target}  ({len(index.labels)} items of {len(index.class_names)} "
               "classes)")


@click.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", nargs=-1, required=True)
@click.option("-k", type=int, default=5, show_default=True, help="Neighbours per query.")
@click.option("--backend", type=click.Choice(["exact", "approximate"]), default="exact",
              show_default=True, help="exact: exact ranking; approximate: faiss HNSW, for "
              "large galleries (pip install faiss-cpu).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the results to a .csv or .json file instead of printing them.")
@click.option("--invert", is_flag=True, help="Use 255 - pixel (dark strokes on light paper).")
def search(index_dir, queries, k, backend, out, invert):
    """The k nearest gallery items of each query image (files, folders, .npy): one
    tab-separated line per query and rank (query, rank, distance, class, source).

    Example: siamese-keras search digits.index my_digits/ -k 5
    """
    from keras_siamese.embed import check_output
    from keras_siamese.index import RESULT_SUFFIXES, Index, write_results

    if k < 1:
        raise click.BadParameter(f"must be at least 1, got {k}", param_hint="-k")
    if out is not None:
        check_output(out, queries, RESULT_SUFFIXES)  # never a query file, however spelled
    index = Index.load(index_dir)
    vectors, names = _queries(index, queries, invert)
    result = index.search(vectors, k, backend)
    rows = [{"query": name, "rank": rank + 1, "distance": float(distance),
             "class": result.classes[q][rank], "source": index.sources[item]}
            for q, name in enumerate(names)
            for rank, (item, distance) in enumerate(zip(result.indices[q],
                                                        result.distances[q]))]
    if out is not None:
        write_results(out, rows)
        click.echo(f"results: {out}  ({len(names)} queries x {k})")
        return
    for row in rows:
        click.echo(f"{row['query']}\t{row['rank']}\t{row['distance']:.4f}\t{row['class']}\t"
                   f"{row['source']}")


@click.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", nargs=-1, required=True)
@click.option("-k", type=int, default=1, show_default=True,
              help="Nearest gallery items that vote (a tie goes to the nearest).")
@click.option("--threshold", default="gallery", show_default=True,
              help="Distance above which an image is 'unknown': 'gallery' (the index's own: "
                   "99%% of its items have another item this near), 'calibrated' (the run's "
                   "pair threshold, see calibrate), or a number.")
@click.option("--backend", type=click.Choice(["exact", "approximate"]), default="exact",
              show_default=True, help="As for search.")
@click.option("--invert", is_flag=True, help="Use 255 - pixel (dark strokes on light paper).")
def classify(index_dir, queries, k, threshold, backend, invert):
    """The class of each query image by its nearest gallery items, or 'unknown' when even
    the nearest is farther than the threshold (open-set recognition): one tab-separated
    line per query (query, class, distance).

    Example: siamese-keras classify digits.index my_digits/
    """
    from keras_siamese.index import Index

    if k < 1:
        raise click.BadParameter(f"must be at least 1, got {k}", param_hint="-k")
    index = Index.load(index_dir)
    threshold = _unknown_threshold(index, threshold)
    vectors, names = _queries(index, queries, invert)
    for name, (label, distance) in zip(names, index.classify(vectors, threshold, k, backend)):
        click.echo(f"{name}\t{label}\t{distance:.4f}")


@click.command()
@click.argument("run_folder", type=click.Path(exists=True, file_okay=False))
@click.option("--target", default="precision=0.99", show_default=True,
              help="precision=P: the largest threshold with at least this precision; "
                   "far=F: the largest with at most this false-accept rate; f1: the best F1.")
@click.option("--pairs", "pairs_source", default=None, metavar="GALLERY",
              help="Draw the pairs from this class-folder tree or dataset split (as for "
                   "index)  [default: the run's fixed test pairs]")
def calibrate(run_folder, target, pairs_source):
    """Choose the run's distance threshold on held-out pairs (its fixed test pairs, never
    training pairs) and write calibration.json and calibration.png into the run folder.

    Example: siamese-keras calibrate output/contrastive_mnist --target far=0.001
    """
    from keras_siamese.calibration import parse_target
    from keras_siamese.run_folder import calibrate_run

    result, written = calibrate_run(run_folder, parse_target(target), pairs_source)
    click.echo(json.dumps(result, indent=2))
    click.echo(f"written: {', '.join(map(str, written))}")


@click.command()
@click.argument("run_folder", type=click.Path(exists=True, file_okay=False))
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--invert", is_flag=True, help="Use 255 - pixel (dark strokes on light paper).")
def verify(run_folder, image_a, image_b, invert):
    """Whether two images show the same class: their distance against the run's
    calibrated threshold.

    Example: siamese-keras verify output/contrastive_mnist a.png b.png
    """
    from keras_siamese.embed import read_inputs
    from keras_siamese.models import embed_images
    from keras_siamese.neighbours import squared_distances
    from keras_siamese.run_folder import load_embedding

    threshold = _threshold(run_folder)
    embedding = load_embedding(run_folder)
    images, _ = read_inputs([image_a, image_b], tuple(embedding.input_shape[1:]), invert)
    first, second = embed_images(embedding, images).astype("float64")
    distance = float(squared_distances(first, second) ** 0.5)
    verdict = "same" if distance <= threshold else "different"
    click.echo(f"{verdict}  distance {distance:.4f}  threshold {threshold:.4f}")
