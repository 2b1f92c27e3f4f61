"""Iterative pruning: one-shot (OS), lottery ticket (LT) and SAP, one driver (Diao et al., ICLR 2023).

The driver follows the paper's code (``train_classifier.py``, papers.md §2.3)::

    m_0 = all ones;  θ_0 = initial parameters (saved)
    for t = 0 .. T:
        t > 0:  m_t ⊆ m_{t−1} from the source weights w_src (schedule below)
                evaluate w_src ⊙ m_t                  ("pruned": before retraining)
                rewind: every parameter and buffer ← θ_0 (or θ_k), pruned weights ← 0
        train E epochs with m_t fixed; fresh optimizer and LR schedule (cosine in the recipe)
        keep the epoch with the best VALIDATION top-1 (the paper's code picks on test)
        record density, PQ Index (chosen (p, q) and the p×q grid), Gini, accuracies, times

Schedules (how m_t is cut from m_{t−1}):

* ``os``: magnitudes of the DENSE trained weights (round 0); each round keeps
  round((1−P)^t · n) weights of each unit (a unit is the whole model, a layer or a neuron, by
  scope), so the density follows (1−P)^t exactly in counts. The paper's code takes a quantile
  of the remaining weights instead (the same up to rounding and ties).
* ``lt``: the same counts from the weights retrained in the current round (lottery ticket).
* ``sap``: per unit with d_t remaining weights and PQ Index I = I_{p,q}(w_t) (Algorithm 1,
  Theorem 2)::

      r_t = d_t (1+η_r)^{−q/(q−p)} (1 − I)^{qp/(q−p)}
      c_t = ⌊d_t · min(γ (1 − r_t/d_t), β)⌋      (and ≥ 0)

  and the c_t smallest-magnitude remaining weights are pruned. r_t is used as a real number, as
  in the paper; the code rounds it up first, which gives the same c_t when γ = 1 (d_t is an
  integer) and at most ⌈γ⌉ fewer otherwise.

Exact counts: the weights pruned are the c smallest |w| among the remaining ones, ties broken by
position (a stable sort), so exactly c are pruned; the code's ``|w| < pivot`` can prune fewer on
ties. Masks only shrink (m_{t+1} ⊆ m_t).

Rewinding: ``rewind="init"`` restores θ_0 for every parameter and buffer (the code restores the
parameters only; BN running statistics then carry over, which we find an accident);
``rewind="k"`` restores θ_k, the state after k optimizer steps of round 0 (round 0 is then
trained here even when the harness has a dense model); ``rewind="none"`` fine-tunes the pruned
source weights. The LR schedule restarts in full every round (OpenLTH instead resumes it at k).
Each round t trains with batch-order seed ``config.seed + t`` (the code's loader keeps shuffling).

Training recipe: the function API :func:`iterate` takes ``train_config`` (round 0) and
``retrain_config`` (rounds ≥ 1); by default both are :func:`paper_train_config` (SGD lr 0.1,
momentum 0.9, Nesterov, weight decay 5e-4, batch 250, cosine per round, gradient-norm clip 1.0).
Run by the harness, round 0 is the harness's dense model (``ctx.dense_model``, trained with
``ctx.train_config``) unless ``rewind="k"``, and rounds ≥ 1 train with ``ctx.retrain_config``;
the hparam ``epochs`` overrides the epochs of both. The prunelab loop masks gradients before
clipping them; the paper's code clips first (the norm then includes pruned entries' gradients).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from prunelab.training import distributed as _dist
from prunelab.errors import ConfigError, MethodError
from prunelab.core.masks import Masks
from prunelab.core.pqi import (
    PQ_SCOPES,
    check_pq,
    gini_index_model,
    grid_to_lists,
    pq_index_grid_model,
    pq_index_model,
)
from prunelab.training.loop import Callback, TrainConfig, evaluate, train
from prunelab.methods import register
from prunelab.methods.base import IterativeMethod, MethodContext, MethodOutcome

__all__ = [
    "SCHEDULES", "REWINDS", "IterativeHparams", "FixedFractionHparams", "SAPHparams", "IterativeResult",
    "paper_train_config", "keep_count", "sap_retained", "sap_prune_count", "prune_lowest",
    "fixed_fraction_masks", "sap_masks", "iterate", "OneShotRounds", "LotteryTicket", "SAP",
]

SCHEDULES = ("os", "lt", "sap")
REWINDS = ("init", "k", "none")
SELECTS = ("val", "last")


def paper_train_config(epochs: int, seed: int = 0) -> TrainConfig:
    """The paper's per-round recipe (papers.md §2.4): SGD lr 0.1, momentum 0.9, Nesterov, weight
    decay 5e-4, batch 250, cosine annealing to 0 restarted every round, gradient-norm clip 1.0.

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


