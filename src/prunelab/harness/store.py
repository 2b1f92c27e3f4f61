"""The result store: one SQLite file (WAL) per output directory, one row per completed run.

``OUTDIR/results.sqlite`` holds

* ``runs``: one row per run, keyed by the spec hash, with the full spec and result as JSON and a
  few columns for plain SQL queries (data set, model, method, target, seed, achieved sparsity,
  compression, theoretical speedup, final accuracies, and final bits per byte for language
  models on token data, NULL otherwise);
* ``traces``: one row per round / epoch of each method trace (``run_hash, trace, idx, row``);
* ``meta``: the schema version.

A store of schema 1 (before the bits-per-byte columns) is migrated when opened: the missing
columns are added (NULL in its old rows) and the version set to 2, in one transaction, so an
older prunelab refuses it with a clear message instead of failing on a column count.

A run is written in ONE transaction when it is complete (run row and all its trace rows, or
nothing), so a process killed at any instant (SIGKILL included) leaves only whole runs; the
``n_trace_rows`` column lets anyone check that. SQLite's write-ahead log makes the commit atomic
and durable, and readers (a report written while a sweep runs) never block the writer.

Under ``torchrun`` only rank 0 opens the store (:func:`open_store`); the other ranks hold a
:class:`FollowerStore`, which writes nothing and refuses to be read, and follow rank 0's decisions.

Example:
    >>> with Store("runs/quick") as store:
    ...     for result in store.results():
    ...         print(result.label, result.metrics["final_test_top1"])
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

from prunelab.errors import ConfigError, PrunelabError, StorageError

SCHEMA_VERSION = 2
FILENAME = "results.sqlite"

_TABLES = ("meta", "runs", "traces")
# One transaction: a process killed while creating a store leaves all three tables or none.
_SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    hash TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    label TEXT NOT NULL,
    family TEXT NOT NULL,
    target REAL NOT NULL,
    seed INTEGER NOT NULL,
    sparsity REAL,
    compression_ratio REAL,
    theoretical_speedup REAL,
    final_val_top1 REAL,
    final_test_top1 REAL,
    final_val_bpb REAL,
    final_test_bpb REAL,
    n_trace_rows INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    result_json TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS traces (
    run_hash TEXT NOT NULL REFERENCES runs(hash),
    trace TEXT NOT NULL,
    idx INTEGER NOT NULL,
    row_json TEXT NOT NULL,
    PRIMARY KEY (run_hash, trace, idx)
);
COMMIT;
"""
# Columns added after schema 1, with their types: a store of schema 1 gains them when opened.
_ADDED_COLUMNS = {"final_val_bpb": "REAL", "final_test_bpb": "REAL"}
_RUN_COLUMNS = ("hash", "dataset", "model", "method", "label", "family", "target", "seed", "sparsity",
                "compression_ratio", "theoretical_speedup", "final_val_top1", "final_test_top1",
                "final_val_bpb", "final_test_bpb", "n_trace_rows", "spec_json", "result_json", "created")


