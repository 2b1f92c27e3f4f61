"""The gRDA optimizer (generalized regularized dual averaging), Chao et al., NeurIPS 2020.

"Directional Pruning of Deep Neural Networks" (arXiv:2006.09358); update rule as in the official
``grda_pytorch.py`` of donlan2710/gRDA-Optimizer. Per parameter tensor, with
γ_n the learning rate of step n = 1, 2, …::

    a_0 = w_0                                             # accumulator starts at the weights
    a_n = a_{n-1} - γ_n g_n                               # dual averaging: plain SGD on a
    ℓ_n = ℓ_{n-1} + c γ_n^{μ+1/2} (n^μ - (n-1)^μ),  ℓ_0 = 0
    w_n = sign(a_n) · max(|a_n| - ℓ_n, 0)                 # soft threshold: exact zeros

With a constant γ, ℓ_n = c γ^{1/2} (nγ)^μ, the paper's tuning function g(n, γ). No momentum and
no weight decay, as the authors' SGD baseline.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable

import torch
from torch import nn

from prunelab.errors import ConfigError

__all__ = ["GRDA", "grda_param_groups", "soft_threshold_"]


def _check_hparams(lr, c, mu, where: str) -> None:
    for name, value in (("lr", lr), ("c", c), ("mu", mu)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"GRDA {name} must be a finite number, got {value!r} ({where})")
    if lr < 0:
        raise ConfigError(f"GRDA lr must be >= 0, got {lr!r} ({where}); use the plain-SGD learning rate")
    if c < 0:
        raise ConfigError(f"GRDA c must be >= 0, got {c!r} ({where}); c = 0 is plain SGD, "
                          "the authors use 0 < c <= 0.005")
    if mu <= 0:
        raise ConfigError(f"GRDA mu must be > 0, got {mu!r} ({where}); directional pruning needs "
                          "0.5 < mu < 1 (the authors recommend 0.501, 0.51 or 0.55)")


def soft_threshold_(out: list[torch.Tensor], accumulators: list[torch.Tensor],
                    thresholds: list[float], foreach: bool | None = None) -> None:
    """Write ``sign(a) · max(|a| - ℓ, 0)`` of every accumulator into ``out``, in place.

    Both paths compute ``a - clamp(a, -ℓ, ℓ)``, the same number bit for bit (float rounding is
    symmetric in sign; only the sign of exact zeros may differ). On CPU one fused ``softshrink``
    kernel per tensor is fastest (torch's CPU ``_foreach`` ops loop over the tensors anyway); on
    accelerators five ``_foreach`` passes launch a few fused kernels for all tensors.

    Args:
        out: the weights to overwrite.
        accumulators: the accumulators a_n, same shapes as ``out``.
        thresholds: ℓ_n per tensor (>= 0).
        foreach: force the ``_foreach`` path (True) or the per-tensor one (False); default: per
            tensor on CPU, ``_foreach`` elsewhere.
    """
    if not out:
        return
    if foreach is None:
        foreach = out[0].device.type != "cpu"
    if not foreach:
        softshrink = torch.ops.aten.softshrink.out
        for w, a, ell in zip(out, accumulators, thresholds):
            softshrink(a, ell, out=w)
        return
    torch._foreach_copy_(out, accumulators)
    torch._foreach_clamp_min_(out, [-ell for ell in thresholds])
    torch._foreach_clamp_max_(out, thresholds)
    torch._foreach_sub_(out, accumulators)     # clamp(a) - a = -(a - clamp(a)), exactly
    torch._foreach_neg_(out)


class GRDA(torch.optim.Optimizer):
    """gRDA: SGD on an accumulator, then an ℓ1 soft threshold growing with time (Chao et al. 2020).

    Implements the update taken from the official ``grda_pytorch.py`` with its
    lr-schedule-aware threshold (the paper's PDF was not available, so no equation number is
    cited; with constant γ it is the paper's tuning function g(n, γ) = c γ^{1/2} (nγ)^μ):
    ``a_n = a_{n-1} - γ_n g_n``,
    ``ℓ_n = ℓ_{n-1} + c γ_n^{μ+½} (n^μ - (n-1)^μ)``, ``w_n = sign(a_n) max(|a_n| - ℓ_n, 0)``.

    Choices (documented and tested):

    - **a₀ = w₀ at construction.** The accumulator of every parameter of a group with c > 0 is a
      copy of the weights when the optimizer is built (or the group added), not when it first
      steps. The official code copies them at the first step; the two differ only if the weights
      change in between (a checkpoint loaded or masks applied after building the optimizer):
      build the optimizer last. Weights written by anyone but this optimizer after construction
      (max-norm constraints, masks) are overwritten at the next step, which recomputes w from a.
    - **The step counter n and ℓ are per parameter**, as in the official code: a parameter whose
      ``grad`` is None is skipped and its n does not advance. γ_n, c and μ are the group's current
      values, so LR schedulers work and ℓ follows the schedule.
    - **c = 0 is plain SGD, bit for bit.** While a parameter's ℓ is 0 (c = 0 so far), w is updated
      as ``w - γ g`` exactly as ``torch.optim.SGD`` does and no accumulator is kept (a = w then).
      Groups built by :func:`grda_param_groups` use this for biases and norm parameters.
    - ``state_dict``/``load_state_dict`` hold n (int), ℓ (float64) and a per parameter, so a run
      resumed from a saved state continues bit-identically.

    Args:
        params: parameters or param groups; a group may override ``lr``, ``c`` and ``mu``.
        lr: learning rate γ (>= 0); use the rate that works for SGD without momentum.
        c: threshold scale (>= 0); the authors use 0 < c <= 0.005 (0.01 to 0.1 in small demos).
        mu: time exponent of the threshold (> 0); 0.5 < μ < 1 for directional pruning.

    Raises:
        ConfigError: lr, c or mu invalid (also for a group added later).

    Example:
        >>> opt = GRDA(grda_param_groups(model, lr=0.1, c=0.005, mu=0.55), lr=0.1, c=0.005, mu=0.55)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    """

    def __init__(self, params: Iterable, lr: float, c: float, mu: float):
        _check_hparams(lr, c, mu, "GRDA defaults")
        super().__init__(params, dict(lr=lr, c=c, mu=mu))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (validated) and start its accumulators at the current weights."""
        merged = {k: param_group.get(k, v) for k, v in self.defaults.items()}
        _check_hparams(merged["lr"], merged["c"], merged["mu"], f"param group {len(self.param_groups)}")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p in self.state:
                continue
            state = self.state[p]
            state["step"] = 0
            state["threshold"] = 0.0
            if group["c"] > 0:
                state["accumulator"] = p.detach().clone(memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure=None):
        """One gRDA step over every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            lr, c, mu = group["lr"], group["c"], group["mu"]
            _check_hparams(lr, c, mu, f"param group {index}")
            sgd_params, sgd_grads = [], []
            params, grads, accumulators, thresholds = [], [], [], []
            increments: dict[int, float] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("GRDA does not support sparse gradients; use dense embeddings")
                state = self.state[p]
                if not state:   # a state_dict from elsewhere may lack it
                    state["step"], state["threshold"] = 0, 0.0
                n = state["step"] + 1
                state["step"] = n
                if c == 0 and state["threshold"] == 0.0:
                    state.pop("accumulator", None)   # a = w while ℓ = 0
                    sgd_params.append(p)
                    sgd_grads.append(p.grad)
                    continue
                if n not in increments:
                    increments[n] = c * lr ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
                state["threshold"] += increments[n]
                if "accumulator" not in state:   # c just turned > 0 (a = w until now)
                    state["accumulator"] = p.detach().clone(memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                accumulators.append(state["accumulator"])
                thresholds.append(state["threshold"])
            if sgd_params:
                torch._foreach_add_(sgd_params, sgd_grads, alpha=-lr)
            if params:
                torch._foreach_add_(accumulators, grads, alpha=-lr)
                soft_threshold_(params, accumulators, thresholds)
        return loss


def grda_param_groups(model: nn.Module, lr: float, c: float, mu: float,
                      threshold_all: bool = False, **prunable_kwargs) -> list[dict]:
    """Param groups for :class:`GRDA`: prunable weights thresholded, the rest plain SGD.

    Args:
        model: the network.
        lr: learning rate of both groups.
        c: threshold scale of the thresholded group.
        mu: time exponent of the thresholded group.
        threshold_all: threshold every parameter (biases and norm parameters too), as the
            official scripts do (they pass ``model.parameters()``).
        **prunable_kwargs: ``exclude``, ``exclude_first``, ``exclude_last`` of
            :func:`prunelab.core.masks.prunable_parameters`.

    Returns:
        A list of one or two groups: ``{"params", "lr", "c", "mu", "name"}`` with names
        ``"thresholded"`` and ``"plain"`` (c = 0: biases, norm and excluded parameters). Frozen
        parameters (``requires_grad=False``) are left out.
    """
    from prunelab.core.masks import prunable_parameters

    _check_hparams(lr, c, mu, "grda_param_groups")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if threshold_all:
        chosen = {id(p) for p in trainable}
    else:
        # By identity: the prunable names are the unwrapped model's (no torch.compile/DDP prefix).
        chosen = {id(p) for p in prunable_parameters(model, **prunable_kwargs).values()}
    thresholded = [p for p in trainable if id(p) in chosen]
    plain = [p for p in trainable if id(p) not in chosen]
    groups = []
    if thresholded:
        groups.append({"params": thresholded, "lr": lr, "c": c, "mu": mu, "name": "thresholded"})
    if plain:
        groups.append({"params": plain, "lr": lr, "c": 0.0, "mu": mu, "name": "plain"})
    return groups
