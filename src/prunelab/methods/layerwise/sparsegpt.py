"""SparseGPT: one-shot OBS pruning made fast (Frantar & Alistarh, ICML 2023, Algorithm 1).

A layer's weights ``W`` (``d_out × d_in``) are pruned to fit its outputs on calibration inputs
``X`` under the squared error, whose Hessian is the same for every output row,
``H = (2/N) XᵀX`` (N calibration rows; prunelab sums ``XᵀX`` batch by batch,
:func:`~prunelab.methods.layerwise.capture.capture_statistics`, and never holds the rows). The
scale of ``H`` changes nothing below: the damping is relative and every update is invariant to it.

Algorithm 1 of the paper, as implemented here:

1. Dead inputs (``H_jj = 0``: column ``j`` of ``X`` is zero) get ``H_jj = 1`` and a zero weight
   column, as the official code does (they cannot affect the outputs; their zero weights rank
   first for pruning).
2. Damping: ``H ← H + λ I`` with ``λ = damping · mean(diag H)`` (``percdamp = 0.01``).
3. ``U = Cholesky(H⁻¹)ᵀ``, the upper factor with ``H⁻¹ = UᵀU`` (Algorithm 1, line 2). Row ``j``
   of ``U`` is ``[H_F⁻¹]_{j,:} / sqrt([H_F⁻¹]_jj)`` for the remaining columns ``F = {j, …, d_in−1}``,
   so one factorisation gives every inverse Hessian of the column-by-column elimination. prunelab
   computes it without forming ``H⁻¹``: with ``P`` the order reversal,
   ``U = P · Cholesky(P H P)⁻¹ · P`` (one Cholesky and one triangular inverse, in float64 by
   default; the official code takes three factorisations in float32).
4. Columns are visited in blocks of ``B = 128`` (lazy batched updates, Sec. 3.3). At the start of
   a block the mask of its columns is chosen by the OBS saliency ``w² / [U]_jj²`` (adaptive mask
   selection, Sec. 3.4; line 5 of Algorithm 1); with an N:M pattern it is chosen per group of M
   columns when the group's first column is reached (``top N`` of each group of each row, Sec. 3.5).
5. Within the block, column ``j``: ``E_j = (W_j − M_j ⊙ W_j) / U_jj`` (line 8) and
   ``W_{j:B} ← W_{j:B} − E_j U_{j, j:B}`` (line 9, the OBS update restricted to the remaining
   columns); after the block, ``W_{B:} ← W_{B:} − E U_{block, B:}`` (line 11: one matrix product
   propagates the block's errors to every later column).

The ``predicted_error`` of the info is ``Σ_j ||E_j||² / 2``: the exact increase of
``½ ΔWᵀ H ΔW`` summed over rows (H damped), i.e. the mean over rows of ``||ΔW x||²`` when the
damping is small. The bias is not changed (SparseGPT fits W only; the paper's layers keep theirs).

Exactly ``n_keep`` weights per layer (prunelab's contract; the official code prunes a fraction of
each block): the layer's weights are ranked once, when pruning starts, by ``w² / U_jj²``; the
``d_out · d_in − n_keep`` lowest (already-pruned weights first) fix how many weights each block
prunes. When a block starts its mask is chosen afresh among its columns (adaptive), by the
saliencies of the weights as the earlier blocks' updates left them, with exactly that count. So
a block of dead or unimportant inputs prunes more than its share, and the layer keeps exactly
``n_keep``. Already-pruned weights (``problem.mask`` False) are pruned in their turn like the
others: their (updated) value is compensated, so they stay zero and count as pruned.

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
from prunelab.errors import ConfigError, MethodError
from prunelab.methods import register
from prunelab.methods.base import OneShotMethod, check_sparsity
from prunelab.methods.layerwise.driver import LayerProblem, LayerwiseHparams, check_common_hparams, prune_with_solver
from prunelab.methods.magnitude import select_smallest

HESSIAN_DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: columns per inner sub-block: line 9's rank-1 updates stay within it (in cache) and reach the
#: rest of the block by one matrix product per sub-block (the lazy update applied recursively;
#: the same arithmetic, in another order).
_SUB = 16


def inverse_hessian_factor(hess: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``; Algorithm 1, line 2).

    With ``P`` the reversal of the order, ``P H P = L Lᵀ`` gives ``H⁻¹ = P L⁻ᵀ L⁻¹ P =
    (P L⁻¹ P)ᵀ (P L⁻¹ P)`` and ``P L⁻¹ P`` is upper triangular with a positive diagonal, so it is
    the (unique) factor: one Cholesky and one triangular inverse, ``H⁻¹`` never formed.

    Args:
        hess: ``(d, d)`` symmetric positive definite (damped) Hessian.

    Returns:
        ``(d, d)`` upper triangular ``U`` in ``hess``'s dtype.

    Raises:
        MethodError: ``hess`` is not positive definite.

    Example:
        >>> U = inverse_hessian_factor(H)
        >>> torch.allclose(U.T @ U, torch.linalg.inv(H))
        True
    """
    return _reversed_factor(hess.flip(0, 1))


