"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune", arXiv:1710.01878).

Sparsity rises from ``s_i`` to ``s_f`` along the cubic schedule (their Eq. 1)

    s_t = s_f + (s_i − s_f) · (1 − (t − t₀) / (n·Δt))³      for t ∈ {t₀, t₀ + Δt, …, t₀ + n·Δt}

with ``t`` the optimizer step: every ``Δt`` steps the smallest-magnitude surviving weights are
pruned (globally or per layer, :mod:`prunelab.methods.magnitude`) until ``s_t`` of the prunable
weights are pruned, and training continues with the masks fixed in between (the training loop
keeps them applied and zeroes the optimizer state at pruned entries). It is the standard baseline
for training-time methods (Gale et al. 2019).

Choices: the end step ``t₀ + n·Δt`` is given directly (``end_step``); when ``end_step − t₀`` is
not a multiple of ``Δt`` the last pruning event is moved to ``end_step`` itself, so the final
sparsity is always exactly ``s_f``. Pruned weights never come back (masks are monotone). If
training stops before ``end_step``, the final sparsity is still enforced at the end of training
(and a warning logged), so the method's contract (masks at the target) holds.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from prunelab.errors import ConfigError, MethodError
from prunelab.core.masks import Masks
from prunelab.training.loop import Callback, train
from prunelab.methods import register
from prunelab.methods.base import MethodContext, MethodOutcome, TrainingMethod, check_sparsity
from prunelab.methods.magnitude import SCOPES, MagnitudePruning

STARTS = ("dense", "init")
AUTO_EVENTS = 20  # pruning events when ``frequency`` is None


def cubic_sparsity(step: int, initial: float, final: float, begin_step: int, end_step: int) -> float:
    """Zhu & Gupta's target sparsity at optimizer step ``step``.

    Args:
        step: optimizer steps done.
        initial: s_i, the sparsity at ``begin_step``.
        final: s_f, the sparsity from ``end_step`` on.
        begin_step: t₀.
        end_step: t₀ + n·Δt (≥ begin_step).

    Returns:
        ``initial`` for ``step <= begin_step``, ``final`` for ``step >= end_step``, the cubic in
        between.
    """
    if step <= begin_step:
        return initial
    if step >= end_step:
        return final
    progress = (step - begin_step) / (end_step - begin_step)
    return final + (initial - final) * (1.0 - progress) ** 3


