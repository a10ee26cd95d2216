"""Training on several devices or machines with TensorFlow's own ``tf.distribute``.

``--strategy``:

- ``default``: one device, no distribution;
- ``mirrored``: ``MirroredStrategy`` over this machine's GPUs, or its CPU split into
  ``KERAS_SIAMESE_CPU_DEVICES`` logical devices (how the tests run it without GPUs);
- ``multi-worker``: ``MultiWorkerMirroredStrategy`` across processes or machines, each
  started with the same command and its own ``TF_CONFIG`` (cluster and task).

``--batch-size`` is the global batch: Keras splits every batch across the replicas and
averages their gradients, so the same seed trains the same model up to the order of
floating-point sums. Only the chief (task ``chief``, else ``worker`` 0) writes outputs.

Keras 3's ``fit`` has two bugs under ``tf.distribute`` (keras-team/keras#20585,
tensorflow/tensorflow#72388), mended by :func:`_mend_keras_distributed_fit` under these
strategies only.
"""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from keras_siamese.errors import ConfigError

log = logging.getLogger(__name__)

CPU_DEVICES_ENV = "KERAS_SIAMESE_CPU_DEVICES"


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy ``--strategy name`` stands for. Call it before any
    other TensorFlow work: devices and collective ops are fixed when the runtime starts."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        _split_cpu(int(os.environ.get(CPU_DEVICES_ENV, "1")))
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
            [d.name for d in tf.config.list_logical_devices("CPU")]
        log.info("mirrored strategy over %s", ", ".join(devices))
        strategy = tf.distribute.MirroredStrategy(devices)
        _mend_keras_distributed_fit()
        return strategy
    task = _task()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _mend_keras_distributed_fit()
    log.info("multi-worker strategy: %s %d of %d replicas", task.get("type"),
             task.get("index", 0), strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except in a multi-worker cluster,
    where only the chief does (task ``chief``, or ``worker`` 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` split between workers by element: our streams are built in memory, so
    there are no files to split (TF would try, warn and fall back to this)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _split_cpu(count: int) -> None:
    if count < 1:
        raise ConfigError(f"{CPU_DEVICES_ENV}={count}: give a number of devices >= 1")
    if count == 1:
        return
    (cpu,) = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # the runtime has started: only the first split can apply
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise ConfigError(f"{CPU_DEVICES_ENV}={count} came after TensorFlow had "
                              "started; set it before the process starts") from error


def _task() -> dict:
    """This process's ``TF_CONFIG`` task; ConfigError when it is missing or malformed."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError("--strategy multi-worker needs TF_CONFIG: the cluster's workers "
                          "and this process's task (see the README, 'Distributed training')")
    try:
        settings = json.loads(raw)
        task, cluster = settings["task"], settings["cluster"]
        if task["type"] not in cluster or not 0 <= int(task.get("index", 0)) < \
                len(cluster[task["type"]]):
            raise KeyError("task")
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is not a cluster with this process's task in it "
                          f"({error}): see the README, 'Distributed training'") from error
    return task


def _mend_keras_distributed_fit() -> None:
    """Keras 3's TensorFlow trainer fails under ``tf.distribute``:

    1. ``_maybe_symbolic_build`` averages the first batch across replicas to learn its
       shapes. Under multi-worker, collective ops reject that nested ``strategy.reduce``
       (``ValueError: Attempt to convert a value (PerReplica...)``); under ``mirrored``
       it fails whenever the first validation batch splits unevenly (15 images on two
       replicas: ``AddN ... [8,32,32,1] != [7,32,32,1]``). Any one replica's batch has
       the shapes.
    2. Multi-worker only: ``reduce_per_replica`` averages each step's scalar loss and
       metrics with ``strategy.reduce("MEAN", v, axis=0)``, which fails on 0-d values ("Invalid
       reduction dimension 0"). ``axis=None`` is the mean across replicas that the
       single-worker path computes.

    Applied to Keras 3 on TensorFlow only, and only while those internals are there."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    major = int(keras.__version__.split(".")[0])
    if major != 3 or keras.config.backend() != "tensorflow" or getattr(
            trainer, "_keras_siamese_mended", False):
        return
    if not all(hasattr(trainer, name) for name in
               ("reduce_per_replica", "_collective_all_reduce_multi_worker")) or \
            not hasattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build"):
        log.warning("Keras %s's trainer has changed: distributed fit runs unmended",
                    keras.__version__)
        return
    original_reduce = trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica  # a module global, read when tracing
    trainer._keras_siamese_mended = True
