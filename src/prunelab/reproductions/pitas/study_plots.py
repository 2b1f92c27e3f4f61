"""Figures of the depth and latent studies (drawn without pyplot, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prunelab.reproductions.pitas.stats import nearest
from prunelab.utils.figures import new_figure, png_bytes
from prunelab.utils.io import atomic_write_bytes

__all__ = ["plot_depth", "plot_latent"]


def _title(results: dict) -> str:
    model = results["model"] or {}
    kwargs = ", ".join(f"{k}={v}" for k, v in (model.get("kwargs") or {}).items())
    return (f"{results['dataset']['name']} · {model.get('name')}({kwargs}) · {results['method']} · "
            f"{len(results['seeds'])} seed(s), no retraining")


def _colors(name: str, stop: float, count: int):
    from matplotlib import colormaps

    return colormaps[name](np.linspace(0, stop, count))


def _drop_band(ax, rows: list[dict], color, label: str) -> None:
    """Mean drop against sparsity (%) with a ± one standard deviation band."""
    x = [100 * r["sparsity"] for r in rows]
    y = np.array([r["drop_mean"] for r in rows])
    e = np.array([r["drop_std"] for r in rows])
    ax.plot(x, y, "o-", ms=3, color=color, label=label)
    ax.fill_between(x, y - e, y + e, color=color, alpha=0.12, lw=0)


def _axis_labels(ax, title: str, xlabel: str, legend: dict, **title_kw) -> None:
    ax.set_title(title, **title_kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 drop (points)")
    ax.grid(alpha=0.3)
    ax.legend(**legend)


def _write(fig, suptitle: str, path: str | os.PathLike) -> Path:
    fig.suptitle(suptitle, fontsize=10)
    return atomic_write_bytes(path, png_bytes(fig), mkdir=True)


def plot_depth(results: dict, path: str | os.PathLike) -> Path:
    """Draw the depth study: drop vs sparsity (only layer i; layers ≥ i with the additive
    prediction dashed) and drop vs remaining depth.

    Args:
        results: a dict returned by :func:`~prunelab.reproductions.pitas.depth.run_depth_study`.
        path: the PNG to write (parents are created).

    Returns:
        The path written.
    """
    from matplotlib.ticker import MaxNLocator

    summary, layers = results["summary"], results["layers"]
    colors = _colors("viridis", 0.9, len(layers))
    fig = new_figure(16, 4.8, dpi=110)
    axes = fig.subplots(1, 3)
    for ax, mode, title in ((axes[0], "single", "only layer i pruned"), (axes[1], "from", "layers ≥ i pruned")):
        for layer, color in zip(layers, colors):
            rs = sorted((r for r in summary if r["mode"] == mode and r["layer"] == layer["index"]), key=lambda r: r["sparsity"])
            _drop_band(ax, rs, color, f"{layer['index']}: {layer['name'].removesuffix('.weight')}")
            if mode == "from" and layer["remaining"] > 0:
                adds = sorted((a for a in results["additive"] if a["layer"] == layer["index"]), key=lambda a: a["sparsity"])
                ax.plot([100 * a["sparsity"] for a in adds], [a["predicted_mean"] for a in adds], "--", color=color, lw=1)
        ceiling = (results.get("claims") or {}).get("additive", {}).get("ceiling")
        if ceiling is not None and mode == "from":
            # sums of single drops run far past the largest possible drop; keep the measured curves readable
            ax.axhline(ceiling, color="grey", ls=":", lw=1)
            ax.set_ylim(top=1.2 * ceiling)
        ax.set_title(title + (" (dashed: additive prediction; dotted: dense − chance)" if mode == "from" else ""),
                     fontsize=10)
        ax.set_xlabel("sparsity of each pruned layer (%)")
        ax.set_ylabel("top-1 drop (points)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="layer i", title_fontsize=7)
    ax = axes[2]
    marks = sorted({nearest(results["sparsities"], s) for s in (0.5, 0.8, 0.9, 0.95)})
    for s, color in zip(marks, _colors("plasma", 0.8, len(marks))):
        for mode, style, label in (("single", "o-", "only i"), ("from", "s--", "≥ i")):
            rs = sorted((r for r in summary if r["mode"] == mode and r["sparsity"] == s), key=lambda r: r["remaining"])
            ax.plot([r["remaining"] for r in rs], [r["drop_mean"] for r in rs], style, color=color, ms=4,
                    label=f"{s:.0%}, {label}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _axis_labels(ax, "drop vs remaining depth (layers after i)", "remaining depth",
                 {"fontsize": 6, "ncol": 2, "loc": "upper left"})
    return _write(fig, "Depth study: " + _title(results), path)


def plot_latent(results: dict, path: str | os.PathLike) -> Path:
    """Draw the latent study: drop vs sparsity per ``k``, and drop vs measured intrinsic dimension.

    Args:
        results: a dict returned by :func:`~prunelab.reproductions.pitas.latent.run_latent_study`.
        path: the PNG to write (parents are created).

    Returns:
        The path written.
    """
    summary, versions = results["summary"], {v["k"]: v for v in results["versions"]}
    fig = new_figure(12, 4.8, dpi=110)
    axes = fig.subplots(1, 2)
    ax = axes[0]
    for k, color in zip(results["ks"], _colors("viridis", 0.9, len(results["ks"]))):
        rs = sorted((r for r in summary if r["k"] == k), key=lambda r: r["sparsity"])
        dense = np.mean([d["top1"] for d in results["dense"] if d["k"] == k])
        _drop_band(ax, rs, color, f"k={k} (ID {versions[k]['intrinsic_dim']:.1f}, dense {dense:.1%})")
    _axis_labels(ax, f"only {results['layer'].removesuffix('.weight')} pruned, PCA-k data", "sparsity (%)",
                 {"fontsize": 7})
    ax = axes[1]
    marks = sorted({nearest(results["sparsities"], s) for s in (0.8, 0.9, 0.95)})
    for s, color in zip(marks, _colors("plasma", 0.8, len(marks))):
        rs = sorted((r for r in summary if r["sparsity"] == s), key=lambda r: versions[r["k"]]["intrinsic_dim"])
        xs = [versions[r["k"]]["intrinsic_dim"] for r in rs]
        ax.errorbar(xs, [r["drop_mean"] for r in rs], yerr=[r["drop_std"] for r in rs], fmt="o-", ms=4,
                    color=color, capsize=2, label=f"{s:.0%}")
        for x, r in zip(xs, rs):
            ax.annotate(f"k={r['k']}", (x, r["drop_mean"]), fontsize=6, textcoords="offset points", xytext=(3, 3))
    _axis_labels(ax, "drop vs intrinsic dimension (Levina-Bickel)",
                 "estimated intrinsic dimension of the PCA-k training data",
                 {"fontsize": 7, "title": "sparsity", "title_fontsize": 7})
    return _write(fig, "Latent-dimensionality study: " + _title(results), path)
