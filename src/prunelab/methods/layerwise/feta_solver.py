"""FeTa's layer solver: DCA with accelerated proximal SVRG (Pitas et al., arXiv:1803.04239).

For one layer with inputs ``x_i`` and original post-ReLU outputs ``y_i`` FeTa solves (the objective
of the official ``feta_main.py``)

    (1)  min_{W,b} F = (1/N) Σ_i ||ρ_θ(W x_i + b) − y_i||² + λ ||W||₁,   ρ_θ(z) = log(1 + e^{θz}) / θ.

Dropping the constant ||y_i||², F = g − h with

    (2)  g = (1/N) Σ ||ρ_θ(W x_i + b)||² + λ||W||₁,   h = (2/N) Σ y_iᵀ ρ_θ(W x_i + b),

both convex because y ≥ 0 and ρ_θ ≥ 0 is convex. DCA linearises h at the current point
(``∇h`` uses ρ_θ' = sigmoid(θz)) and minimises the convex remainder with accelerated proximal
SVRG (Nitanda 2014; the official ``SVRG_minibatch_acc``): per epoch the full gradient of the smooth
part of g at a snapshot, then m variance-reduced mini-batch steps

    (3)  X ← prox_{λη}(Y − η (v − ∇h)),   Y ← X + β (X − X_prev),

with ``v`` the SVRG gradient estimate. The prox is a soft threshold at ``τ = λη``. How this module
departs from the official code (step size, inner steps) is explained in
:mod:`prunelab.methods.layerwise.feta`. Every output unit (row of W) is an independent problem:
the fit, the ℓ1 term, the prox and the momentum all act row by row, so a solve restricted to some
``units`` gives those rows of the full solve (same seed, same mini-batches).

A layer whose output is not followed by a ReLU (``output="linear"``; every Linear layer of a
transformer block) has no post-ReLU target to fit. There the solver takes ρ as the identity: our
adaptation, not in the paper, but the same objective

    (1')  min_{W,b} F = (1/N) Σ_i ||W x_i + b − y_i||² + λ ||W||₁,

a convex lasso (y_i the whole output, negative entries included) that the same machinery solves
exactly as it stands: with ρ(z) = z, h in (2) is linear in (W, b), so DCA's linearisation is exact
and every outer iteration just continues accelerated proximal SVRG on (1'), with the per-sample
gradient factor 2z and the step 1/L, L = 2 λmax(X̃ᵀX̃/N) (the curvature bound is exactly 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prunelab.errors import ConfigError

STEP_RULES = ("lipschitz", "fixed")
#: what follows the layer: a ReLU (the paper's eq. (1)) or nothing (eq. (1'), the whole output).
OUTPUTS = ("relu", "linear")
#: bound on d²/dz² ρ_θ(z)² / 2 = ρ'² + ρρ'' over z (θ-free: ≈ 1.045 at θz ≈ 3), so the smooth part
#: of g in (2) has a gradient Lipschitz constant ≤ 2 · 1.05 · λmax(X̃ᵀX̃ / N), X̃ = [X, 1].
CURVATURE_BOUND = 1.05


@dataclass
class FetaResult:
    """Output of :func:`feta_solve`.

    Attributes:
        weight: ``(d_out, d_in)`` solution (exact zeros where pruned); only the solved ``units``' rows.
        bias: ``(d_out,)`` solution.
        objective: F after initialisation and after each DCA iteration (empty unless
            ``record_objective``).
        tau: the prox threshold τ = λ η₀ in the units of the nominal step η₀ (``step``).
        step: the step η the iterations used (η₀, or 1/L̂ with ``step_rule="lipschitz"``).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    objective: list[float] = field(default_factory=list)
    tau: float = 0.0
    step: float = 0.0