def _reversed_factor(reversed_hess: torch.Tensor) -> torch.Tensor:
    """:func:`inverse_hessian_factor` of ``P H P`` given as ``reversed_hess`` (overwritten)."""
    factor, info = torch.linalg.cholesky_ex(reversed_hess)
    if int(info) != 0:
        raise MethodError("SparseGPT: the layer Hessian is not positive definite (inputs are rank "
                          "deficient); raise the damping hyperparameter, e.g. damping=0.1")
    # The identity becomes L⁻¹ in place: one d×d buffer fewer at the peak.
    eye = reversed_hess.zero_()
    eye.diagonal().fill_(1.0)
    inverse = torch.linalg.solve_triangular(factor, eye, upper=False, out=eye)
    del factor
    return inverse.flip(0, 1)


def _hessian_factor(gram: torch.Tensor, n_rows: int, damping: float, dtype: torch.dtype):
    """``(U, dead)`` for ``H = (2/N) G``: dead inputs get ``H_jj = 1``, then ``damping ·
    mean(diag H) · I`` is added (steps 1-3 of the module docstring). ``U`` is float32.

    The work happens on ``P G P`` in float64 (``dtype`` for the factorisation), damped unscaled
    (``G_jj = N/2`` for a dead input is ``H_jj = 1``); ``U`` is scaled by ``sqrt(N/2)`` at the
    end, which is the factor of ``H`` itself.
    """
    half_rows = max(1, n_rows) / 2.0
    reversed_hess = gram.flip(0, 1).to(torch.float64)
    diag = reversed_hess.diagonal()
    dead = (diag == 0).flip(0)
    diag.masked_fill_(diag == 0, half_rows)
    diag.add_(damping * diag.mean())
    factor = _reversed_factor(reversed_hess.to(dtype))
    del reversed_hess
    return factor.to(torch.float32).mul_(half_rows ** 0.5), dead


