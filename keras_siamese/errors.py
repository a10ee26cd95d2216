"""Exception types the library raises for problems a user can fix.

The library never exits or prints; the command line (``cli``) turns these into one
line on stderr and an exit code: 2 for a usage mistake, 1 for a runtime failure.
"""


class SiameseError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = 1


class ConfigError(SiameseError, ValueError):
    """An option has a value that cannot work (bad margin, unknown loss, existing run...).

    Also a ValueError, so code that checks arguments the Python way catches it too."""

    exit_code = 2


class DataError(SiameseError):
    """A dataset is missing, unreadable or fails its checksum."""


class OutputError(SiameseError):
    """An output folder cannot be created or written."""


class MissingDependencyError(SiameseError):
    """A program or package this feature needs (graphviz, pydot, chromium...) is not installed."""


class OutOfMemoryError(SiameseError):
    """Training needed more memory than the device has (too large a batch or images)."""


class CollapseError(SiameseError):
    """The embeddings collapsed into (nearly) one point and training stopped after
    ``epoch`` (see ``callbacks.CollapseMonitor``); a runtime failure, exit code 1."""

    def __init__(self, message: str, epoch: int = 0):
        super().__init__(message)
        self.epoch = epoch


class Interrupted(SiameseError):
    """Training was stopped by the user (Ctrl-C); finished epochs are checkpointed."""

    exit_code = 130
