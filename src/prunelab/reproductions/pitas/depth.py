"""The depth study of Pitas, Davies & Vandergheynst 2019 (arXiv:1905.08793).

Their theory (after the robustness bound of Sokolić et al. 2017) bounds the margin lost when layer
``i`` is perturbed by ``‖E_i‖₂ · Π_{j>i} ‖W_j‖₂``, a product over the layers that remain after
``i``; so hard thresholding without retraining should hurt more the more layers remain after the
pruned one (their layer-wise CIFAR-10 study, code ``create_model_Cifar.py``).

For each seed (a separately trained dense model: seeds set the initialisation and the batch
order), for each prunable layer ``i`` (module order, 1-based) and each sparsity ``s``,
:func:`run_depth_study` hard-thresholds *only* layer ``i``, and separately *all* layers ``≥ i``,
with no retraining, and measures the test top-1. The drop is dense top-1 minus pruned top-1, in
percentage points. The paper's additive prediction (code ``plot_mul_sum_GE.py``) is
``drop(≥ i) ≈ Σ_{j ≥ i} drop(only j)``, computed per seed and then averaged.
:func:`assess_depth` states, with numbers, whether each claim holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from prunelab.core.masks import prunable_parameters
from prunelab.data import Dataset
from prunelab.errors import ConfigError
from prunelab.reproductions.pitas.budgets import (
    BUDGETS, HEADLINE_SPARSITY, StudyBudget, check_sparsities, limit_test, limit_train, log_to_stderr, train_dense,
)
from prunelab.reproductions.pitas.evaluator import MaskedEvaluator
from prunelab.reproductions.pitas.stats import mean_std, nearest, rank_verdict, spearman
from prunelab.reproductions.pitas.study_files import dataset_info, study_key
from prunelab.reproductions.pitas.thresholding import layer_threshold_masks, thresholder

__all__ = ["run_depth_study", "assess_depth"]


def run_depth_study(
    data: Dataset,
    model_name: str,
    model_kwargs: dict | None = None,
    *,
    budget: StudyBudget = BUDGETS["standard"],
    method: str = "magnitude",
    trained: Sequence[nn.Module] | None = None,
    log: Callable[[str], None] | None = log_to_stderr,
) -> dict:
    """Hard-threshold only layer ``i``, and all layers ``≥ i``, of trained models (no retraining).

    Args:
        data: the data set (its test split is evaluated, capped at ``budget.eval_samples``).
        model_name: registered model name (see ``prunelab.models.registry.list()``).
        model_kwargs: the model's options.
        budget: seeds, training epochs, sparsities and sample counts (:class:`StudyBudget`).
        method: ``"magnitude"`` (exact per-layer fraction) or ``"histogram"`` (the paper's).
        trained: already trained models to study instead of training one per seed (each one
            counts as a seed; ``budget.seeds`` then only labels them).
        log: receives progress lines (None: silent).

    Returns:
        A JSON-able dict: ``layers``, ``dense`` (top-1 per seed), ``rows`` (one per seed, mode
        ``"single"``/``"from"``, layer and sparsity: ``top1``, ``drop`` in points, achieved
        ``sparsity`` of the pruned layers), ``summary`` (means ± std over seeds), ``additive``
        (measured joint drop vs the sum of single-layer drops) and ``claims``
        (:func:`assess_depth`).

    Example:
        >>> data = prunelab.data.load("fashion-mnist")
        >>> res = run_depth_study(data, "conv6", {"widths": [8, 16, 32], "dense": [128, 64]},
        ...                       budget=BUDGETS["quick"])
        >>> res["claims"]["remaining_depth_single"]["verdict"]
    """
    log = log or (lambda line: None)
    model_kwargs = dict(model_kwargs or {})
    sparsities = check_sparsities(budget.sparsities)
    thresholder(method)  # fail before training when the method is missing
    train_split = limit_train(data, budget.train_limit)
    evaluated = limit_test(data, budget.eval_samples)
    seeds = list(budget.seeds) if trained is None else list(range(len(trained)))
    if not seeds:
        raise ConfigError("the depth study needs at least one seed (or one trained model)")
    t_start = time.perf_counter()
    tag = f"[depth {model_name}]"
    rows, dense, layers, config = [], [], None, None
    for run, seed in enumerate(seeds):
        if trained is None:
            model, seconds = train_dense(model_name, model_kwargs, data, train_split, budget, seed)
        else:
            model, seconds = trained[run].eval(), 0.0
        config = getattr(model, "prunelab_config", {"name": model_name, "kwargs": model_kwargs})
        names = list(prunable_parameters(model))
        if layers is None:
            layers = [{"index": i + 1, "name": n, "numel": p.numel(), "remaining": len(names) - i - 1}
                      for i, (n, p) in enumerate(prunable_parameters(model).items())]
        elif [l["name"] for l in layers] != names:
            raise ConfigError("the trained models given to the depth study do not share one architecture")
        evaluator = MaskedEvaluator(model, evaluated)
        base = evaluator.top1({})
        dense.append({"seed": seed, "top1": base, "train_seconds": seconds})
        log(f"{tag} seed {seed}: dense test top-1 {base:.2%} (trained {seconds:.1f}s); "
            f"{len(names)} layers x {len(sparsities)} sparsities")
        per_s = {s: layer_threshold_masks(model, s, method) for s in sparsities}
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            for s in sparsities:
                for mode, chosen in (("single", names[i : i + 1]), ("from", names[i:])):
                    if mode == "from" and len(chosen) == 1:
                        acc = rows[-1]["top1"]  # "≥ last layer" is "only the last layer"
                    elif all(bool(per_s[s][n].all()) for n in chosen):
                        acc = base  # nothing pruned (sparsity 0, or a histogram bin that keeps all)
                    else:
                        acc = evaluator.top1({n: per_s[s][n] for n in chosen})
                    kept = sum(int(per_s[s][n].sum()) for n in chosen)
                    total = sum(per_s[s][n].numel() for n in chosen)
                    rows.append({"seed": seed, "mode": mode, "layer": i + 1, "name": name,
                                 "remaining": len(names) - i - 1, "sparsity": s,
                                 "achieved": 1.0 - kept / total, "top1": acc, "drop": 100.0 * (base - acc)})
            high = nearest(sparsities, HEADLINE_SPARSITY)
            single = next(r for r in rows if r["seed"] == seed and r["mode"] == "single" and r["layer"] == i + 1 and r["sparsity"] == high)
            joint = next(r for r in rows if r["seed"] == seed and r["mode"] == "from" and r["layer"] == i + 1 and r["sparsity"] == high)
            log(f"{tag} seed {seed} layer {i + 1}/{len(names)} {name}: drop at {high:.0%}: only this "
                f"{single['drop']:.1f} pts, layers >= {i + 1} {joint['drop']:.1f} pts ({time.perf_counter() - t0:.1f}s)")
    results = {
        "study": "depth",
        "paper": ("Pitas, Davies, Vandergheynst 2019 (arXiv:1905.08793): margin bound over the remaining layers; "
                  "layer-wise study of the authors' create_model_Cifar.py"),
        "key": study_key("depth", data.name, config, method),
        "dataset": dataset_info(data, train_split, evaluated),
        "model": config,
        "method": method,
        "train": {k: v for k, v in budget.train_config(0).to_dict().items() if k != "seed"} if trained is None else None,
        "seeds": seeds,
        "sparsities": list(sparsities),
        "layers": layers,
        "dense": dense,
        "rows": rows,
        "seconds": time.perf_counter() - t_start,
        "notes": [
            "no retraining after pruning; drop = dense top-1 minus pruned top-1 on the evaluated test samples, in points",
            "each seed is a separately trained dense model (initialisation and batch order)",
            "hard thresholding: " + ("exactly round(s*n) smallest |w| per layer" if method == "magnitude"
                                     else "the paper's 100-bin histogram threshold per layer (approximate fraction)"),
            "additive prediction (paper's plot_mul_sum_GE.py): drop(layers >= i) ~ sum over j >= i of drop(only j), per seed, then averaged",
        ],
    }
    results["summary"], results["additive"] = _summarize_depth(rows, seeds)
    results["claims"] = assess_depth(results)
    log(f"{tag} done in {results['seconds']:.0f}s; " + results["claims"]["text"])
    return results


def _summarize_depth(rows: list[dict], seeds: list[int]) -> tuple[list[dict], list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["layer"], r["sparsity"]), []).append(r)
    summary = []
    for (mode, layer, s), rs in sorted(groups.items()):
        drop_mean, drop_std = mean_std([r["drop"] for r in rs])
        summary.append({"mode": mode, "layer": layer, "name": rs[0]["name"], "remaining": rs[0]["remaining"],
                        "sparsity": s, "drop_mean": drop_mean, "drop_std": drop_std,
                        "top1_mean": float(np.mean([r["top1"] for r in rs])), "n": len(rs)})
    single = {(r["seed"], r["layer"], r["sparsity"]): r["drop"] for r in rows if r["mode"] == "single"}
    additive = []
    for (mode, layer, s), rs in sorted(groups.items()):
        if mode != "from":
            continue
        later = sorted({l for (_, l, _) in single if l >= layer})
        predicted = [sum(single[(seed, l, s)] for l in later) for seed in seeds]
        measured = [next(r["drop"] for r in rs if r["seed"] == seed) for seed in seeds]
        m_mean, m_std = mean_std(measured)
        p_mean, p_std = mean_std(predicted)
        additive.append({"layer": layer, "layers_pruned": len(later), "sparsity": s, "measured_mean": m_mean,
                         "measured_std": m_std, "predicted_mean": p_mean, "predicted_std": p_std})
    return summary, additive


def assess_depth(results: dict) -> dict:
    """Say, with numbers, whether the depth study supports the paper's claims.

    Claim (1) is read off the single-layer runs: Spearman's ρ between a layer's remaining depth
    (prunable layers after it) and its mean drop, at the grid sparsity nearest
    :data:`HEADLINE_SPARSITY` (also listed for every sparsity ≥ 50 %). ρ ≥ 0.5: "holds";
    ρ ≤ −0.5: "contradicted"; otherwise, or when the mean drops span less than :data:`MIN_SPREAD`
    points or less than two standard errors of a mean over seeds, "inconclusive". The verdict leaves out the last layer (the classifier), as the
    paper's CIFAR study prunes layers 1–8 of 9; ρ with it is listed too, and so is ρ between the
    drop and the layer's weight count, because small layers are the least redundant and, in
    these networks, the early ones. In the "layers ≥ i" runs remaining depth and the number of
    pruned layers grow together, so they cannot separate the two; they are reported as well.

    The additive prediction is compared with the measured joint drop for every ``i`` with at
    least two pruned layers, at every sparsity. A drop cannot exceed ``dense − chance`` (the
    *ceiling*), while the sum of single drops can; so the verdict is taken at the highest grid
    sparsity ≤ the headline one at which no prediction exceeds the ceiling: "underestimates"
    (measured − predicted > 1 point on average over ``i``), "overestimates" (< −1), or "matches".

    Args:
        results: a dict returned by :func:`run_depth_study` (``summary`` and ``additive`` set).

    Returns:
        ``{"headline_sparsity", "remaining_depth_single", "remaining_depth_joint", "additive", "text"}``.
    """
    sparsities = results["sparsities"]
    high = nearest(sparsities, HEADLINE_SPARSITY)
    summary = results["summary"]
    sizes = {l["index"]: l["numel"] for l in results.get("layers", [])}

    def by_mode(mode, s, hidden_only=False):
        rs = sorted((r for r in summary if r["mode"] == mode and r["sparsity"] == s
                     and not (hidden_only and r["remaining"] == 0)), key=lambda r: r["layer"])
        return [r["remaining"] for r in rs], [r["drop_mean"] for r in rs], rs

    claims = {"headline_sparsity": high}
    rem, drops, rs = by_mode("single", high, hidden_only=True)
    rem_all, drops_all, rs_all = by_mode("single", high)
    rho, rho_all = spearman(rem, drops), spearman(rem_all, drops_all)
    claims["remaining_depth_single"] = {
        "spearman": rho,
        "verdict": rank_verdict(rho, rs),
        "spearman_with_last": rho_all,
        "verdict_with_last": rank_verdict(rho_all, rs_all),
        "spearman_vs_layer_size": spearman([sizes.get(r["layer"], 0) for r in rs_all], drops_all) if sizes else None,
        "drops": {r["name"]: round(r["drop_mean"], 3) for r in rs_all},
        "spearman_by_sparsity": {str(s): spearman(*by_mode("single", s, True)[:2]) for s in sparsities if s >= 0.5},
    }
    rem, drops, rs = by_mode("from", high)
    rho = spearman(rem, drops)
    claims["remaining_depth_joint"] = {
        "spearman": rho,
        "verdict": rank_verdict(rho, rs),
        "drops": {r["name"]: round(r["drop_mean"], 3) for r in rs},
        "spearman_by_sparsity": {str(s): spearman(*by_mode("from", s)[:2]) for s in sparsities if s >= 0.5},
    }
    claims["additive"] = _assess_additive(results, high)
    single, joint, add = claims["remaining_depth_single"], claims["remaining_depth_joint"], claims["additive"]
    fmt = lambda x: "n/a" if x is None else f"{x:+.2f}"  # noqa: E731
    text = (
        f"at {high:.0%} sparsity: claim (1) on single layers {single['verdict']} (Spearman rho(remaining depth, drop) "
        f"= {fmt(single['spearman'])} without the classifier, {fmt(single['spearman_with_last'])} with it; "
        f"rho(layer size, drop) = {fmt(single['spearman_vs_layer_size'])}); on layers >= i {joint['verdict']} "
        f"(rho = {fmt(joint['spearman'])}, confounded with the number of pruned layers); "
    )
    if add["sparsity"] is None:
        text += "the additive prediction is not applicable (fewer than two layers)"
    else:
        at = add["by_sparsity"][str(add["sparsity"])]
        text += (f"at {add['sparsity']:.0%} the additive prediction {add['verdict']} (measured minus predicted "
                 f"{at['mean_gap']:+.1f} points on average; under for {at['under']}, over for {at['over']} of "
                 f"{at['n']} starting layers)")
        above = add["by_sparsity"].get(str(high), {}).get("above_ceiling", 0)
        if above:
            text += f"; at {high:.0%} {above} of {at['n']} predictions exceed the largest possible drop ({add['ceiling']:.1f} points)"
    claims["text"] = text
    return claims


def _assess_additive(results: dict, high: float) -> dict:
    dense = float(np.mean([d["top1"] for d in results["dense"]])) if results.get("dense") else 1.0
    classes = (results.get("dataset") or {}).get("num_classes")
    ceiling = 100.0 * (dense - (1.0 / classes if classes else 0.0))
    by_sparsity = {}
    for s in results["sparsities"]:
        adds = [a for a in results["additive"] if a["sparsity"] == s and a["layers_pruned"] >= 2]
        if s == 0 or not adds:
            continue
        gaps = [a["measured_mean"] - a["predicted_mean"] for a in adds]
        by_sparsity[str(s)] = {
            "n": len(adds), "mean_gap": float(np.mean(gaps)),
            "under": sum(g > 1.0 for g in gaps), "over": sum(g < -1.0 for g in gaps),
            "above_ceiling": sum(a["predicted_mean"] > ceiling for a in adds),
            "by_layer": [{"from_layer": a["layer"], "measured": round(a["measured_mean"], 3),
                          "predicted": round(a["predicted_mean"], 3)} for a in adds],
        }
    usable = [float(s) for s, v in by_sparsity.items() if float(s) <= high and v["above_ceiling"] == 0]
    chosen = max(usable) if usable else (min(float(s) for s in by_sparsity) if by_sparsity else None)
    if chosen is None:
        verdict = "not applicable (fewer than two layers)"
    else:
        gap = by_sparsity[str(chosen)]["mean_gap"]
        verdict = ("underestimates the joint drop" if gap > 1.0 else "overestimates the joint drop" if gap < -1.0
                   else "matches the joint drop within 1 point")
    return {"sparsity": chosen, "verdict": verdict, "ceiling": ceiling, "by_sparsity": by_sparsity}
