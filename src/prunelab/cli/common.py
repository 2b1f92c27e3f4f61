"""What several command groups share: data options, loading data, printing metrics, nested groups."""

from __future__ import annotations

import argparse

from prunelab.cli import checks
from prunelab.cli.options import add_data_option, data_options
from prunelab.errors import ConfigError


def add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "fashion-mnist") -> None:
    """``--dataset``, ``--data-dir``, ``--val-size``, ``--normalize`` and ``--data-option``."""
    p.add_argument("--dataset", default=dataset_default, help="data set name (see `prunelab info`)")
    p.add_argument("--data-dir", type=checks.existing_dir, default=None, help="directory holding the data files (else $PRUNELAB_DATA, cache, system)")
    p.add_argument("--val-size", type=checks.val_size, default=None, help="validation samples taken from the training set: a count, or a fraction < 1 (default: 5000 for image data sets, 0.1 for digits/synthetic)")
    p.add_argument("--normalize", default="standard", choices=("standard", "unit", "none"))
    add_data_option(p)


def val_size(args) -> int | float | None:
    """``--val-size`` as the data loader takes it: a count (>= 1) or a fraction."""
    val = args.val_size
    if val is not None:
        val = int(val) if val >= 1 else float(val)
    return val


def load_data(args, dataset: str | None = None, **kwargs):
    """Load the data set the arguments name (``dataset`` overrides ``--dataset``).

    Args:
        args: parsed arguments with the options of :func:`add_data_args` (and ``seed``, which
            draws the validation split).
        dataset: a data set name to load instead of ``args.dataset``.
        **kwargs: passed on to :func:`prunelab.data.load` (e.g. ``limit``).
    """
    from prunelab import data

    kwargs = {**data_options(args), **kwargs}
    return data.load(dataset or args.dataset, data_dir=args.data_dir, val_size=val_size(args),
                     seed=getattr(args, "seed", 0), normalize=args.normalize, **kwargs)


def checkpoint_data(args, meta: dict, path=None):
    """The data set a checkpoint was trained on (``--dataset`` wins), prepared as it was.

    Args:
        args: parsed arguments with the options of :func:`add_data_args`.
        meta: the checkpoint's metadata.
        path: the checkpoint, for messages (default ``args.checkpoint``).

    Raises:
        ConfigError: no data set is known, or its samples or classes do not fit the checkpoint's
            model (before anything trains or prunes on them).
    """
    dataset = args.dataset or meta.get("extra", {}).get("dataset")
    if not dataset:
        raise ConfigError("the checkpoint does not say which data set it was trained on; pass --dataset")
    if args.normalize == "standard" and meta.get("extra", {}).get("normalize"):
        args.normalize = meta["extra"]["normalize"]
    data = load_data(args, dataset, **{**_saved_token_options(args, meta, dataset), **data_options(args)})
    checks.check_fits(meta, data, path or getattr(args, "checkpoint", "the checkpoint"))
    return data


#: The loader options of token data (``text``) that a checkpoint's ``extra["tokens"]`` records.
TOKEN_LOADER_OPTIONS = ("context", "max_bytes", "eval_bytes")


def _saved_token_options(args, meta: dict, dataset: str) -> dict:
    """The token-data loader options the checkpoint was trained with (and its folder, into
    ``args.data_dir`` when none is given), so that ``eval``/``prune`` need no ``--data-option``."""
    extra = meta.get("extra", {})
    tokens = extra.get("tokens")
    if not isinstance(tokens, dict) or dataset != extra.get("dataset"):
        return {}
    if args.data_dir is None and tokens.get("source") == "directory" and tokens.get("root"):
        args.data_dir = tokens["root"]
    return {key: tokens[key] for key in TOKEN_LOADER_OPTIONS if key in tokens}


def print_eval(label: str, metrics: dict) -> None:
    """One line: top-1, top-5, loss and sample count of an evaluation."""
    print(f"{label}: top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  loss {metrics['loss']:.4f}  (n={metrics['n']})")


def nested_subparsers(sub: argparse._SubParsersAction, name: str, help_text: str,
                      metavar: str = "COMMAND") -> argparse._SubParsersAction:
    """The sub-commands of group ``name`` (``prunelab NAME ...``), created on first use.

    Several modules add commands to one group (``study``): whoever comes first creates it, later
    ones find its sub-parsers action (argparse allows one per parser) and add to it.

    Args:
        sub: the top-level sub-parsers action of ``prunelab``.
        name: the group's command name.
        help_text: its help line, when this call creates it.
        metavar: how ``--help`` names its sub-commands.

    Returns:
        The action to call ``add_parser`` on.
    """
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help_text)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", parser_class=type(parser), metavar=metavar)
