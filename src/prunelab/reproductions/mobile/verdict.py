"""The ``mobile`` report's computed claims: does LTP keep its edge over GMP (per model and
compression, with the differences), and which layers LTP prunes least (with their kinds)."""

from __future__ import annotations

import math

__all__ = ["NOISE_FACTOR", "ONE_SEED_MARGIN", "KINDS", "edge_verdict", "model_verdicts", "overall_verdict", "layer_kind", "least_pruned",
           "kind_sparsity"]

#: a mean LTP − GMP difference is an edge when it exceeds this many standard errors of the mean
#: over the seeds (the per-seed differences are paired: both methods start from that seed's dense model).
NOISE_FACTOR = 2.0
#: with one seed there is no spread to measure: a difference counts as an edge when it exceeds this
#: many points of test top-1 (a fraction). It is a fixed, conservative guess of seed-to-seed noise
#: at these budgets, not a measurement; three seeds (``mobile-3seeds``) replace it with the
#: measured spread.
ONE_SEED_MARGIN = 0.02
#: the kinds of prunable weight in a mobile network, in the report's order.
KINDS = ("stem", "depthwise", "pointwise", "SE", "classifier", "other")


def edge_verdict(ltp: dict, gmp: dict, noise_factor: float = NOISE_FACTOR) -> dict:
    """LTP's edge over GMP at one model and compression, from their test top-1 per seed.

    Args:
        ltp: ``seed -> test top-1`` of LTP (None entries are ignored).
        gmp: the same for GMP.
        noise_factor: how many standard errors the mean difference must exceed.

    Returns:
        ``{"seeds", "differences" (seed -> LTP − GMP), "mean", "sd" (sample standard deviation of
        the differences; None below two seeds), "noise" (``noise_factor`` · sd / √n; with one seed
        :data:`ONE_SEED_MARGIN`), "verdict"}``; the verdict is ``"LTP ahead"`` or ``"GMP ahead"``
        when ``|mean| > noise``, ``"unclear"`` when within it, ``"not measured"`` when no seed
        has both methods.

    Example:
        >>> edge_verdict({0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.78, 1: 0.79, 2: 0.79})["verdict"]
        'LTP ahead'
    """
    seeds = sorted(s for s in ltp if s in gmp and ltp[s] is not None and gmp[s] is not None)
    diffs = {s: ltp[s] - gmp[s] for s in seeds}
    n = len(seeds)
    mean = sum(diffs.values()) / n if n else None
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs.values()) / (n - 1)) if n > 1 else None
    noise = ONE_SEED_MARGIN if n == 1 else None if sd is None else noise_factor * sd / math.sqrt(n)
    if n == 0:
        verdict = "not measured"
    elif abs(mean) <= noise:
        verdict = "unclear"
    else:
        verdict = "LTP ahead" if mean > 0 else "GMP ahead"
    return {"seeds": seeds, "differences": diffs, "mean": mean, "sd": sd, "noise": noise, "verdict": verdict}


def model_verdicts(cells: dict, noise_factor: float = NOISE_FACTOR) -> dict:
    """The edge verdict of one model at every target both methods ran, and its summary.

    Args:
        cells: ``{method: {target: {seed: run}}}`` (a model of
            :func:`~prunelab.reproductions.mobile.collect.collect`'s output, key ``cells``).
        noise_factor: see :func:`edge_verdict`.

    Returns:
        ``{"targets": {target: edge verdict}, "keeps_edge"}``: ``"yes"`` when LTP is ahead at every
        target, ``"no"`` when GMP is ahead at one, otherwise ``"unclear"`` (also with no target).
    """
    ltp, gmp = cells.get("ltp", {}), cells.get("gmp", {})
    targets = {t: edge_verdict({s: r["test_top1"] for s, r in ltp[t].items()},
                               {s: r["test_top1"] for s, r in gmp[t].items()}, noise_factor)
               for t in sorted(set(ltp) & set(gmp))}
    verdicts = [v["verdict"] for v in targets.values()]
    if verdicts and all(v == "LTP ahead" for v in verdicts):
        keeps = "yes"
    elif "GMP ahead" in verdicts:
        keeps = "no"
    else:
        keeps = "unclear"
    return {"targets": targets, "keeps_edge": keeps}


