"""The paper's qualitative claims checked on the collected runs, and one line of text per claim."""

from __future__ import annotations

import math

from prunelab.methods.iterative import keep_count
from prunelab.reproductions.common import pct
from prunelab.reproductions.diao.collect import LOW_DENSITY, swings

__all__ = ["check_claims", "claims_text"]


def _log_interp(points, density: float):
    """y at ``density`` on a polyline of (density, y) points, linear in log density; None outside."""
    pts = sorted((d, y) for d, y in points if d > 0 and y is not None)
    for (d0, y0), (d1, y1) in zip(pts, pts[1:]):
        if d0 <= density <= d1:
            if d1 == d0:
                return y1
            w = (math.log(density) - math.log(d0)) / (math.log(d1) - math.log(d0))
            return y0 + w * (y1 - y0)
    return None


def _mean(values):
    """The mean; None for no values."""
    return sum(values) / len(values) if values else None


def _first_round_at(rounds, density: float):
    return next((rec["round"] for rec in rounds if rec["density"] <= density), None)


def check_claims(collected: dict) -> dict:
    """Check the paper's qualitative claims on the collected runs, per model.

    * ``i_first_prune``: SAP(0.5,1)'s first round prunes ⌊d·min(I, β)⌋, I the global PQ Index
      of the trained dense weights (η_r = 0, γ = 1: the fraction is I itself);
    * ``ii_fixed_fraction``: OS and LT keep round(0.8^t·n) weights in round t;
    * ``iii_sap12_faster``: SAP(1,2) has at most SAP(0.5,1)'s density every round (and less at
      some), rounds to reach 10 % and 1 % density;
    * ``iv_pqi_trajectory``: phases of I_{0.5,1} per round (:func:`swings`) of every schedule;
      the paper's pattern is down, up, down;
    * ``v_low_density``: every SAP(0.5,1) scope (and SAP(1,2)) against OS and LT at the same density (test
      top-1 after retraining, baselines interpolated in log density): mean gap over SAP's rounds
      at or below :data:`LOW_DENSITY` (``mean_gap``, the claim; None when SAP never got there)
      and over all its rounds the baseline's rounds span (``mean_gap_all``).

    Returns:
        ``{model: {claim: facts}}``; every claim has ``holds`` (bool, or None when it is a
        description or not testable); per-schedule facts of (ii), (iv), (v) are under ``runs``.
    """
    out = {}
    for model, runs in collected.items():
        c: dict = {}
        sap = runs.get("SAP(0.5,1)")
        if sap and len(sap["rounds"]) > 1:
            r0, r1 = sap["rounds"][:2]
            beta = sap["hparams"].get("beta", 0.9)
            # the driver floors d·I with a 1e-12 relative slack (exact decimal inputs); so do we
            expected = math.floor(r0["kept"] * min(r0["pqi"], beta) * (1 + 1e-12))
            c["i_first_prune"] = {"pqi_dense": r0["pqi"], "d": r0["kept"], "beta": beta, "expected": expected,
                                  "pruned": r1["pruned"], "fraction": r1["pruned"] / r0["kept"],
                                  "holds": r1["pruned"] == expected}
        fixed = {}
        for name in ("OS-0.2", "LT-0.2"):
            run = runs.get(name)
            if run:
                rate, rounds = run["hparams"].get("rate", 0.2), run["rounds"]
                total = rounds[0]["total"]
                kept = [rec["kept"] for rec in rounds]
                expected = [keep_count(total, rate, rec["round"]) for rec in rounds]
                fixed[name] = {"kept": kept, "expected": expected, "holds": kept == expected,
                               "max_density_error": max(abs(rec["density"] - (1 - rate) ** rec["round"])
                                                        for rec in rounds)}
        if fixed:
            c["ii_fixed_fraction"] = {"runs": fixed, "holds": all(v["holds"] for v in fixed.values())}
        fast = runs.get("SAP(1,2)")
        if sap and fast:
            n = min(len(sap["rounds"]), len(fast["rounds"]))
            ds = [rec["density"] for rec in sap["rounds"][:n]]
            df = [rec["density"] for rec in fast["rounds"][:n]]
            c["iii_sap12_faster"] = {
                "density_sap_0.5_1": ds, "density_sap_1_2": df,
                "first_fraction": {"SAP(0.5,1)": 1 - ds[1] if n > 1 else None, "SAP(1,2)": 1 - df[1] if n > 1 else None},
                "round_density_10pct": {"SAP(0.5,1)": _first_round_at(sap["rounds"], 0.1),
                                        "SAP(1,2)": _first_round_at(fast["rounds"], 0.1)},
                "round_density_1pct": {"SAP(0.5,1)": _first_round_at(sap["rounds"], 0.01),
                                       "SAP(1,2)": _first_round_at(fast["rounds"], 0.01)},
                "holds": all(a <= b for a, b in zip(df, ds)) and any(a < b for a, b in zip(df, ds))}
        traj = {}
        for name, run in runs.items():
            series = [rec["pqi_0.5_1"] for rec in run["rounds"]]
            phases = swings(series)
            traj[name] = {"pqi_0.5_1": series, "phases": phases,
                          "pattern": [ph["direction"] for ph in phases],
                          "down_up_down": [ph["direction"] for ph in phases][:3] == ["down", "up", "down"]}
        c["iv_pqi_trajectory"] = {"runs": traj, "holds": None}  # a description per schedule, no single verdict
        low = {}
        for name in ("SAP(0.5,1)", "SAP(0.5,1) layer", "SAP(0.5,1) neuron", "SAP(1,2)"):
            run = runs.get(name)
            if not run:
                continue
            entry = {"final_density": run["rounds"][-1]["density"], "final_test_top1": run["rounds"][-1]["test_top1"]}
            for base in ("OS-0.2", "LT-0.2"):
                b = runs.get(base)
                if not b:
                    continue
                curve = [(rec["density"], rec["test_top1"]) for rec in b["rounds"]]
                gaps = []
                for rec in run["rounds"][1:]:
                    ref = _log_interp(curve, rec["density"])
                    if ref is not None:
                        gaps.append({"round": rec["round"], "density": rec["density"], "sap": rec["test_top1"],
                                     "baseline": ref, "gap": rec["test_top1"] - ref})
                low_gaps = [g for g in gaps if g["density"] <= LOW_DENSITY]
                entry[base] = {"final_density": b["rounds"][-1]["density"],
                               "final_test_top1": b["rounds"][-1]["test_top1"], "matched": gaps,
                               "mean_gap_all": _mean([g["gap"] for g in gaps]),
                               "wins_all": sum(g["gap"] > 0 for g in gaps),
                               "mean_gap": _mean([g["gap"] for g in low_gaps]), "matched_low": len(low_gaps),
                               "wins": sum(g["gap"] > 0 for g in low_gaps)}
            low[name] = entry
        if low:
            verdicts = [e[b]["mean_gap"] > 0 for name, e in low.items() if name.endswith(("layer", "neuron"))
                        for b in ("OS-0.2", "LT-0.2") if b in e and e[b]["mean_gap"] is not None]
            c["v_low_density"] = {"runs": low, "holds": all(verdicts) if verdicts else None}
        out[model] = c
    return out


