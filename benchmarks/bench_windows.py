"""Benchmark: the native kernel's window format against its AVX2 gather, Linear layers at batch 1.

A sparse Linear layer at batch 1 is a sparse matrix-vector product. ``SparseLinear`` hands the
native kernel its weight in a *window format* (``pl_window_build`` in
``prunelab/export/csrc/sparse_kernel.c``: 8 rows per vector, one 8-float load and one in-register
permute per step). Without it the kernel reads 8 non-zeros at a time through a gather. This script
times both on the same layer, interleaved, one thread, calling ``pl_sparse_forward`` directly (no
Python around it), and prints JSON:

- ``sweep``: random sparse layers 1024x1024, 4096x1024 and 512x4096 at densities 0.5 % to 50 %:
  the median µs of each path, their ratio, and the fraction of window lanes that hold a non-zero;
  and whether ``SparseLinear``'s rule (``_windows``) picks the windows for that layer;
- ``mlp``: the three layers of the MLP 784-1024-1024-10 at 90 % global magnitude (random SAP
  init, as in ``bench_export.py --suite networks``), and their sum.

Usage:
    python benchmarks/bench_windows.py                # about a minute
    python benchmarks/bench_windows.py --reps 100 --out windows.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

import prunelab
from prunelab import models
from prunelab.export import SparseLinear, interleaved, make_permanent, native

SHAPES = ((1024, 1024), (4096, 1024), (512, 4096))
DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)


def compare(layer: nn.Linear, warmup: int, reps: int) -> dict:
    """Window format vs gather on one layer at batch 1 (median µs of pl_sparse_forward)."""
    sparse = SparseLinear(layer, backend="native", threads=1)
    chosen = sparse._windows() is not None   # what SparseLinear's rule picks
    windows = sparse._windows(force=True)
    with_windows = sparse._descriptor(sparse._fields(), sparse.col, windows=windows)
    gather = sparse._linear_descriptor()   # the same layer with no window format (not batch 1)
    lib = native.load()
    x = torch.randn(1, sparse.in_features, generator=torch.Generator().manual_seed(0))
    y_w, y_g = torch.empty(1, sparse.out_features), torch.empty(1, sparse.out_features)
    fns = {"windows": lambda: lib.pl_sparse_forward(with_windows.data_ptr(), 1, x.data_ptr(), y_w.data_ptr(), 1),
           "gather": lambda: lib.pl_sparse_forward(gather.data_ptr(), 1, x.data_ptr(), y_g.data_ptr(), 1)}
    timed = interleaved(fns, warmup=warmup, reps=reps)
    w_us, g_us = timed["windows"]["median_us"], timed["gather"]["median_us"]
    steps = 0 if windows is None else windows[1].numel()
    return {"shape": [sparse.out_features, sparse.in_features], "nnz": sparse.nnz,
            "density": round(sparse.nnz / (sparse.out_features * sparse.in_features), 4),
            "lanes_filled": round(sparse.nnz / (8 * steps), 3) if steps else None,
            "windows_chosen": chosen, "windows_us": w_us, "gather_us": g_us, "gather_over_windows": round(g_us / w_us, 2),
            "max_abs_diff": float((y_w - y_g).abs().max())}


def random_layer(out_f: int, in_f: int, density: float, seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(out_f, in_f, generator=g) < density)
    return layer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if native.load() is None:
        print(json.dumps({"error": f"native kernel unavailable: {native.status()['reason']}"}))
        return 1
    torch.set_num_threads(1)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    sweep = []
    for i, (out_f, in_f) in enumerate(SHAPES):
        for j, density in enumerate(DENSITIES):
            row = compare(random_layer(out_f, in_f, density, 100 * i + j), args.warmup, args.reps)
            sweep.append(row)
            log(f"{out_f}x{in_f} density {density}: gather/windows {row['gather_over_windows']}")
    torch.manual_seed(0)
    mlp = models.create("mlp", (1, 28, 28), 10, hidden=(1024, 1024)).eval()
    make_permanent(mlp, prunelab.prune(mlp, "magnitude", sparsity=0.9, scope="global"))
    layers = [compare(m, args.warmup, args.reps) for m in mlp.modules() if isinstance(m, nn.Linear)]
    result = {
        "benchmark": "window format vs gather, Linear at batch 1, one thread",
        "setup": {"warmup": args.warmup, "reps": args.reps, "torch": torch.__version__, "cpu_count": os.cpu_count(),
                  "native_kernel": native.status(), "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]},
        "sweep": sweep,
        "sweep_min_gather_over_windows": min(r["gather_over_windows"] for r in sweep),
        "sweep_max_gather_over_windows": max(r["gather_over_windows"] for r in sweep),
        # what the rule costs where it picks the slower path (ratio of chosen to best, >= 1)
        "sweep_worst_choice": max((r["windows_us"] if r["windows_chosen"] else r["gather_us"])
                                  / min(r["windows_us"], r["gather_us"]) for r in sweep),
        "mlp_784_1024_1024_10_global_90": {"layers": layers,
                                           "windows_us": round(sum(r["windows_us"] for r in layers), 1),
                                           "gather_us": round(sum(r["gather_us"] for r in layers), 1)},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
