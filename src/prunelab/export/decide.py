"""Dense or sparse, per layer and for the whole model, within a time budget (``to_sparse`` "auto").

A layer is decided by the calibrated :mod:`prunelab.export.costmodel` when its predicted
speedup is clearly above or below 1 (outside ``[UNSURE_LOW, UNSURE_HIGH]``); in between it is
timed briefly, dense against sparse, interleaved, on an input of the real shape, as long as the
conversion's time budget lasts. The whole converted model is then timed against the dense copy
if that fits in what is left of the budget.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from prunelab.export import timing
from prunelab.export.costmodel import CostModel, layer_macs

__all__ = ["UNSURE_LOW", "UNSURE_HIGH", "Budget", "decide_layer", "verify_model"]

#: Predicted speedups in this range are confirmed by timing: on a loaded machine the
#: calibration's dense rate (memory-bound layers above all) drifts by up to 2x.
UNSURE_LOW, UNSURE_HIGH = 0.5, 2.0
#: Seconds one layer's confirmation may take at most.
_LAYER_SECONDS = 0.6
#: A layer predicted to take less than this (µs, dense and sparse) is cheap to time, so it is
#: timed whatever the prediction, for at most _CHEAP_SECONDS.
_CHEAP_US, _CHEAP_SECONDS = 300.0, 0.1


class Budget:
    """Seconds left for timing during one conversion."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + max(0.0, float(seconds))

    def left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())


def _input_like(x: torch.Tensor, batch: int) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *x.shape[1:], generator=generator, dtype=x.dtype)


def decide_layer(model: CostModel, module: nn.Module, kind: str, x: torch.Tensor, batch: int,
                 dense_fn, sparse_fn, budget: Budget, margin: float, max_reps: int) -> dict:
    """Choose dense or sparse for one layer.

    Args:
        model: the calibrated cost model.
        module: the dense layer (its weight's zeros give the non-zero MACs).
        kind: ``"conv"`` or ``"linear"``.
        x: the layer's captured input (any batch size; resized to ``batch`` for timing).
        batch: the batch size converted for.
        dense_fn, sparse_fn: ``f(x)`` running the dense layer (with what the sparse one fuses)
            and the sparse one.
        budget: time left for timing.
        margin: relative gain a timed sparse layer must show.
        max_reps: at most this many timed calls per candidate.

    Returns:
        ``{"sparse": bool, "decided_by": "model" | "timing" | "model (timing budget spent)",
        "predicted": {...}, "median_us": {...} (when timed)}``.
    """
    macs, nnz_macs = layer_macs(module, tuple(x.shape[1:]), batch)
    predicted = model.predict(kind, batch, macs, nnz_macs)
    out = {"predicted": predicted, "decided_by": "model"}
    speedup = predicted["speedup"]
    cheap = max(predicted["dense_us"], predicted["sparse_us"]) < _CHEAP_US
    if not cheap and (speedup >= UNSURE_HIGH or speedup <= UNSURE_LOW):
        out["sparse"] = speedup >= UNSURE_HIGH
        return out
    per_call_s = max(predicted["dense_us"], predicted["sparse_us"]) * 1e-6
    seconds = min(_CHEAP_SECONDS if cheap else _LAYER_SECONDS, budget.left())
    reps = int(min(max_reps, seconds / (2 * per_call_s) - 1))
    if reps < 3 and cheap and not UNSURE_LOW < speedup < UNSURE_HIGH:
        out["sparse"] = speedup >= UNSURE_HIGH   # a sure prediction: no need to say the budget was spent
        return out
    if reps < 3:
        out["sparse"] = speedup >= 1 + margin
        out["decided_by"] = "model (timing budget spent)"
        return out
    xb = _input_like(x, batch)
    timed = timing.interleaved({"dense": lambda: dense_fn(xb), "sparse": lambda: sparse_fn(xb)}, warmup=1, reps=reps)
    medians = {k: v["median_us"] for k, v in timed.items()}
    out.update(decided_by="timing", median_us=medians, sparse=medians["sparse"] < (1 - margin) * medians["dense"])
    return out


def verify_model(dense_fn, sparse_fn, budget: Budget, max_reps: int, guess_s: float = 0.0) -> dict:
    """Time the whole converted model against the dense copy if the budget allows.

    Args:
        dense_fn, sparse_fn: zero-argument calls of the two models.
        budget: time left.
        max_reps: at most this many timed rounds.
        guess_s: an estimate of one dense pass; if 3 rounds of two such passes cannot fit,
            nothing is run.

    Returns:
        ``{"median_us": {"dense", "sparse"}, "reps": n}`` or ``{"skipped": reason}``.
    """
    if 2 * 4 * guess_s > budget.left():
        return {"skipped": f"a dense pass is predicted to take {guess_s:.2f} s; the time budget left "
                           f"({budget.left():.1f} s) does not allow 3 timed rounds"}
    with torch.inference_mode():
        start = time.perf_counter()
        dense_fn()
        sparse_fn()
        pair_s = time.perf_counter() - start
    reps = int(min(max_reps, budget.left() / max(pair_s, 1e-9)))
    if reps < 3:
        return {"skipped": f"one dense + sparse pass takes {pair_s:.2f} s; the time budget left "
                           f"({budget.left():.1f} s) does not allow 3 timed rounds"}
    timed = timing.interleaved({"dense": dense_fn, "sparse": sparse_fn}, warmup=0, reps=reps)
    return {"median_us": {k: v["median_us"] for k, v in timed.items()}, "reps": reps}
