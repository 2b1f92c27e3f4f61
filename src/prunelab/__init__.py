"""prunelab: pruning deep neural networks under one mask model and one evaluation protocol.

Example:
    >>> import prunelab
    >>> data = prunelab.data.load("fashion-mnist")
    >>> model = prunelab.models.create("lenet-300-100", data.in_shape, data.num_classes)
    >>> prunelab.train(model, data, prunelab.TrainConfig(epochs=5, optimizer="adam", lr=1e-3))
    >>> masks = prunelab.prune(model, "magnitude", sparsity=0.9)
    >>> prunelab.train(model, data, prunelab.TrainConfig(epochs=2, optimizer="adam", lr=1e-3), masks=masks)
    >>> prunelab.evaluate(model, data.test)["top1"]
"""

from __future__ import annotations

from prunelab.utils.version import __version__

from prunelab import errors
from prunelab.core import masks, metrics
from prunelab.errors import PrunelabError
from prunelab.core.masks import Masks, prunable_parameters
from prunelab.core.prunable import CoverageWarning, PrunableRule
from prunelab.training.loop import Callback, TrainConfig, evaluate, train
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab import data, models, methods, export  # noqa: E402
from prunelab.api import prune  # noqa: E402
from prunelab import reproductions  # noqa: E402,F401  (the papers' suites register themselves)

__all__ = [
    "PrunelabError", "Masks", "PrunableRule", "CoverageWarning", "prunable_parameters", "TrainConfig", "Callback", "train", "evaluate",
    "prune", "save_checkpoint", "load_checkpoint", "data", "models", "methods", "metrics", "masks",
    "errors", "export", "__version__",
]
