"""The ``pqi`` report's figures: density per round, accuracy vs density and PQ Index per round, every
schedule of a model on one axis (the generic harness report draws one trace figure per method)."""

from __future__ import annotations

from prunelab.reproductions.common import figure_grid
from prunelab.utils.figures import png_bytes

__all__ = ["draw_figures"]

_STYLE = {"OS-0.2": ("C0", "o"), "LT-0.2": ("C1", "s"), "SAP(0.5,1)": ("C2", "^"), "SAP(1,2)": ("C3", "v"),
          "SAP(0.5,1) layer": ("C4", "D"), "SAP(0.5,1) neuron": ("C5", "P")}


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


def _series(ax, runs: dict, names: list[str], x_of, y_of) -> None:
    """One line per schedule: ``x_of(record)`` against ``y_of(record)`` over its rounds."""
    for name in names:
        rounds = runs[name]["rounds"]
        _plot(ax, name, [x_of(r) for r in rounds], [y_of(r) for r in rounds])


def _finish(ax, title: str, xlabel: str, ylabel: str, which: str = "major") -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which=which, alpha=0.3)
    ax.legend(fontsize=7)


def _scaled(key: str, scale: float = 1.0):
    """A record's ``key`` times ``scale``; None when the record has none."""
    return lambda r: None if r.get(key) is None else scale * r[key]


def draw_figures(collected: dict) -> list[tuple[str, bytes]]:
    """Draw density per round, accuracy vs density, and PQ Index per round, every schedule per panel.

    Args:
        collected: :func:`~prunelab.reproductions.diao.collect.collect`'s output.

    Returns:
        ``(file name, PNG bytes)``: ``pqi-density.png``, ``pqi-accuracy-vs-density.png``, ``pqi-index.png``.
    """
    from matplotlib.ticker import MaxNLocator

    panels = _panels(collected)
    out = []

    fig, axes = figure_grid(1, len(panels), 4.2, 3.3)
    for ax, (title, model, names) in zip(axes[0], panels):
        t_max = max([0] + [collected[model][name]["rounds"][-1]["round"] for name in names])
        _series(ax, collected[model], names, lambda r: r["round"], lambda r: r["density"])
        ax.plot(range(t_max + 1), [0.8 ** t for t in range(t_max + 1)], color="0.4", ls=":", lw=1, label="0.8^t")
        ax.set_yscale("log")
        _density_axis(ax.yaxis)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax, title, "round t", "density (remaining prunable weights)", which="both")
    fig.suptitle("Density per round", fontsize=11)
    out.append(("pqi-density.png", png_bytes(fig)))

    fig, axes = figure_grid(2, len(panels), 4.2, 3.3)
    for col, (title, model, names) in enumerate(panels):
        lowest = min(r["density"] for name in names for r in collected[model][name]["rounds"])
        for row, (key, what) in enumerate((("test_top1", "after retraining"),
                                           ("pruned_test_top1", "pruned, before retraining"))):
            ax = axes[row][col]
            _series(ax, collected[model], names, lambda r: r["density"], _scaled(key, 100))
            ax.set_xscale("log")
            _density_axis(ax.xaxis)
            ax.set_xlim(1.15, 0.85 * lowest)  # inverted: density falls to the right, both rows alike
            _finish(ax, f"{title}\n{what}", "density (log)", "test top-1 (%)", which="both")
    fig.suptitle("Test accuracy vs density (one point per round; density falls to the right)", fontsize=11)
    out.append(("pqi-accuracy-vs-density.png", png_bytes(fig)))

    fig, axes = figure_grid(2, len(panels), 4.2, 3.3)
    for col, (title, model, names) in enumerate(panels):
        for row, (key, label) in enumerate((("pqi_0.5_1", "global PQ Index I_{0.5,1}"), ("test_top1", "test top-1 (%)"))):
            ax = axes[row][col]
            _series(ax, collected[model], names, lambda r: r["round"], _scaled(key, 100 if key == "test_top1" else 1))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _finish(ax, title, "round t", label)
    fig.suptitle("PQ Index of the trained weights w_t over m_t, and accuracy, per round", fontsize=11)
    out.append(("pqi-index.png", png_bytes(fig)))
    return out
