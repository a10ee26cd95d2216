"""The library's exception types."""

import pytest

from keras_siamese.errors import ConfigError, DataError, SiameseError


def test_config_error_is_also_a_value_error():
    error = ConfigError("margin must be > 0")
    assert isinstance(error, SiameseError) and isinstance(error, ValueError)
    assert error.exit_code == 2 and str(error) == "margin must be > 0"
    with pytest.raises(ValueError, match="margin must be > 0"):
        raise error
    # The command line catches SiameseError: a ConfigError still takes that path.
    try:
        raise ConfigError("bad")
    except SiameseError as caught:
        assert caught.exit_code == 2
    assert not issubclass(DataError, ValueError)  # only ConfigError is an argument error


def test_a_bad_setting_is_a_value_error():
    from keras_siamese.config import TrainConfig

    with pytest.raises(ValueError, match="unknown loss"):
        TrainConfig(loss="hinge")
