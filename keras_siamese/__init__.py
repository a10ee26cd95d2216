"""keras-siamese: Siamese, triplet and softmax-embedding networks in Keras 3 / TensorFlow.

Importing the package registers its layers and losses, so saved ``.keras`` models reload
with ``keras.models.load_model`` without ``custom_objects``.
"""

import os
import signal
import sys

# TensorFlow's C++ info lines drown the progress bar; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _interrupted_while_loading(signum, frame):
    from keras_siamese.native_logs import write_to_terminal

    write_to_terminal("siamese-keras: interrupted\n")
    os._exit(130)


if os.path.basename(sys.argv[0]) == "siamese-keras":
    # The command line imports this package (and TensorFlow, seconds) before its own code
    # runs: Ctrl-C or SIGTERM meanwhile ends it with one line, not an import traceback.
    # Nothing is written yet; cli.main installs the handlers that clean up once it is.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_loading)
    signal.signal(signal.SIGTERM, _interrupted_while_loading)

from keras_siamese.native_logs import quiet_native_startup

with quiet_native_startup():  # TensorFlow's start-up INFO lines, see native_logs
    from keras_siamese import (  # noqa: F401  (registers serialisable classes)
        cross_batch_memory, layers, losses, pair_losses, proxy_losses)
    import tensorflow as _tf

    _tf.config.list_physical_devices("GPU")  # looks for a GPU now: a CPU-only machine logs here
from keras_siamese.config import TrainConfig
from keras_siamese.data import load_dataset
from keras_siamese.errors import ConfigError, DataError, OutputError, SiameseError
from keras_siamese.index import Index

__version__ = "0.1.0"
__all__ = ["TrainConfig", "load_dataset", "Index", "ConfigError", "DataError", "OutputError",
           "SiameseError", "__version__"]