def feta_objective(X: torch.Tensor, Y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   theta: float = 10.0, lam: float = 0.0, shrink_bias: bool = False,
                   output: str = "relu") -> float:
    """F(W, b) of eq. (1): (1/N) Σ ||ρ_θ(W x_i + b) − y_i||² + λ||W||₁ (``+ λ||b||₁`` when
    ``shrink_bias``); with ``output="linear"`` eq. (1'), ρ the identity.

    Args:
        X: ``(N, d_in)`` layer inputs. Y: ``(N, d_out)`` post-ReLU targets (``"linear"``: the
            layer's outputs).
        weight: ``(d_out, d_in)``. bias: ``(d_out,)``.
        theta: softplus sharpness θ. lam: ℓ1 weight λ (``τ / η`` for prox threshold τ).
        shrink_bias: count the bias in the ℓ1 term.
        output: ``"relu"`` (eq. (1)) or ``"linear"`` (eq. (1')).

    Returns:
        The objective value (float).

    Example:
        >>> feta_objective(X, torch.relu(X @ W.T + b), W, b, lam=1e-3)
    """
    z = X @ weight.T + bias
    fit = ((z if output == "linear" else F.softplus(z, beta=theta)) - Y).pow(2).sum().item() / X.shape[0]
    l1 = weight.abs().sum().item() + (bias.abs().sum().item() if shrink_bias else 0.0)
    return fit + lam * l1


def _dsq(z: torch.Tensor, theta: float) -> torch.Tensor:
    """d/dz ρ_θ(z)² = 2 ρ_θ(z) sigmoid(θz), the per-sample gradient factor of g in eq. (2) (the
    true derivative; the official ``grad_apr`` is wrong for θz ≥ 10, see the method's docstring)."""
    return F.softplus(z, beta=theta).mul_(torch.sigmoid(theta * z)).mul_(2.0)


def _grad_factor(z: torch.Tensor, theta: float, linear: bool) -> torch.Tensor:
    """d/dz ρ(z)²: :func:`_dsq`, or ``2z`` (in place) when ρ is the identity (eq. (1'))."""
    return z.mul_(2.0) if linear else _dsq(z, theta)


@torch.no_grad()
def feta_lipschitz(X: torch.Tensor, iters: int = 50, curvature: float = CURVATURE_BOUND) -> float:
    """L̂ = 2 · 1.05 · λmax(X̃ᵀX̃ / N), X̃ = [X, 1]: a bound on the gradient Lipschitz constant of
    the smooth part of g in eq. (2) (the Hessian of ρ_θ(w·x̃)² is 2(ρ'² + ρρ'') x̃x̃ᵀ and
    ρ'² + ρρ'' ≤ 1.05), λmax by power iteration from the all-ones vector.

    Args:
        X: ``(N, d_in)`` layer inputs.
        iters: power iterations.
        curvature: the bound on ρ'² + ρρ'' (1.0 for ρ the identity, eq. (1')).

    Returns:
        L̂ (0.0 when X is zero).

    Example:
        >>> step = 1.0 / feta_lipschitz(X)
    """
    n = X.shape[0]
    v = torch.ones(X.shape[1] + 1, dtype=X.dtype, device=X.device)
    top = 0.0
    for _ in range(iters):
        norm = v.norm()
        if float(norm) == 0.0:
            return 0.0
        v = v / norm
        u = X @ v[:-1] + v[-1]
        v = torch.cat([X.T @ u, u.sum().reshape(1)]) / n
        top = float(v.norm())
    return 2.0 * curvature * top


