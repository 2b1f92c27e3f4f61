"""Pruning inside a HuggingFace ``transformers.Trainer``: :class:`PruningCallback`.

The callback keeps given masks exact through every optimizer step of the Trainer (gradients
zeroed at pruned entries before the step; after it the masks re-applied and the optimizer's
per-parameter state zeroed there), and/or prunes by magnitude along a gradual (cubic) schedule,
counted in the Trainer's optimizer steps (``state.global_step``). Mixed precision, gradient
accumulation and gradient clipping need nothing special: the masks act after each real step.

This module imports ``transformers`` (``pip install "prunelab[hf]"``); ``import prunelab`` does
not import it.

Example:
    >>> from prunelab.integrations.hf import PruningCallback
    >>> masks = prunelab.prune(model, "magnitude", sparsity=0.5)
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[PruningCallback(masks)])
    >>> trainer.train()                                  # still exactly 50% sparse
    >>> gmp = PruningCallback(gmp={"final_sparsity": 0.8, "begin_step": 0, "end_step": 15, "frequency": 5})
"""

from __future__ import annotations

from typing import Mapping

try:
    from transformers import TrainerCallback
except ImportError as exc:   # pragma: no cover - depends on the environment
    raise ImportError("prunelab.integrations.hf needs transformers: pip install \"prunelab[hf]\"") from exc

from prunelab.core.masks import Masks
from prunelab.core.prunable import PrunableRule
from prunelab.integrations.keeper import KeeperCallback, MaskKeeper
from prunelab.methods.gmp import GradualMagnitudePruning

__all__ = ["PruningCallback"]


class PruningCallback(KeeperCallback, TrainerCallback):
    """A ``transformers.TrainerCallback`` that keeps masks exact and/or prunes gradually.

    Args:
        masks: masks to keep exact (e.g. from :func:`prunelab.prune`); None with ``gmp``: start
            from every prunable weight kept.
        gmp: a :class:`~prunelab.methods.gmp.GradualMagnitudePruning` or a dict of its arguments
            (``final_sparsity``, ``initial_sparsity``, ``begin_step``, ``end_step``, ``frequency``,
            ``scope``), in optimizer steps.
        rule: which weights are prunable when ``masks`` is None (default: Linear/Conv/HF Conv1D
            weights, no embeddings); ``**prunable_options`` are :class:`PrunableRule` fields.

    Attributes:
        masks: the current masks (None until training begins when built from the model).
        events: the schedule's pruning events (``step``, ``target``, ``sparsity``).

    Raises:
        ConfigError: neither masks nor a schedule, or a bad schedule.
    """

    def __init__(self, masks: Masks | Mapping | None = None, gmp: GradualMagnitudePruning | Mapping | None = None, *,
                 rule: PrunableRule | None = None, **prunable_options):
        self.keeper = MaskKeeper(masks, gmp, rule, **prunable_options)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.keeper.begin(model, optimizer, state.global_step)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.keeper.before_step(model)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.keeper.after_step(model, optimizer, state.global_step)

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.keeper.end(model, optimizer)
