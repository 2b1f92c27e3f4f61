"""The core commands: ``train``, ``prune``, ``eval``, ``info`` and ``demo``.

``train`` and ``prune`` run data-parallel under ``torchrun``: every rank trains, rank 0 alone
writes the checkpoint.

On token data (a data set whose ``info`` has ``tokens``, e.g. ``text``) evaluations also give
perplexity and bits per byte (:func:`prunelab.core.metrics.lm_scores`), printed and stored in the
checkpoint's metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

from prunelab.cli import checks
from prunelab.cli.common import add_data_args, checkpoint_data, load_data, print_eval
from prunelab.cli.options import (
    add_assignment_option, add_device_option, add_train_options, command_device, train_config,
)
from prunelab.errors import CheckpointError, ConfigError
from prunelab.training import distributed


def register(sub) -> None:
    """Add ``train``, ``prune``, ``eval``, ``info`` and ``demo`` to the ``prunelab`` sub-commands."""
    p = sub.add_parser("train", help="train a model and save a checkpoint")
    p.add_argument("--model", required=True, help="model name (see `prunelab info`)")
    add_assignment_option(p, "--model-arg", "model keyword argument (JSON value)")
    add_data_args(p)
    add_train_options(p, epochs=10, optimizer="adam", lr=1e-3)
    _add_run_args(p, "seeds the initialisation, the validation split and the batch order")
    add_device_option(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prune", help="prune a checkpoint with a one-shot method (optionally retrain)")
    p.add_argument("checkpoint")
    p.add_argument("--method", default="magnitude", help="one-shot method (see `prunelab info`)")
    p.add_argument("--sparsity", type=checks.sparsity,
                   help="fraction of prunable weights to prune, in [0, 1) (required unless --pattern gives it)")
    p.add_argument("--pattern", type=checks.pattern,
                   help="N:M semi-structured sparsity, e.g. 2:4: every pruned layer keeps N of every M consecutive "
                        "input weights (magnitude, lobs, sparsegpt, wanda); --sparsity defaults to 1 - N/M")
    add_assignment_option(p, "--hparam", "method hyperparameter, e.g. scope=layer (see `prunelab info METHOD`)")
    add_data_args(p, dataset_default=None)
    add_train_options(p, prefix="retrain-", title="retraining after pruning (none with --retrain-epochs 0)",
                      epochs=0, optimizer="adam", lr=5e-4)
    p.add_argument("--calib-samples", type=checks.count(1), default=5000,
                   help="calibration samples for the layer-wise methods (feta, nettrim, lobs, sparsegpt, wanda), >= 1")
    p.add_argument("--eval", action="store_true", help="evaluate on the test split after pruning")
    _add_run_args(p, "seeds the calibration sample and the retraining batch order")
    add_device_option(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", help="evaluate a checkpoint")
    p.add_argument("checkpoint")
    add_data_args(p, dataset_default=None)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    add_device_option(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="summarise a checkpoint, or list models, methods and data sets")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint, or a method name (lists its hyperparameters)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="train LeNet-300-100, prune at 50-98%% with global magnitude, retrain, print a table")
    add_data_args(p)
    add_train_options(p, epochs=8, optimizer="adam", lr=1e-3)
    add_train_options(p, prefix="retrain-", title="retraining after each pruning", epochs=2, optimizer="adam", lr=5e-4)
    p.add_argument("--seed", type=checks.seed, default=0, help="seeds the initialisation, the validation split and the batch order")
    add_device_option(p)
    p.set_defaults(func=cmd_demo)


def _add_run_args(p, seed_help: str) -> None:
    """``--seed``, ``--out`` and ``--quiet`` of a command that writes one checkpoint."""
    p.add_argument("--seed", type=checks.seed, default=0, help=seed_help)
    p.add_argument("--out", "-o", required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_train(args) -> int:
    """Train a model from its seeded initialisation and save it."""
    import torch

    from prunelab import models
    from prunelab.core.checkpoints import save_checkpoint
    from prunelab.training.loop import evaluate, train

    checks.output_file(args.out)
    models.get(args.model)   # an unknown name fails before the data loads
    config = train_config(args)
    device = command_device(args)
    torch.manual_seed(args.seed)
    data = load_data(args)
    model = models.create(args.model, data.in_shape, data.num_classes, **dict(args.model_arg or []))
    model.to(device)   # created on the CPU first: one seed gives one initialisation on every device
    t0 = time.perf_counter()
    state = train(model, data, config, progress=None if not args.quiet else False, device=device)
    seconds = time.perf_counter() - t0
    test = lm_eval(evaluate(model, data.test, device=device), data)
    val = lm_eval(evaluate(model, data.val, device=device), data) if len(data.val) else None
    if val:
        print_scores("val ", val)
    print_scores("test", test)
    if distributed.is_main():
        extra = {"dataset": args.dataset, "normalize": args.normalize, "train": config.to_dict(),
                 "history": state.history, "world_size": distributed.world_size(), "device": str(device)}
        if _tokens(data) is not None:
            extra["tokens"] = _tokens(data)
        out = save_checkpoint(args.out, model, metrics={"test": test, "val": val, "train_seconds": seconds},
                              extra=extra)
        print(f"saved {out} ({seconds:.1f}s of training)")
    return 0


def _tokens(data) -> dict | None:
    """What a token data set says of its tokens (``data.info["tokens"]``), None for other data."""
    tokens = (getattr(data, "info", None) or {}).get("tokens")
    return tokens if isinstance(tokens, dict) else None


def lm_eval(metrics: dict, data) -> dict:
    """An evaluation's metrics (``evaluate``'s dict) with ``ppl`` and ``bpb`` (bits per byte) added
    from its loss when ``data`` is token data; unchanged otherwise.

    Example:
        >>> lm_eval({"loss": math.log(2), "top1": 0.5, "top5": 0.9, "n": 4}, text_data)["bpb"]
        1.0
    """
    from prunelab.core.metrics import lm_scores

    tokens = _tokens(data)
    if tokens is None:
        return metrics
    return {**metrics, **lm_scores(metrics.get("loss"), tokens.get("bytes_per_token", 1.0))}


def print_scores(label: str, metrics: dict) -> None:
    """One line per evaluation: for a language model on token data loss, perplexity, bits per
    byte and per-token top-1; otherwise :func:`prunelab.cli.common.print_eval`'s line."""
    if "bpb" not in metrics:
        print_eval(label, metrics)
        return

    def number(key, spec):
        value = metrics.get(key)
        return "–" if value is None else format(value, spec)

    print(f"{label}: loss {number('loss', '.4f')} nats/token  perplexity {number('ppl', '.2f')}  "
          f"bits per byte {number('bpb', '.4f')}  top-1 per token {number('top1', '.2%')}  "
          f"(n={metrics.get('n', '?')} sequences)")


