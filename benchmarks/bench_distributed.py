"""Data-parallel step time on N gloo ranks: the former hand-made gradient sum vs DDP vs FSDP; prints JSON.

Trains an MLP 784-4096-4096-10 (20.3 M parameters, so the gradient exchange matters) with 90 % of
its weights masked (global magnitude) under ``torchrun --nproc-per-node N``, once per engine and
repeat, interleaved in the same processes (same global batch, same seed, same start):

- ``hand``: the gradients flattened and all-reduced after ``backward()`` returns
  (``prunelab.training.distributed.sum_gradients_``, how ``train`` reduced them before DDP; kept
  here only to measure against);
- ``ddp``: ``train``'s default, DistributedDataParallel's bucketed all-reduce overlapping the backward;
- ``fsdp``: ``train(shard=True)``, ``fully_shard``.

It reports the median step time of each (steps after the first two of every run), the ratios to
``hand`` side by side, and the largest weight difference of each engine to ``hand`` after the same
steps (DDP: 0 with 2 ranks, the same sums; FSDP: float summation order).

    python benchmarks/bench_distributed.py [--nproc 2] [--steps 12] [--repeats 3] [--batch 128]

On a CPU machine the ranks share the cores: the ratios, not the absolute times, are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ENGINES = ("hand", "ddp", "fsdp")
WARMUP_STEPS = 2


def _problem(steps: int, batch: int):
    import torch

    import prunelab
    from prunelab import models
    from prunelab.data import Split
    from prunelab.training.loop import TrainConfig

    g = torch.Generator().manual_seed(0)
    samples = steps * batch
    x = torch.randn(samples, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    torch.manual_seed(0)
    model = models.create("mlp", (1, 28, 28), 10, hidden=[4096, 4096])
    masks = prunelab.prune(model, "magnitude", 0.9)
    config = TrainConfig(epochs=1, batch_size=batch, optimizer="sgd", lr=0.01, momentum=0.9, seed=1)
    return model, masks, Split(x, y), config


class _HandMade:
    """``train``'s engine as it was before DDP: no wrapper, gradients summed after backward."""

    def __enter__(self):
        from prunelab.training.distributed import collectives, parallel

        cls = parallel.DataParallel
        self.saved = cls.attach, cls.after_backward

        def attach(engine, optimizer):
            engine.loss_scale = 1.0
            engine.synced = list({id(p): p for g in optimizer.param_groups for p in g["params"]
                                  if p.requires_grad}.values())

        def after_backward(engine):
            collectives.sum_gradients_(engine.synced)

        cls.attach, cls.after_backward = attach, after_backward
        return self

    def __exit__(self, *exc):
        from prunelab.training.distributed import parallel

        parallel.DataParallel.attach, parallel.DataParallel.after_backward = self.saved
        return False


def _run(engine: str, args) -> tuple[list[float], dict]:
    import contextlib

    from prunelab.training.loop import Callback, train

    class Clock(Callback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, state):
            self.marks.append(time.perf_counter())

        def on_batch_end(self, state):
            self.marks.append(time.perf_counter())

    model, masks, split, config = _problem(args.steps, args.batch)
    clock = Clock()
    with _HandMade() if engine == "hand" else contextlib.nullcontext():
        train(model, split, config, masks=masks, callbacks=[clock], progress=False, shard=engine == "fsdp")
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])][WARMUP_STEPS:]
    return steps, {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(args) -> None:
    import torch

    from prunelab.training import distributed

    distributed.init()
    args.nproc = distributed.world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.nproc))
    times = {e: [] for e in args.engines}
    weights = {}
    for _ in range(args.repeats):
        for engine in args.engines:
            steps, weights[engine] = _run(engine, args)
            times[engine].extend(steps)
    if distributed.is_main():
        median = {e: statistics.median(t) for e, t in times.items()}
        base = "hand" if "hand" in median else args.engines[0]
        print(json.dumps({
            "model": "mlp 784-4096-4096-10, 90% masked", "parameters": sum(v.numel() for v in weights[base].values()),
            "global_batch": args.batch, "nproc": args.nproc, "cpu_cores": os.cpu_count(),
            "steps_timed_per_engine": {e: len(t) for e, t in times.items()},
            "median_step_ms": {e: round(1000 * m, 2) for e, m in median.items()},
            f"step_time_ratio_to_{base}": {e: round(m / median[base], 3) for e, m in median.items()},
            f"max_abs_weight_diff_to_{base}": {
                e: max(float((w[k].double() - weights[base][k].double()).abs().max()) for k in w)
                for e, w in weights.items()},
        }, indent=1))
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="steps per run (the first 2 are not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine, interleaved")
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be > {WARMUP_STEPS}")
    if args.worker:
        worker(args)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // args.nproc)),
               PRUNELAB_DIST_BACKEND=os.environ.get("PRUNELAB_DIST_BACKEND", "gloo"))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", str(args.nproc), __file__, "--worker",
                           "--steps", str(args.steps), "--repeats", str(args.repeats), "--batch", str(args.batch),
                           "--engines", *args.engines],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"torchrun failed ({proc.returncode}):\n{proc.stderr}")
    print(proc.stdout.strip())


if __name__ == "__main__":
    main()
