"""The one-layer width benchmark (``benchmarks/bench_layerwise.py``) as the ``pitas`` report reads it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BENCH_NAMES", "find_bench_json", "bench_times"]

#: display names of the benchmark's configurations.
BENCH_NAMES = {"hard-threshold": "hard thresholding", "feta": "FeTa (τ search + polish)",
               "feta-fixed-tau": "FeTa (one τ)", "nettrim": "Net-Trim (ε search)",
               "nettrim-fixed-eps": "Net-Trim (one ε)", "lobs": "L-OBS (hybrid, default)",
               "lobs-sequential": "L-OBS (exact sequential)", "lobs-oneshot": "L-OBS (one-shot)",
               "sparsegpt": "SparseGPT", "wanda": "Wanda"}


def find_bench_json(outdir=None, path=None) -> Path | None:
    """The ``bench_layerwise.py`` JSON the report reads: ``path``, else ``OUTDIR/bench_layerwise.json``,
    else ``docs/results/pitas/bench_layerwise.json`` of the source checkout; None when none exists."""
    candidates = [Path(path)] if path is not None else []
    if outdir is not None:
        candidates.append(Path(outdir) / "bench_layerwise.json")
    # this file is src/prunelab/reproductions/pitas/bench.py: the checkout's root is four folders up
    candidates.append(Path(__file__).resolve().parents[4] / "docs" / "results" / "pitas" / "bench_layerwise.json")
    return next((c for c in candidates if c.is_file()), None)


def bench_times(bench: dict | None) -> dict:
    """``{config: {d_in: (seconds, measured)}}`` from a bench_layerwise JSON (estimates when skipped)."""
    out = {}
    for name, res in (bench or {}).get("results", {}).items():
        out[name] = {}
        for run in res.get("runs", []):
            if "wall_s" in run:
                out[name][run["d_in"]] = (run["wall_s"], True)
            elif "estimated_wall_s" in run:
                out[name][run["d_in"]] = (run["estimated_wall_s"], False)
    return out
