"""``make_permanent``: bake a pruning into the weights and drop every mask structure."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunelab.core.prunable import prunable_parameters, resolve_parameters, unwrap
from prunelab.errors import MaskError

__all__ = ["make_permanent", "plain_copy"]


def _remove_nn_prune(model: nn.Module) -> list[str]:
    """Undo ``torch.nn.utils.prune`` reparametrisations: ``weight = weight_orig * weight_mask``
    becomes a plain parameter and the forward pre-hook, ``weight_orig`` and ``weight_mask`` go.
    ``prune.remove`` must be called once per (module, name) (NVIDIA/retinanet-examples#257)."""
    from torch.nn.utils import prune as nn_prune

    removed = []
    for module_name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, nn_prune.BasePruningMethod):
                nn_prune.remove(module, hook._tensor_name)
                removed.append(f"{module_name}.{hook._tensor_name}" if module_name else hook._tensor_name)
    return removed


def _remove_parametrizations(model: nn.Module) -> list[str]:
    """Replace ``torch.nn.utils.parametrize`` parametrisations by their current value."""
    from torch.nn.utils import parametrize

    removed = []
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
                removed.append(f"{module_name}.{tensor_name}" if module_name else tensor_name)
    return removed


@torch.no_grad()
def make_permanent(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Zero the pruned weights for good and remove every mask structure from ``model``, in place.

    ``torch.nn.utils.prune`` reparametrisations (``weight_orig``, ``weight_mask``, the forward
    pre-hook) and ``torch.nn.utils.parametrize`` parametrisations are replaced by plain
    parameters holding their current (masked) value; then ``masks`` (a :class:`prunelab.Masks`
    or any ``name -> bool tensor`` mapping, ``True`` = kept) zero the pruned entries. Zeros are
    written as ``+0.0``, and every ``-0.0`` left in a masked or prunable weight by an earlier
    multiply-by-mask becomes ``+0.0`` (numerically the same), so sparse storage of the result
    round-trips bit for bit without recording signs of zeros.

    Args:
        model: the network (modified in place), or its ``torch.compile``/DDP wrapper.
        masks: optional masks to bake in; canonical names (the unwrapped model's
            ``named_parameters()``), tied aliases and wrapper-prefixed names all resolve.

    Returns:
        ``model``, now a plain module: same class, same ``state_dict`` keys as before pruning.

    Raises:
        MaskError: a mask names no parameter of the model or has another shape.

    Example:
        >>> masks = prunelab.prune(model, "magnitude", sparsity=0.9)
        >>> make_permanent(model, masks)      # model.fc1.weight is a plain Parameter with zeros
    """
    inner = unwrap(model)
    _remove_nn_prune(inner)
    _remove_parametrizations(inner)
    params = resolve_parameters(inner, masks) if masks is not None else {}
    if masks is not None:
        for name, mask in masks.items():
            if tuple(mask.shape) != tuple(params[name].shape):
                raise MaskError(f"mask {name!r} has shape {tuple(mask.shape)} but the parameter has {tuple(params[name].shape)}")
        for name, mask in masks.items():
            params[name].masked_fill_(~mask.to(device=params[name].device, dtype=torch.bool), 0.0)
    touched = list(params.values()) + list(prunable_parameters(inner).values())
    for p in {id(p): p for p in touched}.values():   # a tied weight once
        if p.is_floating_point():
            p.masked_fill_(p == 0, 0.0)   # -0.0 -> +0.0
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """``make_permanent(copy.deepcopy(model))``, also for models pruned with ``torch.nn.utils.prune``:
    their masked ``weight`` attribute is a non-leaf tensor that ``deepcopy`` refuses
    (pytorch/pytorch#37322), so it is detached for the copy and restored afterwards. A
    ``torch.compile``/DDP wrapper is not copied: the copy is of the plain model inside it."""
    import copy

    from torch.nn.utils import prune as nn_prune

    model = unwrap(model)

    saved = []
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, nn_prune.BasePruningMethod):
                value = getattr(module, hook._tensor_name, None)
                if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                    saved.append((module, hook._tensor_name, value))
                    setattr(module, hook._tensor_name, value.detach())
    try:
        duplicate = copy.deepcopy(model)
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
    return make_permanent(duplicate)
