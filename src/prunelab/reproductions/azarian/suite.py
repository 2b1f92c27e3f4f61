"""The LTP reproduction suite (issue 9): ``prunelab bench --suite ltp``.

Fashion-MNIST, LeNet-300-100 and LeNet-5. LTP (Azarian et al. 2020) against gradual magnitude
pruning (Zhu & Gupta) and one-shot global magnitude pruning + retraining, at matched compression
(20×, 40×, 100×: sparsity 0.95, 0.975, 0.99) and equal epochs: per model every method starts from
the same dense model and gets the same epoch budget (LTP: thresholds until the target, then
fine-tuning with the mask fixed; GMP: the cubic schedule, then recovery; magnitude: one-shot, then
retraining). LTP's sparsity is set indirectly by λ (``penalty_weight``); λ per target and every
other choice (budget, threshold learning rate, T₀, gradient, learning rates, GMP's end point) were
made on the *validation* split of LeNet-300-100 (``docs/results/ltp/tuning.md``: no alternative
beat the incumbent by more than 0.3 point, so the recipe stayed). LeNet-5 reuses them, except λ at
100× (see :data:`LTP_LAMBDA_LENET5`).

LeNet-300-100 gets 10 epochs per method (20 dense). Both models run seeds 0, 1 and 2 at every
target (each seed with its own dense model): the checks (40× within 1 point of dense, LTP within
0.5 point of GMP) are on the mean of the three. Every method shares one retraining / fine-tune
recipe, weight decay :data:`RETRAIN_WEIGHT_DECAY` included (chosen in session 3 on validation with
seeds 3 and 4, which the report does not use). LeNet-5 is scaled down to 8 dense epochs and 5 per
method so the suite fits about an hour of one CPU core. One extra LTP run on LeNet-300-100 trains
thresholds for the whole budget (no stop at the target), to show the *trail*.

The batch-norm study runs LTP's thresholding on a narrow ``cnn`` with the L0 term and, under the
same thresholding, with L1 and L2 penalties on the weights instead; on the cnn with batch-norm
after every conv and on the same cnn without it (``batch_norm=False``), so the effect of BN is
isolated. Thresholds train for the whole budget; sparsity is recorded every epoch.

``python -m prunelab.reproductions.azarian.suite OUTDIR --dest DIR`` (after the bench) writes ``report.md`` (the
table, the checks of the issue's acceptance, the BN study), ``figures/`` (the trail and the BN
study) and ``ltp_results.json`` (:func:`write_ltp_results`).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import ConfigError
from prunelab.harness.runner import RunSpec
from prunelab.harness.suites import Suite, register_suite

__all__ = ["TARGETS", "PLANS", "BN_STUDY", "ModelPlan", "ltp_specs", "ltp_suite", "collect", "check_acceptance",
           "draw_figures", "report_markdown", "write_ltp_results", "main"]

#: sparsities of the comparison: 20×, 40× and 100× compression.
TARGETS = (0.95, 0.975, 0.99)


def _budget(epochs: int, optimizer: str = "adam", lr: float = 3e-3, **extra) -> dict:
    return {"epochs": int(epochs), "optimizer": optimizer, "lr": lr, "batch_size": 128, "schedule": "cosine", **extra}


@dataclass(frozen=True)
class ModelPlan:
    """One model of the comparison.

    Attributes:
        model: model name; ``model_kwargs`` its options.
        dense: budget of the dense model (TrainConfig fields).
        retrain: the budget every method gets from the dense model (LTP and GMP train within it).
        ltp: ``target -> LTP hyperparameters`` (λ per target).
        gmp: GMP hyperparameters (all targets).
        trail: hyperparameters and target of the extra LTP run that trains thresholds for the whole
            budget (None: no such run).
        extra_seeds: further seeds of the comparison (each with its own dense model) at
            ``extra_seed_targets``.
        extra_seed_targets: the targets repeated with ``extra_seeds``.
    """

    model: str
    dense: dict
    retrain: dict
    ltp: dict
    gmp: dict
    model_kwargs: dict = field(default_factory=dict)
    trail: tuple | None = None
    extra_seeds: tuple = ()
    extra_seed_targets: tuple = ()


#: LTP hyperparameters shared by every comparison run (λ comes per target).
LTP_COMMON = {"gradient": "exact"}
#: λ per target, chosen on LeNet-300-100's validation split (docs/results/ltp/tuning.md).
LTP_LAMBDA = {0.95: 1.0, 0.975: 3.0, 0.99: 15.0}
#: LeNet-5's λ: the same, except 100×, where λ = 15 reached only 96.8× within the budget; 20 is
#: the smallest of 15, 20, 30 that reaches the target (chosen by compression reached, not accuracy).
LTP_LAMBDA_LENET5 = {0.95: 1.0, 0.975: 3.0, 0.99: 20.0}
#: GMP's schedule; its end point chosen on the validation split as well.
GMP_HP = {"end_fraction": 0.5}
#: weight decay (coupled L2, Adam) of the retraining / fine-tune recipe every method shares: chosen
#: on validation with seeds 3 and 4 (never reported), from 0, 1e-4 and 3e-4, as the best mean over
#: the three methods and targets; it strengthens GMP most (docs/results/ltp/tuning.md, session 3).
RETRAIN_WEIGHT_DECAY = 3e-4

PLANS = (
    ModelPlan("lenet-300-100", dense=_budget(20, lr=1e-3), retrain=_budget(10, weight_decay=RETRAIN_WEIGHT_DECAY),
              ltp={t: dict(LTP_COMMON, penalty_weight=lam) for t, lam in LTP_LAMBDA.items()}, gmp=dict(GMP_HP),
              trail=(0.975, dict(LTP_COMMON, penalty_weight=3.0, stop_at_target=False)),
              extra_seeds=(1, 2), extra_seed_targets=TARGETS),
    ModelPlan("lenet5", dense=_budget(8, lr=1e-3), retrain=_budget(5, weight_decay=RETRAIN_WEIGHT_DECAY),
              ltp={t: dict(LTP_COMMON, penalty_weight=lam) for t, lam in LTP_LAMBDA_LENET5.items()},
              gmp=dict(GMP_HP), extra_seeds=(1, 2), extra_seed_targets=TARGETS),
)

#: the BN study: ``(penalty, λ)`` run on the cnn with and without batch-norm.
BN_STUDY = (("l0", 1.0), ("l1", 30.0), ("l2", 30.0))
BN_WIDTHS = (8, 16, 32, 64)
BN_DENSE = {"epochs": 4, "optimizer": "adam", "lr": 1e-3}
#: 5 epochs of thresholds (no stop at the target), then 1 fine-tune epoch of the picked network.
BN_BUDGET = {"epochs": 6, "optimizer": "sgd", "lr": 0.03}
BN_FINETUNE_EPOCHS = 1
#: the study's target: thresholds train for the whole budget regardless; afterwards the first
#: trail network at ≥ 10× (or, short of it, the most compressed one, not filled up) is fine-tuned.
BN_TARGET = 0.9


def ltp_specs(dataset: str = "fashion-mnist", plans=PLANS, targets=TARGETS, bn_study=BN_STUDY,
              bn_widths=BN_WIDTHS, bn_dense=None, bn_budget=None, seed: int = 0,
              data_kwargs: dict | None = None) -> list[RunSpec]:
    """The suite's run specs (smaller plans for tests and smoke runs).

    Args:
        dataset: data set name.
        plans: :class:`ModelPlan` per model of the comparison.
        targets: target sparsities of the comparison.
        bn_study: ``(penalty, λ)`` pairs of the BN study (empty: no study).
        bn_widths: widths of the study's ``cnn``.
        bn_dense, bn_budget: the study's dense and LTP budgets (default :data:`BN_DENSE`,
            :data:`BN_BUDGET`).
        seed: run seed.
        data_kwargs: options of ``prunelab.data.load``.

    Returns:
        Per model: LTP, GMP and magnitude at every target, then the trail run, then the extra
        seeds; then the BN study (with batch-norm, then without).
    """
    data_kwargs = dict(data_kwargs or {})

    def spec(model, kwargs, method, target, hp, dense, retrain, run_seed=seed):
        return RunSpec(dataset=dataset, model=model, method=method, target=float(target), seed=run_seed,
                       hparams=dict(hp), model_kwargs=dict(kwargs), data_kwargs=data_kwargs, dense=dict(dense),
                       retrain=dict(retrain))

    def compare(plan, target, run_seed):
        out = []
        if target in plan.ltp:
            out.append(spec(plan.model, plan.model_kwargs, "ltp", target, plan.ltp[target], plan.dense, plan.retrain,
                            run_seed))
        out.append(spec(plan.model, plan.model_kwargs, "gmp", target, plan.gmp, plan.dense, plan.retrain, run_seed))
        out.append(spec(plan.model, plan.model_kwargs, "magnitude", target, {}, plan.dense, plan.retrain, run_seed))
        return out

    specs = []
    for plan in plans:
        for target in targets:
            specs += compare(plan, target, seed)
        if plan.trail is not None:
            target, hp = plan.trail
            specs.append(spec(plan.model, plan.model_kwargs, "ltp", target, hp, plan.dense, plan.retrain))
        for extra in plan.extra_seeds:
            for target in plan.extra_seed_targets:
                specs += compare(plan, target, extra)
    for batch_norm in (True, False):
        for penalty, weight in bn_study:
            hp = {"penalty": penalty, "penalty_weight": weight, "stop_at_target": False,
                  "min_finetune_epochs": BN_FINETUNE_EPOCHS, "match_target": False}
            specs.append(spec("cnn", {"widths": list(bn_widths), "batch_norm": batch_norm}, "ltp", BN_TARGET, hp,
                              bn_dense or BN_DENSE, bn_budget or BN_BUDGET))
    return specs


@register_suite("ltp")
def ltp_suite(dataset: str | None = None) -> Suite:
    """LTP vs GMP vs magnitude + retraining at 20/40/100×, plus the batch-norm study."""
    dataset = dataset or "fashion-mnist"
    l300, l5 = PLANS
    return Suite(
        "ltp", tuple(ltp_specs(dataset)),
        description=f"{dataset}: LTP vs GMP vs magnitude+retrain at 20/40/100x, equal epochs "
                    f"(LeNet-300-100: {l300.retrain['epochs']}, LeNet-5: {l5.retrain['epochs']}); "
                    "BN study on a narrow cnn with and without batch-norm (L0 vs L1 vs L2)",
        notes=f"LTP's lambda per target and every other choice were made on the validation split of LeNet-300-100 "
              f"(docs/results/ltp/tuning.md); LeNet-5 reuses them, except lambda {LTP_LAMBDA_LENET5[0.99]:g} at 100x "
              f"(lambda {LTP_LAMBDA[0.99]:g} did not reach 100x within its budget). LeNet-5 is scaled down to fit the "
              f"suite in about an hour of one CPU core: dense {l5.dense['epochs']} epochs, {l5.retrain['epochs']} epochs per method "
              f"(LeNet-300-100: {l300.dense['epochs']} and {l300.retrain['epochs']}). Every method retrains / fine-tunes "
              f"with the same recipe, weight decay {RETRAIN_WEIGHT_DECAY:g} included (chosen on validation with seeds "
              f"that are not reported). Both models also run seeds {', '.join(map(str, l300.extra_seeds))} at every "
              "target (own dense models); the checks are on the mean of the seeds. "
              "Figures, checks and JSON: python -m prunelab.reproductions.azarian.suite OUTDIR --dest DIR.")


# --------------------------------------------------------------------------- the suite's own report

_RUN_KEYS = ("compression_ratio", "sparsity", "final_val_top1", "final_test_top1", "time_total")
_TRAIL_KEYS = ("epoch", "step", "compression", "sparsity", "val_top1", "partial", "transition_fraction",
               "soft_density")
_METHODS = ("ltp", "gmp", "magnitude")
_NAMES = {"ltp": "LTP", "gmp": "GMP", "magnitude": "magnitude + retrain"}


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _run_record(r) -> dict:
    m = r.metrics
    out = {"hash": r.hash[:12], "label": r.label, "method": r.spec.method, "target": r.spec.target,
           "target_compression": 1.0 / (1.0 - r.spec.target), "hparams": dict(r.spec.hparams),
           "epochs": r.spec.retrain.get("epochs"),
           **{k: _num(m.get(k)) for k in _RUN_KEYS}}
    if r.spec.method == "ltp":
        out.update({k: r.info.get(k) for k in ("picked_epoch", "picked_compression", "ltp_epochs", "finetune_epochs",
                                               "target_reached")})
        out["trail"] = [{k: _num(e.get(k)) for k in _TRAIL_KEYS} for e in r.traces.get("trail", [])]
        out["finetune"] = [{"epoch": h.get("epoch"), "val_top1": _num(h.get("val_top1"))}
                           for h in r.traces.get("finetune", [])]
    elif r.spec.method == "gmp":
        out["path"] = [{"epoch": h.get("epoch"), "sparsity": h.get("sparsity"), "val_top1": _num(h.get("val_top1"))}
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
        if r.spec.method not in _METHODS:
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
                       widths=r.spec.model_kwargs.get("widths"), dense_val_top1=_num(r.metrics.get("dense_val_top1")),
                       dense_test_top1=_num(r.metrics.get("dense_test_top1")))
            bn.append(rec)
            continue
        entry = models.setdefault(r.spec.model, {
            "dense": {"val_top1": _num(r.metrics.get("dense_val_top1")), "test_top1": _num(r.metrics.get("dense_test_top1"))},
            "dense_budget": dict(r.spec.dense), "budget": dict(r.spec.retrain), "rows": {}, "trail_runs": []})
        if _is_trail_run(r):
            entry["trail_runs"].append(_run_record(r))
            continue
        entry.setdefault("dense_by_seed", {})[r.spec.seed] = {
            "val_top1": _num(r.metrics.get("dense_val_top1")), "test_top1": _num(r.metrics.get("dense_test_top1"))}
        row = entry["rows"].setdefault(float(r.spec.target), {})
        if r.spec.method not in row:
            row[r.spec.method] = _run_record(r)
        row.setdefault("by_seed", {}).setdefault(r.spec.method, {}).setdefault(r.spec.seed, {
            "val_top1": _num(r.metrics.get("final_val_top1")), "test_top1": _num(r.metrics.get("final_test_top1")),
            "compression_ratio": _num(r.metrics.get("compression_ratio")),
            "dense_test_top1": _num(r.metrics.get("dense_test_top1"))})
    for entry in models.values():
        entry["rows"] = [dict(row, target=t, target_compression=1.0 / (1.0 - t))
                         for t, row in sorted(entry["rows"].items())]
    bn.sort(key=lambda e: (not e["batch_norm"], ["l0", "l1", "l2"].index(e["penalty"]) if e["penalty"] in
                           ("l0", "l1", "l2") else 9))
    return {"models": models, "bn_study": bn}


def _test(run):
    return None if run is None else run.get("final_test_top1")


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _mean_sd(values):
    """Mean and sample standard deviation (None for fewer than two values)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _seed_deltas(by_seed: dict) -> dict:
    """Per-seed LTP − dense and LTP − GMP (test top-1) over the seeds LTP ran, and their means."""
    ltp, gmp = by_seed.get("ltp", {}), by_seed.get("gmp", {})
    seeds = sorted(ltp)
    vs_dense = {s: None if ltp[s]["test_top1"] is None or ltp[s]["dense_test_top1"] is None
                else ltp[s]["test_top1"] - ltp[s]["dense_test_top1"] for s in seeds}
    vs_gmp = {s: ltp[s]["test_top1"] - gmp[s]["test_top1"] for s in seeds
              if s in gmp and ltp[s]["test_top1"] is not None and gmp[s]["test_top1"] is not None}
    return {"seeds": seeds, "ltp_minus_dense_by_seed": vs_dense, "ltp_minus_gmp_by_seed": vs_gmp,
            "ltp_minus_dense_mean": _mean(vs_dense.values()), "ltp_minus_gmp_mean": _mean(vs_gmp.values())}