_HPARAMS = {"os": FixedFractionHparams, "lt": FixedFractionHparams, "sap": SAPHparams}


# -- counts ----------------------------------------------------------------------------------------

def keep_count(total: int, rate: float, rounds: int) -> int:
    """Weights a unit of ``total`` keeps after ``rounds`` fixed-fraction rounds.

    Returns:
        round((1 − rate)^rounds · total), halves rounded up; e.g. 1000 → 800, 640, 512, 410, 328.
    """
    return int(math.floor(total * (1.0 - rate) ** rounds + 0.5))


def sap_retained(d, pqi, p: float, q: float, eta_r: float = 0.0):
    """r_t = d (1+η_r)^{−q/(q−p)} (1 − I)^{qp/(q−p)}: Theorem 2's lower bound on the number of
    large weights that carry the mass (a float, or a float64 tensor for tensor inputs)."""
    ratio = _retain_ratio(torch.as_tensor(pqi, dtype=torch.float64), p, q, eta_r)
    out = torch.as_tensor(d, dtype=torch.float64) * ratio
    return float(out) if out.dim() == 0 else out


def _retain_ratio(pqi: torch.Tensor, p: float, q: float, eta_r: float) -> torch.Tensor:
    one_minus = (1.0 - pqi).clamp(0.0, 1.0)
    return (1.0 + eta_r) ** (-q / (q - p)) * one_minus ** (q * p / (q - p))


def sap_prune_count(d, pqi, p: float, q: float, eta_r: float = 0.0, gamma: float = 1.0, beta: float = 0.9):
    """c_t = ⌊d · min(γ(1 − r_t/d), β)⌋ (floored at 0): SAP's number of weights to prune.

    With η_r = 0, γ = 1, p = 0.5, q = 1 the fraction is exactly the PQ Index: c = ⌊d · min(I, β)⌋.

    Args:
        d: remaining weights of the unit (int or tensor of ints).
        pqi: the unit's PQ Index I_{p,q} (float or tensor).
        p, q: the exponents the PQ Index was taken with.
        eta_r, gamma, beta: SAP's hyperparameters.

    Returns:
        An int (or an int64 tensor for tensor inputs); 0 where d = 0.
    """
    p, q = check_pq(p, q)
    d_t = torch.as_tensor(d, dtype=torch.float64)
    frac = (gamma * (1.0 - _retain_ratio(torch.as_tensor(pqi, dtype=torch.float64), p, q, eta_r))).clamp(0.0, beta)
    # A relative slack of 1e-12 before flooring: exact inputs such as d = 1000, I = 0.2, p = 1,
    # q = 2 give d·frac = 359.99999999999994 in floating point, where 360 is meant.
    count = torch.floor(d_t * frac * (1.0 + 1e-12)).to(torch.int64)
    count = torch.where(d_t > 0, count, torch.zeros_like(count))
    return int(count) if count.dim() == 0 else count


# -- masks -----------------------------------------------------------------------------------------

