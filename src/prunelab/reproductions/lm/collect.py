"""The ``lm`` suites' runs of a result store, per setup (data set, its options, model options):
the dense models, every method's points (mean over seeds), the iterative rounds and gRDA's family."""

from __future__ import annotations

import json
import math
from statistics import mean

from prunelab.harness.runner import RunSpec
from prunelab.reproductions.lm.protocol import ITERATIVE, ONESHOT, SGD_MAGNITUDE, TRAINING

__all__ = ["METHOD_TABLE", "method_name", "bpb", "collect"]

#: every method line of the suites, in table order.
METHOD_TABLE = ONESHOT + ITERATIVE + TRAINING
_LN2 = math.log(2.0)


def bpb(metrics: dict, phase: str, split: str) -> float | None:
    """Bits per byte of a run's ``phase`` (dense, pruned, final) on ``split``: the run's own
    ``<phase>_<split>_bpb``, else its loss (nats per byte token) / ln 2; None when neither is there."""
    value = metrics.get(f"{phase}_{split}_bpb")
    if value is None and metrics.get(f"{phase}_{split}_loss") is not None:
        value = metrics[f"{phase}_{split}_loss"] / _LN2
    return value


def _ppl(metrics: dict, phase: str, split: str) -> float | None:
    value = metrics.get(f"{phase}_{split}_ppl")
    if value is None and metrics.get(f"{phase}_{split}_loss") is not None:
        value = math.exp(metrics[f"{phase}_{split}_loss"])
    return value


def method_name(spec: RunSpec, table=METHOD_TABLE) -> str:
    """The suite's name of a run: "gRDA", "SGD + magnitude" (magnitude on an SGD-trained dense
    model), else the table's only line of the run's method, or, among several, the one whose
    hyperparameters the run has (seed and pattern aside); other runs keep ``spec.label``."""
    if spec.method == "grda":
        return "gRDA"
    if spec.method == "magnitude" and spec.dense.get("optimizer") == "sgd":
        return SGD_MAGNITUDE
    lines = [entry for entry in table if entry.method == spec.method]
    if len(lines) == 1:   # one line per method (the quick suite changes e.g. the iterative rounds)
        return lines[0].name
    for entry in lines:
        if all(spec.hparams.get(k) == v for k, v in entry.hparams.items()):
            return entry.name
    return spec.label


def _family(r) -> str:
    if r.spec.method == "grda" or (r.spec.method == "magnitude" and r.spec.dense.get("optimizer") == "sgd"):
        return "grda"
    return r.family


def _point(r) -> dict:
    m = r.metrics
    retrain = r.traces.get("retrain") or r.traces.get("finetune") or []
    point = {"target": r.spec.target, "pattern": r.spec.hparams.get("pattern"), "sparsity": m.get("sparsity"),
             "prune_s": m.get("time_prune"), "total_s": m.get("time_total"), "retrain_epochs": len(retrain),
             "seeds": [r.spec.seed]}
    for phase in ("pruned", "final"):
        for split in ("val", "test"):
            point[f"{phase}_{split}_bpb"] = bpb(m, phase, split)
            point[f"{phase}_{split}_ppl"] = _ppl(m, phase, split)
    if r.family == "iterative":
        point["rounds"] = [_round(rec) for rec in sorted(r.traces.get("rounds") or [], key=lambda x: x["round"])]
    if r.spec.method == "grda":
        point["epochs"] = r.info.get("epochs")
        point.update(c=r.info.get("c"), mu=r.info.get("mu"))
    return point


def _round(rec: dict) -> dict:
    """A round's density, PQ Index and test bpb after retraining (and before, when pruned)."""
    out = {k: rec.get(k) for k in ("round", "density", "pqi", "pruned_pqi", "gini", "seconds_train")}
    out["test_bpb"] = rec["test_loss"] / _LN2 if rec.get("test_loss") is not None else None
    out["pruned_test_bpb"] = rec["pruned_test_loss"] / _LN2 if rec.get("pruned_test_loss") is not None else None
    return out