def _growth(trail: list) -> dict:
    """How sparsity moved over an LTP trail: per-epoch compression and whether it kept rising."""
    points = [e for e in trail if e.get("sparsity") is not None]
    if len(points) < 2:
        return {"keeps_increasing": None}
    comp = [1.0 / max(1e-12, 1.0 - e["sparsity"]) for e in points]
    half = len(points) // 2
    late = comp[-1] / comp[half] if comp[half] > 0 else None
    rises = sum(1 for a, b in zip(comp, comp[1:]) if b > a * 1.01)
    return {"first_compression": comp[1], "final_compression": comp[-1], "half_compression": comp[half],
            "late_growth": late, "epochs_rising": rises, "epochs": len(points) - 1,
            # "keeps increasing": still gaining >= 10 % compression over the second half of the run
            # and rising (by > 1 %) in most epochs.
            "keeps_increasing": bool(late is not None and late >= 1.1 and rises >= (len(points) - 1) / 2)}


def check_acceptance(collected: dict, gap_to_dense: float = 0.01, gap_to_gmp: float = 0.005,
                     headline_model: str = "lenet-300-100", headline_target: float = 0.975) -> dict:
    """Check the issue's acceptance on the collected runs (test top-1, fractions).

    * ``ltp_vs_gmp``: per model and target, LTP's test top-1 minus GMP's (holds when ≥ −``gap_to_gmp``);
    * ``ltp_vs_dense``: per model and target, LTP minus the dense model; ``headline`` holds when
      the headline model at the headline target (LeNet-300-100, 40×) is within ``gap_to_dense``;
    * ``max_compression_within``: per model, the largest compression LTP reached within
      ``gap_to_dense`` of the dense model;
    * ``bn_study``: per BN-study run, how its sparsity moved (:func:`_growth`).

    Returns:
        A JSON-able dict of the facts, each claim with ``holds``.
    """
    out: dict = {"gap_to_dense": gap_to_dense, "gap_to_gmp": gap_to_gmp, "models": {}}
    for model, entry in collected["models"].items():
        dense = entry["dense"]["test_top1"]
        rows, best = [], None
        for row in entry["rows"]:
            ltp, gmp, mag = _test(row.get("ltp")), _test(row.get("gmp")), _test(row.get("magnitude"))
            vs_gmp = None if ltp is None or gmp is None else ltp - gmp
            vs_dense = None if ltp is None or dense is None else ltp - dense
            rows.append({"target": row["target"], "target_compression": row["target_compression"],
                         "ltp_minus_gmp": vs_gmp, "ltp_minus_dense": vs_dense,
                         "magnitude_minus_dense": None if mag is None or dense is None else mag - dense,
                         "gmp_minus_dense": None if gmp is None or dense is None else gmp - dense,
                         "within_gmp": None if vs_gmp is None else vs_gmp >= -gap_to_gmp - 1e-12,
                         "within_dense": None if vs_dense is None else vs_dense >= -gap_to_dense - 1e-12})
            seeds = _seed_deltas(row.get("by_seed", {}))
            rows[-1].update(seeds)
            if seeds.get("ltp_minus_dense_mean") is not None:
                rows[-1]["within_dense_mean"] = seeds["ltp_minus_dense_mean"] >= -gap_to_dense - 1e-12
                rows[-1]["within_gmp_mean"] = (None if seeds.get("ltp_minus_gmp_mean") is None
                                               else seeds["ltp_minus_gmp_mean"] >= -gap_to_gmp - 1e-12)
            # The verdict of a target run with several seeds is on their mean (the seeds were fixed
            # before any of them ran); a single seed decides alone.
            several = len(seeds["seeds"]) > 1
            rows[-1]["several_seeds"] = several
            rows[-1]["verdict_gmp"] = rows[-1].get("within_gmp_mean") if several else rows[-1]["within_gmp"]
            rows[-1]["verdict_dense"] = rows[-1].get("within_dense_mean") if several else rows[-1]["within_dense"]
        known = [r["verdict_gmp"] for r in rows if r["verdict_gmp"] is not None]
        for r, row in zip(rows, entry["rows"]):
            if r.get("verdict_dense"):
                comps = [v.get("compression_ratio") for v in row.get("by_seed", {}).get("ltp", {}).values()]
                comps = [c for c in comps if c is not None] or [row["ltp"].get("compression_ratio")]
                comp = min(comps)   # with several seeds, the least any of them reached
                best = comp if best is None or (comp or 0) > best else best
        out["models"][model] = {"rows": rows, "max_compression_within_dense": best,
                                "ltp_within_gmp_everywhere": all(known) if known else None}
    head = out["models"].get(headline_model, {})
    row = next((r for r in head.get("rows", []) if abs(r["target"] - headline_target) < 1e-9), None)
    # With several seeds at the headline target the verdict is on their mean (decided before any
    # of them was run); the lowest seed's own gap is reported beside it.
    several = row is not None and len(row.get("seeds", [])) > 1
    out["headline"] = {"model": headline_model, "target": headline_target,
                       "ltp_minus_dense": None if row is None else row["ltp_minus_dense"],
                       "seeds": [] if row is None else row.get("seeds", []),
                       "ltp_minus_dense_mean": row.get("ltp_minus_dense_mean") if several else None,
                       "holds": None if row is None else (row["within_dense_mean"] if several else row["within_dense"])}
    out["bn_study"] = [{"batch_norm": e["batch_norm"], "penalty": e["penalty"], "penalty_weight": e["penalty_weight"],
                        **_growth(e.get("trail", []))} for e in collected["bn_study"]]
    return out


