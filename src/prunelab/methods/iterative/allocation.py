"""How many weights a round prunes in each unit, and which: the allocation rules of the schedules.

A unit is the whole model, a layer or an output neuron (``scope``). Two rules (Diao et al., ICLR
2023): a fixed fraction ``P`` of each unit's weights per round (the ``os`` and ``lt`` baselines),
or SAP's bound from the PQ Index (Algorithm 1, Theorem 2). Either way the weights pruned are the
remaining ones of smallest magnitude, exactly as many as the rule says.

An allocation rule is a function ``rule(weights, masks, hparams, round_index) -> (new_masks, info)``
(:data:`AllocationRule`); :mod:`prunelab.methods.iterative.schedules` binds each schedule to one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from prunelab.errors import ConfigError
from prunelab.core.masks import Masks
from prunelab.core.pqi import PQ_SCOPES, check_pq, pq_index_model

AllocationRule = Callable[[Mapping[str, torch.Tensor], Masks, Any, int], "tuple[Masks, dict]"]


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


def fixed_fraction_rule(weights: Mapping[str, torch.Tensor], masks: Masks, hparams,
                        round_index: int) -> tuple[Masks, dict]:
    """The OS/LT allocation rule: :func:`fixed_fraction_masks` with ``hparams.rate`` and ``hparams.scope``.

    Args:
        weights: ``name -> tensor`` whose magnitudes decide.
        masks: current masks.
        hparams: a :class:`~prunelab.methods.iterative.schedules.FixedFractionHparams`.
        round_index: t ≥ 1.

    Returns:
        ``(new masks, {"scope": scope})``.
    """
    return fixed_fraction_masks(weights, masks, hparams.rate, round_index, hparams.scope), {"scope": hparams.scope}


def pq_bound_rule(weights: Mapping[str, torch.Tensor], masks: Masks, hparams,
                  round_index: int) -> tuple[Masks, dict]:
    """SAP's allocation rule (Diao et al. 2023, Algorithm 1): :func:`sap_masks` with the hparams'
    p, q, η_r, γ, β.

    Args:
        weights: ``name -> tensor``: the weights just trained.
        masks: current masks.
        hparams: a :class:`~prunelab.methods.iterative.schedules.SAPHparams`.
        round_index: t ≥ 1 (unused: the bound depends on the weights only).

    Returns:
        ``(new masks, info)`` as :func:`sap_masks` returns them.
    """
    hp = hparams
    return sap_masks(weights, masks, hp.p, hp.q, hp.eta_r, hp.gamma, hp.beta, hp.scope)
