"""Cost of an LTP training step over a plain one, and of its parts. Prints JSON.

One step = zero_grad → forward → cross-entropy (+ the normalised soft-L0 for LTP) → backward →
SGD(momentum 0.9) step, as in ``prunelab.training.loop.train``. The plain model and the LTP-wrapped
copy are timed side by side: in every round each runs ``--steps`` steps (order alternating
between rounds), and the reported figures are medians over rounds of the per-step time, so
load from other processes hits both alike.

    python benchmarks/bench_ltp.py                    # LeNet-5, batch 128, 1 thread
    python benchmarks/bench_ltp.py --model lenet-300-100 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from prunelab import models
from prunelab.methods.ltp import SoftThresholdModel


def make_step(model, optimizer, x, y, wrapped=None):
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if wrapped is not None:
            loss = loss + wrapped.penalty("l0")
        loss.backward()
        optimizer.step()
    return step


def time_steps(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (medians are over these)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch_size,))

    variants = {}
    plain = models.create(args.model, (1, 28, 28), 10)
    variants["plain"] = make_step(plain, torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9), x, y)
    for gradient in ("approx", "exact"):
        model = models.create(args.model, (1, 28, 28), 10)
        model.load_state_dict(plain.state_dict())
        wrapped = SoftThresholdModel(model, temperature=args.temperature, gradient=gradient,
                                     threshold_init_quantile=0.5)
        optimizer = torch.optim.SGD(wrapped.parameter_groups(threshold_lr=0.1), lr=0.01, momentum=0.9)
        variants[f"ltp_{gradient}"] = make_step(wrapped, optimizer, x, y, wrapped)
    # Evaluation-mode forward (hard mask) against the plain forward, no grad.
    with torch.no_grad():
        eval_wrapped = SoftThresholdModel(models.create(args.model, (1, 28, 28), 10)).eval()
        plain.eval()
        variants["forward_plain_eval"] = lambda: plain(x)
        variants["forward_ltp_eval"] = lambda: eval_wrapped(x)

    for step in variants.values():
        for _ in range(args.warmup):
            with torch.set_grad_enabled(True):
                step()
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            if name.startswith("forward"):
                with torch.no_grad():
                    times[name].append(time_steps(variants[name], args.steps))
            else:
                times[name].append(time_steps(variants[name], args.steps))
    med = {name: statistics.median(v) for name, v in times.items()}
    prunable = sum(p.numel() for p in SoftThresholdModel(plain).weights())
    print(json.dumps({
        "benchmark": "ltp_step_over_plain_step",
        "model": args.model, "batch_size": args.batch_size, "threads": args.threads,
        "prunable_weights": prunable, "rounds": args.rounds, "steps_per_round": args.steps,
        "median_step_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "ratio_ltp_approx_over_plain": round(med["ltp_approx"] / med["plain"], 3),
        "ratio_ltp_exact_over_plain": round(med["ltp_exact"] / med["plain"], 3),
        "ratio_eval_forward": round(med["forward_ltp_eval"] / med["forward_plain_eval"], 3),
        "per_round_ratio_approx": [round(a / b, 3) for a, b in zip(times["ltp_approx"], times["plain"])],
        "torch": torch.__version__, "machine": platform.machine(),
    }, indent=1))


if __name__ == "__main__":
    main()
