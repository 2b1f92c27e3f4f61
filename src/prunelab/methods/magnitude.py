"""Magnitude and random pruning (hard thresholding), global or layer-wise.

Magnitude pruning removes the weights of smallest |w| (Han et al. 2015; the "hard thresholding"
baseline of Pitas et al. 2019). prunelab prunes *exactly* ``round(sparsity * n)`` weights
(``n`` = prunable weights in scope, the count ``torch.nn.utils.prune`` uses), breaking ties
deterministically: among equal magnitudes the earlier weight (module order, then row-major
order) is pruned first. On repeated calls already-pruned weights stay pruned and the new prunes
come from the survivors, so masks are monotone.

The k-th smallest magnitude is found without sorting: a seeded sample of 65,536 magnitudes
brackets it, one counting pass over the weights finds how many lie below the bracket and gathers
the few inside it, and ``kthvalue`` on those gives the exact value. That is a handful of cheap
passes over the weights instead of a sort or a top-k, so global pruning of 25 M weights costs a
fraction of ``torch.nn.utils.prune.global_unstructured``.
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


def _magnitudes(scores: list[torch.Tensor], keep: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """Flat float32 |score|; entries already pruned become -1 so they rank first."""
    values = [s.detach().float().abs().reshape(-1) for s in scores]
    if keep is not None:
        for v, m in zip(values, keep):
            v.masked_fill_(~m.reshape(-1), -1.0)
    return values


def _kth_smallest(values: list[torch.Tensor], k: int) -> tuple[float, int, int]:
    """The k-th smallest value ``t`` (1-based) over all tensors together, with the number of
    values below ``t`` and the number equal to it.

    A strided sample brackets the k-th value; one counting pass finds how many values lie
    below the bracket and gathers the few inside it, and ``kthvalue`` on those gives the exact
    answer. A bracket that misses (unlikely) widens to everything, so the result is always exact.
    """
    total = sum(v.numel() for v in values)
    sample_size = min(total, 1 << 16)
    inf = float("inf")
    lo, hi = -inf, inf
    if sample_size < total:
        # A strided sample: cheap (views), deterministic, and unbiased for weights whose order
        # carries no magnitude pattern; a pathological order only widens the search below.
        stride = max(1, total // sample_size)
        sample = torch.cat([v[::stride] for v in values]).sort().values
        sample_size = sample.numel()
        margin = 6.0 / sample_size**0.5 + 1.0 / sample_size
        lo_i, hi_i = int((k / total - margin) * sample_size), int((k / total + margin) * sample_size)
        lo = float(sample[lo_i]) if lo_i > 0 else -inf
        hi = float(sample[hi_i]) if hi_i < sample_size else inf
    for lo, hi in ((lo, hi), (-inf, inf)):
        if lo == -inf and hi == inf:
            below, inside = 0, torch.cat(values)
        else:
            below = sum(int(torch.count_nonzero(v < lo)) for v in values) if lo > -inf else 0
            inside = torch.cat([v[(v >= lo) & (v <= hi)] for v in values])
        if below < k <= below + inside.numel():
            t = torch.kthvalue(inside, k - below).values
            return float(t), below + int(torch.count_nonzero(inside < t)), int(torch.count_nonzero(inside == t))
    raise ConfigError("cannot rank the scores: they contain NaN")


def select_smallest(scores: list[torch.Tensor], keep: list[torch.Tensor] | None, k: int) -> list[torch.Tensor]:
    """Keep-masks pruning exactly ``k`` entries of smallest |score| over all tensors together.

    Args:
        scores: tensors whose magnitudes rank the entries.
        keep: current keep-masks (pruned entries stay pruned and count towards ``k``), or None.
        k: total number of entries pruned afterwards.

    Returns:
        One bool tensor per score tensor (``True`` = kept). Ties at the threshold are pruned in
        order (earlier tensor, then row-major), so the count is exact and deterministic.
    """
    total = sum(s.numel() for s in scores)
    if not 0 <= k <= total:
        raise ConfigError(f"cannot prune {k} of {total} weights")
    if keep is not None and all(bool(m.all()) for m in keep):
        keep = None  # nothing pruned yet: no masking pass needed
    values = _magnitudes(scores, keep)
    if any(bool(torch.isnan(v.sum())) for v in values):
        raise ConfigError("cannot rank the scores: they contain NaN")
    if k == 0:
        kept = [torch.ones(v.numel(), dtype=torch.bool) for v in values]
    else:
        threshold, below, n_equal = _kth_smallest(values, k)
        kept = [v > threshold for v in values]
        remaining = k - below  # how many of the values equal to the threshold to prune, >= 1
        if remaining < n_equal:  # a partial tie: prune the earliest, keep the rest
            for v, m in zip(values, kept):
                equal = (v == threshold).nonzero().flatten()
                if equal.numel():
                    n_prune = min(remaining, equal.numel())
                    remaining -= n_prune
                    m[equal[n_prune:]] = True
    return [m.view(s.shape) for m, s in zip(kept, scores)]


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
            params[n].masked_fill_(~keep, 0.0)
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
