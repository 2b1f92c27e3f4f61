"""The ``prunelab`` command line: the parser and the entry point.

Each command group is one module of this package with a ``register(subparsers)`` function: the
core commands (``train``, ``prune``, ``eval``, ``info``, ``demo``) in :mod:`prunelab.cli.core`,
the others in the modules :data:`EXTENSIONS` names. Every handler raises :class:`PrunelabError`
for bad input; :func:`main` prints that one line and exits with status 2.

Launched by ``torchrun`` with several processes, :func:`main` joins the process group
(:func:`prunelab.training.distributed.init`), every rank runs the command (training is data-parallel), only
rank 0 prints to stdout and writes files, and a rank that fails makes every rank exit non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from prunelab.errors import ConfigError, PrunelabError
from prunelab.training import distributed
from prunelab.utils.memory import is_out_of_memory

# Command groups beyond the core ones, as modules of this package; one that is missing or fails
# to import is an error, never a silently absent command.
EXTENSIONS = ("bench", "iterate", "export", "grda", "ltp", "studies")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2) instead of usage + message."""

    def error(self, message):
        # "prunelab: error: " is printed in front, so only the subcommand is named here.
        command = self.prog.partition(" ")[2]
        raise ConfigError(f"{command + ': ' if command else ''}{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The ``prunelab`` parser with every command group's sub-commands.

    Raises:
        ImportError: a module :data:`EXTENSIONS` names does not exist or fails to import.
    """
    from prunelab.utils.version import __version__
    from prunelab.cli import core

    parser = _Parser(prog="prunelab", description="Prune deep neural networks and compare pruning methods.")
    parser.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    core.register(sub)
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
    """Entry point of the ``prunelab`` console script.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for bad input or what does not fit (memory, disk: one
        line ``prunelab: error: ...`` on stderr), 1 when another rank failed first, 130 when
        interrupted.
    """
    try:
        # A no-op unless launched by torchrun with WORLD_SIZE > 1.
        distributed.init()
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        # --shard: every training of the command goes through FSDP (train(shard=None) reads this).
        distributed.set_sharding(True if getattr(args, "shard", False) else None)
        if distributed.is_main():
            status = int(args.func(args) or 0)
        else:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                status = int(args.func(args) or 0)
        distributed.shutdown()
        return status
    except PrunelabError as exc:
        # One line, whatever the message: the promise scripts and users rely on.
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        return _failed(exc, f"prunelab: error: {message}", 2)
    except KeyboardInterrupt as exc:
        return _failed(exc, "prunelab: interrupted", 130)
    except (MemoryError, RuntimeError) as exc:   # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _failed(exc, f"prunelab: error: does not fit in memory: {reason}; use a smaller model, "
                            "--batch-size or --limit, or a machine with more memory", 2)
    except BrokenPipeError:
        return 1
    finally:
        distributed.set_sharding(None)


if __name__ == "__main__":
    sys.exit(main())
