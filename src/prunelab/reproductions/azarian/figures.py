"""The ``ltp`` report's figures: the LTP trail per model and the batch-norm study (PNG bytes)."""

from __future__ import annotations

from prunelab.reproductions.common import figure_grid, pct
from prunelab.utils.figures import png_bytes

__all__ = ["compression_of", "fmt_times", "draw_figures"]


def compression_of(sparsity):
    """Compression (weights / kept) of a sparsity; None for None."""
    return None if sparsity is None else 1.0 / max(1e-12, 1.0 - sparsity)


def fmt_times(x):
    """A compression as ``"40×"`` (one decimal below 10); "–" for None."""
    return "–" if x is None else (f"{x:.0f}×" if x >= 9.95 else f"{x:.1f}×")


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in model)


def draw_figures(collected: dict) -> list[tuple[str, bytes]]:
    """The trail figure per model and the BN-study figure.

    Trail (``trail-<model>.png``): validation top-1 of the hard-masked network against its
    compression after every epoch, one line per LTP run (thresholds learning, then the fine-tune
    epochs at the fixed mask), GMP's per-epoch path (dashed) and the dense model (dotted).
    BN study (``bn-study.png``): compression and validation top-1 per epoch for every penalty,
    with batch-norm (left) and without (right).

    Returns:
        ``(file name, PNG bytes)`` per figure, in that order.
    """
    paths = []
    for model, entry in collected["models"].items():
        fig, axes = figure_grid(1, 1, 6.6, 4.3)
        ax = axes[0][0]
        runs = [row["ltp"] for row in entry["rows"] if "ltp" in row] + entry["trail_runs"]
        for i, run in enumerate(runs):
            color = f"C{i}"
            pts = [(compression_of(e["sparsity"]), e["val_top1"]) for e in run["trail"] if e.get("val_top1") is not None]
            lam = run["hparams"].get("penalty_weight")
            stop = "no stop" if run["hparams"].get("stop_at_target") is False else f"target {fmt_times(run['target_compression'])}"
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
                pts = [(compression_of(p["sparsity"]), p["val_top1"]) for p in gmp["path"] if p["val_top1"] is not None]
                ax.plot(*zip(*pts), color="0.45", ls="--", marker=".", ms=3, lw=0.9,
                        label="GMP per epoch" if j == 0 else None)
        dense = entry["dense"]["val_top1"]
        if dense is not None:
            ax.axhline(dense, color="k", ls=":", lw=1, label=f"dense ({pct(dense)} %)")
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
        paths.append((f"trail-{_slug(model)}.png", png_bytes(fig)))
    if collected["bn_study"]:
        fig, axes = figure_grid(2, 2, 4.6, 3.5)
        for col, batch_norm in enumerate((True, False)):
            runs = [e for e in collected["bn_study"] if e["batch_norm"] is batch_norm]
            for k, run in enumerate(runs):
                style = {"l0": ("C0", "o"), "l1": ("C1", "s"), "l2": ("C2", "^")}.get(run["penalty"], (f"C{k + 3}", "x"))
                ep = [e["epoch"] for e in run["trail"]]
                label = f"{run['penalty'].upper()} (λ={run['penalty_weight']:g})"
                axes[0][col].plot(ep, [compression_of(e["sparsity"]) for e in run["trail"]], color=style[0], marker=style[1],
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
        paths.append(("bn-study.png", png_bytes(fig)))
    return paths
