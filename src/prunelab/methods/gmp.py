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

On a transformer nothing changes (Zhu & Gupta pruned LSTM language models and GNMT too): scores
are per weight and the schedule counts optimizer steps, whatever the optimizer (AdamW's moments
at pruned entries are zeroed with the masks). The tied head/embedding is not prunable by default
(Zhu & Gupta pruned their embeddings); global scope prunes the residual projections harder, as
:mod:`prunelab.methods.magnitude` explains.

Three ways to use the schedule:

- with prunelab's loop: ``train(model, data, config, masks=Masks.ones(model),
  callbacks=[GradualMagnitudePruning(...)])`` (any data, ``forward_fn``/``loss_fn`` as ``train``
  takes them);
- in your own loop, with hooks: ``gmp.attach(optimizer, model)`` once, then train as usual; every
  ``optimizer.step()`` keeps the masks exact and prunes when the schedule says so;
- in your own loop, explicitly: ``gmp.step(model, optimizer)`` after every ``optimizer.step()``.

Example:
    >>> gmp = GradualMagnitudePruning(final_sparsity=0.9, begin_step=0, end_step=150, frequency=10)
    >>> handle = gmp.attach(optimizer, model)
    >>> for step, (x, y) in zip(range(200), loader):      # the user's loop, unchanged
    ...     loss = F.cross_entropy(model(x), y); loss.backward()
    ...     optimizer.step(); optimizer.zero_grad(); scheduler.step()
    >>> gmp.masks.sparsity()                                # exactly 0.9 from step 150 on
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from torch import nn

from prunelab.errors import ConfigError, MethodError
from prunelab.core.masks import MaskHandle, Masks
from prunelab.core.prunable import resolve_parameters
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


def masks_for(model: nn.Module, masks: Masks) -> Masks:
    """``masks`` keyed by ``model``'s canonical parameter names, each on its parameter's device.

    Args:
        model: the network (or its ``torch.compile``/DDP wrapper).
        masks: masks naming its parameters (wrapper-prefixed names and tied aliases resolve).

    Returns:
        ``masks`` itself when already so, otherwise a new :class:`Masks` (e.g. for masks computed
        on the CPU for a model trained on a GPU, so pruning ranks on one device).

    Raises:
        MaskError: a mask names no parameter of ``model`` or has another shape.

    Example:
        >>> masks = masks_for(model.cuda(), prunelab.prune(model, "magnitude", 0.5).to("cpu"))
    """
    canonical = masks.canonical(model)
    if list(canonical) != list(masks):
        masks = canonical   # wrapper-prefixed or tied-alias names
    params = resolve_parameters(model, masks)
    if any(masks[name].device != param.device for name, param in params.items()):
        masks = Masks({name: masks[name].to(param.device) for name, param in params.items()})
    return masks


def optimizer_list(optimizer) -> list:
    """None, one optimizer, or a list of them (a framework may step several) as a list."""
    if optimizer is None:
        return []
    return list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]


