"""The Pitas et al. reproduction suite ``pitas`` (issue 5; papers.md §1, §5 P1 (A) and (C)).

``prunelab bench --suite pitas`` runs, on Fashion-MNIST with /255 inputs, for the paper's FC
784-100-100-10 (``fc``: dropout 0.2, max-norm 3, Adam 1e-3, batch 300, Keras decay, 30 epochs)
and for LeNet-5, every method of :data:`METHODS` (hard thresholding, global magnitude, FeTa,
Net-Trim, L-OBS) from the same trained dense model, and writes the suite's own report
(:func:`write_pitas_report`, also ``python -m prunelab.reproductions.pitas.suite OUTDIR``):

1. **Accuracy without retraining vs sparsity**: every method at every target of :data:`TARGETS`
   (50 … 95 %), test top-1 right after pruning.
2. **Prune time**: the wall time of every run's prune phase (all pruned layers, calibration
   capture included), and the growth with a layer's input width from
   ``benchmarks/bench_layerwise.py`` (one ReLU layer, d_in ∈ {256, 1024, 4096}, fixed N and
   d_out). That benchmark is run once, apart from the suite (it costs more than the whole suite),
   and its JSON is read from ``OUTDIR/bench_layerwise.json``, else from the checkout's
   ``docs/results/pitas/bench_layerwise.json`` (see :func:`find_bench_json`).
3. **Total time to recover** at :data:`RETRAIN_TARGET` (90 %): the 90 % run of every method is
   retrained with its mask fixed (the dense recipe, ``retrain_epochs`` epochs) and the harness
   records the validation top-1 and the wall time of every epoch. The time to get within
   0.5, 1, 2 and 5 points (:data:`GAPS`) of the dense model's validation top-1 is prune time +
   retraining time up to the first epoch that gets there (:func:`time_to_target`), or "not
   reached in E epochs". The stopping decision uses the **validation** split (5,000 training
   images held out), not the test split the authors' protocol reads: prunelab never selects on
   test. An epoch's time includes its validation pass (a stopping rule needs it).

Every run is an ordinary harness run (``prunelab.harness.runner``): stored, resumable, hashed. The
targets other than 90 % are not retrained (retrain budget of 0 epochs); the 90 % run's "pruned"
scores give experiment 1 its 90 % point, so nothing is pruned twice.

Scaled down from the paper (also in the suite's notes): one seed; calibration rows (the paper
uses all 60,000 training images); LeNet-5's dense budget, retraining budget and its L-OBS
(one-shot update) and Net-Trim (fewer search steps and iterations) settings, per
:data:`MODELS`.

Adding a method to all three experiments is one line in :data:`METHODS`.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import ConfigError
from prunelab.harness.runner import RunSpec
from prunelab.harness.suites import Suite, register_suite

__all__ = ["TARGETS", "RETRAIN_TARGET", "GAPS", "METHODS", "MODELS", "DATA_KWARGS", "ModelPlan", "pitas_specs",
           "pitas_suite", "display_name", "time_to_target", "collect", "check_claims", "find_bench_json",
           "write_pitas_report", "main"]

#: target sparsities of experiment 1 (each pruned layer loses this fraction of its weights).
TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: the sparsity whose networks are retrained in experiment 3.
RETRAIN_TARGET = 0.9
#: distances to the dense model's validation top-1, in points, of experiment 3.
GAPS = (0.5, 1.0, 2.0, 5.0)
#: data options: the authors' /255 inputs; the default 5,000-image validation split.
DATA_KWARGS = {"normalize": "unit"}

#: ``(display name, method, hparams)``: one line adds a method to the three experiments.
METHODS = (
    ("hard thresholding", "hard-threshold", {}),   # the paper's 100-bin histogram threshold, per layer
    ("magnitude", "magnitude", {}),                # global magnitude (classifier included)
    ("FeTa", "feta", {}),
    ("Net-Trim", "nettrim", {}),
    ("L-OBS", "lobs", {}),
)


@dataclass(frozen=True)
class ModelPlan:
    """One network of the suite and its budgets.

    Attributes:
        model: model name. kwargs: its options.
        dense: ``TrainConfig`` fields of the dense training.
        retrain_epochs: retraining epochs of the 90 % runs (the dense recipe otherwise).
        calib_size: training images handed to the methods as calibration data.
        overrides: method → hyperparameters added to :data:`METHODS`' (budget cuts).
        note: what was scaled down, for the suite's notes.
    """

    model: str
    dense: dict
    retrain_epochs: int
    calib_size: int
    overrides: dict = field(default_factory=dict)
    kwargs: dict = field(default_factory=dict)
    note: str = ""

    def retrain(self, epochs: int) -> dict:
        """The retraining budget: the dense recipe for ``epochs`` epochs, mask fixed."""
        return {**self.dense, "epochs": int(epochs)}


_RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 300, "schedule": "inverse"}

#: the two networks. Budgets keep the suite near 20–25 minutes of one free CPU core; measured per
#: run at 90 % (one core shared with other jobs, so about twice these on a free one): fc with
#: 10,000 images: FeTa 10 s, exact L-OBS 22 s, Net-Trim at its defaults 104 s (so fewer search
#: steps and ADMM iterations here); lenet5 with 5,000 images: FeTa 28 s, one-shot L-OBS 12 s
#: (exact sequential: 137 s), Net-Trim on 2,000 rows with 3 search steps and 100 iterations 52 s.
MODELS = (
    ModelPlan("fc", {**_RECIPE, "epochs": 30}, retrain_epochs=40, calib_size=10000,
              overrides={"nettrim": {"search_steps": 4, "max_iters": 150}},
              note="fc: 10,000 calibration images for every method (the paper: all 60,000), Net-Trim with 4 "
                   "search steps and 150 ADMM iterations (defaults 8 and 300)"),
    ModelPlan("lenet5", {**_RECIPE, "epochs": 10}, retrain_epochs=4, calib_size=5000,
              overrides={"feta": {"max_samples": 10000}, "lobs": {"update": "oneshot", "max_samples": 10000},
                         "nettrim": {"max_samples": 2000, "search_steps": 3, "max_iters": 100}},
              note="lenet5: 10 dense and 4 retraining epochs, 5,000 calibration images (at most 10,000 rows per "
                   "layer; Net-Trim 2,000 rows, 3 search steps, 100 ADMM iterations), L-OBS with the one-shot "
                   "update (the exact sequential one: ~10x slower)"),
)


def pitas_specs(dataset: str = "fashion-mnist", models=MODELS, methods=METHODS, targets=TARGETS,
                retrain_target: float = RETRAIN_TARGET, data_kwargs: dict | None = None, seed: int = 0) -> list[RunSpec]:
    """The suite's run specs.

    Args:
        dataset: data set name.
        models: :class:`ModelPlan` objects.
        methods: ``(display name, method, hparams)`` entries.
        targets: sparsities of experiment 1 (``retrain_target`` is added when missing).
        retrain_target: the sparsity retrained for experiment 3 (its retrain budget is the plan's
            ``retrain_epochs``; every other target gets 0 retraining epochs).
        data_kwargs: options of ``prunelab.data.load`` added to :data:`DATA_KWARGS`.
        seed: run seed.

    Returns:
        Specs ordered model, method, target.
    """
    targets = sorted(set(float(t) for t in targets) | {float(retrain_target)})
    data = {**DATA_KWARGS, **(data_kwargs or {})}
    specs = []
    for plan in models:
        for _, method, hparams in methods:
            hp = {**hparams, **plan.overrides.get(method, {})}
            for target in targets:
                epochs = plan.retrain_epochs if math.isclose(target, retrain_target) else 0
                specs.append(RunSpec(dataset=dataset, model=plan.model, method=method, target=target, seed=seed,
                                     hparams=hp, model_kwargs=dict(plan.kwargs), data_kwargs=data,
                                     dense=dict(plan.dense), retrain=plan.retrain(epochs), calib_size=plan.calib_size))
    return specs


@register_suite("pitas")
def pitas_suite(dataset: str | None = None) -> Suite:
    """Issue 5: accuracy without retraining, prune time, and total time to recover (FC and LeNet-5)."""
    dataset = dataset or "fashion-mnist"
    specs = pitas_specs(dataset)
    names = ", ".join(name for name, _, _ in METHODS)
    return Suite(
        "pitas", tuple(specs),
        description=f"{dataset}, fc 784-100-100-10 and lenet5: {names} at "
                    f"{', '.join(f'{t:g}' for t in TARGETS)} without retraining; the {RETRAIN_TARGET:g} networks "
                    "retrained with the mask fixed, time to within 0.5/1/2/5 points of dense (validation); seed 0",
        notes="Scaled down from the paper: one seed; " + "; ".join(p.note for p in MODELS if p.note)
              + ". The time-to-target decision reads the validation split (the authors read test). "
                "Suite report: OUTDIR/pitas/report.md (python -m prunelab.reproductions.pitas.suite OUTDIR).",
        report=lambda outdir: write_pitas_report(outdir),
    )


# --------------------------------------------------------------------------- experiment 3

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
        out[_gap_key(gap)] = entry
    return out


def _gap_key(gap: float) -> str:
    return f"{gap:g}"


# --------------------------------------------------------------------------- collecting results

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


# --------------------------------------------------------------------------- the claims

def find_bench_json(outdir=None, path=None) -> Path | None:
    """The ``bench_layerwise.py`` JSON the report reads: ``path``, else ``OUTDIR/bench_layerwise.json``,
    else ``docs/results/pitas/bench_layerwise.json`` of the source checkout; None when none exists."""
    candidates = [Path(path)] if path is not None else []
    if outdir is not None:
        candidates.append(Path(outdir) / "bench_layerwise.json")
    candidates.append(Path(__file__).resolve().parents[2] / "docs" / "results" / "pitas" / "bench_layerwise.json")
    return next((c for c in candidates if c.is_file()), None)


def _bench_times(bench: dict) -> dict:
    """``{config: {d_in: (seconds, measured)}}`` from a bench_layerwise JSON (estimates when skipped)."""
    out = {}
    for name, res in (bench or {}).get("results", {}).items():
        out[name] = {}
        for run in res.get("runs", []):
            if "wall_s" in run:
                out[name][run["d_in"]] = (run["wall_s"], True)
            elif "estimated_wall_s" in run:
                out[name][run["d_in"]] = (run["estimated_wall_s"], False)
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def check_claims(collected: dict, bench: dict | None = None, gaps=GAPS) -> dict:
    """The paper's two claims on the collected runs (and the width benchmark when given).

    * ``feta_speed``: FeTa "often orders of magnitude faster" than Net-Trim and L-OBS. Per model,
      the median over targets of (other method's prune time / FeTa's); per benchmark width, the
      same ratio of wall times (``estimated`` when a run was skipped). ``holds``: every ratio
      ≥ 10 (at least one order of magnitude); ``orders``: the smallest ratio's log10.
    * ``ht_total_time``: hard thresholding + retraining reaches each gap first. Per model and
      gap, the methods that got there sorted by total time; ``holds`` per gap is True when hard
      thresholding is first (ties count), False when another method is first or hard
      thresholding never gets there while another does, None when nobody got there;
      ``threshold_first``: the first is one of the data-free thresholds (:data:`DATA_FREE`: hard
      thresholding or global magnitude), the broader reading of the claim.

    Returns:
        ``{"feta_speed": {...}, "ht_total_time": {...}}``.
    """
    speed: dict = {"models": {}, "bench": {}}
    ratios_all = []
    for model, info in collected.items():
        meths = info["methods"]
        feta = {p["target"]: p["prune_s"] for p in meths.get("FeTa", {}).get("points", [])}
        entry = {}
        for other in ("Net-Trim", "L-OBS"):
            times = {p["target"]: p["prune_s"] for p in meths.get(other, {}).get("points", [])}
            ratios = [times[t] / feta[t] for t in feta if t in times and feta[t] and times[t] is not None]
            if ratios:
                entry[other] = {"median_ratio": _median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
                                "median_s": _median(list(times.values())), "feta_median_s": _median(list(feta.values()))}
                ratios_all.append(_median(ratios))
        speed["models"][model] = entry
    times = _bench_times(bench)
    if "feta" in times:
        for other, key in (("Net-Trim", "nettrim"), ("L-OBS", "lobs")):
            if key not in times:
                continue
            rows = {}
            for d_in, (t_feta, measured) in sorted(times["feta"].items()):
                if d_in in times[key]:
                    t_other, other_measured = times[key][d_in]
                    rows[str(d_in)] = {"ratio": t_other / t_feta, "feta_s": t_feta, "other_s": t_other,
                                       "estimated": not (measured and other_measured)}
                    ratios_all.append(t_other / t_feta)
            speed["bench"][other] = rows
    speed["holds"] = bool(ratios_all) and min(ratios_all) >= 10.0 if ratios_all else None
    speed["orders"] = math.log10(min(ratios_all)) if ratios_all and min(ratios_all) > 0 else None

    total: dict = {}
    for model, info in collected.items():
        per_gap = {}
        for gap in gaps:
            key = _gap_key(gap)
            ranking = []
            not_reached = []
            for name, m in info["methods"].items():
                if not m["retrain"]:
                    continue
                t = m["retrain"]["time_to"].get(key)
                if t and t["reached"]:
                    ranking.append({"method": name, "seconds": t["seconds"], "epoch": t["epoch"]})
                else:
                    not_reached.append(name)
            ranking.sort(key=lambda x: x["seconds"])
            if not ranking:
                holds = threshold_first = None
            else:
                ht = next((x for x in ranking if x["method"] == "hard thresholding"), None)
                holds = ht is not None and ht["seconds"] <= ranking[0]["seconds"]
                threshold_first = ranking[0]["method"] in DATA_FREE
            per_gap[key] = {"ranking": ranking, "not_reached": not_reached, "holds": holds,
                            "first": ranking[0]["method"] if ranking else None, "threshold_first": threshold_first}
        total[model] = per_gap
    return {"feta_speed": speed, "ht_total_time": total}


# --------------------------------------------------------------------------- figures

#: methods that only threshold the trained weights (no calibration data, no solve).
DATA_FREE = ("hard thresholding", "magnitude")

#: the authors' FeTa and hard-thresholding points on FC / Fashion-MNIST (papers.md §1.6(a)).
PAPER_FMNIST = {
    "FeTa (paper)": [(50.0, 86.18), (78.4, 81.93), (85.5, 78.60), (90.9, 73.40), (93.2, 68.92), (95.1, 62.08)],
    "hard thresholding (paper)": [(50, 87.56), (60, 85.44), (70, 79.22), (80, 68.80), (85, 60.56), (90, 47.60),
                                  (95, 30.63)],
}
_STYLE = {"hard thresholding": ("C0", "o"), "magnitude": ("C1", "s"), "FeTa": ("C2", "^"), "Net-Trim": ("C3", "v"),
          "L-OBS": ("C4", "D")}
_BENCH_NAMES = {"hard-threshold": "hard thresholding", "feta": "FeTa (τ search + polish)",
                "feta-fixed-tau": "FeTa (one τ)", "nettrim": "Net-Trim (ε search)",
                "nettrim-fixed-eps": "Net-Trim (one ε)", "lobs": "L-OBS (sequential)", "lobs-oneshot": "L-OBS (one-shot)"}


def _style(name: str, i: int):
    return _STYLE.get(name, (f"C{(i + 5) % 10}", "os^vDP*X"[i % 8]))


def _figure(cols: int, rows: int = 1, width: float = 4.6, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols + 0.6, height * rows + 0.6), dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def fig_accuracy(collected: dict) -> bytes:
    """Experiment 1: test top-1 right after pruning vs target sparsity, a panel per model."""
    fig, axes = _figure(len(collected))
    for ax, (model, info) in zip(axes[0], collected.items()):
        for i, (name, m) in enumerate(info["methods"].items()):
            pts = [(100 * p["target"], 100 * p["pruned_test_top1"]) for p in m["points"]
                   if p["pruned_test_top1"] is not None]
            color, marker = _style(name, i)
            if pts:
                ax.plot(*zip(*pts), color=color, marker=marker, ms=4, lw=1.4, label=name)
        if info["dense"]["test_top1"] is not None:
            ax.axhline(100 * info["dense"]["test_top1"], color="0.3", ls="--", lw=1, label="dense")
        if model == "fc" and info["dataset"] == "fashion-mnist":
            for (name, pts), marker in zip(PAPER_FMNIST.items(), ("x", "+")):
                ax.plot(*zip(*pts), color="0.55", marker=marker, ls=":", lw=1, label=name)
        ax.set(title=f"{model} on {info['dataset']}", xlabel="target sparsity of the pruned layers (%)",
               ylabel="test top-1 without retraining (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("1. Accuracy without retraining vs sparsity", fontsize=11)
    return _png(fig)


def fig_times(collected: dict, bench: dict | None) -> bytes:
    """Experiment 2: prune time per run vs target (a panel per model) and vs input width (benchmark)."""
    panels = len(collected) + (1 if bench else 0)
    fig, axes = _figure(panels)
    axes = list(axes[0])
    for ax, (model, info) in zip(axes, collected.items()):
        for i, (name, m) in enumerate(info["methods"].items()):
            pts = [(100 * p["target"], max(p["prune_s"], 1e-4)) for p in m["points"] if p["prune_s"] is not None]
            color, marker = _style(name, i)
            if pts:
                ax.plot(*zip(*pts), color=color, marker=marker, ms=4, lw=1.4, label=name)
        ax.set_yscale("log")
        ax.set(title=f"{model}: prune phase, all pruned layers", xlabel="target sparsity (%)",
               ylabel="wall seconds (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if bench:
        ax = axes[-1]
        for i, (name, runs) in enumerate(_bench_times(bench).items()):
            measured = sorted((d, t) for d, (t, ok) in runs.items() if ok)
            estimated = sorted((d, t) for d, (t, ok) in runs.items() if not ok)
            growth = bench["results"][name].get("growth_exponents") or []
            label = _BENCH_NAMES.get(name, name) + (f" (slope {', '.join(f'{g:.2f}' for g in growth)})" if growth else "")
            color = f"C{i % 10}"
            if measured:
                ax.plot(*zip(*measured), color=color, marker="o", ms=4, lw=1.4, label=label)
            if estimated and measured:
                ax.plot(*zip(*(measured[-1:] + estimated)), color=color, ls=":", lw=1, marker="x")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(title=f"one layer, N={bench.get('n')}, d_out={bench.get('d_out')}, sparsity {bench.get('sparsity')}",
               xlabel="input width d_in (log)", ylabel="wall seconds (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("2. Prune time per method", fontsize=11)
    return _png(fig)


def fig_time_to_target(collected: dict, gaps=GAPS) -> bytes:
    """Experiment 3: validation top-1 minus dense against prune + retraining time, a panel per model."""
    models = [(m, info) for m, info in collected.items() if any(x["retrain"] for x in info["methods"].values())]
    fig, axes = _figure(max(1, len(models)), width=5.4, height=3.9)
    for ax, (model, info) in zip(axes[0], models):
        dense = info["dense"]["val_top1"]
        lowest = -max(gaps) - 3
        for i, (name, m) in enumerate(info["methods"].items()):
            r = m["retrain"]
            if not r:
                continue
            xs, ys = [r["prune_s"] or 0.0], [100 * ((r["pruned_val_top1"] or 0.0) - dense)]
            for row in r["trace"]:
                xs.append(xs[-1] + row["seconds"])
                ys.append(100 * (row["val_top1"] - dense))
            color, marker = _style(name, i)
            ax.plot(xs, [max(y, lowest) for y in ys], color=color, marker=marker, ms=3, lw=1.3, label=name)
        for gap in gaps:
            ax.axhline(-gap, color="0.5", ls=":", lw=0.9)
            ax.annotate(f"−{gap:g}", (1.0, -gap), xycoords=("axes fraction", "data"), fontsize=7, color="0.4",
                        ha="right", va="bottom")
        ax.axhline(0, color="0.3", ls="--", lw=1)
        ax.set_ylim(lowest - 0.5, 1.5)
        ax.set(title=f"{model}: {RETRAIN_TARGET:.0%} sparse, mask fixed", xlabel="prune + retraining wall seconds",
               ylabel="val top-1 − dense val top-1 (points; clipped)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("3. Time to recover: one point per epoch, the first at the end of pruning", fontsize=11)
    return _png(fig)


# --------------------------------------------------------------------------- tables and text

def _pct(v, digits=2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def _secs(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 0.1 else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def _targets(info: dict) -> list:
    return sorted({p["target"] for m in info["methods"].values() for p in m["points"]})


def table_accuracy(info: dict) -> tuple[list, list]:
    """Experiment 1 table: test top-1 without retraining, a row per method, a column per target."""
    targets = _targets(info)
    header = ["method"] + [f"{100 * t:g} %" for t in targets] + ["sparsity at 90 % (all / hidden)"]
    rows = []
    for name, m in info["methods"].items():
        by = {p["target"]: p for p in m["points"]}
        p90 = by.get(RETRAIN_TARGET) or {}
        rows.append([name] + [_pct(by[t]["pruned_test_top1"]) if t in by else "" for t in targets]
                    + [f"{_pct(p90.get('sparsity'), 1)} / {_pct(p90.get('sparsity_hidden'), 1)}"])
    return header, rows


def table_times(info: dict) -> tuple[list, list]:
    """Experiment 2 table: prune seconds per method and target."""
    targets = _targets(info)
    header = ["method", "calibration images"] + [f"{100 * t:g} %" for t in targets]
    rows = []
    for name, m in info["methods"].items():
        by = {p["target"]: p for p in m["points"]}
        rows.append([name, str(m["calib_size"]) if m["method"] not in ("hard-threshold", "magnitude") else "–"]
                    + [_secs(by[t]["prune_s"]) if t in by else "" for t in targets])
    return header, rows


def table_bench(bench: dict) -> tuple[list, list]:
    """Benchmark table: wall seconds per configuration and width, growth exponents."""
    times = _bench_times(bench)
    widths = sorted({d for runs in times.values() for d in runs})
    header = ["configuration"] + [f"d_in={d}" for d in widths] + ["growth exponents"]
    rows = []
    for name, runs in times.items():
        cells = []
        for d in widths:
            if d not in runs:
                cells.append("")
            else:
                t, ok = runs[d]
                cells.append(_secs(t) if ok else f"~{_secs(t)} (skipped, estimate)")
        growth = bench["results"][name].get("growth_exponents") or []
        rows.append([_BENCH_NAMES.get(name, name)] + cells + [", ".join(f"{g:.2f}" for g in growth) or "–"])
    return header, rows


def table_time_to_target(info: dict, gaps=GAPS) -> tuple[list, list]:
    """Experiment 3 table: prune time, then time (epoch) to each gap, final accuracies."""
    header = (["method", "prune s", "val top-1 after pruning"]
              + [f"within {g:g} pt: s (epoch)" for g in gaps] + ["epochs", "final val top-1", "final test top-1"])
    rows = []
    for name, m in info["methods"].items():
        r = m["retrain"]
        if not r:
            continue
        cells = []
        for g in gaps:
            t = r["time_to"][_gap_key(g)]
            cells.append(f"{_secs(t['seconds'])} ({t['epoch']})" if t["reached"]
                         else f"not reached in {t['epochs_run']} epochs (> {_secs(t['seconds_at_least'])})")
        rows.append([name, _secs(r["prune_s"]), _pct(r["pruned_val_top1"])] + cells
                    + [str(r["epochs"]), _pct(r["final_val_top1"]), _pct(r["final_test_top1"])])
    return header, rows


def claims_text(claims: dict, gaps=GAPS) -> list[str]:
    """One line per claim and model, with the numbers behind the verdict."""
    lines = []
    speed = claims["feta_speed"]
    parts = []
    for model, entry in speed["models"].items():
        for other, e in entry.items():
            parts.append(f"{model}: {other}/FeTa prune time, median over targets {e['median_ratio']:.2f}× "
                         f"(range {e['min_ratio']:.2f}–{e['max_ratio']:.2f})")
    for other, rows in speed["bench"].items():
        cells = ", ".join(f"d_in={d}: {v['ratio']:.1f}×{' (estimated)' if v['estimated'] else ''}" for d, v in rows.items())
        parts.append(f"one-layer benchmark {other}/FeTa: {cells}")
    verdict = {True: "holds (every ratio ≥ 10×)", False: "does not hold (some ratio < 10×)", None: "untested"}[speed["holds"]]
    lines.append(f"FeTa orders of magnitude faster than Net-Trim and L-OBS: {verdict}. " + "; ".join(parts) + ".")
    for model, per_gap in claims["ht_total_time"].items():
        bits = []
        for g in gaps:
            x = per_gap[_gap_key(g)]
            if x["holds"] is None:
                bits.append(f"within {g:g} pt: no method got there")
                continue
            order = ", ".join(f"{r['method']} {_secs(r['seconds'])} s" for r in x["ranking"])
            missing = f"; not reached: {', '.join(x['not_reached'])}" if x["not_reached"] else ""
            bits.append(f"within {g:g} pt: {'HT first' if x['holds'] else x['first'] + ' first'} ({order}{missing})")
        firsts = [per_gap[_gap_key(g)] for g in gaps if per_gap[_gap_key(g)]["holds"] is not None]
        summary = (f"HT first at {sum(bool(x['holds']) for x in firsts)} of {len(firsts)} reachable gaps, a data-free "
                   f"threshold (HT or global magnitude) first at {sum(bool(x['threshold_first']) for x in firsts)}")
        lines.append(f"Hard thresholding + retraining fastest in total time, {model}: {summary}. " + "; ".join(bits) + ".")
    return lines


# --------------------------------------------------------------------------- writing

def _sections(collected: dict, claims: dict, bench: dict | None, bench_path) -> list[dict]:
    """The report's content: sections of paragraphs, tables and figures (PNG bytes)."""
    s1 = {"title": "1. Accuracy without retraining vs sparsity", "paragraphs": [
        "Every method prunes the same trained dense model to the target; test top-1 right after pruning, no "
        "retraining. Hard thresholding, FeTa, Net-Trim and L-OBS prune every layer but the classifier (the target "
        "applies to each); global magnitude ranks all prunable weights, the classifier included. 'sparsity' = "
        "achieved sparsity of all prunable weights / of all but the last layer. Grey: the authors' numbers "
        "(FC, Fashion-MNIST; papers.md §1.6(a))."], "tables": [], "figures": []}
    s2 = {"title": "2. Prune time", "paragraphs": [
        "Wall seconds of the prune phase of every run (all pruned layers, capture of the calibration activations "
        "included), one CPU thread."], "tables": [], "figures": []}
    s3 = {"title": f"3. Total time to recover at {RETRAIN_TARGET:.0%} sparsity", "paragraphs": [
        "Each method's 90 % network is retrained with its mask fixed (the dense recipe); after every epoch the "
        "validation top-1 is compared with the dense model's. Time = prune time + retraining wall time up to the end "
        "of the first epoch within the gap (epoch 0: already after pruning); each epoch's time includes its "
        "validation pass. The decision reads the validation split (5,000 training images held out); the authors "
        "read test."], "tables": [], "figures": []}
    for model, info in collected.items():
        dense = info["dense"]
        line = (f"{model} on {info['dataset']}: dense test top-1 {_pct(dense['test_top1'])} %, val top-1 "
                f"{_pct(dense['val_top1'])} %, trained in {_secs(dense['seconds'])} s "
                f"(budget {json.dumps(dense['budget'], sort_keys=True)}).")
        s1["tables"].append((line, *table_accuracy(info)))
        s2["tables"].append((f"{model}: prune seconds per target.", *table_times(info)))
        header, rows = table_time_to_target(info)
        if rows:
            budget = next(m["retrain"]["budget"] for m in info["methods"].values() if m["retrain"])
            s3["tables"].append((f"{model}: retraining budget {json.dumps(budget, sort_keys=True)}; dense val top-1 "
                                 f"{_pct(dense['val_top1'])} %.", header, rows))
    s1["figures"].append(("accuracy-without-retraining", fig_accuracy(collected),
                          "Test top-1 right after pruning; dashed: dense."))
    s2["figures"].append(("prune-time", fig_times(collected, bench),
                          "Prune wall time per run (log) and, right, the one-layer benchmark against d_in (log-log; "
                          "slopes between successive widths; dotted: skipped runs, estimated)."))
    if bench:
        s2["paragraphs"].append(
            f"Growth with the input width: `benchmarks/bench_layerwise.py` (one ReLU layer, N={bench.get('n')} "
            f"rows, d_out={bench.get('d_out')}, sparsity {bench.get('sparsity')}, one thread), read from "
            f"`{bench_path}`.")
        s2["tables"].append(("One-layer benchmark: wall seconds per configuration and input width.", *table_bench(bench)))
    else:
        s2["paragraphs"].append("No bench_layerwise.json found: run `python benchmarks/bench_layerwise.py > "
                                "OUTDIR/bench_layerwise.json` and rewrite the report for the width benchmark.")
    if s3["tables"]:
        s3["figures"].append(("time-to-target", fig_time_to_target(collected),
                              f"Validation top-1 minus dense, against prune + retraining time; dotted: the gaps; "
                              f"points more than {max(GAPS) + 3:g} points below dense are drawn at −{max(GAPS) + 3:g} "
                              "(the table has their values)."))
    claims_section = {"title": "The paper's claims", "paragraphs": claims_text(claims), "tables": [], "figures": []}
    return [s1, s2, s3, claims_section]


