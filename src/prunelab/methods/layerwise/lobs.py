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
output row loses (with ``pattern="N:M"``: the lowest ``M − N`` of every group of ``M``, so each
row loses the same). Then, per row (:mod:`prunelab.methods.layerwise.obs_updates`):

* ``update="sequential"`` (exact OBS): the row loses its quota one weight at a time, each time
  the lowest saliency under the *current* inverse, followed by the update δw and the downdate
  ``H⁻¹ ← H⁻¹ − H⁻¹e_q e_qᵀH⁻¹ / [H⁻¹]_qq`` (the inverse Hessian with q removed; Frantar &
  Alistarh 2022, OBC, Eq. 3), so each step is the exact OBS step given the earlier removals;
  with a pattern, a group stops giving weights at N survivors. The downdates are applied lazily
  in batched matrix products, rows in chunks holding one ``(d_in+1)²`` inverse per row
  (``max_hessian_bytes``). Still cubic: ``≈ (2/3) d_in³`` flops per row.
* ``update="oneshot"``: the row's removals are its lowest initial saliencies, and the survivors
  get the optimal joint compensation for that set, ``w_S ← (H_SS)⁻¹ (H w)_S`` over the kept
  set S (bias included) — the multi-weight OBS update (OBC, Eq. 7), batched Cholesky solves of
  the rows with the same kept count. The official code instead applies single-weight updates
  with the fixed H⁻¹ and re-zeroes pruned entries, which is not optimal for more than one
  removal per row.
* ``update="hybrid"`` (default): one-shot down to ``max(hybrid_width · survivors,
  hybrid_min_width)`` weights of the row, the rest by the exact greedy from the kept block's
  inverse — near the sequential update's layer-wise error at a fraction of its cost
  (``≈ hybrid_width³ d_in³`` flops per row). Rows of at most ``hybrid_min_width`` weights are
  pruned exactly as by ``"sequential"``; wider rows kept at more than ``hybrid_width`` (e.g. at
  50 % or 2:4) get the one-shot update.

On a transformer nothing in the method changes: the error is on pre-activation outputs, so no
activation is assumed. The rows ``x_j`` are tokens (every position of every calibration sequence;
``max_samples`` counts tokens), and the Hessian is the tokens' ``(1/N) Σ x xᵀ``. The layer left
dense by default is the last block's ``mlp.proj`` when the head is tied to the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.errors import ConfigError, MethodError
from prunelab.methods.layerwise.driver import LayerProblem, LayerwiseHparams, check_common_hparams, prune_with_solver
from prunelab.methods.layerwise.obs_updates import hybrid, oneshot, sequential
from prunelab.core.masks import Masks
from prunelab.core.patterns import nm_keep_count, nm_mask, pattern_name
from prunelab.methods import register
from prunelab.methods.base import OneShotMethod, check_sparsity

UPDATES = ("hybrid", "sequential", "oneshot")


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


def _row_quota(weight: torch.Tensor, mask: torch.Tensor, diag_inv: torch.Tensor, n_keep: int,
               pattern: tuple[int, int] | None = None):
    """The weights of lowest initial saliency ``L_q = w_q² / (2 [H⁻¹]_qq)`` (Dong et al. 2017,
    Eq. 5) to remove, and how many that makes per row: the layer's lowest ``mask.sum() − n_keep``,
    or with ``pattern = (n, m)`` the lowest of every group of ``m`` but ``n``; and the saliencies."""
    saliency = weight.to(torch.float64) ** 2 / (2.0 * diag_inv)
    if pattern is not None:
        chosen = mask & ~nm_mask(saliency, pattern, mask)
        return chosen, chosen.sum(1), saliency
    flat = torch.where(mask, saliency, torch.tensor(float("inf"), dtype=torch.float64, device=mask.device)).flatten()
    n_remove = int(mask.sum()) - n_keep
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=mask.device)
    if n_remove > 0:
        chosen[torch.sort(flat, stable=True).indices[:n_remove]] = True
    chosen = chosen.view(mask.shape)
    return chosen, chosen.sum(1), saliency


