"""``prunelab pqi`` (PQ Index of a checkpoint) and ``prunelab iterate`` (OS / LT / SAP schedules).

``prunelab iterate`` runs under ``torchrun``: every rank runs the rounds, training data-parallel, and
rank 0 alone writes the round checkpoints and ``rounds.json``.
"""

from __future__ import annotations

import dataclasses
import json

from prunelab.cli import checks
from prunelab.cli.common import add_data_args, load_data
from prunelab.cli.options import (
    add_assignment_option, add_dataclass_options, add_device_option, add_train_options, command_device, train_config,
)
from prunelab.errors import ConfigError
from prunelab.training import distributed
from prunelab.utils.io import atomic_write_json


def _add_schedule_options(p) -> None:
    """The schedules' hyperparameters, generated from their dataclasses: the shared ones
    (``--rounds``, ``--scope``, ``--p``...), ``--rate`` (os, lt) and ``--sap-*`` (sap; prefixed,
    as ``--gamma`` is the LR step factor of every training)."""
    from prunelab.core.pqi import PQ_SCOPES
    from prunelab.methods.iterative import REWINDS, SELECTS, FixedFractionHparams, IterativeHparams, SAPHparams

    add_dataclass_options(p, IterativeHparams, defaults={"rounds": 10}, skip=("epochs", "stop_at_target"),
                          choices={"scope": PQ_SCOPES, "rewind": REWINDS, "select": SELECTS},
                          title="pruning rounds (every schedule)")
    add_dataclass_options(p, FixedFractionHparams, only=("rate",), title="os and lt")
    add_dataclass_options(p, SAPHparams, prefix="sap-", only=("eta_r", "gamma", "beta"), title="sap")


def _schedule_fields(args) -> dict:
    """The schedule's hyperparameters from the options :func:`_add_schedule_options` added."""
    from prunelab.methods.iterative import IterativeHparams

    shared = [f.name for f in dataclasses.fields(IterativeHparams) if f.name not in ("epochs", "stop_at_target")]
    fields = {name: getattr(args, name) for name in shared}
    if args.pruning_schedule == "sap":
        fields.update(eta_r=args.sap_eta_r, gamma=args.sap_gamma, beta=args.sap_beta)
    else:
        fields.update(rate=args.rate)
    return fields


def register(subparsers) -> None:
    """Add the ``pqi`` and ``iterate`` sub-commands."""
    p = subparsers.add_parser("pqi", help="PQ Index (and Gini index) of a checkpoint, per layer and globally")
    p.add_argument("checkpoint", help="a prunelab checkpoint (.safetensors)")
    p.add_argument("--scope", default="layer", choices=("global", "layer", "neuron"),
                   help="per-layer detail: one value per layer, or per-neuron statistics "
                        "(the global value is always printed)")
    p.add_argument("--p", type=checks.finite, default=0.5, help="smaller exponent, 0 < p < q (default 0.5)")
    p.add_argument("--q", type=checks.finite, default=1.0, help="larger exponent (default 1.0)")
    p.add_argument("--nonzero", action="store_true",
                   help="count only non-zero weights as remaining (for checkpoints saved without masks)")
    p.add_argument("--grid", action="store_true", help="also print the global PQ Index on the p 0.1..1.0 x q 1.0..2.0 grid")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_pqi)

    p = subparsers.add_parser("iterate", help="iterative pruning: one-shot (os), lottery ticket (lt) or SAP rounds")
    p.add_argument("--pruning-schedule", required=True, choices=("os", "lt", "sap"),
                   help="how each round cuts the mask: os (a fixed fraction, by the magnitudes of the dense "
                        "trained weights), lt (by the weights retrained in the round: lottery ticket) or sap "
                        "(a count bounded by the PQ Index)")
    p.add_argument("--model", default="mlp", help="model name (see `prunelab info`)")
    add_assignment_option(p, "--model-arg", "model keyword argument (JSON value)")
    add_data_args(p)
    p.add_argument("--limit", type=checks.count(1), default=None, help="use at most this many training samples")
    p.add_argument("--target", type=checks.sparsity, default=0.0, help="stop at this sparsity (0: run every round)")
    _add_schedule_options(p)
    add_train_options(p, title="training of every round (the paper: 200 epochs)", epochs=5, batch_size=250,
                      optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                      schedule="cosine", clip_grad_norm=1.0)
    p.add_argument("--seed", type=checks.seed, default=0, help="seeds the validation split, the initialisation and the batch order")
    p.add_argument("--threads", type=checks.count(1), default=None, help="torch threads")
    p.add_argument("--out", "-o", required=True, help="directory for round_XXX.safetensors and rounds.json")
    p.add_argument("--quiet", action="store_true", help="no per-round lines")
    add_device_option(p)
    p.set_defaults(func=cmd_iterate)


# -- pqi ----------------------------------------------------------------------------------------------

