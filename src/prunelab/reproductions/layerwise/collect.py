"""The ``layerwise`` suite's runs of a result store, per model and method: accuracy without and with
retraining, prune time and peak memory per target and at the N:M pattern."""

from __future__ import annotations

from prunelab.harness.runner import RunSpec
from prunelab.reproductions.layerwise.protocol import METHODS

__all__ = ["method_name", "collect"]


def method_name(spec: RunSpec, methods=METHODS) -> str:
    """The suite's name of a run's method: the table line with the same method, prunable rule and
    hyperparameters (a pattern and per-model overrides aside); other runs keep ``spec.label``."""
    for entry in methods:
        if entry.method != spec.method or dict(entry.prunable) != dict(spec.prunable):
            continue
        if all(spec.hparams.get(k) == v for k, v in entry.hparams.items()):
            return entry.name
    return spec.label


def _point(r) -> dict:
    m = r.metrics
    return {"target": r.spec.target, "pattern": r.spec.hparams.get("pattern"), "sparsity": m.get("sparsity"),
            "pruned_test_top1": m.get("pruned_test_top1"), "pruned_val_top1": m.get("pruned_val_top1"),
            "final_test_top1": m.get("final_test_top1"), "final_val_top1": m.get("final_val_top1"),
            "retrain_epochs": len(r.traces.get("retrain") or []), "prune_s": m.get("time_prune"),
            "retrain_s": m.get("time_retrain"), "peak_bytes": r.info.get("prune_peak_bytes"),
            "peak_kind": r.info.get("prune_peak_kind"), "device": r.info.get("device")}


def collect(results, methods=METHODS) -> dict:
    """The one-shot runs of a store, per model and method.

    Args:
        results: :class:`~prunelab.harness.runner.RunResult` objects (e.g. ``Store.results()``).
        methods: the method table.

    Returns:
        ``{model: {"dataset", "model_kwargs", "dense": {val_top1, test_top1, seconds, budget},
        "methods": {name: {"method", "label", "hparams", "calib_size", "points": [unstructured
        runs by target], "pattern": [N:M runs]}}}}``; every point has ``target``, ``pattern``,
        ``sparsity``, ``pruned_*_top1`` (no retraining), ``final_*_top1`` (after retraining),
        ``retrain_epochs``, ``prune_s``, ``peak_bytes`` (None where not measured), ``peak_kind``
        and ``device``. Methods in table order; with several seeds the lowest is kept.
    """
    out: dict = {}
    results = sorted((r for r in results if r.family == "oneshot"), key=lambda r: (r.spec.seed, r.spec.target))
    for r in results:
        m = r.metrics
        model = out.setdefault(r.spec.model, {"dataset": r.spec.dataset, "model_kwargs": r.spec.model_kwargs,
                                              "dense": None, "methods": {}})
        if model["dense"] is None:
            model["dense"] = {"val_top1": m.get("dense_val_top1"), "test_top1": m.get("dense_test_top1"),
                              "seconds": m.get("time_dense_train"), "budget": r.spec.dense, "seed": r.spec.seed}
        if r.spec.seed != model["dense"]["seed"]:
            continue
        name = method_name(r.spec, methods)
        entry = model["methods"].setdefault(name, {
            "method": r.spec.method, "label": r.label, "calib_size": r.spec.calib_size, "prunable": r.spec.prunable,
            "hparams": {k: v for k, v in r.spec.hparams.items() if k != "pattern"}, "points": [], "pattern": []})
        entry["pattern" if r.spec.hparams.get("pattern") else "points"].append(_point(r))
    order = [entry.name for entry in methods]
    for model in out.values():
        model["methods"] = dict(sorted(model["methods"].items(),
                                       key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return out
