"""The examples in the docstrings of the metric code run and print what they show."""

import doctest
import importlib

import pytest

MODULES = ["keras_siamese.losses", "keras_siamese.pair_losses", "keras_siamese.proxy_losses",
           "keras_siamese.metrics", "keras_siamese.neighbours", "keras_siamese.calibration",
           "keras_siamese.cross_batch_memory", "keras_siamese.callbacks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    # doctest prints each failing example (expected and got) to the captured output.
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no docstring examples: nothing was checked"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} fail"