def cmd_pqi(args) -> int:
    """Print the PQ Index of a checkpoint's remaining prunable weights."""
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.core.masks import Masks
    from prunelab.core.pqi import (
        P_GRID,
        Q_GRID,
        check_pq,
        gini_index_model,
        grid_to_lists,
        pq_index_grid_model,
        pq_index_model,
    )

    p, q = check_pq(args.p, args.q)
    checks.input_file(args.checkpoint)
    ckpt = load_checkpoint(args.checkpoint)
    model, masks = ckpt.model, ckpt.masks
    if masks is None:
        masks = Masks.from_nonzero(model) if args.nonzero else Masks.ones(model)
        counted = ("non-zero prunable weights" if args.nonzero
                   else "every prunable weight (no masks stored; zeros count)")
    else:
        counted = "unmasked prunable weights (masks from the checkpoint)"
    glob = pq_index_model(model, masks, p, q, "global")["global"]
    gini = gini_index_model(model, masks, "global")["global"]
    per_layer = masks.per_layer()
    out = {"checkpoint": str(args.checkpoint), "p": p, "q": q, "counted": counted, "global": glob, "gini": gini,
           "kept": masks.kept(), "total": masks.total(), "layers": {}}
    if args.scope != "global":
        values = pq_index_model(model, masks, p, q, args.scope)
        for name, v in values.items():
            row = {"kept": per_layer[name]["kept"], "total": per_layer[name]["total"]}
            if args.scope == "layer":
                row["pqi"] = v
            else:
                row.update(neurons=int(v.numel()), mean=float(v.mean()) if v.numel() else 0.0,
                           min=float(v.min()) if v.numel() else 0.0, max=float(v.max()) if v.numel() else 0.0)
            out["layers"][name] = row
    if args.grid:
        out["grid"] = {"p": list(P_GRID), "q": list(Q_GRID),
                       "values": grid_to_lists(pq_index_grid_model(model, masks, "global")["global"])}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"PQ Index I_{{p={p:g}, q={q:g}}} of {counted}")
    if out["layers"]:
        width = max(len(n) for n in out["layers"])
        if args.scope == "layer":
            print(f"{'layer':<{width}}  {'kept':>10}  {'total':>10}  {'PQ Index':>9}")
            for name, row in out["layers"].items():
                print(f"{name:<{width}}  {row['kept']:>10}  {row['total']:>10}  {row['pqi']:>9.5f}")
        else:
            print(f"{'layer':<{width}}  {'kept':>10}  {'neurons':>8}  {'mean':>8}  {'min':>8}  {'max':>8}")
            for name, row in out["layers"].items():
                print(f"{name:<{width}}  {row['kept']:>10}  {row['neurons']:>8}  {row['mean']:>8.5f}  "
                      f"{row['min']:>8.5f}  {row['max']:>8.5f}")
    print(f"global: PQ Index {glob:.5f}  Gini {gini:.5f}  ({out['kept']}/{out['total']} weights remain)")
    if args.grid:
        print("global PQ Index grid (rows p, columns q):")
        print("   p\\q " + " ".join(f"{v:>6.1f}" for v in Q_GRID))
        for pv, row in zip(P_GRID, out["grid"]["values"]):
            print(f"{pv:>6.1f} " + " ".join("     -" if v is None else f"{v:>6.3f}" for v in row))
    return 0


# -- iterate ----------------------------------------------------------------------------------------

def cmd_iterate(args) -> int:
    """Run an OS / LT / SAP schedule and save every round."""
    import torch

    from prunelab import models
    from prunelab.methods.iterative import SCHEDULES, iterate

    out = checks.output_dir(args.out)
    fields = _schedule_fields(args)
    try:
        SCHEDULES[args.pruning_schedule].hparams(**fields)
    except ConfigError as exc:
        raise checks.dataclass_error(SCHEDULES[args.pruning_schedule].hparams, fields, "", exc,
                                     {f: f"--sap-{f}".replace("_", "-") for f in ("eta_r", "gamma", "beta")}) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    # Nesterov is on by default here but applies to SGD with momentum only: elsewhere it is off, not an error.
    config = train_config(args, nesterov=args.nesterov and args.optimizer == "sgd" and args.momentum > 0)
    device = command_device(args)
    ds = load_data(args, limit=args.limit)
    torch.manual_seed(args.seed)
    model = models.create(args.model, ds.in_shape, ds.num_classes, **dict(args.model_arg or [])).to(device)
    if distributed.is_main():   # under torchrun, rank 0 alone writes (iterate() saves there too)
        out.mkdir(parents=True, exist_ok=True)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    print(f"data: {ds.name} ({len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test); "
          f"model {args.model}; {args.pruning_schedule} for {args.rounds} rounds x {args.epochs} epochs", flush=True)
    result = iterate(model, ds, args.pruning_schedule, train_config=config, target=args.target,
                     checkpoint_dir=out, log=log, **fields)
    summary = {"schedule": args.pruning_schedule, "model": args.model, "dataset": ds.name, "info": result.info,
               "phase_times": result.phase_times, "rounds": result.rounds}
    if distributed.is_main():
        atomic_write_json(out / "rounds.json", summary, finite=True)
    print(f"\n{'round':>5} {'density':>9} {'pruned acc':>11} {'retrained':>10} {'PQ Index':>9}")
    for r in result.rounds:
        pruned = "-" if r["pruned_test_top1"] is None else f"{r['pruned_test_top1']:.2%}"
        print(f"{r['round']:>5} {r['density']:>9.4f} {pruned:>11} {r['test_top1']:>10.2%} {r['pqi']:>9.4f}")
    total = sum(result.phase_times.values())
    print(f"test top-1 (pruned = before retraining); saved {len(result.rounds)} checkpoints and rounds.json "
          f"to {out} ({total:.1f}s)")
    return 0