def claims_text(c: dict) -> str:
    """The checks of one model as Markdown list lines, with the numbers behind each verdict."""
    def at(r):
        return "never" if r is None else f"round {r}"

    out = []
    if "i_first_prune" in c:
        x = c["i_first_prune"]
        out.append(f"- (i) SAP(0.5,1) first round: I_{{0.5,1}}(dense) = {x['pqi_dense']:.4f}, d = {x['d']}, "
                   f"⌊d·min(I, β)⌋ = {x['expected']}, pruned {x['pruned']} ({pct(x['fraction'])} %): "
                   f"{'holds' if x['holds'] else 'DOES NOT hold'}.")
    if "ii_fixed_fraction" in c:
        x = c["ii_fixed_fraction"]
        for name, v in x["runs"].items():
            out.append(f"- (ii) {name}: kept == round(0.8^t·n) every round: {v['holds']} "
                       f"(max |density − 0.8^t| = {v['max_density_error']:.1e}).")
    if "iii_sap12_faster" in c:
        x = c["iii_sap12_faster"]
        out.append(f"- (iii) first-round fraction pruned: SAP(0.5,1) {pct(x['first_fraction']['SAP(0.5,1)'])} %, "
                   f"SAP(1,2) {pct(x['first_fraction']['SAP(1,2)'])} %; density ≤ 10 %: SAP(0.5,1) "
                   f"{at(x['round_density_10pct']['SAP(0.5,1)'])}, SAP(1,2) {at(x['round_density_10pct']['SAP(1,2)'])}; "
                   f"≤ 1 %: {at(x['round_density_1pct']['SAP(0.5,1)'])}, {at(x['round_density_1pct']['SAP(1,2)'])}; SAP(1,2) at or "
                   f"below SAP(0.5,1) every round: {x['holds']}.")
    if "iv_pqi_trajectory" in c:
        for name, v in c["iv_pqi_trajectory"]["runs"].items():
            phases = ", ".join(f"{p['direction']} {p['from']:.3f}→{p['to']:.3f} (t {p['start']}→{p['end']})"
                               for p in v["phases"]) or "flat"
            out.append(f"- (iv) {name}: I_{{0.5,1}} {phases}.")
    if "v_low_density" in c:
        for name, v in c["v_low_density"]["runs"].items():
            parts = []
            for base in ("OS-0.2", "LT-0.2"):
                if base in v:
                    b = v[base]
                    low = "no round below 10 %" if b["mean_gap"] is None else \
                        f"below 10 %: {100 * b['mean_gap']:+.2f} points over {b['matched_low']} rounds ({b['wins']} wins)"
                    every = "no matched round" if b["mean_gap_all"] is None else \
                        f"all rounds: {100 * b['mean_gap_all']:+.2f} points over {len(b['matched'])} ({b['wins_all']} wins)"
                    parts.append(f"vs {base} at the same density, {every}, {low}")
            out.append(f"- (v) {name} (final density {pct(v['final_density'], 3)} %, test {pct(v['final_test_top1'])} %) "
                       + "; ".join(parts) + ".")
    return "\n".join(out)
