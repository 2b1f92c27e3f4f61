"""FeTa: layer-wise pruning by difference-of-convex programming (Pitas et al., arXiv:1803.04239).

For one layer with inputs ``x_i`` and original post-ReLU outputs ``y_i``, FeTa solves (the
objective of the official ``feta_main.py``)

    min_{W,b} F = (1/N) Σ_i ||ρ_θ(W x_i + b) − y_i||² + λ ||W||₁,   ρ_θ(z) = log(1 + e^{θz}) / θ

with the softplus ρ_θ standing for the ReLU. Dropping the constant ||y_i||², F = g − h with

    g = (1/N) Σ ||ρ_θ(W x_i + b)||² + λ||W||₁,   h = (2/N) Σ y_iᵀ ρ_θ(W x_i + b),

both convex because y ≥ 0 and ρ_θ ≥ 0 is convex. DCA (the difference-of-convex algorithm) linearises h at the
current point (∇h uses ρ_θ' = sigmoid(θz)) and minimises the convex remainder with an
accelerated proximal SVRG: per epoch a full gradient of the smooth part of g at a snapshot, then
N/b variance-reduced mini-batch steps ``X ← prox_τ(Y − η(v − ∇h))``, ``Y ← X + β(X − X_prev)``.
The prox is a soft threshold at ``τ`` itself, as in the official code; the ℓ1 weight of the
objective is therefore ``λ = τ / η``.

Choices, where the paper or its code is silent or wrong (each tested in tests/test_feta.py):

* **Sigmoid gradient.** We use ``torch.sigmoid(θz)``. The official ``grad_apr`` has a bug:
  ``np.where(x<10) and np.where(x>-10)`` is the second operand alone, so its "otherwise" branch
  selects every entry with ``θz > -10``, and entries with ``θz ≥ 10``, first set to 1, are
  overwritten with sigmoid(1) ≈ 0.731. We do not replicate it.
* **Bias.** The official prox also shrinks the bias row of U and counts it in the sparsity. In
  prunelab biases are not prunable, so by default the bias is fitted but not penalised
  (``shrink_bias=False``); ``shrink_bias=True`` follows the official code.
* **Reaching a requested sparsity** (beyond the paper, which sweeps τ by hand). Per layer, a
  first τ comes from a diagonal model of the fit (:func:`feta_tau_guess`); then full solves at
  τ values moved by secant steps on (log τ, log nnz) (:func:`feta_search_tau`) until one leaves
  between ``n`` and ``(1 + search_tolerance) n`` non-zeros (``n`` = weights to keep), at most
  ``search_steps`` solves. Bisection with *short* probe solves was tried first and dropped: one
  DCA iteration × one epoch, or a 20 000-row subsample, misjudges the final count by up to 4×.
  The smallest |w| beyond ``n`` are then cut, so the mask keeps exactly ``n`` weights (if the
  solution has fewer non-zeros, zero-valued weights of largest original |w| fill the mask, so
  retraining may revive them).
* **Polish** (beyond the paper, on by default): after the cut, ``polish_epochs`` SVRG epochs
  with τ = 0 on the kept support refit the survivors, undoing the ℓ1 shrinkage. On the FC
  784-100-100-10 / Fashion-MNIST net at 90 % sparsity of the hidden layers this lifts test
  accuracy without retraining from 76.6 % to 81.3 % (``polish_epochs=0`` gives the paper's
  solution, only cut to the exact count).
* **Initialisation.** ``init="random"`` (default, as the official code: N(0, 1e-3²));
  ``init="trained"`` warm-starts from the trained weights.
* **Layers.** By default every prunable layer but the model's last one (the paper leaves the
  softmax layer dense); the requested sparsity applies to each pruned layer. FeTa fits post-ReLU
  targets, so a pruned layer must be followed by a ReLU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prunelab.errors import ConfigError
from prunelab.methods.layerwise.driver import LayerProblem, LayerwiseHparams, check_common_hparams, prune_with_solver, top_k_mask
from prunelab.core.masks import Masks
from prunelab.methods import register
from prunelab.methods.base import OneShotMethod, check_sparsity

INITS = ("random", "trained")


@dataclass
class FetaResult:
    """Output of :func:`feta_solve`.

    Attributes:
        weight: ``(d_out, d_in)`` solution (exact zeros where pruned).
        bias: ``(d_out,)`` solution.
        objective: F after initialisation and after each DCA iteration (empty unless
            ``record_objective``).
        tau: the prox threshold used.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    objective: list[float] = field(default_factory=list)
    tau: float = 0.0


