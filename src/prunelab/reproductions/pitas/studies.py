"""The hard-thresholding studies of Pitas, Davies & Vandergheynst 2019 (arXiv:1905.08793).

The paper's theory (papers.md §1.5) bounds the margin lost when layer ``i`` is perturbed by
``‖E_i‖₂ · Π_{j>i} ‖W_j‖₂`` and the generalisation error by a term exponential in the data's
latent dimension ``M``. It predicts that hard thresholding without retraining hurts more

1. the more layers remain after the pruned layer (the **depth study**, papers.md §1.6(b)), and
2. the higher the latent dimensionality of the data (the **latent study**, papers.md §1.6(c)).

Depth study (:func:`run_depth_study`). For each seed (a separately trained dense model: seeds
set the initialisation and the batch order), for each prunable layer ``i`` (module order,
1-based) and each sparsity ``s``, hard-threshold *only* layer ``i``, and separately *all* layers
``≥ i``, with no retraining, and measure the test top-1. The drop is dense top-1 minus pruned
top-1, in percentage points. The paper's additive prediction (code ``plot_mul_sum_GE.py``) is
``drop(≥ i) ≈ Σ_{j ≥ i} drop(only j)``, computed per seed and then averaged.

Latent study (:func:`run_latent_study`). PCA is fitted on the **training split only**; the
authors fitted it on the *test* set (``create_model_Cifar_with_pca.py``), which leaks the test
distribution into the inputs. Every split is replaced by its reconstruction from the first ``k``
components (project, inverse-transform), the same model is trained on each version, its first
prunable layer is hard-thresholded at each sparsity, and the drops are averaged over seeds.
Beside ``k``, the Levina–Bickel intrinsic dimension of each version
(:func:`prunelab.reproductions.pitas.intrinsic_dim.levina_bickel`) is recorded, so the claim can be read against a
measured dimensionality.

Hard thresholding. By default ``method="magnitude"``: exactly ``round(s · n)`` weights of
smallest ``|w|`` in each pruned layer (prunelab's layer-scope magnitude pruning, deterministic
ties). ``method="histogram"`` uses the paper's 100-bin histogram threshold
(``prunelab.methods.hard_threshold``) when that method is installed; its per-layer sparsity is
only approximate. A layer's mask at sparsity ``s`` depends only on that layer's weights, so the
masks are computed once per (seed, sparsity) and combined.

Speed. prunelab's plain networks are ``nn.Sequential`` with each prunable layer a direct child;
pruning layers ``≥ i`` leaves every activation before layer ``i`` unchanged, so those are
computed once and only the suffix of the network is re-run (exactly the same arithmetic as a full
forward pass). Other models are evaluated in full.

Results are plain JSON-able dicts (:func:`write_results` stores them under
``OUTDIR/studies/``); :func:`plot_depth` and :func:`plot_latent` draw the figures and
:func:`assess_depth` / :func:`assess_latent` state, with numbers, whether each claim holds.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunelab import methods, models
from prunelab.data import Dataset, Split
from prunelab.errors import ConfigError, MethodError
from prunelab.reproductions.pitas.intrinsic_dim import fit_pca, levina_bickel
from prunelab.core.masks import Masks, prunable_parameters
from prunelab.training.loop import TrainConfig, train

__all__ = [
    "SPARSITIES", "StudyBudget", "BUDGETS", "resolve_layers", "layer_threshold_masks",
    "depth_masks", "run_depth_study", "run_latent_study", "assess_depth", "assess_latent",
    "plot_depth", "plot_latent", "write_results", "run_pitas_studies", "HEADLINE_SPARSITY",
    "SUITE_MODELS", "MIN_SPREAD",
]

#: The depth study's grid in the authors' code: ``linspace(0, 95, 20)`` %, i.e. 0, 5, …, 95 %.
SPARSITIES = tuple(round(float(s), 4) for s in np.linspace(0.0, 0.95, 20))

#: Claims are judged at the grid sparsity closest to this (where the paper's curves separate).
HEADLINE_SPARSITY = 0.9

#: Registry names under which the paper's histogram thresholding (methods/hard_threshold.py) is looked up.
_HISTOGRAM_NAMES = ("hard-threshold", "hard_threshold", "histogram")


@dataclass(frozen=True)
class StudyBudget:
    """How much a study trains and measures.

    Attributes:
        seeds: one separately trained dense model per seed.
        epochs: dense training epochs (Adam).
        train_limit: cap on training samples (None: the whole training split).
        eval_samples: test samples evaluated (the first ones; None: the whole test split).
        sparsities: per-layer sparsities of the hard thresholding.
        batch_size: training batch size.
        lr: Adam learning rate.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 4
    train_limit: int | None = None
    eval_samples: int | None = None
    sparsities: tuple[float, ...] = SPARSITIES
    batch_size: int = 128
    lr: float = 1e-3

    def train_config(self, seed: int) -> TrainConfig:
        """The dense-training recipe for one seed."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam", lr=self.lr, seed=seed)

    def replace(self, **changes) -> "StudyBudget":
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


#: Presets. "quick": the reduced run (narrow conv6 depth study: 6.6 min on one core of a busy
#: 2-core machine); "standard": the `pitas-studies` suite budget (both studies, CNN and MLP,
#: estimated at about 20 min on one core); "smoke": for tests.
BUDGETS: dict[str, StudyBudget] = {
    "smoke": StudyBudget(seeds=(0,), epochs=1, train_limit=300, eval_samples=200, sparsities=(0.0, 0.5, 0.9)),
    "quick": StudyBudget(seeds=(0, 1, 2), epochs=3, train_limit=20000, eval_samples=2000,
                         sparsities=(0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)),
    "standard": StudyBudget(seeds=(0, 1, 2), epochs=3, train_limit=30000, eval_samples=5000,
                            sparsities=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)),
}


# --------------------------------------------------------------------------- masks


def resolve_layers(model: nn.Module, layers: Iterable[int | str]) -> list[str]:
    """Parameter names of the prunable layers that ``layers`` designate.

    Args:
        model: the network.
        layers: 1-based indices in module order (``1`` = first prunable layer), or names with or
            without ``.weight`` (``"conv1"``, ``"conv1.weight"``).

    Returns:
        Parameter names, in module order, without repeats.

    Raises:
        ConfigError: an index out of range or a name that is not a prunable layer.
    """
    names = list(prunable_parameters(model))
    chosen = set()
    for layer in layers:
        if isinstance(layer, bool):
            raise ConfigError(f"layer {layer!r} is neither an index nor a name")
        if isinstance(layer, (int, np.integer)):
            if not 1 <= layer <= len(names):
                raise ConfigError(f"layer index {layer} is out of range: the model has {len(names)} prunable layers (1…{len(names)})")
            chosen.add(names[layer - 1])
            continue
        name = layer if str(layer).endswith(".weight") or layer in names else f"{layer}.weight"
        if name not in names:
            raise ConfigError(f"{layer!r} is not a prunable layer; prunable: {', '.join(names)}")
        chosen.add(name)
    return [n for n in names if n in chosen]


def _thresholder(method: str):
    """The one-shot method that hard-thresholds every layer at the same fraction."""
    if method == "magnitude":
        return methods.create("magnitude", scope="layer")
    if method == "histogram":
        for name in _HISTOGRAM_NAMES:
            try:
                cls = methods.get(name)
            except MethodError:
                continue
            fields = {f.name for f in dataclasses.fields(cls.Hparams)}
            # every layer, the classifier included: the study itself chooses which to apply
            return cls(include_last=True) if "include_last" in fields else cls()
        raise MethodError(
            "the paper's 100-bin histogram thresholding (prunelab.methods.hard_threshold) is not "
            "installed in this version; use method 'magnitude' (exact per-layer fraction)"
        )
    raise ConfigError(f"unknown hard-thresholding method {method!r}; choose 'magnitude' or 'histogram'")


def layer_threshold_masks(model: nn.Module, sparsity: float, method: str = "magnitude") -> dict[str, torch.Tensor]:
    """Keep-masks of every prunable layer, each hard-thresholded alone at ``sparsity``.

    The model is not modified (the method runs on a copy).

    Args:
        model: the trained network.
        sparsity: fraction pruned in each layer, in [0, 1).
        method: ``"magnitude"`` (exactly ``round(sparsity · n)`` per layer) or ``"histogram"``
            (the paper's 100-bin histogram threshold, approximate).

    Returns:
        ``name -> bool tensor`` (``True`` = kept) for every prunable layer, in module order.
    """
    masks = _thresholder(method).prune(copy.deepcopy(model), None, sparsity)
    return {n: masks[n].clone() for n in masks}


def depth_masks(model: nn.Module, layers: Iterable[int | str], sparsity: float, method: str = "magnitude") -> Masks:
    """Masks that hard-threshold only ``layers`` at ``sparsity`` and keep every other weight.

    Args:
        model: the trained network (not modified).
        layers: indices (1-based) or names of the layers to prune; see :func:`resolve_layers`.
        sparsity: fraction pruned in each chosen layer, in [0, 1).
        method: ``"magnitude"`` or ``"histogram"`` (see :func:`layer_threshold_masks`).

    Returns:
        :class:`Masks` over every prunable layer; the unchosen layers' masks are all ``True``.

    Example:
        >>> masks = depth_masks(model, range(4, 9), 0.9)   # layers ≥ 4 of conv6 at 90 %
        >>> masks.apply(model)
    """
    chosen = resolve_layers(model, layers)
    pruned = layer_threshold_masks(model, sparsity, method)
    return Masks({n: pruned[n] if n in chosen else torch.ones_like(p, dtype=torch.bool)
                  for n, p in prunable_parameters(model).items()})


# --------------------------------------------------------------------------- evaluation


class _MaskedEvaluator:
    """Top-1 of a model with some layers' weights masked, re-running only what the masks change.

    For an ``nn.Sequential`` whose prunable layers are direct children, the activations at the
    input of the first masked child are cached (they do not depend on the masks); other models
    are run in full. Weights are masked in place for one evaluation and restored bit-exactly.
    """

    def __init__(self, model: nn.Module, split: Split, batch_size: int = 1000):
        self.model = model
        self.x, self.y = split.x, split.y
        self.batch_size = batch_size
        self.params = dict(model.named_parameters())
        names = list(prunable_parameters(model))
        children = [m for _, m in model.named_children()] if isinstance(model, nn.Sequential) else []
        index = {name: i for i, (name, _) in enumerate(model.named_children())} if children else {}
        self.position = {n: index.get(n.rsplit(".", 1)[0]) for n in names}
        self.children = children if children and all(p is not None for p in self.position.values()) else []
        self._cache_pos, self._cache = 0, self.x

    def _run(self, modules: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, len(h), self.batch_size):
            block = h[start : start + self.batch_size]
            for m in modules:
                block = m(block)
            outs.append(block)
        return torch.cat(outs)

    def _activations(self, pos: int) -> torch.Tensor:
        if pos == 0:
            return self.x
        if pos < self._cache_pos:
            self._cache_pos, self._cache = 0, self.x
        if pos > self._cache_pos:
            self._cache = self._run(self.children[self._cache_pos : pos], self._cache)
            self._cache_pos = pos
        return self._cache

    @torch.no_grad()
    def top1(self, masks: Mapping[str, torch.Tensor]) -> float:
        """Top-1 accuracy (a fraction) with ``masks`` applied to their layers."""
        was_training = self.model.training
        self.model.eval()
        saved = {}
        try:
            if self.children:
                pos = min((self.position[n] for n in masks), default=0)
                h, modules = self._activations(pos), self.children[pos:]
            else:
                h, modules = self.x, [self.model]
            for n, keep in masks.items():
                saved[n] = self.params[n].detach().clone()
                self.params[n].mul_(keep)
            correct = 0
            for start in range(0, len(h), self.batch_size):
                out = h[start : start + self.batch_size]
                for m in modules:
                    out = m(out)
                correct += int((out.argmax(1) == self.y[start : start + self.batch_size]).sum())
            return correct / max(1, len(self.y))
        finally:
            for n, value in saved.items():
                self.params[n].copy_(value)
            self.model.train(was_training)


# --------------------------------------------------------------------------- shared helpers


def _log_default(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _eval_split(data: Dataset, eval_samples: int | None) -> Split:
    test = data.test
    if eval_samples is None or eval_samples >= len(test):
        return test
    if eval_samples < 1:
        raise ConfigError(f"eval_samples must be a positive integer, got {eval_samples!r}")
    return Split(test.x[:eval_samples], test.y[:eval_samples])


def _train_split(data: Dataset, limit: int | None) -> Split:
    if limit is None or limit >= len(data.train):
        return data.train
    if limit < 1:
        raise ConfigError(f"train_limit must be a positive integer, got {limit!r}")
    return Split(data.train.x[:limit], data.train.y[:limit])


def _check_sparsities(sparsities: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in sparsities)
    if not values or any(not 0.0 <= s < 1.0 for s in values):
        raise ConfigError(f"sparsities must be a non-empty list of numbers in [0, 1), got {list(sparsities)!r}")
    return tuple(sorted(set(values)))


def _train_dense(model_name: str, model_kwargs: dict, data: Dataset, split: Split, budget: StudyBudget,
                 seed: int) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = models.create(model_name, data.in_shape, data.num_classes, **model_kwargs)
    t0 = time.perf_counter()
    train(model, split, budget.train_config(seed), progress=False, label=f"seed {seed}")
    return model.eval(), time.perf_counter() - t0


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _nearest(values: Sequence[float], target: float) -> float:
    return min(values, key=lambda v: (abs(v - target), -v))


def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant.

    With two points it is ±1, the sign of the slope (weak evidence; the results list the drops).
    """
    if len(a) < 2:
        return None
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


#: Drops that differ by less than this (points) across the compared layers or data sets are not ranked.
MIN_SPREAD = 1.0


def _verdict(rho: float | None, rows: Sequence[dict]) -> str:
    """"holds" / "contradicted" / "inconclusive" from ρ and the summary rows compared.

    The mean drops must differ by at least :data:`MIN_SPREAD` points and by more than twice the
    typical standard error of a mean over seeds (mean seed std / √seeds); otherwise ρ ranks noise.
    """
    if rho is None:
        return "inconclusive (no variation)"
    drops = np.asarray([r["drop_mean"] for r in rows], float)
    spread = float(np.ptp(drops))
    n = max(1, min(r.get("n", 1) for r in rows))
    noise = 2.0 * float(np.mean([r.get("drop_std", 0.0) for r in rows])) / math.sqrt(n) if n > 1 else 0.0
    if spread < max(MIN_SPREAD, noise):
        return (f"inconclusive (the drops span {spread:.1f} points, within "
                + (f"seed noise, 2 standard errors = {noise:.1f})" if noise >= MIN_SPREAD else f"{MIN_SPREAD:g} point)"))
    if rho >= 0.5:
        return "holds"
    if rho <= -0.5:
        return "contradicted"
    return "inconclusive"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _dataset_info(data: Dataset, train: Split, evaluated: Split) -> dict:
    return {"name": data.name, "source": data.source, "num_classes": data.num_classes, "n_train": len(train), "n_eval": len(evaluated),
            "eval_split": "test (first samples)", "normalize": data.info.get("normalize")}


# --------------------------------------------------------------------------- depth study


def run_depth_study(
    data: Dataset,
    model_name: str,
    model_kwargs: dict | None = None,
    *,
    budget: StudyBudget = BUDGETS["standard"],
    method: str = "magnitude",
    trained: Sequence[nn.Module] | None = None,
    log: Callable[[str], None] | None = _log_default,
) -> dict:
    """Hard-threshold only layer ``i``, and all layers ``≥ i``, of trained models (no retraining).

    Args:
        data: the data set (its test split is evaluated, capped at ``budget.eval_samples``).
        model_name: registered model name (see ``prunelab.models.list()``).
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
    sparsities = _check_sparsities(budget.sparsities)
    _thresholder(method)  # fail before training when the method is missing
    train_split = _train_split(data, budget.train_limit)
    evaluated = _eval_split(data, budget.eval_samples)
    seeds = list(budget.seeds) if trained is None else list(range(len(trained)))
    if not seeds:
        raise ConfigError("the depth study needs at least one seed (or one trained model)")
    t_start = time.perf_counter()
    tag = f"[depth {model_name}]"
    rows, dense, layers, config = [], [], None, None
    for run, seed in enumerate(seeds):
        if trained is None:
            model, seconds = _train_dense(model_name, model_kwargs, data, train_split, budget, seed)
        else:
            model, seconds = trained[run].eval(), 0.0
        config = getattr(model, "prunelab_config", {"name": model_name, "kwargs": model_kwargs})
        names = list(prunable_parameters(model))
        if layers is None:
            layers = [{"index": i + 1, "name": n, "numel": p.numel(), "remaining": len(names) - i - 1}
                      for i, (n, p) in enumerate(prunable_parameters(model).items())]
        elif [l["name"] for l in layers] != names:
            raise ConfigError("the trained models given to the depth study do not share one architecture")
        evaluator = _MaskedEvaluator(model, evaluated)
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
            high = _nearest(sparsities, HEADLINE_SPARSITY)
            single = next(r for r in rows if r["seed"] == seed and r["mode"] == "single" and r["layer"] == i + 1 and r["sparsity"] == high)
            joint = next(r for r in rows if r["seed"] == seed and r["mode"] == "from" and r["layer"] == i + 1 and r["sparsity"] == high)
            log(f"{tag} seed {seed} layer {i + 1}/{len(names)} {name}: drop at {high:.0%}: only this "
                f"{single['drop']:.1f} pts, layers >= {i + 1} {joint['drop']:.1f} pts ({time.perf_counter() - t0:.1f}s)")
    results = {
        "study": "depth",
        "paper": "Pitas, Davies, Vandergheynst 2019 (arXiv:1905.08793); papers.md §1.5, §1.6(b)",
        "key": _key("depth", data.name, config, method),
        "dataset": _dataset_info(data, train_split, evaluated),
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
        drop_mean, drop_std = _mean_std([r["drop"] for r in rs])
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
        m_mean, m_std = _mean_std(measured)
        p_mean, p_std = _mean_std(predicted)
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
    high = _nearest(sparsities, HEADLINE_SPARSITY)
    summary = results["summary"]
    sizes = {l["index"]: l["numel"] for l in results.get("layers", [])}

    def by_mode(mode, s, hidden_only=False):
        rs = sorted((r for r in summary if r["mode"] == mode and r["sparsity"] == s
                     and not (hidden_only and r["remaining"] == 0)), key=lambda r: r["layer"])
        return [r["remaining"] for r in rs], [r["drop_mean"] for r in rs], rs

    claims = {"headline_sparsity": high}
    rem, drops, rs = by_mode("single", high, hidden_only=True)
    rem_all, drops_all, rs_all = by_mode("single", high)
    rho, rho_all = _spearman(rem, drops), _spearman(rem_all, drops_all)
    claims["remaining_depth_single"] = {
        "spearman": rho,
        "verdict": _verdict(rho, rs),
        "spearman_with_last": rho_all,
        "verdict_with_last": _verdict(rho_all, rs_all),
        "spearman_vs_layer_size": _spearman([sizes.get(r["layer"], 0) for r in rs_all], drops_all) if sizes else None,
        "drops": {r["name"]: round(r["drop_mean"], 3) for r in rs_all},
        "spearman_by_sparsity": {str(s): _spearman(*by_mode("single", s, True)[:2]) for s in sparsities if s >= 0.5},
    }
    rem, drops, rs = by_mode("from", high)
    rho = _spearman(rem, drops)
    claims["remaining_depth_joint"] = {
        "spearman": rho,
        "verdict": _verdict(rho, rs),
        "drops": {r["name"]: round(r["drop_mean"], 3) for r in rs},
        "spearman_by_sparsity": {str(s): _spearman(*by_mode("from", s)[:2]) for s in sparsities if s >= 0.5},
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


# --------------------------------------------------------------------------- latent study


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
    log: Callable[[str], None] | None = _log_default,
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
    sparsities = _check_sparsities(budget.sparsities)
    _thresholder(method)
    dim = math.prod(data.in_shape)
    ks = sorted({int(k) for k in ks})
    if not ks or any(not 1 <= k <= dim for k in ks):
        raise ConfigError(f"numbers of components must be integers in [1, {dim}] (the input size), got {list(ks)}")
    train_split = _train_split(data, budget.train_limit)
    evaluated = _eval_split(data, budget.eval_samples)
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
            model, seconds = _train_dense(model_name, model_kwargs, data_k, train_k, budget, seed)
            config = model.prunelab_config
            layer_name = resolve_layers(model, [layer])[0]
            evaluator = _MaskedEvaluator(model, eval_k)
            base = evaluator.top1({})
            dense.append({"k": k, "seed": seed, "top1": base, "train_seconds": seconds})
            for s in sparsities:
                keep = layer_threshold_masks(model, s, method)[layer_name]
                acc = evaluator.top1({layer_name: keep})
                rows.append({"k": k, "seed": seed, "sparsity": s, "achieved": 1.0 - int(keep.sum()) / keep.numel(),
                             "top1": acc, "drop": 100.0 * (base - acc)})
            high = _nearest(sparsities, HEADLINE_SPARSITY)
            drop = next(r["drop"] for r in rows if r["k"] == k and r["seed"] == seed and r["sparsity"] == high)
            log(f"{tag} k={k} seed {seed}: dense top-1 {base:.2%} (trained {seconds:.1f}s), drop at {high:.0%} "
                f"of {layer_name}: {drop:.1f} pts")
    results = {
        "study": "latent",
        "paper": "Pitas, Davies, Vandergheynst 2019 (arXiv:1905.08793); papers.md §1.5, §1.6(c)",
        "key": _key("latent", data.name, config, method, ks, layer_name),
        "dataset": _dataset_info(data, train_split, evaluated),
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
        drop_mean, drop_std = _mean_std([r["drop"] for r in rs])
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
    high = _nearest(results["sparsities"], HEADLINE_SPARSITY)
    dims = {v["k"]: v["intrinsic_dim"] for v in results["versions"]}

    def series(s):
        rs = sorted((r for r in results["summary"] if r["sparsity"] == s), key=lambda r: r["k"])
        return [r["k"] for r in rs], [dims[r["k"]] for r in rs], [r["drop_mean"] for r in rs], rs

    ks, ids, drops, rows = series(high)
    vs_k, vs_id = _spearman(ks, drops), _spearman(ids, drops)
    fmt = lambda x: "n/a" if x is None else f"{x:+.2f}"  # noqa: E731
    claims = {
        "headline_sparsity": high,
        "vs_k": {"spearman": vs_k, "verdict": _verdict(vs_k, rows),
                 "spearman_by_sparsity": {str(s): _spearman(series(s)[0], series(s)[2]) for s in results["sparsities"] if s >= 0.5}},
        "vs_intrinsic_dim": {"spearman": vs_id, "verdict": _verdict(vs_id, rows)},
        "drops": {str(k): round(d, 3) for k, d in zip(ks, drops)},
    }
    claims["text"] = (
        f"at {high:.0%} sparsity of {results['layer']}: claim (2) {claims['vs_k']['verdict']} against k "
        f"(Spearman rho(k, drop) = {fmt(vs_k)}) and {claims['vs_intrinsic_dim']['verdict']} against the measured "
        f"intrinsic dimension (rho = {fmt(vs_id)}); drops by k: "
        + ", ".join(f"{k}: {d:.1f}" for k, d in zip(ks, drops))
    )
    return claims


# --------------------------------------------------------------------------- figures and files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(results: dict) -> str:
    model = results["model"] or {}
    kwargs = ", ".join(f"{k}={v}" for k, v in (model.get("kwargs") or {}).items())
    return (f"{results['dataset']['name']} · {model.get('name')}({kwargs}) · {results['method']} · "
            f"{len(results['seeds'])} seed(s), no retraining")


def plot_depth(results: dict, path: str | os.PathLike) -> Path:
    """Draw the depth study: drop vs sparsity (only layer i; layers ≥ i with the additive
    prediction dashed) and drop vs remaining depth.

    Args:
        results: a dict returned by :func:`run_depth_study`.
        path: the PNG to write (parents are created).

    Returns:
        The path written.
    """
    plt = _pyplot()
    summary, layers = results["summary"], results["layers"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(layers)))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, mode, title in ((axes[0], "single", "only layer i pruned"), (axes[1], "from", "layers ≥ i pruned")):
        for layer, color in zip(layers, colors):
            rs = sorted((r for r in summary if r["mode"] == mode and r["layer"] == layer["index"]), key=lambda r: r["sparsity"])
            x = [100 * r["sparsity"] for r in rs]
            y = np.array([r["drop_mean"] for r in rs])
            e = np.array([r["drop_std"] for r in rs])
            ax.plot(x, y, "o-", ms=3, color=color, label=f"{layer['index']}: {layer['name'].removesuffix('.weight')}")
            ax.fill_between(x, y - e, y + e, color=color, alpha=0.12, lw=0)
            if mode == "from" and layer["remaining"] > 0:
                adds = sorted((a for a in results["additive"] if a["layer"] == layer["index"]), key=lambda a: a["sparsity"])
                ax.plot([100 * a["sparsity"] for a in adds], [a["predicted_mean"] for a in adds], "--", color=color, lw=1)
        ceiling = (results.get("claims") or {}).get("additive", {}).get("ceiling")
        if ceiling is not None and mode == "from":
            # sums of single drops run far past the largest possible drop; keep the measured curves readable
            ax.axhline(ceiling, color="grey", ls=":", lw=1)
            ax.set_ylim(top=1.2 * ceiling)
        ax.set_title(title + (" (dashed: additive prediction; dotted: dense − chance)" if mode == "from" else ""),
                     fontsize=10)
        ax.set_xlabel("sparsity of each pruned layer (%)")
        ax.set_ylabel("top-1 drop (points)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="layer i", title_fontsize=7)
    ax = axes[2]
    marks = sorted({_nearest(results["sparsities"], s) for s in (0.5, 0.8, 0.9, 0.95)})
    cmap = plt.cm.plasma(np.linspace(0, 0.8, len(marks)))
    for s, color in zip(marks, cmap):
        for mode, style, label in (("single", "o-", "only i"), ("from", "s--", "≥ i")):
            rs = sorted((r for r in summary if r["mode"] == mode and r["sparsity"] == s), key=lambda r: r["remaining"])
            ax.plot([r["remaining"] for r in rs], [r["drop_mean"] for r in rs], style, color=color, ms=4,
                    label=f"{s:.0%}, {label}")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_title("drop vs remaining depth (layers after i)")
    ax.set_xlabel("remaining depth")
    ax.set_ylabel("top-1 drop (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    fig.suptitle("Depth study: " + _title(results), fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path, plt)


def plot_latent(results: dict, path: str | os.PathLike) -> Path:
    """Draw the latent study: drop vs sparsity per ``k``, and drop vs measured intrinsic dimension.

    Args:
        results: a dict returned by :func:`run_latent_study`.
        path: the PNG to write (parents are created).

    Returns:
        The path written.
    """
    plt = _pyplot()
    summary, versions = results["summary"], {v["k"]: v for v in results["versions"]}
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(results["ks"])))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    ax = axes[0]
    for k, color in zip(results["ks"], colors):
        rs = sorted((r for r in summary if r["k"] == k), key=lambda r: r["sparsity"])
        x = [100 * r["sparsity"] for r in rs]
        y = np.array([r["drop_mean"] for r in rs])
        e = np.array([r["drop_std"] for r in rs])
        dense = np.mean([d["top1"] for d in results["dense"] if d["k"] == k])
        ax.plot(x, y, "o-", ms=3, color=color,
                label=f"k={k} (ID {versions[k]['intrinsic_dim']:.1f}, dense {dense:.1%})")
        ax.fill_between(x, y - e, y + e, color=color, alpha=0.12, lw=0)
    ax.set_title(f"only {results['layer'].removesuffix('.weight')} pruned, PCA-k data")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("top-1 drop (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    marks = sorted({_nearest(results["sparsities"], s) for s in (0.8, 0.9, 0.95)})
    for s, color in zip(marks, plt.cm.plasma(np.linspace(0, 0.8, len(marks)))):
        rs = sorted((r for r in summary if r["sparsity"] == s), key=lambda r: versions[r["k"]]["intrinsic_dim"])
        xs = [versions[r["k"]]["intrinsic_dim"] for r in rs]
        ax.errorbar(xs, [r["drop_mean"] for r in rs], yerr=[r["drop_std"] for r in rs], fmt="o-", ms=4,
                    color=color, capsize=2, label=f"{s:.0%}")
        for x, r in zip(xs, rs):
            ax.annotate(f"k={r['k']}", (x, r["drop_mean"]), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_title("drop vs intrinsic dimension (Levina-Bickel)")
    ax.set_xlabel("estimated intrinsic dimension of the PCA-k training data")
    ax.set_ylabel("top-1 drop (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="sparsity", title_fontsize=7)
    fig.suptitle("Latent-dimensionality study: " + _title(results), fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path, plt)


def _save_figure(fig, path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def write_results(results: dict, outdir: str | os.PathLike, figure: bool = True) -> tuple[Path, Path | None]:
    """Store a study's results in ``OUTDIR/studies/<study>.json`` and draw its figure.

    The JSON file holds ``{"study": name, "runs": [results, ...]}``; a run with the same ``key``
    (data set, model, method, and for the latent study the ks and layer) is replaced, others are
    kept, so several models accumulate in one file. The figure is
    ``OUTDIR/studies/<study>-<model>-<key>.png`` and its path relative to ``OUTDIR`` is recorded
    in the run as ``figure``. Both files are written to a temporary name and renamed.

    Args:
        results: from :func:`run_depth_study` or :func:`run_latent_study`.
        outdir: the output directory.
        figure: also draw the figure.

    Returns:
        ``(json_path, figure_path or None)``.
    """
    study = results.get("study")
    if study not in ("depth", "latent"):
        raise ConfigError(f"not a study result (study={study!r})")
    outdir = Path(outdir)
    folder = outdir / "studies"
    folder.mkdir(parents=True, exist_ok=True)
    fig_path = None
    if figure:
        name = (results.get("model") or {}).get("name", "model")
        fig_path = folder / f"{study}-{name}-{results['key']}.png"
        (plot_depth if study == "depth" else plot_latent)(results, fig_path)
        results = dict(results, figure=str(fig_path.relative_to(outdir)))
    json_path = folder / f"{study}.json"
    runs = []
    if json_path.exists():
        try:
            stored = json.loads(json_path.read_text())
            runs = [r for r in stored.get("runs", []) if r.get("key") != results["key"]]
        except (OSError, ValueError, AttributeError):
            raise ConfigError(f"{json_path} exists but is not a study file; move it away or choose another output directory") from None
    runs.append(results)
    tmp = json_path.with_name(f".{json_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"study": study, "runs": runs}, indent=1))
    os.replace(tmp, json_path)
    return json_path, fig_path


# --------------------------------------------------------------------------- the suite


#: Models of the `pitas-studies` suite: a narrow version of the paper's CIFAR CNN and its FC net.
SUITE_MODELS = {
    "cnn": ("conv6", {"widths": [8, 16, 32], "dense": [128, 64]}),
    "mlp": ("fc", {"hidden": [100, 100]}),
}


def run_pitas_studies(outdir: str | os.PathLike, dataset: str = "fashion-mnist", budget: str = "standard",
                      data_dir: str | None = None, ks: Sequence[int] = (10, 20, 50, 100, 784),
                      log: Callable[[str], None] | None = _log_default) -> list[dict]:
    """Run both studies on one data set with the suite's CNN and MLP and store everything.

    Depth study on both models; latent study on the MLP (``SUITE_MODELS``). Files go to
    ``OUTDIR/studies/`` (:func:`write_results`).

    Args:
        outdir: output directory.
        dataset: data set name.
        budget: a :data:`BUDGETS` preset.
        data_dir: folder holding the data files.
        ks: PCA components of the latent study (clipped to the input size).
        log: progress lines.

    Returns:
        The results dicts, in the order run.
    """
    from prunelab import data as data_module

    if budget not in BUDGETS:
        raise ConfigError(f"unknown study budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    plan = BUDGETS[budget]
    data = data_module.load(dataset, data_dir=data_dir)
    dim = math.prod(data.in_shape)
    out = []
    for model_name, kwargs in SUITE_MODELS.values():
        res = run_depth_study(data, model_name, kwargs, budget=plan, log=log)
        write_results(res, outdir)
        out.append(res)
    model_name, kwargs = SUITE_MODELS["mlp"]
    res = run_latent_study(data, model_name, kwargs, ks=sorted({min(int(k), dim) for k in ks}), budget=plan, log=log)
    write_results(res, outdir)
    out.append(res)
    return out
