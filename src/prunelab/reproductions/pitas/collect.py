"""The ``pitas`` suite's runs of a result store, per model and method, and when each retrained
network first got back within each gap of the dense accuracy (experiment 3)."""

from __future__ import annotations

from prunelab.harness.runner import RunSpec
from prunelab.reproductions.pitas.protocol import GAPS, METHODS

__all__ = ["time_to_target", "gap_key", "display_name", "collect"]


def time_to_target(trace, dense_top1: float, pruned_top1: float | None, prune_seconds: float,
                   gaps=GAPS, key: str = "val_top1") -> dict:
    """When a retrained network first got within each gap of the dense accuracy.

    Args:
        trace: the retraining history, one dict per epoch in order, with ``key`` (accuracy as a
            fraction) and ``seconds`` (that epoch's wall time).
        dense_top1: the dense model's accuracy (fraction) on the same split.
        pruned_top1: the accuracy right after pruning (epoch 0), or None.
        prune_seconds: the prune phase's wall time (counted in every total).
        gaps: distances below ``dense_top1``, in points (0.5 = half a percentage point).
        key: the accuracy field of ``trace``.

    Returns:
        ``{gap: {...}}`` with, for every gap, ``threshold`` (fraction), ``reached``, ``epoch``
        (0 = already after pruning), ``retrain_seconds`` and ``seconds`` (prune + retraining up
        to that epoch's end), ``top1`` there; when not reached, ``epoch``/``seconds`` are None,
        ``epochs_run`` says how many epochs were tried and ``seconds_at_least`` is prune time +
        all of them.
    """
    out = {}
    for gap in gaps:
        threshold = dense_top1 - gap / 100.0
        # Accuracies are k/n fractions; a hair of slack keeps "exactly at the threshold" reached.
        hit = lambda acc: acc is not None and acc >= threshold - 1e-9  # noqa: E731
        entry = {"gap": gap, "threshold": threshold, "reached": False, "epoch": None, "retrain_seconds": None,
                 "seconds": None, "top1": None, "epochs_run": len(trace),
                 "seconds_at_least": prune_seconds + sum(float(r.get("seconds", 0.0)) for r in trace)}
        if hit(pruned_top1):
            entry.update(reached=True, epoch=0, retrain_seconds=0.0, seconds=prune_seconds, top1=pruned_top1)
        else:
            elapsed = 0.0
            for i, row in enumerate(trace):
                elapsed += float(row.get("seconds", 0.0))
                if hit(row.get(key)):
                    entry.update(reached=True, epoch=int(row.get("epoch", i + 1)), retrain_seconds=elapsed,
                                 seconds=prune_seconds + elapsed, top1=row[key])
                    break
        out[gap_key(gap)] = entry
    return out


def gap_key(gap: float) -> str:
    """The key of a gap in the results (``"0.5"``, ``"1"``)."""
    return f"{gap:g}"


def display_name(spec: RunSpec, methods=METHODS) -> str:
    """The suite's name of a run's method (``FeTa``, ``L-OBS`` ...); other methods keep ``spec.label``."""
    return next((name for name, method, _ in methods if method == spec.method), spec.label)


def _hidden_sparsity(layers: list) -> float | None:
    """Sparsity of every prunable layer but the last (the paper's "hidden" layers)."""
    hidden = layers[:-1]
    total = sum(layer.get("params", 0) for layer in hidden)
    if not total:
        return None
    return 1.0 - sum(layer.get("nonzero", 0) for layer in hidden) / total


def collect(results, methods=METHODS, gaps=GAPS) -> dict:
    """The one-shot runs of a store, per model and method.

    Args:
        results: :class:`~prunelab.harness.runner.RunResult` objects (e.g. ``Store.results()``).
        methods: the display-name table.
        gaps: the gaps of experiment 3, in points.

    Returns:
        ``{model: {"dataset", "dense": {val_top1, test_top1, seconds, budget}, "methods": {name:
        {"label", "hparams", "calib_size", "points": [per target: target, sparsity,
        sparsity_hidden, pruned_test_top1, pruned_val_top1, prune_s], "retrain": None or {target,
        epochs, budget, prune_s, pruned_val_top1, final_test_top1, final_val_top1, trace: [epoch,
        val_top1, seconds], time_to: time_to_target(...)}}}}}``. With several seeds the lowest
        is kept; a method name used by two variants falls back to the run label.
    """
    out: dict = {}
    results = sorted((r for r in results if r.family == "oneshot"), key=lambda r: (r.spec.seed, r.spec.target))
    names: dict = {}
    for r in results:
        names.setdefault((r.spec.model, display_name(r.spec, methods)), set()).add(r.label)
    for r in results:
        m = r.metrics
        model = out.setdefault(r.spec.model, {"dataset": r.spec.dataset, "dense": None, "methods": {}})
        if model["dense"] is None:
            model["dense"] = {"val_top1": m.get("dense_val_top1"), "test_top1": m.get("dense_test_top1"),
                              "seconds": m.get("time_dense_train"), "budget": r.spec.dense, "seed": r.spec.seed}
        if r.spec.seed != model["dense"]["seed"]:
            continue
        name = display_name(r.spec, methods)
        if len(names[(r.spec.model, name)]) > 1:
            name = r.label
        entry = model["methods"].setdefault(name, {"method": r.spec.method, "label": r.label,
                                                   "hparams": r.spec.hparams, "calib_size": r.spec.calib_size,
                                                   "points": [], "retrain": None})
        prune_s = m.get("time_prune")
        entry["points"].append({"target": r.spec.target, "sparsity": m.get("sparsity"),
                                "sparsity_hidden": _hidden_sparsity(r.layers),
                                "pruned_test_top1": m.get("pruned_test_top1"),
                                "pruned_val_top1": m.get("pruned_val_top1"), "prune_s": prune_s})
        trace = r.traces.get("retrain") or []
        if trace:
            slim = [{"epoch": row.get("epoch", i + 1), "val_top1": row.get("val_top1"), "seconds": row.get("seconds")}
                    for i, row in enumerate(trace)]
            entry["retrain"] = {
                "target": r.spec.target, "epochs": len(trace), "budget": r.spec.retrain, "prune_s": prune_s,
                "pruned_val_top1": m.get("pruned_val_top1"), "pruned_test_top1": m.get("pruned_test_top1"),
                "final_val_top1": m.get("final_val_top1"), "final_test_top1": m.get("final_test_top1"),
                "retrain_s": m.get("time_retrain"), "trace": slim,
                "time_to": time_to_target(slim, m.get("dense_val_top1"), m.get("pruned_val_top1"), prune_s or 0.0,
                                          gaps)}
    order = [name for name, _, _ in methods]
    for model in out.values():
        model["methods"] = dict(sorted(model["methods"].items(),
                                       key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return out
