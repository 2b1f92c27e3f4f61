"""CLI of the gRDA area: ``prunelab grda train|search`` and ``prunelab study valley``.

- ``grda train`` trains a model from its seeded initialisation with gRDA and saves a checkpoint
  whose masks are the non-zero pattern; ``--c 0`` is plain SGD without momentum on the same
  schedule (the baseline of Chao et al. 2020), so two calls with one ``--seed`` give the pair the valley
  check compares.
- ``grda search`` bisects c for a target sparsity at a fixed μ in short runs.
- ``study valley A B`` evaluates loss and accuracy on the straight line between two checkpoints
  and writes a plot (and optionally JSON).

Under ``torchrun`` every rank runs the command (gRDA training is data-parallel) and rank 0 alone
writes the checkpoint, the plot and the JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from prunelab.cli import checks
from prunelab.cli.common import add_data_args, load_data, nested_subparsers
from prunelab.cli.options import (
    add_dataclass_options, add_device_option, add_train_options, command_device, train_config,
)
from prunelab.cli.studies import study_subparsers
from prunelab.errors import ConfigError
from prunelab.training import distributed
from prunelab.utils.io import atomic_write_json

# The training fields gRDA honours: it replaces the optimizer (no momentum, weight decay, betas),
# and the LR schedule is --grda-schedule's unless that is "config".
GRDA_TRAIN_FIELDS = ("epochs", "batch_size", "lr", "schedule", "step_epochs", "gamma", "clip_grad_norm",
                     "eval_batch_size", "amp")


def _add_grda_args(p: argparse.ArgumentParser, fields: tuple[str, ...] = ("mu", "threshold_all")) -> None:
    """gRDA's own options, generated from :class:`~prunelab.methods.grda.method.GRDAHparams`."""
    from prunelab.methods.grda.method import GRDAHparams

    add_dataclass_options(p, GRDAHparams, only=fields, title="gRDA (Chao et al. 2020)")
    p.add_argument("--model", default="lenet5", help="model name (see `prunelab info`)")
    p.add_argument("--seed", type=checks.seed, default=0, help="seeds the initialisation and the batch order")
    add_device_option(p)


def _factory(args, data, device=None):
    import torch

    from prunelab import models

    def make():
        torch.manual_seed(args.seed)   # as `prunelab train`: same seed, same initialisation
        # created on the CPU, then moved: one seed gives one initialisation on every device
        return models.create(args.model, data.in_shape, data.num_classes).to(device or "cpu")

    return make


def cmd_grda_train(args) -> int:
    from prunelab.core.checkpoints import save_checkpoint
    from prunelab.core.masks import Masks
    from prunelab.methods.grda.method import GRDAHparams, train_grda
    from prunelab.training.loop import evaluate

    checks.output_file(args.out)
    checks.dataclass_options(GRDAHparams, args, ("c", "mu"))
    config = train_config(args, optimizer="sgd", momentum=0.0)
    device = command_device(args)
    data = load_data(args)
    model = _factory(args, data, device)()
    t0 = time.perf_counter()
    records, _ = train_grda(model, data, config, args.c, args.mu, schedule=args.grda_schedule,
                            threshold_all=args.threshold_all, log=None if args.quiet else print)
    seconds = time.perf_counter() - t0
    test = evaluate(model, data.test, device=device)
    masks = Masks.from_nonzero(model)
    final = records[-1] if records else {}
    print(f"test top-1 {test['top1']:.2%}; sparsity {masks.sparsity():.4f} of prunable weights"
          f" ({final.get('sparsity_all', 0.0):.4f} of all parameters); {seconds:.1f}s")
    extra = {"dataset": args.dataset, "normalize": args.normalize, "val_size": args.val_size,
             "train": config.to_dict(),
             "grda": {"c": args.c, "mu": args.mu, "schedule": args.grda_schedule, "threshold_all": args.threshold_all},
             "history": records}
    if distributed.is_main():
        out = save_checkpoint(args.out, model, masks, metrics={"test": test, "train_seconds": seconds}, extra=extra)
        print(f"saved {out}")
    return 0


def cmd_grda_search(args) -> int:
    from prunelab.methods.grda.method import GRDAHparams, search_c

    checks.dataclass_options(GRDAHparams, args, ("mu",))
    if not args.c_low < args.c_high:
        raise ConfigError(f"--c-low {args.c_low:g} must be below --c-high {args.c_high:g}")
    config = train_config(args, momentum=0.0)
    device = command_device(args)
    data = load_data(args)
    result = search_c(_factory(args, data, device), data, args.mu, args.target, config, epochs=config.epochs,
                      c_low=args.c_low, c_high=args.c_high, iterations=args.iterations,
                      tolerance=args.tolerance, threshold_all=args.threshold_all,
                      log=None if args.quiet else print)
    print(json.dumps({"mu": args.mu, "target": args.target, "epochs": args.epochs, **result}))
    return 0