def _calibration_split(args, data):
    """``--calib-samples`` training samples, drawn with ``--seed`` (None when not wanted)."""
    import torch

    from prunelab.data import Split

    if data is None or not args.calib_samples:
        return None
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data.train), generator=g)[: args.calib_samples]
    return Split(data.train.x[idx], data.train.y[idx])


def _prune_sparsity(args, hparams: dict) -> float:
    """``--sparsity``, or the one an N:M ``pattern`` (``--pattern`` or ``--hparam pattern=...``) implies."""
    from prunelab.core.patterns import check_pattern_sparsity, parse_pattern, pattern_sparsity

    if args.sparsity is not None:
        if hparams.get("pattern") is not None:
            check_pattern_sparsity(parse_pattern(hparams["pattern"]), args.sparsity)
        return args.sparsity
    if hparams.get("pattern") is None:
        raise ConfigError("prune: argument --sparsity is required unless --pattern N:M (or --hparam pattern=N:M) "
                          "gives it")
    return pattern_sparsity(parse_pattern(hparams["pattern"]))


def cmd_prune(args) -> int:
    """Prune a checkpoint with a one-shot method, optionally retrain, save it."""
    from prunelab import methods
    from prunelab.api import prune
    from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
    from prunelab.core.metrics import summary
    from prunelab.methods.layerwise.driver import LayerwiseHparams
    from prunelab.training.loop import evaluate, train

    checks.input_file(args.checkpoint)
    checks.output_file(args.out, inputs=[args.checkpoint])
    retrain = train_config(args, "retrain_")
    device = command_device(args)
    cls = methods.get(args.method)
    if cls.family != "oneshot":
        raise ConfigError(f"method {args.method!r} trains while pruning ({cls.family}); use `prunelab bench` or its own command")
    hparams = dict(args.hparam or [])
    if args.pattern is not None:
        hparams["pattern"] = args.pattern
    sparsity = _prune_sparsity(args, hparams)
    cls(**hparams)   # refuses an unknown or bad hyperparameter before anything is loaded
    ckpt = load_checkpoint(args.checkpoint)
    needs_data = args.retrain_epochs > 0 or issubclass(cls.Hparams, LayerwiseHparams) or args.eval
    data = checkpoint_data(args, ckpt.meta) if needs_data else None
    calib = _calibration_split(args, data)
    ckpt.model.to(device)
    start_masks = None if ckpt.masks is None else ckpt.masks.to(device)
    t0 = time.perf_counter()
    masks = prune(ckpt.model, args.method, sparsity, masks=start_masks, calib=calib, device=device, **hparams)
    if distributed.is_active():
        # Computed on every rank, but rank 0's result is the one kept (weights too: some methods
        # rewrite them), so a method that is not bit-deterministic across processes is still safe.
        masks = distributed.broadcast_masks(masks)
        distributed.broadcast_module(ckpt.model)
        masks.apply(ckpt.model)
    prune_seconds = time.perf_counter() - t0
    print(f"pruned with {args.method} to sparsity {masks.sparsity():.4f} in {prune_seconds:.2f}s")
    print(f"coverage: {masks.coverage(ckpt.model).line()}")
    metrics = {"prune_seconds": prune_seconds}
    if data is not None:
        metrics["pruned_test"] = lm_eval(evaluate(ckpt.model, data.test, device=device), data)
        print_scores("after pruning  test", metrics["pruned_test"])
    if args.retrain_epochs > 0:
        train(ckpt.model, data, retrain, masks=masks, progress=None if not args.quiet else False, device=device)
        metrics["retrained_test"] = lm_eval(evaluate(ckpt.model, data.test, device=device), data)
        print_scores("after retraining test", metrics["retrained_test"])
    s = summary(ckpt.model, masks)
    metrics.update({k: s[k] for k in ("sparsity", "compression_ratio", "theoretical_speedup") if k in s})
    extra = dict(ckpt.meta.get("extra", {}))
    extra["pruning"] = {"method": args.method, "hparams": hparams, "sparsity": sparsity}
    if distributed.is_main():
        out = save_checkpoint(args.out, ckpt.model, masks, metrics=metrics, extra=extra)
        print(f"saved {out}")
    return 0


