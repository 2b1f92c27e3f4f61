"""Error types. Every error a user can cause is a :class:`PrunelabError`.

The CLI prints ``str(error)`` on one line and exits with status 2, so a message must say what
was wrong and what to do about it.
"""


class PrunelabError(Exception):
    """Base class of every error prunelab raises on bad input."""


class ConfigError(PrunelabError, ValueError):
    """An argument, hyperparameter, spec or suite is invalid."""


class DataError(PrunelabError):
    """A data set is missing, truncated or corrupt."""


class ModelError(PrunelabError):
    """An unknown model, or a model that does not fit the input shape."""


class MaskError(PrunelabError):
    """Masks that do not match a model (names or shapes)."""


class CheckpointError(PrunelabError):
    """A checkpoint is missing, damaged, or does not fit the model."""


class MethodError(PrunelabError):
    """An unknown pruning method, or a method given inputs it cannot use."""
