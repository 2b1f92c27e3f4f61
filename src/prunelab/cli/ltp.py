"""``prunelab ltp``: Learned Threshold Pruning of a trained checkpoint, from the command line.

Runs :func:`prunelab.methods.ltp.learn_thresholds` on the checkpoint's model, prints the trail (one
hard-masked network per epoch: compression, validation top-1, transition fraction), picks an entry
by target compression or by a validation-accuracy floor, optionally fine-tunes it with its mask
fixed, and saves it as a prunelab checkpoint whose metadata holds the whole trail.
"""

from __future__ import annotations

import json
import time

from prunelab.cli import checks
from prunelab.cli.common import add_data_args, checkpoint_data, print_eval
from prunelab.cli.options import (
    add_dataclass_options, add_device_option, add_train_options, command_device, train_config,
)
from prunelab.errors import ConfigError, MethodError
from prunelab.training import distributed
from prunelab.utils.io import plain_json


#: The :class:`~prunelab.methods.ltp.LTPHparams` fields that shape the threshold training; the
#: command sets the others itself (budget, optimizer and target handling).
THRESHOLD_FIELDS = ("penalty_weight", "temperature", "threshold_lr", "threshold_momentum", "penalty", "gradient",
                    "threshold_init_quantile", "check_every", "stall_fraction")


def _add_threshold_options(p) -> None:
    """LTP's threshold options, generated from :class:`~prunelab.methods.ltp.LTPHparams`."""
    from prunelab.methods.ltp import LTPHparams

    add_dataclass_options(p, LTPHparams, only=THRESHOLD_FIELDS,
                          choices={"penalty": ("l0", "l1", "l2"), "gradient": ("approx", "exact")},
                          title="learned thresholds (Azarian et al. 2020)")


def register(subparsers) -> None:
    """Add the ``ltp`` sub-command."""
    p = subparsers.add_parser(
        "ltp", help="learned threshold pruning of a checkpoint: train thresholds, print the trail, pick, fine-tune")
    p.add_argument("checkpoint", help="a trained (dense) prunelab checkpoint")
    add_data_args(p, dataset_default=None)
    _add_threshold_options(p)
    add_train_options(p, title="training of the network and its thresholds", epochs=8, optimizer="sgd", lr=0.03)
    p.add_argument("--target-compression", type=checks.number(1, what="a compression ratio"), default=None,
                   help="pick the trail entry of smallest compression >= this (e.g. 40), and stop training there")
    p.add_argument("--no-stop", action="store_true",
                   help="with --target-compression, train the thresholds for all epochs anyway (a longer trail)")
    p.add_argument("--exact", action="store_true",
                   help="with --target-compression, bring the picked network to exactly that compression, as the "
                        "benchmark harness does (prune the rest by magnitude, or lower all thresholds by one factor)")
    p.add_argument("--min-accuracy", type=checks.number(0, 1, what="a fraction"), default=None,
                   help="pick the most compressed entry with validation top-1 >= this fraction (e.g. 0.89)")
    add_train_options(p, prefix="finetune-", title="fine-tuning of the picked network, mask fixed (none with --finetune-epochs 0)",
                      epochs=0, optimizer="adam", lr=3e-3)
    p.add_argument("--trail-dir", default=None, help="also save every trail network there as a checkpoint")
    p.add_argument("--seed", type=checks.seed, default=0, help="seeds the validation split and the training runs")
    p.add_argument("--json", action="store_true", help="print the trail and the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", "-o", required=True, help="the picked (and fine-tuned) network, a checkpoint")
    add_device_option(p)
    p.set_defaults(func=cmd_ltp)