def cmd_eval(args) -> int:
    """Evaluate a checkpoint on a split of the data set it was trained on."""
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.training.loop import evaluate

    checks.input_file(args.checkpoint)
    device = command_device(args)
    ckpt = load_checkpoint(args.checkpoint)
    data = checkpoint_data(args, ckpt.meta)   # refuses a data set that does not fit the model
    try:
        split = getattr(data, args.split)
    except AttributeError:
        raise ConfigError(f"unknown split {args.split!r}") from None
    print_scores(args.split, lm_eval(evaluate(ckpt.model.to(device), split, device=device), data))
    return 0


def cmd_info(args) -> int:
    """List what is registered, describe a method, or summarise a checkpoint."""
    from prunelab import data, methods, models

    if args.checkpoint is None:
        print("models:   " + ", ".join(models.registry.list()))
        print("methods:  " + ", ".join(f"{m} ({methods.get(m).family})" for m in methods.registry.list()))
        print("datasets: " + ", ".join(data.registry.list()))
        print("(prunelab info METHOD lists a method's hyperparameters)")
        return 0
    if not Path(args.checkpoint).exists():
        if args.checkpoint in methods.registry.list():
            print(describe_method(args.checkpoint))
            return 0
        raise CheckpointError(f"{args.checkpoint}: no such checkpoint file, nor a method name "
                              f"(methods: {', '.join(methods.registry.list())})")
    checks.input_file(args.checkpoint)
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.core.metrics import format_summary, summary

    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt.meta.get("model") or {}
    print(f"model: {cfg.get('name')} {cfg.get('kwargs') or ''} input {cfg.get('in_shape')} classes {cfg.get('num_classes')}")
    extra = ckpt.meta.get("extra", {})
    if extra.get("dataset"):
        print(f"dataset: {extra['dataset']}")
    tokens = extra.get("tokens")
    if isinstance(tokens, dict):
        shape = cfg.get("in_shape") or ["?"]
        print(f"language model: context {shape[0]} tokens, vocabulary {cfg.get('num_classes')} "
              f"(unit {tokens.get('unit', 'token')}, bytes per token {tokens.get('bytes_per_token', 1.0):g}), "
              f"data manifest {str(tokens.get('manifest_hash', '?'))[:16]}")
    if extra.get("pruning"):
        print(f"pruning: {extra['pruning']}")
    print(format_summary(summary(ckpt.model, ckpt.masks)))
    for key, value in ckpt.meta.get("metrics", {}).items():
        if isinstance(value, dict) and "bpb" in value:
            print_scores(key, value)
        elif isinstance(value, dict) and "top1" in value:
            print(f"{key}: top-1 {value['top1']:.2%}")
    return 0


