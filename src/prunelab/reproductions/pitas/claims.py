"""The paper's two claims checked on the collected runs: FeTa is orders of magnitude faster than
Net-Trim and L-OBS, and hard thresholding + retraining is the fastest way back to the dense accuracy."""

from __future__ import annotations

import math
import statistics

from prunelab.reproductions.pitas.bench import bench_times
from prunelab.reproductions.pitas.collect import gap_key
from prunelab.reproductions.pitas.protocol import GAPS
from prunelab.reproductions.pitas.tables import secs

__all__ = ["DATA_FREE", "check_claims", "claims_text"]

#: methods that only threshold the trained weights (no calibration data, no solve).
DATA_FREE = ("hard thresholding", "magnitude")


def median(values):
    """The median of the values that are not None; None when there is none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def check_claims(collected: dict, bench: dict | None = None, gaps=GAPS) -> dict:
    """The paper's two claims on the collected runs (and the width benchmark when given).

    * ``feta_speed``: FeTa "often orders of magnitude faster" than Net-Trim and L-OBS. Per model,
      the median over targets of (other method's prune time / FeTa's); per benchmark width, the
      same ratio of wall times (``estimated`` when a run was skipped). ``holds``: every ratio
      ≥ 10 (at least one order of magnitude); ``orders``: the smallest ratio's log10.
    * ``ht_total_time``: hard thresholding + retraining reaches each gap first. Per model and
      gap, the methods that got there sorted by total time; ``holds`` per gap is True when hard
      thresholding is first (ties count), False when another method is first or hard
      thresholding never gets there while another does, None when nobody got there;
      ``threshold_first``: the first is one of the data-free thresholds (:data:`DATA_FREE`: hard
      thresholding or global magnitude), the broader reading of the claim.

    Returns:
        ``{"feta_speed": {...}, "ht_total_time": {...}}``.
    """
    speed: dict = {"models": {}, "bench": {}}
    ratios_all = []
    for model, info in collected.items():
        meths = info["methods"]
        feta = {p["target"]: p["prune_s"] for p in meths.get("FeTa", {}).get("points", [])}
        entry = {}
        for other in ("Net-Trim", "L-OBS"):
            times = {p["target"]: p["prune_s"] for p in meths.get(other, {}).get("points", [])}
            ratios = [times[t] / feta[t] for t in feta if t in times and feta[t] and times[t] is not None]
            if ratios:
                entry[other] = {"median_ratio": median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
                                "median_s": median(list(times.values())), "feta_median_s": median(list(feta.values()))}
                ratios_all.append(median(ratios))
        speed["models"][model] = entry
    times = bench_times(bench)
    if "feta" in times:
        for other, key in (("Net-Trim", "nettrim"), ("L-OBS", "lobs")):
            if key not in times:
                continue
            rows = {}
            for d_in, (t_feta, measured) in sorted(times["feta"].items()):
                if d_in in times[key]:
                    t_other, other_measured = times[key][d_in]
                    rows[str(d_in)] = {"ratio": t_other / t_feta, "feta_s": t_feta, "other_s": t_other,
                                       "estimated": not (measured and other_measured)}
                    ratios_all.append(t_other / t_feta)
            speed["bench"][other] = rows
    speed["holds"] = bool(ratios_all) and min(ratios_all) >= 10.0 if ratios_all else None
    speed["orders"] = math.log10(min(ratios_all)) if ratios_all and min(ratios_all) > 0 else None

    total: dict = {}
    for model, info in collected.items():
        per_gap = {}
        for gap in gaps:
            key = gap_key(gap)
            ranking = []
            not_reached = []
            for name, m in info["methods"].items():
                if not m["retrain"]:
                    continue
                t = m["retrain"]["time_to"].get(key)
                if t and t["reached"]:
                    ranking.append({"method": name, "seconds": t["seconds"], "epoch": t["epoch"]})
                else:
                    not_reached.append(name)
            ranking.sort(key=lambda x: x["seconds"])
            if not ranking:
                holds = threshold_first = None
            else:
                ht = next((x for x in ranking if x["method"] == "hard thresholding"), None)
                holds = ht is not None and ht["seconds"] <= ranking[0]["seconds"]
                threshold_first = ranking[0]["method"] in DATA_FREE
            per_gap[key] = {"ranking": ranking, "not_reached": not_reached, "holds": holds,
                            "first": ranking[0]["method"] if ranking else None, "threshold_first": threshold_first}
        total[model] = per_gap
    return {"feta_speed": speed, "ht_total_time": total}


def claims_text(claims: dict, gaps=GAPS) -> list[str]:
    """One line per claim and model, with the numbers behind the verdict."""
    lines = []
    speed = claims["feta_speed"]
    parts = []
    for model, entry in speed["models"].items():
        for other, e in entry.items():
            parts.append(f"{model}: {other}/FeTa prune time, median over targets {e['median_ratio']:.2f}× "
                         f"(range {e['min_ratio']:.2f}–{e['max_ratio']:.2f})")
    for other, rows in speed["bench"].items():
        cells = ", ".join(f"d_in={d}: {v['ratio']:.1f}×{' (estimated)' if v['estimated'] else ''}" for d, v in rows.items())
        parts.append(f"one-layer benchmark {other}/FeTa: {cells}")
    verdict = {True: "holds (every ratio ≥ 10×)", False: "does not hold (some ratio < 10×)", None: "untested"}[speed["holds"]]
    lines.append(f"FeTa orders of magnitude faster than Net-Trim and L-OBS: {verdict}. " + "; ".join(parts) + ".")
    for model, per_gap in claims["ht_total_time"].items():
        bits = []
        for g in gaps:
            x = per_gap[gap_key(g)]
            if x["holds"] is None:
                bits.append(f"within {g:g} pt: no method got there")
                continue
            order = ", ".join(f"{r['method']} {secs(r['seconds'])} s" for r in x["ranking"])
            missing = f"; not reached: {', '.join(x['not_reached'])}" if x["not_reached"] else ""
            bits.append(f"within {g:g} pt: {'HT first' if x['holds'] else x['first'] + ' first'} ({order}{missing})")
        firsts = [per_gap[gap_key(g)] for g in gaps if per_gap[gap_key(g)]["holds"] is not None]
        summary = (f"HT first at {sum(bool(x['holds']) for x in firsts)} of {len(firsts)} reachable gaps, a data-free "
                   f"threshold (HT or global magnitude) first at {sum(bool(x['threshold_first']) for x in firsts)}")
        lines.append(f"Hard thresholding + retraining fastest in total time, {model}: {summary}. " + "; ".join(bits) + ".")
    return lines