class GradualMagnitudePruning(Callback):
    """Pruning along the cubic schedule: a training-loop callback, or step hooks for your own loop.

    As a callback it needs the loop to hold masks (``train(..., masks=Masks.ones(model))``); it
    updates those mask tensors in place, so the loop keeps applying the new masks. In your own
    loop use :meth:`attach` (optimizer hooks) or call :meth:`step` after every optimizer step;
    the masks are then :attr:`masks`.

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
        masks: the masks of your own loop (:meth:`attach`/:meth:`step`); None until then.
        steps_done: optimizer steps seen by :meth:`attach`'s hook or :meth:`step`.
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
        self.masks: Masks | None = None
        self.steps_done = 0

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
            # Past the end step the overall sparsity can sit a little below the final one only
            # through per-layer rounding (scope="layer"); pruning again changes nothing, silently.
            if state.step < self.end_step:
                self.log(f"warning: training ended at step {state.step}, before the schedule's end step "
                         f"{self.end_step}; pruning to the final sparsity {self.final} now")
            self._prune(state, self.end_step)

    @torch.no_grad()
    def _prune(self, state, step: int) -> None:
        self._prune_now(state.model, state.optimizer, state.masks, step)

    @torch.no_grad()
    def _prune_now(self, model: nn.Module, optimizer, masks: Masks, step: int) -> None:
        target = self.target(step)
        new = self.pruner.prune(model, masks, target)
        masks.update_(new)
        masks.apply(model)
        for opt in optimizer_list(optimizer):
            masks.mask_optimizer_state(opt, model)
        self.events.append({"step": step, "target": target, "sparsity": masks.sparsity()})

    # -- your own loop ------------------------------------------------------------------------
    @torch.no_grad()
    def start(self, model: nn.Module, optimizer=None, masks: Masks | None = None, **prunable_kwargs) -> Masks:
        """Take the masks of your own loop and prune when :attr:`steps_done` is an event.

        :meth:`attach` and :meth:`step` call it; call it yourself to start at a step other than 0
        (set :attr:`steps_done` first) or to prune at step 0 before the first optimizer step.
        Only the first call does anything.

        Args:
            model: the network (or its wrapper).
            optimizer: its optimizer, a list of optimizers, or None.
            masks, **prunable_kwargs: as in :meth:`attach`.

        Returns:
            :attr:`masks`: canonical names, each mask on its parameter's device (:func:`masks_for`).

        Example:
            >>> gmp.steps_done = 300                   # resuming: the schedule goes on from step 300
            >>> gmp.start(model, optimizer)            # prunes now when step 300 is an event
        """
        if self.masks is None:
            self.masks = masks_for(model, masks if masks is not None else Masks.ones(model, **prunable_kwargs))
            if self.is_event(self.steps_done):
                self._prune_now(model, optimizer, self.masks, self.steps_done)
        return self.masks

    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module, masks: Masks | None = None,
               **prunable_kwargs) -> MaskHandle:
        """Run the schedule inside your own loop through optimizer hooks.

        The masks (``masks``, or every prunable weight kept) are kept exact through every
        ``optimizer.step()`` (:meth:`prunelab.core.masks.Masks.attach`: gradients zeroed at
        pruned entries before the step, masks re-applied and optimizer state zeroed after it),
        and after each step the schedule prunes when :meth:`is_event` says so; at ``end_step``
        exactly ``round(final_sparsity · n)`` of the ``n`` prunable weights are pruned. Works
        with any optimizer, LR scheduler, data and loss.

        Args:
            optimizer: the optimizer updating ``model``.
            model: the network (or its ``torch.compile``/DDP wrapper).
            masks: masks to start from (default ``Masks.ones(model, **prunable_kwargs)``).
            **prunable_kwargs: which weights are prunable (``exclude=...``, ``rule=...``; see
                :func:`prunelab.core.prunable.prunable_parameters`).

        Returns:
            A :class:`~prunelab.core.masks.MaskHandle`; ``handle.remove()`` stops pruning and
            enforcing (call :meth:`finish` first to force the final sparsity).

        Example:
            >>> gmp = GradualMagnitudePruning(0.9, begin_step=0, end_step=150, frequency=10)
            >>> handle = gmp.attach(optimizer, model)
            >>> ...                                   # train; gmp.masks is the current mask
        """
        masks = self.start(model, optimizer, masks, **prunable_kwargs)
        enforce = masks.attach(optimizer, model)

        def after_step(_optimizer, _args, _kwargs):
            self.steps_done += 1
            if self.is_event(self.steps_done):
                self._prune_now(model, optimizer, masks, self.steps_done)

        return MaskHandle([enforce, optimizer.register_step_post_hook(after_step)])

    @torch.no_grad()
    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             masks: Masks | None = None, **prunable_kwargs) -> bool:
        """Call after every ``optimizer.step()`` of your own loop (instead of :meth:`attach`).

        Re-applies the masks (pruned weights stay exactly zero), zeroes the optimizer state at
        pruned entries (when ``optimizer`` is given), counts the step and prunes when the
        schedule says so. The first call creates the masks (``masks`` or every prunable weight).

        Args:
            model: the network.
            optimizer: its optimizer or a list of optimizers (momentum and Adam moments are zeroed
                at pruned entries).
            masks, **prunable_kwargs: as in :meth:`attach` (first call only).

        Returns:
            True when this step was a pruning event.
        """
        masks = self.start(model, optimizer, masks, **prunable_kwargs)
        masks.apply(model)
        for opt in optimizer_list(optimizer):
            masks.mask_optimizer_state(opt, model)
        self.steps_done += 1
        if self.is_event(self.steps_done):
            self._prune_now(model, optimizer, masks, self.steps_done)
            return True
        return False

    @torch.no_grad()
    def finish(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Masks:
        """Force the final sparsity if your loop stopped before ``end_step``; returns the masks.

        Raises:
            MethodError: neither :meth:`attach` nor :meth:`step` was called.
        """
        if self.masks is None:
            raise MethodError("finish() needs masks: call gmp.attach(optimizer, model) or gmp.step(model) first")
        if self.masks.sparsity() < self.final - 0.5 / max(1, self.masks.total()):
            self.log(f"warning: the loop stopped at step {self.steps_done}, before the schedule's end step "
                     f"{self.end_step}; pruning to the final sparsity {self.final} now")
            self._prune_now(model, optimizer, self.masks, self.end_step)
        return self.masks


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
