"""``prunelab bench`` (run a suite into a result store) and ``prunelab report`` (write its report).

``prunelab bench`` with no argument runs the ``quick`` suite on Fashion-MNIST when its files are
found, otherwise on scikit-learn's ``digits`` (always available), and says which in one line.

Under ``torchrun`` every rank runs the same runs in the same order, training data-parallel; rank 0
decides which runs are still to do (its store) and broadcasts the list, and rank 0 alone prints,
writes the store, the dense cache, ``errors.log`` and the report. A failing run ends every rank.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from prunelab.cli import checks
from prunelab.cli.options import add_device_option, command_device
from prunelab.training import distributed
from prunelab.errors import ConfigError, DataError
from prunelab.utils.progress import progress


def register(subparsers) -> None:
    """Add the ``bench`` and ``report`` sub-commands."""
    p = subparsers.add_parser(
        "bench", help="run a benchmark suite (methods x targets x seeds) and write its report",
        description="Run a suite of pruning runs into a result store (OUTDIR/results.sqlite), skipping runs "
                    "already there, then write OUTDIR/report.html and report.md. Interrupted sweeps resume.")
    p.add_argument("--suite", default="quick",
                   help="a registered suite (see --list) or a .toml/.json/.yaml suite file (default: quick)")
    p.add_argument("--out", "-o", default=None, help="output directory (default: runs/<suite>[-<dataset>])")
    p.add_argument("--dataset", default=None,
                   help="run the suite on this data set (default: the suite's; quick falls back to digits "
                        "when Fashion-MNIST files are missing)")
    p.add_argument("--data-dir", type=checks.existing_dir, default=None, help="directory holding the data files")
    p.add_argument("--threads", type=checks.count(1), default=1,
                   help="torch CPU threads (default 1: small models gain little from more, and on a shared "
                        "machine oversubscribed threads slow training down many times)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--dry-run", action="store_true", help="list the runs (and which are done) without running")
    p.add_argument("--list", action="store_true", help="list the registered suites and exit")
    add_device_option(p, note="every run (dense training, pruning, retraining, evaluation) computes there; "
                              "the device is not part of a run's identity, so stored runs are not redone "
                              "(the pitas-studies suite runs on the CPU)")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser(
        "report", help="write report.html and report.md for a bench output directory",
        description="Read OUTDIR/results.sqlite and write a self-contained OUTDIR/report.html (figures embedded) "
                    "and OUTDIR/report.md (figures in OUTDIR/figures/).")
    p.add_argument("outdir")
    p.add_argument("--title", default=None)
    p.set_defaults(func=cmd_report)


def _say(*args, **kwargs) -> None:
    """print() on rank 0 only (every rank runs the command under torchrun)."""
    if distributed.is_main():
        print(*args, **kwargs)


class _Silent:
    """The progress display of ranks other than 0."""

    def start(self, index, spec) -> None: ...

    def end(self) -> None: ...

    def log(self, message: str) -> None: ...

    def close(self) -> None: ...


def _fashion_mnist_problem(data_dir) -> str | None:
    """None when Fashion-MNIST loads, else why not (one line)."""
    from prunelab import data

    try:
        data.load("fashion-mnist", data_dir=data_dir, val_size=0, limit=1)
        return None
    except DataError as exc:
        return str(exc).splitlines()[0]


def _pick_dataset(args) -> tuple[str | None, str | None]:
    """The data set to run and a one-line note when it was chosen by fallback."""
    if args.dataset is not None or args.suite != "quick":
        return args.dataset, None
    problem = _fashion_mnist_problem(args.data_dir)
    if problem is None:
        return "fashion-mnist", "prunelab bench: running the quick suite on Fashion-MNIST"
    return "digits", (f"prunelab bench: Fashion-MNIST unavailable ({problem}); running the quick suite on "
                      "scikit-learn digits instead")


class Progress:
    """The sweep's progress: a tqdm bar (runs done / left, elapsed, the current run) on a terminal.

    Off a terminal, it prints one line per run start instead, so logs stay readable.
    """

    def __init__(self, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.done = total, 0
        self.bar = progress(total=total, desc="runs", unit="run", enabled=self.tty, leave=True)

    def start(self, index: int, spec) -> None:
        current = f"{spec.model} {spec.label} target {spec.target:g} seed {spec.seed}"
        if self.tty:
            self.bar.set_postfix_str(current)
        else:
            print(f"[{self.done}/{self.total} done, {self.total - self.done} left] {current}", file=self.stream, flush=True)

    def end(self) -> None:
        self.done += 1
        self.bar.update(1)

    def log(self, message: str) -> None:
        if self.tty:
            self.bar.write(f"  {message}", file=self.stream)
        else:
            print(f"  {message}", file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()


def _run_pitas_studies(args) -> int:
    """The studies are not pruning runs of the store: they write OUT/studies/*.json and figures,
    and a self-contained report of their own (OUT/studies/report.html and report.md)."""
    from prunelab.reproductions.pitas.studies import run_pitas_studies, write_studies_report

    dataset = args.dataset or "fashion-mnist"
    out = checks.output_dir(args.out or Path("runs") / "pitas-studies")
    results = run_pitas_studies(out, dataset, data_dir=args.data_dir,
                                log=lambda line: print(line, file=sys.stderr))
    written = write_studies_report(results, out / "studies", dataset)
    print(f"wrote {written['html']} and {written['markdown']}", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    """Run a suite; exit 0 when every run is stored, 1 when some failed."""
    from prunelab.harness import suites
    from prunelab.harness.runner import sweep, validate_all
    from prunelab.harness.report import text_table, write_report
    from prunelab.harness.store import Store, open_store

    if args.list:
        for name in suites.registry.list():
            print(f"{name}: {suites.get_suite(name).description}")
        from prunelab.reproductions.pitas.studies import STUDIES_DESCRIPTION

        print(f"pitas-studies: {STUDIES_DESCRIPTION}")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    if args.suite == "pitas-studies":
        if distributed.is_active():
            raise ConfigError("the pitas-studies suite runs in one process only (its studies are not "
                              "data-parallel); run it without torchrun")
        return _run_pitas_studies(args)
    device = command_device(args)
    if suites.is_suite_file(args.suite):
        checks.input_file(args.suite, "suite")
    dataset, note = _pick_dataset(args)
    suite = suites.resolve(args.suite, dataset)
    specs = validate_all(suite.specs)  # every bad spec is refused before anything trains
    if not specs:
        raise ConfigError(f"suite {suite.name!r} has no runs")
    if note:
        _say(note, file=sys.stderr)
    out = Path(args.out) if args.out else Path("runs") / (suite.name + (f"-{dataset}" if dataset and dataset != "fashion-mnist" else ""))
    if not args.dry_run:
        checks.output_dir(out)
    if args.dry_run:
        if not distributed.is_main():
            return 0  # rank 0 lists them; a dry run trains nothing
        done = set()
        if (out / "results.sqlite").exists():
            with Store(out) as store:
                done = store.hashes()
        print(f"suite {suite.name}: {len(specs)} runs ({len(done & {s.hash for s in specs})} already in {out}), "
              f"{len(suite.methods())} methods: {', '.join(suite.methods())}", file=sys.stderr)
        for s in specs:
            print(f"{'done' if s.hash in done else 'todo'} {s.hash[:12]} {s.dataset} {s.model} {s.label} "
                  f"target={s.target:g} seed={s.seed}")
        return 0
    main = distributed.is_main()
    # Rank 0 opens the store; the others get a stand-in that writes nothing (sweep asks rank 0).
    with open_store(out) as store:
        done = distributed.broadcast_json(sorted(store.hashes()) if main else None)
        todo = [s for s in specs if s.hash not in set(done)]
        _say(f"suite {suite.name}: {len(specs)} runs ({len(specs) - len(todo)} already in {out}), "
             f"{len(suite.methods())} methods: {', '.join(suite.methods())}"
             + (f"; {distributed.world_size()} ranks" if distributed.is_active() else ""), file=sys.stderr)
        store.record_suite(suite.name, suite.description, suite.notes, len(specs))
        # Methods that run their own training loops must not draw bars over this one.
        os.environ["PRUNELAB_PROGRESS"] = "0"
        progress = Progress(len(todo)) if main else _Silent()
        t0 = time.perf_counter()
        try:
            outcome = sweep(specs, store, data_dir=args.data_dir, log=progress.log, device=device,
                            on_start=lambda i, n, spec: progress.start(i, spec),
                            on_end=lambda i, n, spec, result: progress.end())
        finally:
            progress.close()
        seconds = time.perf_counter() - t0
        if main:
            print(text_table(store))
    _say(f"{len(todo) - len(outcome.failures)} runs done in {seconds:.0f} s, {len(outcome.skipped)} were already stored; "
         f"results in {out / 'results.sqlite'}", file=sys.stderr)
    if not main:
        return 0  # failures end every rank before this point (sweep re-raises under torchrun)
    if not args.no_report:
        html_path, md_path = write_report(out)
        print(f"report: {html_path} and {md_path}", file=sys.stderr)
    if outcome.failures:
        print(f"prunelab bench: {len(outcome.failures)} runs failed (first: {outcome.failures[0][1]}); "
              f"tracebacks in {out / 'errors.log'}; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    """Write the report of an output directory."""
    from prunelab.harness.report import write_report

    if not distributed.is_main():
        return 0  # rank 0 writes it
    html_path, md_path = write_report(args.outdir, args.title)
    print(f"wrote {html_path} and {md_path}")
    return 0
