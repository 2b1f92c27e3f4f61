"""The PQ Index reproduction suite ``pqi`` (Diao et al., ICLR 2023; issue 4, papers.md §5 P2).

``prunelab bench --suite pqi`` runs, on Fashion-MNIST with the paper's per-round recipe (SGD lr 0.1,
momentum 0.9, Nesterov, weight decay 5e-4, batch 250, cosine restarted every round, gradient-norm
clip 1.0; papers.md §2.4), rewinding to initialisation every round:

* (A) models ``linear`` and ``mlp`` (784-128-256-10), global scope: OS-0.2, LT-0.2,
  SAP(p=0.5, q=1, η_r=0, γ=1) and SAP(1, 2, 0, 1), β = 0.9;
* (B) the scope study on ``mlp``: SAP(0.5, 1) at neuron and layer scope (global is in (A)).

Budgets are scaled down from the paper's T = 30 rounds × E = 200 epochs to T = :data:`ROUNDS`,
E = :data:`EPOCHS` so the suite fits about half an hour of one CPU core (measured: 10 runs in 1614 s
wall with ``--threads 1`` on a 2-core machine shared with other jobs; docs/results/pqi/README.md). The harness's dense model
(trained with the same recipe for E epochs, epoch chosen on validation) is round 0 of every run.
Every run has target 0: the harness's iterative methods then run all their rounds
(``methods/iterative.py`` caps at the target only when it is > 0).

``python -m prunelab.reproductions.diao.suite OUTDIR`` (after the bench) writes the suite's own figures (density
per round, accuracy vs density, PQ Index per round, for every schedule on one axis), the checks of
the paper's qualitative claims and ``pqi_results.json`` (:func:`write_pqi_results`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from prunelab.errors import ConfigError
from prunelab.harness.runner import RunSpec
from prunelab.methods.iterative import keep_count
from prunelab.core.pqi import P_GRID, Q_GRID
from prunelab.harness.suites import Suite, register_suite

__all__ = ["ROUNDS", "EPOCHS", "SCHEDULES", "SCOPE_STUDY", "paper_budget", "pqi_specs", "pqi_suite",
           "display_name", "collect", "check_claims", "draw_figures", "write_pqi_results", "main"]

#: pruning rounds T (the paper: 30 for Linear/MLP/CNN).
ROUNDS = 15
#: epochs per round E (the paper: 200).
EPOCHS = 6

#: (A): ``(display name, method, hparams)`` at global scope. Hyperparameters equal to their
#: defaults are spelled out for the reader; the spec hash ignores them.
SCHEDULES = (
    ("OS-0.2", "os", {"rate": 0.2}),
    ("LT-0.2", "lt", {"rate": 0.2}),
    ("SAP(0.5,1)", "sap", {"p": 0.5, "q": 1.0, "eta_r": 0.0, "gamma": 1.0, "beta": 0.9}),
    ("SAP(1,2)", "sap", {"p": 1.0, "q": 2.0, "eta_r": 0.0, "gamma": 1.0, "beta": 0.9}),
)
#: (B): the scopes of SAP(0.5, 1) run on the scope model besides global.
SCOPE_STUDY = ("neuron", "layer")


def paper_budget(epochs: int) -> dict:
    """The paper's per-round recipe as ``TrainConfig`` fields (papers.md §2.4).

    Args:
        epochs: epochs per round.

    Returns:
        A dict for ``RunSpec.dense`` / ``RunSpec.retrain``; ``TrainConfig.from_dict`` of it (with a
        seed) equals ``methods.iterative.paper_train_config(epochs, seed)``.
    """
    return {"epochs": int(epochs), "batch_size": 250, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
            "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine", "clip_grad_norm": 1.0}


def pqi_specs(dataset: str = "fashion-mnist", rounds: int = ROUNDS, epochs: int = EPOCHS,
              models=("linear", "mlp"), scope_model: str | None = "mlp", seeds=(0,),
              data_kwargs: dict | None = None) -> list[RunSpec]:
    """The suite's run specs (a smaller budget for tests and smoke runs).

    Args:
        dataset: data set name.
        rounds: pruning rounds T of every schedule.
        epochs: epochs of dense training and of every retraining round.
        models: models of part (A); names or ``(name, kwargs)`` pairs.
        scope_model: the model of the scope study (B); None skips it. It must be in ``models``
            (global SAP(0.5, 1) of (A) is the study's third scope).
        seeds: run seeds.
        data_kwargs: options of ``prunelab.data.load`` (e.g. ``{"limit": 500}``).

    Returns:
        Specs ordered seed, model, schedule (then the scope study), all with target 0.

    Raises:
        ConfigError: ``scope_model`` is not one of ``models``.
    """
    names = [m if isinstance(m, str) else m[0] for m in models]
    if scope_model is not None and scope_model not in names:
        raise ConfigError(f"scope_model {scope_model!r} is not among the models {names}; the scope study reuses "
                          "that model's global SAP(0.5,1) run, so add it to models or pass scope_model=None")
    budget = paper_budget(epochs)
    specs = []
    for seed in seeds:
        for model in models:
            name, kwargs = (model, {}) if isinstance(model, str) else (model[0], dict(model[1]))
            variants = [(method, dict(hp)) for _, method, hp in SCHEDULES]
            if name == scope_model:
                variants += [("sap", dict(SCHEDULES[2][2], scope=scope)) for scope in SCOPE_STUDY]
            for method, hp in variants:
                specs.append(RunSpec(dataset=dataset, model=name, method=method, target=0.0, seed=seed,
                                     hparams=dict(hp, rounds=int(rounds)), model_kwargs=kwargs,
                                     data_kwargs=dict(data_kwargs or {}), dense=budget, retrain=budget))
    return specs


@register_suite("pqi")
def pqi_suite(dataset: str | None = None) -> Suite:
    """The issue-4 reproduction: OS/LT/SAP on Linear and MLP, plus the SAP scope study on MLP."""
    dataset = dataset or "fashion-mnist"
    specs = pqi_specs(dataset)
    return Suite(
        "pqi", tuple(specs),
        description=f"{dataset}, linear and mlp, global OS-0.2, LT-0.2, SAP(0.5,1,0,1), SAP(1,2,0,1), plus SAP(0.5,1) "
                    f"at neuron and layer scope on mlp; T={ROUNDS} rounds x E={EPOCHS} epochs, paper recipe, "
                    "rewind to init, seed 0",
        notes=f"Scaled down from the paper's T=30 rounds x E=200 epochs to T={ROUNDS} x E={EPOCHS} to fit about 30 "
              "minutes of CPU. Target 0: every schedule runs all its rounds, so 'sparsity' is what it reached. "
              "Per-round figures and the checks of the paper's claims: python -m prunelab.reproductions.diao.suite OUTDIR.")


# --------------------------------------------------------------------------- the suite's own report
# report.py draws one trace figure per method; the paper's claims need every schedule on one axis,
# so the suite draws its own figures from the store (``python -m prunelab.reproductions.diao.suite OUTDIR``).

#: record fields kept in pqi_results.json (the store keeps every field, the p×q grid included).
_KEEP = ("round", "kept", "total", "density", "pruned", "pqi", "gini", "val_top1", "test_top1", "pruned_val_top1",
         "pruned_test_top1", "best_epoch", "seconds_train", "pqi_layer", "prune_info")
#: PQ Index pairs read off each round's grid, so every schedule is compared at the same (p, q).
PQ_PAIRS = {"pqi_0.5_1": (0.5, 1.0), "pqi_1_2": (1.0, 2.0)}
#: "low density" of claim (v): the paper's scope claim is about few remaining weights.
LOW_DENSITY = 0.1
#: a PQ Index move smaller than this is noise when the trajectory's phases are named.
SWING_TOLERANCE = 0.01
_STYLE = {"OS-0.2": ("C0", "o"), "LT-0.2": ("C1", "s"), "SAP(0.5,1)": ("C2", "^"), "SAP(1,2)": ("C3", "v"),
          "SAP(0.5,1) layer": ("C4", "D"), "SAP(0.5,1) neuron": ("C5", "P")}


def display_name(spec: RunSpec) -> str:
    """The paper's name of a run: ``OS-0.2``, ``LT-0.2``, ``SAP(0.5,1)``, ``SAP(0.5,1) neuron`` ...

    η_r and γ are shown when not (0, 1); β is not shown. Other methods keep ``spec.label``.
    """
    hp = spec.hparams
    if spec.method in ("os", "lt"):
        name = f"{spec.method.upper()}-{hp.get('rate', 0.2):g}"
    elif spec.method == "sap":
        name = f"SAP({hp.get('p', 0.5):g},{hp.get('q', 1.0):g}"
        if hp.get("eta_r", 0.0) != 0 or hp.get("gamma", 1.0) != 1:
            name += f",{hp.get('eta_r', 0.0):g},{hp.get('gamma', 1.0):g}"
        name += ")"
    else:
        return spec.label
    scope = hp.get("scope", "global")
    return name if scope == "global" else f"{name} {scope}"


def _slim(rec: dict) -> dict:
    out = {k: rec[k] for k in _KEEP if k in rec}
    grid = rec.get("pqi_grid")
    for key, (p, q) in PQ_PAIRS.items():
        out[key] = grid[P_GRID.index(p)][Q_GRID.index(q)] if grid else None
    return out


def collect(results) -> dict:
    """The iterative runs of a store, per model and schedule.

    Args:
        results: :class:`~prunelab.harness.runner.RunResult` objects (e.g. ``Store.results()``).

    Returns:
        ``{model: {display name: run}}``; a run has ``hash``, ``seed``, ``dataset``, ``hparams``,
        ``dense``/``retrain`` budgets, ``time_total``, ``final_layer_density`` (prunable layer
        → density of the final model) and ``rounds`` (per-round records with
        ``pqi_0.5_1`` and ``pqi_1_2`` read off the grid). With several seeds the lowest is kept.
    """
    out: dict = {}
    for r in sorted(results, key=lambda r: r.spec.seed):
        rounds = r.traces.get("rounds")
        if r.spec.method not in ("os", "lt", "sap") or not rounds:
            continue
        runs = out.setdefault(r.spec.model, {})
        name = display_name(r.spec)
        if name not in runs:
            runs[name] = {"hash": r.hash, "seed": r.spec.seed, "dataset": r.spec.dataset, "label": r.label,
                          "hparams": r.spec.hparams, "dense": r.spec.dense, "retrain": r.spec.retrain,
                          "time_total": r.metrics.get("time_total"),
                          "time_dense_train": r.metrics.get("time_dense_train"),
                          "final_layer_density": {layer["name"]: 1.0 - layer["sparsity"] for layer in r.layers
                                                  if layer.get("sparsity") is not None},
                          "rounds": [_slim(rec) for rec in sorted(rounds, key=lambda x: x["round"])]}
    return out


def swings(values, tolerance: float = SWING_TOLERANCE) -> list[dict]:
    """The moves of a series larger than ``tolerance`` (a zigzag with hysteresis).

    Args:
        values: the series (e.g. the PQ Index per round).
        tolerance: a move smaller than this does not start a new phase.

    Returns:
        ``[{"direction": "down" | "up", "start": i, "end": j, "from": v_i, "to": v_j}, ...]``:
        consecutive phases, each ending at its extreme; e.g. ``[0.3, 0.2, 0.25, 0.5, 0.1]`` gives
        down (0→1), up (1→3), down (3→4).
    """
    values = [float(v) for v in values]
    phases: list[dict] = []
    if not values:
        return phases
    start = ext = 0
    direction = None
    for i, v in enumerate(values[1:], start=1):
        if direction is None:
            # Before the first phase the reference is the running extreme in either direction.
            if abs(v - values[start]) >= tolerance:
                direction, ext = ("down" if v < values[start] else "up"), i
            continue
        if (v < values[ext]) if direction == "down" else (v > values[ext]):
            ext = i
        elif abs(v - values[ext]) >= tolerance:
            phases.append({"direction": direction, "start": start, "end": ext})
            start, ext, direction = ext, i, "up" if direction == "down" else "down"
    if direction is not None:
        phases.append({"direction": direction, "start": start, "end": ext})
    for ph in phases:
        ph["from"], ph["to"] = values[ph["start"]], values[ph["end"]]
    return phases


def _log_interp(points, density: float):
    """y at ``density`` on a polyline of (density, y) points, linear in log density; None outside."""
    pts = sorted((d, y) for d, y in points if d > 0 and y is not None)
    for (d0, y0), (d1, y1) in zip(pts, pts[1:]):
        if d0 <= density <= d1:
            if d1 == d0:
                return y1
            w = (math.log(density) - math.log(d0)) / (math.log(d1) - math.log(d0))
            return y0 + w * (y1 - y0)
    return None


def _mean(values):
    return sum(values) / len(values) if values else None


def _first_round_at(rounds, density: float):
    return next((rec["round"] for rec in rounds if rec["density"] <= density), None)


def check_claims(collected: dict) -> dict:
    """Check the paper's qualitative claims (issue 4) on the collected runs, per model.

    * ``i_first_prune``: SAP(0.5,1)'s first round prunes ⌊d·min(I, β)⌋, I the global PQ Index
      of the trained dense weights (η_r = 0, γ = 1: the fraction is I itself);
    * ``ii_fixed_fraction``: OS and LT keep round(0.8^t·n) weights in round t;
    * ``iii_sap12_faster``: SAP(1,2) has at most SAP(0.5,1)'s density every round (and less at
      some), rounds to reach 10 % and 1 % density;
    * ``iv_pqi_trajectory``: phases of I_{0.5,1} per round (:func:`swings`) of every schedule;
      the paper's pattern is down, up, down;
    * ``v_low_density``: every SAP(0.5,1) scope (and SAP(1,2)) against OS and LT at the same density (test
      top-1 after retraining, baselines interpolated in log density): mean gap over SAP's rounds
      at or below :data:`LOW_DENSITY` (``mean_gap``, the claim; None when SAP never got there)
      and over all its rounds the baseline's rounds span (``mean_gap_all``).

    Returns:
        ``{model: {claim: facts}}``; every claim has ``holds`` (bool, or None when it is a
        description or not testable); per-schedule facts of (ii), (iv), (v) are under ``runs``.
    """
    out = {}
    for model, runs in collected.items():
        c: dict = {}
        sap = runs.get("SAP(0.5,1)")
        if sap and len(sap["rounds"]) > 1:
            r0, r1 = sap["rounds"][:2]
            beta = sap["hparams"].get("beta", 0.9)
            # the driver floors d·I with a 1e-12 relative slack (exact decimal inputs); so do we
            expected = math.floor(r0["kept"] * min(r0["pqi"], beta) * (1 + 1e-12))
            c["i_first_prune"] = {"pqi_dense": r0["pqi"], "d": r0["kept"], "beta": beta, "expected": expected,
                                  "pruned": r1["pruned"], "fraction": r1["pruned"] / r0["kept"],
                                  "holds": r1["pruned"] == expected}
        fixed = {}
        for name in ("OS-0.2", "LT-0.2"):
            run = runs.get(name)
            if run:
                rate, rounds = run["hparams"].get("rate", 0.2), run["rounds"]
                total = rounds[0]["total"]
                kept = [rec["kept"] for rec in rounds]
                expected = [keep_count(total, rate, rec["round"]) for rec in rounds]
                fixed[name] = {"kept": kept, "expected": expected, "holds": kept == expected,
                               "max_density_error": max(abs(rec["density"] - (1 - rate) ** rec["round"])
                                                        for rec in rounds)}
        if fixed:
            c["ii_fixed_fraction"] = {"runs": fixed, "holds": all(v["holds"] for v in fixed.values())}
        fast = runs.get("SAP(1,2)")
        if sap and fast:
            n = min(len(sap["rounds"]), len(fast["rounds"]))
            ds = [rec["density"] for rec in sap["rounds"][:n]]
            df = [rec["density"] for rec in fast["rounds"][:n]]
            c["iii_sap12_faster"] = {
                "density_sap_0.5_1": ds, "density_sap_1_2": df,
                "first_fraction": {"SAP(0.5,1)": 1 - ds[1] if n > 1 else None, "SAP(1,2)": 1 - df[1] if n > 1 else None},
                "round_density_10pct": {"SAP(0.5,1)": _first_round_at(sap["rounds"], 0.1),
                                        "SAP(1,2)": _first_round_at(fast["rounds"], 0.1)},
                "round_density_1pct": {"SAP(0.5,1)": _first_round_at(sap["rounds"], 0.01),
                                       "SAP(1,2)": _first_round_at(fast["rounds"], 0.01)},
                "holds": all(a <= b for a, b in zip(df, ds)) and any(a < b for a, b in zip(df, ds))}
        traj = {}
        for name, run in runs.items():
            series = [rec["pqi_0.5_1"] for rec in run["rounds"]]
            phases = swings(series)
            traj[name] = {"pqi_0.5_1": series, "phases": phases,
                          "pattern": [ph["direction"] for ph in phases],
                          "down_up_down": [ph["direction"] for ph in phases][:3] == ["down", "up", "down"]}
        c["iv_pqi_trajectory"] = {"runs": traj, "holds": None}  # a description per schedule, no single verdict
        low = {}
        for name in ("SAP(0.5,1)", "SAP(0.5,1) layer", "SAP(0.5,1) neuron", "SAP(1,2)"):
            run = runs.get(name)
            if not run:
                continue
            entry = {"final_density": run["rounds"][-1]["density"], "final_test_top1": run["rounds"][-1]["test_top1"]}
            for base in ("OS-0.2", "LT-0.2"):
                b = runs.get(base)
                if not b:
                    continue
                curve = [(rec["density"], rec["test_top1"]) for rec in b["rounds"]]
                gaps = []
                for rec in run["rounds"][1:]:
                    ref = _log_interp(curve, rec["density"])
                    if ref is not None:
                        gaps.append({"round": rec["round"], "density": rec["density"], "sap": rec["test_top1"],
                                     "baseline": ref, "gap": rec["test_top1"] - ref})
                low_gaps = [g for g in gaps if g["density"] <= LOW_DENSITY]
                entry[base] = {"final_density": b["rounds"][-1]["density"],
                               "final_test_top1": b["rounds"][-1]["test_top1"], "matched": gaps,
                               "mean_gap_all": _mean([g["gap"] for g in gaps]),
                               "wins_all": sum(g["gap"] > 0 for g in gaps),
                               "mean_gap": _mean([g["gap"] for g in low_gaps]), "matched_low": len(low_gaps),
                               "wins": sum(g["gap"] > 0 for g in low_gaps)}
            low[name] = entry
        if low:
            verdicts = [e[b]["mean_gap"] > 0 for name, e in low.items() if name.endswith(("layer", "neuron"))
                        for b in ("OS-0.2", "LT-0.2") if b in e and e[b]["mean_gap"] is not None]
            c["v_low_density"] = {"runs": low, "holds": all(verdicts) if verdicts else None}
        out[model] = c
    return out


# --------------------------------------------------------------------------- figures

def _panels(collected: dict) -> list[tuple[str, str, list[str]]]:
    """(title, model, schedule names): one global panel per model, one scope panel where run."""
    panels = []
    for model, runs in collected.items():
        glob = [n for n in runs if " " not in n]
        panels.append((f"{model}: global scope", model, glob))
        scoped = [n for n in runs if " " in n]
        if scoped:
            base = [n for n in ("OS-0.2", "LT-0.2", "SAP(0.5,1)") if n in runs]
            panels.append((f"{model}: SAP(0.5,1) scopes", model, base + scoped))
    return panels


def _plot(ax, name, xs, ys, **kw):
    color, marker = _STYLE.get(name, (None, "."))
    pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if pts:
        ax.plot(*zip(*pts), color=color, marker=marker, ms=3.5, lw=1.3, label=name, **kw)


def _density_axis(axis) -> None:
    """Log-scaled density axis with ticks at 100, 50, 20, 10, 5 ... % (matplotlib's minor labels collide)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_major_locator(FixedLocator([m * 10.0 ** -k for k in range(0, 5) for m in (1, 0.5, 0.2)]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    axis.set_minor_formatter(NullFormatter())


def _figure(rows: int, cols: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * cols + 0.4, 3.3 * rows + 0.5), dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    tmp.replace(path)
    return path


def draw_figures(collected: dict, fig_dir) -> list[Path]:
    """Draw density per round, accuracy vs density, and PQ Index per round, every schedule per panel.

    Args:
        collected: :func:`collect`'s output.
        fig_dir: folder for the PNGs (created).

    Returns:
        The paths written: ``pqi-density.png``, ``pqi-accuracy-vs-density.png``, ``pqi-index.png``.
    """
    from matplotlib.ticker import MaxNLocator

    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    panels = _panels(collected)
    paths = []

    fig, axes = _figure(1, len(panels))
    for ax, (title, model, names) in zip(axes[0], panels):
        t_max = 0
        for name in names:
            rounds = collected[model][name]["rounds"]
            t_max = max(t_max, rounds[-1]["round"])
            _plot(ax, name, [r["round"] for r in rounds], [r["density"] for r in rounds])
        ax.plot(range(t_max + 1), [0.8 ** t for t in range(t_max + 1)], color="0.4", ls=":", lw=1, label="0.8^t")
        ax.set_yscale("log")
        _density_axis(ax.yaxis)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=title, xlabel="round t", ylabel="density (remaining prunable weights)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Density per round", fontsize=11)
    paths.append(_save(fig, fig_dir / "pqi-density.png"))

    fig, axes = _figure(2, len(panels))
    for col, (title, model, names) in enumerate(panels):
        lowest = min(r["density"] for name in names for r in collected[model][name]["rounds"])
        for row, (key, what) in enumerate((("test_top1", "after retraining"),
                                           ("pruned_test_top1", "pruned, before retraining"))):
            ax = axes[row][col]
            for name in names:
                rounds = collected[model][name]["rounds"]
                _plot(ax, name, [r["density"] for r in rounds],
                      [None if r.get(key) is None else 100 * r[key] for r in rounds])
            ax.set_xscale("log")
            _density_axis(ax.xaxis)
            ax.set_xlim(1.15, 0.85 * lowest)  # inverted: density falls to the right, both rows alike
            ax.set(title=f"{title}\n{what}", xlabel="density (log)", ylabel="test top-1 (%)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Test accuracy vs density (one point per round; density falls to the right)", fontsize=11)
    paths.append(_save(fig, fig_dir / "pqi-accuracy-vs-density.png"))

    fig, axes = _figure(2, len(panels))
    for col, (title, model, names) in enumerate(panels):
        for row, (key, label) in enumerate((("pqi_0.5_1", "global PQ Index I_{0.5,1}"), ("test_top1", "test top-1 (%)"))):
            ax = axes[row][col]
            for name in names:
                rounds = collected[model][name]["rounds"]
                scale = 100 if key == "test_top1" else 1
                _plot(ax, name, [r["round"] for r in rounds],
                      [None if r.get(key) is None else scale * r[key] for r in rounds])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set(title=title, xlabel="round t", ylabel=label)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("PQ Index of the trained weights w_t over m_t, and accuracy, per round", fontsize=11)
    paths.append(_save(fig, fig_dir / "pqi-index.png"))
    return paths