# -- figures

def _figure(rows: int, cols: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * cols + 0.4, 3.5 * rows + 0.5), dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    tmp.replace(path)
    return path


def _comp(sparsity):
    return None if sparsity is None else 1.0 / max(1e-12, 1.0 - sparsity)


def _pct(x, digits=2):
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _picked(run: dict) -> str:
    if run.get("picked_compression") is None:
        return "–"
    return (f"{_x(run['picked_compression'])} (epoch {run.get('picked_epoch')}): "
            f"{_pct(run.get('final_val_top1'), 1)} %")


def _x(x):
    return "–" if x is None else (f"{x:.0f}×" if x >= 9.95 else f"{x:.1f}×")


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in model)


def draw_figures(collected: dict, fig_dir) -> list[Path]:
    """The trail figure per model and the BN-study figure.

    Trail (``trail-<model>.png``): validation top-1 of the hard-masked network against its
    compression after every epoch, one line per LTP run (thresholds learning, then the fine-tune
    epochs at the fixed mask), GMP's per-epoch path (dashed) and the dense model (dotted).
    BN study (``bn-study.png``): compression and validation top-1 per epoch for every penalty,
    with batch-norm (left) and without (right).

    Returns:
        The paths written.
    """
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for model, entry in collected["models"].items():
        fig, axes = _figure(1, 1)
        fig.set_size_inches(7, 4.8)
        ax = axes[0][0]
        runs = [row["ltp"] for row in entry["rows"] if "ltp" in row] + entry["trail_runs"]
        for i, run in enumerate(runs):
            color = f"C{i}"
            pts = [(_comp(e["sparsity"]), e["val_top1"]) for e in run["trail"] if e.get("val_top1") is not None]
            lam = run["hparams"].get("penalty_weight")
            stop = "no stop" if run["hparams"].get("stop_at_target") is False else f"target {_x(run['target_compression'])}"
            if pts:
                ax.plot(*zip(*pts), color=color, marker="o", ms=3, lw=1.2, label=f"LTP λ={lam:g} ({stop})")
                for (cx, acc), e in zip(pts, [e for e in run["trail"] if e.get("val_top1") is not None]):
                    if e["epoch"] and e["epoch"] % 2 == 0 or e.get("partial"):
                        ax.annotate(str(e["epoch"]), (cx, acc), fontsize=6, color=color, xytext=(2, 2),
                                    textcoords="offset points")
            ft = [h["val_top1"] for h in run.get("finetune", []) if h.get("val_top1") is not None]
            if ft and run.get("compression_ratio"):
                ax.plot([run["compression_ratio"]] * len(ft), ft, color=color, marker="_", ms=8, lw=0)
                ax.plot([run["compression_ratio"]], [max(ft)], color=color, marker="*", ms=9, lw=0)
        for j, row in enumerate(entry["rows"]):
            gmp = row.get("gmp")
            if gmp and gmp.get("path"):
                pts = [(_comp(p["sparsity"]), p["val_top1"]) for p in gmp["path"] if p["val_top1"] is not None]
                ax.plot(*zip(*pts), color="0.45", ls="--", marker=".", ms=3, lw=0.9,
                        label="GMP per epoch" if j == 0 else None)
        dense = entry["dense"]["val_top1"]
        if dense is not None:
            ax.axhline(dense, color="k", ls=":", lw=1, label=f"dense ({_pct(dense)} %)")
            ax.axhline(dense - 0.01, color="r", ls=":", lw=0.8, label="dense − 1 point")
        ax.set_xscale("log")
        lows = [p for run in runs for p in (e.get("val_top1") for e in run["trail"]) if p is not None]
        if dense is not None and lows:
            ax.set_ylim(max(min(lows), dense - 0.08) - 0.005, dense + 0.01)
        ax.set(xlabel="compression (prunable weights / kept), log", ylabel="validation top-1 (hard mask)",
               )
        ax.set_title(f"{model}: LTP trail per epoch ({entry['budget'].get('epochs')} epochs per run)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        fig.text(0.01, 0.005, "dots: thresholds learning (numbers: epoch); bars: fine-tune epochs at the fixed mask; "
                 "star: the epoch kept", fontsize=6.5)
        paths.append(_save(fig, fig_dir / f"trail-{_slug(model)}.png"))
    if collected["bn_study"]:
        fig, axes = _figure(2, 2)
        for col, batch_norm in enumerate((True, False)):
            runs = [e for e in collected["bn_study"] if e["batch_norm"] is batch_norm]
            for k, run in enumerate(runs):
                style = {"l0": ("C0", "o"), "l1": ("C1", "s"), "l2": ("C2", "^")}.get(run["penalty"], (f"C{k + 3}", "x"))
                ep = [e["epoch"] for e in run["trail"]]
                label = f"{run['penalty'].upper()} (λ={run['penalty_weight']:g})"
                axes[0][col].plot(ep, [_comp(e["sparsity"]) for e in run["trail"]], color=style[0], marker=style[1],
                                  ms=4, label=label)
                axes[1][col].plot(ep, [e["val_top1"] for e in run["trail"]], color=style[0], marker=style[1], ms=4,
                                  label=label)
            title = "with batch-norm" if batch_norm else "without batch-norm"
            axes[0][col].set(yscale="log", xlabel="epoch", ylabel="compression (log)", title=f"cnn {title}: sparsity")
            axes[1][col].set(xlabel="epoch", ylabel="validation top-1 (hard mask)", title=f"cnn {title}: accuracy")
            for ax in (axes[0][col], axes[1][col]):
                ax.grid(True, which="both", alpha=0.3)
                if runs:
                    ax.legend(fontsize=7)
        paths.append(_save(fig, fig_dir / "bn-study.png"))
    return paths


