"""The ``pqi`` suite's iterative runs of a result store, per model and schedule, and the phases of a
per-round series (the PQ Index trajectory)."""

from __future__ import annotations

from prunelab.core.pqi import P_GRID, Q_GRID
from prunelab.harness.runner import RunSpec

__all__ = ["PQ_PAIRS", "LOW_DENSITY", "SWING_TOLERANCE", "display_name", "collect", "swings"]

#: record fields kept in pqi_results.json (the store keeps every field, the p×q grid included).
_KEEP = ("round", "kept", "total", "density", "pruned", "pqi", "gini", "val_top1", "test_top1", "pruned_val_top1",
         "pruned_test_top1", "best_epoch", "seconds_train", "pqi_layer", "prune_info")
#: PQ Index pairs read off each round's grid, so every schedule is compared at the same (p, q).
PQ_PAIRS = {"pqi_0.5_1": (0.5, 1.0), "pqi_1_2": (1.0, 2.0)}
#: "low density" of claim (v): the paper's scope claim is about few remaining weights.
LOW_DENSITY = 0.1
#: a PQ Index move smaller than this is noise when the trajectory's phases are named.
SWING_TOLERANCE = 0.01


def display_name(spec: RunSpec) -> str:
    """The paper's name of a run: ``OS-0.2``, ``LT-0.2``, ``SAP(0.5,1)``, ``SAP(0.5,1) neuron`` ...

    η_r and γ are shown when not (0, 1); β is not shown. Other methods keep ``spec.label``.
    """
    hp = spec.hparams
    if spec.method in ("os", "lt"):
        name = f"{spec.method.upper()}-{hp.get('rate', 0.2):g}"
    elif spec.method == "sap":
        name = f"SAP({hp.get('p', 0.5):g},{hp.get('q', 1.0):g}"
        if hp.get("eta_r", 0.0) != 0 or hp.get("gamma", 1.0) != 1:
            name += f",{hp.get('eta_r', 0.0):g},{hp.get('gamma', 1.0):g}"
        name += ")"
    else:
        return spec.label
    scope = hp.get("scope", "global")
    return name if scope == "global" else f"{name} {scope}"


def _slim(rec: dict) -> dict:
    """The kept fields of a round's record, with the PQ Index pairs read off its grid."""
    out = {k: rec[k] for k in _KEEP if k in rec}
    grid = rec.get("pqi_grid")
    for key, (p, q) in PQ_PAIRS.items():
        out[key] = grid[P_GRID.index(p)][Q_GRID.index(q)] if grid else None
    return out


def collect(results) -> dict:
    """The iterative runs of a store, per model and schedule.

    Args:
        results: :class:`~prunelab.harness.runner.RunResult` objects (e.g. ``Store.results()``).

    Returns:
        ``{model: {display name: run}}``; a run has ``hash``, ``seed``, ``dataset``, ``hparams``,
        ``dense``/``retrain`` budgets, ``time_total``, ``final_layer_density`` (prunable layer
        → density of the final model) and ``rounds`` (per-round records with
        ``pqi_0.5_1`` and ``pqi_1_2`` read off the grid). With several seeds the lowest is kept.
    """
    out: dict = {}
    for r in sorted(results, key=lambda r: r.spec.seed):
        rounds = r.traces.get("rounds")
        if r.spec.method not in ("os", "lt", "sap") or not rounds:
            continue
        runs = out.setdefault(r.spec.model, {})
        name = display_name(r.spec)
        if name not in runs:
            runs[name] = {"hash": r.hash, "seed": r.spec.seed, "dataset": r.spec.dataset, "label": r.label,
                          "hparams": r.spec.hparams, "dense": r.spec.dense, "retrain": r.spec.retrain,
                          "time_total": r.metrics.get("time_total"),
                          "time_dense_train": r.metrics.get("time_dense_train"),
                          "final_layer_density": {layer["name"]: 1.0 - layer["sparsity"] for layer in r.layers
                                                  if layer.get("sparsity") is not None},
                          "rounds": [_slim(rec) for rec in sorted(rounds, key=lambda x: x["round"])]}
    return out


def swings(values, tolerance: float = SWING_TOLERANCE) -> list[dict]:
    """The moves of a series larger than ``tolerance`` (a zigzag with hysteresis).

    Args:
        values: the series (e.g. the PQ Index per round).
        tolerance: a move smaller than this does not start a new phase.

    Returns:
        ``[{"direction": "down" | "up", "start": i, "end": j, "from": v_i, "to": v_j}, ...]``:
        consecutive phases, each ending at its extreme; e.g. ``[0.3, 0.2, 0.25, 0.5, 0.1]`` gives
        down (0→1), up (1→3), down (3→4).
    """
    values = [float(v) for v in values]
    phases: list[dict] = []
    if not values:
        return phases
    start = ext = 0
    direction = None
    for i, v in enumerate(values[1:], start=1):
        if direction is None:
            # Before the first phase the reference is the running extreme in either direction.
            if abs(v - values[start]) >= tolerance:
                direction, ext = ("down" if v < values[start] else "up"), i
            continue
        if (v < values[ext]) if direction == "down" else (v > values[ext]):
            ext = i
        elif abs(v - values[ext]) >= tolerance:
            phases.append({"direction": direction, "start": start, "end": ext})
            start, ext, direction = ext, i, "up" if direction == "down" else "down"
    if direction is not None:
        phases.append({"direction": direction, "start": start, "end": ext})
    for ph in phases:
        ph["from"], ph["to"] = values[ph["start"]], values[ph["end"]]
    return phases
