"""Core overheads, measured side by side in one process; prints JSON.

(a) a masked training step (LeNet-5, batch 128, SGD with momentum, 90 % sparsity) through
    ``prunelab.train`` over a plain PyTorch step on the same batches; also torch.nn.utils.prune's
    reparametrised model in the same plain loop, for reference, and a second plain loop (the A/A
    noise floor). The variants run in rotating order, after one warm-up call each. Target: <= 1.05.
(b) global magnitude pruning of 25 M weights over ``torch.nn.utils.prune.global_unstructured``
    with ``L1Unstructured`` on the same weights. Target: <= 0.10.

Usage: python benchmarks/bench_core.py [--reps N] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as nn_prune

import prunelab
from prunelab import models
from prunelab.training.loop import TrainConfig, train


def _plain_steps(model, optimizer, batches):
    """The plain PyTorch loop over in-memory tensors: index a batch, step."""
    for x, y, idx in batches:
        xb, yb = x[idx], y[idx]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()


def bench_training_step(reps: int, steps: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(128 * steps, 1, 28, 28)
    y = torch.randint(0, 10, (128 * steps,))
    base = models.create("lenet5", (1, 28, 28), 10)
    masked_model = copy.deepcopy(base)
    masks = prunelab.prune(masked_model, "magnitude", sparsity=0.9)
    hooked = copy.deepcopy(base)
    masks.to_nn_prune(hooked)
    plain = copy.deepcopy(base)
    cfg = TrainConfig(epochs=1, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9)
    # the same batch order for both: train() shuffles with config.seed; replay it for the plain loop
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))
    batches = [(x, y, order[i:i + 128]) for i in range(0, len(y), 128)]
    plain2 = copy.deepcopy(base)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    opt_plain2 = torch.optim.SGD(plain2.parameters(), lr=0.01, momentum=0.9)
    opt_hooked = torch.optim.SGD(hooked.parameters(), lr=0.01, momentum=0.9)
    opt_masked = torch.optim.SGD(masked_model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_masked, lambda s: 1.0)
    variants = {
        "plain": lambda: _plain_steps(plain, opt_plain, batches),
        "prunelab_masked": lambda: train(masked_model, (x, y), cfg, masks=masks, optimizer=opt_masked,
                                         scheduler=sched, progress=False),
        "nn_utils_prune": lambda: _plain_steps(hooked, opt_hooked, batches),
        # a second plain loop: the A/A noise floor of this measurement
        "plain_again": lambda: _plain_steps(plain2, opt_plain2, batches),
    }
    times = {k: [] for k in variants}
    for fn in variants.values():  # warm-up: allocator, kernels, optimizer state
        fn()
    names = list(variants)
    for rep in range(reps):
        # rotate the order every repetition: whichever runs first after another variant pays for
        # cold caches, and a fixed order biased the ratio by up to 10 %
        for k in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) / steps for k, v in times.items()}
    assert prunelab.Masks.from_nonzero(masked_model).pruned() >= masks.pruned()
    return {
        "model": "lenet5", "batch": 128, "optimizer": "SGD momentum 0.9", "sparsity": 0.9,
        "steps_per_rep": steps, "reps": reps,
        "step_seconds_median": med,
        "ratio_masked_over_plain": med["prunelab_masked"] / med["plain"],
        "ratio_nn_utils_prune_over_plain": med["nn_utils_prune"] / med["plain"],
        "ratio_plain_again_over_plain": med["plain_again"] / med["plain"],
        "target_ratio": 1.05,
    }


def bench_global_magnitude(reps: int, n_weights: int) -> dict:
    torch.manual_seed(0)
    # six 2048x2048 layers: 25,165,824 weights
    layers = [nn.Linear(2048, 2048, bias=False) for _ in range(max(1, round(n_weights / 2048**2)))]
    total = sum(l.weight.numel() for l in layers)
    model = nn.Sequential(*layers)
    times = {"prunelab": [], "torch_global_unstructured": []}
    sparsity = 0.9
    for _ in range(reps):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        masks = prunelab.prune(m, "magnitude", sparsity=sparsity)
        times["prunelab"].append(time.perf_counter() - t0)
        ref = copy.deepcopy(model)
        t0 = time.perf_counter()
        nn_prune.global_unstructured([(l, "weight") for l in ref], pruning_method=nn_prune.L1Unstructured, amount=sparsity)
        times["torch_global_unstructured"].append(time.perf_counter() - t0)
        same = all(torch.equal(masks[f"{i}.weight"], l.weight_mask.bool()) for i, l in enumerate(ref))
        del m, ref
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "weights": total, "sparsity": sparsity, "reps": reps, "seconds_median": med,
        "ratio_prunelab_over_torch": med["prunelab"] / med["torch_global_unstructured"],
        "masks_identical": same, "target_ratio": 0.10,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = {
        "threads": torch.get_num_threads(),
        "training_step": bench_training_step(args.reps, 4 if args.quick else 50),
        "global_magnitude": bench_global_magnitude(3 if args.quick else 5, 2_000_000 if args.quick else 25_000_000),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
