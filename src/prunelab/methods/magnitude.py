"""Magnitude and random pruning (hard thresholding), global or layer-wise.

Magnitude pruning removes the weights of smallest |w| (Han et al. 2015; the "hard thresholding"
baseline of Pitas et al. 2019). prunelab prunes *exactly* ``round(sparsity * n)`` weights
(``n`` = prunable weights in scope, the count ``torch.nn.utils.prune`` uses), breaking ties
deterministically: among equal magnitudes the earlier weight (module order, then row-major
order) is pruned first. On repeated calls already-pruned weights stay pruned and the new prunes
come from the survivors, so masks are monotone.

With an N:M ``pattern`` (``"2:4"``; :mod:`prunelab.core.patterns`) every prunable weight, seen as
its ``(d_out, d_in)`` matrix (a conv kernel flattened, a HuggingFace ``Conv1D`` transposed), keeps
the N largest scores of every M consecutive input weights of each row
(:func:`~prunelab.core.patterns.nm_mask`: a short last group keeps ``min(N, r)``, a group with
fewer than N survivors keeps them all, ties keep the lower column). The pattern fixes how many go
in every group, so ``scope`` is irrelevant and ``sparsity`` must be ``1 - N/M``.

The k-th smallest magnitude is found without sorting: a strided sample of 65,536 magnitudes
brackets it, one counting pass over the weights finds how many lie below the bracket and gathers
the few inside it, and ``kthvalue`` on those gives the exact value; a second pass writes the
masks. Both passes work on 1 MiB chunks, so the weights are read from memory twice and the other
operations hit the cache: global pruning of 25 M weights costs a small fraction of
``torch.nn.utils.prune.global_unstructured`` (``benchmarks/bench_core.py``).

On a transformer nothing changes: the score is per weight. The prunable weights of ``gpt`` are the
blocks' Linear weights (the head tied to the token embedding is not prunable by default). Global
scope ranks them on one scale, and GPT-2's initialisation scales the residual projections
(``attn.proj``, ``mlp.proj``) by 1/√(2·layers), so global magnitude prunes those harder than
``qkv`` and ``fc`` (about 57 % against 44 % at a global 50 % on a one-layer ``gpt``); ``layer``
scope gives every weight matrix the same share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import ConfigError, MaskError
from prunelab.core.masks import Masks, prunable_parameters, resolve_parameters
from prunelab.core.patterns import check_pattern_sparsity, from_matrix_view, matrix_view, nm_mask, parse_pattern, pattern_name
from prunelab.core.prunable import canonical_name, is_hf_conv1d, parameter_aliases, unwrap
from prunelab.methods import register
from prunelab.methods.base import OneShotMethod, check_sparsity

SCOPES = ("global", "layer")


#: elements per chunk of the selection passes: 1 MiB of float32, so the few passes made over each
#: chunk read it from cache and the weights themselves are read from memory only twice.
CHUNK = 1 << 18
#: size of the strided sample that brackets the k-th smallest magnitude.
SAMPLE = 1 << 16


class _Magnitudes:
    """|score| of every entry of several tensors, computed chunk by chunk into one reused buffer.

    Entries already pruned (``keep`` False) read as -1, so they rank first. Everything lives on
    the first score's device (a CUDA model's masks are selected on the GPU; scores on other
    devices are moved there).
    """

    def __init__(self, scores: list[torch.Tensor], keep: list[torch.Tensor] | None):
        self.device = scores[0].device if scores else torch.device("cpu")
        self.flat = [s.detach().reshape(-1).to(self.device) for s in scores]
        self.keep = None if keep is None else [m.reshape(-1).to(self.device) for m in keep]
        self.total = sum(f.numel() for f in self.flat)
        self._buf = torch.empty(min(CHUNK, max(1, self.total)), dtype=torch.float32, device=self.device)

    def _abs(self, values: torch.Tensor, out: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        out.copy_(values)
        out.abs_()
        if keep is not None:
            out.masked_fill_(keep.logical_not(), -1.0)
        return out

    def chunks(self):
        """Yield ``(tensor index, start, magnitudes)``; the magnitudes live in a reused buffer."""
        for i, f in enumerate(self.flat):
            for start in range(0, f.numel(), CHUNK):
                c = f[start:start + CHUNK]
                keep = None if self.keep is None else self.keep[i][start:start + CHUNK]
                yield i, start, self._abs(c, self._buf[:c.numel()], keep)

    def sample(self, stride: int) -> torch.Tensor:
        """Every ``stride``-th magnitude of each tensor (a deterministic, cheap sample)."""
        parts = []
        for i, f in enumerate(self.flat):
            view = f[::stride]
            keep = None if self.keep is None else self.keep[i][::stride]
            parts.append(self._abs(view, torch.empty(view.numel(), dtype=torch.float32, device=self.device), keep))
        return torch.cat(parts)


def _kth_smallest(mags: _Magnitudes, k: int) -> tuple[float, int, int]:
    """The k-th smallest magnitude ``t`` (1-based) over all tensors together, with the number of
    magnitudes below ``t`` and the number equal to it.

    A strided sample brackets the k-th value; one pass over the chunks counts the values below
    the bracket and gathers the few inside it, and ``kthvalue`` on those gives the exact answer.
    A bracket that misses (unlikely) widens to everything, so the result is always exact.
    """
    total = mags.total
    inf = float("inf")
    lo, hi = -inf, inf
    if total > SAMPLE:
        # A strided sample: deterministic, and unbiased for weights whose order carries no
        # magnitude pattern; a pathological order only widens the search below.
        sample = mags.sample(max(1, total // SAMPLE)).sort().values
        n = sample.numel()
        margin = 6.0 / n**0.5 + 1.0 / n
        lo_i, hi_i = int((k / total - margin) * n), int((k / total + margin) * n)
        lo = float(sample[lo_i]) if lo_i > 0 else -inf
        hi = float(sample[hi_i]) if hi_i < n else inf
        if bool(torch.isnan(sample).any()):
            raise ConfigError("cannot rank the scores: they contain NaN")
    for lo, hi in ((lo, hi), (-inf, inf)):
        below, nan, parts = 0, 0, []
        for _, _, a in mags.chunks():
            nan += int(torch.count_nonzero(torch.isnan(a)))
            if lo == -inf and hi == inf:
                parts.append(a.clone())
                continue
            low = a < lo
            below += int(torch.count_nonzero(low))
            parts.append(a[low.logical_not_().logical_and_(a <= hi)])
        if nan:
            raise ConfigError("cannot rank the scores: they contain NaN")
        inside = torch.cat(parts)
        if below < k <= below + inside.numel():
            t = torch.kthvalue(inside, k - below).values
            return float(t), below + int(torch.count_nonzero(inside < t)), int(torch.count_nonzero(inside == t))
    raise AssertionError("unreachable: the full range always contains the k-th value")


def select_smallest(scores: list[torch.Tensor], keep: list[torch.Tensor] | None, k: int) -> list[torch.Tensor]:
    """Keep-masks pruning exactly ``k`` entries of smallest |score| over all tensors together.

    Args:
        scores: tensors whose magnitudes rank the entries.
        keep: current keep-masks (pruned entries stay pruned and count towards ``k``), or None.
        k: total number of entries pruned afterwards.

    Returns:
        One bool tensor per score tensor (``True`` = kept), on that tensor's device. Ties at the threshold are pruned in
        order (earlier tensor, then row-major), so the count is exact and deterministic.

    Cost: two passes over the scores in memory (find the threshold, write the masks); the other
    work happens on 1 MiB chunks in cache.
    """
    total = sum(s.numel() for s in scores)
    if not 0 <= k <= total:
        raise ConfigError(f"cannot prune {k} of {total} weights")
    if keep is not None and all(bool(m.all()) for m in keep):
        keep = None  # nothing pruned yet: no masking needed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _select(scores, keep, k)
    finally:
        torch.set_num_threads(threads)


def _select(scores: list[torch.Tensor], keep: list[torch.Tensor] | None, k: int) -> list[torch.Tensor]:
    # One thread: the passes are many small operations on cached chunks, where a thread pool's
    # hand-offs cost more than they save, and on a busy machine a descheduled worker made every
    # one of them wait (measured: 100x slower under load with 2 threads).
    mags = _Magnitudes(scores, keep)
    kept = [torch.ones(f.numel(), dtype=torch.bool, device=f.device) for f in mags.flat]
    if k == 0:
        if any(bool(torch.isnan(f).any()) for f in mags.flat if f.is_floating_point()):
            raise ConfigError("cannot rank the scores: they contain NaN")
        return [m.view(s.shape).to(s.device) for m, s in zip(kept, scores)]
    threshold, below, n_equal = _kth_smallest(mags, k)
    remaining = k - below  # how many of the values equal to the threshold to prune, >= 1
    partial_tie = remaining < n_equal
    for i, start, a in mags.chunks():
        out = kept[i][start:start + a.numel()]
        torch.gt(a, threshold, out=out)
        if partial_tie:
            # a partial tie: prune the earliest equal values, keep the later ones
            equal = (a == threshold).nonzero().flatten()
            n_prune = min(remaining, equal.numel())
            remaining -= n_prune
            out[equal[n_prune:]] = True
    return [m.view(s.shape).to(s.device) for m, s in zip(kept, scores)]


@dataclass(frozen=True)
class MagnitudeHparams:
    """Hyperparameters of magnitude pruning.

    Attributes:
        scope: ``"global"`` (one threshold over all prunable weights) or ``"layer"`` (the same
            fraction pruned in every layer); irrelevant with a pattern.
        pattern: ``"N:M"`` (e.g. ``"2:4"``): keep the N largest of every M consecutive input
            weights of each row of every weight matrix; the sparsity must then be ``1 - N/M``.
            None: unstructured.
    """

    scope: str = "global"
    pattern: str | None = None

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        object.__setattr__(self, "pattern", pattern_name(parse_pattern(self.pattern)))


def _current(model: nn.Module, masks: Masks | None) -> tuple[dict[str, torch.Tensor], Masks | None]:
    """The weights to prune (by the masks' names, which may be wrapper-prefixed or tied aliases;
    by canonical name without masks) and the masks."""
    if masks is None:
        return prunable_parameters(model), None
    masks.validate(model)
    return resolve_parameters(model, masks), masks


def _pattern_masks(model: nn.Module, scores: dict[str, torch.Tensor], current, pattern) -> list[torch.Tensor]:
    """N:M keep-masks: each weight's matrix view keeps the N largest |score| of every M
    consecutive input weights among its current survivors (module docstring)."""
    inner = unwrap(model)
    aliases = parameter_aliases(inner)
    kept = []
    for i, (name, score) in enumerate(scores.items()):
        module_name = (canonical_name(name, aliases) or name).rpartition(".")[0]
        input_first = score.dim() == 2 and is_hf_conv1d(inner.get_submodule(module_name))
        allowed = None if current is None else matrix_view(current[i].to(score.device), input_first)
        keep = nm_mask(matrix_view(score, input_first).abs(), pattern, allowed)
        kept.append(from_matrix_view(keep, score.shape, input_first))
    return kept


def _prune_by_scores(model, masks, sparsity, scope, scores: dict[str, torch.Tensor], pattern=None) -> Masks:
    sparsity = check_sparsity(sparsity)
    names = list(scores)
    if not names:
        raise MaskError("the model has no prunable weights")
    current = None if masks is None else [masks[n] for n in names]
    pattern = parse_pattern(pattern)
    if pattern is not None:
        check_pattern_sparsity(pattern, sparsity)
        kept = _pattern_masks(model, scores, current, pattern)
    elif scope == "global":
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
    params = resolve_parameters(model, names)
    with torch.no_grad():
        for n, keep in new.items():
            params[n].masked_fill_(~keep.to(params[n].device), 0.0)
    return new


@register("magnitude")
class MagnitudePruning(OneShotMethod):
    """Prune the weights of smallest magnitude (hard thresholding; Han et al. 2015), globally or
    per layer: m = 1[|w| > |w|_(k)], |w|_(k) the k-th smallest magnitude in scope.

    Exactly ``k = round(sparsity * n)`` weights are pruned; see the module docstring for ties.
    """

    Hparams = MagnitudeHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        params, masks = _current(model, masks)
        scores = {n: p.detach() for n, p in params.items()}
        return _prune_by_scores(model, masks, sparsity, self.hparams.scope, scores, self.hparams.pattern)


@dataclass(frozen=True)
class RandomHparams:
    """Hyperparameters of random pruning.

    Attributes:
        scope: ``"global"`` or ``"layer"`` (as magnitude pruning); irrelevant with a pattern.
        seed: seeds the random scores (the same seed gives the same masks).
        pattern: ``"N:M"``: keep N random weights of every M consecutive input weights (as
            magnitude pruning); None: unstructured.
    """

    scope: str = "global"
    seed: int = 0
    pattern: str | None = None

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        object.__setattr__(self, "pattern", pattern_name(parse_pattern(self.pattern)))


@register("random")
class RandomPruning(OneShotMethod):
    """Prune uniformly random weights (the baseline every method must beat): the magnitude rule
    with seeded scores u ~ U[0, 1) in place of |w|."""

    Hparams = RandomHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        params, masks = _current(model, masks)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        # Drawn on the CPU (the same masks on every device for a seed), ranked on the weights' device.
        scores = {n: torch.rand(p.shape, generator=generator).to(p.device) for n, p in params.items()}
        return _prune_by_scores(model, masks, sparsity, self.hparams.scope, scores, self.hparams.pattern)