class GradualMagnitudePruning(Callback):
    """A training-loop callback pruning along the cubic schedule.

    Needs the loop to hold masks (``train(..., masks=Masks.ones(model))``); the callback updates
    those mask tensors in place, so the loop keeps applying the new masks.

    Args:
        final_sparsity: s_f, fraction of the prunable weights pruned at the end.
        initial_sparsity: s_i, pruned at the first event (``begin_step``).
        begin_step: t₀, the step of the first pruning event.
        end_step: the step of the last event (sparsity s_f).
        frequency: Δt, steps between events.
        scope: ``"global"`` (one magnitude threshold) or ``"layer"`` (every layer pruned to s_t).
        log: progress lines.

    Attributes:
        events: one dict per pruning event: ``step``, ``target`` (s_t), ``sparsity`` reached.
    """

    def __init__(self, final_sparsity: float, initial_sparsity: float = 0.0, begin_step: int = 0,
                 end_step: int = 1000, frequency: int = 100, scope: str = "global",
                 log: Callable[[str], None] | None = None):
        self.final = check_sparsity(final_sparsity)
        self.initial = check_sparsity(initial_sparsity)
        if self.initial > self.final:
            raise ConfigError(f"initial_sparsity ({initial_sparsity}) exceeds final_sparsity ({final_sparsity})")
        if not (isinstance(begin_step, int) and isinstance(end_step, int) and 0 <= begin_step <= end_step):
            raise ConfigError(f"need integer steps 0 <= begin_step <= end_step, got {begin_step!r}, {end_step!r}")
        if not isinstance(frequency, int) or frequency < 1:
            raise ConfigError(f"frequency (steps between pruning events) must be an integer >= 1, got {frequency!r}")
        if scope not in SCOPES:
            raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self.pruner = MagnitudePruning(scope=scope)
        self.log = log or (lambda message: None)
        self.events: list[dict] = []

    def is_event(self, step: int) -> bool:
        """Whether the schedule prunes after ``step`` optimizer steps."""
        if step < self.begin_step or step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step

    def target(self, step: int) -> float:
        """s_t at ``step`` (see :func:`cubic_sparsity`)."""
        return cubic_sparsity(step, self.initial, self.final, self.begin_step, self.end_step)

    def on_train_begin(self, state) -> None:
        if state.masks is None:
            raise MethodError("gradual magnitude pruning needs masks held by the training loop: "
                              "call train(..., masks=Masks.ones(model))")
        if self.is_event(state.step):
            self._prune(state, state.step)

    def on_batch_end(self, state) -> None:
        if self.is_event(state.step):
            self._prune(state, state.step)

    def on_epoch_end(self, state) -> None:
        # The epoch's record gets the sparsity it ended at (the trail of accuracy vs compression).
        if state.history and state.masks is not None:
            state.history[-1]["sparsity"] = state.masks.sparsity()

    def on_train_end(self, state) -> None:
        if state.masks.sparsity() < self.final - 0.5 / max(1, state.masks.total()):
            self.log(f"warning: training ended at step {state.step}, before the schedule's end step "
                     f"{self.end_step}; pruning to the final sparsity {self.final} now")
            self._prune(state, self.end_step)

    @torch.no_grad()
    def _prune(self, state, step: int) -> None:
        target = self.target(step)
        masks: Masks = state.masks
        new = self.pruner.prune(state.model, masks, target)
        masks.update_(new)
        masks.apply(state.model)
        masks.mask_optimizer_state(state.optimizer, state.model)
        self.events.append({"step": step, "target": target, "sparsity": masks.sparsity()})


class _BestAtFinal(Callback):
    """Snapshot the weights of the best-validation epoch among those ending at final sparsity."""

    def __init__(self, schedule: GradualMagnitudePruning):
        self.schedule, self.best, self.state, self.epoch = schedule, -1.0, None, None

    def on_epoch_end(self, state) -> None:
        record = state.history[-1]
        if state.step < self.schedule.end_step or "val_top1" not in record:
            return
        if record["val_top1"] >= self.best:  # ties: the later epoch, as the training loop does
            self.best, self.epoch = record["val_top1"], record["epoch"]
            self.state = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


