"""The method contract: three families, one registry.

- *one-shot* methods (:class:`OneShotMethod`) compute masks from a trained model in one call,
  possibly rewriting surviving weights (FeTa, Net-Trim, L-OBS);
- *iterative* methods (:class:`IterativeMethod`) and *training-time* methods
  (:class:`TrainingMethod`) own their loop: the harness hands them a :class:`MethodContext` and
  receives a :class:`MethodOutcome`.

Every method class has ``name``, ``family`` and ``Hparams``, a frozen dataclass whose field
defaults are the method's documented defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.core.masks import Masks

FAMILIES = ("oneshot", "iterative", "training")


@dataclass(frozen=True)
class NoHparams:
    """A method without hyperparameters."""


class Method:
    """Base of every method; construct with ``Method(**hparams)`` or ``Method(Hparams(...))``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    Hparams: ClassVar[type] = NoHparams

    def __init__(self, hparams: Any = None, **kwargs):
        if hparams is not None and kwargs:
            raise ConfigError("pass either an Hparams object or keyword hyperparameters, not both")
        if hparams is None:
            known = {f.name for f in dataclasses.fields(self.Hparams)}
            unknown = sorted(set(kwargs) - known)
            if unknown:
                raise ConfigError(
                    f"method {self.name!r} has no hyperparameter {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known)) or '(none)'}"
                )
            try:
                hparams = self.Hparams(**kwargs)
            except TypeError as exc:
                raise ConfigError(f"method {self.name!r}: {exc}") from None
        self.hparams = hparams

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hparams})"


def check_sparsity(sparsity: float) -> float:
    """Validate a target sparsity in [0, 1)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {value}")
    return value


class OneShotMethod(Method):
    """Computes masks from a trained model in one call."""

    family: ClassVar[str] = "oneshot"

    def prune(self, model: nn.Module, masks: Masks | None, sparsity: float, calib=None) -> Masks:
        """Masks pruning ``sparsity`` of all prunable weights (among survivors of ``masks``).

        Args:
            model: the trained network (may be modified in place: surviving weights rewritten).
            masks: current masks (``None``: nothing pruned yet).
            sparsity: fraction of the prunable weights pruned after the call, in [0, 1).
            calib: calibration data (a ``Split``) for data-aware methods.

        Returns:
            The new masks; already applied to ``model``.
        """
        raise NotImplementedError


@dataclass
class MethodContext:
    """What the harness hands an iterative or training-time method."""

    data: Any
    model_factory: Callable[[], nn.Module]
    init_state: dict[str, torch.Tensor]
    dense_model: nn.Module | None
    target: float
    train_config: Any
    retrain_config: Any
    seed: int = 0
    log: Callable[[str], None] = print
    #: where the run computes (None: where the models are, the CPU); the harness creates every
    #: model of ``model_factory`` and ``dense_model`` on it already.
    device: torch.device | None = None


@dataclass
class MethodOutcome:
    """What an iterative or training-time method gives back."""

    model: nn.Module
    masks: Masks
    traces: dict[str, list[dict]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    phase_times: dict[str, float] = field(default_factory=dict)


class IterativeMethod(Method):
    """Alternates train → prune → rewind; owns its loop."""

    family: ClassVar[str] = "iterative"

    def run(self, ctx: MethodContext) -> MethodOutcome:
        raise NotImplementedError


class TrainingMethod(Method):
    """Prunes while training (an optimizer, a loss term, a callback); owns its loop."""

    family: ClassVar[str] = "training"

    def run(self, ctx: MethodContext) -> MethodOutcome:
        raise NotImplementedError
