"""Export a trained run in every format and measure what each costs: size, difference, quality.

    python benchmarks/export_quality.py RUN_FOLDER [--out-dir DIR]

Exports RUN_FOLDER's embedding net as a SavedModel, an ONNX file, and LiteRT files in
float32, float16 and dynamic-int8, the way ``siamese-keras export`` does (each export is
checked when written), into DIR (default: a temporary folder, removed afterwards; the run
folder is never written). Then each export is run by its own runtime (TensorFlow,
onnxruntime, the LiteRT interpreter) on ALL the run's test images and training
references, and the script prints one row per format: file size, the largest absolute
difference from the Keras model's embeddings over the test images, P@1 (test queries
against the run's training images) and MAP@R (leave-one-out on the test set), computed as
``metrics.json`` computes them, and their drop from the Keras model's (positive = worse).
The Keras row's figures equal the run's ``metrics.json``. Export seconds include the check
the export does when written (quantized exports score themselves, so they take longer).
"""

import argparse
import functools
import importlib.metadata
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _folder_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


def _drop(before: float, after: float) -> str:
    """``before - after`` at four decimals, never "-0.0000" for a gain too small to show."""
    shown = f"{before - after:.4f}"
    return "0.0000" if float(shown) == 0 else shown


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _saved_model_embedder(path: Path):
    """images -> embeddings through the SavedModel's ``serving_default`` (in batches like
    the Keras model's; it takes float32)."""
    from keras_siamese.embed import Embedder

    embedder = Embedder(path)
    return lambda images: embedder(images.astype(np.float32))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", type=Path)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="Keep the exports in this folder (default: a temporary one).")
    args = parser.parse_args(argv)

    from keras_siamese import export_formats as ef  # the package registers its layers
    from keras_siamese.export import export_run
    from keras_siamese.models import embed_images
    from keras_siamese.run_folder import load_embedding

    run = args.run_folder.absolute()
    embedding = load_embedding(run)
    split = ef.run_split(run)
    keras_train = embed_images(embedding, split.train_images)
    keras_test = embed_images(embedding, split.test_images)
    keras_quality = ef.retrieval_quality(keras_train, split.train_labels, keras_test,
                                         split.test_labels)

    kinds = [("saved_model", None, "saved_model"), ("onnx", None, "model.onnx"),
             ("litert", None, "model.tflite"), ("litert", "float16", "model_float16.tflite"),
             ("litert", "dynamic-int8", "model_dynamic_int8.tflite")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="export_quality-") as scratch:
        folder = args.out_dir.absolute() if args.out_dir else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for fmt, quantize, name in kinds:
            path = folder / name
            started = time.perf_counter()
            if fmt == "saved_model":
                export_run(run, path, overwrite=True)
                embed = _saved_model_embedder(path)
            else:
                ef.export_file(run, fmt, path, overwrite=True, quantize=quantize)
                embed = functools.partial(ef.embed_with, ef.RUNTIMES[fmt](path))
            seconds = time.perf_counter() - started
            test = embed(split.test_images)
            quality = ef.retrieval_quality(embed(split.train_images), split.train_labels, test,
                                           split.test_labels)
            rows.append((f"{fmt}" + (f" {quantize}" if quantize else ""), _folder_size(path),
                         float(np.abs(test - keras_test).max()), quality, seconds))

    print(f"run: {run}  ({len(split.test_labels)} test images, {len(split.train_labels)} "
          f"training references, embedding dim {keras_test.shape[1]})")
    print(f"tensorflow {_version('tensorflow')}, keras {_version('keras')}, tf2onnx "
          f"{_version('tf2onnx')}, onnx {_version('onnx')}, onnxruntime "
          f"{_version('onnxruntime')}, ai-edge-litert {_version('ai-edge-litert')}")
    header = (f"| {'format':<20} | {'size':>9} | {'max abs diff':>12} | {'P@1':>6} | "
              f"{'P@1 drop':>8} | {'MAP@R':>6} | {'MAP@R drop':>10} | {'export s':>8} |")
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    print(f"| {'keras (model.keras)':<20} | {_folder_size(run / 'model.keras') / 2**20:>5.2f} MiB"
          f" | {0:>12.3g} | {keras_quality['precision_at_1']:>6.4f} | {0:>8.4f} | "
          f"{keras_quality['map_at_r']:>6.4f} | {0:>10.4f} | {'':>8} |")
    for label, size, difference, quality, seconds in rows:
        print(f"| {label:<20} | {size / 2**20:>5.2f} MiB | {difference:>12.3g} | "
              f"{quality['precision_at_1']:>6.4f} | "
              f"{_drop(keras_quality['precision_at_1'], quality['precision_at_1']):>8} | "
              f"{quality['map_at_r']:>6.4f} | "
              f"{_drop(keras_quality['map_at_r'], quality['map_at_r']):>10} | {seconds:>8.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