def _average(points: list[dict]) -> dict:
    """The mean of the seeds' points (None where any seed lacks a value); rounds of the lowest seed."""
    first = points[0]
    out = dict(first)
    for key, value in first.items():
        if key in ("target", "pattern", "rounds", "seeds") or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        values = [p.get(key) for p in points]
        out[key] = None if any(v is None for v in values) else mean(values)
    out["seeds"] = sorted(s for p in points for s in p["seeds"])
    return out


def _dense(r) -> dict:
    m = r.metrics
    return {"val_bpb": bpb(m, "dense", "val"), "test_bpb": bpb(m, "dense", "test"),
            "val_ppl": _ppl(m, "dense", "val"), "test_ppl": _ppl(m, "dense", "test"),
            "seconds": m.get("time_dense_train"), "budget": r.spec.dense, "seeds": [r.spec.seed]}


def collect(results, table=METHOD_TABLE) -> dict:
    """The ``gpt`` runs of a store, per setup.

    Args:
        results: :class:`~prunelab.harness.runner.RunResult` objects (e.g. ``Store.results()``).
        table: the method lines (fixes the order and the names).

    Returns:
        ``{setup key: {"dataset", "data_kwargs", "model_kwargs", "data_source", "calib_size",
        "dense": {val_bpb, test_bpb, val_ppl, test_ppl, seconds, budget, seeds} (mean over seeds;
        None without a run), "sgd_dense": the same for gRDA's SGD dense model, "methods": {name:
        {"family", "method", "hparams", "points": [unstructured], "pattern": [N:M]}}}}``; a point has
        ``target``, ``pattern``, ``sparsity`` (achieved), ``{pruned,final}_{val,test}_{bpb,ppl}``
        (pruned: None for methods owning their loop), ``prune_s``, ``total_s``,
        ``retrain_epochs``, ``seeds``; iterative points also ``rounds`` (lowest seed's per-round
        density, PQ Index, test bpb), gRDA's ``epochs``, ``c``, ``mu``. Values are means over the
        seeds that ran.
    """
    setups: dict = {}
    raw: dict = {}
    for r in sorted(results, key=lambda r: (r.spec.seed, r.spec.target)):
        if r.spec.model != "gpt":
            continue
        key = json.dumps([r.spec.dataset, r.spec.data_kwargs, r.spec.model_kwargs], sort_keys=True)
        setup = setups.setdefault(key, {"dataset": r.spec.dataset, "data_kwargs": r.spec.data_kwargs,
                                        "model_kwargs": r.spec.model_kwargs, "data_source": r.info.get("data_source"),
                                        "data_tokens": r.info.get("data_tokens"),
                                        "calib_size": None, "dense": None, "sgd_dense": None, "methods": {}})
        family = _family(r)
        dense_slot = "sgd_dense" if family == "grda" else "dense"
        raw.setdefault((key, dense_slot), {}).setdefault(r.spec.seed, _dense(r))
        name = method_name(r.spec, table)
        entry = setup["methods"].setdefault(name, {"family": family, "method": r.spec.method,
                                                   "hparams": {k: v for k, v in r.spec.hparams.items()
                                                               if k not in ("pattern", "seed")},
                                                   "points": [], "pattern": []})
        if r.family == "oneshot" and family != "grda":
            setup["calib_size"] = r.spec.calib_size
        slot = "pattern" if r.spec.hparams.get("pattern") else "points"
        raw.setdefault((key, name, slot, r.spec.target), []).append(_point(r))
    for key, setup in setups.items():
        for slot in ("dense", "sgd_dense"):
            per_seed = raw.get((key, slot))
            if per_seed:
                setup[slot] = _average(list(per_seed.values()))
        for name, entry in setup["methods"].items():
            for slot in ("points", "pattern"):
                targets = sorted(t for (k, n, s, t) in (x for x in raw if len(x) == 4) if k == key and n == name
                                 and s == slot)
                entry[slot] = [_average(raw[(key, name, slot, t)]) for t in targets]
        order = [entry.name for entry in table] + ["gRDA", SGD_MAGNITUDE]
        setup["methods"] = dict(sorted(setup["methods"].items(),
                                       key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return setups
