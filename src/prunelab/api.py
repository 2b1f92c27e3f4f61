"""The one-call functional API."""

from __future__ import annotations

from torch import nn

from prunelab import methods
from prunelab.errors import MethodError
from prunelab.core.masks import Masks


def prune(model: nn.Module, method: str = "magnitude", sparsity: float = 0.5, masks: Masks | None = None,
          calib=None, **hparams) -> Masks:
    """Prune ``model`` in place with a one-shot method and return the masks.

    Args:
        model: a trained network.
        method: a registered one-shot method (a name in ``prunelab.methods.registry.list()`` whose
            class has ``family == "oneshot"``).
        sparsity: fraction of the prunable weights pruned afterwards, in [0, 1).
        masks: current masks; new prunes come from the survivors.
        calib: calibration data (a ``Split``) for data-aware methods (FeTa, Net-Trim, L-OBS).
        **hparams: the method's hyperparameters, e.g. ``scope="layer"``.

    Returns:
        The new :class:`Masks`, already applied to ``model``.

    Example:
        >>> masks = prunelab.prune(model, "magnitude", sparsity=0.9, scope="global")
    """
    cls = methods.get(method)
    if cls.family != "oneshot":
        raise MethodError(
            f"method {method!r} is a {cls.family} method: it trains, so run it with "
            f"`prunelab bench` or its own API instead of prune()"
        )
    return cls(**hparams).prune(model, masks, sparsity, calib)
