"""Magnitude and random pruning (hard thresholding), global or layer-wise.

Magnitude pruning removes the weights of smallest |w| (Han et al. 2015; the "hard thresholding"
baseline of Pitas et al. 2019). prunelab prunes *exactly* ``round(sparsity * n)`` weights
(``n`` = prunable weights in scope, the count ``torch.nn.utils.prune`` uses), breaking ties
deterministically: among equal magnitudes the earlier weight (module order, then row-major
order) is pruned first. On repeated calls already-pruned weights stay pruned and the new prunes
come from the survivors, so masks are monotone.

The k-th smallest magnitude is found by a two-level radix select on the IEEE-754 bit patterns
of |w| (non-negative floats order like their bits read as integers): one histogram over the top
16 bits of every weight, one over the low 16 bits of the few weights in the boundary bucket. That
is a handful of passes over the weights instead of a sort or a top-k, so global pruning of
25 M weights costs a fraction of ``torch.nn.utils.prune.global_unstructured``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, MaskError
from ..masks import Masks, prunable_parameters
from . import register
from .base import OneShotMethod, check_sparsity

SCOPES = ("global", "layer")


def _keys(scores: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """int32 sort keys: the bits of |score| (ordered like the magnitudes); with ``keep``,
    already-pruned entries get key 0 and the others 1 + bits, so they sort first."""
    keys = scores.detach().float().abs().contiguous().view(torch.int32).reshape(-1)
    if keep is not None:
        keys = torch.where(keep.reshape(-1), keys + 1, torch.zeros((), dtype=torch.int32))
    return keys


def _select_threshold(keys: list[torch.Tensor], k: int) -> tuple[int, int]:
    """Find key value ``t`` and count ``c`` such that pruning every key < t plus the first ``c``
    keys equal to t (in order) prunes exactly ``k`` entries."""
    if k <= 0:
        return -1, 0
    hist = torch.zeros(1 << 16, dtype=torch.int64)
    for key in keys:
        hist += torch.bincount(key >> 16, minlength=1 << 16)[: 1 << 16]
    if int(hist[0x7F80 + 1 :].sum()):  # bit patterns above +inf (+1) are NaN
        raise ConfigError("cannot prune by magnitude: the scores contain NaN")
    cumulative = hist.cumsum(0)
    high = int(torch.searchsorted(cumulative, torch.tensor([k], dtype=torch.int64)).item())
    below = int(cumulative[high - 1]) if high > 0 else 0
    low_hist = torch.zeros(1 << 16, dtype=torch.int64)
    for key in keys:
        in_bucket = key[(key >> 16) == high]
        if in_bucket.numel():
            low_hist += torch.bincount(in_bucket & 0xFFFF, minlength=1 << 16)
    low_cum = low_hist.cumsum(0) + below
    low = int(torch.searchsorted(low_cum, torch.tensor([k], dtype=torch.int64)).item())
    threshold = (high << 16) | low
    below_t = int(low_cum[low - 1]) if low > 0 else below
    return threshold, k - below_t


def _masks_from_threshold(keys: list[torch.Tensor], shapes, threshold: int, ties: int) -> list[torch.Tensor]:
    out = []
    for key, shape in zip(keys, shapes):
        keep = key > threshold
        equal = (key == threshold).nonzero().flatten()
        if equal.numel():
            n_prune = min(ties, equal.numel())
            ties -= n_prune
            keep[equal[n_prune:]] = True  # ties beyond the quota are kept, earliest pruned first
        out.append(keep.view(shape))
    return out


def select_smallest(scores: list[torch.Tensor], keep: list[torch.Tensor] | None, k: int) -> list[torch.Tensor]:
    """Keep-masks pruning exactly ``k`` entries of smallest |score| over all tensors together.

    Args:
        scores: tensors whose magnitudes rank the entries.
        keep: current keep-masks (pruned entries stay pruned and count towards ``k``), or None.
        k: total number of entries pruned afterwards.

    Returns:
        One bool tensor per score tensor (``True`` = kept).
    """
    if keep is not None and all(bool(m.all()) for m in keep):
        keep = None  # nothing pruned yet: plain magnitudes, no offset pass
    keys = [_keys(s, None if keep is None else m) for s, m in zip(scores, keep if keep is not None else [None] * len(scores))]
    total = sum(key.numel() for key in keys)
    if not 0 <= k <= total:
        raise ConfigError(f"cannot prune {k} of {total} weights")
    threshold, ties = _select_threshold(keys, k)
    return _masks_from_threshold(keys, [s.shape for s in scores], threshold, ties)


@dataclass(frozen=True)
class MagnitudeHparams:
    """Hyperparameters of magnitude pruning.

    Attributes:
        scope: ``"global"`` (one threshold over all prunable weights) or ``"layer"`` (the same
            fraction pruned in every layer).
    """

    scope: str = "global"

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")


def _current(model: nn.Module, masks: Masks | None) -> tuple[dict[str, torch.Tensor], Masks | None]:
    if masks is None:
        return prunable_parameters(model), None
    masks.validate(model)
    params = dict(model.named_parameters())
    return {n: params[n] for n in masks}, masks


def _prune_by_scores(model, masks, sparsity, scope, scores: dict[str, torch.Tensor]) -> Masks:
    sparsity = check_sparsity(sparsity)
    names = list(scores)
    if not names:
        raise MaskError("the model has no prunable weights")
    current = None if masks is None else [masks[n] for n in names]
    if scope == "global":
        total = sum(s.numel() for s in scores.values())
        k = round(sparsity * total)
        if current is not None:
            k = max(k, sum(m.numel() - int(m.sum()) for m in current))  # never un-prune
        kept = select_smallest([scores[n] for n in names], current, k)
    else:
        kept = []
        for i, n in enumerate(names):
            k = round(sparsity * scores[n].numel())
            m = None if current is None else current[i]
            if m is not None:
                k = max(k, m.numel() - int(m.sum()))
            kept.extend(select_smallest([scores[n]], None if m is None else [m], k))
    new = Masks(dict(zip(names, kept)))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, keep in new.items():
            params[n].mul_(keep)  # a bool multiplier: no float copy of the mask needed
    return new


@register("magnitude")
class MagnitudePruning(OneShotMethod):
    """Prune the weights of smallest magnitude (hard thresholding), globally or per layer.

    Exactly ``round(sparsity * n)`` weights are pruned; see the module docstring for ties.
    """

    Hparams = MagnitudeHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        params, masks = _current(model, masks)
        scores = {n: p.detach() for n, p in params.items()}
        return _prune_by_scores(model, masks, sparsity, self.hparams.scope, scores)


@dataclass(frozen=True)
class RandomHparams:
    """Hyperparameters of random pruning.

    Attributes:
        scope: ``"global"`` or ``"layer"`` (as magnitude pruning).
        seed: seeds the random scores (the same seed gives the same masks).
    """

    scope: str = "global"
    seed: int = 0

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")


@register("random")
class RandomPruning(OneShotMethod):
    """Prune uniformly random weights (the baseline every method must beat)."""

    Hparams = RandomHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        params, masks = _current(model, masks)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        scores = {n: torch.rand(p.shape, generator=generator) for n, p in params.items()}
        return _prune_by_scores(model, masks, sparsity, self.hparams.scope, scores)
