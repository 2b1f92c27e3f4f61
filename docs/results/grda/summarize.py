"""Tables and the frontier figure of the gRDA measurements (reads the JSON lines of experiment.py).

Writes ``results.json`` (every run, traces included, and the table), ``table.md``,
``frontier.png`` (test top-1 against sparsity of the prunable weights: gRDA points, magnitude
pruning + retraining at equal total epochs, plain SGD as a line) and ``trace_<model>_e<epochs>.png``
(sparsity and validation top-1 per epoch) next to this file.

    PYTHONPATH=src .venv/bin/python docs/results/grda/summarize.py docs/results/grda/runs/*.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).parent


def load(paths) -> list[dict]:
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


def markdown(rows) -> str:
    head = ("| model | method | μ | c | lr | epochs | sparsity (prunable) | sparsity (all) | SGD val | val | "
            "SGD test | test | test diff (points) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        method = "gRDA" if r["kind"] == "grda" else f"magnitude + {r['retrain']} ep retrain"
        pct = lambda v: "–" if v is None else f"{100 * v:.2f}"
        diff = lambda v: "–" if v is None else f"{v:+.2f}"
        lines.append(f"| {r['model']} | {method} | {r['mu'] if r['kind'] == 'grda' else '–'} | "
                     f"{r['c'] if r['kind'] == 'grda' else '–'} | {r['lr']:g} | {r['epochs']} | "
                     f"{pct(r['sparsity'])} | {pct(r['sparsity_all'])} | {pct(r['sgd_val_top1'])} | "
                     f"{pct(r['val_top1'])} | {pct(r['sgd_test_top1'])} | {pct(r['test_top1'])} | "
                     f"{diff(r['test_diff_points'])} |")
    return "\n".join(lines)


def plot(runs, path: Path, epochs_by_model: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(epochs_by_model)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
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
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)


def plot_traces(runs, path: Path, model: str, epochs: int) -> None:
    """Sparsity and validation top-1 per epoch of the plain-SGD and gRDA runs of one model and length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in runs if r["model"] == model and r["epochs"] == epochs and r["kind"] in ("sgd", "grda")]
    fig, (ax_s, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
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
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("jsonl", nargs="+")
    p.add_argument("--frontier", nargs="*", default=["mlp=40", "lenet5=40"],
                   help="model=epochs panels of the frontier figure")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()
    runs = load(args.jsonl)
    order = {"sgd": 0, "grda": 1, "magret": 2}
    runs.sort(key=lambda r: (r["model"] != "lenet5", r["epochs"], order[r["kind"]], r["sparsity"]))
    rows = table(runs)
    out = Path(args.out)
    doc = {"runs": runs, "table": rows,
           "counting": "sparsity: zeros among prunable weights (Linear/Conv weights, classifier included); "
                       "sparsity_all: zeros among all parameters (biases included)"}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "table.md").write_text(markdown(rows) + "\n")
    panels = {m: int(e) for m, e in (s.split("=") for s in args.frontier)}
    plot(runs, out / "frontier.png", panels)
    for model, epochs in panels.items():
        plot_traces(runs, out / f"trace_{model}_e{epochs}.png", model, epochs)
    print(markdown(rows))


if __name__ == "__main__":
    main()
