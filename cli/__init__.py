"""The ``siamese-keras`` command line, installed as ``keras_siamese.cli``."""
