"""The ``pitas`` report's figures: accuracy without retraining, prune time, time to recover (PNG bytes)."""

from __future__ import annotations

from prunelab.reproductions.common import figure_grid
from prunelab.reproductions.pitas.bench import BENCH_NAMES, bench_times
from prunelab.reproductions.pitas.protocol import GAPS, RETRAIN_TARGET
from prunelab.utils.figures import png_bytes

__all__ = ["PAPER_FMNIST", "fig_accuracy", "fig_times", "fig_time_to_target"]

#: the authors' FeTa and hard-thresholding points on FC / Fashion-MNIST (sparsity of the hidden
#: layers %, test top-1 %), read from the result files of their code release.
PAPER_FMNIST = {
    "FeTa (paper)": [(50.0, 86.18), (78.4, 81.93), (85.5, 78.60), (90.9, 73.40), (93.2, 68.92), (95.1, 62.08)],
    "hard thresholding (paper)": [(50, 87.56), (60, 85.44), (70, 79.22), (80, 68.80), (85, 60.56), (90, 47.60),
                                  (95, 30.63)],
}
_STYLE = {"hard thresholding": ("C0", "o"), "magnitude": ("C1", "s"), "FeTa": ("C2", "^"), "Net-Trim": ("C3", "v"),
          "L-OBS": ("C4", "D")}


def _style(name: str, i: int):
    return _STYLE.get(name, (f"C{(i + 5) % 10}", "os^vDP*X"[i % 8]))


def _grid(cols: int, width: float = 4.6, height: float = 3.6):
    return figure_grid(1, cols, width, height, pad=(0.6, 0.6))


def fig_accuracy(collected: dict) -> bytes:
    """Experiment 1: test top-1 right after pruning vs target sparsity, a panel per model."""
    fig, axes = _grid(len(collected))
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
    return png_bytes(fig)


def fig_times(collected: dict, bench: dict | None) -> bytes:
    """Experiment 2: prune time per run vs target (a panel per model) and vs input width (benchmark)."""
    panels = len(collected) + (1 if bench else 0)
    fig, axes = _grid(panels)
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
        for i, (name, runs) in enumerate(bench_times(bench).items()):
            measured = sorted((d, t) for d, (t, ok) in runs.items() if ok)
            estimated = sorted((d, t) for d, (t, ok) in runs.items() if not ok)
            growth = bench["results"][name].get("growth_exponents") or []
            label = BENCH_NAMES.get(name, name) + (f" (slope {', '.join(f'{g:.2f}' for g in growth)})" if growth else "")
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
    return png_bytes(fig)


def fig_time_to_target(collected: dict, gaps=GAPS) -> bytes:
    """Experiment 3: validation top-1 minus dense against prune + retraining time, a panel per model."""
    models = [(m, info) for m, info in collected.items() if any(x["retrain"] for x in info["methods"].values())]
    fig, axes = _grid(max(1, len(models)), width=5.4, height=3.9)
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
    return png_bytes(fig)
