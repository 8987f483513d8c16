"""Errors a user can fix. Each message says what is wrong, where, and how to fix it.

The CLI prints these as one line (or a short list) and exits with code 2; anything else
is a bug in tunesmith and keeps its traceback.
"""


class TunesmithError(Exception):
    """A mistake in the user's input that they can fix; the message says how."""


class ConfigError(TunesmithError):
    """The recipe or a command-line override is invalid."""


class DataError(TunesmithError):
    """A data file cannot be read or has invalid rows."""


class ModelError(TunesmithError):
    """A model or tokenizer cannot be found or loaded safely."""


class QualityGateError(TunesmithError):
    """A result crossed a threshold the recipe set to fail the run (e.g. a bias gap).
    The results are written before it is raised; the CLI exits with code 1."""
