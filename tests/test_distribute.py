"""tf.distribute: ``mirrored`` on two logical CPU devices trains like one device; two
``multi-worker`` processes on 127.0.0.1 end with identical weights, only the chief writes
outputs, and a killed cluster resumes to the uninterrupted cluster's weights."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import run_cli
from keras_siamese.checkpoint import HOLD_AFTER_EPOCH

TIMEOUT = 300  # seconds a cluster may take before its processes are killed

# One worker process: train (or resume) as configured, then save the final weights, which
# a worker that is not the chief writes nowhere else.
WORKER = """
import json, sys
import numpy as np
from keras_siamese import experiment, run_folder
from keras_siamese.config import TrainConfig
settings, weights = json.loads(sys.argv[1]), sys.argv[2]
resume = settings.pop("resume", None)
config = run_folder.read_config(resume)[0] if resume else TrainConfig(**settings)
result = experiment.run(config, resume=bool(resume))
np.savez(weights, *result.model.get_weights())
print("chief" if result.chief else "worker", flush=True)
"""

CLUSTER_SETTINGS = dict(epochs=3, limit=3000, batch_size=64, seed=5, strategy="multi-worker",
                        frame_images=100)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_cluster(tmp_path, tag, settings_of, env=None):
    """Two worker processes on 127.0.0.1, ``settings_of(index)`` each, with ``env`` added
    to their environment; returns them with the files their final weights go to."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        worker_env = {**os.environ, "TF_CONFIG": json.dumps(tf_config),
                      "KERAS_SIAMESE_OFFLINE": "1", **(env or {})}
        weights = tmp_path / f"{tag}_weights_{index}.npz"
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(settings_of(index)), str(weights)],
            env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        workers.append((process, weights))
    return workers


def finish(workers, timeout=TIMEOUT):
    """Wait for every worker (killing all by PID after ``timeout``); their stdout."""
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for process, _ in workers:
            out, err = process.communicate(timeout=max(1, deadline - time.monotonic()))
            assert process.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        stop(workers)
    return outputs


