"""Load-test ``siamese-keras serve`` on the loopback interface; print figures.

    python benchmarks/serve_load.py RUN_FOLDER [--index INDEX_DIR] [--seconds 20]
                                    [--clients 1,8,32] [--signatures serving_default,classify]
                                    [--max-batch-size 64] [--batch-wait-ms 0] [--json PATH]

Starts the real server (``siamese-keras serve RUN_FOLDER --port 0``, with ``--index`` for
``classify``) as a child process on 127.0.0.1 and waits for its start-up line. For each
signature and each number of concurrent clients it runs for ``--seconds`` (bounded: every
client stops at the deadline, nothing is sent anywhere but the loopback address): each
client keeps one HTTP/1.1 keep-alive connection and sends single-image ``:predict``
requests back to back (row format, the image as a pixel list, real MNIST test digits in
turn). It prints requests per second, the 50th and 99th percentile latency, the errors
(any answer but 200 with predictions, or a broken connection: must be 0), the mean batch
the server formed (from its ``/monitoring/prometheus/metrics`` counters) and the server's
resident memory (VmRSS) after start-up and after the last phase.

The clients are asyncio coroutines in this process writing pre-encoded requests on raw
sockets, so the client's own cost per request is small; they share the machine's cores
with the server, as a co-located client would.

The reference is measured in the same run, in this process, with the server idle: the
SavedModel's ``serving_default`` called on batches of real digits, at the batch that
``siamese-keras embed`` uses (``models.inference_batch_size``: 1,024 for 28x28) and at the
server's ``--max-batch-size``. The ratio is served single-image requests per second with
the most clients over in-process images per second at the embed batch (the target is at
least 0.5). The load average is printed: other work on a shared machine moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

IMAGES = 256  # distinct digits the requests cycle through
STARTUP_TIMEOUT_S = 600  # a run without a current export is exported first


def start_server(run, index, options: list[str]) -> tuple[subprocess.Popen, str]:
    """The server process and the model URL from its start-up line."""
    command = shutil.which("siamese-keras") or None
    argv = ([command] if command else [sys.executable, "-m", "keras_siamese.cli.main"])
    argv += ["serve", str(run), "--port", "0", *options]
    if index:
        argv += ["--index", str(index)]
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    # Wait for the line, the end of the process or the timeout, whichever comes first.
    ready, _, _ = select.select([server.stdout], [], [], STARTUP_TIMEOUT_S)
    line = server.stdout.readline() if ready else ""
    if not line.startswith("serving "):
        server.kill()
        log.seek(0)
        raise SystemExit(f"the server did not start: {line!r}\n{log.read()[-3000:]}")
    return server, re.search(r"http://\S+", line).group(0)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(base: str) -> dict:
    """The server's (signature, counter) -> value from its Prometheus text."""
    text = urllib.request.urlopen(f"{base}/monitoring/prometheus/metrics", timeout=30).read()
    found = {}
    for line in text.decode().splitlines():
        match = re.fullmatch(r'siamese_serve_(\w+)_total\{signature="([^"]+)"\} (\d+)', line)
        if match:
            found[(match.group(2), match.group(1))] = int(match.group(3))
    return found


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def client(host: str, port: int, requests: list[bytes], deadline: float,
                 latencies: list, errors: list, offset: int) -> None:
    """One keep-alive connection sending requests back to back until ``deadline``."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as error:
        errors.append(repr(error))
        return
    i = offset
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < deadline:
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200") or not body.startswith(b'{"predictions"'):
                errors.append(head.split(b"\r\n")[0].decode() + " " + body[:200].decode())
    except (OSError, asyncio.IncompleteReadError, AttributeError) as error:
        errors.append(repr(error))
    finally:
        writer.close()


async def load(host: str, port: int, requests: list[bytes], clients: int,
               seconds: float) -> tuple[list, list, float]:
    latencies, errors = [], []
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(client(host, port, requests, started + seconds, latencies,
                                  errors, k * 7) for k in range(clients)))
    return latencies, errors, loop.time() - started


def in_process(serve, images: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second through ``serve`` (a SavedModel's serving_default) at ``batch``."""
    import tensorflow as tf

    tiled = np.concatenate([images] * max(1, -(-batch // len(images))))[:batch]
    x = tf.constant(tiled)
    serve(image=x)  # first call: set-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        serve(image=x)["embedding"].numpy()
        done += batch
    return done / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder")
    parser.add_argument("--index", default=None, help="an index of the run (for classify)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--signatures", default="serving_default,classify")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=0.0)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    signatures = args.signatures.split(",")
    if "classify" in signatures and not args.index:
        print("note: no --index: classify left out")
        signatures.remove("classify")

    from keras_siamese.data import load_dataset
    from keras_siamese.models import inference_batch_size

    digits = load_dataset("mnist").x_test[:IMAGES].astype(np.float32)
    server, url = start_server(args.run, args.index,
                               ["--max-batch-size", str(args.max_batch_size),
                                "--batch-wait-ms", str(args.batch_wait_ms)])
    rows = []
    try:
        base = url.split("/v1/")[0]
        host, port = re.fullmatch(r"http://([^:/]+):(\d+)", base).groups()
        path = urllib.parse.urlsplit(url).path + ":predict"
        for signature in signatures:  # one request each before measuring
            body = json.dumps({"signature_name": signature,
                               "instances": [digits[0].tolist()]}).encode()
            urllib.request.urlopen(urllib.request.Request(url + ":predict", body), timeout=60)
        rss_before = rss_mib(server.pid)
        print(f"server: {url}  pid {server.pid}  RSS {rss_before:.0f} MiB after start-up; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for signature in signatures:
            requests = [request_bytes(host, int(port), path, json.dumps(
                {"signature_name": signature, "instances": [image.astype(int).tolist()]}
            ).encode()) for image in digits]
            for count in clients:
                before, cpu_before, own_before = counters(base), cpu_seconds(server.pid), \
                    sum(os.times()[:2])
                latencies, errors, took = asyncio.run(load(host, int(port), requests, count,
                                                           args.seconds))
                server_cpu = cpu_seconds(server.pid) - cpu_before
                client_cpu = sum(os.times()[:2]) - own_before
                after = counters(base)
                batches = after[(signature, "batches")] - before[(signature, "batches")]
                images = after[(signature, "rows")] - before[(signature, "rows")]
                ms = np.percentile(latencies, [50, 99]) * 1000 if latencies else [np.nan] * 2
                row = {"signature": signature, "clients": count, "seconds": round(took, 1),
                       "requests": len(latencies), "requests_per_s": len(latencies) / took,
                       "p50_ms": float(ms[0]), "p99_ms": float(ms[1]), "errors": len(errors),
                       "mean_batch": images / batches if batches else 0.0,
                       "server_cpu_ms": 1000 * server_cpu / max(1, len(latencies)),
                       "client_cpu_ms": 1000 * client_cpu / max(1, len(latencies))}
                rows.append(row)
                print(f"  {signature:<16} {count:>3} clients: {row['requests_per_s']:8.0f} "
                      f"req/s  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                      f"errors {row['errors']}  mean batch {row['mean_batch']:.1f}  CPU ms "
                      f"per request: server {row['server_cpu_ms']:.2f}, client "
                      f"{row['client_cpu_ms']:.2f}"
                      + (f"  first error: {errors[0]}" if errors else ""), flush=True)
        rss_after = rss_mib(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            code = "killed"
    import tensorflow as tf

    serve = tf.saved_model.load(str(Path(args.run) / "saved_model")).signatures[
        "serving_default"]
    embed_batch = inference_batch_size(*digits.shape[1:3])
    reference = in_process(serve, digits, embed_batch, min(args.seconds, 10))
    at_server_batch = in_process(serve, digits, args.max_batch_size, min(args.seconds, 10))

    print()
    print("| signature | clients | requests/s | p50 ms | p99 ms | errors | mean batch | "
          "server CPU ms/request |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['signature']} | {row['clients']} | {row['requests_per_s']:.0f} | "
              f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} | "
              f"{row['mean_batch']:.1f} | {row['server_cpu_ms']:.2f} |")
    print()
    best = max((r for r in rows if r["signature"] == "serving_default"),
               key=lambda r: r["clients"], default=None)
    growth = rss_after / rss_before - 1
    print(f"server RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
          f"({growth:+.1%}; target within +10%); exit code after SIGTERM: {code}")
    print(f"in-process serving_default: {reference:.0f} images/s at batch {embed_batch} "
          f"(embed's batch), {at_server_batch:.0f} images/s at batch {args.max_batch_size}")
    if best is not None:
        ratio = best["requests_per_s"] / reference
        print(f"served with {best['clients']} clients / in-process at batch {embed_batch}: "
              f"{ratio:.2f} (target >= 0.5); / in-process at batch {args.max_batch_size}: "
              f"{best['requests_per_s'] / at_server_batch:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    figures = {"rows": rows, "rss_mib_before": rss_before, "rss_mib_after": rss_after,
               "in_process_images_per_s": reference, "in_process_batch": embed_batch,
               "in_process_images_per_s_server_batch": at_server_batch,
               "server_exit_code": code}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    errors = sum(row["errors"] for row in rows)
    return 1 if errors or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