def describe_method(name: str, width: int = 100) -> str:
    """A method's family, summary and hyperparameters (default and description), for ``info``.

    Args:
        name: a registered method name.
        width: wrap the text at this many columns.

    Returns:
        The text, several lines.
    """
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
    """Train LeNet-300-100, prune globally at 5 sparsities, retrain each briefly, print a table."""
    import copy

    import torch

    from prunelab import models
    from prunelab.api import prune
    from prunelab.core.metrics import summary
    from prunelab.training.loop import evaluate, train

    dense_cfg, retrain_cfg = train_config(args), train_config(args, "retrain_")
    device = command_device(args)
    torch.manual_seed(args.seed)
    data = load_data(args)
    print(f"data: {data.name} from {data.source} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test)")
    model = models.create("lenet-300-100", data.in_shape, data.num_classes).to(device)
    t0 = time.perf_counter()
    train(model, data, dense_cfg, label="dense", device=device)
    dense_time = time.perf_counter() - t0
    dense = evaluate(model, data.test, device=device)["top1"]
    print(f"dense: test top-1 {dense:.2%} ({dense_time:.1f}s)")
    rows = []
    for sparsity in (0.5, 0.75, 0.9, 0.95, 0.98):
        pruned = copy.deepcopy(model)
        t0 = time.perf_counter()
        masks = prune(pruned, "magnitude", sparsity, device=device)
        t_prune = time.perf_counter() - t0
        before = evaluate(pruned, data.test, device=device)["top1"]
        t0 = time.perf_counter()
        train(pruned, data, retrain_cfg, masks=masks, label=f"retrain {sparsity:.0%}", device=device)
        t_retrain = time.perf_counter() - t0
        after = evaluate(pruned, data.test, device=device)["top1"]
        s = summary(pruned, masks)
        rows.append((masks.sparsity(), before, after, s["compression_ratio"], t_prune, t_retrain))
    print(f"\n{'sparsity':>9} {'acc pruned':>11} {'acc retrained':>14} {'compression':>12} {'prune s':>8} {'retrain s':>10}")
    for r in rows:
        print(f"{r[0]:>9.2%} {r[1]:>11.2%} {r[2]:>14.2%} {r[3]:>11.1f}x {r[4]:>8.3f} {r[5]:>10.1f}")
    print(f"dense test top-1 {dense:.2%}; global magnitude pruning, {retrain_cfg.epochs} epochs of retraining "
          f"({retrain_cfg.optimizer} {retrain_cfg.lr:g}), test split")
    return 0