# --------------------------------------------------------------------------- tables and files

def _pct(v, digits=2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def summary_markdown(collected: dict, checks: dict) -> str:
    """Tables of the collected runs: final density and accuracy, then per-round density, test
    top-1 and I_{0.5,1} per schedule, then one line per claim."""
    lines = []
    for model, runs in collected.items():
        lines += [f"### {model}", "", "| schedule | rounds | final density % | final test top-1 % | final val top-1 % | "
                  "pruned test top-1 % (last round, before retraining) | dense test top-1 % | seconds |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for name, run in runs.items():
            first, last = run["rounds"][0], run["rounds"][-1]
            lines.append(f"| {name} | {last['round']} | {_pct(last['density'], 3)} | {_pct(last['test_top1'])} | "
                         f"{_pct(last['val_top1'])} | {_pct(last.get('pruned_test_top1'))} | {_pct(first['test_top1'])} | "
                         f"{run['time_total']:.0f} |")
        names = list(runs)
        layers = list(dict.fromkeys(k for r in runs.values() for k in r["final_layer_density"]))
        lines += ["", "final density % per layer:", "", "| schedule | " + " | ".join(layers) + " |",
                  "|---|" + "--:|" * len(layers)]
        for name, run in runs.items():
            lines.append(f"| {name} | " + " | ".join(_pct(run["final_layer_density"].get(k), 1) for k in layers) + " |")
        n = max(len(r["rounds"]) for r in runs.values())
        for key, what, fmt in (("density", "density %", lambda v: _pct(v, 2)),
                               ("test_top1", "test top-1 % after retraining", _pct),
                               ("pqi_0.5_1", "global I_{0.5,1} of the trained weights", lambda v: "–" if v is None else f"{v:.4f}")):
            lines += ["", f"{what} per round:", "", "| t | " + " | ".join(names) + " |",
                      "|--:|" + "--:|" * len(names)]
            for t in range(n):
                cells = [fmt(runs[nm]["rounds"][t].get(key)) if t < len(runs[nm]["rounds"]) else "" for nm in names]
                lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines += ["", _claims_text(checks.get(model, {})), ""]
    return "\n".join(lines)


def _claims_text(c: dict) -> str:
    def at(r):
        return "never" if r is None else f"round {r}"

    out = []
    if "i_first_prune" in c:
        x = c["i_first_prune"]
        out.append(f"- (i) SAP(0.5,1) first round: I_{{0.5,1}}(dense) = {x['pqi_dense']:.4f}, d = {x['d']}, "
                   f"⌊d·min(I, β)⌋ = {x['expected']}, pruned {x['pruned']} ({_pct(x['fraction'])} %): "
                   f"{'holds' if x['holds'] else 'DOES NOT hold'}.")
    if "ii_fixed_fraction" in c:
        x = c["ii_fixed_fraction"]
        for name, v in x["runs"].items():
            out.append(f"- (ii) {name}: kept == round(0.8^t·n) every round: {v['holds']} "
                       f"(max |density − 0.8^t| = {v['max_density_error']:.1e}).")
    if "iii_sap12_faster" in c:
        x = c["iii_sap12_faster"]
        out.append(f"- (iii) first-round fraction pruned: SAP(0.5,1) {_pct(x['first_fraction']['SAP(0.5,1)'])} %, "
                   f"SAP(1,2) {_pct(x['first_fraction']['SAP(1,2)'])} %; density ≤ 10 %: SAP(0.5,1) "
                   f"{at(x['round_density_10pct']['SAP(0.5,1)'])}, SAP(1,2) {at(x['round_density_10pct']['SAP(1,2)'])}; "
                   f"≤ 1 %: {at(x['round_density_1pct']['SAP(0.5,1)'])}, {at(x['round_density_1pct']['SAP(1,2)'])}; SAP(1,2) at or "
                   f"below SAP(0.5,1) every round: {x['holds']}.")
    if "iv_pqi_trajectory" in c:
        for name, v in c["iv_pqi_trajectory"]["runs"].items():
            phases = ", ".join(f"{p['direction']} {p['from']:.3f}→{p['to']:.3f} (t {p['start']}→{p['end']})"
                               for p in v["phases"]) or "flat"
            out.append(f"- (iv) {name}: I_{{0.5,1}} {phases}.")
    if "v_low_density" in c:
        for name, v in c["v_low_density"]["runs"].items():
            parts = []
            for base in ("OS-0.2", "LT-0.2"):
                if base in v:
                    b = v[base]
                    low = "no round below 10 %" if b["mean_gap"] is None else \
                        f"below 10 %: {100 * b['mean_gap']:+.2f} points over {b['matched_low']} rounds ({b['wins']} wins)"
                    every = "no matched round" if b["mean_gap_all"] is None else \
                        f"all rounds: {100 * b['mean_gap_all']:+.2f} points over {len(b['matched'])} ({b['wins_all']} wins)"
                    parts.append(f"vs {base} at the same density, {every}, {low}")
            out.append(f"- (v) {name} (final density {_pct(v['final_density'], 3)} %, test {_pct(v['final_test_top1'])} %) "
                       + "; ".join(parts) + ".")
    return "\n".join(out)


def write_pqi_results(outdir, dest=None) -> dict:
    """Write the suite's figures, ``pqi_results.json`` and ``pqi_summary.md``.

    Args:
        outdir: the bench output directory (holding ``results.sqlite``).
        dest: where to write (default ``outdir``); figures go to ``dest/figures``.

    Returns:
        ``{"json": path, "summary": path, "figures": [paths]}``.

    Raises:
        ConfigError: no result store in ``outdir``, or no OS/LT/SAP run in it.
    """
    from prunelab.harness.report import atomic_write_text, read_suite_store
    from prunelab.harness.store import FILENAME

    outdir = Path(outdir)
    dest = Path(dest) if dest is not None else outdir
    results, _ = read_suite_store(outdir, "pqi")
    collected = collect(results)
    if not collected:
        raise ConfigError(f"{outdir / FILENAME} holds no completed OS/LT/SAP run; run `prunelab bench --suite pqi` first")
    checks = check_claims(collected)
    dest.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(collected, dest / "figures")
    info = next(r.info for r in results if r.spec.method in ("os", "lt", "sap"))
    payload = {"suite": "pqi", "provenance": {k: info.get(k) for k in ("git_sha", "torch", "threads", "data_source", "counted")},
               "pq_pairs": {k: list(v) for k, v in PQ_PAIRS.items()}, "swing_tolerance": SWING_TOLERANCE,
               "models": collected, "checks": checks}
    json_path, md_path = dest / "pqi_results.json", dest / "pqi_summary.md"
    atomic_write_text(json_path, json.dumps(payload, indent=1, sort_keys=False, allow_nan=False))
    atomic_write_text(md_path, summary_markdown(collected, checks))
    return {"json": json_path, "summary": md_path, "figures": figures}


def main(argv=None) -> int:
    """``python -m prunelab.reproductions.diao.suite OUTDIR [--dest DIR]``: write the suite's figures and checks."""
    from prunelab.harness.report import results_main

    return results_main(argv, "pqi", write_pqi_results, "wrote {json}, {summary} and {figures} figures")


if __name__ == "__main__":  # pragma: no cover - thin entry point
    import sys

    sys.exit(main(sys.argv[1:]))
