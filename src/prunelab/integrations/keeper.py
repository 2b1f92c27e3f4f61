"""What the framework callbacks share: keep masks exact across optimizer steps, drive GMP.

:class:`MaskKeeper` knows nothing of HuggingFace or Lightning: a callback calls :meth:`~MaskKeeper.begin`
when training starts, :meth:`~MaskKeeper.before_step` after the gradients are ready and before
the optimizer steps, :meth:`~MaskKeeper.after_step` once the optimizer has stepped, and
:meth:`~MaskKeeper.end` when training ends. The masks are kept exact by
:class:`~prunelab.core.masks.Masks` itself (gradients zeroed at pruned entries before the step;
masks re-applied and per-parameter optimizer state zeroed there after it), and the gradual
schedule is :class:`prunelab.methods.gmp.GradualMagnitudePruning`, driven through its own-loop
hooks (``start``, ``step``, ``finish``) with the framework's optimizer-step count.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from prunelab.core.masks import Masks
from prunelab.core.prunable import PrunableRule, unwrap
from prunelab.errors import ConfigError
from prunelab.methods.gmp import GradualMagnitudePruning, masks_for, optimizer_list


def as_gmp(gmp: GradualMagnitudePruning | Mapping[str, Any] | None) -> GradualMagnitudePruning | None:
    """``gmp`` as a :class:`~prunelab.methods.gmp.GradualMagnitudePruning` (a mapping gives its
    constructor arguments: ``final_sparsity``, ``initial_sparsity``, ``begin_step``, ``end_step``,
    ``frequency``, ``scope``).

    Raises:
        ConfigError: ``gmp`` is neither, names arguments the schedule does not take, or is a bad schedule.

    Example:
        >>> as_gmp({"final_sparsity": 0.9, "end_step": 1000}).target(1000)
        0.9
    """
    if gmp is None or isinstance(gmp, GradualMagnitudePruning):
        return gmp
    if not isinstance(gmp, Mapping):
        raise ConfigError(f"gmp must be a GradualMagnitudePruning or a dict of its arguments, got {type(gmp).__name__}")
    known = set(inspect.signature(GradualMagnitudePruning).parameters)
    unknown = sorted(set(gmp) - known)
    if unknown:
        raise ConfigError(f"gmp has no argument {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "final_sparsity" not in gmp:
        raise ConfigError("gmp needs final_sparsity, e.g. gmp={'final_sparsity': 0.9, 'end_step': 1000}")
    return GradualMagnitudePruning(**gmp)


def torch_optimizers(optimizers) -> list[torch.optim.Optimizer]:
    """The plain torch optimizers behind ``optimizers`` (one, a list, or None), unwrapping
    accelerate's ``AcceleratedOptimizer`` and Lightning's ``LightningOptimizer``: their state is
    the inner optimizer's."""
    out = []
    for opt in optimizer_list(optimizers):
        for attribute in ("optimizer", "_optimizer"):
            while isinstance(getattr(opt, attribute, None), torch.optim.Optimizer) and getattr(opt, attribute) is not opt:
                opt = getattr(opt, attribute)
        out.append(opt)
    return out


