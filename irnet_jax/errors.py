"""The exceptions that mean "the user asked for something impossible", not "irnet_jax has a bug".

Every command line (``irnet_jax.cli``) prints a ``UserError`` as one line and exits with status 2,
before anything on disk is changed; any other exception keeps its traceback.
"""


class UserError(Exception):
    """A bad value, path or file given by the user; the message names it and what is allowed."""


class ConfigError(UserError, ValueError):
    """A config field holds a value that is not allowed."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving the diverged state."""
