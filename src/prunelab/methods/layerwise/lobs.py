"""L-OBS: layer-wise Optimal Brain Surgeon (Dong, Chen, Pan, NIPS 2017).

The layer-wise error of a linear layer, E = (1/2N) ||Ŵ X − W X||²_F on its *pre-activation*
outputs, has the Hessian ``H = (1/N) Σ_j x_j x_jᵀ`` for every output row (all rows share it). With
the bias folded in as a constant input 1 (``x ← [x; 1]``, as the official code does), OBS gives
for removing weight q of a row (paper Eq. 5):

    saliency  L_q = w_q² / (2 [H⁻¹]_qq),      update  δw = −(w_q / [H⁻¹]_qq) H⁻¹ e_q.

prunelab computes ``H + damping · mean(diag H) · I`` and its inverse by Cholesky
(``torch.linalg.cholesky`` + ``cholesky_inverse``); the official code builds H⁻¹ by a Woodbury
recursion from ``10⁶ I``, i.e. an absolute damping of 1e-6. The bias is never pruned but is
updated by δw like any weight.

Which weights go. As the official code, the weights of the layer are ranked once by their
saliency under the initial H⁻¹ and the ``k`` lowest are chosen; that fixes how many weights each
output row loses. Then, per row:

* ``update="sequential"`` (default; exact OBS): the row loses its quota one weight at a time,
  each time the lowest saliency under the *current* inverse, followed by the update δw and the
  downdate ``H⁻¹ ← H⁻¹ − H⁻¹e_q e_qᵀH⁻¹ / [H⁻¹]_qq`` (the inverse Hessian with q removed), so each
  step is the exact OBS step given the earlier removals. Rows are processed together in chunks
  holding one ``(d_in+1)²`` inverse per row (``max_hessian_bytes``). Cost ``O(d_out · k_r ·
  d_in²)``: cubic in ``d_in`` at a fixed sparsity.
* ``update="oneshot"``: the row's removals are its lowest initial saliencies, and the survivors
  get the optimal joint compensation for that set, ``w_S ← (H_SS)⁻¹ (H w)_S`` over the kept
  set S (bias included) — the multi-weight OBS update, one small solve per row. The official code
  instead applies single-weight updates with the fixed H⁻¹ and re-zeroes pruned entries, which
  is not optimal for more than one removal per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.errors import ConfigError, MethodError
from prunelab.methods.layerwise.driver import LayerProblem, LayerwiseHparams, check_common_hparams, prune_with_solver
from prunelab.core.masks import Masks
from prunelab.methods import register
from prunelab.methods.base import OneShotMethod, check_sparsity

UPDATES = ("sequential", "oneshot")
# Stored width of the per-row inverses is cut to the live columns when they fall below this.
_COMPACT = 0.85


def lobs_hessian(X: torch.Tensor, damping: float = 1e-4, bias: bool = True) -> torch.Tensor:
    """Damped layer Hessian ``(1/N) X̃ᵀX̃ + damping · mean(diag) · I`` in float64.

    Args:
        X: ``(N, d_in)`` layer inputs.
        damping: relative damping (0 for none).
        bias: append a constant-1 input (last coordinate) for the bias.

    Returns:
        ``(D, D)`` float64, ``D = d_in + bias``.
    """
    X = X.to(torch.float64)
    n = X.shape[0]
    hess = X.T @ X / n
    if bias:
        mean = X.mean(0, keepdim=True)
        hess = torch.cat((torch.cat((hess, mean.T), 1),
                          torch.cat((mean, torch.ones(1, 1, dtype=X.dtype, device=X.device)), 1)), 0)
    if damping > 0:
        hess = hess + damping * hess.diagonal().mean() * torch.eye(hess.shape[0], dtype=X.dtype, device=X.device)
    return hess


def _inverse(hess: torch.Tensor) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(hess)
    if int(info) != 0:
        raise MethodError("L-OBS: the layer Hessian is not positive definite (inputs are rank "
                          "deficient); raise the damping hyperparameter, e.g. damping=1e-3")
    return torch.cholesky_inverse(factor)


def _row_quota(weight: torch.Tensor, mask: torch.Tensor, diag_inv: torch.Tensor, n_keep: int):
    """Per-row count of weights to remove: the lowest initial saliencies of the layer."""
    saliency = weight.to(torch.float64) ** 2 / (2.0 * diag_inv)
    flat = torch.where(mask, saliency, torch.tensor(float("inf"), dtype=torch.float64, device=mask.device)).flatten()
    n_remove = int(mask.sum()) - n_keep
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=mask.device)
    if n_remove > 0:
        chosen[torch.sort(flat, stable=True).indices[:n_remove]] = True
    chosen = chosen.view(mask.shape)
    return chosen, chosen.sum(1)


def _sequential(weight, mask, quota, hess_inv, chunk):
    """Exact per-row greedy OBS with inverse downdates (module docstring).

    Rows are processed ``chunk`` at a time, each with its own copy of H⁻¹. All rows of a chunk
    that are still pruning have removed the same number of entries, so the removed rows and
    columns of their inverses (zero after the downdate) can be dropped together: whenever the
    live part falls below ``_COMPACT`` of the stored width, the inverses are gathered down to it,
    and finished rows leave the chunk. That cuts the cost from ``k · D²`` to about ``D³ / 2.6``
    per row for ``k`` removals out of ``D``.
    """
    d_out, d = mask.shape
    size = hess_inv.shape[0]
    out = weight.clone()
    device = weight.device
    removed_all = torch.zeros(d_out, size, dtype=torch.bool, device=device)
    todo_all = (~mask).sum(1) + quota
    order = torch.argsort(todo_all, stable=True)   # similar counts finish together
    for start in range(0, d_out, chunk):
        rows = order[start:start + chunk]
        rows = rows[todo_all[rows] > 0]
        if rows.numel() == 0:
            continue
        r = rows.numel()
        w = out[rows].clone()
        inv = hess_inv.expand(r, size, size).clone()
        index = torch.arange(size, device=device).expand(r, size).clone()  # local -> global column
        removed = torch.zeros(r, size, dtype=torch.bool, device=device)
        candidate = index < d                                   # the bias is never removed
        forced = torch.zeros(r, size, dtype=torch.bool, device=device)
        forced[:, :d] = ~mask[rows]                             # already pruned: w = 0, go first
        todo = todo_all[rows].clone()
        step = 0
        while rows.numel():
            done = todo <= step
            if bool(done.any()) or (~removed[0]).sum() <= _COMPACT * removed.shape[1]:
                _write_rows(out, removed_all, rows[done], w[done], index[done], removed[done])
                live = ~done
                rows, w, inv, index, removed, candidate, forced, todo = (
                    t[live] for t in (rows, w, inv, index, removed, candidate, forced, todo))
                if not rows.numel():
                    break
                if (~removed[0]).sum() <= _COMPACT * removed.shape[1]:
                    keep_cols = (~removed).nonzero()[:, 1].view(rows.numel(), -1)
                    pick = torch.arange(rows.numel(), device=device)[:, None]
                    w, index, candidate, forced = (t[pick, keep_cols]
                                                   for t in (w, index, candidate, forced))
                    inv = inv[pick[:, :, None], keep_cols[:, :, None], keep_cols[:, None, :]]
                    removed = torch.zeros_like(candidate)
            arange = torch.arange(rows.numel(), device=device)
            diag = inv.diagonal(dim1=1, dim2=2)
            sal = w ** 2 / (2.0 * diag)
            sal = torch.where(forced & ~removed, torch.full_like(sal, -1.0), sal)
            sal = sal.masked_fill(removed | ~candidate, float("inf"))
            q = sal.argmin(1)
            col = inv[arange, :, q]                             # H⁻¹ e_q per row
            h_qq = col[arange, q]
            w -= (w[arange, q] / h_qq)[:, None] * col
            w[arange, q] = 0.0
            inv.baddbmm_((col / h_qq[:, None]).unsqueeze(2), col.unsqueeze(1), alpha=-1.0)
            removed[arange, q] = True
            step += 1
    keep = ~removed_all[:, :d] & mask
    return out, keep


def _write_rows(out, removed_all, rows, w, index, removed):
    """Scatter finished rows (local columns) back into the layer."""
    if not rows.numel():
        return
    full = torch.zeros(rows.numel(), out.shape[1], dtype=out.dtype, device=out.device)
    full.scatter_(1, index, w.masked_fill(removed, 0.0))
    out[rows] = full
    gone = torch.ones(rows.numel(), out.shape[1], dtype=torch.bool, device=out.device)
    gone.scatter_(1, index, removed)
    removed_all[rows] = gone


def _oneshot(weight, new_mask, hess):
    """Joint optimal compensation of each row's removal set (module docstring)."""
    d_out, d = new_mask.shape
    out = torch.zeros_like(weight)
    grad = weight @ hess                                   # rows of (H w)ᵀ, H symmetric
    keep = torch.ones(d_out, hess.shape[0], dtype=torch.bool, device=weight.device)
    keep[:, :d] = new_mask
    for row in range(d_out):
        kept = keep[row].nonzero().flatten()
        if kept.numel():
            sub = hess[kept][:, kept]
            out[row, kept] = torch.cholesky_solve(grad[row, kept, None],
                                                  torch.linalg.cholesky(sub)).flatten()
    return out


