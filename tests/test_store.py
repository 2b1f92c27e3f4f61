"""The SQLite result store: round trips, one transaction per run, and kill-and-resume of a real sweep."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prunelab.errors import ConfigError, StorageError
from prunelab.harness.runner import RunResult, RunSpec, sweep
from prunelab.harness.store import Store


def _result(target=0.5, seed=0, traces=None, top1=0.8):
    spec = RunSpec("synthetic", "mlp", "magnitude", target, seed=seed, dense={"epochs": 1})
    metrics = {"sparsity": target, "compression_ratio": 1 / (1 - target), "theoretical_speedup": 1 / (1 - target),
               "final_val_top1": top1, "final_test_top1": top1 - 0.01}
    return RunResult(spec=spec, hash=spec.hash, family="oneshot", metrics=metrics,
                     phase_times={"dense_train": 1.0, "prune": 0.1, "retrain": 0.5}, dense_cached=False,
                     traces=traces if traces is not None else {"retrain": [{"epoch": 1, "val_top1": 0.7},
                                                                         {"epoch": 2, "val_top1": 0.75}]},
                     info={"note": "x"})


def test_round_trip_and_columns(tmp_path):
    r = _result(traces={"rounds": [{"round": i, "pq_index": i / 10} for i in range(3)], "retrain": [{"epoch": 1}]})
    with Store(tmp_path) as store:
        assert store.put(r) is True
        assert store.put(r) is False  # a completed run is never written twice
        assert len(store) == 1 and store.has(r.hash) and store.hashes() == {r.hash}
        back = store.get(r.hash)
        assert back.to_dict() == r.to_dict()
        assert store.traces(r.hash)["rounds"][2] == {"round": 2, "pq_index": 0.2}
        assert [x.hash for x in store.results(method="magnitude")] == [r.hash]
        assert store.results(method="random") == []
        assert store.check() == []
        with pytest.raises(ConfigError, match="cannot filter"):
            store.results(color="red")
    con = sqlite3.connect(tmp_path / "results.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = con.execute("SELECT dataset, method, label, target, seed, n_trace_rows, final_test_top1 FROM runs").fetchone()
    assert row == ("synthetic", "magnitude", "magnitude", 0.5, 0, 4, pytest.approx(0.79))
    assert con.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 4


def test_a_failed_write_leaves_nothing(tmp_path):
    with Store(tmp_path) as store:
        real = store._conn

        class FailingTraces:  # the trace insert fails after the run row went in
            in_transaction = property(lambda self: real.in_transaction)

            def execute(self, *a):
                return real.execute(*a)

            def executemany(self, *a):
                raise sqlite3.OperationalError("disk I/O error (simulated)")

        store._conn = FailingTraces()
        with pytest.raises(StorageError, match="disk I/O error .simulated.; the runs stored so far are intact"):
            store.put(_result())
        store._conn = real
        assert len(store) == 0 and store.check() == []
        assert store.put(_result()) is True and store.check() == []


def test_bad_store_files_are_clear_errors(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a prunelab result store"):
        Store(tmp_path)
    other = tmp_path / "other"
    with Store(other) as store:
        store._conn.execute("UPDATE meta SET value='999' WHERE key='schema'")
    with pytest.raises(ConfigError, match="schema 999"):
        Store(other)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create output directory"):
        Store(blocker / "sub")


def test_suites_are_remembered(tmp_path):
    with Store(tmp_path) as store:
        store.record_suite("quick", "five targets", "short budgets", 15)
        assert store.suites() == {"quick": {"description": "five targets", "notes": "short budgets", "runs": 15}}


SPECS = textwrap.dedent("""
    from prunelab.harness.runner import RunSpec

    data = {"in_shape": [1, 8, 8], "n_train": 200, "n_test": 100, "val_size": 0.2}
    specs = [RunSpec("synthetic", "mlp", method, target, seed=seed, data_kwargs=data, model_kwargs={"hidden": [16, 8]},
                     hparams={"seed": seed} if method == "random" else {},
                     dense={"epochs": 2, "optimizer": "sgd", "lr": 0.05, "batch_size": 50},
                     retrain={"epochs": 2, "optimizer": "sgd", "lr": 0.01, "batch_size": 50})
             for seed in (0, 1) for method in ("magnitude", "random") for target in (0.5, 0.75, 0.9)]
""")

SWEEP = SPECS + textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from prunelab.harness.runner import sweep
    from prunelab.harness.store import Store

    with Store(sys.argv[1]) as store:
        def start(i, n, spec):
            print("start", spec.hash, flush=True)
            time.sleep(0.2)  # widen the window in which the parent's SIGKILL lands mid-run
        def end(i, n, spec, result):
            print("end", spec.hash, flush=True)
        report = sweep(specs, store, on_start=start, on_end=end, keep_going=False)
        print("complete", len(report.results), len(report.skipped), flush=True)
""")


def _spawn(script, outdir):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), PRUNELAB_PROGRESS="0")
    return subprocess.Popen([sys.executable, str(script), str(outdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _kill_after(proc, n_ends):
    """SIGKILL ``proc`` once it has finished ``n_ends`` runs (and started the next)."""
    ends, lines = 0, []
    for line in proc.stdout:
        lines.append(line.split())
        if line.startswith("end"):
            ends += 1
        if ends >= n_ends and line.startswith("start"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (lines, proc.stderr.read())
    return lines


def test_sigkilled_sweep_resumes_without_lost_duplicate_or_partial_rows(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    out = tmp_path / "out"
    # 1st process: killed in the middle of its 3rd run.
    first = _kill_after(_spawn(script, out), 2)
    with Store(out) as store:
        stored = store.hashes()
        assert {h for kind, h in first if kind == "end"} <= stored and len(stored) in (2, 3)
        assert store.check() == []
    # 2nd process: skips what is stored, killed in the middle of its 2nd run.
    second = _kill_after(_spawn(script, out), 1)
    assert not stored & {h for kind, h in second if kind == "start"}  # completed runs are skipped
    with Store(out) as store:
        stored = store.hashes()
        assert store.check() == []
    # 3rd process: finishes.
    proc = _spawn(script, out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1] == f"complete 12 {len(stored)}"
    assert len([line for line in stdout.splitlines() if line.startswith("end")]) == 12 - len(stored)
    con = sqlite3.connect(out / "results.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT hash) FROM runs").fetchone() == (12, 12)
    with Store(out) as store:
        assert store.check() == []
        results = store.results()
        assert sorted((r.spec.seed, r.spec.method, r.spec.target) for r in results) == sorted(
            (s, m, t) for s in (0, 1) for m in ("magnitude", "random") for t in (0.5, 0.75, 0.9))
        for r in results:  # every row whole: traces complete, metrics present
            assert len(r.traces["retrain"]) == 2 and r.metrics["final_test_top1"] is not None
    # A rerun does nothing.
    scope = {}
    exec(SPECS, scope)
    with Store(out) as store:
        assert store.hashes() == {spec.hash for spec in scope["specs"]}
        again = sweep(scope["specs"], store, on_start=lambda *a: pytest.fail("a stored run was run again"))
        assert len(again.skipped) == 12 and len(again.results) == 12