# -- markdown

def _delta(x):
    return "–" if x is None else f"{100 * x:+.2f}"


def report_markdown(collected: dict, checks: dict, figures=(), notes: str = "") -> str:
    """The suite's report: the table per model, the acceptance checks, the trail and the BN study."""
    lines = ["# LTP vs GMP vs magnitude + retraining (`prunelab bench --suite ltp`)", ""]
    if notes:
        lines += [notes, ""]
    for model, entry in collected["models"].items():
        d, b = entry["dense_budget"], entry["budget"]
        lines += [f"## {model}", "",
                  f"Dense: {d.get('epochs')} epochs ({d.get('optimizer')}, lr {d.get('lr')}, {d.get('schedule', 'constant')}), "
                  f"test top-1 **{_pct(entry['dense']['test_top1'])} %** (validation {_pct(entry['dense']['val_top1'])} %). "
                  f"Every method: **{b.get('epochs')} epochs** from that dense model (retraining / fine-tune recipe: "
                  f"{b.get('optimizer')}, lr {b.get('lr')}, {b.get('schedule', 'constant')}, batch {b.get('batch_size', 128)}"
                  + (f", weight decay {b['weight_decay']:g}" if b.get("weight_decay") else "") + "). "
                  "Test top-1 (%), validation top-1 in parentheses; Δ = LTP − GMP.", "",
                  "| compression | LTP | GMP | magnitude + retrain | Δ LTP − GMP | LTP − dense | LTP: λ, epochs thresholds / fine-tune |",
                  "|---|---|---|---|---|---|---|"]
        crow = {r["target"]: r for r in checks["models"].get(model, {}).get("rows", [])}
        if any(c.get("several_seeds") for c in crow.values()):
            dense_seeds = entry.get("dense_by_seed", {})
            dm = _mean_sd([v["test_top1"] for v in dense_seeds.values()])
            lines[-4] += (f" Dense test top-1 over seeds {', '.join(map(str, sorted(dense_seeds)))}: {_pct(dm[0])} ± "
                          f"{_pct(dm[1])} %. Rows with several seeds (each seed its own dense model) give the mean ± sample standard "
                          "deviation of test top-1 over the seeds, the mean validation top-1, and Δ on the means; "
                          "the λ / epochs column is the lowest seed's.")
        for row in entry["rows"]:
            c = crow.get(row["target"], {})
            several = c.get("several_seeds")
            cells = []
            for method in _METHODS:
                run = row.get(method)
                if run is None:
                    cells.append("–")
                    continue
                runs = list(row.get("by_seed", {}).get(method, {}).values()) if several else []
                comps = [r["compression_ratio"] for r in runs] or [run["compression_ratio"]]
                off = [x for x in comps if x is not None and abs(x / row["target_compression"] - 1) >= 0.02]
                if len(runs) > 1:
                    test = _mean_sd([r["test_top1"] for r in runs])
                    cell = f"{_pct(test[0])} ± {_pct(test[1])} ({_pct(_mean([r['val_top1'] for r in runs]))}), n={len(runs)}"
                else:
                    cell = f"{_pct(run['final_test_top1'])} ({_pct(run['final_val_top1'])})"
                cells.append(cell + (f" at {_x(min(off))}" if off else ""))
            ltp = row.get("ltp") or {}
            how = "–" if not ltp else (f"λ={ltp['hparams'].get('penalty_weight', 3.0):g}, {ltp.get('ltp_epochs')} / "
                                       f"{ltp.get('finetune_epochs')}" + ("" if ltp.get("target_reached", True)
                                                                          else " (target not reached)"))
            vs_gmp = c.get("ltp_minus_gmp_mean") if several else c.get("ltp_minus_gmp")
            vs_dense = c.get("ltp_minus_dense_mean") if several else c.get("ltp_minus_dense")
            lines.append(f"| {_x(row['target_compression'])} | " + " | ".join(cells)
                         + f" | {_delta(vs_gmp)} | {_delta(vs_dense)} | {how} |")
        for row in entry["rows"]:
            c = crow.get(row["target"], {})
            if len(c.get("seeds", [])) > 1:
                by = row["by_seed"]
                per = "; ".join(
                    f"seed {sd}: dense {_pct(by['ltp'][sd]['dense_test_top1'])}, LTP {_pct(by['ltp'][sd]['test_top1'])}, "
                    f"GMP {_pct(by.get('gmp', {}).get(sd, {}).get('test_top1'))}, "
                    f"magnitude {_pct(by.get('magnitude', {}).get(sd, {}).get('test_top1'))}" for sd in c["seeds"])
                lines += ["", f"Seeds {', '.join(map(str, c['seeds']))} at {_x(row['target_compression'])} (each seed its own "
                          f"dense model), test top-1 (%): {per}. Mean LTP − dense {_delta(c['ltp_minus_dense_mean'])}, "
                          f"mean LTP − GMP {_delta(c['ltp_minus_gmp_mean'])} points."]
        for run in entry["trail_runs"]:
            comp = [_comp(e["sparsity"]) for e in run["trail"]]
            lines += ["", f"Trail run (λ={run['hparams'].get('penalty_weight', 3.0):g}, thresholds learning for "
                          f"{run.get('ltp_epochs')} epochs, no stop at the target): compression per epoch "
                      + ", ".join(_x(c) for c in comp) + "; validation top-1 per epoch "
                      + ", ".join(_pct(e["val_top1"], 1) for e in run["trail"]) + " %."]
        lines.append("")
    lines += ["## Acceptance checks (test split)", ""]
    head = checks["headline"]
    if head["holds"] is None:
        lines.append(f"- {head['model']} at the headline target: no LTP run")
    else:
        mean = "" if head.get("ltp_minus_dense_mean") is None else (
            f"mean over seeds {', '.join(map(str, head['seeds']))}: {_delta(head['ltp_minus_dense_mean'])}, ")
        lines.append(f"- {head['model']} at {_x(1 / (1 - head['target']))}: LTP − dense = {mean}seed {min(head['seeds'] or [0])}: "
                     f"{_delta(head['ltp_minus_dense'])} points (needs ≥ {-100 * checks['gap_to_dense']:.1f}"
                     f"{' on the mean' if mean else ''}): **{'holds' if head['holds'] else 'MISSED'}**")
    for model, m in checks["models"].items():
        parts = [f"{_x(r['target_compression'])}: "
                 + (f"{_delta(r['ltp_minus_gmp_mean'])} (mean of {len(r['seeds'])} seeds)" if r.get("several_seeds")
                    else _delta(r["ltp_minus_gmp"])) for r in m["rows"]]
        verdict = {True: "holds", False: "MISSED", None: "not measured"}[m["ltp_within_gmp_everywhere"]]
        lines.append(f"- {model}: LTP − GMP " + ", ".join(parts) + f" points (needs ≥ {-100 * checks['gap_to_gmp']:.1f} "
                     f"at every target): **{verdict}**; the largest LTP compression within "
                     f"{100 * checks['gap_to_dense']:.0f} point of dense: {_x(m['max_compression_within_dense'])}")
    lines.append("")
    for path in figures:
        if Path(path).name.startswith("trail-"):
            lines += [f"![trail]({Path(path).parent.name}/{Path(path).name})", ""]
    if collected["bn_study"]:
        run0 = collected["bn_study"][0]
        lines += ["## Batch-norm study", "",
                  f"LTP's thresholding on `cnn` widths {run0.get('widths')} with the L0 term, or with L1 / L2 penalties on "
                  f"the weights instead (thresholds then learn from the task loss alone), {run0.get('ltp_epochs')} epochs of "
                  "thresholds each from the dense model, no stop"
                  + (f", then {run0['finetune_epochs']} fine-tune epoch(s) of the picked network"
                     if run0.get("finetune_epochs") else "") + "; the same cnn with batch-norm after every conv and "
                  "without (`batch_norm=False`). Compression of the hard mask after each epoch (validation top-1):", "",
                  "| BN | penalty | λ | compression per epoch | val top-1 per epoch (%) | late growth | keeps increasing "
                  "| picked, after fine-tune |",
                  "|---|---|---|---|---|---|---|---|"]
        growth = {(g["batch_norm"], g["penalty"], g["penalty_weight"]): g for g in checks["bn_study"]}
        for run in collected["bn_study"]:
            g = growth.get((run["batch_norm"], run["penalty"], run["penalty_weight"]), {})
            lines.append(f"| {'yes' if run['batch_norm'] else 'no'} | {run['penalty'].upper()} | {run['penalty_weight']:g} | "
                         + " → ".join(_x(_comp(e["sparsity"])) for e in run["trail"]) + " | "
                         + " / ".join(_pct(e["val_top1"], 1) for e in run["trail"]) + " | "
                         + ("–" if g.get("late_growth") is None else f"{g['late_growth']:.2f}×") + " | "
                         + {True: "yes", False: "no", None: "–"}[g.get("keeps_increasing")] + " | "
                         + _picked(run) + " |")
        lines += ["", "Late growth: final compression over the compression halfway through; \"keeps increasing\": late "
                      "growth ≥ 1.1× and compression rising (> 1 %) in at least half of the epochs. The per-epoch "
                      "accuracies are of the hard-masked trail networks as they come (batch-norm statistics "
                      "re-estimated, no fine-tuning); \"picked, after fine-tune\": the first trail network at ≥ "
                      f"{_x(1 / (1 - BN_TARGET))} (or the most compressed one), its epoch, and its validation top-1 after "
                      f"{BN_FINETUNE_EPOCHS} epoch of fine-tuning with the mask fixed.", ""]
        for path in figures:
            if Path(path).name == "bn-study.png":
                lines += [f"![BN study]({Path(path).parent.name}/{Path(path).name})", ""]
    return "\n".join(lines)


