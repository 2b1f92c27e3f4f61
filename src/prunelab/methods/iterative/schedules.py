"""The iterative schedules (Diao et al., ICLR 2023): their hyperparameters, allocation rules, recipe.

``os`` and ``lt`` prune a fixed fraction per round, cut from the dense weights (``os``) or the
weights retrained in the current round (``lt``); ``sap`` prunes as many as the PQ Index bound
says (Algorithm 1), from the current weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunelab.errors import ConfigError
from prunelab.core.pqi import PQ_SCOPES, check_pq
from prunelab.training.loop import TrainConfig
from prunelab.methods.iterative.allocation import AllocationRule, fixed_fraction_rule, pq_bound_rule

REWINDS = ("init", "k", "none")
SELECTS = ("val", "last")


def paper_train_config(epochs: int, seed: int = 0) -> TrainConfig:
    """The per-round recipe of Diao et al. 2023 (as set in the authors' code): SGD lr 0.1, momentum
    0.9, Nesterov, weight decay 5e-4, batch 250, cosine annealing to 0 restarted every round,
    gradient-norm clip 1.0.

    Args:
        epochs: epochs per round (the paper: 200; scale down on a CPU).
        seed: batch-order seed.

    Returns:
        A :class:`~prunelab.training.loop.TrainConfig`.
    """
    return TrainConfig(epochs=epochs, batch_size=250, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                       weight_decay=5e-4, schedule="cosine", clip_grad_norm=1.0, seed=seed)


# -- hyperparameters -------------------------------------------------------------------------------

def _number(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(out):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return out


@dataclass(frozen=True)
class IterativeHparams:
    """What every schedule shares.

    Attributes:
        rounds: T, the number of pruning rounds (T + 1 trainings: round 0 is dense); 30 as the
            paper for Linear/MLP/CNN (15 for ResNets). With a target it is a maximum.
        scope: ``"global"``, ``"layer"`` or ``"neuron"``: the unit within which counts are set
            and magnitudes compared (and, for SAP, the PQ Index is taken).
        rewind: ``"init"`` (θ_0), ``"k"`` (θ after ``rewind_step`` steps of round 0) or
            ``"none"`` (fine-tune the pruned weights).
        rewind_step: k for ``rewind="k"``.
        select: ``"val"`` (keep each round's epoch with the best validation top-1) or ``"last"``.
        epochs: epochs per round; None: those of the training configs.
        p: PQ Index exponent recorded every round (and SAP's p).
        q: PQ Index exponent recorded every round (and SAP's q).
        record_grid: also record the global PQ Index on the paper's p × q grid every round.
        stop_at_target: with a target sparsity s > 0 (the harness's ``ctx.target``), prune at
            most down to round((1−s)·n) weights (the lowest-magnitude of the proposed ones) and
            stop after the round that reaches it.
    """

    rounds: int = 30
    scope: str = "global"
    rewind: str = "init"
    rewind_step: int = 0
    select: str = "val"
    epochs: int | None = None
    p: float = 0.5
    q: float = 1.0
    record_grid: bool = True
    stop_at_target: bool = True

    def __post_init__(self):
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ConfigError(f"rounds must be an integer >= 0, got {self.rounds!r}")
        if self.scope not in PQ_SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; choose one of {', '.join(PQ_SCOPES)}")
        if self.rewind not in REWINDS:
            raise ConfigError(f"unknown rewind {self.rewind!r}; choose one of {', '.join(REWINDS)}")
        if isinstance(self.rewind_step, bool) or not isinstance(self.rewind_step, int) or self.rewind_step < 0:
            raise ConfigError(f"rewind_step must be an integer >= 0, got {self.rewind_step!r}")
        if self.select not in SELECTS:
            raise ConfigError(f"unknown select {self.select!r}; choose one of {', '.join(SELECTS)}")
        bad_epochs = isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0
        if self.epochs is not None and bad_epochs:
            raise ConfigError(f"epochs must be None or an integer >= 0, got {self.epochs!r}")
        p, q = check_pq(self.p, self.q)
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)


@dataclass(frozen=True)
class FixedFractionHparams(IterativeHparams):
    """OS and LT (and every field of :class:`IterativeHparams`).

    Attributes:
        rate: P, the fraction of each unit's remaining weights pruned per round (0.2 in the
            paper), realised as exact counts round((1−P)^t · n).
    """

    rate: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < _number("rate", self.rate) < 1.0:
            raise ConfigError(f"rate must be in (0, 1), got {self.rate!r}")
        object.__setattr__(self, "rate", float(self.rate))


@dataclass(frozen=True)
class SAPHparams(IterativeHparams):
    """SAP (Algorithm 1), with every field of :class:`IterativeHparams`; ``p``, ``q`` are the
    PQ Index exponents (0 < p < q). The paper's main settings are (p, q, eta_r, gamma) =
    (0.5, 1, 0, 1) and (1, 2, 0, 1).

    Attributes:
        eta_r: η_r ≥ 0, scales the bound.
        gamma: γ > 0, scales the bound.
        beta: β in (0, 1], caps the fraction pruned per round.
    """

    eta_r: float = 0.0
    gamma: float = 1.0
    beta: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        if not _number("eta_r", self.eta_r) >= 0:
            raise ConfigError(f"eta_r must be >= 0, got {self.eta_r!r}")
        if not _number("gamma", self.gamma) > 0:
            raise ConfigError(f"gamma must be > 0, got {self.gamma!r}")
        if not 0.0 < _number("beta", self.beta) <= 1.0:
            raise ConfigError(f"beta must be in (0, 1], got {self.beta!r}")
        for name in ("eta_r", "gamma", "beta"):
            object.__setattr__(self, name, float(getattr(self, name)))


@dataclass(frozen=True)
class Schedule:
    """One iterative schedule.

    Attributes:
        hparams: its hyperparameter dataclass.
        allocate: the allocation rule cutting m_t from m_{t−1} (see :mod:`~prunelab.methods.iterative.allocation`).
        source: whose magnitudes decide: ``"dense"`` (round 0's trained weights) or ``"current"``
            (the weights trained in the round just finished).
    """

    hparams: type[IterativeHparams]
    allocate: AllocationRule
    source: str


SCHEDULES: dict[str, Schedule] = {
    "os": Schedule(FixedFractionHparams, fixed_fraction_rule, "dense"),
    "lt": Schedule(FixedFractionHparams, fixed_fraction_rule, "current"),
    "sap": Schedule(SAPHparams, pq_bound_rule, "current"),
}
