"""The one-call functional API."""

from __future__ import annotations

from torch import nn

from prunelab import methods
from prunelab.core.masks import Masks
from prunelab.core.prunable import PrunableRule, warn_left_out
from prunelab.errors import MethodError
from prunelab.training.batches import as_calibration


def prune(model: nn.Module, method: str = "magnitude", sparsity: float = 0.5, masks: Masks | None = None,
          calib=None, *, rule: PrunableRule | None = None, forward_fn=None, device=None, **hparams) -> Masks:
    """Prune ``model`` in place with a one-shot method and return the masks.

    Works on any PyTorch model: prunelab's own, HuggingFace transformers (GPT-2's ``Conv1D``
    layers; a tied output layer counts as the embedding it shares), ``nn.MultiheadAttention``
    and models wrapped by ``torch.compile`` or ``DistributedDataParallel`` (masks are keyed by
    the unwrapped model's parameter names). Weight matrices the rule leaves dense are reported
    once as a :class:`prunelab.core.prunable.CoverageWarning`.

    Args:
        model: a trained network (or its ``torch.compile``/DDP wrapper).
        method: a registered one-shot method (a name in ``prunelab.methods.registry.list()`` whose
            class has ``family == "oneshot"``).
        sparsity: fraction of the prunable weights pruned afterwards, in [0, 1).
        masks: current masks; new prunes come from the survivors.
        calib: calibration data for data-aware methods (FeTa, Net-Trim, L-OBS): a ``Split``, a
            tensor of inputs, an ``(x, y)`` pair, a ``TensorDataset``, a ``DataLoader`` or any
            iterable of batches (see :func:`prunelab.training.batches.as_calibration`).
        rule: which weights are prunable (:class:`prunelab.PrunableRule`); builds the starting
            masks (``Masks.ones(model, rule)``) when ``masks`` is None. Default: the weights of
            Linear, Conv, HuggingFace ``Conv1D`` and ``nn.MultiheadAttention`` layers.
        forward_fn: ``forward_fn(model, batch)``, the same function ``train`` takes: it gets the
            calibration data's batches as they come (in-memory tensors: chunks of the inputs);
            default ``model(x)`` for an ``(x, y)`` batch, ``model(**batch)`` for a dict.
        device: move ``model`` there first (None: leave it where it is); the masks are built on
            the model's device.
        **hparams: the method's hyperparameters, e.g. ``scope="layer"``.

    Returns:
        The new :class:`Masks`, already applied to ``model``.

    Raises:
        MethodError: an unknown method, or one that trains (not one-shot).
        MaskError: a rule excluding a name that is not a prunable layer, or masks that do not fit.

    Example:
        >>> masks = prunelab.prune(model, "magnitude", sparsity=0.9, scope="global")
        >>> masks = prunelab.prune(gpt2, "magnitude", sparsity=0.5,
        ...                        rule=prunelab.PrunableRule(embeddings=True))
    """
    cls = methods.get(method)
    if cls.family != "oneshot":
        raise MethodError(
            f"method {method!r} is a {cls.family} method: it trains, so run it with "
            f"`prunelab bench` or its own API instead of prune()"
        )
    pruner = cls(**hparams)
    if device is not None:
        model.to(device)
    if masks is None and rule is not None:
        masks = Masks.ones(model, rule)
    if calib is not None:
        calib = as_calibration(calib, forward_fn)
    result = pruner.prune(model, masks, sparsity, calib)
    warn_left_out(model, result)
    return result
