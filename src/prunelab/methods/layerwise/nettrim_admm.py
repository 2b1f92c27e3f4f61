"""The ADMM solver of Net-Trim's layer program (Aghasi, Abdi, Nguyen, Romberg, NIPS 2017).

For a ReLU layer with inputs ``x_i`` and original pre-activations ``a_i = W x_i + b``, Net-Trim
finds, for every output neuron m with active set Ω_m = {i : a_im > 0} (the paper's program (3),
with the bias fitted but not penalised, as prunelab never prunes biases),

    min ||w_m||₁   s.t.   ||(X̃ w_m − a_m)_{Ω_m}||₂ ≤ ε_m,   (X̃ w_m)_{Ω_mᶜ} ≤ 0,     X̃ = [X, 1].

For a layer without a ReLU (``output="linear"``) it solves the paper's program for its last
layer (Aghasi et al., the ReLU-free case of program (3), used there for the network's output
layer): the constraint covers every sample, with no inactive set,

    min ||w_m||₁   s.t.   ||X̃ w_m − a_m||₂ ≤ ε_m.

The same ADMM serves both: only the projection onto C changes (a ball around the whole ``a_m``).

All neurons of a layer are solved at once, one column each. With the rows scaled by 1/√N, the
inputs centred (``Xw + b = (X − μ)w + (b + μᵀw)``: the unpenalised bias absorbs the mean, which
removes the huge mean direction of non-negative inputs from X̃ᵀX̃; without it ADMM drifted on such
layers) and ``c² = trace(X̃ᵀX̃/N) / D`` balancing the two constraints, ADMM (Boyd et al. 2011,
§3.1 in scaled form, with the over-relaxation of §3.4.3) splits ``X̃w = z`` (z in the constraint
set C) and ``c w = c v`` (v carries the ℓ1 norm):

    w ← M (X̃ᵀ(z − u) + c(c v − s)),   M = (X̃ᵀX̃ + c² I)⁻¹      (Boyd (3.5): one factor per layer)
    x̂ ← α X̃w + (1 − α) z;   ŵ ← α w + (1 − α) v                 (over-relaxation, Boyd (3.19))
    z ← Proj_C(x̂ + u)                                          ball around a_Ω on Ω, clamp ≤ 0 off Ω
    v ← soft(ŵ + s/c, 1/(ρ c²))                                (Boyd (3.6) with §4.4.3; bias: no shrinkage)
    u ← u + x̂ − z;   s ← s + c(ŵ − v)                           (Boyd (3.7))

Cost per iteration: two products with the N × D inputs (X̃w and X̃ᵀ(z − u)) and one D × D
product with M; both N-sized products are needed (the projection is per sample and per neuron,
so it cannot be done in the D × D Gram space), so everything else is kept to in-place passes.
M is formed once in float64 (Cholesky, then its inverse: ``X̃ᵀX̃/N + c² I`` has condition number at
most D + 1, so the explicit inverse is safe in float32 and a plain matrix product is several times
faster than two triangular solves); the iteration runs in float32.

ρ is fixed (default ``1 / (c² mean|w_trained|)``, so the first ℓ1 step shrinks by about the mean
weight): residual balancing (Boyd et al. 2011, §3.4.1) was tried and dropped, as it drove ρ to
zero on layers with nearly-dead neurons and the ℓ1 step then erased every weight. The stopping
rule is Boyd's relative primal/dual residual test (§3.3.1) on the whole layer (``tol``), checked
every 10 steps (the dual residual, which costs two more N-sized products, only once the primal one
passes). The weights returned are v (exactly sparse); at convergence X̃v = z meets the constraints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunelab.errors import ConfigError

_CHECK_EVERY = 10
#: what follows the layer: a ReLU (program (3)) or nothing (the last-layer program).
OUTPUTS = ("relu", "linear")


def constraint_target(outputs: torch.Tensor, scale: float, output: str = "relu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(active, target)`` of the constraint set C: Ω as 0/1 floats and the scaled target, 0 off Ω.

    ``"relu"``: Ω = {a > 0}, target ``max(a, 0)·scale``; ``"linear"``: Ω = every sample, target
    ``a·scale`` (the last-layer program: the whole output is fitted, negative entries included).
    """
    if output == "linear":
        target = outputs.to(torch.float32) * scale
        return torch.ones_like(target), target
    return (outputs > 0).to(torch.float32), outputs.to(torch.float32).clamp_min(0.0) * scale


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

    def columns(self, index: torch.Tensor) -> "NetTrimState":
        """The iterate of the neurons ``index`` only (copies)."""
        return NetTrimState(*(t[..., index].clone() for t in (self.w, self.z, self.v, self.u, self.s, self.rho)))

    def set_columns(self, index: torch.Tensor, part: "NetTrimState") -> None:
        """Overwrite the neurons ``index`` with ``part`` (e.g. a warm start found on a subset)."""
        for name in ("w", "z", "v", "u", "s", "rho"):
            getattr(self, name)[..., index] = getattr(part, name)


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