def overall_verdict(per_model: dict) -> str:
    """``"yes"`` when LTP keeps its edge on every model, ``"no"`` when on none (GMP ahead somewhere
    on each), ``"mixed"`` when on some and not others, otherwise ``"unclear"``.

    Args:
        per_model: ``model -> model_verdicts(...)``.

    Returns:
        The overall verdict.
    """
    keeps = [v["keeps_edge"] for v in per_model.values()]
    if keeps and all(k == "yes" for k in keeps):
        return "yes"
    if keeps and all(k == "no" for k in keeps):
        return "no"
    if "yes" in keeps and "no" in keeps:
        return "mixed"
    return "unclear"


def layer_kind(name: str, shape=None) -> str:
    """The kind of a prunable weight of a mobile network, from its name (and shape).

    Args:
        name: the parameter's name, e.g. ``"blocks.3.depthwise.convs.0.weight"``.
        shape: its shape; tells depthwise (``(C, 1, k, k)``, k > 1) and pointwise (``(O, I, 1, 1)``)
            convs apart when the name does not.

    Returns:
        One of :data:`KINDS`: ``"classifier"`` (the final Linear), ``"SE"`` (squeeze-excite
        reduce / expand), ``"depthwise"``, ``"stem"``, ``"pointwise"`` (1×1 expansion, projection
        and head), or ``"other"``.

    Example:
        >>> layer_kind("blocks.2.se.reduce.weight"), layer_kind("head.0.weight", (1280, 80, 1, 1))
        ('SE', 'pointwise')
    """
    parts = name.split(".")
    if parts[0] == "classifier":
        return "classifier"
    if "se" in parts:
        return "SE"
    if "depthwise" in parts:
        return "depthwise"
    if parts[0] == "stem":
        return "stem"
    if "expand" in parts or "project" in parts or parts[0] == "head":
        return "pointwise"
    if shape is not None and len(shape) == 4:
        if shape[1] == 1 and shape[2] * shape[3] > 1:
            return "depthwise"
        if shape[2] == shape[3] == 1:
            return "pointwise"
    return "other"


def least_pruned(layers: list, count: int = 3) -> list:
    """The ``count`` least-pruned layers, sparsity ascending (ties: network order).

    Args:
        layers: per-layer dicts with ``name``, ``shape``, ``params`` and ``sparsity`` (a run's
            ``RunResult.layers``).
        count: how many.

    Returns:
        ``[{"name", "kind", "sparsity", "params"}]``.

    Example:
        >>> least_pruned([{"name": "classifier.weight", "shape": [10, 8], "params": 80, "sparsity": 0.5},
        ...               {"name": "stem.0.weight", "shape": [8, 1, 3, 3], "params": 72, "sparsity": 0.25}], 1)
        [{'name': 'stem.0.weight', 'kind': 'stem', 'sparsity': 0.25, 'params': 72}]
    """
    ranked = sorted(enumerate(layers), key=lambda il: (il[1]["sparsity"], il[0]))
    return [{"name": layer["name"], "kind": layer_kind(layer["name"], layer.get("shape")), "sparsity": layer["sparsity"],
             "params": layer["params"]} for _, layer in ranked[:count]]


def kind_sparsity(layers: list) -> dict:
    """The sparsity of every kind of layer (its pruned weights over its weights).

    Args:
        layers: per-layer dicts with ``name``, ``shape``, ``params`` and ``nonzero``.

    Returns:
        ``{kind: {"layers", "params", "nonzero", "sparsity"}}`` in :data:`KINDS` order, kinds
        without a layer left out.
    """
    out: dict = {}
    for layer in layers:
        entry = out.setdefault(layer_kind(layer["name"], layer.get("shape")), {"layers": 0, "params": 0, "nonzero": 0})
        entry["layers"] += 1
        entry["params"] += layer["params"]
        entry["nonzero"] += layer["nonzero"]
    return {kind: {**out[kind], "sparsity": 1 - out[kind]["nonzero"] / out[kind]["params"] if out[kind]["params"] else 0.0}
            for kind in KINDS if kind in out}
