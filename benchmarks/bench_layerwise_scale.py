"""Layer-wise pruning at real layer sizes: prune time, peak memory and accuracy; prints JSON.

Two measurements, each run in a fresh subprocess so its peak memory is its own:

* **MLP 784-1024-1024-10 on Fashion-MNIST** (trained here for ``--epochs`` epochs with Adam, seed
  0, unless ``--checkpoint`` names one): every layer-wise method with its default hparams prunes
  the two hidden layers from ``--rows`` calibration images (the first ones of the training
  split) at each of ``--targets`` (``2:4`` is the N:M pattern, for the methods that offer it);
  magnitude (per layer, the same hidden layers) is the reference. Reported per run: wall and CPU
  seconds of ``prunelab.prune``, the process's peak resident memory above what it held before
  pruning, and test top-1 without retraining.
* **One nn.Linear(4096, 4096)** with ``--linear-rows`` calibration rows (correlated Gaussian
  inputs): SparseGPT and Wanda at 50 %, wall seconds and peak memory.

Timings are wall-clock on this machine with ``--threads`` torch threads (2: the acceptance
setting). Peak memory: :class:`prunelab.utils.memory.PeakMemory` around the call (the
process's peak resident memory above what it held before: the model, the data and the
interpreter are excluded).

Usage: python benchmarks/bench_layerwise_scale.py [--checkpoint MLP.safetensors] [--rows 4096]
       [--targets 0.5 2:4 0.9] [--methods lobs nettrim feta sparsegpt wanda magnitude]
       [--skip-linear] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time

PATTERN_METHODS = {"magnitude", "lobs", "sparsegpt", "wanda"}


def _mib(peak) -> float | None:
    """A :class:`~prunelab.utils.memory.PeakMemory` reading in MiB (None where unmeasurable)."""
    return None if peak.peak_bytes is None else round(peak.peak_bytes / 2**20, 1)


def _hidden_layers(model) -> list[str]:
    import prunelab
    names = list(prunelab.prunable_parameters(model))
    return names[:-1]


def _one_mlp(args) -> dict:
    import torch
    import prunelab
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.utils.memory import PeakMemory
    from prunelab.data import load

    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.eval()
    ds = load("fashion-mnist")
    calib = ds.train.x[:args.rows]
    target = args.target
    hparams: dict = {}
    if ":" in target:
        hparams["pattern"] = target
        n, m = (int(v) for v in target.split(":"))
        sparsity = 1 - n / m
    else:
        sparsity = float(target)
    layers = _hidden_layers(model)
    if args.method == "magnitude":
        hparams["scope"] = "layer"
        last = list(prunelab.prunable_parameters(model))[-1]   # left dense, as the layer-wise methods do
        call = dict(masks=prunelab.Masks.ones(model, exclude=(last,)))
    else:
        call = dict(calib=calib)
    with PeakMemory("cpu") as peak:
        wall, cpu = time.perf_counter(), time.process_time()
        result = prunelab.prune(model, args.method, sparsity=sparsity, **call, **hparams)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    acc = prunelab.evaluate(model, ds.test)
    kept = {n: int(result[n].sum()) for n in layers}
    total = {n: int(result[n].numel()) for n in layers}
    return {"method": args.method, "target": target, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_extra_mib": _mib(peak),
            "test_top1": round(100 * acc["top1"], 2) if acc.get("top1", 0) <= 1 else acc["top1"],
            "hidden_sparsity": round(1 - sum(kept.values()) / sum(total.values()), 4)}


def _one_linear(args) -> dict:
    import torch
    from torch import nn
    import prunelab
    from prunelab.utils.memory import PeakMemory

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    d = 4096
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    x = torch.randn(args.linear_rows, d, generator=g) @ mix + 0.1 * torch.randn(args.linear_rows, d, generator=g)
    layer = nn.Linear(d, d)
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(d, 10))
    del mix
    with PeakMemory("cpu") as peak:
        wall, cpu = time.perf_counter(), time.process_time()
        masks = prunelab.prune(model, args.method, sparsity=0.5, calib=x, layers=("0.weight",))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"method": args.method, "layer": "Linear(4096, 4096)", "rows": args.linear_rows,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_extra_mib": _mib(peak),
            "kept": int(masks["0.weight"].sum()), "total": int(masks["0.weight"].numel())}


def _train(path: str, epochs: int) -> None:
    subprocess.run([sys.executable, "-m", "prunelab", "train", "--model", "mlp", "--model-arg",
                    "hidden=[1024,1024]", "--dataset", "fashion-mnist", "--epochs", str(epochs),
                    "--seed", "0", "--out", path, "--quiet"], check=True)


def _child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1], "argv": argv}
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--targets", nargs="+", default=["0.5", "2:4", "0.9"])
    parser.add_argument("--methods", nargs="+",
                        default=["magnitude", "wanda", "sparsegpt", "lobs", "feta", "nettrim"])
    parser.add_argument("--linear-rows", type=int, default=8192)
    parser.add_argument("--skip-linear", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=["mlp", "linear"], help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "mlp":
        print(json.dumps(_one_mlp(args)))
        return
    if args.one == "linear":
        print(json.dumps(_one_linear(args)))
        return
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = os.path.join(os.environ.get("TMPDIR", "/tmp"), "prunelab-mlp1024.safetensors")
        _train(checkpoint, args.epochs)
    common = ["--checkpoint", checkpoint, "--rows", str(args.rows), "--threads", str(args.threads),
              "--linear-rows", str(args.linear_rows)]
    mlp = []
    for target in args.targets:
        for method in args.methods:
            if ":" in target and method not in PATTERN_METHODS:
                continue
            run = _child([*common, "--one", "mlp", "--method", method, "--target", target])
            mlp.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    linear = []
    if not args.skip_linear:
        for method in ("wanda", "sparsegpt"):
            run = _child([*common, "--one", "linear", "--method", method])
            linear.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "layer-wise pruning at scale", "threads": args.threads,
                      "rows": args.rows, "checkpoint": checkpoint,
                      "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "mlp_784_1024_1024_10": mlp,
                      "linear_4096": linear}, indent=1))


if __name__ == "__main__":
    main()
