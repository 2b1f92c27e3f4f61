"""Net-Trim: convex layer-wise pruning (Aghasi, Abdi, Nguyen, Romberg, NIPS 2017).

For a ReLU layer with inputs ``x_i`` and original pre-activations ``a_i = W x_i + b``, Net-Trim
finds, for every output neuron m with active set Ω_m = {i : a_im > 0},

    min ||w_m||₁   s.t.   ||(X̃ w_m − a_m)_{Ω_m}||₂ ≤ ε_m,   (X̃ w_m)_{Ω_mᶜ} ≤ 0,

so the pruned neuron reproduces the active outputs up to ε_m and keeps the inactive ones
inactive (``X̃ = [X, 1]``; the bias coordinate is fitted but not in the ℓ1 norm, as biases are not
pruned in prunelab). prunelab uses a relative ε: ``ε_m = epsilon · ||(a_m)_{Ω_m}||₂``; at
``epsilon = 1`` the all-zero weights are feasible.

Solver: ADMM written here, all neurons of the layer at once (one column each). With the rows
scaled by 1/√N, the inputs centred (``Xw + b = (X − μ)w + (b + μᵀw)``: the unpenalised bias
absorbs the mean, which removes the huge mean direction of non-negative inputs from X̃ᵀX̃; without
it ADMM drifted on such layers) and ``c² = trace(X̃ᵀX̃/N) / D`` balancing the two constraints,
split ``X̃w = z`` (z in the constraint set C) and ``c w = c v`` (v carries the ℓ1 norm):

    w ← (X̃ᵀX̃ + c² I)⁻¹ (X̃ᵀ(z − u) + c(c v − s))      one Cholesky factor for the whole layer
    z ← Proj_C(X̃w + u)                                  ball around a_Ω on Ω, clamp ≤ 0 off Ω
    v ← soft(w + s/c, 1/(ρ c²))                         (bias: no shrinkage)
    u ← u + X̃w − z;   s ← s + c(w − v)

ρ is fixed (default ``1 / (c² mean|w_trained|)``, so the first ℓ1 step shrinks by about the
mean weight): residual balancing (Boyd et al. 2011, §3.4.1) was tried and dropped, as it drove ρ
to zero on layers with nearly-dead neurons and the ℓ1 step then erased every weight. The stopping
rule is Boyd's relative primal/dual residual test on the whole layer (``tol``), checked every 10
steps. The weights returned are v (exactly sparse); at convergence X̃v = z meets the constraints.

Reaching a requested sparsity: the ℓ1 solution's non-zero count tends to fall as ε grows, so prunelab
bisects on log ε (each probe ``search_iters`` ADMM iterations warm-started from the previous
probe's state), keeps the probe whose count is closest above the request, runs ADMM from it to
convergence, then cuts the smallest |w| to the exact count (the cut can break the ε constraint
slightly; ``last_info`` reports the relative fit error after it). ``epsilon`` set and
``search_steps=0`` skip the search (the paper's protocol) and only cut. At high sparsity the ℓ1
solution shrinks its survivors hard (on the FC 784-100-100 Fashion-MNIST net, 90 % needs
ε ≈ 0.77); ``refit=True`` (beyond the paper) refits them by least squares on the kept support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunelab.errors import ConfigError
from prunelab.methods.layerwise.driver import LayerProblem, LayerwiseHparams, check_common_hparams, prune_with_solver, top_k_mask
from prunelab.core.masks import Masks
from prunelab.methods import register
from prunelab.methods.base import OneShotMethod, check_sparsity


_CHECK_EVERY = 10


@dataclass
class NetTrimState:
    """ADMM iterate of :func:`nettrim_solve` (all neurons as columns), reusable as a warm start.

    ``w``, ``v``, ``s``: ``(D, d_out)``; ``z``, ``u``: ``(N, d_out)``; ``rho``: ``(d_out,)``.
    """

    w: torch.Tensor
    z: torch.Tensor
    v: torch.Tensor
    u: torch.Tensor
    s: torch.Tensor
    rho: torch.Tensor


@dataclass
class NetTrimResult:
    """Output of :func:`nettrim_solve`.

    Attributes:
        weight: ``(d_out, d_in)`` sparse solution (v). bias: ``(d_out,)`` or None.
        state: the final ADMM iterate. iters: iterations run.
        primal: final relative primal residual of the layer.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    state: NetTrimState
    iters: int
    primal: float


