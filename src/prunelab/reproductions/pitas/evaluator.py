"""Top-1 of a model with some layers masked, re-running only the part of the network the masks change.

prunelab's plain networks are ``nn.Sequential`` with each prunable layer a direct child; pruning
layers ``≥ i`` leaves every activation before layer ``i`` unchanged, so those are computed once
and only the suffix of the network is re-run (exactly the same arithmetic as a full forward
pass). Other models are evaluated in full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.core.masks import prunable_parameters
from prunelab.data import Split

__all__ = ["MaskedEvaluator"]


class MaskedEvaluator:
    """Top-1 of a model with some layers' weights masked, re-running only what the masks change.

    For an ``nn.Sequential`` whose prunable layers are direct children, the activations at the
    input of the first masked child are cached (they do not depend on the masks); other models
    are run in full. Weights are masked in place for one evaluation and restored bit-exactly.
    """

    def __init__(self, model: nn.Module, split: Split, batch_size: int = 1000):
        self.model = model
        self.x, self.y = split.x, split.y
        self.batch_size = batch_size
        self.params = dict(model.named_parameters())
        names = list(prunable_parameters(model))
        children = [m for _, m in model.named_children()] if isinstance(model, nn.Sequential) else []
        index = {name: i for i, (name, _) in enumerate(model.named_children())} if children else {}
        self.position = {n: index.get(n.rsplit(".", 1)[0]) for n in names}
        self.children = children if children and all(p is not None for p in self.position.values()) else []
        self._cache_pos, self._cache = 0, self.x

    def _run(self, modules: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, len(h), self.batch_size):
            block = h[start : start + self.batch_size]
            for m in modules:
                block = m(block)
            outs.append(block)
        return torch.cat(outs)

    def _activations(self, pos: int) -> torch.Tensor:
        if pos == 0:
            return self.x
        if pos < self._cache_pos:
            self._cache_pos, self._cache = 0, self.x
        if pos > self._cache_pos:
            self._cache = self._run(self.children[self._cache_pos : pos], self._cache)
            self._cache_pos = pos
        return self._cache

    @torch.no_grad()
    def top1(self, masks: Mapping[str, torch.Tensor]) -> float:
        """Top-1 accuracy (a fraction) with ``masks`` applied to their layers."""
        was_training = self.model.training
        self.model.eval()
        saved = {}
        try:
            if self.children:
                pos = min((self.position[n] for n in masks), default=0)
                h, modules = self._activations(pos), self.children[pos:]
            else:
                h, modules = self.x, [self.model]
            for n, keep in masks.items():
                saved[n] = self.params[n].detach().clone()
                self.params[n].mul_(keep)
            correct = 0
            for start in range(0, len(h), self.batch_size):
                out = h[start : start + self.batch_size]
                for m in modules:
                    out = m(out)
                correct += int((out.argmax(1) == self.y[start : start + self.batch_size]).sum())
            return correct / max(1, len(self.y))
        finally:
            for n, value in saved.items():
                self.params[n].copy_(value)
            self.model.train(was_training)