@torch.no_grad()
def feta_solve(X: torch.Tensor, Y: torch.Tensor, tau: float, *, theta: float = 10.0,
               outer_iters: int = 4, epochs: int = 3, batch_size: int = 200, step: float = 1e-3,
               step_rule: str = "fixed", min_steps: int = 0, momentum: float = 0.95,
               init_weight: torch.Tensor | None = None, init_bias: torch.Tensor | None = None,
               init_std: float = 1e-3, support: torch.Tensor | None = None,
               shrink_bias: bool = False, use_bias: bool = True, seed: int = 0,
               units: torch.Tensor | None = None, record_objective: bool = False,
               output: str = "relu") -> FetaResult:
    """FeTa's DCA (eq. (2)) with accelerated prox-SVRG steps (eq. (3)) for one layer.

    The defaults are the official ``feta_main.py``: η = 1e-3 fixed and ``N // b`` inner steps per
    epoch; the method's defaults differ (see :mod:`prunelab.methods.layerwise.feta`).

    Args:
        X: ``(N, d_in)`` float32 layer inputs.
        Y: ``(N, d_out)`` targets: the original layer's post-ReLU outputs (clamped at 0 here);
            with ``output="linear"`` its whole outputs (not clamped).
        tau: soft threshold per step at the nominal step η₀ = ``step``, ``≥ 0``: λ = τ / η₀.
        theta: softplus sharpness θ (10).
        outer_iters: DCA iterations K (4).
        epochs: SVRG epochs S per DCA iteration (3).
        batch_size: mini-batch b (200), drawn with replacement.
        step: nominal step η₀ (1e-3); it defines λ, and is the step used when ``step_rule="fixed"``.
        step_rule: ``"fixed"`` (η = η₀, the official code) or ``"lipschitz"`` (η = 1/L̂ of
            :func:`feta_lipschitz`; the prox threshold becomes λη, so F is unchanged).
        min_steps: inner steps per epoch are ``max(N // b, min_steps)`` (the official: N // b).
        momentum: acceleration β (0.95).
        init_weight, init_bias: warm start ``(d_out, d_in)`` / ``(d_out,)``; None = N(0, init_std²).
        init_std: standard deviation of the random initialisation (1e-3).
        support: ``(d_out, d_in)`` bool; weights outside it are held at zero (already pruned).
        shrink_bias: soft-threshold the bias too (official code).
        use_bias: fit a bias; False holds it at 0 (a layer without bias).
        seed: seeds the initialisation and the mini-batches.
        units: output-unit indices to solve (None: all); the result has their rows only and they
            equal the full solve's rows (the random init is drawn for the whole layer).
        record_objective: record F after init and after every DCA iteration (one extra pass each).
        output: ``"relu"`` (eq. (1), the paper) or ``"linear"`` (eq. (1'): ρ the identity, the
            whole output fitted; module docstring).

    Returns:
        :class:`FetaResult`.

    Example:
        >>> result = feta_solve(X, torch.relu(X @ W.T + b), 1e-4, step_rule="lipschitz")
    """
    if tau < 0:
        raise ConfigError(f"tau must be >= 0, got {tau}")
    if step_rule not in STEP_RULES:
        raise ConfigError(f"FeTa step_rule must be one of {STEP_RULES}, got {step_rule!r}")
    if output not in OUTPUTS:
        raise ConfigError(f"FeTa output must be one of {OUTPUTS}, got {output!r}")
    linear = output == "linear"
    X = X.to(torch.float32).contiguous()
    targets = Y.to(torch.float32) if linear else Y.to(torch.float32).clamp_min(0.0)
    n, d_in = X.shape
    device = X.device
    # A CPU generator: the same seed draws the same numbers on every device.
    gen = torch.Generator().manual_seed(seed)
    if init_weight is None:
        w = (torch.randn(d_in, targets.shape[1], generator=gen) * init_std).to(device)
        b = (torch.randn(targets.shape[1], generator=gen) * init_std).to(device)
    else:
        w = init_weight.T.to(device=device, dtype=torch.float32).clone()
        b = (torch.zeros(targets.shape[1], device=device) if init_bias is None
             else init_bias.to(device=device, dtype=torch.float32).clone())
    keep = None if support is None else support.T.to(device=device, dtype=torch.float32)
    if units is not None:
        units = units.to(device)
        w, b, targets = w[:, units], b[units], targets[:, units]
        keep = None if keep is None else keep[:, units]
    w, targets = w.contiguous(), targets.contiguous()
    keep = None if keep is None else keep.contiguous()
    if not use_bias:
        b = torch.zeros_like(b)
    if keep is not None:
        w.mul_(keep)
    lam = tau / step
    eta = step
    if step_rule == "lipschitz":
        lipschitz = feta_lipschitz(X, curvature=1.0) if linear else feta_lipschitz(X)
        eta = 1.0 / lipschitz if lipschitz > 0 else step
    threshold = lam * eta
    history = []
    if record_objective:
        history.append(feta_objective(X, targets, w.T, b, theta, lam, shrink_bias, output))
    batch = min(batch_size, n)
    steps_per_epoch = max(1, n // batch, min_steps)
    extrapolate = 1.0 + momentum   # lerp(prev, new, 1 + β) = new + β (new − prev)

    for _ in range(outer_iters):
        # One pass gives ∇h at the DCA point and the first snapshot's full gradient.
        z = torch.addmm(b, X, w)
        if linear:   # ∇h of (1') is the constant 2 X̃ᵀY / N; the factor 2z is the snapshot's
            r_h = 2.0 * targets
            grad_h_w, grad_h_b = X.T @ r_h / n, r_h.mean(0)
            del r_h
            r_snap = z.mul_(2.0)
        else:
            sig = torch.sigmoid(theta * z)
            r_h = 2.0 * targets * sig
            grad_h_w, grad_h_b = X.T @ r_h / n, r_h.mean(0)
            del r_h
            r_snap = F.softplus(z, beta=theta).mul_(sig).mul_(2.0)
            del sig
        del z
        for epoch in range(epochs):
            if epoch > 0:
                r_snap = _grad_factor(torch.addmm(b, X, w), theta, linear)
            # The snapshot's per-sample gradients r_snap are kept for the epoch, so a step needs
            # one product for the look-ahead point only; η × (the snapshot's full gradient minus
            # the DCA linearisation) is a constant of the epoch.
            const_w = torch.addmm(grad_h_w, X.T, r_snap, beta=-eta, alpha=eta / n)
            const_b = (r_snap.mean(0) - grad_h_b).mul_(eta)
            prev_w, prev_b = w, b
            look_w, look_b = w, b
            draws = torch.randint(n, (steps_per_epoch, batch), generator=gen).to(device)
            for i in range(steps_per_epoch):
                idx = draws[i]
                rows = X[idx]
                diff = _grad_factor(torch.addmm(look_b, rows, look_w), theta, linear).sub_(r_snap[idx])
                new_w = torch.addmm(look_w, rows.T, diff, alpha=-eta / batch).sub_(const_w)
                if threshold > 0:
                    new_w = F.softshrink(new_w, threshold)
                if keep is not None:
                    new_w.mul_(keep)
                new_b = look_b
                if use_bias:
                    new_b = look_b - diff.mean(0).mul_(eta).add_(const_b)
                    if shrink_bias and threshold > 0:
                        new_b = F.softshrink(new_b, threshold)
                look_w = torch.lerp(prev_w, new_w, extrapolate)
                look_b = torch.lerp(prev_b, new_b, extrapolate)
                prev_w, prev_b = new_w, new_b
            w, b = prev_w, prev_b
            del r_snap
        if record_objective:
            history.append(feta_objective(X, targets, w.T, b, theta, lam, shrink_bias, output))
    return FetaResult(w.T.contiguous(), b, history, float(tau), float(eta))


@torch.no_grad()
def feta_tau_guess(X: torch.Tensor, outputs: torch.Tensor, weight: torch.Tensor, n_keep: int,
                   step: float = 1e-3, support: torch.Tensor | None = None, output: str = "relu") -> float:
    """A first τ for ``n_keep`` non-zeros, from a diagonal model of eq. (1) at the trained weights.

    With the fit's curvature along ``w_kj`` taken as ``c_kj = (2/N) Σ_{i: z_ik > 0} x_ij²`` (ReLU
    active samples; every sample with ``output="linear"``) and the solution near the trained
    weights, the ℓ1 prox keeps ``w_kj`` when ``c_kj |w_kj| > λ = τ/η``. So τ is η times the
    ``n_keep``-th largest ``c_kj |w_kj|``. It is only a starting point for :func:`feta_search_tau`
    (off by up to ~3× on the FC net's layers).

    Args:
        X: ``(N, d_in)`` inputs. outputs: ``(N, d_out)`` pre-activation outputs.
        weight: ``(d_out, d_in)`` trained weights. n_keep: wanted non-zeros (>= 1).
        step: η. support: allowed entries, or None.
        output: ``"relu"`` or ``"linear"`` (eq. (1'): every sample counts in the curvature).

    Returns:
        τ (float, > 0 unless every score is 0).

    Example:
        >>> tau0 = feta_tau_guess(X, X @ W.T + b, W, n_keep=W.numel() // 10)
    """
    if output == "linear":
        curvature = (2.0 * X.pow(2).mean(0)).expand(weight.shape)
    else:
        curvature = 2.0 * (X.T @ (outputs > 0).to(X.dtype)).T / X.shape[0]
    score = (curvature * weight.abs()).flatten()
    if support is not None:
        score = score[support.flatten()]
    n_keep = max(1, min(n_keep, score.numel()))
    # The score can be negative at the cut (a layer whose kept weights barely matter); τ must be
    # positive for the search on log τ.
    return max(float(step * torch.topk(score, n_keep).values[-1]), 1e-12)


def feta_search_tau(X: torch.Tensor, Y: torch.Tensor, n_keep: int, tau0: float, *,
                    steps: int = 6, tolerance: float = 0.25, support: torch.Tensor | None = None,
                    seed: int = 0, units: torch.Tensor | None = None,
                    **solve_kwargs) -> tuple[FetaResult, list[dict]]:
    """FeTa solves at a sequence of τ until one leaves between ``n_keep`` and
    ``(1 + tolerance) n_keep`` non-zeros (eq. (1) has one λ per layer; the paper sweeps it by hand).

    The non-zero count of a FeTa solution falls smoothly with τ, close to a power law
    ``nnz ∝ τ^(-α)`` (α ≈ 0.6–1.1 on the FC net), so τ moves by a secant step on
    ``(log τ, log nnz)`` aimed at the middle of the band (the first step assumes α = 1), with
    safeguards (slope clamped to [-3, -0.3], steps capped at 10×, bisection on log τ inside the
    bracket of probes with too many and too few non-zeros). A probe runs the full solver (short
    solves misjudge the final count by up to 4×) but may be restricted to some output ``units``:
    rows are independent problems, so the count of a random subset of rows, scaled by the
    support sizes, estimates the layer's count without bias.

    Args:
        X, Y: as :func:`feta_solve`.
        n_keep: wanted non-zeros (among ``support``), >= 1.
        tau0: first τ (e.g. from :func:`feta_tau_guess`).
        steps: at most this many solves.
        tolerance: accepted excess of non-zeros (they are cut afterwards by magnitude).
        support, seed, **solve_kwargs: passed to :func:`feta_solve`.
        units: output units the probes solve (None: all).

    Returns:
        ``(result, probes)``: the probe with the fewest (estimated) non-zeros ``>= n_keep`` (if
        none, the one with the most) and one ``{"tau", "nonzeros"}`` dict per probe
        (``nonzeros``: the estimate for the whole layer).

    Example:
        >>> result, probes = feta_search_tau(X, Y, 1000, feta_tau_guess(X, Z, W, 1000))
    """
    scale = 1.0
    if units is not None:
        allowed = torch.ones(Y.shape[1], X.shape[1], dtype=torch.bool) if support is None else support
        scale = int(allowed.sum()) / max(1, int(allowed[units.to(allowed.device)].sum()))
    target = n_keep * (1.0 + tolerance / 2.0)
    tau, probes, best = tau0, [], None
    too_dense, too_sparse = 0.0, math.inf   # bracket: largest τ with too many, smallest too few
    for _ in range(max(1, steps)):
        result = feta_solve(X, Y, tau, support=support, seed=seed, units=units, **solve_kwargs)
        nonzeros = int(round(int((result.weight != 0).sum()) * scale))
        probes.append({"tau": tau, "nonzeros": nonzeros})
        if best is None or _better(nonzeros, best[1], n_keep):
            best = (result, nonzeros)
        if n_keep <= nonzeros <= n_keep * (1.0 + tolerance):
            break
        if nonzeros > n_keep:
            too_dense = max(too_dense, tau)
        else:
            too_sparse = min(too_sparse, tau)
        slope = -1.0
        if len(probes) >= 2:
            (t0, n0), (t1, n1) = [(p["tau"], max(p["nonzeros"], 1)) for p in probes[-2:]]
            if t0 != t1 and n0 != n1:
                slope = (math.log(n1) - math.log(n0)) / (math.log(t1) - math.log(t0))
        # Safeguards: with few rows the count is noisy in τ, so a secant through two close
        # probes can be flat or even rising. Clamp the slope, cap the step at 10×, and fall back
        # to bisection on log τ when the step leaves the bracket.
        slope = min(-0.3, max(-3.0, slope))
        ratio = math.exp((math.log(target) - math.log(max(nonzeros, 1))) / slope)
        candidate = tau * min(10.0, max(0.1, ratio))
        if not too_dense < candidate < too_sparse:
            candidate = math.sqrt(too_dense * too_sparse) if too_dense > 0 and too_sparse < math.inf \
                else candidate
        tau = candidate
    return best[0], probes


def _better(nonzeros: int, best: int, n_keep: int) -> bool:
    """Prefer solutions with at least ``n_keep`` non-zeros, the fewest such; else the most."""
    if (nonzeros >= n_keep) != (best >= n_keep):
        return nonzeros >= n_keep
    return nonzeros < best if nonzeros >= n_keep else nonzeros > best
