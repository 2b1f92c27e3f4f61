"""What every paper's report writer shares: reading the suite's result store, the figure grid,
writing the report (Markdown + HTML through :mod:`prunelab.utils.render`, JSON through
:mod:`prunelab.utils.io`) and the ``python -m prunelab.reproductions.<paper> OUTDIR`` entry point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from prunelab.errors import ConfigError
from prunelab.harness.store import FILENAME, Store
from prunelab.utils.figures import new_figure, png_bytes
from prunelab.utils.io import atomic_write_bytes, atomic_write_json
from prunelab.utils.render import Document, write_document

__all__ = ["pct", "read_suite_store", "open_suite_store", "provenance", "figure_grid", "save_png", "write_report",
           "results_main"]


def pct(fraction, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals (``0.8912`` → ``"89.12"``); "–" for None."""
    return "–" if fraction is None else f"{100 * fraction:.{digits}f}"


def read_suite_store(outdir, suite: str) -> tuple[list, dict]:
    """``(results, suites)`` of the result store in ``outdir``, for a suite's own writer.

    Args:
        outdir: the bench output directory.
        suite: the suite's name (for the error message).

    Returns:
        Every stored run result and the recorded suites (``name -> {"description", "notes", ...}``).

    Raises:
        ConfigError: ``outdir`` holds no result store (saying which command makes one).
    """
    outdir = Path(outdir)
    if not (outdir / FILENAME).is_file():
        raise ConfigError(f"{outdir} holds no {FILENAME}; run `prunelab bench --suite {suite} --out {outdir}` first")
    with Store(outdir) as store:
        return store.results(), store.suites()


def open_suite_store(outdir, dest, suite: str, collect: Callable[[list], dict],
                     is_empty: Callable[[dict], bool], what: str, results: list | None = None
                     ) -> tuple[Path, list, dict, dict]:
    """The preamble of a suite writer: read the store, collect its runs, refuse an empty one.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``).
        dest: where the writer writes (None: ``outdir``); created.
        suite: the suite's name.
        collect: the paper's ``collect(results)``.
        is_empty: says whether the collected runs hold nothing to report.
        what: the runs the writer needs, for the error message ("LTP, GMP or magnitude").
        results: run results to report instead of the store's (then no suite is recorded).

    Returns:
        ``(dest, results, suites, collected)``.

    Raises:
        ConfigError: no result store, or none of the runs the writer needs.
    """
    outdir = Path(outdir)
    dest = Path(dest) if dest is not None else outdir
    suites: dict = {}
    if results is None:
        results, suites = read_suite_store(outdir, suite)
    collected = collect(results)
    if is_empty(collected):
        raise ConfigError(f"{outdir / FILENAME} holds no completed {what} run; run `prunelab bench --suite {suite}` first")
    dest.mkdir(parents=True, exist_ok=True)
    return dest, results, suites, collected


def provenance(results: Iterable, methods: Sequence[str], keys: Sequence[str]) -> dict:
    """``{key: value}`` of the first run of one of ``methods`` (git SHA, torch, threads ...)."""
    info = next((r.info for r in results if r.spec.method in methods), {})
    return {k: info.get(k) for k in keys}


def figure_grid(rows: int, cols: int, width: float, height: float, pad: tuple[float, float] = (0.4, 0.5)):
    """A pyplot-free figure of ``rows × cols`` panels of ``width × height`` inches each.

    Args:
        rows, cols: the panel grid.
        width, height: one panel's size in inches.
        pad: inches added to the whole figure's width and height (titles, labels).

    Returns:
        ``(figure, axes)`` with ``axes[row][col]``.
    """
    fig = new_figure(width * cols + pad[0], height * rows + pad[1])
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (parents created); returns the path."""
    return atomic_write_bytes(path, png_bytes(fig), mkdir=True)


def write_report(doc: Document, dest: str | Path, name: str, figure_names: Sequence[str],
                 json_name: str | None = None, payload: dict | None = None) -> dict:
    """Write a paper's report: ``dest/<name>.md`` and ``dest/<name>.html`` (one self-contained page),
    its figures as ``dest/figures/<figure name>`` and, when given, ``payload`` as ``dest/<json_name>``.

    The figure files keep the paper's own names (``figure_names``, one per figure of ``doc`` in
    order), so pages that link to them stay valid when the report is written again.

    Returns:
        ``{"markdown", "html", "json" (or None), "figures": [paths]}``.
    """
    written = write_document(doc, dest, name, figure_names=figure_names)
    json_path = atomic_write_json(Path(dest) / json_name, payload, indent=1, mkdir=True) if json_name else None
    return {**written, "json": json_path}


def results_main(argv, paper: str, suite: str, write, done: str, options: dict | None = None) -> int:
    """The ``python -m prunelab.reproductions.<paper> OUTDIR [--dest DIR]`` entry point of a suite's writer.

    Args:
        argv: the arguments.
        paper: the paper's folder under :mod:`prunelab.reproductions` (for the usage line).
        suite: the suite's name (for the help text).
        write: ``write(outdir, dest, **options) -> dict`` of the paths written; raises ``ConfigError``.
        done: format string of the final line, filled from ``write``'s dict (``figures``: a count).
        options: extra ``--name`` options, ``{"--name": help}``, passed to ``write`` as keywords.

    Returns:
        The exit status: 0, or 2 after a one-line error.
    """
    parser = argparse.ArgumentParser(prog=f"python -m prunelab.reproductions.{paper}",
                                     description=f"Report, figures and JSON of a `prunelab bench --suite {suite}` run.")
    parser.add_argument("outdir", help="the bench output directory (holding results.sqlite)")
    parser.add_argument("--dest", default=None, help="where to write (default: the suite writer's own)")
    for flag, text in (options or {}).items():
        parser.add_argument(flag, default=None, help=text)
    args = parser.parse_args(argv)
    extra = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_")) for flag in options or {}}
    try:
        paths = write(args.outdir, args.dest, **extra)
    except ConfigError as exc:
        print(f"prunelab: error: {exc}", file=sys.stderr)
        return 2
    print(done.format(**{**paths, "figures": len(paths.get("figures", []))}))
    return 0
