"""User-facing errors.

Anything a user can cause (a bad option, a damaged file, a corpus that is too short) raises :class:`GcnnError`
with a message that names the option, file or line at fault. The command line prints the message and exits with
a non-zero status instead of a traceback.
"""


class GcnnError(Exception):
    """An error caused by the user's input, reported without a traceback by the command line."""


class ConfigError(GcnnError, ValueError):
    """A configuration key that does not exist, or a value of the wrong type or range."""


class DataError(GcnnError):
    """A corpus, vocabulary or prepared-data folder that cannot be used."""


class CheckpointError(GcnnError):
    """A checkpoint or model folder that is missing, damaged or does not match."""