def _prune_rows(scores: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """In each row, unset the ``counts[i]`` lowest-score set entries (stable: earlier first)."""
    if mask.numel() == 0:
        return mask.clone()
    s = scores.to(torch.float64).masked_fill(~mask, math.inf)
    order = torch.sort(s, dim=1, stable=True).indices
    counts = torch.minimum(counts.to(torch.int64).clamp_min(0), mask.sum(dim=1))
    take = torch.arange(mask.shape[1])[None, :] < counts[:, None]
    pruned = torch.zeros_like(mask).scatter_(1, order, take)
    return mask & ~pruned


def prune_lowest(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], counts, scope: str) -> Masks:
    """Prune exactly ``counts`` remaining weights of lowest score in each unit of ``scope``.

    Args:
        scores: ``name -> tensor`` (usually |w|), shaped like the masks.
        masks: current masks (True = remaining).
        counts: ``global``: an int; ``layer``: ``name -> int``; ``neuron``: ``name -> int64
            tensor (out,)`` (one count per output unit). Counts above a unit's remaining weights
            prune the whole unit.
        scope: ``"global"``, ``"layer"`` or ``"neuron"``.

    Returns:
        New :class:`Masks`, a subset of ``masks``.
    """
    names = list(masks)
    cpu = {n: masks[n].to(torch.bool).cpu() for n in names}
    sc = {n: scores[n].detach().abs().cpu() for n in names}
    if scope == "global":
        flat_m = torch.cat([cpu[n].reshape(-1) for n in names])[None] if names else torch.zeros(1, 0, dtype=torch.bool)
        flat_s = torch.cat([sc[n].reshape(-1).to(torch.float64) for n in names])[None] if names else torch.zeros(1, 0)
        new = _prune_rows(flat_s, flat_m, torch.tensor([int(counts)]))[0]
        out, start = {}, 0
        for n in names:
            k = cpu[n].numel()
            out[n] = new[start:start + k].reshape(cpu[n].shape)
            start += k
        return Masks(out)
    out = {}
    for n in names:
        m = cpu[n]
        rows = m.shape[0] if scope == "neuron" else 1
        c = torch.as_tensor(counts[n], dtype=torch.int64).reshape(-1).expand(rows)
        out[n] = _prune_rows(sc[n].reshape(rows, -1), m.reshape(rows, -1), c).reshape(m.shape)
    return Masks(out)


def _unit_kept(masks: Mapping[str, torch.Tensor], scope: str):
    if scope == "global":
        return sum(int(m.sum()) for m in masks.values())
    if scope == "layer":
        return {n: int(m.sum()) for n, m in masks.items()}
    return {n: m.reshape(m.shape[0], -1).sum(dim=1) for n, m in masks.items()}


def fixed_fraction_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                         rate: float, round_index: int, scope: str = "global") -> Masks:
    """OS/LT: the masks after pruning round ``round_index`` (1-based) by magnitude.

    Each unit (model, layer or output unit, by ``scope``) of n weights keeps
    ``keep_count(n, rate, round_index)`` = round((1−rate)^round_index · n) weights, the largest
    |w| among those it still has (never more than it has).

    Args:
        weights: ``name -> tensor`` whose magnitudes decide (dense for OS, current for LT).
        masks: current masks.
        rate: P, e.g. 0.2.
        round_index: t ≥ 1.
        scope: ``"global"``, ``"layer"`` or ``"neuron"``.

    Returns:
        New :class:`Masks` ⊆ ``masks``.
    """
    if scope not in PQ_SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(PQ_SCOPES)}")
    kept = _unit_kept(masks, scope)
    if scope == "global":
        total = sum(m.numel() for m in masks.values())
        counts = max(0, kept - keep_count(total, rate, round_index))
    elif scope == "layer":
        counts = {n: max(0, kept[n] - keep_count(masks[n].numel(), rate, round_index)) for n in masks}
    else:
        counts = {}
        for n, m in masks.items():
            row = m[0].numel() if m.shape[0] else 0
            counts[n] = (kept[n] - keep_count(row, rate, round_index)).clamp_min(0)
    return prune_lowest(weights, masks, counts, scope)