class _Layer:
    """Products with X̃/√N, X̃ = [X − μ, 1], without materialising either.

    With an unpenalised bias, ``Xw + b = (X − μ)w + (b + μᵀw)``: centring the inputs only
    re-expresses the bias and leaves the ℓ1 problem unchanged, but it removes the large mean
    direction of non-negative inputs (pixels, post-ReLU activations) from X̃ᵀX̃, without which
    ADMM stalls or drifts on such layers. Without a bias nothing is centred.
    """

    def __init__(self, X: torch.Tensor, bias: bool):
        self.X = X.to(torch.float32).contiguous()
        self.bias = bias
        self.n, self.d_in = self.X.shape
        self.scale = 1.0 / math.sqrt(self.n)
        self.mean = self.X.to(torch.float64).mean(0).to(torch.float32) if bias else None

    def mv(self, w: torch.Tensor) -> torch.Tensor:        # X̃ w / √N, w (D, k)
        inner = w[: self.d_in]
        out = self.X @ inner
        if self.bias:
            out += w[self.d_in:] - self.mean @ inner
        return out * self.scale

    def tmv(self, r: torch.Tensor) -> torch.Tensor:       # X̃ᵀ r / √N, r (N, k)
        out = self.X.T @ r
        if self.bias:
            total = r.sum(0, keepdim=True)
            out = torch.cat((out - self.mean[:, None] * total, total))
        return out * self.scale

    def gram(self) -> torch.Tensor:
        X = self.X.to(torch.float64)
        if not self.bias:
            return X.T @ X / self.n
        centred = X - X.mean(0)
        size = self.d_in + 1
        g = torch.zeros(size, size, dtype=X.dtype, device=X.device)
        g[: self.d_in, : self.d_in] = centred.T @ centred / self.n
        g[self.d_in, self.d_in] = 1.0
        return g

    def to_centred(self, w: torch.Tensor) -> torch.Tensor:
        """(weights; bias) → (weights; b + μᵀw)."""
        if self.bias:
            w = w.clone()
            w[self.d_in] += self.mean @ w[: self.d_in]
        return w

    def from_centred(self, w: torch.Tensor) -> torch.Tensor:
        if self.bias:
            w = w.clone()
            w[self.d_in] -= self.mean @ w[: self.d_in]
        return w


def _project(zhat: torch.Tensor, target: torch.Tensor, active: torch.Tensor, radius: torch.Tensor):
    """Projection onto {z : ||(z − target)_Ω|| ≤ radius, z_Ωᶜ ≤ 0}, column-wise."""
    diff = (zhat - target) * active
    norm = diff.norm(dim=0)
    factor = torch.where(norm > radius, radius / norm.clamp_min(1e-30), torch.ones_like(norm))
    return torch.where(active, target + diff * factor, zhat.clamp_max(0.0))