def stop(workers):
    for process, _ in workers:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def load_weights(path):
    with np.load(path) as stored:
        return [stored[f"arr_{i}"] for i in range(len(stored.files))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """An uninterrupted two-worker run, each worker with its own output folders (as on
    two machines without a shared disk)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    workers = start_cluster(tmp_path, "full", lambda i: dict(
        CLUSTER_SETTINGS, output_dir=str(tmp_path / f"out{i}"),
        log_dir=str(tmp_path / f"logs{i}")))
    return tmp_path, finish(workers), [load_weights(w) for _, w in workers]


def test_two_workers_end_with_identical_weights(cluster):
    _, outputs, (chief, worker) = cluster
    assert [out.split()[-1] for out in outputs] == ["chief", "worker"]
    assert len(chief) == len(worker) > 0
    for a, b in zip(chief, worker):
        np.testing.assert_array_equal(a, b)


def test_only_the_chief_writes(cluster):
    tmp_path, _, (chief, _) = cluster
    run = tmp_path / "out0" / "contrastive_mnist"
    for name in ("config.json", "history.csv", "metrics.json", "model.keras", "latent.gif",
                 "embedding.png", "saved_model/saved_model.pb"):
        assert (run / name).exists(), name
    assert (tmp_path / "logs0" / "contrastive_mnist" / "projector").is_dir()
    assert not (tmp_path / "out1").exists() and not (tmp_path / "logs1").exists()
    with open(run / "history.csv") as stream:
        assert len(list(csv.DictReader(stream))) == CLUSTER_SETTINGS["epochs"]
    import keras

    import keras_siamese  # noqa: F401

    saved = keras.models.load_model(run / "model.keras").get_weights()
    for a, b in zip(saved, chief):
        np.testing.assert_array_equal(a, b)


def test_a_killed_cluster_resumes_to_the_same_weights(cluster, tmp_path):
    """Both workers share one output folder (as on a shared disk); both are killed once
    the chief has checkpointed epoch 1, then resumed with the run folder."""
    _, _, (reference, _) = cluster
    shared = dict(CLUSTER_SETTINGS, output_dir=str(tmp_path / "out"),
                  log_dir=str(tmp_path / "logs"))
    # The chief holds after epoch 1's checkpoint, so the kill comes before epoch 2 ends
    # however slowly this test polls.
    workers = start_cluster(tmp_path, "cut", lambda i: shared, env={HOLD_AFTER_EPOCH: "1"})
    checkpoints = tmp_path / "out" / "contrastive_mnist" / "checkpoints"
    deadline = time.monotonic() + TIMEOUT
    try:
        while not any(checkpoints.glob("epoch_*.keras")):
            assert all(p.poll() is None for p, _ in workers), "a worker ended too early"
            assert time.monotonic() < deadline, f"no checkpoint within {TIMEOUT} s"
            time.sleep(0.02)
        for process, _ in workers:
            process.send_signal(signal.SIGKILL)
    finally:
        stop(workers)
    assert not (tmp_path / "out" / "contrastive_mnist" / "metrics.json").exists()

    run_folder = str(tmp_path / "out" / "contrastive_mnist")
    workers = start_cluster(tmp_path, "resumed", lambda i: {"resume": run_folder})
    finish(workers)
    resumed = [load_weights(w) for _, w in workers]
    for a, b, c in zip(*resumed, reference):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_mirrored_on_two_cpu_devices_matches_one_device(tmp_path):
    """One epoch of 4 steps: the mirrored run's loss is the single-device loss within a
    relative 1e-5: only the order of floating-point sums differs. (Adam amplifies that
    difference as training goes on: about 5e-7 after 4 steps, 2e-4 after 16 measured.)"""
    args = ["--epochs", "1", "--limit", "256", "--batch-size", "64", "--no-frames",
            "--no-projector", "--no-export", "--output-dir", tmp_path / "out", "--log-dir",
            tmp_path / "logs"]
    env = {"KERAS_SIAMESE_CPU_DEVICES": "2"}
    one = run_cli("train", *args, "--run-name", "one", env=env)
    two = run_cli("train", *args, "--run-name", "two", "--strategy", "mirrored", env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "mirrored strategy over /device:CPU:0, /device:CPU:1" in two.stderr

    def history(name):
        with open(tmp_path / "out" / name / "history.csv") as stream:
            (row,) = csv.DictReader(stream)
        return float(row["loss"]), float(row["val_loss"])

    np.testing.assert_allclose(history("two"), history("one"), rtol=1e-5)


@pytest.mark.parametrize("tf_config,message", [
    (None, "--strategy multi-worker needs TF_CONFIG"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG is not a cluster with this process's task in it"),
])
def test_multi_worker_without_a_cluster_is_a_usage_error(tmp_path, tf_config, message):
    env = {"TF_CONFIG": tf_config} if tf_config else {}
    result = run_cli("train", "--strategy", "multi-worker", "--output-dir", tmp_path,
                     env=env, unset=() if tf_config else ("TF_CONFIG",))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


# Both replicas of a two-CPU MirroredStrategy get the same batch; each loss they compute is
# divided by the 2 replicas (their gradients are summed), so the two add up to one batch's.
REPLICA_LOSSES = """
import json
import numpy as np, tensorflow as tf
from keras_siamese import distribute
from keras_siamese.losses import (ContrastiveLoss, OnlineContrastiveLoss, OnlineTripletLoss)
strategy = distribute.make_strategy("mirrored")
rng = np.random.default_rng(0)
labels = tf.constant(rng.integers(0, 3, 24))
embeddings = tf.constant(rng.normal(size=(24, 2)), tf.float32)
out = {}
for loss in [OnlineTripletLoss(1.0, "batch-all"), OnlineTripletLoss(1.0, "semi-hard"),
             OnlineContrastiveLoss(1.0), ContrastiveLoss(1.0)]:
    y = tf.cast(labels % 2, tf.float32) if isinstance(loss, ContrastiveLoss) else labels
    x = tf.norm(embeddings, axis=1, keepdims=True) if isinstance(loss, ContrastiveLoss) \\
        else embeddings
    single = float(loss(y, x))
    per_replica = strategy.run(lambda: loss(y, x))
    out[loss.name + getattr(loss, "mining_rule", "")] = (
        single, [float(v) for v in strategy.experimental_local_results(per_replica)])
print(json.dumps(out))
"""


def test_every_loss_is_scaled_for_the_replicas():
    result = subprocess.run([sys.executable, "-c", REPLICA_LOSSES], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "KERAS_SIAMESE_CPU_DEVICES": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (single, replicas) in json.loads(result.stdout).items():
        assert len(replicas) == 2, name
        np.testing.assert_allclose(replicas, [single / 2] * 2, rtol=1e-6, err_msg=name)