def sap_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], p: float = 0.5,
              q: float = 1.0, eta_r: float = 0.0, gamma: float = 1.0, beta: float = 0.9,
              scope: str = "global") -> tuple[Masks, dict]:
    """SAP (Diao et al. 2023, Algorithm 1): prune c_t = ⌊d_t min(γ(1 − r_t/d_t), β)⌋ of each unit.

    Args:
        weights: ``name -> tensor``: the weights w_t just trained.
        masks: m_t.
        p, q, eta_r, gamma, beta: SAP's hyperparameters (see :func:`sap_prune_count`).
        scope: ``"global"``, ``"layer"`` or ``"neuron"``: the unit of d_t, I(w_t) and c_t.

    Returns:
        ``(m_{t+1}, info)``; ``info`` has ``pqi`` and ``d`` and ``pruned`` per unit (global or
        layer scope) or ``pruned`` per layer (neuron scope), and ``retained_bound`` r_t (global).
    """
    pqi = pq_index_model(weights, masks, p, q, scope)
    kept = _unit_kept(masks, scope)
    info: dict = {"scope": scope}
    if scope == "global":
        counts = sap_prune_count(kept, pqi["global"], p, q, eta_r, gamma, beta)
        info.update(pqi=pqi["global"], d=kept, pruned=counts,
                    retained_bound=sap_retained(kept, pqi["global"], p, q, eta_r))
    elif scope == "layer":
        counts = {n: sap_prune_count(kept[n], pqi[n], p, q, eta_r, gamma, beta) for n in masks}
        info["layers"] = {n: {"pqi": pqi[n], "d": kept[n], "pruned": counts[n]} for n in masks}
    else:
        counts = {n: sap_prune_count(kept[n], pqi[n], p, q, eta_r, gamma, beta) for n in masks}
        info["layers"] = {n: {"pqi_mean": float(pqi[n].mean()) if pqi[n].numel() else 0.0,
                              "d": int(kept[n].sum()), "pruned": int(counts[n].sum())} for n in masks}
    return prune_lowest(weights, masks, counts, scope), info


def _cap_to(old: Masks, new: Masks, scores: Mapping[str, torch.Tensor], max_prune: int) -> Masks:
    """Of the weights ``new`` drops from ``old``, drop only the ``max_prune`` of lowest score."""
    proposed = Masks({n: old[n] & ~new[n] for n in old})
    if proposed.kept() <= max_prune:
        return new
    remaining = prune_lowest(scores, proposed, max(0, max_prune), "global")
    return Masks({n: old[n] & ~(proposed[n] & ~remaining[n]) for n in old})


# -- the driver ------------------------------------------------------------------------------------

@dataclass
class IterativeResult:
    """What :func:`iterate` returns.

    Attributes:
        model: the last round's trained model, masks applied.
        masks: the last round's masks.
        rounds: one dict per round (see :func:`iterate`).
        info: schedule, hparams, rounds run, final density, whether the target was reached, and
            ``pruned_scores`` (the last pruned model before retraining, val and test).
        phase_times: seconds: ``train`` (round 0), ``retrain`` (rounds ≥ 1), ``prune``, ``eval``.
    """

    model: nn.Module
    masks: Masks
    rounds: list[dict]
    info: dict = field(default_factory=dict)
    phase_times: dict = field(default_factory=dict)

    def densities(self) -> list[float]:
        """Density of the prunable weights per round."""
        return [r["density"] for r in self.rounds]

    def to_outcome(self) -> MethodOutcome:
        """The harness's :class:`~prunelab.methods.base.MethodOutcome`."""
        return MethodOutcome(model=self.model, masks=self.masks, traces={"rounds": self.rounds},
                             info=dict(self.info), phase_times=dict(self.phase_times))