@torch.no_grad()
def nettrim_solve(X: torch.Tensor, outputs: torch.Tensor, epsilon: float, *,
                  weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  use_bias: bool = True, mask: torch.Tensor | None = None,
                  state: NetTrimState | None = None, rho: float | None = None,
                  max_iters: int = 500, tol: float = 1e-3, _factor=None) -> NetTrimResult:
    """Net-Trim's per-layer convex program by ADMM (module docstring).

    Args:
        X: ``(N, d_in)`` layer inputs.
        outputs: ``(N, d_out)`` original pre-activations ``a``.
        epsilon: relative fit tolerance ε (``ε_m = epsilon · ||(a_m)_Ω||``), > 0.
        weight, bias: starting point ``(d_out, d_in)`` / ``(d_out,)`` (default 0); ignored with
            ``state``.
        use_bias: fit a bias (unpenalised).
        mask: ``(d_out, d_in)`` bool; weights outside stay 0.
        state: warm start (a previous result's state, its ρ included).
        rho: ADMM penalty ρ; None = ``1 / (c² mean|w₀|)`` (the ℓ1 step then shrinks by about the
            mean starting weight).
        max_iters: iteration cap. tol: stop when the relative primal and dual residuals of the
            whole layer are below it (checked every 10 iterations).

    Returns:
        :class:`NetTrimResult`.
    """
    if epsilon <= 0:
        raise ConfigError(f"Net-Trim epsilon must be > 0, got {epsilon}")
    layer = _Layer(X, use_bias)
    d_in = layer.d_in
    d_out = outputs.shape[1]
    size = d_in + int(use_bias)
    active = outputs > 0
    target = outputs.to(torch.float32).clamp_min(0.0) * layer.scale
    radius = epsilon * target.norm(dim=0)
    if _factor is None:
        gram = layer.gram()
        c2 = float(gram.diagonal().mean())
        _factor = (torch.linalg.cholesky(gram + c2 * torch.eye(size, dtype=gram.dtype, device=gram.device)), c2)
    chol, c2 = _factor
    chol32 = chol.to(torch.float32)
    c = math.sqrt(c2)
    device = layer.X.device
    keep = torch.ones(size, d_out, device=device)
    if mask is not None:
        keep[:d_in] = mask.T.to(torch.float32)
    shrink_scale = torch.ones(size, 1, device=device)
    if use_bias:
        shrink_scale[d_in] = 0.0
    if state is None:
        w = torch.zeros(size, d_out, device=device)
        if weight is not None:
            w[:d_in] = weight.T
        if bias is not None and use_bias:
            w[d_in] = bias
        w = layer.to_centred(w * keep)
        z = _project(layer.mv(w), target, active, radius)
        mean_abs = float(w[:d_in].abs().mean()) or 1.0
        rho = 1.0 / (c2 * mean_abs) if rho is None else rho
        if rho <= 0:
            raise ConfigError(f"Net-Trim rho must be > 0, got {rho}")
        state = NetTrimState(w, z, w.clone(), torch.zeros_like(z), torch.zeros_like(w),
                             torch.full((d_out,), float(rho), device=device))
    w, z, v, u, s, rho = (state.w.clone(), state.z.clone(), state.v.clone(), state.u.clone(),
                          state.s.clone(), state.rho.clone())
    if max_iters < 1:
        raise ConfigError(f"Net-Trim max_iters must be >= 1, got {max_iters}")
    primal = math.inf
    it = 0
    for it in range(1, max_iters + 1):
        w = torch.cholesky_solve(layer.tmv(z - u) + c * (c * v - s), chol32)
        xw = layer.mv(w)
        z_old, v_old = z, v
        z = _project(xw + u, target, active, radius)
        point = w + s / c
        threshold = shrink_scale / (rho * c2)
        v = torch.sign(point) * (point.abs() - threshold).clamp_min(0.0) * keep
        u += xw - z
        s += c * (w - v)
        # Residuals cost two extra products: checked every _CHECK_EVERY steps only.
        if it % _CHECK_EVERY and it != max_iters:
            continue
        # Boyd et al. §3.3.1 stopping rule on the whole layer (Frobenius norms): a neuron that is
        # active on a handful of samples has a tiny target and would dominate a per-neuron max.
        r_primal = ((xw - z).pow(2).sum() + c2 * (w - v).pow(2).sum()).sqrt()
        r_dual = (rho * (layer.tmv(z - z_old) + c2 * (v - v_old))).norm()
        scale_p = torch.maximum(z.norm(), (c * v).norm()).clamp_min(1e-12)
        scale_d = (rho * (layer.tmv(u) + c * s)).norm().clamp_min(1e-12)
        primal = float(r_primal / scale_p)
        if primal < tol and float(r_dual / scale_d) < tol:
            break
    state = NetTrimState(w, z, v, u, s, rho)
    plain = layer.from_centred(v)
    out_w = plain[:d_in].T.contiguous()
    out_b = plain[d_in].clone() if use_bias else None
    return NetTrimResult(out_w, out_b, state, it, primal)


