import numpy as np
import pytest

from keras_siamese import streams
from keras_siamese.errors import DataError


@pytest.fixture(scope="module")
def labels():
    # Unbalanced classes, non-contiguous label values, one small class of 2.
    rng = np.random.default_rng(0)
    values = np.concatenate([np.full(n, c) for c, n in [(0, 300), (3, 50), (7, 2), (9, 148)]])
    return rng.permutation(values)


def as_numpy(sample):
    return [np.asarray(t) for t in sample]


def test_pair_labels_equal_class_equality_and_are_balanced(labels):
    index = streams.class_index(labels)
    first, second, same = as_numpy(streams.sample_pairs(index, seed=1, epoch=0))
    np.testing.assert_array_equal(same, (labels[first] == labels[second]).astype(np.float32))
    assert same.sum() == len(labels) // 2
    assert not np.any(first == second)  # a positive partner is never the anchor itself
    assert sorted(first) == list(range(len(labels)))  # every image is an anchor once


def test_negatives_cover_every_other_class(labels):
    index = streams.class_index(labels)
    first, second, same = as_numpy(streams.sample_pairs(index, seed=2, epoch=0))
    negative_classes = set(labels[second[same == 0]])
    assert negative_classes == {0, 3, 7, 9}


def test_triplets(labels):
    index = streams.class_index(labels)
    anchor, positive, negative = as_numpy(streams.sample_triplets(index, seed=1, epoch=0))
    assert np.all(labels[anchor] == labels[positive])
    assert np.all(labels[anchor] != labels[negative])
    assert not np.any(anchor == positive)


def test_determinism_by_seed_and_fresh_pairs_each_epoch(labels):
    index = streams.class_index(labels)
    a = as_numpy(streams.sample_pairs(index, seed=5, epoch=3))
    b = as_numpy(streams.sample_pairs(index, seed=5, epoch=3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    other_epoch = as_numpy(streams.sample_pairs(index, seed=5, epoch=4))
    other_seed = as_numpy(streams.sample_pairs(index, seed=6, epoch=3))
    assert not np.array_equal(a[1], other_epoch[1])
    assert not np.array_equal(a[1], other_seed[1])


def test_pair_stream_epochs_and_batches(labels):
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)  # pixel = index % 256
    images = np.broadcast_to(images, (len(labels), 2, 2, 1)).copy()
    steps = streams.steps_per_epoch(len(labels), 64)
    assert steps == 8
    batches = list(streams.pair_stream(images, labels, 64, seed=0).take(2 * steps))
    sizes = [int(y.shape[0]) for _, y in batches]
    assert sizes == [64] * 7 + [52] + [64] * 7 + [52]  # batched within each epoch
    (x1, x2), y = batches[0]
    assert x1.dtype.name == "float32" and x1.shape == (64, 2, 2, 1)
    # The stream's first epoch is sample_pairs(seed, epoch 0), gathered.
    first, second, same = as_numpy(streams.sample_pairs(streams.class_index(labels), 0, 0))
    np.testing.assert_array_equal(np.asarray(x2)[:, 0, 0, 0], second[:64] % 256)
    np.testing.assert_array_equal(np.asarray(y), same[:64])
    epoch1 = np.concatenate([np.asarray(y) for _, y in batches[steps:]])
    assert epoch1.sum() == len(labels) // 2


def test_resume_starts_at_the_requested_epoch(labels):
    images = np.zeros((len(labels), 2, 2, 1), np.uint8)
    steps = streams.steps_per_epoch(len(labels), 100)
    full = list(streams.triplet_stream(images, labels, 100, seed=4).take(2 * steps))
    resumed = list(streams.triplet_stream(images, labels, 100, seed=4, start_epoch=1).take(1))
    np.testing.assert_array_equal(np.asarray(full[steps][0][0]), np.asarray(resumed[0][0][0]))


def test_evaluation_pairs_are_fixed_whatever_the_training_seed(labels):
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
    first = [np.asarray(y) for _, y in streams.evaluation_pairs(images, labels, 128)]
    again = [np.asarray(y) for _, y in streams.evaluation_pairs(images, labels, 128)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert sum(len(a) for a in first) == len(labels)


def test_image_stream_shuffles_every_image_once_per_epoch(labels):
    images = np.zeros((len(labels), 1, 1, 1), np.uint8)
    steps = streams.steps_per_epoch(len(labels), 128)
    got = np.concatenate([np.asarray(y) for _, y in
                          streams.image_stream(images, labels, 128, seed=0).take(steps)])
    assert sorted(got) == sorted(labels) and not np.array_equal(got, labels)


def test_a_class_with_one_example_is_rejected():
    with pytest.raises(DataError, match="single example"):
        streams.class_index(np.array([0, 0, 1]))
    with pytest.raises(DataError, match="at least 2 classes"):
        streams.class_index(np.array([4, 4, 4]))


def test_pk_batches_hold_p_distinct_classes_of_k_distinct_images(labels):
    index = streams.class_index(labels)
    p, k, steps = 3, 2, 40
    flat = streams.sample_pk_batches(index, p, k, steps, seed=1, epoch=0).numpy()
    assert flat.shape == (steps * p * k,)
    seen_classes = set()
    for batch in flat.reshape(steps, p, k):
        batch_labels = labels[batch]
        assert len(set(batch_labels[:, 0])) == p  # P distinct classes
        assert np.all(batch_labels == batch_labels[:, :1])  # K images of that class
        assert all(len(set(row)) == k for row in batch)  # distinct images
        seen_classes |= set(batch_labels[:, 0])
    assert seen_classes == {0, 3, 7, 9}  # the class of 2 images is drawn too
    again = streams.sample_pk_batches(index, p, k, steps, seed=1, epoch=0).numpy()
    np.testing.assert_array_equal(flat, again)  # repeatable
    later = streams.sample_pk_batches(index, p, k, steps, seed=1, epoch=1).numpy()
    assert not np.array_equal(flat, later)  # re-sampled every epoch


def test_pk_stream_batches_images_with_their_labels(mnist):
    x, y = mnist.x_train[:2000], mnist.y_train[:2000]
    stream = streams.pk_stream(x, y, classes_per_batch=4, images_per_class=8, seed=0)
    for images, batch_labels in stream.take(3):
        assert images.shape == (32, 28, 28, 1) and images.dtype.name == "float32"
        counts = np.unique(batch_labels.numpy(), return_counts=True)[1]
        assert counts.tolist() == [8, 8, 8, 8]
        # Each image is the training image its label says it is.
        assert any(np.array_equal(images[0].numpy(), x[i]) for i in np.flatnonzero(
            y == batch_labels[0].numpy()))
    fixed = [b[1].numpy() for b in streams.evaluation_pk_batches(x, y, 4, 8)]
    assert len(fixed) == streams.steps_per_epoch(2000, 32)
    np.testing.assert_array_equal(
        np.concatenate(fixed),
        np.concatenate([b[1].numpy() for b in streams.evaluation_pk_batches(x, y, 4, 8)]))


def test_pk_stream_needs_p_classes_and_k_images(labels):
    from keras_siamese.errors import ConfigError

    with pytest.raises(ConfigError, match="--classes-per-batch 5: only 4 classes"):
        streams.check_pk(labels, 5, 2)
    with pytest.raises(ConfigError, match="--images-per-class 3: the smallest class has only 2"):
        streams.check_pk(labels, 2, 3)