def feta_objective(X: torch.Tensor, Y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   theta: float = 10.0, lam: float = 0.0, shrink_bias: bool = False) -> float:
    """F(W, b) = (1/N) Σ ||ρ_θ(W x_i + b) − y_i||² + λ||W||₁ (Pitas et al. 2018; ``+ λ||b||₁`` when
    ``shrink_bias``).

    Args:
        X: ``(N, d_in)`` layer inputs. Y: ``(N, d_out)`` post-ReLU targets.
        weight: ``(d_out, d_in)``. bias: ``(d_out,)``.
        theta: softplus sharpness θ. lam: ℓ1 weight λ (``τ / η`` for prox threshold τ).
        shrink_bias: count the bias in the ℓ1 term.

    Returns:
        The objective value (float).
    """
    fit = (F.softplus(X @ weight.T + bias, beta=theta) - Y).pow(2).sum().item() / X.shape[0]
    l1 = weight.abs().sum().item() + (bias.abs().sum().item() if shrink_bias else 0.0)
    return fit + lam * l1


def _dsq(z: torch.Tensor, theta: float) -> torch.Tensor:
    """d/dz ρ_θ(z)² = 2 ρ_θ(z) sigmoid(θz) (the correct gradient; see the module docstring)."""
    return 2.0 * F.softplus(z, beta=theta) * torch.sigmoid(theta * z)