def nettrim_constraints(X: torch.Tensor, outputs: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """How well a solution meets Net-Trim's constraints, per neuron.

    Args:
        X: ``(N, d_in)`` inputs. outputs: ``(N, d_out)`` original pre-activations.
        weight, bias: the solution.

    Returns:
        ``(fit, leak)``: ``||(X̃w − a)_Ω|| / ||a_Ω||`` (compare with ε) and
        ``max((X̃w)_Ωᶜ) / max(a)`` (≤ 0 when inactive samples stay inactive), each ``(d_out,)``.
    """
    pre = X @ weight.T + (0 if bias is None else bias)
    active = outputs > 0
    fit = ((pre - outputs) * active).norm(dim=0) / (outputs * active).norm(dim=0).clamp_min(1e-12)
    leak = torch.where(active, torch.full_like(pre, -math.inf), pre).amax(0)
    return fit, leak / outputs.abs().amax().clamp_min(1e-12)


@torch.no_grad()
def least_squares_refit(X: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor,
                        use_bias: bool = True, damping: float = 1e-6):
    """Refit each neuron's kept weights (and bias) to its pre-activations by least squares.

    ``w_S = argmin ||X̃_S w_S − a||²`` per neuron over its kept set S: the ℓ1 program shrinks
    every surviving weight (as the Lasso does), and this debiasing undoes it. It fits all samples'
    pre-activations, so Net-Trim's inactive-sample constraint is not enforced by it.

    Args:
        X: ``(N, d_in)`` inputs. outputs: ``(N, d_out)`` pre-activations.
        mask: ``(d_out, d_in)`` kept weights. use_bias: fit a bias too.
        damping: relative ridge on the normal equations (keeps them invertible).

    Returns:
        ``(weight, bias)``: float32, zero off the mask; bias None without ``use_bias``.
    """
    Xd = X.to(torch.float64)
    if use_bias:
        Xd = torch.cat((Xd, torch.ones(Xd.shape[0], 1, dtype=Xd.dtype, device=Xd.device)), 1)
    gram = Xd.T @ Xd / Xd.shape[0]
    gram += damping * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    rhs = Xd.T @ outputs.to(torch.float64) / Xd.shape[0]
    d_out, d_in = mask.shape
    out = torch.zeros(d_out, gram.shape[0], dtype=torch.float64, device=gram.device)
    for row in range(d_out):
        kept = torch.cat((mask[row], torch.ones(int(use_bias), dtype=torch.bool, device=mask.device))).nonzero().flatten()
        if kept.numel():
            factor = torch.linalg.cholesky(gram[kept][:, kept])
            out[row, kept] = torch.cholesky_solve(rhs[kept, row:row + 1], factor).flatten()
    weight = out[:, :d_in].to(torch.float32)
    return weight, (out[:, d_in].to(torch.float32) if use_bias else None)


def _solve_layer(hp, problem: LayerProblem):
    X, outputs = problem.data.inputs, problem.data.outputs
    use_bias = problem.bias is not None
    common = dict(use_bias=use_bias, mask=problem.mask, tol=hp.tol)
    layer = _Layer(X, use_bias)
    gram = layer.gram()
    c2 = float(gram.diagonal().mean())
    factor = (torch.linalg.cholesky(gram + c2 * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)), c2)
    start = nettrim_solve(X, outputs, hp.epsilon, weight=problem.weight, bias=problem.bias,
                          rho=hp.rho,
                          max_iters=hp.search_iters if hp.search_steps else hp.max_iters,
                          _factor=factor, **common)
    probes = [{"epsilon": hp.epsilon, "nonzeros": int((start.weight != 0).sum())}]
    best, best_eps = start, hp.epsilon
    if hp.search_steps:
        lo, hi = math.log(hp.epsilon_min), math.log(hp.epsilon_max)
        state = start.state
        for _ in range(hp.search_steps):
            eps = math.exp((lo + hi) / 2)
            probe = nettrim_solve(X, outputs, eps, state=state, max_iters=hp.search_iters,
                                  _factor=factor, **common)
            nonzeros = int((probe.weight != 0).sum())
            probes.append({"epsilon": eps, "nonzeros": nonzeros})
            state = probe.state
            if nonzeros >= problem.n_keep:
                lo = math.log(eps)
                if (int((best.weight != 0).sum()) < problem.n_keep
                        or nonzeros <= int((best.weight != 0).sum())):
                    best, best_eps = probe, eps
            else:
                hi = math.log(eps)
        best = nettrim_solve(X, outputs, best_eps, state=best.state, max_iters=hp.max_iters,
                             _factor=factor, **common)
    weight, bias = best.weight, best.bias
    nonzeros = int((weight != 0).sum())
    score = torch.where(weight != 0, weight.abs() + 1.0, 1.0 - 1.0 / (1.0 + problem.weight.abs()))
    mask = top_k_mask(score, problem.mask, problem.n_keep)
    weight = weight * mask
    if hp.refit:
        weight, bias = least_squares_refit(X, outputs, mask, use_bias)
    fit, leak = nettrim_constraints(X, outputs, weight, bias)
    active = outputs > 0
    pre = X @ weight.T + (0 if bias is None else bias)
    layer_fit = float(((pre - outputs) * active).norm() / (outputs * active).norm().clamp_min(1e-12))
    info = {"epsilon": best_eps, "solution_nonzeros": nonzeros, "iters": best.iters,
            "primal_residual": best.primal, "fit_after_cut": layer_fit,
            "worst_neuron_fit_after_cut": float(fit.max()), "leak_after_cut": float(leak.max()),
            "probes": probes}
    return weight, bias, mask, info


