"""Pruning inside a Lightning ``Trainer``: :class:`PruningCallback`.

The same callback as :mod:`prunelab.integrations.hf`, for ``lightning.pytorch`` (or the older
``pytorch_lightning`` package): it keeps masks exact through every optimizer step (gradients
zeroed at pruned entries in ``on_before_optimizer_step``; masks re-applied and the optimizers'
per-parameter state zeroed in ``on_train_batch_end``) and/or prunes by magnitude along a gradual
(cubic) schedule counted in ``trainer.global_step``. The masks name the LightningModule's
parameters (``pl_module.named_parameters()``).

This module imports Lightning (``pip install "prunelab[lightning]"``); ``import prunelab`` does not.

Example:
    >>> from prunelab.integrations.lightning import PruningCallback
    >>> trainer = lightning.pytorch.Trainer(max_steps=1000, callbacks=[PruningCallback(
    ...     gmp={"final_sparsity": 0.9, "end_step": 800, "frequency": 100})])
    >>> trainer.fit(module, loader)
"""

from __future__ import annotations

from typing import Mapping

try:
    from lightning.pytorch import Callback
except ImportError:   # pragma: no cover - depends on the environment
    try:
        from pytorch_lightning import Callback
    except ImportError as exc:
        raise ImportError("prunelab.integrations.lightning needs Lightning: pip install \"prunelab[lightning]\"") from exc

from prunelab.core.masks import Masks
from prunelab.core.prunable import PrunableRule
from prunelab.integrations.keeper import KeeperCallback, MaskKeeper
from prunelab.methods.gmp import GradualMagnitudePruning

__all__ = ["PruningCallback"]


class PruningCallback(KeeperCallback, Callback):
    """A Lightning ``Callback`` that keeps masks exact and/or prunes gradually.

    Args:
        masks: masks to keep exact, keyed by the LightningModule's parameter names; None with
            ``gmp``: start from every prunable weight kept.
        gmp: a :class:`~prunelab.methods.gmp.GradualMagnitudePruning` or a dict of its
            arguments, in optimizer steps (``trainer.global_step``).
        rule: which weights are prunable when ``masks`` is None; ``**prunable_options`` are
            :class:`PrunableRule` fields.

    Attributes:
        masks: the current masks.
        events: the schedule's pruning events (``step``, ``target``, ``sparsity``).

    Raises:
        ConfigError: neither masks nor a schedule, or a bad schedule.
    """

    def __init__(self, masks: Masks | Mapping | None = None, gmp: GradualMagnitudePruning | Mapping | None = None, *,
                 rule: PrunableRule | None = None, **prunable_options):
        super().__init__()
        self.keeper = MaskKeeper(masks, gmp, rule, **prunable_options)

    def on_train_start(self, trainer, pl_module) -> None:
        self.keeper.begin(pl_module, trainer.optimizers, trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.keeper.before_step(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.keeper.after_step(pl_module, trainer.optimizers, trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        self.keeper.end(pl_module, trainer.optimizers)
