"""The latent-dimensionality study of Pitas, Davies & Vandergheynst 2019 (arXiv:1905.08793).

Their generalisation bound (after Sokolić et al. 2017) has a term exponential in the data's
latent dimension ``M``; so hard thresholding without retraining should hurt more the higher the
latent dimensionality of the data (their PCA study, code ``create_model_Cifar_with_pca.py``).

PCA is fitted on the **training split only**; the authors fitted it on the *test* set, which
leaks the test distribution into the inputs. Every split is replaced by its reconstruction from
the first ``k`` components (project, inverse-transform), the same model is trained on each
version, its first prunable layer is hard-thresholded at each sparsity, and the drops are
averaged over seeds. Beside ``k``, the Levina–Bickel intrinsic dimension of each version
(:func:`prunelab.reproductions.pitas.intrinsic_dim.levina_bickel`) is recorded, so the claim can
be read against a measured dimensionality.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from prunelab.data import Dataset, Split
from prunelab.errors import ConfigError
from prunelab.reproductions.pitas.budgets import (
    BUDGETS, HEADLINE_SPARSITY, StudyBudget, check_sparsities, limit_test, limit_train, log_to_stderr, train_dense,
)
from prunelab.reproductions.pitas.evaluator import MaskedEvaluator
from prunelab.reproductions.pitas.intrinsic_dim import fit_pca, levina_bickel
from prunelab.reproductions.pitas.stats import mean_std, nearest, rank_verdict, spearman
from prunelab.reproductions.pitas.study_files import dataset_info, study_key
from prunelab.reproductions.pitas.thresholding import layer_threshold_masks, resolve_layers, thresholder

__all__ = ["run_latent_study", "assess_latent"]


def _restricted(pca, k: int, train: Split, evaluated: Split) -> tuple[Split, Split]:
    return (Split(pca.restrict(train.x, k), train.y), Split(pca.restrict(evaluated.x, k), evaluated.y))


def run_latent_study(
    data: Dataset,
    model_name: str,
    model_kwargs: dict | None = None,
    *,
    ks: Sequence[int] = (10, 20, 50, 100, 784),
    budget: StudyBudget = BUDGETS["standard"],
    layer: int | str = 1,
    method: str = "magnitude",
    id_k: tuple[int, int] = (10, 20),
    id_samples: tuple[int, int] = (1000, 10000),
    log: Callable[[str], None] | None = log_to_stderr,
) -> dict:
    """Train on PCA-``k`` versions of a data set and hard-threshold the first layer.

    Args:
        data: the data set; PCA is fitted on its training split (capped at ``budget.train_limit``).
        model_name: registered model name.
        model_kwargs: the model's options.
        ks: numbers of principal components; ``k`` equal to the input size means the original data.
        budget: seeds, epochs, sparsities and sample counts (:class:`StudyBudget`).
        layer: the layer pruned (index from 1 or name); the paper prunes the first.
        method: ``"magnitude"`` or ``"histogram"`` (see :func:`layer_threshold_masks`).
        id_k: ``(k1, k2)`` neighbourhood sizes of the Levina–Bickel estimator.
        id_samples: ``(queries, reference points)`` of the estimator, drawn from the training split.
        log: receives progress lines (None: silent).

    Returns:
        A JSON-able dict: ``versions`` (per ``k``: explained variance, intrinsic dimension), ``dense``,
        ``rows`` (per ``k``, seed, sparsity: ``top1``, ``drop``), ``summary`` and ``claims``
        (:func:`assess_latent`).
    """
    log = log or (lambda line: None)
    model_kwargs = dict(model_kwargs or {})
    sparsities = check_sparsities(budget.sparsities)
    thresholder(method)
    dim = math.prod(data.in_shape)
    ks = sorted({int(k) for k in ks})
    if not ks or any(not 1 <= k <= dim for k in ks):
        raise ConfigError(f"numbers of components must be integers in [1, {dim}] (the input size), got {list(ks)}")
    train_split = limit_train(data, budget.train_limit)
    evaluated = limit_test(data, budget.eval_samples)
    tag = f"[latent {model_name}]"
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    pca = fit_pca(train_split.x)
    log(f"{tag} PCA fitted on {len(train_split)} training samples ({time.perf_counter() - t0:.1f}s)")
    versions, dense, rows, config, layer_name = [], [], [], None, None
    for k in ks:
        train_k, eval_k = _restricted(pca, k, train_split, evaluated)
        t0 = time.perf_counter()
        estimate = levina_bickel(train_k.x, k1=id_k[0], k2=id_k[1], n_query=id_samples[0], n_reference=id_samples[1])
        versions.append({"k": k, "explained_variance": pca.explained(k), "intrinsic_dim": estimate["dimension"],
                         "intrinsic_dim_per_k": {str(kk): v for kk, v in estimate["per_k"].items()}})
        log(f"{tag} k={k}: {pca.explained(k):.1%} of the variance, Levina-Bickel dimension "
            f"{estimate['dimension']:.2f} ({time.perf_counter() - t0:.1f}s)")
        data_k = dataclasses.replace(data, train=train_k, val=Split(train_k.x[:0], train_k.y[:0]), test=eval_k)
        for seed in budget.seeds:
            model, seconds = train_dense(model_name, model_kwargs, data_k, train_k, budget, seed)
            config = model.prunelab_config
            layer_name = resolve_layers(model, [layer])[0]
            evaluator = MaskedEvaluator(model, eval_k)
            base = evaluator.top1({})
            dense.append({"k": k, "seed": seed, "top1": base, "train_seconds": seconds})
            for s in sparsities:
                keep = layer_threshold_masks(model, s, method)[layer_name]
                acc = evaluator.top1({layer_name: keep})
                rows.append({"k": k, "seed": seed, "sparsity": s, "achieved": 1.0 - int(keep.sum()) / keep.numel(),
                             "top1": acc, "drop": 100.0 * (base - acc)})
            high = nearest(sparsities, HEADLINE_SPARSITY)
            drop = next(r["drop"] for r in rows if r["k"] == k and r["seed"] == seed and r["sparsity"] == high)
            log(f"{tag} k={k} seed {seed}: dense top-1 {base:.2%} (trained {seconds:.1f}s), drop at {high:.0%} "
                f"of {layer_name}: {drop:.1f} pts")
    results = {
        "study": "latent",
        "paper": ("Pitas, Davies, Vandergheynst 2019 (arXiv:1905.08793): generalisation bound exponential in the latent "
                  "dimension; PCA study of the authors' create_model_Cifar_with_pca.py"),
        "key": study_key("latent", data.name, config, method, ks, layer_name),
        "dataset": dataset_info(data, train_split, evaluated),
        "model": config,
        "method": method,
        "layer": layer_name,
        "train": {k: v for k, v in budget.train_config(0).to_dict().items() if k != "seed"},
        "seeds": list(budget.seeds),
        "sparsities": list(sparsities),
        "ks": ks,
        "pca": {"fitted_on": f"training split ({len(train_split)} samples)", "input_dim": dim},
        "intrinsic_dim_method": {"estimator": "Levina-Bickel MLE, inverse estimates averaged over points (MacKay-Ghahramani), averaged over k",
                                 "k1": id_k[0], "k2": id_k[1], "n_query": id_samples[0], "n_reference": id_samples[1]},
        "versions": versions,
        "dense": dense,
        "rows": rows,
        "seconds": time.perf_counter() - t_start,
        "notes": [
            "PCA is fitted on the training split only; Pitas et al. fitted it on the test set (create_model_Cifar_with_pca.py)",
            "every split is replaced by its reconstruction from the first k components; k = input size is the original data",
            f"only {layer_name} is hard-thresholded; no retraining; drop = dense top-1 minus pruned top-1, in points",
        ],
    }
    results["summary"] = _summarize_latent(rows)
    results["claims"] = assess_latent(results)
    log(f"{tag} done in {results['seconds']:.0f}s; " + results["claims"]["text"])
    return results


def _summarize_latent(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["k"], r["sparsity"]), []).append(r)
    out = []
    for (k, s), rs in sorted(groups.items()):
        drop_mean, drop_std = mean_std([r["drop"] for r in rs])
        out.append({"k": k, "sparsity": s, "drop_mean": drop_mean, "drop_std": drop_std,
                    "top1_mean": float(np.mean([r["top1"] for r in rs])), "n": len(rs)})
    return out


def assess_latent(results: dict) -> dict:
    """Say, with numbers, whether drops grow with latent dimensionality.

    Spearman's ρ between the mean drop at the grid sparsity nearest :data:`HEADLINE_SPARSITY` and
    (a) ``k``, (b) the Levina–Bickel estimate of each version; ρ ≥ 0.5 "holds", ρ ≤ −0.5
    "contradicted", otherwise (or when the mean drops span less than :data:`MIN_SPREAD` points or
    less than two standard errors of a mean over seeds) "inconclusive". ρ at every sparsity ≥ 50 % is listed too.

    Args:
        results: a dict returned by :func:`run_latent_study`.

    Returns:
        ``{"headline_sparsity", "vs_k", "vs_intrinsic_dim", "drops", "text"}``.
    """
    high = nearest(results["sparsities"], HEADLINE_SPARSITY)
    dims = {v["k"]: v["intrinsic_dim"] for v in results["versions"]}

    def series(s):
        rs = sorted((r for r in results["summary"] if r["sparsity"] == s), key=lambda r: r["k"])
        return [r["k"] for r in rs], [dims[r["k"]] for r in rs], [r["drop_mean"] for r in rs], rs

    ks, ids, drops, rows = series(high)
    vs_k, vs_id = spearman(ks, drops), spearman(ids, drops)
    fmt = lambda x: "n/a" if x is None else f"{x:+.2f}"  # noqa: E731
    claims = {
        "headline_sparsity": high,
        "vs_k": {"spearman": vs_k, "verdict": rank_verdict(vs_k, rows),
                 "spearman_by_sparsity": {str(s): spearman(series(s)[0], series(s)[2]) for s in results["sparsities"] if s >= 0.5}},
        "vs_intrinsic_dim": {"spearman": vs_id, "verdict": rank_verdict(vs_id, rows)},
        "drops": {str(k): round(d, 3) for k, d in zip(ks, drops)},
    }
    claims["text"] = (
        f"at {high:.0%} sparsity of {results['layer']}: claim (2) {claims['vs_k']['verdict']} against k "
        f"(Spearman rho(k, drop) = {fmt(vs_k)}) and {claims['vs_intrinsic_dim']['verdict']} against the measured "
        f"intrinsic dimension (rho = {fmt(vs_id)}); drops by k: "
        + ", ".join(f"{k}: {d:.1f}" for k, d in zip(ks, drops))
    )
    return claims
