import os
from pathlib import Path

# Tests never reach for the network: the TFDS download source stays off.
os.environ["KERAS_SIAMESE_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from keras_siamese.data import load_dataset  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="session")
def fashion_mnist():
    return load_dataset("fashion_mnist")


# The test modules that take longest, longest first, as `python -m pytest --durations=0`
# measured them (2 cores). `--dist loadfile` hands each worker one module at a time in
# collection order (`--no-loadscope-reorder` in setup.cfg keeps this order; xdist would
# otherwise sort modules by their number of tests), so a long module started last would
# run alone at the end while the other worker idles. Unlisted modules follow, by name.
SLOWEST_FIRST = [
    "test_hostile_runs", "test_training", "test_index", "test_distribute", "test_resume",
    "test_streaming", "test_evaluation", "test_export", "test_precision", "test_reproduce",
    "test_hostile_images", "test_own_data", "test_loss_runs", "test_latent", "test_memory",
    "test_export_formats", "test_collapse", "test_projector", "test_serve", "test_vae",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.nodeid.split("::")[0]).stem, len(rank)))
