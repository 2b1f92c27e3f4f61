"""The acceptance checks of the LTP comparison on the collected runs (test top-1, fractions)."""

from __future__ import annotations

import math

__all__ = ["mean", "mean_sd", "check_acceptance"]


def _test(run):
    return None if run is None else run.get("final_test_top1")


def mean(values):
    """The mean of the values that are not None; None when there is none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def mean_sd(values):
    """Mean and sample standard deviation (None for fewer than two values)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _seed_deltas(by_seed: dict) -> dict:
    """Per-seed LTP − dense and LTP − GMP (test top-1) over the seeds LTP ran, and their means."""
    ltp, gmp = by_seed.get("ltp", {}), by_seed.get("gmp", {})
    seeds = sorted(ltp)
    vs_dense = {s: None if ltp[s]["test_top1"] is None or ltp[s]["dense_test_top1"] is None
                else ltp[s]["test_top1"] - ltp[s]["dense_test_top1"] for s in seeds}
    vs_gmp = {s: ltp[s]["test_top1"] - gmp[s]["test_top1"] for s in seeds
              if s in gmp and ltp[s]["test_top1"] is not None and gmp[s]["test_top1"] is not None}
    return {"seeds": seeds, "ltp_minus_dense_by_seed": vs_dense, "ltp_minus_gmp_by_seed": vs_gmp,
            "ltp_minus_dense_mean": mean(vs_dense.values()), "ltp_minus_gmp_mean": mean(vs_gmp.values())}


def _growth(trail: list) -> dict:
    """How sparsity moved over an LTP trail: per-epoch compression and whether it kept rising."""
    points = [e for e in trail if e.get("sparsity") is not None]
    if len(points) < 2:
        return {"keeps_increasing": None}
    comp = [1.0 / max(1e-12, 1.0 - e["sparsity"]) for e in points]
    half = len(points) // 2
    late = comp[-1] / comp[half] if comp[half] > 0 else None
    rises = sum(1 for a, b in zip(comp, comp[1:]) if b > a * 1.01)
    return {"first_compression": comp[1], "final_compression": comp[-1], "half_compression": comp[half],
            "late_growth": late, "epochs_rising": rises, "epochs": len(points) - 1,
            # "keeps increasing": still gaining >= 10 % compression over the second half of the run
            # and rising (by > 1 %) in most epochs.
            "keeps_increasing": bool(late is not None and late >= 1.1 and rises >= (len(points) - 1) / 2)}


def check_acceptance(collected: dict, gap_to_dense: float = 0.01, gap_to_gmp: float = 0.005,
                     headline_model: str = "lenet-300-100", headline_target: float = 0.975) -> dict:
    """Check the comparison's acceptance criteria on the collected runs (test top-1, fractions).

    * ``ltp_vs_gmp``: per model and target, LTP's test top-1 minus GMP's (holds when ≥ −``gap_to_gmp``);
    * ``ltp_vs_dense``: per model and target, LTP minus the dense model; ``headline`` holds when
      the headline model at the headline target (LeNet-300-100, 40×) is within ``gap_to_dense``;
    * ``max_compression_within``: per model, the largest compression LTP reached within
      ``gap_to_dense`` of the dense model;
    * ``bn_study``: per BN-study run, how its sparsity moved (:func:`_growth`).

    Returns:
        A JSON-able dict of the facts, each claim with ``holds``.
    """
    out: dict = {"gap_to_dense": gap_to_dense, "gap_to_gmp": gap_to_gmp, "models": {}}
    for model, entry in collected["models"].items():
        dense = entry["dense"]["test_top1"]
        rows, best = [], None
        for row in entry["rows"]:
            ltp, gmp, mag = _test(row.get("ltp")), _test(row.get("gmp")), _test(row.get("magnitude"))
            vs_gmp = None if ltp is None or gmp is None else ltp - gmp
            vs_dense = None if ltp is None or dense is None else ltp - dense
            rows.append({"target": row["target"], "target_compression": row["target_compression"],
                         "ltp_minus_gmp": vs_gmp, "ltp_minus_dense": vs_dense,
                         "magnitude_minus_dense": None if mag is None or dense is None else mag - dense,
                         "gmp_minus_dense": None if gmp is None or dense is None else gmp - dense,
                         "within_gmp": None if vs_gmp is None else vs_gmp >= -gap_to_gmp - 1e-12,
                         "within_dense": None if vs_dense is None else vs_dense >= -gap_to_dense - 1e-12})
            seeds = _seed_deltas(row.get("by_seed", {}))
            rows[-1].update(seeds)
            if seeds.get("ltp_minus_dense_mean") is not None:
                rows[-1]["within_dense_mean"] = seeds["ltp_minus_dense_mean"] >= -gap_to_dense - 1e-12
                rows[-1]["within_gmp_mean"] = (None if seeds.get("ltp_minus_gmp_mean") is None
                                               else seeds["ltp_minus_gmp_mean"] >= -gap_to_gmp - 1e-12)
            # The verdict of a target run with several seeds is on their mean (the seeds were fixed
            # before any of them ran); a single seed decides alone.
            several = len(seeds["seeds"]) > 1
            rows[-1]["several_seeds"] = several
            rows[-1]["verdict_gmp"] = rows[-1].get("within_gmp_mean") if several else rows[-1]["within_gmp"]
            rows[-1]["verdict_dense"] = rows[-1].get("within_dense_mean") if several else rows[-1]["within_dense"]
        known = [r["verdict_gmp"] for r in rows if r["verdict_gmp"] is not None]
        for r, row in zip(rows, entry["rows"]):
            if r.get("verdict_dense"):
                comps = [v.get("compression_ratio") for v in row.get("by_seed", {}).get("ltp", {}).values()]
                comps = [c for c in comps if c is not None] or [row["ltp"].get("compression_ratio")]
                comp = min(comps)   # with several seeds, the least any of them reached
                best = comp if best is None or (comp or 0) > best else best
        out["models"][model] = {"rows": rows, "max_compression_within_dense": best,
                                "ltp_within_gmp_everywhere": all(known) if known else None}
    head = out["models"].get(headline_model, {})
    row = next((r for r in head.get("rows", []) if abs(r["target"] - headline_target) < 1e-9), None)
    # With several seeds at the headline target the verdict is on their mean (decided before any
    # of them was run); the lowest seed's own gap is reported beside it.
    several = row is not None and len(row.get("seeds", [])) > 1
    out["headline"] = {"model": headline_model, "target": headline_target,
                       "ltp_minus_dense": None if row is None else row["ltp_minus_dense"],
                       "seeds": [] if row is None else row.get("seeds", []),
                       "ltp_minus_dense_mean": row.get("ltp_minus_dense_mean") if several else None,
                       "holds": None if row is None else (row["within_dense_mean"] if several else row["within_dense"])}
    out["bn_study"] = [{"batch_norm": e["batch_norm"], "penalty": e["penalty"], "penalty_weight": e["penalty_weight"],
                        **_growth(e.get("trail", []))} for e in collected["bn_study"]]
    return out
