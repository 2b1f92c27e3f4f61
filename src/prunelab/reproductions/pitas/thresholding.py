"""Hard thresholding of chosen layers: per-layer keep-masks and the layers a study designates.

By default ``method="magnitude"``: exactly ``round(s · n)`` weights of smallest ``|w|`` in each
pruned layer (prunelab's layer-scope magnitude pruning, deterministic ties). ``method="histogram"``
uses the paper's 100-bin histogram threshold (``prunelab.methods.hard_threshold``); its per-layer
sparsity is only approximate. A layer's mask at sparsity ``s`` depends only on that layer's
weights, so the masks are computed once per (model, sparsity) and combined.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from prunelab import methods
from prunelab.core.masks import Masks, prunable_parameters
from prunelab.errors import ConfigError, MethodError

__all__ = ["resolve_layers", "thresholder", "layer_threshold_masks", "depth_masks"]

#: Registry names under which the paper's histogram thresholding (methods/hard_threshold.py) is looked up.
HISTOGRAM_NAMES = ("hard-threshold", "hard_threshold", "histogram")


def resolve_layers(model: nn.Module, layers: Iterable[int | str]) -> list[str]:
    """Parameter names of the prunable layers that ``layers`` designate.

    Args:
        model: the network.
        layers: 1-based indices in module order (``1`` = first prunable layer), or names with or
            without ``.weight`` (``"conv1"``, ``"conv1.weight"``).

    Returns:
        Parameter names, in module order, without repeats.

    Raises:
        ConfigError: an index out of range or a name that is not a prunable layer.
    """
    names = list(prunable_parameters(model))
    chosen = set()
    for layer in layers:
        if isinstance(layer, bool):
            raise ConfigError(f"layer {layer!r} is neither an index nor a name")
        if isinstance(layer, (int, np.integer)):
            if not 1 <= layer <= len(names):
                raise ConfigError(f"layer index {layer} is out of range: the model has {len(names)} prunable layers (1…{len(names)})")
            chosen.add(names[layer - 1])
            continue
        name = layer if str(layer).endswith(".weight") or layer in names else f"{layer}.weight"
        if name not in names:
            raise ConfigError(f"{layer!r} is not a prunable layer; prunable: {', '.join(names)}")
        chosen.add(name)
    return [n for n in names if n in chosen]


def thresholder(method: str):
    """The one-shot method that hard-thresholds every layer at the same fraction.

    Raises:
        MethodError: ``"histogram"`` while no histogram thresholding is registered.
        ConfigError: an unknown method.
    """
    if method == "magnitude":
        return methods.create("magnitude", scope="layer")
    if method == "histogram":
        for name in HISTOGRAM_NAMES:
            try:
                cls = methods.get(name)
            except MethodError:
                continue
            fields = {f.name for f in dataclasses.fields(cls.Hparams)}
            # every layer, the classifier included: the study itself chooses which to apply
            return cls(include_last=True) if "include_last" in fields else cls()
        raise MethodError(
            "the paper's 100-bin histogram thresholding (prunelab.methods.hard_threshold) is not "
            "installed in this version; use method 'magnitude' (exact per-layer fraction)"
        )
    raise ConfigError(f"unknown hard-thresholding method {method!r}; choose 'magnitude' or 'histogram'")


def layer_threshold_masks(model: nn.Module, sparsity: float, method: str = "magnitude") -> dict[str, torch.Tensor]:
    """Keep-masks of every prunable layer, each hard-thresholded alone at ``sparsity``.

    The model is not modified (the method runs on a copy).

    Args:
        model: the trained network.
        sparsity: fraction pruned in each layer, in [0, 1).
        method: ``"magnitude"`` (exactly ``round(sparsity · n)`` per layer) or ``"histogram"``
            (the paper's 100-bin histogram threshold, approximate).

    Returns:
        ``name -> bool tensor`` (``True`` = kept) for every prunable layer, in module order.
    """
    masks = thresholder(method).prune(copy.deepcopy(model), None, sparsity)
    return {n: masks[n].clone() for n in masks}


def depth_masks(model: nn.Module, layers: Iterable[int | str], sparsity: float, method: str = "magnitude") -> Masks:
    """Masks that hard-threshold only ``layers`` at ``sparsity`` and keep every other weight.

    Args:
        model: the trained network (not modified).
        layers: indices (1-based) or names of the layers to prune; see :func:`resolve_layers`.
        sparsity: fraction pruned in each chosen layer, in [0, 1).
        method: ``"magnitude"`` or ``"histogram"`` (see :func:`layer_threshold_masks`).

    Returns:
        :class:`Masks` over every prunable layer; the unchosen layers' masks are all ``True``.

    Example:
        >>> masks = depth_masks(model, range(4, 9), 0.9)   # layers ≥ 4 of conv6 at 90 %
        >>> masks.apply(model)
    """
    chosen = resolve_layers(model, layers)
    pruned = layer_threshold_masks(model, sparsity, method)
    return Masks({n: pruned[n] if n in chosen else torch.ones_like(p, dtype=torch.bool)
                  for n, p in prunable_parameters(model).items()})