def cmd_ltp(args) -> int:
    """Learn thresholds, print the trail, pick an entry, fine-tune it and save it."""
    import torch

    from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
    from prunelab.methods.ltp import LTPHparams, learn_thresholds, restore_at_target
    from prunelab.core.metrics import summary
    from prunelab.training.loop import evaluate, train

    if distributed.is_active():
        raise ConfigError("prunelab ltp runs in one process; under torchrun use `prunelab bench` with an ltp suite")
    if args.exact and args.target_compression is None:
        raise ConfigError("--exact needs --target-compression")
    checks.input_file(args.checkpoint)
    checks.output_file(args.out, inputs=[args.checkpoint])
    if args.trail_dir is not None:
        checks.output_dir(args.trail_dir, "--trail-dir")
    checks.dataclass_options(LTPHparams, args, THRESHOLD_FIELDS)
    config, finetune = train_config(args), train_config(args, "finetune_")
    device = command_device(args)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.masks is not None and ckpt.masks.kept() < ckpt.masks.total():
        raise ConfigError(f"{args.checkpoint} is already pruned ({ckpt.masks.sparsity():.2%} sparse); "
                          "LTP starts from a dense model")
    data = checkpoint_data(args, ckpt.meta)
    if len(data.val) == 0:
        raise ConfigError("LTP picks from its trail on the validation split, which is empty; pass --val-size")
    torch.manual_seed(args.seed)
    model = ckpt.model.to(device)
    log = (lambda line: None) if args.quiet or args.json else print
    stop = args.target_compression if args.target_compression is not None and not args.no_stop else None
    t0 = time.perf_counter()
    trail, _ = learn_thresholds(
        model, data, config, **{name: getattr(args, name) for name in THRESHOLD_FIELDS},
        stop_at_compression=stop, checkpoint_dir=args.trail_dir, log=log)
    seconds = time.perf_counter() - t0
    records = [plain_json(e.record(), finite=True) for e in trail]
    if not args.json:
        print(f"{'epoch':>5}  {'step':>6}  {'compression':>11}  {'val top-1':>9}  {'transition':>10}")
        for e in trail:
            print(f"{e.epoch:>5}  {e.step:>6}  {e.compression:>10.2f}x  {e.val_top1:>9.2%}  {e.transition_fraction:>10.4f}"
                  + ("  (stopped at the target)" if e.partial else ""))
    if args.target_compression is None and args.min_accuracy is None:
        entry = trail[-1]
    else:
        try:
            entry = trail.pick(target_compression=args.target_compression, min_accuracy=args.min_accuracy)
        except MethodError as exc:
            kept = f"; the trail networks are in {args.trail_dir}" if args.trail_dir else \
                "; --trail-dir keeps every trail network"
            raise MethodError(f"{exc}{kept}") from None
    metrics = {"ltp_seconds": seconds, "picked_val_top1": plain_json(entry.val_top1, finite=True)}
    if args.exact:
        masks, matched = restore_at_target(model, trail, entry, 1.0 - 1.0 / args.target_compression, log=log)
        metrics.update(matched)
    else:
        masks = entry.restore(model)
    if not args.json:
        print(f"picked epoch {entry.epoch} (step {entry.step}): {entry.compression:.2f}x, "
              f"validation top-1 {entry.val_top1:.2%}")
    if args.finetune_epochs > 0:
        t1 = time.perf_counter()
        train(model, data, finetune, masks=masks, select_best=True,
              progress=None if not (args.quiet or args.json) else False, label="ltp fine-tune", device=device)
        metrics["finetune_seconds"] = time.perf_counter() - t1
    metrics["test"] = evaluate(model, data.test, device=device)
    s = summary(model, masks)
    metrics.update({k: s[k] for k in ("sparsity", "compression_ratio", "theoretical_speedup") if k in s})
    extra = dict(ckpt.meta.get("extra", {}))
    extra["pruning"] = {"method": "ltp", "penalty_weight": args.penalty_weight, "temperature": args.temperature,
                        "threshold_lr": args.threshold_lr, "gradient": args.gradient,
                        "picked_epoch": entry.epoch, "picked_step": entry.step,
                        "finetune_epochs": args.finetune_epochs, "trail": records}
    out = save_checkpoint(args.out, model, masks, metrics=metrics, extra=extra)
    if args.json:
        print(json.dumps({"trail": records, "picked": next(r for r, e in zip(records, trail) if e is entry),
                          "test_top1": metrics["test"]["top1"], "compression_ratio": s["compression_ratio"],
                          "out": str(out)}, indent=1))
    else:
        print_eval("test", metrics["test"])
        print(f"saved {out} ({s['compression_ratio']:.2f}x, sparsity {s['sparsity']:.4f})")
    return 0
