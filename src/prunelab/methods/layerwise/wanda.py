"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter, ICLR 2024).

Each weight is scored by its magnitude times the norm of its input over the calibration rows
(Eq. 1 of the paper):

    S_ij = |W_ij| · ||X_j||₂,

and the lowest scores are pruned, with no weight update. Only the column norms of the inputs are
needed: prunelab sums ``Σ_rows x_j²`` batch by batch
(:func:`~prunelab.methods.layerwise.capture.capture_statistics`) and never holds the rows.

Comparison groups (Sec. 3 of the paper; its default is per output):

* ``comparison="row"`` (default): weights compete within their output row, and every row keeps
  the same share. prunelab keeps exactly ``n_keep`` weights in the layer: each row keeps
  ``n_keep // d_out`` (fewer if it has fewer survivors), and the remainder goes one weight at a
  time to the rows in index order that still have survivors to give
  (:func:`~prunelab.methods.layerwise.driver.group_keep_counts`). When ``n_keep`` is a multiple
  of ``d_out`` and no row is short of survivors, every row keeps exactly ``n_keep / d_out``.
* ``comparison="layer"``: one ranking over the whole layer.
* with an N:M ``pattern``: the top N scores of every M consecutive input weights of a row
  (:func:`~prunelab.core.patterns.nm_mask`); ``comparison`` is then irrelevant.

Ties keep the lower column (row comparison, N:M); with the layer comparison the earlier weight in
row-major order is pruned first (as :func:`~prunelab.methods.magnitude.select_smallest`).
Already-pruned weights (``problem.mask`` False) stay pruned and count as pruned.

