"""Speed and memory of prunelab's GRDA against SGD and a per-parameter loop, on LeNet-5.

Prints one JSON document. Everything is measured side by side in one process, interleaved
(A B A B …, the order rotating every round) after a warm-up, and reported as medians and as the
median of per-round ratios (each pair measured back to back), so load from other processes hits
both sides alike.

(a) one training step (zero_grad, forward, cross-entropy, backward, step) on a random batch of
    128 Fashion-MNIST-shaped inputs: GRDA over ``torch.optim.SGD`` (no momentum). Target <= 1.05.
(b) ``GRDA.step()`` alone (fixed gradients) over a per-parameter Python loop of the same update
    written the way the official ``grda_pytorch.py`` is (a tensor step counter, ℓ recomputed with
    ``torch.pow`` each step, ``sign(a) * clamp(|a| - ℓ, 0)``). Target <= 0.33. For honesty also
    against a tuned per-parameter loop (``a.add_``, one ``softshrink`` into the weight).
(c) optimizer state bytes after one step, against SGD with momentum 0.9.

Usage: python benchmarks/bench_grda.py [--reps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from prunelab.methods.grda.optim import GRDA, grda_param_groups

C, MU, LR = 0.005, 0.55, 0.05


def lenet5() -> nn.Module:
    from prunelab import models

    return models.create("lenet5", (1, 28, 28), 10)


class LoopGRDA(torch.optim.Optimizer):
    """The update of prunelab.methods.grda.optim.GRDA one parameter at a time, shaped like the official code."""

    def __init__(self, params, lr, c, mu):
        super().__init__(params, dict(lr=lr, c=c, mu=mu))
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["n"] = torch.zeros(1)
                self.state[p]["a"] = p.detach().clone()
                self.state[p]["ell"] = torch.zeros(1)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                st["n"].add_(1)
                st["a"].add_(p.grad, alpha=-lr)
                lr_t = torch.tensor(lr)
                st["ell"].add_(c * torch.pow(lr_t, mu + 0.5) * (torch.pow(st["n"], mu) - torch.pow(st["n"] - 1, mu)))
                p.copy_(torch.sign(st["a"]) * torch.clamp(torch.abs(st["a"]) - st["ell"].to(p.device), min=0))


class TunedLoopGRDA(LoopGRDA):
    """The same update per parameter with the fewest tensor passes (add_, one softshrink)."""

    def __init__(self, params, lr, c, mu):
        super().__init__(params, lr, c, mu)
        for st in self.state.values():
            st["n"], st["ell"] = 0, 0.0

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                st["n"] += 1
                n = st["n"]
                st["a"].add_(p.grad, alpha=-lr)
                st["ell"] += c * lr ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
                torch.ops.aten.softshrink.out(st["a"], st["ell"], out=p)


def interleaved(fns: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, round-robin, the order rotating every round."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(times: dict[str, list[float]]) -> dict:
    return {name: {"median_us": statistics.median(t) * 1e6, "iqr_us": (statistics.quantiles(t, n=4)[2]
                                                                      - statistics.quantiles(t, n=4)[0]) * 1e6}
            for name, t in times.items()}


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of t_num / t_den measured back to back (robust to drifting load)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values()
               if torch.is_tensor(v))


def bench_train_step(reps: int, warmup: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    runs = {}
    for name in ("sgd", "grda_all", "grda_groups", "loop_grda"):
        torch.manual_seed(0)
        model = lenet5()
        if name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=LR)
        elif name == "grda_all":
            opt = GRDA(model.parameters(), lr=LR, c=C, mu=MU)
        elif name == "grda_groups":
            opt = GRDA(grda_param_groups(model, LR, C, MU), lr=LR, c=C, mu=MU)
        else:
            opt = LoopGRDA(model.parameters(), lr=LR, c=C, mu=MU)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        runs[name] = step
    times = interleaved(runs, reps, warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "timings": summary(times),
        "ratio_grda_all_over_sgd": med["grda_all"] / med["sgd"],
        "ratio_grda_groups_over_sgd": med["grda_groups"] / med["sgd"],
        "ratio_loop_over_sgd": med["loop_grda"] / med["sgd"],
        "paired_ratio_grda_all_over_sgd": paired_ratio(times, "grda_all", "sgd"),
        "paired_ratio_grda_groups_over_sgd": paired_ratio(times, "grda_groups", "sgd"),
        "paired_ratio_loop_over_sgd": paired_ratio(times, "loop_grda", "sgd"),
        "target": "grda / sgd <= 1.05",
    }


def bench_step_alone(reps: int, warmup: int) -> dict:
    runs, opts = {}, {}
    for name, cls in (("grda", GRDA), ("loop_official_style", LoopGRDA), ("loop_tuned", TunedLoopGRDA)):
        torch.manual_seed(0)
        model = lenet5()
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        opts[name] = cls(model.parameters(), lr=LR, c=C, mu=MU)
        runs[name] = opts[name].step
    times = interleaved(runs, reps, warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "timings": summary(times),
        "ratio_grda_over_loop_official_style": med["grda"] / med["loop_official_style"],
        "ratio_grda_over_loop_tuned": med["grda"] / med["loop_tuned"],
        "paired_ratio_grda_over_loop_official_style": paired_ratio(times, "grda", "loop_official_style"),
        "paired_ratio_grda_over_loop_tuned": paired_ratio(times, "grda", "loop_tuned"),
        "target": "grda / per-parameter loop <= 0.33",
    }


def bench_state() -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    for name in ("sgd_momentum", "grda_all", "grda_groups", "sgd"):
        torch.manual_seed(0)
        model = lenet5()
        if name == "sgd_momentum":
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        elif name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=LR)
        elif name == "grda_all":
            opt = GRDA(model.parameters(), lr=LR, c=C, mu=MU)
        else:
            opt = GRDA(grda_param_groups(model, LR, C, MU), lr=LR, c=C, mu=MU)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        out[name] = state_bytes(opt)
    params = sum(p.numel() * p.element_size() for p in lenet5().parameters())
    return {"bytes": out, "param_bytes": params,
            "ratio_grda_all_over_sgd_momentum": out["grda_all"] / out["sgd_momentum"],
            "ratio_grda_groups_over_sgd_momentum": out["grda_groups"] / out["sgd_momentum"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "setup": {"model": "lenet5 (1x28x28, 10 classes, 431,080 parameters)", "batch": 128,
                  "lr": LR, "c": C, "mu": MU, "threads": args.threads, "reps": args.reps,
                  "warmup": args.warmup, "torch": torch.__version__,
                  "machine": platform.processor() or platform.machine(),
                  "grda_all": "every parameter thresholded (official behaviour)",
                  "grda_groups": "grda_param_groups: biases plain SGD (prunelab default)"},
        "train_step": bench_train_step(args.reps, args.warmup),
        "step_alone": bench_step_alone(args.reps * 5, args.warmup),
        "state": bench_state(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
