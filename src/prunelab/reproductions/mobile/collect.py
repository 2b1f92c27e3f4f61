"""The ``mobile`` suite's runs of a result store, per model: the dense model per seed, every method's
score per compression and seed, and the per-layer sparsity of the LTP runs at 8×."""

from __future__ import annotations

import math

from prunelab.reproductions.mobile.protocol import LEAST_PRUNED_TARGET, METHODS

__all__ = ["num", "collect"]


def num(x):
    """``x``, or None when it is None or not a finite float (strict JSON)."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _run(r) -> dict:
    m = r.metrics
    out = {"test_top1": num(m.get("final_test_top1")), "val_top1": num(m.get("final_val_top1")),
           "compression": num(m.get("compression_ratio")), "sparsity": num(m.get("sparsity")),
           "seconds": num(m.get("time_total")), "hparams": dict(r.spec.hparams)}
    if r.spec.method == "ltp":
        out.update({k: r.info.get(k) for k in ("target_reached", "filled_fraction", "revived_fraction", "ltp_epochs",
                                               "finetune_epochs")})
    return out


def collect(results, methods=METHODS, layer_target: float = LEAST_PRUNED_TARGET) -> dict:
    """The suite's runs of a store, arranged for the report.

    Args:
        results: :class:`~prunelab.harness.runner.RunResult` objects (e.g. ``Store.results()``).
        methods: the compared methods; runs of others are left out.
        layer_target: the target whose LTP runs' per-layer sparsities are kept.

    Returns:
        ``{model: {"model_kwargs", "data_kwargs", "dense_budget", "budget", "dense": {seed: {val_top1,
        test_top1, seconds, params, macs}}, "cells": {method: {target: {seed: run}}}, "ltp_layers":
        {seed: [layer dicts]}}}``, models in order of first appearance, targets ascending, seeds
        ascending; a run has ``test_top1``, ``val_top1`` (final, after the method's whole budget),
        ``compression``, ``sparsity``, ``seconds`` (the method's wall time, dense training
        excluded), ``hparams`` and, for LTP, ``target_reached``, ``filled_fraction``,
        ``revived_fraction``, ``ltp_epochs`` and ``finetune_epochs``. With two runs of one cell and
        seed (other budgets) the first in store order is kept.
    """
    out: dict = {}
    for r in results:
        if r.spec.method not in methods:
            continue
        m = r.metrics
        entry = out.setdefault(r.spec.model, {
            "model_kwargs": dict(r.spec.model_kwargs), "data_kwargs": dict(r.spec.data_kwargs),
            "dense_budget": dict(r.spec.dense), "budget": dict(r.spec.retrain), "dense": {}, "cells": {},
            "ltp_layers": {}})
        seed, target = int(r.spec.seed), float(r.spec.target)
        entry["dense"].setdefault(seed, {"val_top1": num(m.get("dense_val_top1")), "test_top1": num(m.get("dense_test_top1")),
                                         "seconds": num(m.get("time_dense_train")), "params": m.get("params_total"),
                                         "macs": m.get("flops")})
        cell = entry["cells"].setdefault(r.spec.method, {}).setdefault(target, {})
        if seed in cell:
            continue
        cell[seed] = _run(r)
        if r.spec.method == "ltp" and abs(target - layer_target) < 1e-9 and r.layers:
            entry["ltp_layers"][seed] = [{k: layer.get(k) for k in ("name", "shape", "params", "nonzero", "sparsity")}
                                         for layer in r.layers]
    for entry in out.values():
        entry["dense"] = dict(sorted(entry["dense"].items()))
        entry["ltp_layers"] = dict(sorted(entry["ltp_layers"].items()))
        entry["cells"] = {method: {t: dict(sorted(by_seed.items())) for t, by_seed in sorted(entry["cells"][method].items())}
                          for method in methods if method in entry["cells"]}
    return out
