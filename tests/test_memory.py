"""Cross-batch memory (--memory): the FIFO, masking of empty slots, mining against batch +
memory against brute-force enumeration (NumPy, float64), the model's training step, bad
options, and an exact resume of a run with a memory."""

import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (brute_contrastive, brute_triplet, run_cli, run_main,
                     stop_after_first_checkpoint)
from keras_siamese import mining
from keras_siamese.cross_batch_memory import LAYER_NAME, CrossBatchMemory, memory_model
from keras_siamese.losses import (OnlineContrastiveLoss, OnlineTripletLoss,
                                  online_contrastive_loss, online_triplet_loss)
from keras_siamese.pair_losses import MultiSimilarityLoss


def filled_memory(size, dim=2, warmup=0):
    memory = CrossBatchMemory(size, warmup)
    memory.build((None, dim))
    return memory


def test_memory_is_a_fifo_of_the_last_entries():
    memory = filled_memory(5)
    assert int(memory.filled()) == 0 and memory.contents()[1].tolist() == []
    for batch in ([0, 1, 2], [3, 4, 5], [6, 7]):
        memory.enqueue(np.array(batch, np.float32)[:, None] * [1.0, -1.0], batch)
    embeddings, labels = memory.contents()
    assert labels.tolist() == [3, 4, 5, 6, 7]  # oldest first; 0, 1, 2 went out first
    np.testing.assert_array_equal(embeddings[:, 0], [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(embeddings[:, 1], [-3, -4, -5, -6, -7])
    assert int(memory.count) == 8 and int(memory.filled()) == 5
    # Slot count % N is written next: 8 % 5 = 3, so entries 8, 9 replace 3, 4.
    memory.enqueue(np.ones((2, 2), np.float32), [8, 9])
    assert memory.contents()[1].tolist() == [5, 6, 7, 8, 9]
    assert memory.labels.numpy().tolist() == [5, 6, 7, 8, 9]  # ring order here too


def test_a_batch_larger_than_the_memory_keeps_its_last_entries():
    memory = filled_memory(3)
    memory.enqueue(np.arange(10, dtype=np.float32)[:, None] * [1.0, 1.0], np.arange(10))
    assert memory.contents()[1].tolist() == [7, 8, 9] and int(memory.count) == 10
    memory.enqueue(np.zeros((4, 2), np.float32), [20, 21, 22, 23])
    assert memory.contents()[1].tolist() == [21, 22, 23]


def test_warm_up_steps_write_nothing():
    memory = filled_memory(4, warmup=2)
    for step in range(3):
        memory.enqueue(np.full((2, 2), step, np.float32), [step, step])
    assert int(memory.steps) == 3
    assert memory.contents()[1].tolist() == [2, 2]  # steps 0 and 1 were the warm-up


def test_empty_slots_are_masked():
    memory = filled_memory(6)
    memory.enqueue(np.ones((2, 2), np.float32), [4, 5])
    refs = memory.references(np.zeros((3, 2), np.float32), [1, 2, 3])
    valid = refs.valid.numpy()
    assert valid.shape == (3, 3 + 6)
    np.testing.assert_array_equal(valid[:, :3], ~np.eye(3, dtype=bool))  # never itself
    np.testing.assert_array_equal(valid[:, 3:], np.tile([1, 1, 0, 0, 0, 0], (3, 1)) == 1)
    assert refs.labels.numpy().tolist() == [1, 2, 3, 4, 5, 0, 0, 0, 0]


# --- mining against batch + memory, against enumeration ---------------------------------


def memory_cases():
    rng = np.random.default_rng(0)
    # (name, batch labels, batch embeddings, memory slots, entries written, memory labels)
    yield "random, half filled", rng.integers(0, 3, 8), rng.normal(size=(8, 3)), 10, 5, \
        rng.integers(0, 3, 5)
    yield "wrapped around", rng.integers(0, 4, 12), rng.normal(size=(12, 2)), 6, 15, \
        rng.integers(0, 4, 15)
    # A class of the batch with one member: its positives come only from the memory.
    yield "positives only in memory", np.array([0, 1, 1, 2]), rng.normal(size=(4, 2)), 4, 3, \
        np.array([0, 0, 2])
    yield "empty memory", rng.integers(0, 3, 6), rng.normal(size=(6, 2)), 5, 0, \
        np.zeros(0, int)


MEMORY_CASES = list(memory_cases())


def with_memory(case):
    """The case's memory, filled by its writes, and its (labels, embeddings) entries."""
    _, labels, e, size, written, memory_labels = case
    memory = filled_memory(size, dim=e.shape[1])
    rng = np.random.default_rng(1)
    memory_e = rng.normal(size=(written, e.shape[1])).astype(np.float32)
    for start in range(0, written, 4):  # in batches of 4, wrapping around the ring
        memory.enqueue(memory_e[start:start + 4], memory_labels[start:start + 4])
    entries_e, entries_labels = memory.contents()
    np.testing.assert_array_equal(entries_labels, memory_labels[-size:])
    return memory, labels, e.astype(np.float32), entries_labels, entries_e


@pytest.mark.parametrize("rule", mining.TRIPLET_MINERS)
@pytest.mark.parametrize("case", MEMORY_CASES, ids=[c[0] for c in MEMORY_CASES])
def test_triplet_mining_against_memory_matches_enumeration(rule, case):
    memory, labels, e, memory_labels, memory_e = with_memory(case)
    got = float(online_triplet_loss(labels, e, 0.5, rule, memory.references(e, labels)))
    want = brute_triplet(labels, e, 0.5, rule, memory_labels, memory_e)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("case", MEMORY_CASES, ids=[c[0] for c in MEMORY_CASES])
def test_contrastive_mining_against_memory_matches_enumeration(case):
    memory, labels, e, memory_labels, memory_e = with_memory(case)
    got = float(online_contrastive_loss(labels, e, 2.0, memory.references(e, labels)))
    want = brute_contrastive(labels, e, 2.0, memory_labels, memory_e)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_an_empty_memory_changes_nothing():
    _, labels, e, *_ = MEMORY_CASES[0]
    e = e.astype(np.float32)
    refs = filled_memory(7, dim=3).references(e, labels)
    for rule in mining.TRIPLET_MINERS:
        assert float(online_triplet_loss(labels, e, 0.5, rule, refs)) == pytest.approx(
            float(online_triplet_loss(labels, e, 0.5, rule)), rel=1e-6)
    assert float(online_contrastive_loss(labels, e, 2.0, refs)) == pytest.approx(
        float(online_contrastive_loss(labels, e, 2.0)), rel=1e-6)


def test_gradients_reach_the_batch_only():
    memory, labels, e, *_ = with_memory(MEMORY_CASES[0])
    batch = tf.Variable(e)
    for loss in [lambda refs: online_contrastive_loss(labels, batch, 2.0, refs),
                 *[lambda refs, r=r: online_triplet_loss(labels, batch, 0.5, r, refs)
                   for r in mining.TRIPLET_MINERS]]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(memory.embeddings.value)
            value = loss(memory.references(batch, labels))
        assert np.isfinite(tape.gradient(value, batch).numpy()).all()
        assert tape.gradient(value, memory.embeddings.value) is None  # detached
    assert not memory.trainable_weights


# --- the model's training step --------------------------------------------------------


def tiny_memory_model(size, warmup, loss):
    keras.utils.set_random_seed(0)
    image = keras.Input((3,))
    embedding = keras.Model(image, keras.layers.Dense(2)(image), name="embedding")
    model = memory_model(embedding, size, warmup)
    model.compile(keras.optimizers.SGD(0.1), loss=loss)
    return model


def test_a_training_step_mines_against_the_memory_then_writes_the_batch(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 3)).astype(np.float32), np.array([0, 0, 1, 1, 2, 2])
    model = tiny_memory_model(8, 1, OnlineTripletLoss(0.5, "batch-hard"))
    memory = model.get_layer(LAYER_NAME)
    model.train_on_batch(x, y)  # the warm-up step: nothing written
    assert memory.contents()[1].tolist() == [] and int(memory.steps) == 1
    model.train_on_batch(x[::-1].copy(), y[::-1].copy())
    entries_e, entries_labels = memory.contents()
    assert entries_labels.tolist() == [2, 2, 1, 1, 0, 0]
    # The step's loss is the triplet loss against that memory, with the weights before it.
    e = model.get_layer("embedding")(x).numpy()
    want = brute_triplet(y, e, 0.5, "batch-hard", entries_labels, entries_e)
    assert float(model.train_on_batch(x, y)) == pytest.approx(want, rel=1e-4)
    assert memory.contents()[1].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]  # the last 8

    # Validation neither reads nor writes the memory: its loss is the batch-only one.
    before = memory.contents()
    e = model.get_layer("embedding")(x).numpy()
    assert float(model.evaluate(x, y, batch_size=6, verbose=0)) == pytest.approx(
        float(online_triplet_loss(y, e, 0.5, "batch-hard")), rel=1e-5)
    assert int(memory.count) == 12
    np.testing.assert_array_equal(memory.contents()[0], before[0])

    # The memory is part of the saved model: a reload continues with the same entries.
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert type(again) is type(model)
    restored = again.get_layer(LAYER_NAME)
    assert (restored.size, restored.warmup, int(restored.count), int(restored.steps)) == \
        (8, 1, 12, 3)
    for a, b in zip(restored.contents(), memory.contents()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.train_on_batch(x, y), again.train_on_batch(x, y))
    assert isinstance(again.loss, OnlineTripletLoss)


