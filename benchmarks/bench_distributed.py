"""Data-parallel training cost: one process vs N gloo ranks on this machine; prints JSON.

Trains LeNet-300-100 with 90% of its weights masked (global magnitude) for a few epochs on random
28x28 data, once in this process and once under ``torchrun --nproc-per-node N`` (same global
batch, same seed), and reports wall time, the time spent summing gradients across ranks, and the
largest weight difference between the two runs.

    python benchmarks/bench_distributed.py [--nproc 2] [--epochs 2] [--samples 6000]

On a CPU machine the ranks share the cores, so N ranks are not N times faster: the point is the
communication overhead per step and the agreement with the single-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _problem(samples: int, epochs: int):
    import torch

    import prunelab
    from prunelab import models
    from prunelab.data import Split
    from prunelab.training.loop import TrainConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    cut = samples - samples // 6
    torch.manual_seed(0)
    model = models.create("lenet-300-100", (1, 28, 28), 10)
    masks = prunelab.prune(model, "magnitude", 0.9)
    config = TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9, seed=1)
    return model, masks, Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:]), config


def worker(args) -> None:
    import torch
    from safetensors.torch import save_file

    from prunelab.training import distributed
    from prunelab.training.loop import train

    torch.set_num_threads(1)
    distributed.init()
    model, masks, train_split, val_split, config = _problem(args.samples, args.epochs)
    spent = [0.0, 0]
    original = distributed.sum_gradients_

    def timed(params):
        t = time.perf_counter()
        original(params)
        spent[0] += time.perf_counter() - t
        spent[1] += 1

    distributed.sum_gradients_ = timed
    t0 = time.perf_counter()
    state = train(model, train_split, config, masks=masks, val=val_split, progress=False)
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
        print(json.dumps({"seconds": seconds, "steps": state.step, "allreduce_seconds": spent[0],
                          "allreduce_calls": spent[1], "val_top1": state.history[-1]["val_top1"]}))
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch
    from safetensors.torch import load_file

    from prunelab.training.loop import train

    torch.set_num_threads(1)
    model, masks, train_split, val_split, config = _problem(args.samples, args.epochs)
    t0 = time.perf_counter()
    state = train(model, train_split, config, masks=masks, val=val_split, progress=False)
    single_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "weights.safetensors")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc-per-node", str(args.nproc), __file__, "--worker", "--out", out,
                               "--epochs", str(args.epochs), "--samples", str(args.samples)],
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            sys.exit(f"torchrun failed ({proc.returncode}):\n{proc.stderr}")
        dist_result = json.loads(proc.stdout.strip().splitlines()[-1])
        weights = load_file(out)
    diff = max(float((weights[k] - v).abs().max()) for k, v in model.state_dict().items())
    steps = state.step
    print(json.dumps({
        "model": "lenet-300-100, 90% masked", "train_samples": len(train_split), "global_batch": config.batch_size,
        "epochs": args.epochs, "steps": steps, "nproc": args.nproc, "cpu_cores": os.cpu_count(),
        "single_seconds": round(single_seconds, 3),
        "distributed_seconds": round(dist_result["seconds"], 3),
        "allreduce_ms_per_step": round(1000 * dist_result["allreduce_seconds"] / max(1, dist_result["allreduce_calls"]), 3),
        "max_abs_weight_diff": diff,
        "val_top1_single": state.history[-1]["val_top1"], "val_top1_distributed": dist_result["val_top1"],
    }, indent=1))


if __name__ == "__main__":
    main()