def _markdown(title: str, intro: list[str], sections: list[dict], figure_paths: dict) -> str:
    out = [f"# {title}", ""] + [line + "\n" for line in intro]
    for si, sec in enumerate(sections):
        out += [f"## {sec['title']}", ""]
        out += [p + "\n" for p in sec["paragraphs"]]
        for caption, header, rows in sec["tables"]:
            out += [caption, "", "| " + " | ".join(header) + " |",
                    "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
            out += ["| " + " | ".join(row) + " |" for row in rows]
            out.append("")
        for fi, (name, _, caption) in enumerate(sec["figures"]):
            out += [f"![{name}]({figure_paths[(si, fi)]})", "", f"*{caption}*", ""]
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}"
        "table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}th,td{border:1px solid #ddd;"
        "padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}h2{border-bottom:1px solid #ccc}")


def _html(title: str, intro: list[str], sections: list[dict]) -> str:
    from prunelab.harness.report import figure_html

    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    parts += [f"<p>{e(line)}</p>" for line in intro]
    for sec in sections:
        parts.append(f"<h2>{e(sec['title'])}</h2>")
        parts += [f"<p>{e(p)}</p>" for p in sec["paragraphs"]]
        for caption, header, rows in sec["tables"]:
            parts.append(f"<p>{e(caption)}</p><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                         + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</tbody></table>")
        parts += [figure_html(name, png, caption) for name, png, caption in sec["figures"]]
    parts.append("</body></html>")
    return "\n".join(parts)