@dataclass(frozen=True)
class NetTrimHparams(LayerwiseHparams):
    """Hyperparameters of Net-Trim.

    Attributes:
        epsilon: relative fit tolerance ε (module docstring); the start of the search.
        search_steps: bisection probes on log ε (0: no search, use ``epsilon``).
        epsilon_min, epsilon_max: search bracket.
        search_iters: ADMM iterations per probe (warm-started).
        max_iters: ADMM iterations of the final solve.
        tol: relative residual tolerance of ADMM.
        rho: ADMM penalty; None = ``1 / (c² mean|w|)`` from the trained weights.
        refit: after the cut, refit the kept weights by least squares
            (:func:`least_squares_refit`; beyond the paper, off by default).
        layers: weight names to prune; None = every prunable layer but the last.
        include_last: with ``layers=None``, prune the last layer too.
        mode: ``"parallel"`` or ``"sequential"`` (Net-Trim's cascade) capture.
        max_samples: calibration rows used per layer (None: all).
        seed: seeds the row subsample.
    """

    epsilon: float = 0.1
    search_steps: int = 8
    epsilon_min: float = 1e-3
    epsilon_max: float = 1.0
    search_iters: int = 50
    max_iters: int = 300
    tol: float = 1e-3
    rho: float | None = None
    refit: bool = False

    def __post_init__(self):
        check_common_hparams(self, "Net-Trim", patterns=False)
        if not 0 < self.epsilon_min < self.epsilon_max:
            raise ConfigError("Net-Trim needs 0 < epsilon_min < epsilon_max")
        if self.epsilon <= 0:
            raise ConfigError(f"Net-Trim epsilon must be > 0, got {self.epsilon}")
        if self.rho is not None and self.rho <= 0:
            raise ConfigError(f"Net-Trim rho must be > 0 or None, got {self.rho}")
        if self.search_steps < 0 or self.search_iters < 1 or self.max_iters < 1:
            raise ConfigError("Net-Trim needs search_steps >= 0, search_iters >= 1, max_iters >= 1")


@register("nettrim")
class NetTrim(OneShotMethod):
    """Net-Trim layer-wise convex pruning by ADMM (Aghasi et al. 2017; module docstring): per
    neuron, min ||w_m||₁ s.t. ||(X̃ w_m − a_m)_{Ω_m}||₂ ≤ ε_m, (X̃ w_m)_{Ω_mᶜ} ≤ 0.

    Each chosen layer (default: all prunable layers but the last; each must be followed by a
    ReLU) is pruned to ``sparsity`` of its weights; surviving weights and biases are rewritten.
    ``self.last_info`` lists per layer ε, iterations, constraint errors after the cut, seconds.
    ``calib`` is any calibration data (a ``Split``, a tensor of inputs, an ``(x, y)`` pair, a
    ``TensorDataset``, a ``DataLoader`` of ``(x, y)`` or of dicts of token ids, a ``Calibration``
    with its ``forward_fn``); layers may be ``nn.Linear``, ``nn.Conv1d/2d``, HuggingFace
    ``Conv1D`` and ``nn.MultiheadAttention`` projections (:mod:`prunelab.methods.layerwise.layers`).
    """

    Hparams = NetTrimHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        hp = self.hparams
        sparsity = check_sparsity(sparsity)
        result, self.last_info = prune_with_solver("Net-Trim", model, masks, sparsity, calib, hp, lambda p: _solve_layer(hp, p))
        return result
