"""The statistics behind the studies' verdicts: Spearman's ρ, mean ± std over seeds, and when a
ranking of drops is signal rather than seed noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_SPREAD", "nearest", "spearman", "rank_verdict", "mean_std"]

#: Drops that differ by less than this (points) across the compared layers or data sets are not ranked.
MIN_SPREAD = 1.0


def nearest(values: Sequence[float], target: float) -> float:
    """The value closest to ``target`` (the larger one on a tie)."""
    return min(values, key=lambda v: (abs(v - target), -v))


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant.

    With two points it is ±1, the sign of the slope (weak evidence; the results list the drops).
    """
    if len(a) < 2:
        return None
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def rank_verdict(rho: float | None, rows: Sequence[dict]) -> str:
    """"holds" / "contradicted" / "inconclusive" from ρ and the summary rows compared.

    The mean drops must differ by at least :data:`MIN_SPREAD` points and by more than twice the
    typical standard error of a mean over seeds (mean seed std / √seeds); otherwise ρ ranks noise.
    """
    if rho is None:
        return "inconclusive (no variation)"
    drops = np.asarray([r["drop_mean"] for r in rows], float)
    spread = float(np.ptp(drops))
    n = max(1, min(r.get("n", 1) for r in rows))
    noise = 2.0 * float(np.mean([r.get("drop_std", 0.0) for r in rows])) / math.sqrt(n) if n > 1 else 0.0
    if spread < max(MIN_SPREAD, noise):
        return (f"inconclusive (the drops span {spread:.1f} points, within "
                + (f"seed noise, 2 standard errors = {noise:.1f})" if noise >= MIN_SPREAD else f"{MIN_SPREAD:g} point)"))
    if rho >= 0.5:
        return "holds"
    if rho <= -0.5:
        return "contradicted"
    return "inconclusive"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
