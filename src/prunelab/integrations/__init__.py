"""Pruning inside other frameworks' training loops.

- :mod:`prunelab.integrations.hf`: ``PruningCallback`` for a HuggingFace ``transformers.Trainer``
  (``pip install "prunelab[hf]"``);
- :mod:`prunelab.integrations.lightning`: ``PruningCallback`` for a Lightning ``Trainer``
  (``pip install "prunelab[lightning]"``);
- :mod:`prunelab.integrations.keeper`: what both share, :class:`MaskKeeper` (keep masks exact
  across optimizer steps, drive :class:`prunelab.methods.gmp.GradualMagnitudePruning` with a
  framework's step count); usable from any loop.

The framework modules are imported only when asked for, so ``import prunelab`` (and this package)
never imports transformers or Lightning. Layer: above :mod:`prunelab.methods` and
:mod:`prunelab.api`, below the export and the harness.

Example:
    >>> from prunelab.integrations.hf import PruningCallback
    >>> trainer = transformers.Trainer(..., callbacks=[PruningCallback(masks)])
"""

from prunelab.integrations.keeper import MaskKeeper

__all__ = ["MaskKeeper"]
