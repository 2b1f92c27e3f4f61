"""The ``prunelab`` command line.

Core commands live here (``train``, ``prune``, ``eval``, ``info``, ``demo``); other areas add
theirs from ``cli_<area>.py`` modules (``register(subparsers)``). Every handler raises
:class:`PrunelabError` for bad input; :func:`main` prints that one line and exits with status 2.

Launched by ``torchrun`` with several processes, :func:`main` joins the process group
(:func:`prunelab.training.distributed.init`), every rank runs the command (training is data-parallel), only
rank 0 prints to stdout and writes files, and a rank that fails makes every rank exit non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

from prunelab.training import distributed
from prunelab.errors import CheckpointError, ConfigError, PrunelabError

EXTENSIONS = ("bench", "iterate", "export", "grda", "ltp", "studies")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2) instead of usage + message."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def _hparam(text: str):
    if "=" not in text:
        raise ConfigError(f"--hparam expects NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "fashion-mnist") -> None:
    """``--dataset``, ``--data-dir``, ``--val-size`` and ``--normalize``."""
    p.add_argument("--dataset", default=dataset_default, help="data set name (see `prunelab info --datasets`)")
    p.add_argument("--data-dir", default=None, help="directory holding the data files (else $PRUNELAB_DATA, cache, system)")
    p.add_argument("--val-size", type=float, default=None, help="validation samples taken from the training set: a count, or a fraction < 1 (default: 5000 for image data sets, 0.1 for digits/synthetic)")
    p.add_argument("--normalize", default="standard", choices=("standard", "unit", "none"))


def load_data(args, dataset: str | None = None):
    """Load the data set the arguments name."""
    from prunelab import data

    name = dataset or args.dataset
    val = args.val_size
    if val is not None:
        val = int(val) if val >= 1 else float(val)
    return data.load(name, data_dir=args.data_dir, val_size=val, seed=getattr(args, "seed", 0), normalize=args.normalize)


def add_train_args(p: argparse.ArgumentParser, prefix: str = "", epochs: int = 10, optimizer: str = "adam", lr: float = 1e-3) -> None:
    """Training recipe options (``--epochs``, ``--optimizer``, ...), optionally prefixed."""
    p.add_argument(f"--{prefix}epochs", type=int, default=epochs)
    p.add_argument(f"--{prefix}batch-size", type=int, default=128)
    p.add_argument(f"--{prefix}optimizer", default=optimizer, choices=("sgd", "adam", "adamw"))
    p.add_argument(f"--{prefix}lr", type=float, default=lr)
    p.add_argument(f"--{prefix}momentum", type=float, default=0.9)
    p.add_argument(f"--{prefix}weight-decay", type=float, default=0.0)
    p.add_argument(f"--{prefix}schedule", default="constant", choices=("constant", "cosine", "step", "linear", "inverse"))


def train_config(args, prefix: str = ""):
    """The :class:`TrainConfig` the options describe."""
    from prunelab.training.loop import TrainConfig

    g = lambda k: getattr(args, f"{prefix}{k}".replace("-", "_"))  # noqa: E731
    return TrainConfig(
        epochs=g("epochs"), batch_size=g("batch_size"), optimizer=g("optimizer"), lr=g("lr"),
        momentum=g("momentum") if g("optimizer") == "sgd" else 0.9, weight_decay=g("weight_decay"),
        schedule=g("schedule"), seed=getattr(args, "seed", 0),
    )


def _print_eval(label: str, metrics: dict) -> None:
    print(f"{label}: top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  loss {metrics['loss']:.4f}  (n={metrics['n']})")


def cmd_train(args) -> int:
    import torch

    from prunelab import models
    from prunelab.core.checkpoints import save_checkpoint
    from prunelab.training.loop import evaluate, train

    torch.manual_seed(args.seed)
    data = load_data(args)
    model = models.create(args.model, data.in_shape, data.num_classes, **dict(args.model_arg or []))
    model.to(distributed.device())
    config = train_config(args)
    t0 = time.perf_counter()
    state = train(model, data, config, progress=None if not args.quiet else False)
    seconds = time.perf_counter() - t0
    test = evaluate(model, data.test)
    val = evaluate(model, data.val) if len(data.val) else None
    if val:
        _print_eval("val ", val)
    _print_eval("test", test)
    if distributed.is_main():
        out = save_checkpoint(args.out, model, metrics={"test": test, "val": val, "train_seconds": seconds},
                              extra={"dataset": args.dataset, "normalize": args.normalize, "train": config.to_dict(),
                                     "history": state.history, "world_size": distributed.world_size()})
        print(f"saved {out} ({seconds:.1f}s of training)")
    return 0


def _checkpoint_data(args, meta):
    dataset = args.dataset or meta.get("extra", {}).get("dataset")
    if not dataset:
        raise ConfigError("the checkpoint does not say which data set it was trained on; pass --dataset")
    if args.normalize == "standard" and meta.get("extra", {}).get("normalize"):
        args.normalize = meta["extra"]["normalize"]
    return load_data(args, dataset)


def cmd_prune(args) -> int:
    import torch

    from prunelab import methods
    from prunelab.api import prune
    from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
    from prunelab.core.metrics import summary
    from prunelab.training.loop import evaluate, train

    if not 0 <= args.sparsity < 1:
        raise ConfigError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    cls = methods.get(args.method)
    ckpt = load_checkpoint(args.checkpoint)
    hparams = dict(args.hparam or [])
    needs_data = args.retrain_epochs > 0 or args.method in ("feta", "nettrim", "lobs") or args.eval
    data = _checkpoint_data(args, ckpt.meta) if needs_data else None
    calib = None
    if data is not None and args.calib_samples:
        g = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(data.train), generator=g)[: args.calib_samples]
        from prunelab.data import Split

        calib = Split(data.train.x[idx], data.train.y[idx])
    if cls.family != "oneshot":
        raise ConfigError(f"method {args.method!r} trains while pruning ({cls.family}); use `prunelab bench` or its own command")
    ckpt.model.to(distributed.device())
    start_masks = None if ckpt.masks is None else ckpt.masks.to(distributed.device())
    t0 = time.perf_counter()
    masks = prune(ckpt.model, args.method, args.sparsity, masks=start_masks, calib=calib, **hparams)
    if distributed.is_active():
        # Computed on every rank, but rank 0's result is the one kept (weights too: some methods
        # rewrite them), so a method that is not bit-deterministic across processes is still safe.
        masks = distributed.broadcast_masks(masks)
        distributed.broadcast_module(ckpt.model)
        masks.apply(ckpt.model)
    prune_seconds = time.perf_counter() - t0
    print(f"pruned with {args.method} to sparsity {masks.sparsity():.4f} in {prune_seconds:.2f}s")
    metrics = {"prune_seconds": prune_seconds}
    if data is not None:
        metrics["pruned_test"] = evaluate(ckpt.model, data.test)
        _print_eval("after pruning  test", metrics["pruned_test"])
    if args.retrain_epochs > 0:
        config = train_config(args, "retrain_")
        train(ckpt.model, data, config, masks=masks, progress=None if not args.quiet else False)
        metrics["retrained_test"] = evaluate(ckpt.model, data.test)
        _print_eval("after retraining test", metrics["retrained_test"])
    s = summary(ckpt.model, masks)
    metrics.update({k: s[k] for k in ("sparsity", "compression_ratio", "theoretical_speedup") if k in s})
    extra = dict(ckpt.meta.get("extra", {}))
    extra["pruning"] = {"method": args.method, "hparams": hparams, "sparsity": args.sparsity}
    if distributed.is_main():
        out = save_checkpoint(args.out, ckpt.model, masks, metrics=metrics, extra=extra)
        print(f"saved {out}")
    return 0


def cmd_eval(args) -> int:
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.training.loop import evaluate

    ckpt = load_checkpoint(args.checkpoint)
    data = _checkpoint_data(args, ckpt.meta)
    try:
        split = getattr(data, args.split)
    except AttributeError:
        raise ConfigError(f"unknown split {args.split!r}") from None
    if tuple(split.x.shape[1:]) != tuple(ckpt.meta["model"]["in_shape"]):
        raise ConfigError(
            f"the data's samples have shape {tuple(split.x.shape[1:])} but the model takes {tuple(ckpt.meta['model']['in_shape'])}"
        )
    _print_eval(args.split, evaluate(ckpt.model, split))
    return 0


def cmd_info(args) -> int:
    from prunelab import data, methods, models

    if args.checkpoint is None:
        print("models:   " + ", ".join(models.list()))
        print("methods:  " + ", ".join(f"{m} ({methods.get(m).family})" for m in methods.list()))
        print("datasets: " + ", ".join(data.list()))
        print("(prunelab info METHOD lists a method's hyperparameters)")
        return 0
    if not Path(args.checkpoint).exists():
        if args.checkpoint in methods.list():
            print(describe_method(args.checkpoint))
            return 0
        raise CheckpointError(f"{args.checkpoint}: no such checkpoint file, nor a method name "
                              f"(methods: {', '.join(methods.list())})")
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.core.metrics import format_summary, summary

    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt.meta.get("model") or {}
    print(f"model: {cfg.get('name')} {cfg.get('kwargs') or ''} input {cfg.get('in_shape')} classes {cfg.get('num_classes')}")
    extra = ckpt.meta.get("extra", {})
    if extra.get("dataset"):
        print(f"dataset: {extra['dataset']}")
    if extra.get("pruning"):
        print(f"pruning: {extra['pruning']}")
    print(format_summary(summary(ckpt.model, ckpt.masks)))
    for key, value in ckpt.meta.get("metrics", {}).items():
        if isinstance(value, dict) and "top1" in value:
            print(f"{key}: top-1 {value['top1']:.2%}")
    return 0


def describe_method(name: str, width: int = 100) -> str:
    """A method's family, summary and hyperparameters (default and description), for ``info``."""
    import inspect
    import textwrap

    from prunelab import methods

    cls = methods.get(name)
    summary = " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())
    lines = textwrap.wrap(f"{name} ({cls.family}): {summary}", width)
    lines += ["", "hyperparameters (name = default):"]
    for field, entry in methods.hparam_docs(name).items():
        lines.append(f"  {field} = {entry['default']!r}")
        lines += textwrap.wrap(entry["doc"], width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines += [""] + textwrap.wrap(f"set them in a suite file ([[methods]] name = \"{name}\", hparams = {{...}}) "
                                  f"or with prunelab.methods.create(\"{name}\", ...)", width)
    return "\n".join(lines)


def cmd_demo(args) -> int:
    """Train LeNet-300-100 on Fashion-MNIST, prune globally at 5 sparsities, retrain briefly."""
    import copy

    import torch

    from prunelab import models
    from prunelab.api import prune
    from prunelab.core.metrics import summary
    from prunelab.training.loop import TrainConfig, evaluate, train

    torch.manual_seed(args.seed)
    data = load_data(args)
    print(f"data: {data.name} from {data.source} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test)")
    model = models.create("lenet-300-100", data.in_shape, data.num_classes)
    dense_cfg = TrainConfig(epochs=args.epochs, batch_size=128, optimizer="adam", lr=1e-3, seed=args.seed)
    t0 = time.perf_counter()
    train(model, data, dense_cfg, label="dense")
    dense_time = time.perf_counter() - t0
    dense = evaluate(model, data.test)["top1"]
    print(f"dense: test top-1 {dense:.2%} ({dense_time:.1f}s)")
    rows = []
    for sparsity in (0.5, 0.75, 0.9, 0.95, 0.98):
        pruned = copy.deepcopy(model)
        t0 = time.perf_counter()
        masks = prune(pruned, "magnitude", sparsity)
        t_prune = time.perf_counter() - t0
        before = evaluate(pruned, data.test)["top1"]
        t0 = time.perf_counter()
        train(pruned, data, dense_cfg.replace(epochs=args.retrain_epochs, lr=5e-4), masks=masks, label=f"retrain {sparsity:.0%}")
        t_retrain = time.perf_counter() - t0
        after = evaluate(pruned, data.test)["top1"]
        s = summary(pruned, masks)
        rows.append((masks.sparsity(), before, after, s["compression_ratio"], t_prune, t_retrain))
    print(f"\n{'sparsity':>9} {'acc pruned':>11} {'acc retrained':>14} {'compression':>12} {'prune s':>8} {'retrain s':>10}")
    for r in rows:
        print(f"{r[0]:>9.2%} {r[1]:>11.2%} {r[2]:>14.2%} {r[3]:>11.1f}x {r[4]:>8.3f} {r[5]:>10.1f}")
    print(f"dense test top-1 {dense:.2%}; global magnitude pruning, {args.retrain_epochs} epochs of retraining (Adam 5e-4), test split")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunelab", description="Prune deep neural networks and compare pruning methods.")
    from prunelab import __version__

    parser.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and save a checkpoint")
    p.add_argument("--model", required=True, help="model name (see `prunelab info`)")
    p.add_argument("--model-arg", type=_hparam, action="append", metavar="NAME=VALUE", help="model keyword argument (JSON value)")
    add_data_args(p)
    add_train_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", "-o", required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prune", help="prune a checkpoint with a one-shot method (optionally retrain)")
    p.add_argument("checkpoint")
    p.add_argument("--method", default="magnitude", help="one-shot method (see `prunelab info`)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of prunable weights to prune, in [0, 1)")
    p.add_argument("--hparam", type=_hparam, action="append", metavar="NAME=VALUE", help="method hyperparameter, e.g. scope=layer")
    add_data_args(p, dataset_default=None)
    add_train_args(p, prefix="retrain-", epochs=0, lr=5e-4)
    p.add_argument("--calib-samples", type=int, default=5000, help="calibration samples for data-aware methods")
    p.add_argument("--eval", action="store_true", help="evaluate on the test split after pruning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", "-o", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", help="evaluate a checkpoint")
    p.add_argument("checkpoint")
    add_data_args(p, dataset_default=None)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="summarise a checkpoint, or list models, methods and data sets")
    p.add_argument("checkpoint", nargs="?")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="train LeNet-300-100, prune at 50-98%% with global magnitude, retrain, print a table")
    add_data_args(p)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--retrain-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    for name in EXTENSIONS:
        importlib.import_module(f"prunelab.cli.{name}").register(sub)
    return parser


def _failed(exc: BaseException, message: str, status: int) -> int:
    """Print ``message`` (naming the rank when distributed), tell the other ranks, return ``status``."""
    earlier = distributed.report_failure(exc)
    if earlier is not None:  # another rank failed first: this error is most likely its consequence
        print(f"prunelab: rank {distributed.rank()} stopping: {earlier}", file=sys.stderr)
        return 1
    if distributed.is_active():
        message = message.replace("prunelab: ", f"prunelab (rank {distributed.rank()}): ", 1)
    print(message, file=sys.stderr)
    return status


def main(argv=None) -> int:
    """Entry point of the ``prunelab`` console script."""
    try:
        # A no-op unless launched by torchrun with WORLD_SIZE > 1.
        distributed.init()
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        if distributed.is_main():
            status = int(args.func(args) or 0)
        else:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                status = int(args.func(args) or 0)
        distributed.shutdown()
        return status
    except PrunelabError as exc:
        return _failed(exc, f"prunelab: error: {exc}", 2)
    except KeyboardInterrupt as exc:
        return _failed(exc, "prunelab: interrupted", 130)
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
