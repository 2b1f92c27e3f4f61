"""Prune time of the layer-wise methods against the layer's input width; prints JSON.

One ReLU layer ``Linear(d_in, d_out)`` (followed by a small classifier the methods leave alone)
is pruned to ``--sparsity`` from ``--n`` calibration rows, for ``d_in`` in ``--sizes`` with
``N`` and ``d_out`` fixed. Inputs are uniform in [0, 1] (pixel-like), weights N(0, 1/d_in).
Each method runs through its public ``prune`` (capture included; ``capture_s`` says how much of
it that is), on one thread. For each method the JSON gives wall and CPU seconds per width, the
relative error of the pruned layer's outputs on the calibration rows (pre-activation, and after
the ReLU, which FeTa and Net-Trim fit), and the
growth exponent ``log(t2/t1) / log(d2/d1)`` between successive widths. A run whose time,
extrapolated from the previous width with ``--expect-exponent``, exceeds ``--budget`` seconds is
skipped and the estimate recorded.

Configurations: ``hard-threshold``; ``feta`` (default: τ search + cut + polish) and
``feta-fixed-tau`` (one solve at the τ the search found: the cost of the paper's protocol for one
τ); ``nettrim`` (default: ε search + final ADMM) and ``nettrim-fixed-eps`` (one ADMM run at
ε = 0.3, no search); ``lobs`` (the default hybrid update), ``lobs-sequential`` (exact greedy OBS)
and ``lobs-oneshot``; ``sparsegpt`` and ``wanda``.

Usage: python benchmarks/bench_layerwise.py [--n 5000] [--d-out 100] [--sizes 256 1024 4096]
       [--methods ...] [--sparsity 0.9] [--budget 600]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
from torch import nn

import prunelab
from prunelab.data import Split

CONFIGS = {
    "hard-threshold": ("hard-threshold", {}, 0),
    "feta": ("feta", {}, 1),
    "feta-fixed-tau": ("feta", {"tau": None}, 1),   # τ filled in from the "feta" run
    "nettrim": ("nettrim", {}, 1),
    "nettrim-fixed-eps": ("nettrim", {"search_steps": 0, "epsilon": 0.3}, 1),
    "lobs": ("lobs", {}, 3),
    "lobs-sequential": ("lobs", {"update": "sequential"}, 3),
    "lobs-oneshot": ("lobs", {"update": "oneshot"}, 3),
    "sparsegpt": ("sparsegpt", {}, 3),
    "wanda": ("wanda", {}, 1),
}


def _problem(n: int, d_in: int, d_out: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in))
        model[0].bias.copy_(0.1 * torch.randn(d_out, generator=g))
    x = torch.rand(n, d_in, generator=g)
    return model, Split(x, torch.zeros(n, dtype=torch.int64))


def _run(method: str, hparams: dict, n: int, d_in: int, d_out: int, sparsity: float) -> dict:
    model, calib = _problem(n, d_in, d_out)
    with torch.no_grad():
        original = model[0](calib.x)
    pruner = prunelab.methods.create(method, layers=("0.weight",), **hparams)
    wall, cpu = time.perf_counter(), time.process_time()
    masks = pruner.prune(model, None, sparsity, calib)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    info = pruner.last_info[0] if isinstance(pruner.last_info, list) else {}
    with torch.no_grad():
        pruned = model[0](calib.x)
        error = ((pruned - original).norm() / original.norm()).item()
        relu_error = ((pruned.relu() - original.relu()).norm() / original.relu().norm()).item()
    return {"d_in": d_in, "wall_s": wall, "cpu_s": cpu, "capture_s": info.get("capture_s"),
            "kept": int(masks["0.weight"].sum()), "relative_error_preactivation": error,
            "relative_error_relu": relu_error,
            "tau": info.get("tau"), "epsilon": info.get("epsilon"), "solves": info.get("solves")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--d-out", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--budget", type=float, default=600.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {}
    found_tau: dict[int, float] = {}
    for name in args.methods:
        method, hparams, exponent = CONFIGS[name]
        runs = []
        for d_in in args.sizes:
            if runs and "wall_s" in runs[-1] and exponent:
                estimate = runs[-1]["wall_s"] * (d_in / runs[-1]["d_in"]) ** exponent
                if estimate > args.budget:
                    runs.append({"d_in": d_in, "skipped": True, "estimated_wall_s": estimate})
                    continue
            params = dict(hparams)
            if name == "feta-fixed-tau":
                if d_in not in found_tau:
                    continue
                params["tau"] = found_tau[d_in]
            run = _run(method, params, args.n, d_in, args.d_out, args.sparsity)
            if name == "feta":
                found_tau[d_in] = run["tau"]
            runs.append(run)
        timed = [r for r in runs if "wall_s" in r]
        growth = [math.log(b["wall_s"] / a["wall_s"]) / math.log(b["d_in"] / a["d_in"])
                  for a, b in zip(timed, timed[1:])]
        results[name] = {"runs": runs, "growth_exponents": growth}
    print(json.dumps({"benchmark": "layerwise prune time vs d_in", "n": args.n,
                      "d_out": args.d_out, "sparsity": args.sparsity, "threads": 1,
                      "machine": platform.processor() or platform.machine(),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