@torch.no_grad()
def feta_solve(X: torch.Tensor, Y: torch.Tensor, tau: float, *, theta: float = 10.0,
               outer_iters: int = 4, epochs: int = 3, batch_size: int = 200, step: float = 1e-3,
               momentum: float = 0.95, init_weight: torch.Tensor | None = None,
               init_bias: torch.Tensor | None = None, init_std: float = 1e-3,
               support: torch.Tensor | None = None, shrink_bias: bool = False,
               use_bias: bool = True, seed: int = 0, record_objective: bool = False) -> FetaResult:
    """FeTa's DCA with accelerated prox-SVRG for one layer (Pitas et al. 2018, as the official ``feta_main.py``).

    Args:
        X: ``(N, d_in)`` float32 layer inputs.
        Y: ``(N, d_out)`` targets: the original layer's post-ReLU outputs (clamped at 0 here).
        tau: prox (soft) threshold per step, ``≥ 0``; λ = τ / η.
        theta: softplus sharpness θ (10).
        outer_iters: DCA iterations K (4).
        epochs: SVRG epochs S per DCA iteration (3).
        batch_size: mini-batch b (200), drawn with replacement; N // b steps per epoch.
        step: step η (1e-3).
        momentum: acceleration β (0.95).
        init_weight, init_bias: warm start ``(d_out, d_in)`` / ``(d_out,)``; None = N(0, init_std²).
        init_std: standard deviation of the random initialisation (1e-3).
        support: ``(d_out, d_in)`` bool; weights outside it are held at zero (already pruned).
        shrink_bias: soft-threshold the bias too (official code).
        use_bias: fit a bias; False holds it at 0 (a layer without bias).
        seed: seeds the initialisation and the mini-batches.
        record_objective: record F after init and after every DCA iteration (one extra pass each).

    Returns:
        :class:`FetaResult`.
    """
    if tau < 0:
        raise ConfigError(f"tau must be >= 0, got {tau}")
    X = X.to(torch.float32).contiguous()
    targets = Y.to(torch.float32).clamp_min(0.0)
    n, d_in = X.shape
    d_out = targets.shape[1]
    device = X.device
    # A CPU generator: the same seed draws the same numbers on every device.
    gen = torch.Generator().manual_seed(seed)
    if init_weight is None:
        w = (torch.randn(d_in, d_out, generator=gen) * init_std).to(device)
        b = (torch.randn(d_out, generator=gen) * init_std).to(device)
    else:
        w = init_weight.T.to(device=device, dtype=torch.float32).clone()
        b = (torch.zeros(d_out, device=device) if init_bias is None
             else init_bias.to(device=device, dtype=torch.float32).clone())
    if not use_bias:
        b = torch.zeros(d_out, device=device)
    keep = None if support is None else support.T.to(device=device, dtype=torch.float32).contiguous()
    if keep is not None:
        w.mul_(keep)
    lam = tau / step
    history = []
    if record_objective:
        history.append(feta_objective(X, targets, w.T, b, theta, lam, shrink_bias))
    batch = min(batch_size, n)
    steps_per_epoch = max(1, n // batch)

    def shrink(v: torch.Tensor) -> torch.Tensor:
        return F.softshrink(v, tau) if tau > 0 else v

    for _ in range(outer_iters):
        # One pass gives ∇h at the DCA point and the first snapshot's full gradient.
        z = torch.addmm(b, X, w)
        sig = torch.sigmoid(theta * z)
        r_h = 2.0 * targets * sig
        grad_h_w, grad_h_b = X.T @ r_h / n, r_h.mean(0)
        del r_h
        r_snap = 2.0 * F.softplus(z, beta=theta) * sig
        del z, sig
        for epoch in range(epochs):
            if epoch > 0:
                r_snap = _dsq(torch.addmm(b, X, w), theta)
            # The snapshot's per-sample gradients r_snap are kept for the epoch, so a step needs
            # one product for the look-ahead point only; the snapshot's full gradient minus the
            # DCA linearisation is a constant of the epoch.
            const_w = X.T @ r_snap / n - grad_h_w
            const_b = r_snap.mean(0) - grad_h_b
            prev_w, prev_b = w.clone(), b.clone()
            look_w, look_b = w.clone(), b.clone()
            draws = torch.randint(n, (steps_per_epoch, batch), generator=gen).to(device)
            for i in range(steps_per_epoch):
                idx = draws[i]
                rows = X[idx]
                diff = _dsq(torch.addmm(look_b, rows, look_w), theta) - r_snap[idx]
                new_w = shrink(look_w - step * (rows.T @ diff / batch + const_w))
                if keep is not None:
                    new_w.mul_(keep)
                new_b = look_b - step * (diff.mean(0) + const_b) if use_bias else look_b
                if shrink_bias:
                    new_b = shrink(new_b)
                look_w = new_w + momentum * (new_w - prev_w)
                look_b = new_b + momentum * (new_b - prev_b)
                prev_w, prev_b = new_w, new_b
            w, b = prev_w, prev_b
            del r_snap
        if record_objective:
            history.append(feta_objective(X, targets, w.T, b, theta, lam, shrink_bias))
    return FetaResult(w.T.contiguous(), b, history, float(tau))


@torch.no_grad()
def feta_tau_guess(X: torch.Tensor, outputs: torch.Tensor, weight: torch.Tensor, n_keep: int,
                   step: float = 1e-3, support: torch.Tensor | None = None) -> float:
    """A first τ for ``n_keep`` non-zeros, from a diagonal model of the layer-wise fit.

    With the fit's curvature along ``w_kj`` taken as ``c_kj = (2/N) Σ_{i: z_ik > 0} x_ij²`` (ReLU
    active samples) and the solution near the trained weights, the ℓ1 prox keeps ``w_kj`` when
    ``c_kj |w_kj| > λ = τ/η``. So τ is η times the ``n_keep``-th largest ``c_kj |w_kj|``. It is only
    a starting point for :func:`feta_search_tau` (off by up to ~3× on the FC net's layers).

    Args:
        X: ``(N, d_in)`` inputs. outputs: ``(N, d_out)`` pre-activation outputs.
        weight: ``(d_out, d_in)`` trained weights. n_keep: wanted non-zeros (>= 1).
        step: η. support: allowed entries, or None.

    Returns:
        τ (float, > 0 unless every score is 0).
    """
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
                    seed: int = 0, **solve_kwargs) -> tuple[FetaResult, list[dict]]:
    """Full FeTa solves at a sequence of τ until one leaves between ``n_keep`` and
    ``(1 + tolerance) n_keep`` non-zeros.

    The non-zero count of a FeTa solution falls smoothly with τ, close to a power law
    ``nnz ∝ τ^(-α)`` (α ≈ 0.6–1.1 on the FC net), so τ moves by a secant step on
    ``(log τ, log nnz)`` aimed at the middle of the band (the first step assumes α = 1), with
    safeguards (slope clamped to [-3, -0.3], steps capped at 10×, bisection on log τ inside the
    bracket of probes with too many and too few non-zeros). Probes
    are full solves: short solves (one DCA iteration, one epoch, or a row subsample) were tried
    and misjudge the final non-zero count by up to 4× because the prox-SVRG iterates are far from
    converged after a few hundred steps.

    Args:
        X, Y: as :func:`feta_solve`.
        n_keep: wanted non-zeros (among ``support``), >= 1.
        tau0: first τ (e.g. from :func:`feta_tau_guess`).
        steps: at most this many solves.
        tolerance: accepted excess of non-zeros (they are cut afterwards by magnitude).
        support, seed, **solve_kwargs: passed to :func:`feta_solve`.

    Returns:
        ``(result, probes)``: the solve with the fewest non-zeros ``>= n_keep`` (if none, the one
        with the most), and one ``{"tau", "nonzeros"}`` dict per solve.
    """
    target = n_keep * (1.0 + tolerance / 2.0)
    tau, probes, best = tau0, [], None
    too_dense, too_sparse = 0.0, math.inf   # bracket: largest τ with too many, smallest too few
    for _ in range(max(1, steps)):
        result = feta_solve(X, Y, tau, support=support, seed=seed, **solve_kwargs)
        nonzeros = int((result.weight != 0).sum())
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