On a transformer (the paper's setting) the rows are tokens, every position of every calibration
sequence (``max_samples`` counts tokens). One difference from the paper's protocol, which prunes
every Linear layer of the blocks: prunelab's layer-wise default leaves the last prunable layer
dense, the last block's ``mlp.proj`` when the head is tied to the embedding; pass
``include_last=True`` to prune it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.core.masks import Masks
from prunelab.core.patterns import nm_mask
from prunelab.errors import ConfigError
from prunelab.methods import register
from prunelab.methods.base import OneShotMethod, check_sparsity
from prunelab.methods.layerwise.driver import LayerProblem, LayerwiseHparams, check_common_hparams, prune_with_solver
from prunelab.methods.magnitude import select_smallest

COMPARISONS = ("row", "layer")


def row_keep_counts(survivors: torch.Tensor, n_keep: int) -> torch.Tensor:
    """How many weights each output row keeps so that the layer keeps exactly ``n_keep``.

    Equal shares ``n_keep // rows`` (capped at a row's survivors); the remainder is handed out one
    weight per row per pass, rows in index order, to rows that still have survivors (the rule of
    :func:`~prunelab.methods.layerwise.driver.group_keep_counts`, vectorised).

    Args:
        survivors: ``(d_out,)`` int surviving weights per row.
        n_keep: weights the layer keeps, ``0 <= n_keep <= survivors.sum()``.

    Returns:
        ``(d_out,)`` int64 counts summing to ``n_keep``.

    Example:
        >>> row_keep_counts(torch.tensor([4, 4, 1]), 7)
        tensor([3, 3, 1])
    """
    survivors = survivors.to(torch.int64)
    counts = survivors.clamp_max(n_keep // max(1, survivors.numel()))
    left = n_keep - int(counts.sum())
    while left > 0:
        room = (counts < survivors).nonzero().flatten()
        give = room[:left]
        counts[give] += 1
        left -= give.numel()
    return counts


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| · ||X_j||₂`` (Eq. 1), float64.

    Args:
        weight: ``(d_out, d_in)``.
        sq_norms: ``(d_in,)`` ``Σ_rows x_j²``.

    Returns:
        ``(d_out, d_in)`` float64 scores.
    """
    return weight.to(torch.float64).abs() * sq_norms.to(weight.device, torch.float64).sqrt()


@torch.no_grad()
def wanda_mask(weight: torch.Tensor, sq_norms: torch.Tensor, n_keep: int, mask: torch.Tensor | None = None,
               *, comparison: str = "row", pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """Wanda's mask of one layer (module docstring): the ``n_keep`` highest ``|W_ij| · ||X_j||₂``.

    Args:
        weight: ``(d_out, d_in)`` weights.
        sq_norms: ``(d_in,)`` sums of squared inputs per column.
        n_keep: weights kept (with a pattern: :func:`~prunelab.core.patterns.nm_keep_count`).
        mask: ``(d_out, d_in)`` bool current survivors (None: all).
        comparison: ``"row"`` or ``"layer"``.
        pattern: ``(n, m)`` or None.

    Returns:
        ``(d_out, d_in)`` bool with exactly ``n_keep`` True entries inside ``mask`` (N:M: exactly
        the pattern's count).

    Raises:
        ConfigError: an impossible ``n_keep``, a bad ``comparison`` or mismatched shapes.

    Example:
        >>> keep = wanda_mask(layer.weight, (X ** 2).sum(0), n_keep=layer.weight.numel() // 2)
    """
    if comparison not in COMPARISONS:
        raise ConfigError(f"Wanda comparison must be one of {COMPARISONS}, got {comparison!r}")
    d_out, d_in = weight.shape
    if sq_norms.shape != (d_in,):
        raise ConfigError(f"Wanda: input norms have shape {tuple(sq_norms.shape)}, the layer needs ({d_in},)")
    allowed = torch.ones(d_out, d_in, dtype=torch.bool, device=weight.device) if mask is None \
        else mask.to(weight.device, torch.bool)
    survivors = allowed.count_nonzero(1)
    if not 0 <= n_keep <= int(survivors.sum()):
        raise ConfigError(f"Wanda cannot keep {n_keep} of {int(survivors.sum())} surviving weights")
    scores = wanda_scores(weight, sq_norms)
    if pattern is not None:
        return nm_mask(scores, pattern, allowed)
    if comparison == "layer":
        return select_smallest([scores], [allowed], allowed.numel() - n_keep)[0]
    return _row_top(scores.masked_fill_(~allowed, -1.0), row_keep_counts(survivors, n_keep))


def _row_top(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``counts[r]`` highest scores of each row ``r`` (ties: lower column).

    Rows sharing a count are done together: the count-th largest score by selection
    (``kthvalue``, linear time, no sort), everything above it, and of the entries equal to it the
    leftmost ones still needed.
    """
    d_out, d_in = scores.shape
    keep = torch.zeros(d_out, d_in, dtype=torch.bool, device=scores.device)
    for count in counts.unique().tolist():
        if count == 0:
            continue
        rows = (counts == count).nonzero().flatten()
        part = scores if rows.numel() == d_out else scores[rows]
        threshold = torch.kthvalue(part, d_in - count + 1, dim=1).values[:, None]
        above = part > threshold
        tied = part == threshold
        need = count - above.count_nonzero(1)[:, None]
        if bool((tied.count_nonzero(1)[:, None] == need).all()):
            chosen = above | tied          # no partial tie (the usual case): no running count
        else:
            chosen = above | (tied & (tied.cumsum(1) <= need))
        if rows.numel() == d_out:
            keep = chosen
        else:
            keep[rows] = chosen
    return keep


@dataclass(frozen=True)
class WandaHparams(LayerwiseHparams):
    """Hyperparameters of Wanda (paper defaults).

    Attributes:
        comparison: ``"row"`` (default, the paper's per-output comparison groups: every row keeps
            the same share) or ``"layer"`` (one ranking per layer); ignored with a pattern.
        layers: weight names to prune; None = every prunable layer but the last.
        include_last: with ``layers=None``, prune the last layer too.
        mode: ``"sequential"`` (default, as the paper: layer l sees the outputs of the already
            pruned layers) or ``"parallel"`` (the dense network's inputs).
        max_samples: calibration rows summed into the input norms per layer (None: all).
        seed: seeds the row subsample.
        pattern: ``"N:M"`` (e.g. ``"2:4"``): keep the N best of every M consecutive input weights
            of a row; the sparsity must then be ``1 - N/M``.
    """

    mode: str = "sequential"
    comparison: str = "row"

    def __post_init__(self):
        check_common_hparams(self, "Wanda")
        if self.comparison not in COMPARISONS:
            raise ConfigError(f"Wanda comparison must be one of {COMPARISONS}, got {self.comparison!r}")


@register("wanda")
class Wanda(OneShotMethod):
    """Wanda (Sun et al. 2024, Eq. 1; module docstring): prune the lowest
    ``S_ij = |W_ij| · ||X_j||₂`` per output row (or per N:M group), without updating weights.

    Each chosen layer (default: every prunable layer but the last) keeps exactly its share of
    weights; only the inputs' column norms are accumulated. ``self.last_info`` lists per layer
    rows, bytes held and seconds.

    Example:
        >>> masks = prunelab.prune(model, "wanda", sparsity=0.5, calib=data.train)
        >>> masks = prunelab.prune(gpt2, "wanda", sparsity=0.5, pattern="2:4", calib=loader)
    """

    Hparams = WandaHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        hp = self.hparams
        sparsity = check_sparsity(sparsity)

        def solve(problem: LayerProblem):
            mask = wanda_mask(problem.weight, problem.data.sq_norms, problem.n_keep, problem.mask,
                              comparison=hp.comparison, pattern=problem.pattern)
            return problem.weight, problem.bias, mask, {}

        result, self.last_info = prune_with_solver("Wanda", model, masks, sparsity, calib, hp, solve,
                                                   needs="norms")
        return result