@torch.no_grad()
def lobs_prune_layer(X: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     n_keep: int, mask: torch.Tensor | None = None, *, damping: float = 1e-4,
                     update: str = "hybrid", max_hessian_bytes: int = 1 << 28,
                     pattern: tuple[int, int] | None = None, hybrid_width: float = 0.3,
                     hybrid_min_width: int = 256):
    """Prune one layer by L-OBS to exactly ``n_keep`` surviving weights.

    Args:
        X: ``(N, d_in)`` layer inputs (im2col rows for a conv layer).
        weight: ``(d_out, d_in)`` weights. bias: ``(d_out,)`` or None.
        n_keep: weights kept, ``0 <= n_keep <= mask.sum()``.
        mask: ``(d_out, d_in)`` bool current survivors (None: all); others stay 0.
        damping: relative damping of H (module docstring).
        update: ``"hybrid"``, ``"sequential"`` (exact greedy OBS) or ``"oneshot"`` (module
            docstring).
        max_hessian_bytes: memory for the per-row inverses of the sequential and hybrid
            updates and the gathered Hessian blocks.
        pattern: ``(n, m)``: the mask keeps exactly ``min(n, survivors)`` of every ``m``
            consecutive weights of a row (``n_keep`` must then be
            :func:`~prunelab.core.patterns.nm_keep_count` of ``mask``); None: unstructured.
        hybrid_width, hybrid_min_width: where the hybrid update hands over to the exact greedy:
            at ``max(hybrid_width · survivors, hybrid_min_width)`` survivors of a row
            (:func:`~prunelab.methods.layerwise.obs_updates.hybrid`).

    Returns:
        ``(weight, bias, mask)``: updated float32 weights (zero where pruned), bias (or None) and
        the bool mask with exactly ``n_keep`` True entries.

    Example:
        >>> w, b, m = lobs_prune_layer(X, layer.weight, layer.bias, n_keep=layer.weight.numel() // 2,
        ...                            pattern=(2, 4))
    """
    if update not in UPDATES:
        raise ConfigError(f"L-OBS update must be one of {UPDATES}, got {update!r}")
    if not 0.0 <= hybrid_width <= 1.0:
        raise ConfigError(f"L-OBS hybrid_width must be in [0, 1], got {hybrid_width}")
    d_out, d_in = weight.shape
    mask = torch.ones(d_out, d_in, dtype=torch.bool, device=weight.device) if mask is None else mask.to(torch.bool)
    if not 0 <= n_keep <= int(mask.sum()):
        raise ConfigError(f"L-OBS cannot keep {n_keep} of {int(mask.sum())} surviving weights")
    if pattern is not None and n_keep != nm_keep_count(mask, pattern):
        raise ConfigError(f"L-OBS with the {pattern_name(pattern)} pattern keeps "
                          f"{nm_keep_count(mask, pattern)} weights of this mask, not {n_keep}; pass "
                          "n_keep=nm_keep_count(mask, pattern)")
    hess = lobs_hessian(X.to(weight.device), damping, bias is not None)
    hess_inv = _inverse(hess)
    w = weight.to(torch.float64) * mask
    full = w if bias is None else torch.cat((w, bias.to(torch.float64)[:, None]), 1)
    chosen, quota, saliency = _row_quota(w, mask, hess_inv.diagonal()[:d_in], n_keep, pattern)
    if update == "sequential":
        chunk = max(1, max_hessian_bytes // (hess.shape[0] ** 2 * 8))
        full, new_mask = sequential(full, mask, quota, hess_inv, chunk, pattern)
    elif update == "hybrid":
        full, new_mask = hybrid(full, mask, chosen, saliency, hess, max_hessian_bytes, pattern,
                                hybrid_width, hybrid_min_width)
    else:
        new_mask = mask & ~chosen
        full = oneshot(full, new_mask, hess, max_hessian_bytes)
    new_w = (full[:, :d_in] * new_mask).to(torch.float32)
    new_b = None if bias is None else full[:, d_in].to(torch.float32)
    return new_w, new_b, new_mask


@dataclass(frozen=True)
class LobsHparams(LayerwiseHparams):
    """Hyperparameters of L-OBS.

    Attributes:
        damping: relative damping of the layer Hessian (``damping · mean(diag H)`` added).
        update: ``"hybrid"`` (one-shot, then the exact greedy on the last weights),
            ``"sequential"`` (exact greedy OBS) or ``"oneshot"`` (module docstring).
        max_hessian_bytes: memory for per-row inverses and gathered Hessian blocks.
        hybrid_width, hybrid_min_width: the hybrid update is the exact greedy from
            ``max(hybrid_width · survivors, hybrid_min_width)`` survivors of a row on (so rows of
            at most ``hybrid_min_width`` weights are pruned exactly; width 1: ``"sequential"``;
            width 0 and min width 0: ``"oneshot"``).
        pattern: ``"N:M"``: exactly N of every M consecutive weights of a row survive.
        layers: weight names to prune; None = every prunable layer but the last.
        include_last: with ``layers=None``, prune the last layer too.
        mode: ``"parallel"`` or ``"sequential"`` capture (prunelab.methods.layerwise.driver).
        max_samples: calibration rows used per layer (None: all).
        seed: seeds the row subsample.
    """

    damping: float = 1e-4
    update: str = "hybrid"
    max_hessian_bytes: int = 1 << 28
    hybrid_width: float = 0.3
    hybrid_min_width: int = 256

    def __post_init__(self):
        check_common_hparams(self, "L-OBS")
        if self.update not in UPDATES:
            raise ConfigError(f"L-OBS update must be one of {UPDATES}, got {self.update!r}")
        if self.damping < 0:
            raise ConfigError(f"L-OBS damping must be >= 0, got {self.damping}")
        if not 0.0 <= self.hybrid_width <= 1.0:
            raise ConfigError(f"L-OBS hybrid_width must be in [0, 1], got {self.hybrid_width}")
        if self.hybrid_min_width < 0:
            raise ConfigError(f"L-OBS hybrid_min_width must be >= 0, got {self.hybrid_min_width}")


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
                                       update=hp.update, max_hessian_bytes=hp.max_hessian_bytes,
                                       pattern=problem.pattern, hybrid_width=hp.hybrid_width,
                                       hybrid_min_width=hp.hybrid_min_width)
            return w, b, m, {}

        result, self.last_info = prune_with_solver("L-OBS", model, masks, sparsity, calib, hp, solve)
        return result
