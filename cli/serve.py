"""``siamese-keras serve``: a trained model behind TensorFlow Serving's REST API; a thin
wrapper of :mod:`keras_siamese.serving`, which needs the ``serve`` extra (uvicorn and
starlette). TensorFlow loads only when the command runs."""

from __future__ import annotations

import click

from keras_siamese.serving import ServeOptions  # numpy only: the defaults live there

DEFAULTS = ServeOptions()


def register(app: click.Group) -> None:
    app.add_command(serve)


@click.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The server has no authentication and no TLS: "
                   "0.0.0.0 opens it to every machine that can reach this one.")
@click.option("--port", type=click.IntRange(0, 65535), default=8501, show_default=True,
              help="Port to listen on (TensorFlow Serving's REST port); 0: any free port, "
                   "named in the start-up line.")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False),
              default=None, help="An index of the run (siamese-keras index): adds the "
                                 "classify signature. Needs MODEL to be a run folder.")
@click.option("--name", default=None,
              help="The model's name in the URLs  [default: the run's folder name]")
@click.option("--max-batch-size", type=click.IntRange(1, 4096), default=DEFAULTS.max_batch_size,
              show_default=True, help="Most images that concurrent requests share in one "
                                      "model call.")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 1000), default=DEFAULTS.batch_wait_ms,
              show_default=True, help="Longest wait for more requests to fill a batch (0: "
                                      "requests that arrive while one batch runs make the "
                                      "next; a wait only delays a lightly loaded server).")
@click.option("--max-images", type=click.IntRange(1, 1_000_000), default=DEFAULTS.max_images,
              show_default=True, help="Most images in one request (a pair counts as two).")
@click.option("--max-body-mb", type=click.FloatRange(0.001, 1024),
              default=DEFAULTS.max_body_bytes / 2**20,
              show_default=True, help="Largest request body, in MiB (413 beyond).")
def serve(model, host, port, index_dir, name, max_batch_size, batch_wait_ms, max_images,
          max_body_mb):
    """Serve a model over HTTP with TensorFlow Serving's REST API.

    MODEL is a run folder (its saved_model/, or a fresh export into a temporary folder
    when that is missing, older than the run's model or calibration, or without verify;
    always with --index) or an exported SavedModel folder. Requests follow TensorFlow
    Serving's REST API: GET /v1/models/NAME (status), GET /v1/models/NAME/metadata
    (signatures), POST /v1/models/NAME:predict with {"signature_name": ..., "instances":
    [...]}; an image is a nested list of raw pixels 0..255 or {"b64": "<base64 PNG or
    JPEG>"}. Ctrl-C or SIGTERM stops it.

    Example: siamese-keras serve output/contrastive_mnist --index digits.index
    """
    from keras_siamese.serving import check_libraries
    from keras_siamese.serving import serve as run

    check_libraries()  # before the model loads: a missing extra is one line at once
    options = ServeOptions(max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                           max_images=max_images,
                           max_body_bytes=int(max_body_mb * 1024 * 1024))

    def ready(url: str, served) -> None:
        click.echo(f"serving {served.name} at {url}  (signatures: "
                   f"{', '.join(sorted(served.signatures))}; Ctrl-C to stop)")

    run(model, host, port, name, index_dir, options, on_ready=ready)
    click.echo("stopped")
