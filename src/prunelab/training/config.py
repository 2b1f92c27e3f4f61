"""The training recipe (:class:`TrainConfig`), its optimizer and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Iterable

import torch

from prunelab.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "linear", "inverse")
#: Mixed-precision modes of :attr:`TrainConfig.amp`.
AMP_MODES = ("none", "bf16", "fp16")
#: Schedules whose factor depends on the number of steps per epoch.
SCHEDULES_NEEDING_STEPS = ("cosine", "step", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """A training budget and recipe.

    Attributes:
        epochs: passes over the training split (may be 0: nothing is trained).
        batch_size: samples per step.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: initial learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: L2 (SGD, Adam) or decoupled (AdamW) weight decay.
        betas: Adam/AdamW betas.
        schedule: ``"constant"``, ``"cosine"`` (to 0 over the run), ``"step"`` (×gamma every
            ``step_epochs``), ``"linear"`` (to 0 over the run) or ``"inverse"`` (Keras' ``decay``:
            lr / (1 + lr/epochs · t), t in steps, as Pitas et al. train).
        step_epochs: period of the step schedule, in epochs.
        gamma: factor of the step schedule.
        clip_grad_norm: clip the global gradient L2 norm to this value (None: no clipping).
        seed: seeds the batch order (and nothing else: initialisation is the model factory's).
        eval_batch_size: batch size for evaluation.
        amp: mixed precision of the training forward and loss: ``"none"`` (full precision),
            ``"bf16"`` (bfloat16 autocast, on CPU or GPU) or ``"fp16"`` (float16 autocast with
            gradient scaling; CUDA only). Evaluation stays in full precision.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    step_epochs: int = 30
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    seed: int = 0
    eval_batch_size: int = 1000
    amp: str = field(default="none", metadata={"choices": AMP_MODES})

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("weight_decay and momentum must be >= 0")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError("nesterov needs optimizer 'sgd' with momentum > 0")
        if not isinstance(self.step_epochs, int) or self.step_epochs < 1:
            raise ConfigError(f"step_epochs must be an integer >= 1, got {self.step_epochs!r}")
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise ConfigError(f"gamma must be a positive number, got {self.gamma!r}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"unknown amp {self.amp!r}; choose one of {', '.join(AMP_MODES)}")
        object.__setattr__(self, "betas", tuple(self.betas))

    def to_dict(self) -> dict:
        """JSON-able dict of the fields."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)


def make_optimizer(params: Iterable, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config`` over ``params`` (parameters or param groups)."""
    params = list(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def lr_factor_fn(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a function of the step index, a factor of the initial lr."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        return lambda step: 1.0
    if config.schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if config.schedule == "linear":
        return lambda step: max(0.0, 1.0 - step / total)
    if config.schedule == "step":
        period = max(1, config.step_epochs * steps_per_epoch)
        return lambda step: config.gamma ** (step // period)
    # Keras' time-based decay with decay = lr / epochs (Pitas et al.): lr_t = lr / (1 + decay * t).
    decay = config.lr / max(1, config.epochs)
    return lambda step: 1.0 / (1.0 + decay * step)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """A ``LambdaLR`` stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(config, steps_per_epoch))
