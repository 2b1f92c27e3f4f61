"""The four claims the ``lm`` report answers, each computed from the collected runs as
``holds`` / ``does not hold`` / ``unclear`` with the numbers behind it.

Every comparison is on test bits per byte (lower is better); a difference within
:data:`TIE_BPB` counts as a tie. Missing runs make a claim ``unclear`` (never an error).
"""

from __future__ import annotations

from prunelab.reproductions.diao.collect import swings
from prunelab.reproductions.lm.protocol import SGD_MAGNITUDE

__all__ = ["HOLDS", "FAILS", "UNCLEAR", "TIE_BPB", "PQI_TOLERANCE", "interpolate", "claim_feta",
           "claim_pqi", "claim_ltp", "claim_grda", "check_claims"]

HOLDS, FAILS, UNCLEAR = "holds", "does not hold", "unclear"
#: test bpb differences at most this large are ties.
TIE_BPB = 0.01
#: PQ Index moves smaller than this are noise when the trajectory's phases are named.
PQI_TOLERANCE = 0.002


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _verdict(diffs: list[float]) -> str:
    """``holds`` when every difference (other − candidate, in bpb) favours the candidate beyond a
    tie, ``does not hold`` when every one favours the other or ties, else ``unclear``."""
    if not diffs:
        return UNCLEAR
    if all(d > TIE_BPB for d in diffs):
        return HOLDS
    if all(d <= TIE_BPB for d in diffs) and any(d < -TIE_BPB for d in diffs):
        return FAILS
    return UNCLEAR


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of ``(x, y)`` points at ``x``; None outside their range (or no points)."""
    pts = sorted(p for p in points if p[0] is not None and p[1] is not None)
    if not pts or x is None or x < pts[0][0] - 1e-9 or x > pts[-1][0] + 1e-9:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 - 1e-9 <= x <= x1 + 1e-9:
            return y0 if x1 - x0 < 1e-12 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1]


def _by_target(setup: dict, name: str, key: str) -> dict:
    entry = setup["methods"].get(name) or {}
    return {p["target"]: p for p in entry.get("points", []) if p.get(key) is not None}


def _candidate_vs_other(setup: dict, candidate: str, other: str, key: str, claim: str) -> dict:
    """``candidate`` against ``other`` on ``key`` (a test bpb) at every target both ran: rows keyed by
    the lower-cased names (``"feta"``, ``"feta_sparsity"``, ...), the verdict and its numbers."""
    a, b = _by_target(setup, candidate, key), _by_target(setup, other, key)
    ka, kb = candidate.lower(), other.lower()
    rows = [{"target": t, ka: a[t][key], kb: b[t][key], f"{ka}_sparsity": a[t]["sparsity"],
             f"{kb}_sparsity": b[t]["sparsity"]} for t in sorted(set(a) & set(b))]
    detail = "; ".join(f"{100 * r['target']:g} %: {candidate} {_fmt(r[ka])} vs {other} {_fmt(r[kb])} "
                       f"(sparsity {_fmt(r[f'{ka}_sparsity'])} / {_fmt(r[f'{kb}_sparsity'])})" for r in rows)
    return {"claim": claim, "verdict": _verdict([r[kb] - r[ka] for r in rows]), "rows": rows,
            "detail": detail or "no target with both runs"}


def claim_feta(setup: dict) -> dict:
    """(1) FeTa beats hard thresholding without retraining: lower pruned test bpb at every target both ran."""
    return _candidate_vs_other(setup, "FeTa", "hard thresholding", "pruned_test_bpb",
                               "FeTa beats hard thresholding without retraining (test bpb right after pruning)")


def _trajectory(point: dict) -> list[float]:
    return [r["pqi"] for r in point.get("rounds") or [] if r.get("pqi") is not None]


def claim_pqi(setup: dict) -> dict:
    """(2) Under iterative pruning the PQ Index first falls, then rises; and SAP against OS / LT:
    SAP's final test bpb against OS's and LT's per-round curves interpolated at SAP's sparsity."""
    runs = {}
    for name in ("OS", "LT", "SAP"):
        points = (setup["methods"].get(name) or {}).get("points") or []
        if points:
            runs[name] = points[-1]
    shapes = {}
    for name, point in runs.items():
        phases = swings(_trajectory(point), PQI_TOLERANCE)
        directions = [ph["direction"] for ph in phases]
        shapes[name] = {"pqi": _trajectory(point), "phases": directions,
                        "falls_then_rises": any(a == "down" and b == "up" for a, b in zip(directions, directions[1:]))}
    enough = [s for s in shapes.values() if len(s["pqi"]) >= 3]
    if not enough:
        shape_verdict = UNCLEAR
    elif all(s["falls_then_rises"] for s in enough):
        shape_verdict = HOLDS
    elif not any(s["falls_then_rises"] for s in enough):
        shape_verdict = FAILS
    else:
        shape_verdict = UNCLEAR
    sap, compare = runs.get("SAP"), {}
    if sap is not None and sap.get("final_test_bpb") is not None:
        for name in ("OS", "LT"):
            if name in runs:
                curve = [(1 - r["density"], r["test_bpb"]) for r in runs[name].get("rounds") or []
                         if r.get("density") is not None]
                compare[name] = interpolate(curve, sap.get("sparsity"))
    diffs = [v - sap["final_test_bpb"] for v in compare.values() if v is not None] if sap else []
    sap_verdict = _verdict(diffs) if len(diffs) == len(compare) else UNCLEAR
    detail = "; ".join(f"{n}: PQ Index per round {', '.join(_fmt(v, 4) for v in s['pqi'])} "
                       f"({'→'.join(s['phases']) or 'flat'})" for n, s in shapes.items())
    if sap is not None:
        detail += (f". SAP ends at sparsity {_fmt(sap.get('sparsity'))} with test bpb {_fmt(sap.get('final_test_bpb'))}; "
                   + ", ".join(f"{n} at that sparsity {_fmt(v)}" for n, v in compare.items()))
    return {"claim": "the PQ Index falls then rises under iterative pruning; SAP reaches a lower test bpb than "
                     "OS and LT at the same sparsity",
            "verdict": shape_verdict, "sap_verdict": sap_verdict, "shapes": shapes, "sap_vs": compare,
            "detail": detail or "no iterative run"}


def claim_ltp(setup: dict) -> dict:
    """(3) LTP beats GMP at equal epochs: lower final test bpb at every target both ran."""
    return _candidate_vs_other(setup, "LTP", "GMP", "final_test_bpb", "LTP beats GMP at equal epochs (final test bpb)")


def claim_grda(setup: dict) -> dict:
    """(4) gRDA against SGD + magnitude at equal epochs: gRDA's final test bpb against the
    baseline's curve (plain SGD at sparsity 0, then its targets) interpolated at gRDA's sparsity;
    ``holds`` when gRDA is no worse (within a tie)."""
    grda = ((setup["methods"].get("gRDA") or {}).get("points") or [None])[0]
    base = (setup["methods"].get(SGD_MAGNITUDE) or {}).get("points") or []
    sgd = setup.get("sgd_dense") or {}
    curve = [(0.0, sgd.get("test_bpb"))] + [(p["sparsity"], p["final_test_bpb"]) for p in base]
    at = interpolate(curve, grda.get("sparsity")) if grda else None
    if grda is None or grda.get("final_test_bpb") is None or at is None:
        verdict = UNCLEAR
    else:
        verdict = HOLDS if grda["final_test_bpb"] <= at + TIE_BPB else FAILS
    detail = (f"gRDA: sparsity {_fmt(grda.get('sparsity'))}, test bpb {_fmt(grda.get('final_test_bpb'))} after "
              f"{grda.get('epochs')} epochs (c {grda.get('c')}, mu {grda.get('mu')})" if grda else "no gRDA run")
    detail += (f"; plain SGD (dense) {_fmt(sgd.get('test_bpb'))}; {SGD_MAGNITUDE}: "
               + (", ".join(f"{_fmt(p['sparsity'])} → {_fmt(p['final_test_bpb'])}" for p in base) or "no run")
               + f"; interpolated at gRDA's sparsity: {_fmt(at)}")
    if grda is not None and at is None and grda.get("sparsity") is not None:
        detail += " (gRDA's sparsity lies outside the baseline's range)"
    return {"claim": f"gRDA reaches its sparsity with a test bpb no worse than {SGD_MAGNITUDE} at the same "
                     "sparsity and epochs", "verdict": verdict, "grda": grda, "at": at, "detail": detail}


def check_claims(setup: dict) -> list[dict]:
    """The four claims of one setup of :func:`~prunelab.reproductions.lm.collect.collect`, in order."""
    return [claim_feta(setup), claim_pqi(setup), claim_ltp(setup), claim_grda(setup)]
