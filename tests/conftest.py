import os

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