class NetTrimLayer:
    """Products with X̃/√N, X̃ = [X − μ, 1], without materialising either, and the layer's factor.

    With an unpenalised bias, ``Xw + b = (X − μ)w + (b + μᵀw)``: centring the inputs only
    re-expresses the bias and leaves the ℓ1 problem unchanged, but it removes the large mean
    direction of non-negative inputs (pixels, post-ReLU activations) from X̃ᵀX̃, without which
    ADMM stalls or drifts on such layers. Without a bias nothing is centred. The factor
    ``M = (X̃ᵀX̃/N + c² I)⁻¹`` and ``c²`` depend on the inputs only, so one layer object serves
    every ε, every probe and every subset of neurons.

    Args:
        X: ``(N, d_in)`` layer inputs (kept as a float32 reference, not copied when float32).
        bias: whether the layer has a (fitted, unpenalised) bias.
    """

    def __init__(self, X: torch.Tensor, bias: bool):
        self.X = X.to(torch.float32).contiguous()
        self.bias = bias
        self.n, self.d_in = self.X.shape
        self.size = self.d_in + int(bias)
        self.scale = 1.0 / math.sqrt(self.n)
        self.mean = self.X.to(torch.float64).mean(0).to(torch.float32) if bias else None
        gram = self.gram()
        self.c2 = float(gram.diagonal().mean())
        eye = torch.eye(self.size, dtype=gram.dtype, device=gram.device)
        self.inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram + self.c2 * eye)).to(torch.float32)

    def mv(self, w: torch.Tensor) -> torch.Tensor:
        """``X̃ w / √N`` for ``w`` ``(D, k)``: one fused product."""
        inner = w[: self.d_in]
        if not self.bias:
            return torch.mm(self.X, inner).mul_(self.scale)
        offset = (w[self.d_in:] - self.mean @ inner).mul_(self.scale)
        return torch.addmm(offset, self.X, inner, alpha=self.scale)

    def mv_into(self, w: torch.Tensor, out: torch.Tensor, alpha: float) -> torch.Tensor:
        """``out + alpha · X̃ w / √N``, computed in ``out`` (one in-place product)."""
        inner = w[: self.d_in]
        if self.bias:
            out.add_((w[self.d_in:] - self.mean @ inner), alpha=alpha * self.scale)
        return out.addmm_(self.X, inner, alpha=alpha * self.scale)

    def tmv(self, r: torch.Tensor) -> torch.Tensor:
        """``X̃ᵀ r / √N`` for ``r`` ``(N, k)``."""
        out = torch.mm(self.X.T, r)
        if not self.bias:
            return out.mul_(self.scale)
        total = r.sum(0, keepdim=True)
        out.addr_(self.mean, total.squeeze(0), alpha=-1.0)
        return torch.cat((out, total)).mul_(self.scale)

    def gram(self) -> torch.Tensor:
        """``X̃ᵀX̃/N`` in float64 (centred, with the bias coordinate)."""
        X = self.X.to(torch.float64)
        if not self.bias:
            return X.T @ X / self.n
        centred = X - X.mean(0)
        g = torch.zeros(self.size, self.size, dtype=X.dtype, device=X.device)
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
        """(weights; b + μᵀw) → (weights; bias)."""
        if self.bias:
            w = w.clone()
            w[self.d_in] -= self.mean @ w[: self.d_in]
        return w


