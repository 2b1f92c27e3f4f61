"""The ``ltp`` suite's runs of a result store, arranged for the table, the trail and the BN study."""

from __future__ import annotations

import math

__all__ = ["METHODS", "num", "collect"]

_RUN_KEYS = ("compression_ratio", "sparsity", "final_val_top1", "final_test_top1", "time_total")
_TRAIL_KEYS = ("epoch", "step", "compression", "sparsity", "val_top1", "partial", "transition_fraction",
               "soft_density")
METHODS = ("ltp", "gmp", "magnitude")


def num(x):
    """``x``, or None when it is None or not a finite float (strict JSON)."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _run_record(r) -> dict:
    m = r.metrics
    out = {"hash": r.hash[:12], "label": r.label, "method": r.spec.method, "target": r.spec.target,
           "target_compression": 1.0 / (1.0 - r.spec.target), "hparams": dict(r.spec.hparams),
           "epochs": r.spec.retrain.get("epochs"),
           **{k: num(m.get(k)) for k in _RUN_KEYS}}
    if r.spec.method == "ltp":
        out.update({k: r.info.get(k) for k in ("picked_epoch", "picked_compression", "ltp_epochs", "finetune_epochs",
                                               "target_reached")})
        out["trail"] = [{k: num(e.get(k)) for k in _TRAIL_KEYS} for e in r.traces.get("trail", [])]
        out["finetune"] = [{"epoch": h.get("epoch"), "val_top1": num(h.get("val_top1"))}
                           for h in r.traces.get("finetune", [])]
    elif r.spec.method == "gmp":
        out["path"] = [{"epoch": h.get("epoch"), "sparsity": h.get("sparsity"), "val_top1": num(h.get("val_top1"))}
                       for h in r.traces.get("epochs", []) if h.get("sparsity") is not None]
    return out


def _is_trail_run(r) -> bool:
    return r.spec.method == "ltp" and r.spec.hparams.get("stop_at_target") is False


def collect(results) -> dict:
    """The suite's runs of a store, arranged for the table, the trail and the BN study.

    Args:
        results: :class:`~prunelab.harness.runner.RunResult` objects (e.g. ``Store.results()``).

    Returns:
        ``{"models": {model: {"dense", "budget", "dense_budget", "rows", "trail_runs"}}, "bn_study": [...]}``:
        ``rows`` one per target with a ``ltp``/``gmp``/``magnitude`` run record each (compression,
        final val and test top-1, epochs, LTP's trail and fine-tune epochs, GMP's per-epoch
        path); ``trail_runs`` the LTP runs without a stop at the target; ``bn_study`` one entry per
        (batch-norm, penalty) run with its per-epoch trail. With several seeds the run records are
        the lowest seed's, and ``rows[i]["by_seed"]`` (``method -> seed -> val/test top-1,
        compression, dense test top-1``) and ``dense_by_seed`` hold every seed's numbers.
    """
    models: dict = {}
    bn: list = []
    seen = set()
    for r in sorted(results, key=lambda r: (r.spec.seed, r.hash)):
        if r.spec.method not in METHODS:
            continue
        if r.spec.model == "cnn":
            if r.spec.method != "ltp":
                continue
            key = ("bn", bool(r.spec.model_kwargs.get("batch_norm", True)), r.spec.hparams.get("penalty", "l0"),
                   r.spec.hparams.get("penalty_weight"))
            if key in seen:
                continue
            seen.add(key)
            rec = _run_record(r)
            rec.update(batch_norm=key[1], penalty=key[2], penalty_weight=r.spec.hparams.get("penalty_weight", 3.0),
                       widths=r.spec.model_kwargs.get("widths"), dense_val_top1=num(r.metrics.get("dense_val_top1")),
                       dense_test_top1=num(r.metrics.get("dense_test_top1")))
            bn.append(rec)
            continue
        entry = models.setdefault(r.spec.model, {
            "dense": {"val_top1": num(r.metrics.get("dense_val_top1")), "test_top1": num(r.metrics.get("dense_test_top1"))},
            "dense_budget": dict(r.spec.dense), "budget": dict(r.spec.retrain), "rows": {}, "trail_runs": []})
        if _is_trail_run(r):
            entry["trail_runs"].append(_run_record(r))
            continue
        entry.setdefault("dense_by_seed", {})[r.spec.seed] = {
            "val_top1": num(r.metrics.get("dense_val_top1")), "test_top1": num(r.metrics.get("dense_test_top1"))}
        row = entry["rows"].setdefault(float(r.spec.target), {})
        if r.spec.method not in row:
            row[r.spec.method] = _run_record(r)
        row.setdefault("by_seed", {}).setdefault(r.spec.method, {}).setdefault(r.spec.seed, {
            "val_top1": num(r.metrics.get("final_val_top1")), "test_top1": num(r.metrics.get("final_test_top1")),
            "compression_ratio": num(r.metrics.get("compression_ratio")),
            "dense_test_top1": num(r.metrics.get("dense_test_top1"))})
    for entry in models.values():
        entry["rows"] = [dict(row, target=t, target_compression=1.0 / (1.0 - t))
                         for t, row in sorted(entry["rows"].items())]
    bn.sort(key=lambda e: (not e["batch_norm"], ["l0", "l1", "l2"].index(e["penalty"]) if e["penalty"] in
                           ("l0", "l1", "l2") else 9))
    return {"models": models, "bn_study": bn}
