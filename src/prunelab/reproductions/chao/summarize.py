"""Tables and the frontier figure of the gRDA measurements (reads the JSON lines of
:mod:`prunelab.reproductions.chao.experiment`).

Writes ``results.json`` (every run, traces included, and the table), ``table.md``,
``frontier.png`` (test top-1 against sparsity of the prunable weights: gRDA points, magnitude
pruning + retraining at equal total epochs, plain SGD as a line) and ``trace_<model>_e<epochs>.png``
(sparsity and validation top-1 per epoch) to ``--out`` (default: the checkout's ``docs/results/grda``).

    python -m prunelab.reproductions.chao.summarize docs/results/grda/runs/*.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunelab.utils.figures import new_figure, png_bytes
from prunelab.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from prunelab.utils.render import markdown_table

#: where the tables and figures go by default: ``docs/results/grda`` of the source checkout
#: (this file is src/prunelab/reproductions/chao/summarize.py).
DEFAULT_OUT = Path(__file__).resolve().parents[4] / "docs" / "results" / "grda"


def load(paths) -> list[dict]:
    """Every run of the JSON-lines files, each with ``source`` (its file's name)."""
    runs = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                runs.append(dict(json.loads(line), source=Path(path).name))
    return runs


def sgd_for(runs, run) -> dict | None:
    """The plain-SGD run with the same model, epochs, lr, schedule and seed."""
    for r in runs:
        if r["kind"] == "sgd" and all(r[k] == run[k] for k in ("model", "epochs", "lr", "schedule", "seed")):
            return r
    return None


def table(runs) -> list[dict]:
    """One row per gRDA or magnitude+retrain run, with its plain-SGD reference and the differences."""
    rows = []
    for r in runs:
        if r["kind"] not in ("grda", "magret"):
            continue
        sgd = sgd_for(runs, r)
        rows.append({
            "model": r["model"], "kind": r["kind"], "mu": r.get("mu"), "c": r.get("c"),
            "target": r.get("target"), "retrain": r.get("retrain"), "lr": r["lr"], "epochs": r["epochs"],
            "sparsity": r["sparsity"], "sparsity_all": r["sparsity_all"],
            "val_top1": r["val_top1"], "test_top1": r["test_top1"],
            "sgd_val_top1": sgd["val_top1"] if sgd else None, "sgd_test_top1": sgd["test_top1"] if sgd else None,
            "test_diff_points": 100 * (r["test_top1"] - sgd["test_top1"]) if sgd else None,
            "val_diff_points": 100 * (r["val_top1"] - sgd["val_top1"]) if sgd else None,
            "source": r["source"],
        })
    return rows


HEADER = ["model", "method", "μ", "c", "lr", "epochs", "sparsity (prunable)", "sparsity (all)", "SGD val", "val",
          "SGD test", "test", "test diff (points)"]


def markdown(rows) -> str:
    """The table of :func:`table`'s rows, in Markdown."""
    def pct(v):
        return "–" if v is None else f"{100 * v:.2f}"

    def diff(v):
        return "–" if v is None else f"{v:+.2f}"

    cells = []
    for r in rows:
        method = "gRDA" if r["kind"] == "grda" else f"magnitude + {r['retrain']} ep retrain"
        cells.append([r["model"], method, str(r["mu"]) if r["kind"] == "grda" else "–",
                      str(r["c"]) if r["kind"] == "grda" else "–", f"{r['lr']:g}", str(r["epochs"]),
                      pct(r["sparsity"]), pct(r["sparsity_all"]), pct(r["sgd_val_top1"]), pct(r["val_top1"]),
                      pct(r["sgd_test_top1"]), pct(r["test_top1"]), diff(r["test_diff_points"])])
    return "\n".join(markdown_table(HEADER, cells))


def plot(runs, path: Path, epochs_by_model: dict) -> None:
    """The frontier: test top-1 against sparsity, a panel per ``model -> epochs`` of ``epochs_by_model``."""
    models = list(epochs_by_model)
    fig = new_figure(5.5 * len(models), 4.2, dpi=120)
    axes = fig.subplots(1, len(models), squeeze=False)
    for ax, model in zip(axes[0], models):
        epochs = epochs_by_model[model]
        mine = [r for r in runs if r["model"] == model and r["epochs"] == epochs]
        sgd = [r for r in mine if r["kind"] == "sgd"]
        for r in sgd:
            ax.axhline(100 * r["test_top1"], color="grey", ls="--", lw=1,
                       label=f"plain SGD, {epochs} ep (lr {r['lr']:g})")
            ax.axhspan(100 * r["test_top1"] - 1, 100 * r["test_top1"], color="grey", alpha=0.12,
                       label="within 1 point of SGD")
        grda = [r for r in mine if r["kind"] == "grda"]
        for i, c in enumerate(sorted({r["c"] for r in grda}, reverse=True)):
            pts = sorted((r for r in grda if r["c"] == c), key=lambda r: r["sparsity"])
            ax.plot([100 * r["sparsity"] for r in pts], [100 * r["test_top1"] for r in pts], "o-",
                    color=("C0", "C2", "C4")[i % 3], label=f"gRDA c={c:g}, {epochs} ep (no retraining)")
            for r in pts:
                ax.annotate(f"μ={r['mu']:g}", (100 * r["sparsity"], 100 * r["test_top1"]),
                            textcoords="offset points", xytext=(-6, -13), fontsize=7, color=("C0", "C2", "C4")[i % 3])
        for retrain in sorted({r["retrain"] for r in mine if r["kind"] == "magret"}):
            pts = sorted((r for r in mine if r["kind"] == "magret" and r["retrain"] == retrain),
                         key=lambda r: r["sparsity"])
            ax.plot([100 * r["sparsity"] for r in pts], [100 * r["test_top1"] for r in pts], "s-", color="C3",
                    label=f"SGD {epochs - retrain} ep + global magnitude + {retrain} ep retrain")
        ax.set_title(f"{model}, Fashion-MNIST, {epochs} epochs in total")
        ax.set_xlabel("sparsity of the prunable weights (%)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    atomic_write_bytes(path, png_bytes(fig), mkdir=True)


def plot_traces(runs, path: Path, model: str, epochs: int) -> None:
    """Sparsity and validation top-1 per epoch of the plain-SGD and gRDA runs of one model and length."""
    mine = [r for r in runs if r["model"] == model and r["epochs"] == epochs and r["kind"] in ("sgd", "grda")]
    fig = new_figure(11, 4, dpi=120)
    ax_s, ax_v = fig.subplots(1, 2)
    for i, r in enumerate(sorted(mine, key=lambda r: (r["kind"] != "sgd", r.get("mu", 0)))):
        label = "plain SGD" if r["kind"] == "sgd" else f"gRDA μ={r['mu']:g}, c={r['c']:g}"
        xs = [t["epoch"] for t in r["trace"]]
        ax_s.plot(xs, [100 * t["sparsity"] for t in r["trace"]], color=f"C{i}", label=label)
        ax_v.plot(xs, [100 * t["val_top1"] for t in r["trace"]], color=f"C{i}", label=label)
    ax_s.axhline(90, color="grey", ls=":", lw=1)
    ax_s.set_ylabel("sparsity of the prunable weights (%)")
    ax_v.set_ylabel("validation top-1 (%)")
    ax_v.set_ylim(bottom=max(ax_v.get_ylim()[0], 80))
    for ax in (ax_s, ax_v):
        ax.set_xlabel("epoch (lr: factor 1 for half the run, linear to 0.01 at 90 %)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{model}, Fashion-MNIST, {epochs} epochs")
    atomic_write_bytes(path, png_bytes(fig), mkdir=True)


def main(argv=None) -> None:
    """``python -m prunelab.reproductions.chao.summarize RUNS.jsonl ... [--out DIR]``."""
    p = argparse.ArgumentParser(prog="python -m prunelab.reproductions.chao.summarize",
                                description=__doc__.split("\n")[0])
    p.add_argument("jsonl", nargs="+")
    p.add_argument("--frontier", nargs="*", default=["mlp=40", "lenet5=40"],
                   help="model=epochs panels of the frontier figure")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the tables and figures")
    args = p.parse_args(argv)
    runs = load(args.jsonl)
    order = {"sgd": 0, "grda": 1, "magret": 2}
    runs.sort(key=lambda r: (r["model"] != "lenet5", r["epochs"], order[r["kind"]], r["sparsity"]))
    rows = table(runs)
    out = Path(args.out)
    doc = {"runs": runs, "table": rows,
           "counting": "sparsity: zeros among prunable weights (Linear/Conv weights, classifier included); "
                       "sparsity_all: zeros among all parameters (biases included)"}
    atomic_write_json(out / "results.json", doc, indent=1, finite=False)
    atomic_write_text(out / "table.md", markdown(rows) + "\n")
    panels = {m: int(e) for m, e in (s.split("=") for s in args.frontier)}
    plot(runs, out / "frontier.png", panels)
    for model, epochs in panels.items():
        plot_traces(runs, out / f"trace_{model}_e{epochs}.png", model, epochs)
    print(markdown(rows))


if __name__ == "__main__":
    main()