class Store:
    """The SQLite result store of one output directory.

    Args:
        outdir: the output directory (created when missing); the database is
            ``outdir/results.sqlite`` and the dense-model cache ``outdir/dense/``.

    Raises:
        ConfigError: the directory cannot be created, or the file is not a prunelab store (or one
            of another schema version, or a damaged one). A file that is not a store is never
            written to; reading a damaged store raises ConfigError too, and a write that fails
            (disk full) raises :class:`~prunelab.errors.StorageError`, leaving the store as it was.
    """

    def __init__(self, outdir):
        self.outdir = Path(outdir)
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create output directory {self.outdir}: {exc.strerror}; choose another --out") from None
        self.path = self.outdir / FILENAME
        self._conn = None
        try:
            # isolation_level=None: transactions are begun and committed explicitly below.
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            if not self._existing_store():   # checked before anything writes to the file
                self._conn.execute("PRAGMA journal_mode=WAL")   # persistent: set once, when the store is new
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] == "1":
                self._migrate()
            elif row[0] != str(SCHEMA_VERSION):
                raise ConfigError(f"{self.path} has result-store schema {row[0]}, this prunelab writes "
                                  f"{SCHEMA_VERSION}; use another --out directory")
        except (sqlite3.DatabaseError, ValueError) as exc:   # ValueError: ConfigError, or text that is not UTF-8
            if self._conn is not None:
                self._conn.close()
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{self.path} is not a prunelab result store or is damaged "
                              f"({' '.join(str(exc).split())}); move it away or choose another --out") from None

    def _migrate(self) -> None:
        """Bring a schema-1 store to this schema: add the missing ``runs`` columns (NULL in the old
        rows) and record the new version, in one transaction. A store this process may not write
        (a read-only file) is left as it is: it can still be read."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            present = {info[1] for info in conn.execute("PRAGMA table_info(runs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc).replace(" ", "").lower():
                return
            raise

    def _existing_store(self) -> bool:
        """Whether the file already holds a store (False: it is new or empty). ConfigError when it
        is an SQLite database of something else (the schema script must not add tables to someone
        else's database) or a damaged store (found now, before anything could write to it)."""
        tables = {name for (name,) in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if not name.startswith("sqlite_")}
        foreign = sorted(tables - set(_TABLES))
        if foreign:
            raise ConfigError(f"{self.path} is not a prunelab result store (it holds tables "
                              f"{', '.join(foreign[:5])}); move it away or choose another --out")
        if not tables:
            return False
        problems = [" ".join(str(row[0]).split()) for row in self._conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise ConfigError(f"{self.path} is a damaged result store ({'; '.join(problems)}); "
                              "move it away and rerun, or choose another --out")
        return True

    @contextlib.contextmanager
    def _reading(self):
        """Turn damage found while reading (SQLite or the JSON inside) into a one-line ConfigError."""
        try:
            yield
        except PrunelabError:
            raise
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split())
            if isinstance(exc, sqlite3.OperationalError) and "locked" in reason:
                raise ConfigError(f"{self.path} is locked by another process ({reason}); rerun when it is done") from None
            raise ConfigError(f"{self.path} is damaged ({type(exc).__name__}: {reason}); "
                              "move it away and rerun, or choose another --out") from None

    @contextlib.contextmanager
    def _writing(self):
        """Turn a failed write (disk full, read-only file, damage) into a StorageError; the
        transaction was rolled back, so the store holds what it held before."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            reason = " ".join(str(exc).split())
            todo = ("free some space and rerun" if "full" in reason else
                    "rerun when the other process is done" if "locked" in reason else
                    "check that the file is writable (move it away if it is damaged) and rerun")
            error = StorageError(f"cannot write to {self.path}: {reason}; the runs stored so far are intact; {todo}")
            error.errno = getattr(exc, "sqlite_errorcode", None)
            raise error from exc

    # -- context manager
    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading
    def hashes(self) -> set[str]:
        """Hashes of every completed run."""
        with self._reading():
            return {r[0] for r in self._conn.execute("SELECT hash FROM runs")}

    def has(self, run_hash: str) -> bool:
        """Whether the run with this spec hash is complete in the store."""
        with self._reading():
            return self._conn.execute("SELECT 1 FROM runs WHERE hash=?", (run_hash,)).fetchone() is not None

    def __len__(self) -> int:
        with self._reading():
            return self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def get(self, run_hash: str):
        """The :class:`~prunelab.harness.runner.RunResult` of a completed run, or None."""
        with self._reading():
            row = self._conn.execute("SELECT result_json FROM runs WHERE hash=?", (run_hash,)).fetchone()
            return None if row is None else self._result(run_hash, row[0])

    def results(self, **where) -> list:
        """Every completed run (in insertion order), optionally filtered by column equality.

        Args:
            **where: e.g. ``dataset="fashion-mnist"``, ``method="magnitude"``.
        """
        columns = {"dataset", "model", "method", "label", "family", "target", "seed"}
        bad = sorted(set(where) - columns)
        if bad:
            raise ConfigError(f"cannot filter results by {', '.join(bad)}; use {', '.join(sorted(columns))}")
        clause = " AND ".join(f"{k}=?" for k in where)
        sql = "SELECT hash, result_json FROM runs" + (f" WHERE {clause}" if clause else "") + " ORDER BY rowid"
        with self._reading():
            rows = self._conn.execute(sql, tuple(where.values())).fetchall()
            return [self._result(h, text) for h, text in rows]

    def traces(self, run_hash: str) -> dict[str, list[dict]]:
        """The traces of a run: trace name → rows in order."""
        out: dict[str, list[dict]] = {}
        with self._reading():
            for trace, row in self._conn.execute(
                    "SELECT trace, row_json FROM traces WHERE run_hash=? ORDER BY trace, idx", (run_hash,)):
                out.setdefault(trace, []).append(json.loads(row))
        return out

    def check(self) -> list[str]:
        """Integrity problems (empty list when none): runs whose trace-row count is off."""
        problems = []
        with self._reading():
            for h, expected, found in self._conn.execute(
                    "SELECT r.hash, r.n_trace_rows, (SELECT COUNT(*) FROM traces t WHERE t.run_hash=r.hash) "
                    "FROM runs r"):
                if expected != found:
                    problems.append(f"run {str(h)[:12]}: {found} trace rows, {expected} expected")
            orphans = self._conn.execute(
                "SELECT COUNT(*) FROM traces WHERE run_hash NOT IN (SELECT hash FROM runs)").fetchone()[0]
        if orphans:
            problems.append(f"{orphans} trace rows without a run")
        return problems

    def _result(self, run_hash: str, text: str):
        from prunelab.harness.runner import RunResult

        d = json.loads(text)
        d["traces"] = self.traces(run_hash)
        return RunResult.from_dict(d)

    def suites(self) -> dict[str, dict]:
        """Suites run into this directory: name → ``{"description", "notes", "runs"}``."""
        out = {}
        with self._reading():
            for key, value in self._conn.execute("SELECT key, value FROM meta WHERE key LIKE 'suite:%' ORDER BY key"):
                out[key[6:]] = json.loads(value)
        return out

    # -- writing
    def record_suite(self, name: str, description: str = "", notes: str = "", runs: int = 0) -> None:
        """Remember that suite ``name`` was run here (reports list it)."""
        value = json.dumps({"description": description, "notes": notes, "runs": runs}, sort_keys=True)
        with self._writing():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"suite:{name}", value))

    def put(self, result) -> bool:
        """Write a completed run and its traces in one transaction.

        Args:
            result: a :class:`~prunelab.harness.runner.RunResult`.

        Returns:
            True if written, False if the store already held this run (it is kept unchanged).
        """
        d = result.to_dict(with_traces=True)
        traces = d.pop("traces")
        rows = [(result.hash, name, i, json.dumps(row, sort_keys=True))
                for name, trace in sorted(traces.items()) for i, row in enumerate(trace)]
        m = result.metrics
        spec = result.spec
        values = (result.hash, spec.dataset, spec.model, spec.method, spec.label, result.family,
                  float(spec.target), int(spec.seed), m.get("sparsity"), _finite(m.get("compression_ratio")),
                  _finite(m.get("theoretical_speedup")), m.get("final_val_top1"), m.get("final_test_top1"),
                  _finite(m.get("final_val_bpb")), _finite(m.get("final_test_bpb")), len(rows), json.dumps(spec.to_dict(), sort_keys=True), json.dumps(d, sort_keys=True), time.time())
        conn = self._conn
        with self._writing():
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(f"INSERT OR IGNORE INTO runs ({', '.join(_RUN_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' * len(values))})", values)
                written = cur.rowcount == 1
                if written:
                    conn.executemany("INSERT INTO traces VALUES (?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:   # a failed COMMIT may already have ended it
                    conn.execute("ROLLBACK")
                raise
        return written


class FollowerStore:
    """The stand-in for the result store on a rank other than 0 of a ``torchrun`` launch.

    Only rank 0 opens, reads and writes ``results.sqlite``; every decision that needs the store
    (which runs are done, whether the dense cache can be used) is taken on rank 0 and broadcast
    (see :func:`prunelab.harness.runner.sweep`). A follower knows its output directory (for paths that
    must be the same on every rank) and nothing else: it creates no directory or file, :meth:`put`
    and :meth:`record_suite` do nothing, and reading raises :class:`ConfigError`, so code that would
    let a rank decide on its own (and disagree with rank 0) fails loudly instead.

    Args:
        outdir: the output directory (not created).
        rank: this process's rank, for error messages.
    """

    def __init__(self, outdir, rank: int = 1):
        self.outdir = Path(outdir)
        self.path = self.outdir / FILENAME
        self.rank = rank

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> "FollowerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _refuse(self, *args, **kwargs):
        raise ConfigError(f"rank {self.rank} holds no result store: only rank 0 reads {self.path}; "
                          "take the decision on rank 0 and share it (prunelab.training.distributed.broadcast_json)")

    hashes = has = get = results = traces = check = suites = __len__ = _refuse

    def record_suite(self, *args, **kwargs) -> None:
        """Rank 0 records the suite."""

    def put(self, result) -> bool:
        """Rank 0 writes results; returns False (nothing written here)."""
        return False


def open_store(outdir):
    """The result store of ``outdir`` for this process: a :class:`Store` in a single process and on
    rank 0 of a ``torchrun`` launch, a :class:`FollowerStore` (which writes nothing) on the others.

    Args:
        outdir: the output directory.
    """
    from prunelab.training import distributed

    if distributed.is_main():
        return Store(outdir)
    return FollowerStore(outdir, distributed.rank())


def _finite(x):
    # SQLite stores inf as a REAL, but JSON exporters choke on it; the JSON column keeps the truth.
    return x if x is None or x != float("inf") else None
