"""The ``prunelab`` command line: one entry point, one module per command group."""

from prunelab.cli.main import main

__all__ = ["main"]