def _project_(h: torch.Tensor, target: torch.Tensor, active: torch.Tensor, radius: torch.Tensor,
              u: torch.Tensor, work: torch.Tensor) -> None:
    """In place: ``h`` becomes ``z = Proj_C(h)`` and ``u`` becomes ``h − z`` (``work``: scratch).

    C = {z : ||(z − target)_Ω|| ≤ radius, z_Ωᶜ ≤ 0}, column-wise (Aghasi et al.'s constraints).
    ``target`` is 0 off Ω, so ``d = h − target`` equals ``h`` there: ``h − z`` is ``(1 − f)·d`` on Ω
    (f = min(1, radius/||d_Ω||), the ball's shrink factor) and ``max(d, 0)`` off Ω, i.e.
    ``u = max(d − d_Ω, 0) + (1 − f)·d_Ω``. ``active`` is Ω as 0/1 floats.
    """
    d = h.sub_(target)
    d_active = torch.mul(d, active, out=work)
    norm = torch.mul(d_active, d_active, out=u).sum(0).sqrt_()
    shrink = (1.0 - radius / norm.clamp_min(1e-30)).clamp_min_(0.0)
    torch.sub(d, d_active, out=u).clamp_min_(0.0).addcmul_(d_active, shrink)
    d.add_(target).sub_(u)


def initial_state(layer: NetTrimLayer, outputs: torch.Tensor, epsilon: float, weight: torch.Tensor | None,
                  bias: torch.Tensor | None, mask: torch.Tensor | None, rho: float | None,
                  output: str = "relu") -> NetTrimState:
    """The cold ADMM start: w = v = the given weights (centred), z = Proj_C(X̃w), u = s = 0.

    Args:
        layer: the layer's inputs and factor. outputs: ``(N, d_out)`` pre-activations.
        epsilon: relative ε. weight, bias: the start (default 0). mask: allowed weights.
        rho: ADMM penalty; None = ``1 / (c² mean|w₀|)``.
        output: ``"relu"`` (program (3)) or ``"linear"`` (the last-layer program).

    Returns:
        :class:`NetTrimState`.
    """
    d_out = outputs.shape[1]
    device = layer.X.device
    w = torch.zeros(layer.size, d_out, device=device)
    if weight is not None:
        w[: layer.d_in] = weight.T * (1.0 if mask is None else mask.T.to(torch.float32))
    if bias is not None and layer.bias:
        w[layer.d_in] = bias
    w = layer.to_centred(w)
    active, target = constraint_target(outputs, layer.scale, output)
    z = layer.mv(w)
    _project_(z, target, active, epsilon * target.norm(dim=0), torch.empty_like(z), torch.empty_like(z))
    mean_abs = float(w[: layer.d_in].abs().mean()) or 1.0
    rho = 1.0 / (layer.c2 * mean_abs) if rho is None else rho
    if rho <= 0:
        raise ConfigError(f"Net-Trim rho must be > 0, got {rho}")
    return NetTrimState(w, z, w.clone(), torch.zeros_like(z), torch.zeros_like(w),
                        torch.full((d_out,), float(rho), device=device))


