"""The ``lm`` report's figures (PNG bytes): test bits per byte against sparsity, against prune time
at one target, and the PQ Index per round of the iterative schedules."""

from __future__ import annotations

from prunelab.reproductions.common import figure_grid
from prunelab.reproductions.layerwise.figures import cost_points, method_style
from prunelab.reproductions.lm.protocol import COST_TARGET
from prunelab.utils.figures import png_bytes

__all__ = ["fig_bpb_vs_sparsity", "fig_bpb_vs_time", "fig_pqi"]


def _dense_lines(ax, setup: dict, ngram: dict | None) -> None:
    dense = setup.get("dense") or {}
    if dense.get("test_bpb") is not None:
        ax.axhline(dense["test_bpb"], color="0.3", ls="--", lw=1, label="dense")
    if ngram and ngram.get("test_bpb") is not None:
        ax.axhline(ngram["test_bpb"], color="0.6", ls=":", lw=1.2, label=f"order-{ngram.get('order', 2)} n-gram")


def fig_bpb_vs_sparsity(setup: dict, order: list[str], ngram: dict | None = None) -> bytes:
    """Test bpb against achieved sparsity: without retraining (left) and after it (right); hollow
    markers: the N:M pattern; dashed: the dense model; dotted: the n-gram baseline.

    Args:
        setup: one setup of :func:`~prunelab.reproductions.lm.collect.collect`.
        order: every method name in table order (fixes colours).
        ngram: the n-gram baseline (``test_bpb``, ``order``) or None.

    Returns:
        PNG bytes.
    """
    fig, axes = figure_grid(1, 2, 5.6, 4.2, pad=(0.6, 0.6))
    for ax, phase, title in zip(axes[0], ("pruned", "final"), ("without retraining", "after retraining / own budget")):
        key = f"{phase}_test_bpb"
        for name, m in setup["methods"].items():
            color, marker = method_style(name, order)
            pts = sorted((100 * p["sparsity"], p[key]) for p in m["points"]
                         if p.get(key) is not None and p.get("sparsity") is not None)
            if pts:
                ax.plot(*zip(*pts), color=color, marker=marker, ms=4, lw=1.2, label=name)
            for p in m["pattern"]:
                if p.get(key) is not None and p.get("sparsity") is not None:
                    ax.plot([100 * p["sparsity"]], [p[key]], ls="none", marker=marker, ms=8, mfc="none", mec=color,
                            mew=1.5)
        _dense_lines(ax, setup, ngram)
        ax.set(title=f"test bpb {title}", xlabel="sparsity of the prunable weights (%)", ylabel="test bits per byte")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Bits per byte against sparsity (hollow: 2:4)", fontsize=11)
    return png_bytes(fig)


def fig_bpb_vs_time(setup: dict, order: list[str], target: float = COST_TARGET) -> bytes:
    """Test bpb without retraining at ``target`` against the prune phase's wall time (log), one
    labelled point per one-shot method.

    Args:
        setup: one setup of :func:`~prunelab.reproductions.lm.collect.collect`.
        order: every method name in table order.
        target: the target compared.

    Returns:
        PNG bytes.
    """
    fig, axes = figure_grid(1, 1, 6.0, 4.4, pad=(0.6, 0.6))
    ax = axes[0][0]
    cost_points(ax, setup["methods"], order, target, "pruned_test_bpb")
    ax.set(title=f"{target:.0%} sparse, without retraining", xlabel="prune wall seconds (log)",
           ylabel="test bits per byte")
    ax.grid(True, which="both", alpha=0.3)
    if not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, f"no one-shot run at {target:.0%}", transform=ax.transAxes, ha="center", color="0.4")
    return png_bytes(fig)


def fig_pqi(setup: dict, order: list[str]) -> bytes:
    """The PQ Index (p = 0.5, q = 1) of the trained weights per round (left) and test bpb after
    each round against density (right), for OS, LT and SAP.

    Args:
        setup: one setup of :func:`~prunelab.reproductions.lm.collect.collect`.
        order: every method name in table order.

    Returns:
        PNG bytes.
    """
    fig, axes = figure_grid(1, 2, 5.0, 4.0, pad=(0.6, 0.6))
    left, right = axes[0]
    for name, m in setup["methods"].items():
        if m["family"] != "iterative" or not m["points"]:
            continue
        color, marker = method_style(name, order)
        rounds = m["points"][-1].get("rounds") or []
        pqi = [(r["round"], r["pqi"]) for r in rounds if r.get("pqi") is not None]
        if pqi:
            left.plot(*zip(*pqi), color=color, marker=marker, ms=5, label=name)
        curve = [(100 * r["density"], r["test_bpb"]) for r in rounds if r.get("test_bpb") is not None]
        if curve:
            right.plot(*zip(*curve), color=color, marker=marker, ms=5, label=name)
    left.set(title="PQ Index per round", xlabel="round (0: dense)", ylabel="PQ Index I(0.5, 1)")
    right.set(title="test bpb after each round", xlabel="density (%)", ylabel="test bits per byte")
    right.invert_xaxis()
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no iterative run", transform=ax.transAxes, ha="center", color="0.4")
    return png_bytes(fig)