def cmd_valley(args) -> int:
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.data import Split
    from prunelab.reproductions.chao.valley import alphas_grid, barrier, plot_valley, valley

    device = command_device(args)
    checks.input_file(args.a)
    checks.input_file(args.b)
    checks.output_file(args.plot, "--plot", inputs=[args.a, args.b])
    if args.json:
        checks.output_file(args.json, "--json", inputs=[args.a, args.b], outputs=[args.plot])
    a, b = load_checkpoint(args.a), load_checkpoint(args.b)
    if a.meta.get("model") != b.meta.get("model"):
        raise ConfigError(f"{args.a} and {args.b} hold different models "
                          f"({a.meta.get('model')} vs {b.meta.get('model')}); the line needs one architecture")
    if args.dataset is None:   # the data set (and its preparation) the checkpoint was trained on
        extra = a.meta.get("extra", {})
        args.dataset = extra.get("dataset")
        if not args.dataset:
            raise ConfigError(f"{args.a} does not say which data set it was trained on; pass --dataset")
        args.normalize = extra.get("normalize", args.normalize)
        args.val_size = extra.get("val_size", args.val_size)
    names = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in names if s not in ("train", "val", "test")]
    if unknown or not names:
        raise ConfigError(f"--splits takes a comma list of train, val, test; got {args.splits!r}")
    data = load_data(args)
    checks.check_fits(a.meta, data, args.a)
    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {args.max_samples}")

    def cap(split):
        if args.max_samples is None:
            return split
        return Split(split.x[: args.max_samples], split.y[: args.max_samples])

    splits = {name: cap(getattr(data, name)) for name in names}
    results = valley(a.model.to(device), b.model.to(device), splits, alphas_grid(args.points, args.extend),
                     bn_data=cap(data.train) if args.bn_reset else None)
    print(f"{'alpha':>7} " + " ".join(f"{n + ' loss':>11} {n + ' top1':>10}" for n in names))
    for r in results:
        print(f"{r['alpha']:>7.3f} " + " ".join(f"{r[n + '_loss']:>11.4f} {r[n + '_top1']:>10.2%}" for n in names))
    barriers = {}
    if any(r["alpha"] == 0.0 for r in results) and any(r["alpha"] == 1.0 for r in results):
        barriers = {n: barrier(results, f"{n}_loss") for n in names}
        print("loss barrier (max rise above the chord, α in [0, 1]): "
              + ", ".join(f"{n} {v:.4f}" for n, v in barriers.items()))
    if not distributed.is_main():
        return 0   # rank 0 writes the plot and the JSON
    out = plot_valley(results, args.plot, title=args.title or f"{args.a} → {args.b}",
                      labels=(args.label_a, args.label_b))
    print(f"saved {out}")
    if args.json:
        path = atomic_write_json(args.json, {"a": args.a, "b": args.b, "results": results, "barrier": barriers},
                                 finite=True, mkdir=True)
        print(f"saved {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``grda train``, ``grda search`` and ``study valley`` to the ``prunelab`` parser."""
    from prunelab.methods.grda.method import GRDAHparams

    grda = nested_subparsers(sub, "grda", "train with the gRDA optimizer (directional pruning) or search its c")

    p = grda.add_parser("train", help="train from the seeded init with gRDA, save a checkpoint (--c 0: plain SGD)")
    add_data_args(p)
    _add_grda_args(p, ("c", "mu", "threshold_all"))
    # prefixed: --schedule is the training's LR schedule in every command
    add_dataclass_options(p, GRDAHparams, prefix="grda-", only=("schedule",),
                          choices={"schedule": ("cifar", "constant", "config")})
    add_train_options(p, title="training (gRDA replaces the optimizer: no momentum, weight decay or betas)",
                      only=GRDA_TRAIN_FIELDS, epochs=15, lr=0.05)
    p.add_argument("--out", "-o", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=cmd_grda_train)

    p = grda.add_parser("search", help="bisect c for a target sparsity at fixed mu in short runs")
    add_data_args(p)
    _add_grda_args(p)
    p.add_argument("--target", type=checks.sparsity, required=True, help="wanted sparsity of the prunable weights, in [0, 1)")
    add_train_options(p, title="each short run (cifar lr schedule)", only=("epochs", "batch_size", "lr"),
                      epochs=1, lr=0.05)
    p.add_argument("--iterations", type=checks.count(1), default=8, help="short runs at most")
    p.add_argument("--tolerance", type=checks.number(0, low_open=True), default=0.01, help="stop when this close to the target")
    p.add_argument("--c-low", type=checks.number(0, low_open=True), default=1e-5, help="lower end of the bracket of c, > 0")
    p.add_argument("--c-high", type=checks.number(0, low_open=True), default=1.0, help="upper end of the bracket of c")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_grda_search)

    p = study_subparsers(sub).add_parser("valley", help="loss and accuracy on the straight line between two checkpoints")
    p.add_argument("a", help="checkpoint at α = 0 (e.g. SGD)")
    p.add_argument("b", help="checkpoint at α = 1 (e.g. gRDA from the same init)")
    add_data_args(p, dataset_default=None)
    p.add_argument("--points", type=checks.count(2), default=21, help="number of α values (>= 2)")
    p.add_argument("--extend", type=checks.number(0), default=0.0, help="go this far beyond α = 0 and α = 1")
    p.add_argument("--splits", default="train,test", help="comma list of train, val, test")
    p.add_argument("--max-samples", type=checks.count(1), default=None, help="evaluate on the first N samples of each split")
    p.add_argument("--bn-reset", action="store_true",
                   help="re-estimate BatchNorm statistics on the training split at each α (default: interpolate them)")
    p.add_argument("--plot", default="valley.png", help="PNG to write")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--title", default=None)
    p.add_argument("--label-a", default="A")
    p.add_argument("--label-b", default="B")
    add_device_option(p)
    p.set_defaults(func=cmd_valley)