@pytest.mark.parametrize("loss", [OnlineContrastiveLoss(1.0), MultiSimilarityLoss()],
                         ids=["contrastive", "multi-similarity"])
def test_pair_losses_train_with_a_memory(loss):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 3)).astype(np.float32), np.repeat([0, 1, 2, 3], 2)
    model = tiny_memory_model(20, 0, loss)
    losses = [float(model.train_on_batch(x, y)) for _ in range(4)]
    assert all(np.isfinite(losses)) and int(model.get_layer(LAYER_NAME).filled()) == 20


# --- bad options ----------------------------------------------------------------------

ONLINE = ["--loss", "contrastive", "--mining", "hard-negative"]
BAD_OPTIONS = [
    (["--memory", "100"], "--memory applies only to online mining of pairs or triplets"),
    (["--memory", "100", "--loss", "softmax"], "not to --loss softmax --mining random"),
    (["--memory", "100", "--loss", "triplet"], "not to --loss triplet --mining random"),
    (["--memory", "100", "--loss", "vae"], "not to --loss vae --mining random"),
    (["--memory", "-1", *ONLINE], "--memory must be >= 0 (0: off), got -1"),
    (["--memory", "1000000", *ONLINE], "--memory must be <= 100000, got 1000000"),
    (["--memory", "10", "--memory-warmup", "-5", *ONLINE],
     "--memory-warmup must be >= 0, got -5"),
    (["--memory", "10", "--strategy", "mirrored", *ONLINE],
     "--memory keeps one memory on one device: it does not work with --strategy mirrored"),
    # These two need the data: still refused before any folder is made.
    (["--memory", "5000", "--limit", "1000", *ONLINE],
     "--memory 5000 is more than the 1000 training images"),
    (["--memory", "5000", "--loss", "triplet", "--mining", "batch-hard"],
     "at most --memory 234 with batches of 128"),
]