def _write_bytes(path: Path, data: bytes) -> None:
    from prunelab.harness.report import _atomic_write

    _atomic_write(path, data)


def write_pitas_report(outdir, dest=None, bench_json=None, results=None) -> dict:
    """Write the suite's report: ``report.md`` (figures as PNGs beside it), ``report.html`` (figures
    embedded) and ``pitas_results.json``.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``), or, with ``results``, any
            folder (only for the default ``dest`` and the benchmark JSON lookup).
        dest: where to write (default ``OUTDIR/pitas``).
        bench_json: the ``bench_layerwise.py`` JSON (default: :func:`find_bench_json`).
        results: the run results to report (default: every run of the store).

    Returns:
        ``{"markdown", "html", "json", "figures": [paths]}``.

    Raises:
        ConfigError: no result store, or no one-shot run in it.
    """
    from prunelab.harness.report import read_suite_store

    outdir = Path(outdir)
    dest = Path(dest) if dest is not None else outdir / "pitas"
    suites = {}
    if results is None:
        results, suites = read_suite_store(outdir, "pitas")
    collected = collect(results)
    if not collected:
        raise ConfigError(f"{outdir} holds no completed one-shot run; run `prunelab bench --suite pitas` first")
    bench_path = find_bench_json(outdir, bench_json)
    bench = json.loads(bench_path.read_text(encoding="utf-8")) if bench_path else None
    claims = check_claims(collected, bench)
    sections = _sections(collected, claims, bench, bench_path)
    provenance = sorted({str(r.info.get("git_sha")) for r in results})
    intro = [f"{sum(len(m['points']) for i in collected.values() for m in i['methods'].values())} runs, "
             f"prunelab git {', '.join(provenance)}; torch "
             f"{', '.join(sorted({str(r.info.get('torch')) for r in results}))}; threads "
             f"{', '.join(sorted({str(r.info.get('threads')) for r in results}))}. Accuracies in %."]
    for name, info in suites.items():
        intro.append(f"Suite `{name}`: {info.get('description', '')}. {info.get('notes', '')}")
    dest.mkdir(parents=True, exist_ok=True)
    fig_dir = dest / "figures"
    fig_dir.mkdir(exist_ok=True)
    figure_paths, written = {}, []
    for si, sec in enumerate(sections):
        for fi, (name, png, _) in enumerate(sec["figures"]):
            path = fig_dir / f"pitas-{name}.png"
            _write_bytes(path, png)
            figure_paths[(si, fi)] = f"figures/{path.name}"
            written.append(path)
    title = "Pitas et al. (2019) reproduction: hard thresholding vs FeTa, Net-Trim and L-OBS"
    md_path, html_path, json_path = dest / "report.md", dest / "report.html", dest / "pitas_results.json"
    _write_bytes(md_path, _markdown(title, intro, sections, figure_paths).encode("utf-8"))
    _write_bytes(html_path, _html(title, intro, sections).encode("utf-8"))
    payload = {"suite": "pitas", "gaps_points": list(GAPS), "retrain_target": RETRAIN_TARGET,
               "provenance": {"git": provenance}, "bench_json": str(bench_path) if bench_path else None,
               "models": collected, "claims": claims}
    _write_bytes(json_path, (json.dumps(payload, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    return {"markdown": md_path, "html": html_path, "json": json_path, "figures": written}


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.pitas.suite OUTDIR [--dest DIR]`` (default DIR: OUTDIR/pitas)."""
    from prunelab.harness.report import results_main

    return results_main(argv, "pitas", write_pitas_report, "wrote {markdown}, {html}, {json} and {figures} figures",
                        {"--bench-json": "bench_layerwise.py output (default: see find_bench_json)"})


if __name__ == "__main__":  # pragma: no cover - thin entry point
    import sys

    sys.exit(main(sys.argv[1:]))
