"""The error contract. Each message says what is wrong, where, and how to fix it.

`tunesmith.cli.main` enforces it in one place:
    TunesmithError (and its subclasses)  -> `error: <one line>`, exit code 2
    QualityGateError                     -> `failed: <one line>`, exit code 1 (results are written)
    Ctrl-C / SIGTERM                     -> `interrupted: ...`, exit code 130 (run dir as it was)
    anything else (a bug in tunesmith)   -> one line naming a bug report, exit code 3; the
                                            traceback only with --debug (or TUNESMITH_DEBUG=1)
"""


class TunesmithError(Exception):
    """A mistake in the user's input that they can fix; the message says how."""


class ConfigError(TunesmithError):
    """The recipe, a command-line override, or a run directory does not fit what was asked."""


class DataError(TunesmithError):
    """A data file cannot be read or has invalid rows."""


class ModelError(TunesmithError):
    """A model or tokenizer cannot be found or loaded safely."""


class QualityGateError(TunesmithError):
    """A result crossed a threshold the recipe set to fail the run (e.g. a bias gap).
    The results are written before it is raised; the CLI exits with code 1."""
