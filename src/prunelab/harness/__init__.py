"""The benchmark harness: run specs, the runner, the result store, suites and the generic report.

- :mod:`~prunelab.harness.spec`: :class:`RunSpec` (what decides a run; its canonical form and stable
  hash) and :class:`RunResult` (what the run produced);
- :mod:`~prunelab.harness.dense`: the data and the shared, cached dense model of a run;
- :mod:`~prunelab.harness.runner`: :func:`run` one spec, :func:`sweep` many (resumable);
- :mod:`~prunelab.harness.store`: the SQLite result store of an output directory;
- :mod:`~prunelab.harness.suites`: named lists of specs (``prunelab.harness.suites.registry``) and
  suite files;
- :mod:`~prunelab.harness.report`: the generic report of a store and the terminal table.

Example:
    >>> from prunelab.harness import Store, get_suite, sweep, write_report
    >>> with Store("runs/quick") as store:                       # doctest: +SKIP
    ...     sweep(get_suite("quick").specs, store)
    >>> write_report("runs/quick")                               # doctest: +SKIP
"""

from prunelab.harness.spec import RunResult, RunSpec
from prunelab.harness.runner import SweepReport, run, sweep, validate_all
from prunelab.harness.store import FollowerStore, Store, open_store
from prunelab.harness.suites import Suite, get_suite, register_suite, resolve
from prunelab.harness.report import text_table, write_report

__all__ = [
    "RunSpec", "RunResult", "run", "sweep", "validate_all", "SweepReport", "Store", "FollowerStore", "open_store",
    "Suite", "get_suite", "register_suite", "resolve", "write_report", "text_table",
]