class _CaptureStep(Callback):
    """Saves the model state after ``step`` optimizer steps (rewinding to iteration k)."""

    def __init__(self, step: int):
        self.step, self.state = step, None

    def on_batch_end(self, state):
        if state.step == self.step and self.state is None:
            self.state = _clone_state(state.model)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _scores(model: nn.Module, data, batch_size: int) -> dict:
    out = {}
    for split in ("val", "test"):
        part = getattr(data, split, None)
        if part is not None and len(part):
            r = evaluate(model, part, batch_size)
            out[split] = {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"]}
    return out


def _flat_scores(rec: dict, prefix: str, scores: dict) -> None:
    for split in ("val", "test"):
        block = scores.get(split)
        rec[f"{prefix}{split}_top1"] = block["top1"] if block else None
        rec[f"{prefix}{split}_loss"] = block["loss"] if block else None


def _resolve_hparams(schedule: str, hparams, overrides: dict):
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    cls = _HPARAMS[schedule]
    base = {} if hparams is None else asdict(hparams)
    known = {f.name for f in fields(cls)}
    base = {k: v for k, v in base.items() if k in known}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"schedule {schedule!r} has no hyperparameter {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    base.update(overrides)
    return cls(**base)


def iterate(
    model: nn.Module | Callable[[], nn.Module],
    data,
    schedule: str = "sap",
    rounds: int | None = None,
    epochs: int | None = None,
    *,
    hparams: IterativeHparams | None = None,
    train_config: TrainConfig | None = None,
    retrain_config: TrainConfig | None = None,
    masks: Masks | None = None,
    dense_model: nn.Module | None = None,
    target: float = 0.0,
    callbacks: tuple = (),
    on_round: Callable[[dict, nn.Module, Masks], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    **hparam_fields,
) -> IterativeResult:
    """Run an iterative pruning schedule: train → prune → rewind → retrain, T rounds.

    Args:
        model: the network at initialisation (its current state is θ_0), or a function
            returning one.
        data: a ``prunelab.data.Dataset`` (train, val, test splits).
        schedule: ``"os"``, ``"lt"`` or ``"sap"``.
        rounds: T, pruning rounds (overrides ``hparams.rounds``).
        epochs: epochs per round (overrides ``hparams.epochs``); required unless a config is given.
        hparams: a :class:`FixedFractionHparams` (os, lt) or :class:`SAPHparams` (sap).
        train_config: recipe of round 0 (default: :func:`paper_train_config`).
        retrain_config: recipe of rounds ≥ 1 (default: ``train_config``).
        masks: initial masks (default: keep every prunable weight).
        dense_model: an already trained dense model (round 0's result) to reuse, with the same
            architecture; ignored when ``rewind="k"`` (round 0 must be observed).
        target: sparsity in [0, 1); > 0 with ``stop_at_target`` caps pruning there and stops.
        callbacks: training-loop callbacks, passed to every round's training.
        on_round: called after each round with ``(record, model, masks)``.
        checkpoint_dir: save every round as ``round_XXX.safetensors`` here (prunelab checkpoint:
            weights, masks, the round's record as metrics). Under ``torchrun``, rank 0 alone
            creates the directory and writes.
        log: receives one progress line per round.
        **hparam_fields: any other hyperparameter of the schedule (``rate``, ``p``, ``scope`` …).

    Returns:
        An :class:`IterativeResult`. Each round's record has ``round``, ``kept``, ``total``,
        ``density``, ``pruned`` (weights pruned entering the round), ``pruned_val_top1`` /
        ``pruned_test_top1`` / ``…_loss`` (source weights ⊙ new mask, before retraining; None in
        round 0), ``val_top1`` / ``test_top1`` / ``…_loss`` (after training, the selected epoch),
        ``best_epoch``, ``pqi`` (global I_{p,q} of the trained weights over m_t), ``pqi_layer``,
        ``pqi_grid`` (global, rows p = 0.1..1.0, columns q = 1.0..2.0, None where p ≥ q),
        ``pqi_neuron_mean`` (neuron scope: mean per layer), ``gini``, ``pruned_pqi`` (of the
        pruned model), ``prune_info`` (SAP: d, PQ Index, r_t),
        ``seconds_train``, ``seconds_prune``, ``seconds_eval``.

    Raises:
        ConfigError: bad hyperparameters, no validation split with ``select="val"``, a rewind
            step beyond round 0's training.

    Example:
        >>> data = prunelab.data.load("fashion-mnist")
        >>> net = prunelab.models.create("mlp", data.in_shape, data.num_classes)
        >>> res = iterate(net, data, "sap", rounds=5, epochs=3, p=0.5, q=1.0)
        >>> res.densities()
    """
    if rounds is not None:
        hparam_fields["rounds"] = rounds
    if epochs is not None:
        hparam_fields["epochs"] = epochs
    hp = _resolve_hparams(schedule, hparams, hparam_fields)
    if train_config is None:
        if hp.epochs is None:
            raise ConfigError("give epochs= (epochs per round; the paper trains 200) or a train_config")
        train_config = paper_train_config(hp.epochs)
    retrain_config = retrain_config or train_config
    if hp.epochs is not None:
        train_config = train_config.replace(epochs=hp.epochs)
        retrain_config = retrain_config.replace(epochs=hp.epochs)
    if not 0.0 <= float(target) < 1.0:
        raise ConfigError(f"target sparsity must be in [0, 1), got {target!r}")
    if hp.select == "val" and (getattr(data, "val", None) is None or len(data.val) == 0):
        raise ConfigError("select='val' needs a validation split: load the data with val_size > 0, "
                          "or use select='last'")
    if not isinstance(model, nn.Module):
        model = model()
    log = log or (lambda msg: None)
    masks = (masks.clone() if masks is not None else Masks.ones(model))
    masks.validate(model)
    if masks.total() == 0:
        raise ConfigError("the model has no prunable weights")
    if hp.rewind == "k":
        steps = math.ceil(len(data.train) / train_config.batch_size) * train_config.epochs
        if hp.rewind_step > steps:
            raise ConfigError(f"rewind_step {hp.rewind_step} is beyond round 0's {steps} steps")
        dense_model = None
    init_state = _clone_state(model)
    rewind_state = init_state
    total = masks.total()
    target_kept = math.floor((1.0 - float(target)) * total + 0.5) if (target > 0 and hp.stop_at_target) else None
    # Under torchrun every rank runs the rounds (training is data-parallel); rank 0 alone writes.
    writer = checkpoint_dir is not None and _dist.is_main()
    if writer:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    records: list[dict] = []
    times = {"train": 0.0, "retrain": 0.0, "prune": 0.0, "eval": 0.0}
    dense_state = trained_state = None
    pruned_scores = None
    reached = target_kept is None
    bs = train_config.eval_batch_size
    for t in range(hp.rounds + 1):
        rec: dict = {"round": t}
        seconds_prune = 0.0
        if t > 0:
            t0 = time.perf_counter()
            source = dense_state if schedule == "os" else trained_state
            model.load_state_dict(source)
            weights = {n: p for n, p in model.named_parameters() if n in masks}
            if schedule == "sap":
                new, info = sap_masks(weights, masks, hp.p, hp.q, hp.eta_r, hp.gamma, hp.beta, hp.scope)
            else:
                new, info = fixed_fraction_masks(weights, masks, hp.rate, t, hp.scope), {"scope": hp.scope}
            if target_kept is not None and new.kept() < target_kept:
                new = _cap_to(masks, new, weights, masks.kept() - target_kept)
                info["capped_at_target"] = True
            if any(bool((new[n] & ~masks[n]).any()) for n in masks):
                raise MethodError("internal error: a round revived pruned weights (masks must only shrink)")
            rec["pruned"] = masks.kept() - new.kept()
            rec["prune_info"] = _jsonable(info)
            masks = new
            masks.apply(model)
            seconds_prune = time.perf_counter() - t0
            t0 = time.perf_counter()
            pruned_scores = _scores(model, data, bs)
            _flat_scores(rec, "pruned_", pruned_scores)
            rec["pruned_pqi"] = pq_index_model(model, masks, hp.p, hp.q, "global")["global"]
            times["eval"] += time.perf_counter() - t0
            if hp.rewind in ("init", "k"):
                model.load_state_dict(rewind_state)
                masks.apply(model)
        else:
            rec["pruned"] = 0
            _flat_scores(rec, "pruned_", {})
            rec["pruned_pqi"] = None
        rec.update(kept=masks.kept(), total=total, density=masks.kept() / total)

        t0 = time.perf_counter()
        config = (train_config if t == 0 else retrain_config)
        config = config.replace(seed=config.seed + t)
        if t == 0 and dense_model is not None:
            model.load_state_dict(dense_model.state_dict())
            masks.apply(model)
            rec["best_epoch"], rec["reused_dense"] = None, True
        else:
            extra = []
            capture = None
            if t == 0 and hp.rewind == "k":
                if hp.rewind_step == 0:
                    rewind_state = init_state
                else:
                    capture = _CaptureStep(hp.rewind_step)
                    extra.append(capture)
            state = train(model, data.train, config, masks=masks, callbacks=[*callbacks, *extra],
                          val=data.val if len(data.val) else None, select_best=hp.select == "val",
                          progress=False, label=f"{schedule} round {t}")
            if capture is not None:
                if capture.state is None:
                    raise ConfigError(f"rewind_step {hp.rewind_step} was never reached in round 0")
                rewind_state = capture.state
            rec["best_epoch"] = (state.best or {}).get("epoch") if hp.select == "val" else len(state.history)
        seconds_train = time.perf_counter() - t0
        times["train" if t == 0 else "retrain"] += seconds_train

        t0 = time.perf_counter()
        _flat_scores(rec, "", _scores(model, data, bs))
        rec["pqi"] = pq_index_model(model, masks, hp.p, hp.q, "global")["global"]
        rec["pqi_layer"] = pq_index_model(model, masks, hp.p, hp.q, "layer")
        if hp.scope == "neuron":
            rec["pqi_neuron_mean"] = {n: float(v.mean()) if v.numel() else 0.0
                                      for n, v in pq_index_model(model, masks, hp.p, hp.q, "neuron").items()}
        if hp.record_grid:
            rec["pqi_grid"] = grid_to_lists(pq_index_grid_model(model, masks, "global")["global"])
        rec["gini"] = gini_index_model(model, masks, "global")["global"]
        seconds_eval = time.perf_counter() - t0
        times["eval"] += seconds_eval
        times["prune"] += seconds_prune
        rec.update(seconds_train=seconds_train, seconds_prune=seconds_prune, seconds_eval=seconds_eval)
        records.append(rec)

        trained_state = _clone_state(model)
        if t == 0:
            dense_state = trained_state
        log(f"{schedule} round {t}/{hp.rounds}: density {rec['density']:.4f} ({rec['kept']}/{total}), "
            f"val top-1 {_pct(rec['val_top1'])}, test top-1 {_pct(rec['test_top1'])}, "
            f"PQ Index {rec['pqi']:.4f}, {seconds_train:.1f}s")
        if writer:
            from prunelab.core.checkpoints import save_checkpoint

            save_checkpoint(checkpoint_dir / f"round_{t:03d}.safetensors", model, masks, metrics=rec,
                            extra={"schedule": schedule, "hparams": asdict(hp), "round": t,
                                   "dataset": getattr(data, "name", None)})
        if on_round is not None:
            on_round(rec, model, masks)
        if target_kept is not None and masks.kept() <= target_kept:
            reached = True
            break

    info = {
        "schedule": schedule, "hparams": asdict(hp), "rounds_run": len(records) - 1,
        "density": masks.density(), "sparsity": masks.sparsity(), "target": float(target),
        "reached_target": reached, "train_config": train_config.to_dict(),
        "retrain_config": retrain_config.to_dict(),
    }
    if pruned_scores:
        info["pruned_scores"] = pruned_scores
    return IterativeResult(model=model, masks=masks, rounds=records, info=info, phase_times=times)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return obj


# -- registered methods ----------------------------------------------------------------------------

class _ScheduleMethod(IterativeMethod):
    schedule = ""

    def run(self, ctx: MethodContext) -> MethodOutcome:
        """Run the schedule for the harness (see the module docstring for how the configs map)."""
        model = ctx.model_factory()
        model.load_state_dict(ctx.init_state)
        result = iterate(model, ctx.data, self.schedule, hparams=self.hparams, train_config=ctx.train_config,
                         retrain_config=ctx.retrain_config, dense_model=ctx.dense_model,
                         target=ctx.target, log=ctx.log)
        return result.to_outcome()


@register("os")
class OneShotRounds(_ScheduleMethod):
    """One-shot (OS) rounds: every mask cut from the dense trained weights, each retrained from
    θ_0 (Diao et al. 2023 baseline ``os-P``, papers.md §2.3)."""

    Hparams = FixedFractionHparams
    schedule = "os"


@register("lt")
class LotteryTicket(_ScheduleMethod):
    """Lottery ticket (iterative magnitude pruning with rewinding; Frankle & Carbin 2019, the
    paper's ``lt-P`` baseline): masks cut from the weights retrained in the current round."""

    Hparams = FixedFractionHparams
    schedule = "lt"


@register("sap")
class SAP(_ScheduleMethod):
    """Sparsity-informed Adaptive Pruning (Diao et al. 2023, Algorithm 1): prune
    c_t = ⌊d_t min(γ(1 − r_t/d_t), β)⌋ weights per round, r_t from the PQ Index (Theorem 2)."""

    Hparams = SAPHparams
    schedule = "sap"