@torch.no_grad()
def nettrim_solve(X: torch.Tensor, outputs: torch.Tensor, epsilon: float, *,
                  weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  use_bias: bool = True, mask: torch.Tensor | None = None,
                  state: NetTrimState | None = None, rho: float | None = None,
                  max_iters: int = 500, tol: float = 1e-3, alpha: float = 1.6,
                  layer: NetTrimLayer | None = None, output: str = "relu") -> NetTrimResult:
    """Net-Trim's per-layer convex program by over-relaxed ADMM (module docstring).

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
        alpha: over-relaxation α in (0, 2) (Boyd et al. 2011, §3.4.3); 1 is plain ADMM. 1.6
            reached a given residual in about 30 % fewer iterations on MLP layers.
        layer: a :class:`NetTrimLayer` of ``X`` built before (it holds the factorisation; shared
            across calls on the same inputs), or None to build it here.
        output: ``"relu"`` (program (3): fit the active outputs, keep the others ≤ 0) or
            ``"linear"`` (the paper's last-layer program: fit every output within ε).

    Returns:
        :class:`NetTrimResult`.

    Example:
        >>> result = nettrim_solve(X, X @ W.T + b, 0.1, weight=W, bias=b)
        >>> fit, leak = nettrim_constraints(X, X @ W.T + b, result.weight, result.bias)
    """
    if epsilon <= 0:
        raise ConfigError(f"Net-Trim epsilon must be > 0, got {epsilon}")
    if max_iters < 1:
        raise ConfigError(f"Net-Trim max_iters must be >= 1, got {max_iters}")
    if not 0.0 < alpha < 2.0:
        raise ConfigError(f"Net-Trim alpha (over-relaxation) must be in (0, 2), got {alpha}")
    if output not in OUTPUTS:
        raise ConfigError(f"Net-Trim output must be one of {OUTPUTS}, got {output!r}")
    layer = NetTrimLayer(X, use_bias) if layer is None else layer
    d_in, size = layer.d_in, layer.size
    device = layer.X.device
    active, target = constraint_target(outputs, layer.scale, output)
    radius = epsilon * target.norm(dim=0)
    if state is None:
        state = initial_state(layer, outputs, epsilon, weight, bias, mask, rho, output)
    keep = None
    if mask is not None:
        keep = torch.ones(size, outputs.shape[1], device=device)
        keep[:d_in] = mask.T.to(torch.float32)
    w, z, v, u, s, rho = (state.w.clone(), state.z.clone(), state.v.clone(), state.u.clone(),
                          state.s.clone(), state.rho.clone())
    c2, M = layer.c2, layer.inverse
    c = math.sqrt(c2)
    threshold = (1.0 / (rho * c2)).expand(size, -1).clone()
    if use_bias:
        threshold[d_in] = 0.0
    work = torch.empty_like(z)
    primal = math.inf
    it = 0
    for it in range(1, max_iters + 1):
        rhs = layer.tmv(torch.sub(z, u, out=work)).add_(v, alpha=c2).sub_(s, alpha=c)
        w = torch.mm(M, rhs)
        checking = it % _CHECK_EVERY == 0 or it == max_iters
        z_old, v_old = (z.clone(), v) if checking else (None, v)
        # The N-sized buffers are reused in place (fresh 16 MB tensors each step cost page faults):
        # z's storage becomes h = α X̃w + (1 − α) z + u = x̂ + u, then Proj_C(h).
        h = layer.mv_into(w, z.mul_(1.0 - alpha).add_(u), alpha)
        if checking:
            x_plain = (h - u - z_old * (1.0 - alpha)) / alpha       # X̃w, for the primal residual
        _project_(h, target, active, radius, u, work)
        z = h
        w_hat = w * alpha + v_old * (1.0 - alpha)
        point = w_hat + s / c
        v = point.abs().sub_(threshold).clamp_min_(0.0).mul_(point.sign())
        if keep is not None:
            v.mul_(keep)
        s.add_(w_hat.sub_(v), alpha=c)
        if not checking:
            continue
        # Boyd et al. §3.3.1 stopping rule on the whole layer (Frobenius norms): a neuron that is
        # active on a handful of samples has a tiny target and would dominate a per-neuron max.
        r_primal = ((x_plain - z).pow(2).sum() + c2 * (w - v).pow(2).sum()).sqrt()
        scale_p = torch.maximum(z.norm(), (c * v).norm()).clamp_min(1e-12)
        primal = float(r_primal / scale_p)
        del x_plain
        if primal >= tol:
            continue
        r_dual = (rho * (layer.tmv(z - z_old) + c2 * (v - v_old))).norm()
        scale_d = (rho * (layer.tmv(u) + c * s)).norm().clamp_min(1e-12)
        if float(r_dual / scale_d) < tol:
            break
    state = NetTrimState(w, z, v, u, s, rho)
    plain = layer.from_centred(v)
    out_w = plain[:d_in].T.contiguous()
    out_b = plain[d_in].clone() if use_bias else None
    return NetTrimResult(out_w, out_b, state, it, primal)
