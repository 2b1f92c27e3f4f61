"""The ``layerwise`` report's figures (PNG bytes): accuracy without retraining against the target
and against prune time."""

from __future__ import annotations

from prunelab.reproductions.common import figure_grid
from prunelab.reproductions.layerwise.protocol import COST_TARGET
from prunelab.utils.figures import png_bytes

__all__ = ["style", "fig_accuracy", "fig_accuracy_vs_time"]

_MARKERS = "os^vDP*Xh<>"


def style(index: int) -> tuple[str, str]:
    """``(colour, marker)`` of the method at ``index`` of the table (the same in every figure)."""
    return f"C{index % 10}", _MARKERS[index % len(_MARKERS)]


def method_style(name: str, order: list[str]) -> tuple[str, str]:
    """:func:`style` of method ``name`` (a method missing from ``order`` takes the next index)."""
    return style(order.index(name) if name in order else len(order))


def cost_points(ax, methods: dict, order: list[str], target: float, metric: str, scale: float = 1.0) -> None:
    """One labelled marker per method on ``ax``: the prune phase's wall seconds (log x) against
    ``scale * point[metric]`` at ``target`` sparsity; methods without that point are skipped."""
    for name, m in methods.items():
        color, marker = method_style(name, order)
        p = next((p for p in m["points"] if abs(p["target"] - target) < 1e-9), None)
        if p is None or p.get(metric) is None or p.get("prune_s") is None:
            continue
        x, y = max(p["prune_s"], 1e-4), scale * p[metric]
        ax.plot([x], [y], ls="none", color=color, marker=marker, ms=7, label=name)
        ax.annotate(name, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7, color=color)
    ax.set_xscale("log")


def _panels(collected: dict, width: float = 4.8, height: float = 3.8):
    fig, axes = figure_grid(1, max(1, len(collected)), width, height, pad=(0.6, 0.6))
    return fig, axes[0]


def _title(model: str, info: dict) -> str:
    hidden = (info.get("model_kwargs") or {}).get("hidden")
    return f"{model}{' ' + '-'.join(map(str, hidden)) if hidden else ''} on {info['dataset']}"


def fig_accuracy(collected: dict, order: list[str]) -> bytes:
    """Test top-1 without retraining against the target, a panel per model; N:M runs as hollow
    markers at their sparsity; dashed: the dense model.

    Args:
        collected: :func:`~prunelab.reproductions.layerwise.collect.collect`'s output.
        order: every method name, in table order (fixes each method's colour).

    Returns:
        PNG bytes.
    """
    fig, axes = _panels(collected)
    for ax, (model, info) in zip(axes, collected.items()):
        for name, m in info["methods"].items():
            color, marker = method_style(name, order)
            pts = [(100 * p["target"], 100 * p["pruned_test_top1"]) for p in m["points"]
                   if p["pruned_test_top1"] is not None]
            if pts:
                ax.plot(*zip(*pts), color=color, marker=marker, ms=4, lw=1.4, label=name)
            for p in m["pattern"]:
                if p["pruned_test_top1"] is not None:
                    ax.plot([100 * p["target"]], [100 * p["pruned_test_top1"]], ls="none", marker=marker, ms=8,
                            mfc="none", mec=color, mew=1.5)
        if info["dense"]["test_top1"] is not None:
            ax.axhline(100 * info["dense"]["test_top1"], color="0.3", ls="--", lw=1, label="dense")
        ax.set(title=_title(model, info), xlabel="target sparsity of the pruned layers (%)",
               ylabel="test top-1 without retraining (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Accuracy without retraining (hollow markers: the N:M pattern)", fontsize=11)
    return png_bytes(fig)


def fig_accuracy_vs_time(collected: dict, order: list[str], target: float = COST_TARGET) -> bytes:
    """Test top-1 without retraining at ``target`` against the prune phase's wall time (log), a
    panel per model, one labelled point per method.

    Args:
        collected: :func:`~prunelab.reproductions.layerwise.collect.collect`'s output.
        order: every method name, in table order.
        target: the sparsity compared.

    Returns:
        PNG bytes.
    """
    fig, axes = _panels(collected)
    for ax, (model, info) in zip(axes, collected.items()):
        cost_points(ax, info["methods"], order, target, "pruned_test_top1", 100)
        ax.set(title=f"{_title(model, info)}, {target:.0%} sparse", xlabel="prune wall seconds (log)",
               ylabel="test top-1 without retraining (%)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no run at {target:.0%}", transform=ax.transAxes, ha="center", color="0.4")
    fig.suptitle(f"Accuracy at {target:.0%} sparsity against prune time", fontsize=11)
    return png_bytes(fig)
