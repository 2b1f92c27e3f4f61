"""Learned Threshold Pruning (Azarian, Bhalgat, Lee, Blankevoort 2020, arXiv:2003.00075).

Every prunable weight tensor ``w_l`` (:func:`prunelab.core.masks.prunable_parameters`) gets one
learnable threshold ``τ_l``. During training the layer computes with the soft-pruned weight

    v = w · σ((w² − τ_l) / T_l)                          (Eq. 1)
    T_l = T₀ · Var(|w_l|)      recomputed every step, detached       (Eq. 15)

and the loss adds ``λ · soft-L0 / N`` with soft-L0 = Σ_l Σ_k σ((w_kl² − τ_l)/T_l) (Eq. 6) and ``N``
the number of prunable weights, so the penalty is the *soft density* in (0, 1) and ``λ`` means the
same on any model size. At the end of each epoch the hard mask ``1[w² > τ_l]`` gives one point of
the *trail*: compression, validation accuracy, thresholds, and the transition fraction.

No official code exists (papers.md §3); the choices made here, each tested in tests/test_ltp.py:

- **Gradient (Eq. 14).** By default the sigmoid is treated as constant with respect to ``w``:
  ∂v/∂w = σ(·), and the L0 term gives ``w`` no gradient, so it acts on the thresholds only.
  ``gradient="exact"`` uses ∂v/∂w = σ + (2w²/T)·σ' and lets the L0 term shrink ``w`` too. ``τ``
  always gets its full gradient. Both are one fused autograd function (:class:`_SoftThreshold`).
- **Threshold units.** ``τ_l = s_l · θ_l`` where ``θ_l`` is the learned parameter and ``s_l`` the
  layer's mean ``w²`` when wrapping (a fixed buffer). An SGD step on ``θ`` then moves every
  layer's threshold by the same fraction of its own weight scale, so one ``threshold_lr`` suits
  layers whose weights differ by orders of magnitude. The trail records ``τ`` itself.
- **Initial threshold.** ``τ_l`` starts at the ``threshold_init_quantile`` quantile of ``w_l²``
  (default 0: ``τ = 0``, the hard mask keeps every weight).
- **Temperature.** ``Var`` is the population variance of ``|w_l|`` over the whole layer (pruned
  weights included), plus 1e-20 so an all-zero layer does not divide by zero.
- **Penalties.** ``penalty="l1"`` / ``"l2"`` replace the L0 term by ``λ · Σ|w| / N`` or
  ``λ · Σw² / N`` on the underlying weights, thresholds still learned (by the task loss only):
  the batch-norm study of issue 9 compares the three.
- **Evaluation.** In ``eval()`` mode the wrapped model uses the hard mask ``w · 1[w² > τ]`` (the
  deployed network), in ``train()`` mode the soft mask. Each trail network's batch-norm
  statistics are re-estimated on 2000 training samples first (they were gathered with soft
  weights; on a narrow BN CNN at 15x this moved hard-mask validation accuracy from 26 % to 73 %).
- **Trail selection.** :meth:`Trail.pick` by target compression takes the entry with the
  smallest compression at or above the target; by accuracy floor the most compressed entry
  meeting it.
- **Matching the target.** :class:`LTP` (the harness method) compares at matched compression
  (``match_target``). Short of the target after its epochs (measured: one of five Fashion-MNIST
  seeds stopped at 39.6x of 40x), the most compressed entry is pruned further by global magnitude
  to exactly the target. Past it by more than 2 % (the thresholds jump in the first steps: a
  LeNet-300-100 checked every 10 steps was at 8x when asked for 2x), every learned threshold is
  lowered by one common factor, i.e. the pruned weights of largest w²/τ_l come back (with the
  values LTP trained), until exactly the target is kept; this keeps LTP's per-layer allocation
  and is possible for the last trail entry, whose unmasked weights are the model's. The shares
  filled or revived are recorded.
- **Stall warning.** When the share of weights with ``|w² − τ|/T < 4`` (where σ' is not
  negligible) falls below ``stall_fraction``, τ receives almost no gradient and pruning stops
  ("premature termination", §3.2 of the paper): :class:`LTPStallWarning` is issued and logged.

Example:
    >>> trail, wrapped = learn_thresholds(model, data, TrainConfig(epochs=8, optimizer="sgd", lr=0.03),
    ...                                   penalty_weight=3.0, temperature=2.0, threshold_lr=1.0)
    >>> entry = trail.pick(target_compression=40)
    >>> masks = entry.restore(model)
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from prunelab.errors import ConfigError, MethodError
from prunelab.core.masks import Masks, prunable_parameters
from prunelab.training.loop import OPTIMIZERS, Callback, TrainConfig, evaluate, make_optimizer, train
from prunelab.methods import register
from prunelab.methods.base import MethodContext, MethodOutcome, TrainingMethod, check_sparsity
from prunelab.methods.magnitude import _prune_by_scores, select_smallest

logger = logging.getLogger("prunelab.ltp")

PENALTIES = ("l0", "l1", "l2")
GRADIENTS = ("approx", "exact")
TRANSITION_BAND = 4.0  # |w² − τ|/T below this: σ' > 0.017, the sigmoid still passes gradient
_MIN_TEMPERATURE = 1e-20


MATCH_TOLERANCE = 0.02  # LTP.run revives weights when the picked entry is > 2 % past the target


class LTPStallWarning(UserWarning):
    """Almost no weight is left in the sigmoid's transition band: the thresholds stop learning."""


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
    :func:`torch.func.functional_call`. Batch-norm, biases and other layers run as usual.

    Args:
        model: the network (pretrained, as the paper starts from).
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
        return [self.model.get_parameter(n) for n in self.names]

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
        return functional_call(self.model, substitutes, args, kwargs, strict=False)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 250) -> bool:
    """Recompute the running statistics of every batch-norm layer of ``model`` on inputs ``x``.

    LTP trains with soft-masked weights, so the running statistics describe the soft network;
    the hard-masked one (what the trail evaluates and keeps) feeds its BN layers differently.
    This re-estimates them as exact averages over ``x`` (momentum None), in training mode,
    without gradients, then restores each layer's momentum and the model's mode.

    Args:
        model: the network (changed in place).
        x: calibration inputs (a few thousand training samples).
        batch_size: forward batch size.

    Returns:
        True if the model has batch-norm layers (and they were recalibrated).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(x) == 0:
        return False
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    device = next(model.parameters()).device
    for start in range(0, len(x), batch_size):
        model(x[start:start + batch_size].to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return True


@torch.no_grad()
def lower_thresholds_to(weights: dict[str, torch.Tensor], thresholds: dict[str, float], prune: int) -> Masks:
    """Hard masks pruning exactly ``prune`` weights by one common scaling of the thresholds.

    Keeping ``w² > c·τ_l`` for one factor ``c`` ranks the weights by ``w²/τ_l``; a layer with
    ``τ_l ≤ 0`` keeps every weight with ``w² > τ_l`` whatever ``c`` is. The ``prune`` weights of
    smallest rank are pruned (ties in tensor, then row-major, order). With ``prune`` no more than
    the current hard masks prune, every weight they keep stays kept: the thresholds come down.

    Args:
        weights: ``name -> weight`` (unmasked).
        thresholds: ``name -> τ_l``.
        prune: the number of weights to prune in all.

    Returns:
        The :class:`Masks` (``True`` = kept).
    """
    names = list(weights)
    scores = []
    for n in names:
        w2, tau = weights[n].detach().float() ** 2, float(thresholds[n])
        if tau > 0:
            scores.append(w2 / tau)
        else:
            scores.append(torch.where(w2 > tau, torch.full_like(w2, math.inf), torch.zeros_like(w2)))
    kept = select_smallest(scores, None, prune)
    return Masks(dict(zip(names, kept)))


def restore_at_target(model: nn.Module, trail: "Trail", entry: "TrailEntry", sparsity: float, match: bool = True,
                      log: Callable[[str], None] | None = None) -> tuple[Masks, dict]:
    """Load trail ``entry`` into ``model`` and, with ``match``, bring it to exactly ``sparsity``.

    ``model`` is the network :func:`learn_thresholds` trained in place, so before this call it
    holds the unmasked weights of the trail's last entry. Short of the target, the entry is pruned
    further by global magnitude (the smallest |w| among its kept weights). More than
    :data:`MATCH_TOLERANCE` past it, and if ``entry`` is the last entry, every threshold is lowered
    by one common factor (:func:`lower_thresholds_to`): the pruned weights of largest w²/τ_l come
    back with the values LTP trained. An earlier entry past the target is kept as it is (logged).

    Returns:
        ``(masks, {"filled_fraction": ..., "revived_fraction": ...})``, shares of all prunable
        weights pruned by the fill or revived.
    """
    log = log or logger.info
    target_compression = 1.0 / (1.0 - sparsity)
    unmasked = {n: model.get_parameter(n).detach().clone() for n in entry.thresholds}
    masks = entry.restore(model)
    filled = revived = 0.0
    if match and sparsity > 0:
        if entry.compression < target_compression * (1 - 1e-9):
            before = masks.kept()
            masks = _prune_by_scores(model, masks, sparsity, "global",
                                     {n: model.get_parameter(n).detach() for n in masks})
            filled = (before - masks.kept()) / masks.total()
        elif entry.compression > target_compression * (1 + MATCH_TOLERANCE):
            if entry.step == trail[-1].step:
                kept = masks.kept()
                with torch.no_grad():
                    for name, value in unmasked.items():
                        model.get_parameter(name).copy_(value)
                masks = lower_thresholds_to(unmasked, entry.thresholds, round(sparsity * masks.total()))
                masks.apply(model)
                revived = (masks.kept() - kept) / masks.total()
                log(f"LTP's trail passed the {target_compression:.2f}x target ({entry.compression:.2f}x); "
                    f"thresholds lowered by one factor to match it ({100 * revived:.2f} % of the weights revived)")
            else:
                log(f"warning: the picked trail entry is at {entry.compression:.2f}x for a {target_compression:.2f}x "
                    "target and is not the last one (its unpruned weights are gone): kept as it is")
    return masks, {"filled_fraction": filled, "revived_fraction": revived}


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    if q <= 0:
        return torch.zeros((), dtype=values.dtype)
    flat = values.flatten()
    # kthvalue, unlike torch.quantile, has no input-size limit.
    k = min(flat.numel(), max(1, int(math.ceil(q * flat.numel()))))
    return flat.kthvalue(k).values


# -- the trail ------------------------------------------------------------------------------------
@dataclass
class TrailEntry:
    """One point of the trail: the hard-masked network after an epoch of LTP.

    Attributes:
        epoch: epochs of LTP done (0: the starting point), counting a partial epoch as one.
        step: optimizer steps done.
        compression: prunable weights / kept prunable weights (``inf`` when none is kept).
        sparsity: fraction of prunable weights pruned.
        val_top1: validation top-1 accuracy of the hard-masked network (NaN without validation).
        val_loss: its validation loss.
        transition_fraction: share of weights with |w² − τ|/T < 4.
        thresholds: ``name -> τ_l``.
        temperatures: ``name -> T_l``.
        layer_sparsity: ``name -> fraction pruned``.
        soft_density: Σσ/N, the normalised soft-L0.
        partial: recorded mid-epoch, when the target compression stopped training.
        bn_recalibrated: batch-norm statistics were re-estimated for the hard-masked network.
        state: the hard-masked model's ``state_dict`` (None when not kept in memory).
        masks: the hard masks.
        path: checkpoint file, when the trail is saved to disk.
    """

    epoch: int
    step: int
    compression: float
    sparsity: float
    val_top1: float
    val_loss: float
    transition_fraction: float
    thresholds: dict[str, float]
    temperatures: dict[str, float]
    layer_sparsity: dict[str, float]
    soft_density: float
    partial: bool = False
    bn_recalibrated: bool = False
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    masks: Masks | None = field(default=None, repr=False)
    path: str | None = None

    def record(self) -> dict:
        """The JSON-able fields (no tensors)."""
        out = {k: getattr(self, k) for k in (
            "epoch", "step", "compression", "sparsity", "val_top1", "val_loss", "transition_fraction",
            "thresholds", "temperatures", "layer_sparsity", "soft_density", "partial", "bn_recalibrated", "path")}
        return out

    def restore(self, model: nn.Module) -> Masks:
        """Load this entry's weights into ``model`` (the unwrapped network) and return its masks.

        Raises:
            MethodError: the entry kept neither its state in memory nor a checkpoint file.
        """
        if self.state is not None:
            model.load_state_dict(self.state)
            masks = self.masks
        elif self.path is not None:
            from prunelab.core.checkpoints import load_checkpoint

            masks = load_checkpoint(self.path, model).masks
        else:
            raise MethodError(f"trail entry of epoch {self.epoch} kept no weights "
                              "(keep_states=False and no checkpoint_dir)")
        masks.validate(model)
        masks.apply(model)
        return masks.clone()


class Trail(list):
    """The list of :class:`TrailEntry`, one per epoch (the first is the starting point)."""

    def records(self) -> list[dict]:
        """JSON-able records of every entry."""
        return [e.record() for e in self]

    def pick(self, target_compression: float | None = None, min_accuracy: float | None = None,
             strict: bool = True) -> TrailEntry:
        """Choose an entry.

        Rules: with a target compression, the entry of smallest compression ≥ the target (ties:
        higher validation accuracy, then the earlier epoch); with an accuracy floor, the most
        compressed entry whose validation top-1 is ≥ the floor (ties: higher accuracy); with
        both, the entries meeting both, then the compression rule.

        Args:
            target_compression: wanted compression ratio (≥ 1), e.g. 40 for 40×.
            min_accuracy: validation top-1 floor, a fraction in [0, 1].
            strict: when no entry qualifies, raise (True) or fall back (False) to the most
                compressed entry (target) or the most accurate one (floor only).

        Returns:
            The chosen entry.

        Raises:
            MethodError: the trail is empty, or no entry qualifies and ``strict``.
        """
        if not self:
            raise MethodError("the LTP trail is empty: train for at least one epoch")
        if target_compression is None and min_accuracy is None:
            raise ConfigError("pick needs target_compression, min_accuracy or both")
        if target_compression is not None and not target_compression >= 1:
            raise ConfigError(f"target_compression must be >= 1, got {target_compression!r}")
        candidates = list(self)
        if min_accuracy is not None:
            candidates = [e for e in candidates if e.val_top1 >= min_accuracy]
        if target_compression is not None:
            # A hair of tolerance so 1/(1 - 0.975) = 39.99999 still counts as reaching 40x.
            candidates = [e for e in candidates if e.compression >= target_compression * (1 - 1e-9)]
            if candidates:
                return min(candidates, key=lambda e: (e.compression, -_acc(e), e.epoch))
        elif candidates:
            return max(candidates, key=lambda e: (e.compression, _acc(e)))
        wanted = " and ".join(
            ([f"compression >= {target_compression:g}"] if target_compression is not None else [])
            + ([f"val top-1 >= {min_accuracy:g}"] if min_accuracy is not None else []))
        best = f"max compression {max(e.compression for e in self):.3g}, max val top-1 {max(_acc(e) for e in self):.4f}"
        if strict:
            raise MethodError(f"no trail entry has {wanted} ({best}); train longer or raise penalty_weight")
        if target_compression is not None:
            return max(self, key=lambda e: (e.compression, _acc(e)))
        return max(self, key=lambda e: (_acc(e), e.compression))


def _acc(entry: TrailEntry) -> float:
    return -1.0 if math.isnan(entry.val_top1) else entry.val_top1


class LTPCallback(Callback):
    """Adds the LTP penalty to the loss and records the trail after every epoch.

    Args:
        wrapped: the :class:`SoftThresholdModel` being trained.
        penalty_weight: λ.
        penalty: ``"l0"`` (LTP), ``"l1"`` or ``"l2"``.
        val: validation split for the trail (None: accuracy NaN).
        keep_states: keep each entry's hard-masked ``state_dict`` in memory.
        checkpoint_dir: also save each entry with :func:`prunelab.core.checkpoints.save_checkpoint`.
        stall_fraction: warn when the transition fraction falls below this.
        stop_at_compression: stop training as soon as the hard mask reaches this compression
            (checked every ``check_every`` steps; the point is added to the trail).
        check_every: steps between those checks.
        calib: inputs (a tensor or a ``Split``) on which the batch-norm statistics of every
            hard-masked trail network are re-estimated (:func:`recalibrate_batchnorm`) before it
            is evaluated and kept; None or a model without batch-norm: no recalibration.
        eval_batch_size: batch size of the validation pass.
        log: progress lines (default: the ``prunelab.ltp`` logger).
    """

    def __init__(self, wrapped: SoftThresholdModel, penalty_weight: float, penalty: str = "l0", val=None,
                 keep_states: bool = True, checkpoint_dir: str | Path | None = None,
                 stall_fraction: float = 1e-3, stop_at_compression: float | None = None,
                 check_every: int = 50, calib=None, eval_batch_size: int = 1000,
                 log: Callable[[str], None] | None = None):
        if penalty not in PENALTIES:
            raise ConfigError(f"unknown penalty {penalty!r}; choose one of {', '.join(PENALTIES)}")
        if not (penalty_weight >= 0 and math.isfinite(penalty_weight)):
            raise ConfigError(f"penalty_weight (lambda) must be a number >= 0, got {penalty_weight!r}")
        self.wrapped, self.penalty_weight, self.penalty = wrapped, float(penalty_weight), penalty
        self.val, self.keep_states, self.stall_fraction = val, keep_states, stall_fraction
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.eval_batch_size, self.log = eval_batch_size, log or logger.info
        if stop_at_compression is not None and not stop_at_compression >= 1:
            raise ConfigError(f"stop_at_compression must be >= 1 or None, got {stop_at_compression!r}")
        if not isinstance(check_every, int) or check_every < 1:
            raise ConfigError(f"check_every must be an integer >= 1, got {check_every!r}")
        self.stop_at_compression, self.check_every = stop_at_compression, check_every
        self.calib = getattr(calib, "x", calib)
        self.trail = Trail()
        self.stalled_epochs: list[int] = []

    def on_train_begin(self, state) -> None:
        if not self.trail:
            self._record(epoch=0, step=state.step)

    def extra_loss(self, state) -> torch.Tensor | None:
        if self.penalty_weight == 0:
            self.wrapped._soft_l0 = None
            return None
        return self.penalty_weight * self.wrapped.penalty(self.penalty)

    def on_batch_end(self, state) -> None:
        if self.stop_at_compression is None or state.step % self.check_every:
            return
        with torch.no_grad():
            taus = self.wrapped.thresholds()
            kept = sum(int(hard_mask(w, taus[i]).sum()) for i, w in enumerate(self.wrapped.weights()))
        if kept * self.stop_at_compression <= self.wrapped.total() * (1 + 1e-9):
            self._record(epoch=state.epoch + 1, step=state.step, partial=True)
            state.stop = True

    def on_epoch_end(self, state) -> None:
        if self.trail and self.trail[-1].step == state.step:
            return  # already recorded when the target stopped training
        self._record(epoch=state.epoch + 1, step=state.step)

    @torch.no_grad()
    def _record(self, epoch: int, step: int, partial: bool = False) -> None:
        wrapped = self.wrapped
        model, masks = wrapped.hard_model()
        recalibrated = self.calib is not None and recalibrate_batchnorm(model, self.calib)
        kept, total = masks.kept(), masks.total()
        metrics = evaluate(model, self.val, self.eval_batch_size) if self.val is not None and len(self.val) else {}
        taus, temps = wrapped.thresholds().detach(), wrapped.temperatures()
        soft = sum(soft_mask(w, taus[i], float(temps[i])).sum() for i, w in enumerate(wrapped.weights()))
        entry = TrailEntry(
            epoch=epoch, step=step, partial=partial,
            compression=total / kept if kept else math.inf,
            sparsity=1 - kept / total,
            val_top1=metrics.get("top1", math.nan), val_loss=metrics.get("loss", math.nan),
            transition_fraction=wrapped.transition_fraction(),
            thresholds={n: float(taus[i]) for i, n in enumerate(wrapped.names)},
            temperatures={n: float(temps[i]) for i, n in enumerate(wrapped.names)},
            layer_sparsity={n: d["sparsity"] for n, d in masks.per_layer().items()},
            soft_density=float(soft) / total,
            bn_recalibrated=recalibrated,
            state={k: v.detach().clone() for k, v in model.state_dict().items()} if self.keep_states else None,
            masks=masks,
        )
        if self.checkpoint_dir is not None:
            from prunelab.training import distributed
            from prunelab.core.checkpoints import save_checkpoint

            path = self.checkpoint_dir / f"ltp_epoch{epoch:03d}.safetensors"
            if distributed.is_main():   # under torchrun rank 0 alone writes
                path = save_checkpoint(path, model, masks, metrics=entry.record())
            elif entry.state is None:   # the file may not be visible here: keep the weights instead
                entry.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            entry.path = str(path)
        self.trail.append(entry)
        self.log(f"ltp epoch {epoch}: compression {entry.compression:.2f}x, val top-1 {entry.val_top1:.4f}, "
                 f"transition fraction {entry.transition_fraction:.4f}")
        if epoch > 0 and entry.transition_fraction < self.stall_fraction and entry.sparsity < 1:
            self.stalled_epochs.append(epoch)
            message = (f"LTP pruning has stalled at epoch {epoch}: only {entry.transition_fraction:.2e} of the "
                       f"weights lie in the transition band |w^2 - tau|/T < 4, so the thresholds barely learn; "
                       f"raise temperature (T0) or threshold_lr, or pick from the trail so far")
            warnings.warn(message, LTPStallWarning, stacklevel=2)
            self.log("warning: " + message)


def learn_thresholds(model: nn.Module, data, config: TrainConfig, *, penalty_weight: float = 1.0,
                     temperature: float = 2.0, threshold_lr: float = 1.0, threshold_momentum: float = 0.0,
                     penalty: str = "l0", gradient: str = "approx", threshold_init_quantile: float = 0.0,
                     val=None, keep_states: bool = True, checkpoint_dir: str | Path | None = None,
                     stall_fraction: float = 1e-3, stop_at_compression: float | None = None,
                     check_every: int = 50, bn_calibration_size: int = 2000,
                     log: Callable[[str], None] | None = None,
                     **prunable_kwargs) -> tuple[Trail, SoftThresholdModel]:
    """Run LTP on ``model`` (trained in place) with the core training loop and return the trail.

    Args:
        model: a (pretrained) network; its weights are trained in place, unmasked (the trail
            holds the hard-masked copies).
        data: a ``Dataset`` (``val`` defaults to its validation split) or a training ``Split``.
        config: the training recipe for the weights (optimizer, lr, schedule, epochs, ...).
        penalty_weight: λ, weight of the normalised penalty.
        temperature: T₀ (Eq. 15).
        threshold_lr: learning rate of the relative thresholds (separate parameter group, same
            optimizer and schedule as the weights).
        threshold_momentum: SGD momentum of the thresholds (see
            :meth:`SoftThresholdModel.parameter_groups`).
        penalty: ``"l0"`` (LTP), ``"l1"`` or ``"l2"``.
        gradient: ``"approx"`` (Eq. 14) or ``"exact"``.
        threshold_init_quantile: initial τ_l as a quantile of w_l².
        val: validation split of the trail.
        keep_states: keep each entry's weights in memory.
        checkpoint_dir: also save each entry as a prunelab checkpoint there.
        stall_fraction: warn below this transition fraction.
        stop_at_compression: stop once the hard mask reaches this compression.
        check_every: steps between checks of ``stop_at_compression``.
        bn_calibration_size: training samples (a seeded random subset) on which each trail
            network's batch-norm statistics are re-estimated (0: never; no effect without BN).
        log: progress lines.
        **prunable_kwargs: which layers are thresholded (see ``prunable_parameters``).

    Returns:
        ``(trail, wrapped)``: the :class:`Trail` (entry 0 = the starting point) and the
        :class:`SoftThresholdModel` at the end of training.
    """
    if not (threshold_lr > 0 and math.isfinite(threshold_lr)):
        raise ConfigError(f"threshold_lr must be a positive number, got {threshold_lr!r}")
    if hasattr(data, "train") and hasattr(data, "val"):
        val = data.val if val is None else val
        data = data.train
    calib = None
    if bn_calibration_size > 0:
        x = getattr(data, "x", None)
        x = data[0] if x is None else x
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))[:bn_calibration_size]
        calib = x[pick.sort().values]
    wrapped = SoftThresholdModel(model, temperature, gradient, threshold_init_quantile, **prunable_kwargs)
    callback = LTPCallback(wrapped, penalty_weight, penalty, val=val, keep_states=keep_states,
                           checkpoint_dir=checkpoint_dir, stall_fraction=stall_fraction,
                           stop_at_compression=stop_at_compression, check_every=check_every,
                           calib=calib, eval_batch_size=config.eval_batch_size, log=log)
    optimizer = make_optimizer(wrapped.parameter_groups(threshold_lr, threshold_momentum), config)
    # The training split only: the callback evaluates the hard-masked network itself.
    train(wrapped, data, config, callbacks=[callback], optimizer=optimizer, label="ltp")
    return callback.trail, wrapped


# -- the registered method --------------------------------------------------------------------
@dataclass(frozen=True)
class LTPHparams:
    """Hyperparameters of LTP.

    Defaults were tuned on the Fashion-MNIST validation split with LeNet-300-100 (dense model:
    20 Adam epochs; budget 10 epochs, fine-tune with Adam 3e-3 cosine) for 40x compression.
    Sparsity is set *indirectly* by ``penalty_weight`` (the trail settles where the L0 pull
    balances the task loss), so other targets want other λ: on that setup λ = 1, 3, 15 (with
    ``gradient="exact"``) reached 20x, 40x and 100x at epochs 3, 7 and 2 of 9.

    Attributes:
        penalty_weight: λ, weight of the penalty normalised by the number of prunable weights.
        temperature: T₀ of T_l = T₀·Var(|w_l|).
        threshold_lr: learning rate of the relative thresholds θ_l = τ_l / mean(w_l² at start).
        threshold_momentum: SGD momentum of the thresholds (0: see
            :meth:`SoftThresholdModel.parameter_groups` for why).
        penalty: ``"l0"`` (LTP), ``"l1"`` or ``"l2"`` (batch-norm study).
        gradient: ``"approx"`` (Eq. 14) or ``"exact"``.
        threshold_init_quantile: initial τ_l as a quantile of w_l² (0: τ = 0).
        epochs: the whole budget, LTP plus fine-tuning (None: the harness's retraining epochs, so
            LTP costs what retraining costs the one-shot methods).
        min_finetune_epochs: LTP runs at most ``epochs - min_finetune_epochs`` epochs.
        stop_at_target: stop LTP as soon as the hard mask reaches the target compression
            (checked every ``check_every`` steps) and fine-tune for the rest of the budget;
            otherwise LTP runs its maximum and the fine-tune gets ``min_finetune_epochs``.
        check_every: steps between target checks.
        optimizer: optimizer of the LTP phase (``"sgd"``, ``"adam"``, ``"adamw"``; None: the
            retraining config's); the fine-tune always uses the retraining config. The defaults
            of ``threshold_lr`` and ``penalty_weight`` are tuned for SGD (with Adam the threshold
            step no longer scales with the gradient).
        lr: learning rate of the weights during LTP (None: the retraining config's); momentum,
            schedule and batch size come from the retraining config.
        stall_fraction: warn when the transition fraction falls below this.
        match_target: bring the picked entry to the target before the fine-tune, so comparisons
            stay at matched compression: short of it, prune further by global magnitude (the
            smallest |w| among the kept weights; share in ``info["filled_fraction"]``); past it by
            more than 2 % (the last entry only), lower every threshold by one common factor,
            reviving the pruned weights of largest w²/τ_l (share in ``info["revived_fraction"]``).
            False: keep the entry as it is (a shortfall is logged).
    """

    penalty_weight: float = 3.0
    temperature: float = 2.0
    threshold_lr: float = 1.0
    threshold_momentum: float = 0.0
    penalty: str = "l0"
    gradient: str = "approx"
    threshold_init_quantile: float = 0.0
    epochs: int | None = None
    min_finetune_epochs: int = 1
    stop_at_target: bool = True
    check_every: int = 10
    optimizer: str | None = "sgd"
    lr: float | None = 0.03
    stall_fraction: float = 1e-3
    match_target: bool = True

    def __post_init__(self):
        if self.penalty not in PENALTIES:
            raise ConfigError(f"unknown penalty {self.penalty!r}; choose one of {', '.join(PENALTIES)}")
        if self.gradient not in GRADIENTS:
            raise ConfigError(f"unknown gradient {self.gradient!r}; choose one of {', '.join(GRADIENTS)}")
        for name in ("penalty_weight", "min_finetune_epochs", "threshold_momentum"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("temperature", "threshold_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.threshold_init_quantile < 1.0:
            raise ConfigError(f"threshold_init_quantile must be in [0, 1), got {self.threshold_init_quantile!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ConfigError(f"epochs must be an integer >= 1 or None, got {self.epochs!r}")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ConfigError(f"check_every must be an integer >= 1, got {self.check_every!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)} or None")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0 or None, got {self.lr!r}")


@register("ltp")
class LTP(TrainingMethod):
    """Learned Threshold Pruning (Azarian et al. 2020): soft masks σ((w² − τ_l)/T_l) (Eq. 1),
    T_l = T₀·Var|w_l| (Eq. 15), a soft-L0 penalty (Eq. 6), Eq. 14 gradients; see the module
    docstring for every choice the paper leaves open.

    ``run`` starts from ``ctx.dense_model`` and spends ``epochs`` epochs in all (default: the
    retraining budget): LTP with the retraining recipe for the weights plus a threshold group,
    until the hard mask reaches the target compression 1/(1 − target) (or for at most
    ``epochs - min_finetune_epochs`` epochs), then it picks the trail entry of smallest
    compression ≥ the target (falling back, with a logged warning, to the most compressed entry),
    brings it to the target (``match_target``, see the module docstring) and fine-tunes it with
    that hard mask fixed for the remaining epochs.
    """

    Hparams = LTPHparams

    def run(self, ctx: MethodContext) -> MethodOutcome:
        hp = self.hparams
        target = check_sparsity(ctx.target)
        if ctx.dense_model is None:
            raise MethodError("LTP starts from a trained dense model, but the harness gave none "
                              "(ctx.dense_model is None); train the dense model first")
        base = ctx.retrain_config
        budget = hp.epochs if hp.epochs is not None else base.epochs
        max_ltp = budget - hp.min_finetune_epochs
        if max_ltp < 1:
            raise ConfigError(f"LTP needs at least one epoch: the budget ({budget} epochs) minus "
                              f"min_finetune_epochs ({hp.min_finetune_epochs}) is {max_ltp}; "
                              "raise the retraining epochs or set epochs")
        config = base.replace(epochs=max_ltp, optimizer=hp.optimizer or base.optimizer, lr=hp.lr or base.lr,
                              seed=ctx.seed)
        target_compression = 1.0 / (1.0 - target)
        model = copy.deepcopy(ctx.dense_model)
        t0 = time.perf_counter()
        trail, _ = learn_thresholds(
            model, ctx.data, config, penalty_weight=hp.penalty_weight, temperature=hp.temperature,
            threshold_lr=hp.threshold_lr, threshold_momentum=hp.threshold_momentum, penalty=hp.penalty,
            gradient=hp.gradient,
            threshold_init_quantile=hp.threshold_init_quantile, stall_fraction=hp.stall_fraction,
            stop_at_compression=target_compression if hp.stop_at_target and target > 0 else None,
            check_every=hp.check_every, log=ctx.log)
        train_time = time.perf_counter() - t0
        entry = trail.pick(target_compression=target_compression, strict=False)
        reached = entry.compression >= target_compression * (1 - 1e-9)
        ltp_epochs = trail[-1].epoch
        finetune_epochs = budget - ltp_epochs
        masks, matched = restore_at_target(model, trail, entry, target, match=hp.match_target, log=ctx.log)
        if not reached:
            ctx.log(f"warning: LTP reached only {entry.compression:.2f}x of the {target_compression:.2f}x "
                    f"target in {max_ltp} epochs; raise penalty_weight, threshold_lr or epochs"
                    + ("; pruned the rest by global magnitude" if hp.match_target else ""))
        phase_times = {"prune": train_time}
        finetune_history: list[dict] = []
        if finetune_epochs > 0:
            t1 = time.perf_counter()
            # Keep the best-validation epoch, as the harness does when retraining one-shot methods.
            state = train(model, ctx.data, base.replace(epochs=finetune_epochs, seed=ctx.seed + 1),
                          masks=masks, label="ltp fine-tune", select_best=len(ctx.data.val) > 0)
            finetune_history = state.history
            phase_times["retrain"] = time.perf_counter() - t1
        info = {
            "picked_epoch": entry.epoch, "picked_step": entry.step, "picked_compression": entry.compression,
            "picked_val_top1": entry.val_top1, "target_compression": target_compression,
            "target_reached": reached, **matched, "ltp_epochs": ltp_epochs,
            "finetune_epochs": finetune_epochs,
            "thresholds": entry.thresholds,
        }
        return MethodOutcome(model=model, masks=masks,
                             traces={"trail": trail.records(), "finetune": finetune_history},
                             info=info, phase_times=phase_times)