@torch.no_grad()
def lobs_prune_layer(X: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     n_keep: int, mask: torch.Tensor | None = None, *, damping: float = 1e-4,
                     update: str = "sequential", max_hessian_bytes: int = 1 << 28):
    """Prune one layer by L-OBS to exactly ``n_keep`` surviving weights.

    Args:
        X: ``(N, d_in)`` layer inputs (im2col rows for a conv layer).
        weight: ``(d_out, d_in)`` weights. bias: ``(d_out,)`` or None.
        n_keep: weights kept, ``0 <= n_keep <= mask.sum()``.
        mask: ``(d_out, d_in)`` bool current survivors (None: all); others stay 0.
        damping: relative damping of H (module docstring).
        update: ``"sequential"`` (exact OBS with downdates) or ``"oneshot"``.
        max_hessian_bytes: memory for the per-row inverses of the sequential update.

    Returns:
        ``(weight, bias, mask)``: updated float32 weights (zero where pruned), bias (or None) and
        the bool mask with exactly ``n_keep`` True entries.
    """
    if update not in UPDATES:
        raise ConfigError(f"L-OBS update must be one of {UPDATES}, got {update!r}")
    d_out, d_in = weight.shape
    mask = torch.ones(d_out, d_in, dtype=torch.bool, device=weight.device) if mask is None else mask.to(torch.bool)
    if not 0 <= n_keep <= int(mask.sum()):
        raise ConfigError(f"L-OBS cannot keep {n_keep} of {int(mask.sum())} surviving weights")
    hess = lobs_hessian(X.to(weight.device), damping, bias is not None)
    hess_inv = _inverse(hess)
    w = weight.to(torch.float64) * mask
    full = w if bias is None else torch.cat((w, bias.to(torch.float64)[:, None]), 1)
    chosen, quota = _row_quota(w, mask, hess_inv.diagonal()[:d_in], n_keep)
    if update == "sequential":
        chunk = max(1, max_hessian_bytes // (hess.shape[0] ** 2 * 8))
        full, new_mask = _sequential(full, mask, quota, hess_inv, chunk)
    else:
        new_mask = mask & ~chosen
        full = _oneshot(full, new_mask, hess)
    new_w = (full[:, :d_in] * new_mask).to(torch.float32)
    new_b = None if bias is None else full[:, d_in].to(torch.float32)
    return new_w, new_b, new_mask


@dataclass(frozen=True)
class LobsHparams(LayerwiseHparams):
    """Hyperparameters of L-OBS.

    Attributes:
        damping: relative damping of the layer Hessian (``damping · mean(diag H)`` added).
        update: ``"sequential"`` (exact OBS, inverse downdates) or ``"oneshot"``.
        max_hessian_bytes: memory for per-row inverses in the sequential update.
        layers: weight names to prune; None = every prunable layer but the last.
        include_last: with ``layers=None``, prune the last layer too.
        mode: ``"parallel"`` or ``"sequential"`` capture (prunelab.methods.layerwise.driver).
        max_samples: calibration rows used per layer (None: all).
        seed: seeds the row subsample.
    """

    damping: float = 1e-4
    update: str = "sequential"
    max_hessian_bytes: int = 1 << 28

    def __post_init__(self):
        check_common_hparams(self, "L-OBS")
        if self.update not in UPDATES:
            raise ConfigError(f"L-OBS update must be one of {UPDATES}, got {self.update!r}")
        if self.damping < 0:
            raise ConfigError(f"L-OBS damping must be >= 0, got {self.damping}")


@register("lobs")
class Lobs(OneShotMethod):
    """L-OBS layer-wise pruning (Dong et al. 2017, Eq. 5; module docstring): saliency
    L_q = w_q² / (2 [H⁻¹]_qq), update δw = −(w_q / [H⁻¹]_qq) H⁻¹ e_q, H = (1/N) Σ_j x_j x_jᵀ.

    Each chosen layer (default: all prunable layers but the last) is pruned to ``sparsity`` of
    its weights; surviving weights and biases are rewritten. ``self.last_info`` lists per layer
    rows, bytes held and seconds.
    ``calib`` is any calibration data (a ``Split``, a tensor of inputs, an ``(x, y)`` pair, a
    ``TensorDataset``, a ``DataLoader`` of ``(x, y)`` or of dicts of token ids, a ``Calibration``
    with its ``forward_fn``); layers may be ``nn.Linear``, ``nn.Conv1d/2d``, HuggingFace
    ``Conv1D`` and ``nn.MultiheadAttention`` projections (:mod:`prunelab.methods.layerwise.layers`).

    Example:
        >>> masks = prunelab.prune(gpt2, "lobs", sparsity=0.5, calib=loader, max_samples=4096)
    """

    Hparams = LobsHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        hp = self.hparams
        sparsity = check_sparsity(sparsity)

        def solve(problem: LayerProblem):
            w, b, m = lobs_prune_layer(problem.data.inputs, problem.weight, problem.bias,
                                       problem.n_keep, problem.mask, damping=hp.damping,
                                       update=hp.update, max_hessian_bytes=hp.max_hessian_bytes)
            return w, b, m, {}

        result, self.last_info = prune_with_solver("L-OBS", model, masks, sparsity, calib, hp, solve)
        return result