@pytest.mark.parametrize("args,message", BAD_OPTIONS,
                         ids=[" ".join(c[0])[:40] for c in BAD_OPTIONS])
def test_bad_memory_options_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, lines = run_main(capsys, "train", "--output-dir", tmp_path / "out", "--log-dir",
                           tmp_path / "logs", *args)
    assert code == 2, lines
    assert len(lines) == 1 and message in lines[0], lines
    # No run folder (a check that needs the data runs after the output roots exist).
    assert not [path for path in tmp_path.rglob("*") if path.is_file() or
                path.parent not in (tmp_path, tmp_path / "out", tmp_path / "logs")]


# --- exact resume ---------------------------------------------------------------------

EPOCHS = 3
# Batches of 100 keep the validation pass (10,000 test images) short.
MEMORY_ARGS = [*ONLINE, "--memory", "300", "--memory-warmup", "3", "--epochs", str(EPOCHS),
               "--limit", "1000", "--classes-per-batch", "10", "--images-per-class", "10",
               "--seed", "5", "--no-frames", "--no-projector", "--no-export"]


def test_a_killed_run_with_a_memory_resumes_bit_identically(tmp_path):
    import csv

    full = run_cli("train", *MEMORY_ARGS, "--output-dir", tmp_path / "out", "--log-dir",
                   tmp_path / "logs", "--run-name", "full")
    assert full.returncode == 0, full.stderr[-3000:]
    cut, code, _ = stop_after_first_checkpoint(tmp_path, signal.SIGKILL, MEMORY_ARGS)
    assert code == -signal.SIGKILL
    assert not (cut / "model.keras").exists()
    resumed = run_cli("train", "--resume", cut)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    import keras_siamese  # noqa: F401  (registers the memory's classes)

    models = [keras.models.load_model(run / "model.keras") for run in (tmp_path / "out" / "full",
                                                                       cut)]
    memories = [m.get_layer(LAYER_NAME) for m in models]
    # 1000 images in batches of 100: 10 steps an epoch, the first 3 write nothing.
    assert int(memories[0].count) == (EPOCHS * 10 - 3) * 100
    for a, b in zip(models[0].weights, models[1].weights):  # the memory's weights too
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    rows = [list(csv.DictReader(open(run / "history.csv")))
            for run in (tmp_path / "out" / "full", cut)]
    assert rows[0] == rows[1] and len(rows[1]) == EPOCHS  # every column, the monitor's too