class MaskKeeper:
    """Keeps masks exact through a foreign training loop and optionally prunes gradually.

    Args:
        masks: masks to keep (None: every prunable weight kept at the start; needs ``gmp``).
        gmp: a :class:`~prunelab.methods.gmp.GradualMagnitudePruning` (or a dict of its
            arguments) to prune along, counted in the framework's optimizer steps.
        rule: which weights are prunable when ``masks`` is None (see
            :func:`prunelab.core.prunable.prunable_parameters`); ``**prunable_options`` likewise.

    Attributes:
        masks: the current masks (after :meth:`begin`: canonical names, on the parameters'
            devices; the schedule updates them in place).
        gmp: the schedule, or None.

    Raises:
        ConfigError: neither masks nor a schedule, a bad schedule, or masks with a schedule that
            already holds masks of its own.

    Example:
        >>> keeper = MaskKeeper(gmp={"final_sparsity": 0.8, "end_step": 15, "frequency": 5})
        >>> keeper.begin(model, optimizer, step=0)
        >>> ...   # per step: backward, keeper.before_step(model), optimizer.step(), keeper.after_step(model, optimizer, step)
        >>> keeper.end(model, optimizer)
    """

    def __init__(self, masks: Masks | Mapping | None = None,
                 gmp: GradualMagnitudePruning | Mapping | None = None,
                 rule: PrunableRule | None = None, **prunable_options):
        if masks is None and gmp is None:
            raise ConfigError("give masks to keep exact, a gmp schedule to prune along, or both")
        self.masks = masks if masks is None or isinstance(masks, Masks) else Masks(masks)
        self.gmp = as_gmp(gmp)
        if self.masks is not None and self.gmp is not None and self.gmp.masks is not None:
            raise ConfigError("this GradualMagnitudePruning already holds masks (it ran before): "
                              "give a new one, or no masks")
        self.rule, self.prunable_options = rule, prunable_options
        self._begun = False

    @property
    def events(self) -> list[dict]:
        """The schedule's pruning events (``step``, ``target``, ``sparsity`` reached)."""
        return self.gmp.events if self.gmp is not None else []

    def begin(self, model: nn.Module, optimizers=None, step: int = 0) -> None:
        """Training starts (``step`` optimizer steps already done): apply the masks now, and
        prune when the schedule has an event at ``step``."""
        inner, opts = unwrap(model), torch_optimizers(optimizers)
        if self.gmp is None:
            self.masks = masks_for(inner, self.masks)
        else:
            self.gmp.steps_done = step
            self.masks = self.gmp.start(inner, opts, self.masks, rule=self.rule, **self.prunable_options)
        self._keep(inner, opts)
        self._begun = True

    def before_step(self, model: nn.Module) -> None:
        """The gradients are ready: zero them at pruned entries, so momentum and weight decay
        never grow there."""
        self._check_begun()
        self.masks.mask_grads(unwrap(model))

    def after_step(self, model: nn.Module, optimizers=None, step: int | None = None) -> None:
        """The optimizer stepped (``step``: optimizer steps done now; None: one more than at the
        last call): keep the masks exact and prune when the schedule has an event at ``step``. A
        repeated call at the same step (Lightning's accumulated batches) only keeps the masks."""
        self._check_begun()
        inner, opts = unwrap(model), torch_optimizers(optimizers)
        if self.gmp is None or (step is not None and step <= self.gmp.steps_done):
            self._keep(inner, opts)
            return
        if step is not None:
            self.gmp.steps_done = step - 1   # the framework counts the steps (resumed runs included)
        self.gmp.step(inner, opts)

    def end(self, model: nn.Module, optimizers=None) -> None:
        """Training ended: a schedule cut short still leaves the model at its final sparsity
        (with a warning), so the result is what was asked for."""
        self._check_begun()
        if self.gmp is None:
            return
        events = len(self.gmp.events)
        self.gmp.finish(unwrap(model), torch_optimizers(optimizers))
        if len(self.gmp.events) > events:
            warnings.warn(f"training ended at step {self.gmp.steps_done}, before the schedule's end step "
                          f"{self.gmp.end_step}; pruned to the final sparsity {self.gmp.final} now", stacklevel=2)

    def _keep(self, model: nn.Module, optimizers: list) -> None:
        self.masks.apply(model)
        for opt in optimizers:
            self.masks.mask_optimizer_state(opt, model)

    def _check_begun(self) -> None:
        if not self._begun:
            raise ConfigError("the pruning callback was not started: its begin hook never ran "
                              "(add the callback before training starts)")


class KeeperCallback:
    """What the framework callbacks share: a :class:`MaskKeeper` and its state, read-only."""

    keeper: MaskKeeper

    @property
    def masks(self) -> Masks | None:
        """The current masks (None until training begins when built from the model)."""
        return self.keeper.masks

    @property
    def events(self) -> list[dict]:
        """The schedule's pruning events (``step``, ``target``, ``sparsity``)."""
        return self.keeper.events