def write_ltp_results(outdir, dest=None) -> dict:
    """Write ``report.md``, ``figures/*.png`` and ``ltp_results.json`` for a ``--suite ltp`` store.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``).
        dest: where to write (default ``outdir``); figures go to ``dest/figures``.

    Returns:
        ``{"json": path, "report": path, "figures": [paths]}``.

    Raises:
        ConfigError: no result store in ``outdir``, or no LTP/GMP/magnitude run in it.
    """
    from prunelab.harness.report import atomic_write_text, read_suite_store
    from prunelab.harness.store import FILENAME

    outdir = Path(outdir)
    dest = Path(dest) if dest is not None else outdir
    results, suites = read_suite_store(outdir, "ltp")
    notes = suites.get("ltp", {}).get("notes", "")
    collected = collect(results)
    if not collected["models"] and not collected["bn_study"]:
        raise ConfigError(f"{outdir / FILENAME} holds no completed LTP, GMP or magnitude run; "
                          "run `prunelab bench --suite ltp` first")
    checks = check_acceptance(collected)
    dest.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(collected, dest / "figures")
    info = next((r.info for r in results if r.spec.method in _METHODS), {})
    payload = {"suite": "ltp", "provenance": {k: info.get(k) for k in ("git_sha", "torch", "threads", "data_source")},
               "models": collected["models"], "bn_study": collected["bn_study"], "checks": checks}
    json_path, md_path = dest / "ltp_results.json", dest / "report.md"
    atomic_write_text(json_path, json.dumps(payload, indent=1, allow_nan=False))
    atomic_write_text(md_path, report_markdown(collected, checks, figures, notes))
    return {"json": json_path, "report": md_path, "figures": figures}


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.azarian.suite OUTDIR [--dest DIR]``: write the suite's report, figures and JSON."""
    from prunelab.harness.report import results_main

    return results_main(argv, "ltp", write_ltp_results, "wrote {report}, {json} and {figures} figures")


if __name__ == "__main__":  # pragma: no cover - thin entry point
    import sys

    sys.exit(main(sys.argv[1:]))
