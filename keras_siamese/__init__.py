"""keras-siamese: Siamese, triplet and softmax-embedding networks in Keras 3 / TensorFlow.

Importing the package registers its layers and losses, so saved ``.keras`` models reload
with ``keras.models.load_model`` without ``custom_objects``.
"""

import os

# TensorFlow's C++ info lines drown the progress bar; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_siamese import layers, losses  # noqa: F401  (registers serialisable classes)
from keras_siamese.config import TrainConfig
from keras_siamese.data import load_dataset
from keras_siamese.errors import ConfigError, DataError, OutputError, SiameseError

__version__ = "0.1.0"
__all__ = ["TrainConfig", "load_dataset", "ConfigError", "DataError", "OutputError",
           "SiameseError", "__version__"]
