"""gRDA measurements on Fashion-MNIST (Chao et al. 2020): gRDA / plain-SGD runs and the magnitude+retrain baseline.

Each call appends one JSON object per run (one line) to ``--out``;
:mod:`prunelab.reproductions.chao.summarize` turns the lines into the tables and figures of
``docs/results/grda``.

* ``grda``: train from the seeded init with :func:`prunelab.methods.grda.method.train_grda` for every
  ``(c, mu)`` given (``c = 0`` is plain SGD without momentum on the same schedule). Records the
  per-epoch trace, final validation and test top-1, both sparsities; ``--save`` writes
  checkpoints (for ``prunelab study valley``).
* ``magret``: plain SGD for ``epochs - retrain`` epochs (cifar schedule over that length), then,
  for each sparsity, one-shot global magnitude pruning of the prunable weights and ``retrain``
  epochs of plain SGD with the mask fixed (same lr, cifar schedule over the retraining length):
  equal total epochs to a gRDA run of ``epochs``.

Example::

    python -m prunelab.reproductions.chao.experiment grda --model lenet5 \
        --epochs 40 --lr 0.05 --runs 0:0.55 0.005:0.55 --out runs.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch

from prunelab import data as pdata
from prunelab import methods, models
from prunelab.core.checkpoints import save_checkpoint
from prunelab.core.masks import Masks
from prunelab.methods.grda.method import cifar_schedule, train_grda, zero_fractions
from prunelab.training.loop import TrainConfig, evaluate, train


def make_model(args, data) -> torch.nn.Module:
    """The model of ``args.model`` from the seeded initialisation."""
    torch.manual_seed(args.seed)   # as `prunelab grda train`: one seed, one initialisation
    kwargs = {"hidden": (512,)} if args.model == "mlp" else {}
    return models.create(args.model, data.in_shape, data.num_classes, **kwargs)


def emit(path: str, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path`` and print it (without its trace)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "trace"}), flush=True)


def run_grda(args, data) -> None:
    """Train plain SGD (``c = 0``) or gRDA for every ``c:mu`` pair of ``args.runs``."""
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="sgd", lr=args.lr,
                         momentum=0.0, seed=args.seed)
    for spec in args.runs:
        c, mu = (float(v) for v in spec.split(":"))
        model = make_model(args, data)
        t0 = time.perf_counter()
        records, _ = train_grda(model, data, config, c, mu, schedule=args.schedule,
                                log=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - t0
        val, test = evaluate(model, data.val), evaluate(model, data.test)
        record = {"kind": "grda" if c > 0 else "sgd", "model": args.model, "epochs": args.epochs,
                  "lr": args.lr, "schedule": args.schedule, "seed": args.seed, "c": c, "mu": mu,
                  **zero_fractions(model), "val_top1": val["top1"], "test_top1": test["top1"],
                  "seconds": seconds, "trace": records}
        emit(args.out, record)
        if args.save:
            path = Path(args.save) / f"{args.model}_e{args.epochs}_lr{args.lr:g}_c{c:g}_mu{mu:g}_s{args.seed}.safetensors"
            extra = {"dataset": "fashion-mnist", "normalize": "standard", "val_size": 5000,
                     "train": config.to_dict(), "grda": {"c": c, "mu": mu, "schedule": args.schedule},
                     "history": records}
            save_checkpoint(path, model, Masks.from_nonzero(model),
                            metrics={"test": test, "val": val, "train_seconds": seconds}, extra=extra)


def run_magret(args, data) -> None:
    """Plain SGD, then one-shot global magnitude pruning and retraining at every sparsity of ``args.sparsities``."""
    pre_epochs = args.epochs - args.retrain
    if pre_epochs < 1 or args.retrain < 1:
        raise SystemExit("magret needs 1 <= retrain < epochs")
    config = TrainConfig(epochs=pre_epochs, batch_size=args.batch_size, optimizer="sgd", lr=args.lr,
                         momentum=0.0, seed=args.seed)
    dense = make_model(args, data)
    t0 = time.perf_counter()
    train_grda(dense, data, config, 0.0, 0.55, schedule=args.schedule)   # c = 0: plain SGD
    dense_seconds = time.perf_counter() - t0
    dense_test = evaluate(dense, data.test)["top1"]
    steps = math.ceil(len(data.train) / args.batch_size)
    retrain_config = config.replace(epochs=args.retrain)
    for sparsity in args.sparsities:
        model = copy.deepcopy(dense)
        masks = methods.get("magnitude")(scope="global").prune(model, sparsity=sparsity)
        masks.apply(model)
        pruned_test = evaluate(model, data.test)["top1"]
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.0)
        schedule = cifar_schedule(args.retrain, steps) if args.schedule == "cifar" else (lambda s: 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        t1 = time.perf_counter()
        train(model, data, retrain_config, masks=masks, optimizer=optimizer, scheduler=scheduler)
        seconds = time.perf_counter() - t1
        val, test = evaluate(model, data.val), evaluate(model, data.test)
        emit(args.out, {"kind": "magret", "model": args.model, "epochs": args.epochs, "retrain": args.retrain,
                        "lr": args.lr, "schedule": args.schedule, "seed": args.seed, "target": sparsity,
                        **zero_fractions(model), "dense_test_top1": dense_test,
                        "pruned_test_top1": pruned_test, "val_top1": val["top1"], "test_top1": test["top1"],
                        "seconds": dense_seconds + seconds})


def main(argv=None) -> None:
    """``python -m prunelab.reproductions.chao.experiment {grda,magret} ...``."""
    p = argparse.ArgumentParser(prog="python -m prunelab.reproductions.chao.experiment",
                                description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("grda", "magret"))
    p.add_argument("--model", default="lenet5", choices=("lenet5", "mlp"))
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--schedule", default="cifar", choices=("cifar", "constant"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="*", default=[], help="grda: c:mu pairs (c = 0: plain SGD)")
    p.add_argument("--retrain", type=int, default=0, help="magret: retraining epochs")
    p.add_argument("--sparsities", nargs="*", type=float, default=[], help="magret: global magnitude targets")
    p.add_argument("--save", default=None, help="grda: directory for checkpoints")
    p.add_argument("--out", required=True, help="JSON-lines file to append to")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    data = pdata.load("fashion-mnist", val_size=5000, normalize="standard")
    (run_grda if args.mode == "grda" else run_magret)(args, data)


if __name__ == "__main__":
    main()