@dataclass(frozen=True)
class GMPHparams:
    """Hyperparameters of gradual magnitude pruning.

    Attributes:
        start: ``"dense"`` (default: prune while fine-tuning the harness's trained dense model
            for the retraining budget, the setting LTP is compared in) or ``"init"`` (train from
            the seeded initialisation for the dense-training budget, pruning as it goes, as Zhu &
            Gupta also do).
        initial_sparsity: s_i.
        begin_fraction: t₀ as a fraction of the run's optimizer steps.
        end_fraction: the last pruning event as a fraction of the run's steps (the rest of the
            run recovers at s_f; Zhu & Gupta stop pruning well before the end).
        frequency: Δt, optimizer steps between pruning events (None: a twentieth of the pruning
            range, at least 1, so the schedule has about 20 events whatever the data set's size;
            on Fashion-MNIST with 10 epochs and ``end_fraction=0.5`` that is 107 steps).
        begin_step: t₀ in optimizer steps (overrides ``begin_fraction``; None: use the fraction).
        end_step: the last pruning event in optimizer steps (overrides ``end_fraction``; must lie
            within the run).
        scope: ``"global"`` or ``"layer"`` magnitude.
        epochs: length of the run (None: the retraining budget for ``start="dense"``, the dense
            budget for ``start="init"``).
        select_best: keep, among the epochs that end at the final sparsity, the one with the best
            validation top-1 (as the harness does when retraining one-shot methods); otherwise
            the last epoch.
    """

    start: str = "dense"
    initial_sparsity: float = 0.0
    begin_fraction: float = 0.0
    end_fraction: float = 0.75
    frequency: int | None = None
    scope: str = "global"
    epochs: int | None = None
    select_best: bool = True
    begin_step: int | None = None
    end_step: int | None = None

    def __post_init__(self):
        if self.start not in STARTS:
            raise ConfigError(f"unknown start {self.start!r}; choose one of {', '.join(STARTS)}")
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if not 0.0 <= self.begin_fraction <= self.end_fraction <= 1.0:
            raise ConfigError(f"need 0 <= begin_fraction <= end_fraction <= 1, got "
                              f"{self.begin_fraction} and {self.end_fraction}")
        check_sparsity(self.initial_sparsity)
        if self.frequency is not None and (not isinstance(self.frequency, int) or self.frequency < 1):
            raise ConfigError(f"frequency must be an integer >= 1 or None, got {self.frequency!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ConfigError(f"epochs must be an integer >= 1 or None, got {self.epochs!r}")
        for name in ("begin_step", "end_step"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name} must be an integer >= 0 or None, got {value!r}")


@register("gmp")
class GMP(TrainingMethod):
    """Gradual magnitude pruning with Zhu & Gupta's cubic schedule (Eq. 1 of arXiv:1710.01878)."""

    Hparams = GMPHparams

    def run(self, ctx: MethodContext) -> MethodOutcome:
        hp = self.hparams
        target = check_sparsity(ctx.target)
        if hp.start == "dense":
            if ctx.dense_model is None:
                raise MethodError("gmp with start='dense' needs a trained dense model (ctx.dense_model is None); "
                                  "train one first or use start='init'")
            model, base = copy.deepcopy(ctx.dense_model), ctx.retrain_config
        else:
            model = ctx.model_factory()
            model.load_state_dict(ctx.init_state)
            base = ctx.train_config
        config = base.replace(epochs=hp.epochs or base.epochs, seed=ctx.seed)
        if config.epochs < 1:
            raise ConfigError("gmp needs a training budget of at least one epoch")
        steps_per_epoch = math.ceil(len(ctx.data.train) / config.batch_size)
        total = config.epochs * steps_per_epoch
        initial = min(hp.initial_sparsity, target)
        begin_step = hp.begin_step if hp.begin_step is not None else round(hp.begin_fraction * total)
        end_step = hp.end_step if hp.end_step is not None else round(hp.end_fraction * total)
        if not 0 <= begin_step <= end_step <= total:
            raise ConfigError(f"gmp needs 0 <= begin_step <= end_step <= the run's {total} optimizer steps "
                              f"({config.epochs} epochs x {steps_per_epoch}), got {begin_step} and {end_step}")
        frequency = hp.frequency or max(1, round((end_step - begin_step) / AUTO_EVENTS))
        callback = GradualMagnitudePruning(
            final_sparsity=target, initial_sparsity=initial, begin_step=begin_step, end_step=end_step,
            frequency=frequency, scope=hp.scope, log=ctx.log)
        masks = Masks.ones(model)
        keeper = _BestAtFinal(callback) if hp.select_best and len(ctx.data.val) else None
        t0 = time.perf_counter()
        state = train(model, ctx.data, config, masks=masks, callbacks=[callback] + ([keeper] if keeper else []),
                      label="gmp")
        if keeper is not None and keeper.state is not None:
            model.load_state_dict(keeper.state)
        seconds = time.perf_counter() - t0
        history = [dict(record) for record in state.history]
        return MethodOutcome(
            model=model, masks=masks.clone(),
            traces={"epochs": history, "pruning": callback.events},
            info={"start": hp.start, "epochs": config.epochs, "begin_step": callback.begin_step,
                  "end_step": callback.end_step, "frequency": frequency, "events": len(callback.events),
                  "selected_epoch": keeper.epoch if keeper is not None else len(history)},
            phase_times={"train": seconds})
