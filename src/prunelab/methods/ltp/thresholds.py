"""Bringing a trail entry to exactly the target sparsity: fill by magnitude, or lower every threshold.

Short of the target, the entry is pruned further by global magnitude; past it, every learned
threshold ``τ_l`` of LTP (Azarian et al. 2020, Eq. 1) is scaled down by one common factor, so the
per-layer allocation LTP learned is kept.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from prunelab.core.masks import Masks
from prunelab.core.prunable import unwrap
from prunelab.methods.magnitude import _prune_by_scores, select_smallest

if TYPE_CHECKING:
    from prunelab.methods.ltp.trail import Trail, TrailEntry

logger = logging.getLogger("prunelab.ltp")

MATCH_TOLERANCE = 0.02  # LTP.run revives weights when the picked entry is > 2 % past the target


@torch.no_grad()
def lower_thresholds_to(weights: dict[str, torch.Tensor], thresholds: dict[str, float], prune: int) -> Masks:
    """Hard masks pruning exactly ``prune`` weights by one common scaling of the thresholds.

    Keeping ``w² > c·τ_l`` for one factor ``c`` ranks the weights by ``w²/τ_l``; a layer with
    ``τ_l ≤ 0`` keeps every weight with ``w² > τ_l`` whatever ``c`` is. The ``prune`` weights of
    smallest rank are pruned (ties in tensor, then row-major, order). With ``prune`` no more than
    the current hard masks prune, every weight they keep stays kept: the thresholds come down.

    Args:
        weights: ``name -> weight`` (unmasked).
        thresholds: ``name -> τ_l``.
        prune: the number of weights to prune in all.

    Returns:
        The :class:`Masks` (``True`` = kept).
    """
    names = list(weights)
    scores = []
    for n in names:
        w2, tau = weights[n].detach().float() ** 2, float(thresholds[n])
        if tau > 0:
            scores.append(w2 / tau)
        else:
            scores.append(torch.where(w2 > tau, torch.full_like(w2, math.inf), torch.zeros_like(w2)))
    kept = select_smallest(scores, None, prune)
    return Masks(dict(zip(names, kept)))


def restore_at_target(model: nn.Module, trail: "Trail", entry: "TrailEntry", sparsity: float, match: bool = True,
                      log: Callable[[str], None] | None = None,
                      tolerance: float = MATCH_TOLERANCE) -> tuple[Masks, dict]:
    """Load trail ``entry`` into ``model`` and, with ``match``, bring it to exactly ``sparsity``.

    ``model`` is the network :func:`learn_thresholds` trained in place, so before this call it
    holds the unmasked weights of the trail's last entry. Short of the target, the entry is pruned
    further by global magnitude (the smallest |w| among its kept weights). More than ``tolerance``
    (default :data:`MATCH_TOLERANCE`; 0: any excess) past it, and if ``entry`` is the last entry,
    every threshold is lowered by one common factor (:func:`lower_thresholds_to`): the pruned weights of largest w²/τ_l come
    back with the values LTP trained. An earlier entry past the target is kept as it is (logged).

    Returns:
        ``(masks, {"filled_fraction": ..., "revived_fraction": ...})``, shares of all prunable
        weights pruned by the fill or revived.
    """
    log = log or logger.info
    target_compression = 1.0 / (1.0 - sparsity)
    inner = unwrap(model)
    unmasked = {n: inner.get_parameter(n).detach().clone() for n in entry.thresholds}
    masks = entry.restore(model)
    filled = revived = 0.0
    if match and sparsity > 0:
        if entry.compression < target_compression * (1 - 1e-9):
            before = masks.kept()
            masks = _prune_by_scores(model, masks, sparsity, "global",
                                     {n: inner.get_parameter(n).detach() for n in masks})
            filled = (before - masks.kept()) / masks.total()
        elif entry.compression > target_compression * (1 + tolerance) and (
                tolerance > 0 or masks.pruned() > round(sparsity * masks.total())):
            # (With no tolerance, an entry whose count is already the target's is kept as it is.)
            if entry.step == trail[-1].step:
                kept = masks.kept()
                with torch.no_grad():
                    for name, value in unmasked.items():
                        inner.get_parameter(name).copy_(value)
                masks = lower_thresholds_to(unmasked, entry.thresholds, round(sparsity * masks.total()))
                masks.apply(model)
                revived = (masks.kept() - kept) / masks.total()
                log(f"LTP's trail passed the {target_compression:.2f}x target ({entry.compression:.2f}x); "
                    f"thresholds lowered by one factor to match it ({100 * revived:.2f} % of the weights revived)")
            else:
                log(f"warning: the picked trail entry is at {entry.compression:.2f}x for a {target_compression:.2f}x "
                    "target and is not the last one (its unpruned weights are gone): kept as it is")
    return masks, {"filled_fraction": filled, "revived_fraction": revived}
