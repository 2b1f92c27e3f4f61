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


class StorageError(PrunelabError, OSError):
    """A file or the result store cannot be written (disk full, no permission, read-only file
    system); what was there before is unchanged. Also an ``OSError``, with the ``errno`` of the
    failure when one is known."""


class DivergenceError(ConfigError):
    """Training diverged (a non-finite loss, or one far above where it started): the recipe
    (usually the learning rate) does not suit the model; nothing from the run is saved."""