def _block_size(block_size: int, pattern: tuple[int, int] | None) -> int:
    """Blocks hold whole N:M groups: ``block_size`` rounded down to a multiple of M (at least M)."""
    if pattern is None:
        return block_size
    m = pattern[1]
    return max(m, block_size // m * m)


@torch.no_grad()
def sparsegpt_prune_layer(gram: torch.Tensor, n_rows: int, weight: torch.Tensor, n_keep: int,
                          mask: torch.Tensor | None = None, *, pattern: tuple[int, int] | None = None,
                          damping: float = 0.01, block_size: int = 128,
                          hessian_dtype: torch.dtype = torch.float64) -> tuple:
    """Prune one layer by SparseGPT (Algorithm 1; module docstring) to exactly ``n_keep`` weights.

    Args:
        gram: ``(d_in, d_in)`` ``XᵀX`` of the calibration rows (any float dtype).
        n_rows: rows summed into ``gram`` (``N``).
        weight: ``(d_out, d_in)`` weights.
        n_keep: weights kept, ``0 <= n_keep <= mask.sum()``; with a pattern it must be
            :func:`~prunelab.core.patterns.nm_keep_count` of ``mask``.
        mask: ``(d_out, d_in)`` bool, weights that may survive (None: all); the others are pruned
            with compensation (if non-zero), so they end at zero.
        pattern: ``(n, m)``: keep ``n`` of every ``m`` consecutive columns of a row (Sec. 3.5).
        damping: relative damping ``λ / mean(diag H)`` (``percdamp``).
        block_size: columns per lazy-update block (``B``).
        hessian_dtype: dtype of the factorisation (float64 or float32).

    Returns:
        ``(weight, mask, info)``: float32 weights (zero where pruned), the bool mask with exactly
        ``n_keep`` True entries, and ``{"predicted_error", "dead_inputs", "block_size"}``.

    Raises:
        ConfigError: impossible ``n_keep`` or shapes that do not match.
        MethodError: a Hessian that is not positive definite.

    Example:
        >>> w, m, info = sparsegpt_prune_layer(X.T @ X, X.shape[0], layer.weight, n_keep=layer.weight.numel() // 2)
    """
    d_out, d_in = weight.shape
    if gram.shape != (d_in, d_in):
        raise ConfigError(f"SparseGPT: gram has shape {tuple(gram.shape)}, the layer needs ({d_in}, {d_in})")
    device = weight.device
    allowed = torch.ones(d_out, d_in, dtype=torch.bool, device=device) if mask is None else mask.to(device, torch.bool)
    if not 0 <= n_keep <= int(allowed.sum()):
        raise ConfigError(f"SparseGPT cannot keep {n_keep} of {int(allowed.sum())} surviving weights")
    factor, dead = _hessian_factor(gram.to(device), n_rows, damping, hessian_dtype)
    # Columns of W are rows here: every per-column step reads and updates contiguous memory.
    work = weight.to(torch.float32).T.clone(memory_format=torch.contiguous_format)
    work[dead] = 0.0
    allowed_t = allowed.T.contiguous()
    keep_t = torch.zeros_like(allowed_t)
    diag = factor.diagonal()
    step = _block_size(block_size, pattern)
    if pattern is None:
        # Step 4's per-block counts: one ranking of the whole layer (module docstring).
        saliency = work.square() / diag[:, None].square()
        initial = select_smallest([saliency], [allowed_t], allowed_t.numel() - n_keep)[0]
        prune_counts = [initial[i:i + step].numel() - int(initial[i:i + step].count_nonzero())
                        for i in range(0, d_in, step)]
        del saliency, initial
    predicted = torch.zeros((), dtype=torch.float64, device=device)
    for block, i1 in enumerate(range(0, d_in, step)):
        i2 = min(i1 + step, d_in)
        w_block = work[i1:i2]
        u_block = factor[i1:i2, i1:i2]
        d_block = u_block.diagonal()
        if pattern is None:
            saliency = w_block.square() / d_block[:, None].square()
            keep = select_smallest([saliency], [allowed_t[i1:i2]], prune_counts[block])[0]
        else:
            keep = torch.zeros_like(allowed_t[i1:i2])
        errors = torch.empty_like(w_block)
        for s1 in range(0, i2 - i1, _SUB):
            s2 = min(s1 + _SUB, i2 - i1)
            for i in range(s1, s2):
                if pattern is not None and i % pattern[1] == 0:
                    j = min(i + pattern[1], i2 - i1)
                    saliency = w_block[i:j].square() / d_block[i:j, None].square()
                    keep[i:j] = nm_mask(saliency.T, pattern, allowed_t[i1 + i:i1 + j].T).T
                error = errors[i]
                torch.div(w_block[i].masked_fill(keep[i], 0.0), d_block[i], out=error)   # line 8
                # line 9 (addmm: a BLAS call; addr_ splits so small a product over threads)
                w_block[i:s2].addmm_(u_block[i, i:s2, None], error[None], alpha=-1.0)
            if s2 < i2 - i1:   # line 9 for the rest of the block, one product per sub-block
                w_block[s2:].addmm_(u_block[s1:s2, s2:].T, errors[s1:s2], alpha=-1.0)
        keep_t[i1:i2] = keep
        w_block.masked_fill_(~keep, 0.0)
        predicted += errors.square().sum(dtype=torch.float64) / 2
        if i2 < d_in:
            work[i2:].addmm_(factor[i1:i2, i2:].T, errors, alpha=-1.0)             # line 11
    new_mask = keep_t.T.contiguous()
    info = {"predicted_error": float(predicted), "dead_inputs": int(dead.sum()), "block_size": step}
    return (work.T * new_mask).contiguous(), new_mask, info


@dataclass(frozen=True)
class SparseGPTHparams(LayerwiseHparams):
    """Hyperparameters of SparseGPT (paper defaults).

    Attributes:
        damping: relative damping of the layer Hessian: ``damping · mean(diag H)`` is added to its
            diagonal (the paper's ``percdamp``, 0.01).
        block_size: columns per block of lazy batched updates and adaptive mask selection (128);
            with a pattern it is rounded down to a multiple of M.
        hessian_dtype: ``"float64"`` (default) or ``"float32"`` (half the memory; the official
            code's choice) for the Hessian factorisation; the column sweep runs in float32.
        layers: weight names to prune; None = every prunable layer but the last.
        include_last: with ``layers=None``, prune the last layer too.
        mode: ``"sequential"`` (default, as the paper: layer l is calibrated on the outputs of the
            already pruned layers before it) or ``"parallel"`` (the dense network's inputs).
        max_samples: calibration rows summed into the Hessian per layer (None: all).
        seed: seeds the row subsample.
        pattern: ``"N:M"`` (e.g. ``"2:4"``): keep N of every M consecutive input weights, chosen
            per group of M columns (Sec. 3.5); the sparsity must then be ``1 - N/M``.
    """

    mode: str = "sequential"
    damping: float = 0.01
    block_size: int = 128
    hessian_dtype: str = "float64"

    def __post_init__(self):
        check_common_hparams(self, "SparseGPT")
        if isinstance(self.damping, bool) or not isinstance(self.damping, (int, float)) or not self.damping >= 0:
            raise ConfigError(f"SparseGPT damping must be a number >= 0 (the paper uses 0.01), got {self.damping!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ConfigError(f"SparseGPT block_size must be a positive int (the paper uses 128), "
                              f"got {self.block_size!r}")
        if self.hessian_dtype not in HESSIAN_DTYPES:
            raise ConfigError(f"SparseGPT hessian_dtype must be one of {tuple(HESSIAN_DTYPES)}, "
                              f"got {self.hessian_dtype!r}")


@register("sparsegpt")
class SparseGPT(OneShotMethod):
    """SparseGPT (Frantar & Alistarh 2023, Algorithm 1; module docstring): per column
    ``E_j = (w_j − m_j ⊙ w_j) / [U]_jj``, ``W_{j:} ← W_{j:} − E_j U_{j,j:}`` with
    ``U = Cholesky(H⁻¹)ᵀ``, ``H = (2/N) XᵀX + λI``; masks by ``w² / [U]_jj²`` per block.

    Each chosen layer (default: every prunable layer but the last) keeps exactly its share of
    weights (or exactly N of every M with ``pattern``); surviving weights are rewritten, biases
    are left as they are. Only ``XᵀX`` of the calibration rows is held (accumulated batch by
    batch). ``self.last_info`` lists per layer rows, bytes held, seconds and the predicted error.

    Example:
        >>> masks = prunelab.prune(model, "sparsegpt", sparsity=0.5, calib=data.train)
        >>> masks = prunelab.prune(gpt2, "sparsegpt", sparsity=0.5, pattern="2:4", calib=loader)
    """

    Hparams = SparseGPTHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        hp = self.hparams
        sparsity = check_sparsity(sparsity)

        def solve(problem: LayerProblem):
            weight, mask, info = sparsegpt_prune_layer(
                problem.data.gram, problem.data.rows, problem.weight, problem.n_keep, problem.mask,
                pattern=problem.pattern, damping=hp.damping, block_size=hp.block_size,
                hessian_dtype=HESSIAN_DTYPES[hp.hessian_dtype])
            return weight, problem.bias, mask, info

        result, self.last_info = prune_with_solver("SparseGPT", model, masks, sparsity, calib, hp, solve,
                                                   needs="gram")
        return result
