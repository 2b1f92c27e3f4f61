"""The ``pitas`` report's tables and number formats (experiments 1 to 3 and the width benchmark)."""

from __future__ import annotations

from prunelab.reproductions.common import pct
from prunelab.reproductions.pitas.bench import BENCH_NAMES, bench_times
from prunelab.reproductions.pitas.collect import gap_key
from prunelab.reproductions.pitas.protocol import GAPS, RETRAIN_TARGET

__all__ = ["secs", "table_accuracy", "table_times", "table_bench", "table_time_to_target"]


def secs(v) -> str:
    """Seconds with three significant-ish digits; "–" for None."""
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 0.1 else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def all_targets(info: dict) -> list:
    """Every target of any method of one model, sorted."""
    return sorted({p["target"] for m in info["methods"].values() for p in m["points"]})


def table_accuracy(info: dict) -> tuple[list, list]:
    """Experiment 1 table: test top-1 without retraining, a row per method, a column per target."""
    targets = all_targets(info)
    header = ["method"] + [f"{100 * t:g} %" for t in targets] + ["sparsity at 90 % (all / hidden)"]
    rows = []
    for name, m in info["methods"].items():
        by = {p["target"]: p for p in m["points"]}
        p90 = by.get(RETRAIN_TARGET) or {}
        rows.append([name] + [pct(by[t]["pruned_test_top1"]) if t in by else "" for t in targets]
                    + [f"{pct(p90.get('sparsity'), 1)} / {pct(p90.get('sparsity_hidden'), 1)}"])
    return header, rows


def table_times(info: dict) -> tuple[list, list]:
    """Experiment 2 table: prune seconds per method and target."""
    targets = all_targets(info)
    header = ["method", "calibration images"] + [f"{100 * t:g} %" for t in targets]
    rows = []
    for name, m in info["methods"].items():
        by = {p["target"]: p for p in m["points"]}
        rows.append([name, str(m["calib_size"]) if m["method"] not in ("hard-threshold", "magnitude") else "–"]
                    + [secs(by[t]["prune_s"]) if t in by else "" for t in targets])
    return header, rows


def table_bench(bench: dict) -> tuple[list, list]:
    """Benchmark table: wall seconds per configuration and width, growth exponents."""
    times = bench_times(bench)
    widths = sorted({d for runs in times.values() for d in runs})
    header = ["configuration"] + [f"d_in={d}" for d in widths] + ["growth exponents"]
    rows = []
    for name, runs in times.items():
        cells = []
        for d in widths:
            if d not in runs:
                cells.append("")
            else:
                t, ok = runs[d]
                cells.append(secs(t) if ok else f"~{secs(t)} (skipped, estimate)")
        growth = bench["results"][name].get("growth_exponents") or []
        rows.append([BENCH_NAMES.get(name, name)] + cells + [", ".join(f"{g:.2f}" for g in growth) or "–"])
    return header, rows


def table_time_to_target(info: dict, gaps=GAPS) -> tuple[list, list]:
    """Experiment 3 table: prune time, then time (epoch) to each gap, final accuracies."""
    header = (["method", "prune s", "val top-1 after pruning"]
              + [f"within {g:g} pt: s (epoch)" for g in gaps] + ["epochs", "final val top-1", "final test top-1"])
    rows = []
    for name, m in info["methods"].items():
        r = m["retrain"]
        if not r:
            continue
        cells = []
        for g in gaps:
            t = r["time_to"][gap_key(g)]
            cells.append(f"{secs(t['seconds'])} ({t['epoch']})" if t["reached"]
                         else f"not reached in {t['epochs_run']} epochs (> {secs(t['seconds_at_least'])})")
        rows.append([name, secs(r["prune_s"]), pct(r["pruned_val_top1"])] + cells
                    + [str(r["epochs"]), pct(r["final_val_top1"]), pct(r["final_test_top1"])])
    return header, rows
