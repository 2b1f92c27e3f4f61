"""LTP in a training loop you write: the thresholds, the penalty and the trail as step hooks.

:func:`~prunelab.methods.ltp.trail.learn_thresholds` runs LTP (Azarian et al. 2020) with
prunelab's loop. :class:`LearnedThresholds` gives the same pieces to any loop, optimizer, LR
scheduler, data and loss: train ``ltp.model`` (the soft-thresholded network) with an optimizer
over ``ltp.parameter_groups(...)``, add ``ltp.penalty_term()`` to the loss after each forward,
and count steps with ``ltp.step()`` (or ``ltp.attach(optimizer)``). With ``target_compression``,
``step()`` returns True once the hard mask reaches it, and :meth:`LearnedThresholds.hard_model`
brings the result to exactly the target as the harness's ``match_target`` does (short of it:
pruned further by global magnitude; past it: every threshold lowered by one common factor).

Example:
    >>> ltp = LearnedThresholds(model, penalty_weight=3.0, target_compression=10)
    >>> optimizer = torch.optim.AdamW(ltp.parameter_groups(threshold_lr=0.05), lr=1e-3)
    >>> scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 1000)
    >>> handle = ltp.attach(optimizer)              # or ltp.step() after optimizer.step()
    >>> for x, y in loader:
    ...     loss = F.cross_entropy(ltp.model(x), y) + ltp.penalty_term()
    ...     loss.backward(); optimizer.step(); optimizer.zero_grad(); scheduler.step()
    ...     if ltp.reached:
    ...         break
    >>> pruned, masks = ltp.hard_model()            # a copy at exactly 10x, and its masks
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from prunelab.core.masks import Masks
from prunelab.errors import ConfigError
from prunelab.methods.ltp.soft_mask import SoftThresholdModel, hard_mask
from prunelab.methods.ltp.thresholds import restore_at_target
from prunelab.methods.ltp.trail import LTPCallback, Trail


class _LoopState:
    """What :class:`~prunelab.methods.ltp.trail.LTPCallback` reads of a loop."""

    def __init__(self):
        self.step, self.epoch, self.stop = 0, 0, False


class LearnedThresholds:
    """Learned Threshold Pruning inside your own training loop (module docstring).

    Args:
        model: the network (pretrained, as the paper starts from); trained in place, unmasked.
        penalty_weight: λ, weight of the normalised penalty (:meth:`penalty_term`).
        temperature: T₀ of T_l = T₀·Var|w_l|.
        gradient: ``"approx"`` (Eq. 14) or ``"exact"``.
        penalty: ``"l0"`` (LTP), ``"l1"`` or ``"l2"``.
        threshold_init_quantile: initial τ_l as a quantile of w_l².
        target_compression: stop point (prunable weights / kept ones, e.g. 10 for 10x): checked
            every ``check_every`` steps; once reached, :attr:`reached` is True and a trail entry
            is recorded. None: no target (:meth:`hard_model` gives the current hard mask).
        check_every: steps between checks of the target.
        val: validation data evaluated for every trail entry (anything ``evaluate`` takes).
        calib: batch-norm recalibration data for every trail entry (see ``LTPCallback``).
        forward_fn, loss_fn: how the validation pass runs the network (as ``train``).
        keep_states: keep each trail entry's weights in memory (needed to restore entries).
        checkpoint_dir: also save every trail entry there.
        stall_fraction: warn when the transition fraction falls below this.
        log: progress lines (default: the ``prunelab.ltp`` logger).
        **prunable_kwargs: which weights are thresholded (``exclude=...``, ``embeddings=True``,
            ``rule=...``; see ``prunelab.core.prunable.prunable_parameters``).

    Attributes:
        model: the :class:`SoftThresholdModel` to call and train in place of the network
            (training mode: soft masks; ``eval()``: the hard mask).
        network: the original network.
        target_compression: the target, or None.
        match_info: ``{"filled_fraction", "revived_fraction"}`` of the last :meth:`hard_model`
            with a target: shares of the prunable weights pruned by the magnitude fill or revived
            by lowering the thresholds.

    Raises:
        ConfigError: a bad λ, T₀, penalty, target or ``check_every``.
    """

    def __init__(self, model: nn.Module, penalty_weight: float = 1.0, temperature: float = 2.0, *,
                 gradient: str = "approx", penalty: str = "l0", threshold_init_quantile: float = 0.0,
                 target_compression: float | None = None, check_every: int = 10, val=None, calib=None,
                 forward_fn=None, loss_fn=None, keep_states: bool = True,
                 checkpoint_dir: str | Path | None = None, stall_fraction: float = 1e-3,
                 log: Callable[[str], None] | None = None, **prunable_kwargs):
        self.network = model
        self.model = SoftThresholdModel(model, temperature, gradient, threshold_init_quantile, **prunable_kwargs)
        self.target_compression = target_compression
        self.match_info: dict = {}
        self._callback = LTPCallback(
            self.model, penalty_weight, penalty, val=val, keep_states=keep_states, checkpoint_dir=checkpoint_dir,
            stall_fraction=stall_fraction, stop_at_compression=target_compression, check_every=check_every,
            calib=calib, log=log, forward_fn=forward_fn, loss_fn=loss_fn)
        self._state = _LoopState()
        self._callback.on_train_begin(self._state)

    # -- the loop's hooks ---------------------------------------------------------------------
    def parameter_groups(self, threshold_lr: float, threshold_momentum: float = 0.0,
                         threshold_weight_decay: float = 0.0) -> list[dict]:
        """Optimizer parameter groups: the network's parameters, then the thresholds with their
        own learning rate (no momentum, no weight decay by default; see
        :meth:`SoftThresholdModel.parameter_groups`). With Adam/AdamW a threshold moves by about
        ``threshold_lr`` (relative to its layer's mean w²) per step whatever its gradient, so use
        a small one (0.01 to 0.1); the SGD defaults of ``learn_thresholds`` use 1.0.

        Raises:
            ConfigError: ``threshold_lr`` not a positive number.
        """
        if not (threshold_lr > 0 and math.isfinite(threshold_lr)):
            raise ConfigError(f"threshold_lr must be a positive number, got {threshold_lr!r}")
        return self.model.parameter_groups(threshold_lr, threshold_momentum, threshold_weight_decay)

    def penalty_term(self) -> torch.Tensor:
        """λ · penalty of the current step, to add to the loss after the forward of ``model``
        (the L0 term reuses that forward's soft masks)."""
        extra = self._callback.extra_loss(self._state)
        if extra is None:
            return torch.zeros((), device=self.model.threshold_scale.device)
        return extra

    def step(self) -> bool:
        """Count one optimizer step (call it after ``optimizer.step()``, or use :meth:`attach`);
        every ``check_every`` steps check the target. Returns :attr:`reached`."""
        self._state.step += 1
        if not self._state.stop:
            self._callback.on_batch_end(self._state)
        return self._state.stop

    def attach(self, optimizer: torch.optim.Optimizer):
        """Call :meth:`step` after every ``optimizer.step()`` (a post-step hook); returns the
        hook's handle (``handle.remove()`` detaches it)."""
        return optimizer.register_step_post_hook(lambda _optimizer, _args, _kwargs: self.step())

    def end_epoch(self) -> None:
        """Record a trail entry for the epoch just finished (optional; the trail's epochs)."""
        self._callback.on_epoch_end(self._state)
        self._state.epoch += 1

    def record(self) -> None:
        """Record a trail entry now (the current hard mask, evaluated on ``val``)."""
        if not self.trail or self.trail[-1].step != self._state.step:
            self._callback._record(epoch=self._state.epoch + 1, step=self._state.step, partial=True)

    # -- progress and results -----------------------------------------------------------------
    @property
    def trail(self) -> Trail:
        """The trail: entry 0 at the start, then every recorded point."""
        return self._callback.trail

    @property
    def steps(self) -> int:
        """Optimizer steps counted."""
        return self._state.step

    @property
    def reached(self) -> bool:
        """The hard mask reached ``target_compression`` (at a check)."""
        return self._state.stop

    @torch.no_grad()
    def compression(self) -> float:
        """Prunable weights / weights kept by the current hard mask (``inf`` when none is kept)."""
        taus = self.model.thresholds()
        kept = sum(int(hard_mask(w, taus[i]).sum()) for i, w in enumerate(self.model.weights()))
        return self.model.total() / kept if kept else math.inf

    def hard_model(self, target_compression: float | None = None, exact: bool = True) -> tuple[nn.Module, Masks]:
        """A hard-masked copy of the network and its masks.

        Without a target (neither here nor at construction): the current hard mask 1[w² > τ_l].
        With one, the current point (recorded in the trail first) brought to exactly the target:
        past it, every threshold lowered by one common factor (the pruned weights of largest
        w²/τ_l come back, LTP's per-layer allocation is kept); short of it, pruned further by
        global magnitude. ``exact=False`` does what the harness's ``match_target`` does instead:
        the trail entry of smallest compression at or above the target (the most compressed one
        if none is), kept as it is when less than 2 % past the target.

        Args:
            target_compression: the target (default: the one given at construction).
            exact: see above.

        Returns:
            ``(model, masks)``: a deep copy of the network with the masks applied.

        Example:
            >>> pruned, masks = ltp.hard_model(target_compression=10)
            >>> masks.pruned() == round(0.9 * masks.total())
            True
        """
        target = self.target_compression if target_compression is None else target_compression
        if target is None:
            return self.model.hard_model()
        if not target >= 1:
            raise ConfigError(f"target_compression must be >= 1, got {target!r}")
        self.record()
        entry = self.trail[-1] if exact else self.trail.pick(target_compression=target, strict=False)
        model = copy.deepcopy(self.network)     # the unmasked weights of the last entry
        kwargs = {"tolerance": 0.0} if exact else {}
        masks, self.match_info = restore_at_target(model, self.trail, entry, 1.0 - 1.0 / target,
                                                   log=self._callback.log, **kwargs)
        return model, masks

    def masks(self, target_compression: float | None = None, exact: bool = True) -> Masks:
        """The masks of :meth:`hard_model` (the network itself is not changed)."""
        return self.hard_model(target_compression, exact)[1]