@dataclass(frozen=True)
class FetaHparams(LayerwiseHparams):
    """Hyperparameters of FeTa (solver defaults: the official code's ``feta_*_accuracy.py``).

    Attributes:
        theta: softplus sharpness θ.
        outer_iters: DCA iterations K.
        epochs: SVRG epochs S per DCA iteration.
        batch_size: SVRG mini-batch b.
        step: step η.
        momentum: acceleration β.
        init: ``"random"`` (N(0, init_std²), the paper) or ``"trained"`` (warm start).
        init_std: standard deviation of the random init.
        tau: fixed prox threshold (one float for every layer, or one per pruned layer); then no
            search is made and the mask is the solution's non-zeros, whatever sparsity that gives
            (the paper's protocol). None: search τ for the requested sparsity.
        search_steps: at most this many full solves per layer in the τ search.
        search_tolerance: accepted excess of non-zeros before the exact magnitude cut.
        polish_epochs: SVRG epochs with τ = 0 on the kept support after the cut (debiasing the
            ℓ1 shrinkage; beyond the paper). 0 = the paper's solution, only cut to the count.
        shrink_bias: soft-threshold the bias as the official code does.
        layers: weight names to prune; None = every prunable layer but the last.
        include_last: with ``layers=None``, prune the last layer too.
        mode: ``"parallel"`` (the paper) or ``"sequential"`` (see prunelab.methods.layerwise.driver).
        max_samples: calibration rows held per layer (None: all; the paper uses all 60 000).
        seed: seeds initialisation, mini-batches and row subsampling.
    """

    theta: float = 10.0
    outer_iters: int = 4
    epochs: int = 3
    batch_size: int = 200
    step: float = 1e-3
    momentum: float = 0.95
    init: str = "random"
    init_std: float = 1e-3
    tau: float | tuple[float, ...] | None = None
    search_steps: int = 6
    search_tolerance: float = 0.25
    polish_epochs: int = 3
    shrink_bias: bool = False

    def __post_init__(self):
        check_common_hparams(self, "FeTa", patterns=False)
        if self.init not in INITS:
            raise ConfigError(f"FeTa init must be one of {INITS}, got {self.init!r}")
        for name in ("outer_iters", "epochs", "batch_size", "search_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"FeTa {name} must be >= 1, got {getattr(self, name)}")
        if self.polish_epochs < 0 or self.search_tolerance < 0:
            raise ConfigError("FeTa polish_epochs and search_tolerance must be >= 0")
        if self.step <= 0 or not 0 <= self.momentum < 1 or self.theta <= 0:
            raise ConfigError("FeTa needs step > 0, theta > 0 and 0 <= momentum < 1")
        if isinstance(self.tau, list):   # JSON from the CLI
            object.__setattr__(self, "tau", tuple(self.tau))
        taus = () if self.tau is None else (self.tau if isinstance(self.tau, tuple) else (self.tau,))
        if not all(isinstance(t, (int, float)) for t in taus):
            raise ConfigError(f"FeTa tau must be a number or a list of numbers, got {self.tau!r}")
        if any(t < 0 for t in taus):
            raise ConfigError(f"FeTa tau must be >= 0, got {self.tau}")


def _fill_score(new_w: torch.Tensor, old_w: torch.Tensor) -> torch.Tensor:
    """Rank non-zero solution entries by |w|, then zero entries by their original |w|."""
    return torch.where(new_w != 0, new_w.abs() + 1.0, 1.0 - 1.0 / (1.0 + old_w.abs()))


def _solve_layer(hp: FetaHparams, problem: LayerProblem, tau: float | None):
    X = problem.data.inputs
    Y = problem.data.outputs.clamp_min(0.0)
    solve_kwargs = dict(theta=hp.theta, outer_iters=hp.outer_iters, epochs=hp.epochs,
                        batch_size=hp.batch_size, step=hp.step, momentum=hp.momentum,
                        init_std=hp.init_std, shrink_bias=hp.shrink_bias,
                        use_bias=problem.bias is not None)
    if hp.init == "trained":
        solve_kwargs.update(init_weight=problem.weight, init_bias=problem.bias)
    n_support = int(problem.mask.sum())
    if tau is not None:
        result = feta_solve(X, Y, tau, support=problem.mask, seed=hp.seed, **solve_kwargs)
        mask = (result.weight != 0) & problem.mask
        bias = result.bias if problem.bias is not None else None
        return result.weight, bias, mask, {"tau": tau, "solution_nonzeros": int(mask.sum())}
    if problem.n_keep == 0:
        return torch.zeros_like(problem.weight), problem.bias, torch.zeros_like(problem.mask), {}
    if problem.n_keep >= n_support:
        result, probes = feta_solve(X, Y, 0.0, support=problem.mask, seed=hp.seed,
                                    **solve_kwargs), [{"tau": 0.0}]
    else:
        tau0 = feta_tau_guess(X, problem.data.outputs, problem.weight,
                              int(problem.n_keep * (1 + hp.search_tolerance / 2)), hp.step,
                              problem.mask)
        result, probes = feta_search_tau(X, Y, problem.n_keep, tau0, steps=hp.search_steps,
                                         tolerance=hp.search_tolerance, support=problem.mask,
                                         seed=hp.seed, **solve_kwargs)
    weight, bias = result.weight, (result.bias if problem.bias is not None else None)
    nonzeros = int((weight != 0).sum())
    mask = top_k_mask(_fill_score(weight, problem.weight), problem.mask, problem.n_keep)
    weight = weight * mask
    if hp.polish_epochs > 0:
        polished = feta_solve(X, Y, 0.0, support=mask, seed=hp.seed + 1,
                              **{**solve_kwargs, "outer_iters": 1, "epochs": hp.polish_epochs,
                                 "init_weight": weight, "init_bias": bias})
        weight = polished.weight * mask
        bias = polished.bias if problem.bias is not None else None
    info = {"tau": result.tau, "solution_nonzeros": nonzeros, "solves": len(probes),
            "probes": probes}
    return weight, bias, mask, info


@register("feta")
class Feta(OneShotMethod):
    """FeTa layer-wise DC pruning (Pitas et al. 2018/2019; see the module docstring): per layer,
    min_{W,b} (1/N) Σ_i ||ρ_θ(W x_i + b) − y_i||² + λ||W||₁ with ρ_θ(z) = log(1 + e^{θz})/θ, solved by
    DCA with accelerated proximal SVRG.

    ``prune(model, masks, sparsity, calib)`` prunes each chosen layer (default: all prunable
    layers but the last) to ``sparsity`` of its weights, rewriting surviving weights and biases.
    After the call, ``self.last_info`` holds one dict per layer (τ, rows and bytes held, seconds).
    ``calib`` is any calibration data (a ``Split``, a tensor of inputs, an ``(x, y)`` pair, a
    ``TensorDataset``, a ``DataLoader`` of ``(x, y)`` or of dicts of token ids, a ``Calibration``
    with its ``forward_fn``); layers may be ``nn.Linear``, ``nn.Conv1d/2d``, HuggingFace
    ``Conv1D`` and ``nn.MultiheadAttention`` projections (:mod:`prunelab.methods.layerwise.layers`).
    """

    Hparams = FetaHparams

    def prune(self, model, masks=None, sparsity=0.5, calib=None) -> Masks:
        hp = self.hparams
        sparsity = check_sparsity(sparsity)
        taus = iter(hp.tau if isinstance(hp.tau, tuple) else ())

        def solve(problem: LayerProblem):
            tau = hp.tau if not isinstance(hp.tau, tuple) else next(taus, None)
            if isinstance(hp.tau, tuple) and tau is None:
                raise ConfigError(f"FeTa got {len(hp.tau)} tau values for more pruned layers")
            return _solve_layer(hp, problem, tau)

        result, self.last_info = prune_with_solver("FeTa", model, masks, sparsity, calib, hp, solve)
        return result
