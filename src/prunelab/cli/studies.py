"""CLI of the Pitas et al. studies: ``prunelab study depth`` and ``prunelab study latent``.

Both write ``OUT/studies/<study>.json`` and a PNG figure (see :mod:`prunelab.reproductions.pitas.studies`) and print
the verdict on the paper's claim. Other command modules add commands under the same ``study``
group (:mod:`prunelab.cli.grda` adds ``study valley``): :func:`study_subparsers` creates the group
or reuses it.
"""

from __future__ import annotations

import argparse

from prunelab.cli import checks
from prunelab.cli.common import add_data_args, load_data, nested_subparsers
from prunelab.cli.options import add_assignment_option
from prunelab.errors import ConfigError

DEFAULT_OUT = "prunelab-out"


def study_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-parsers of ``prunelab study``, created on first use and reused afterwards.

    Args:
        sub: the top-level sub-parsers action of ``prunelab``.

    Returns:
        The action to call ``add_parser`` on (also kept as the group parser's ``_study_subparsers``).
    """
    nested = nested_subparsers(sub, "study", "studies of trained networks (depth, latent, valley)", metavar="STUDY")
    sub.choices["study"]._study_subparsers = nested
    return nested


def _sparsities(text: str) -> tuple[float, ...]:
    # argparse turns ArgumentTypeError into "argument --sparsities: MESSAGE" (a ConfigError,
    # being a ValueError, would lose its message to argparse's generic "invalid value").
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0,0.5,0.9, got {text!r}") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities must be fractions in [0, 1), got {text!r}")
    return values


def _add_common(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--model", default=None, help="model name (see `prunelab info`)")
    add_assignment_option(p, "--model-arg", "model option (JSON value), e.g. widths=[8,16,32]")
    p.add_argument("--budget", default="quick", help="preset of seeds/epochs/samples/sparsities: smoke, quick, standard (default quick)")
    p.add_argument("--seeds", type=checks.seed, nargs="+", default=None, help="seeds, one trained model each (overrides the budget)")
    p.add_argument("--epochs", type=checks.count(1), default=None, help="dense training epochs (Adam), >= 1")
    p.add_argument("--lr", type=checks.number(0, low_open=True), default=None, help="Adam learning rate")
    p.add_argument("--batch-size", type=checks.count(1), default=None)
    p.add_argument("--train-limit", type=checks.count(1), default=None, help="cap on training samples")
    p.add_argument("--eval-samples", type=checks.count(1), default=None, help="test samples evaluated (the first ones)")
    p.add_argument("--sparsities", type=_sparsities, default=None, help="comma-separated per-layer sparsities, e.g. 0,0.5,0.8,0.9,0.95")
    p.add_argument("--method", default="magnitude", choices=("magnitude", "histogram"),
                   help="magnitude: exact per-layer fraction; histogram: the paper's 100-bin threshold")
    p.add_argument("--threads", type=checks.count(1), default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", "-o", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT}); files go to OUT/studies/")
    p.add_argument("--no-figure", action="store_true", help="write the JSON only")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _budget(args):
    from prunelab.reproductions.pitas.studies import BUDGETS

    if args.budget not in BUDGETS:
        raise ConfigError(f"unknown --budget {args.budget!r}; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[args.budget].replace(
        seeds=tuple(args.seeds) if args.seeds else None, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        train_limit=args.train_limit, eval_samples=args.eval_samples, sparsities=args.sparsities,
    )


def _setup(args):
    import torch

    checks.output_dir(args.out)
    for path in getattr(args, "checkpoint", None) or ():
        checks.input_file(path)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return None if args.quiet else (lambda line: print(line, flush=True))


def _finish(results, args) -> int:
    from prunelab.reproductions.pitas.studies import write_results

    json_path, fig_path = write_results(results, args.out, figure=not args.no_figure)
    print(results["claims"]["text"])
    print(f"wrote {json_path}" + (f" and {fig_path}" if fig_path else ""))
    return 0


def cmd_depth(args) -> int:
    """``prunelab study depth``: prune only layer i, and layers ≥ i, of trained models."""
    from prunelab.core.checkpoints import load_checkpoint
    from prunelab.reproductions.pitas.studies import run_depth_study

    log = _setup(args)
    budget = _budget(args)
    trained = None
    if args.checkpoint:
        if args.model:
            raise ConfigError("give either --checkpoint (trained models) or --model (train one per seed), not both")
        trained = [load_checkpoint(path).model for path in args.checkpoint]
        config = trained[0].prunelab_config if hasattr(trained[0], "prunelab_config") else {}
        model_name, model_kwargs = config.get("name", "model"), config.get("kwargs", {})
    elif args.model:
        model_name, model_kwargs = args.model, dict(args.model_arg or [])
    else:
        raise ConfigError("name a model (--model conv6 --model-arg widths=[8,16,32]) or trained checkpoints (--checkpoint A B)")
    data = load_data(args)
    if trained is not None:
        for path, model in zip(args.checkpoint, trained):
            checks.check_fits({"model": getattr(model, "prunelab_config", None)}, data, path)
    results = run_depth_study(data, model_name, model_kwargs, budget=budget, method=args.method, trained=trained, log=log)
    return _finish(results, args)


def _ks(values: list[str], dim: int) -> list[int]:
    out = []
    for v in values:
        if v.lower() in ("full", "all"):
            out.append(dim)
            continue
        try:
            out.append(int(v))
        except ValueError:
            raise ConfigError(f"--k expects integers or 'full', got {v!r}") from None
    return out


def cmd_latent(args) -> int:
    """``prunelab study latent``: train on PCA-k data, hard-threshold the first layer."""
    import math

    from prunelab.reproductions.pitas.studies import run_latent_study

    log = _setup(args)
    budget = _budget(args)
    if not args.model:
        raise ConfigError("name a model to train on each PCA-k data set, e.g. --model fc")
    data = load_data(args)
    ks = _ks(args.k, math.prod(data.in_shape))
    layer = int(args.layer) if args.layer.isdigit() else args.layer
    results = run_latent_study(data, args.model, dict(args.model_arg or []), ks=ks, budget=budget, layer=layer,
                               method=args.method, id_k=tuple(args.id_k), log=log)
    return _finish(results, args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``study depth`` and ``study latent`` to the ``prunelab`` parser."""
    study = study_subparsers(sub)
    p = study.add_parser("depth", help="Pitas et al.: hard-threshold only layer i / layers >= i, no retraining")
    _add_common(p)
    p.add_argument("--checkpoint", nargs="+", default=None, help="trained checkpoints to study (one per seed) instead of training")
    p.set_defaults(func=cmd_depth)

    p = study.add_parser("latent", help="Pitas et al.: train on PCA-k data, hard-threshold the first layer")
    _add_common(p)
    p.add_argument("--k", nargs="+", default=["10", "20", "50", "100", "full"],
                   help="numbers of principal components ('full' = the original data); default 10 20 50 100 full")
    p.add_argument("--layer", default="1", help="layer pruned: index from 1 or name (default 1, the first)")
    p.add_argument("--id-k", type=checks.count(1), nargs=2, default=(10, 20), metavar=("K1", "K2"),
                   help="neighbourhood sizes of the Levina-Bickel estimator (default 10 20)")
    p.set_defaults(func=cmd_latent)
