"""How much a hard-thresholding study trains and measures, and the data and dense models that implies."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunelab import models
from prunelab.data import Dataset, Split
from prunelab.errors import ConfigError
from prunelab.training.loop import TrainConfig, train

__all__ = ["SPARSITIES", "HEADLINE_SPARSITY", "StudyBudget", "BUDGETS", "limit_train", "limit_test",
           "check_sparsities", "train_dense", "log_to_stderr"]

#: The depth study's grid in the authors' code: ``linspace(0, 95, 20)`` %, i.e. 0, 5, …, 95 %.
SPARSITIES = tuple(round(float(s), 4) for s in np.linspace(0.0, 0.95, 20))

#: Claims are judged at the grid sparsity closest to this (where the paper's curves separate).
HEADLINE_SPARSITY = 0.9


@dataclass(frozen=True)
class StudyBudget:
    """How much a study trains and measures.

    Attributes:
        seeds: one separately trained dense model per seed.
        epochs: dense training epochs (Adam).
        train_limit: cap on training samples (None: the whole training split).
        eval_samples: test samples evaluated (the first ones; None: the whole test split).
        sparsities: per-layer sparsities of the hard thresholding.
        batch_size: training batch size.
        lr: Adam learning rate.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 4
    train_limit: int | None = None
    eval_samples: int | None = None
    sparsities: tuple[float, ...] = SPARSITIES
    batch_size: int = 128
    lr: float = 1e-3

    def train_config(self, seed: int) -> TrainConfig:
        """The dense-training recipe for one seed."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam", lr=self.lr, seed=seed)

    def replace(self, **changes) -> "StudyBudget":
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


#: Presets. "quick": the reduced run (narrow conv6 depth study: 6.6 min on one core of a busy
#: 2-core machine); "standard": the `pitas-studies` suite budget (both studies, CNN and MLP,
#: estimated at about 20 min on one core); "smoke": for tests.
BUDGETS: dict[str, StudyBudget] = {
    "smoke": StudyBudget(seeds=(0,), epochs=1, train_limit=300, eval_samples=200, sparsities=(0.0, 0.5, 0.9)),
    "quick": StudyBudget(seeds=(0, 1, 2), epochs=3, train_limit=20000, eval_samples=2000,
                         sparsities=(0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)),
    "standard": StudyBudget(seeds=(0, 1, 2), epochs=3, train_limit=30000, eval_samples=5000,
                            sparsities=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)),
}


def log_to_stderr(line: str) -> None:
    """The studies' default progress log: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


def limit_test(data: Dataset, eval_samples: int | None) -> Split:
    """The evaluated test samples: the first ``eval_samples`` of the test split (None: all)."""
    test = data.test
    if eval_samples is None or eval_samples >= len(test):
        return test
    if eval_samples < 1:
        raise ConfigError(f"eval_samples must be a positive integer, got {eval_samples!r}")
    return Split(test.x[:eval_samples], test.y[:eval_samples])


def limit_train(data: Dataset, limit: int | None) -> Split:
    """The training samples: the first ``limit`` of the training split (None: all)."""
    if limit is None or limit >= len(data.train):
        return data.train
    if limit < 1:
        raise ConfigError(f"train_limit must be a positive integer, got {limit!r}")
    return Split(data.train.x[:limit], data.train.y[:limit])


def check_sparsities(sparsities: Sequence[float]) -> tuple[float, ...]:
    """The sparsities sorted and without repeats; each must be in [0, 1)."""
    values = tuple(float(s) for s in sparsities)
    if not values or any(not 0.0 <= s < 1.0 for s in values):
        raise ConfigError(f"sparsities must be a non-empty list of numbers in [0, 1), got {list(sparsities)!r}")
    return tuple(sorted(set(values)))


def train_dense(model_name: str, model_kwargs: dict, data: Dataset, split: Split, budget: StudyBudget,
                seed: int) -> tuple[nn.Module, float]:
    """A dense model trained on ``split`` with the budget's recipe; returns it (eval mode) and the seconds."""
    torch.manual_seed(seed)
    model = models.create(model_name, data.in_shape, data.num_classes, **model_kwargs)
    t0 = time.perf_counter()
    train(model, split, budget.train_config(seed), progress=False, label=f"seed {seed}")
    return model.eval(), time.perf_counter() - t0
