"""Time of a global PQ Index of a 25 M-weight model relative to one ``w.abs().sum()`` pass.

The model is four ``nn.Linear(2500, 2500)`` layers (25,000,000 prunable weights, float32, CPU).
The baseline is ``sum(w.abs().sum() for w in weights)`` over the same weights. Each repetition
times the baseline and then each PQ Index case (interleaved, so drift in machine load hits all
alike); the script prints medians and ratios as JSON. Acceptance: the ratio of the
global I_{0.5,1} with all-ones masks is at most 5.

Usage: python benchmarks/bench_pqi.py [--reps 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from prunelab.core.masks import Masks
from prunelab.core.pqi import pq_index_grid_model, pq_index_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", action="store_true", help="also time the 10 x 11 grid (slow: 21 power passes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2500, 2500) for _ in range(4)])
    weights = [m.weight for m in model]
    n = sum(w.numel() for w in weights)
    ones = Masks.ones(model)
    g = torch.Generator().manual_seed(1)
    half = Masks({name: torch.rand(m.shape, generator=g) < 0.5 for name, m in ones.items()})

    @torch.no_grad()
    def baseline():
        return sum(float(w.abs().sum()) for w in weights)

    cases = {
        "pqi_0.5_1_masks_ones": lambda: pq_index_model(model, ones, 0.5, 1.0, "global"),
        "pqi_0.5_1_no_masks": lambda: pq_index_model(model, None, 0.5, 1.0, "global"),
        "pqi_0.5_1_half_masked": lambda: pq_index_model(model, half, 0.5, 1.0, "global"),
        "pqi_1_2_masks_ones": lambda: pq_index_model(model, ones, 1.0, 2.0, "global"),
        "pqi_0.3_1.7_masks_ones": lambda: pq_index_model(model, ones, 0.3, 1.7, "global"),
        "pqi_0.5_1_layer_scope": lambda: pq_index_model(model, ones, 0.5, 1.0, "layer"),
    }
    if args.grid:
        cases["grid_10x11_masks_ones"] = lambda: pq_index_grid_model(model, ones, "global")
    for fn in (baseline, *cases.values()):  # warm-up
        fn()
    times = {"baseline_abs_sum": [], **{k: [] for k in cases}}
    for _ in range(args.reps):
        for name, fn in (("baseline_abs_sum", baseline), *cases.items()):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["baseline_abs_sum"]
    print(json.dumps({
        "what": "global PQ Index of a 25M-weight model vs one w.abs().sum() pass over the same weights",
        "weights": n,
        "dtype": "float32",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "reps": args.reps,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "median_seconds": {k: round(v, 5) for k, v in medians.items()},
        "ratio_to_baseline": {k: round(v / base, 3) for k, v in medians.items() if k != "baseline_abs_sum"},
        "min_seconds": {k: round(min(v), 5) for k, v in times.items()},
        "acceptance_ratio_at_most": 5.0,
        "acceptance_met": medians["pqi_0.5_1_masks_ones"] / base <= 5.0,
    }, indent=2))


if __name__ == "__main__":
    main()
