"""Loss and accuracy along the straight line between two networks (the "valley" check).

Chao et al. (2020, §4 and their mode-connectivity figures) claim that gRDA ends in the same
minimum valley as SGD started from the same initialisation: on the segment
θ(α) = (1 − α)·θ_A + α·θ_B there is no loss barrier. :func:`valley` evaluates θ(α) on a grid of
α (optionally a little beyond [0, 1]); :func:`barrier` measures the largest rise of the loss above
the straight line between the end points (the "barrier height" of linear mode connectivity);
:func:`plot_valley` draws the curves.

Buffers are interpolated like parameters: BatchNorm running means and variances become
(1 − α)·A + α·B, which is not the statistics of the interpolated network; pass ``bn_data`` to
re-estimate them on training data at every α instead
(:func:`prunelab.training.batchnorm.recalibrate_batchnorm`). Integer buffers (``num_batches_tracked``)
are taken from A.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.training.batchnorm import recalibrate_batchnorm
from prunelab.training.loop import evaluate
from prunelab.utils.figures import new_figure, png_bytes
from prunelab.utils.io import atomic_write_bytes

__all__ = ["interpolate_state", "valley", "barrier", "plot_valley", "alphas_grid"]


def alphas_grid(points: int = 21, extend: float = 0.0) -> list[float]:
    """``points`` evenly spaced α from ``-extend`` to ``1 + extend``, plus 0 and 1 if missing.

    Args:
        points: number of evenly spaced α values (>= 2).
        extend: how far to go beyond each end point (>= 0).

    Returns:
        The α values, increasing; the end points 0 and 1 are always among them.
    """
    if not isinstance(points, int) or points < 2:
        raise ConfigError(f"points must be an integer >= 2, got {points!r}")
    if not extend >= 0:
        raise ConfigError(f"extend must be >= 0, got {extend!r}")
    lo, hi = -float(extend), 1.0 + float(extend)
    grid = {lo + (hi - lo) * i / (points - 1) for i in range(points)}
    return sorted(grid | {0.0, 1.0})


def interpolate_state(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """``(1 − α)·A + α·B`` for every floating tensor of two state dicts; other tensors from A.

    Args:
        state_a: ``model.state_dict()`` of the first network.
        state_b: the same of the second (same names and shapes).
        alpha: position on the line (0 → A, 1 → B).

    Returns:
        A new state dict.

    Raises:
        ConfigError: the two state dicts do not have the same names and shapes.
    """
    if set(state_a) != set(state_b):
        diff = sorted(set(state_a) ^ set(state_b))
        raise ConfigError(f"the two networks differ in their tensors ({', '.join(diff[:5])}); "
                          "interpolate two checkpoints of the same architecture")
    out = {}
    for name, a in state_a.items():
        b = state_b[name]
        if a.shape != b.shape:
            raise ConfigError(f"tensor {name} has shape {tuple(a.shape)} in A but {tuple(b.shape)} in B")
        if a.is_floating_point():
            out[name] = torch.lerp(a, b.to(a.dtype), float(alpha))
        else:
            out[name] = a.clone()
    return out


def valley(model_a: nn.Module, model_b: nn.Module, splits: dict, alphas=None, *,
           batch_size: int = 1000, bn_data=None) -> list[dict]:
    """Evaluate the networks on the segment between ``model_a`` and ``model_b``.

    Args:
        model_a: network at α = 0 (not modified).
        model_b: network at α = 1, same architecture.
        splits: ``name -> Split`` to evaluate on, e.g. ``{"train": data.train, "test": data.test}``.
        alphas: positions to evaluate (default :func:`alphas_grid` ``(21)``).
        batch_size: evaluation batch size.
        bn_data: a ``Split`` to re-estimate BatchNorm statistics on at every α (default: the
            interpolated running statistics are used).

    Returns:
        One dict per α: ``{"alpha", "<split>_loss", "<split>_top1", ...}`` in the order of ``alphas``.
    """
    if not splits:
        raise ConfigError("valley needs at least one split to evaluate on")
    alphas = alphas_grid() if alphas is None else [float(a) for a in alphas]
    state_a = {k: v.detach() for k, v in model_a.state_dict().items()}
    state_b = {k: v.detach() for k, v in model_b.state_dict().items()}
    probe = copy.deepcopy(model_a)
    results = []
    for alpha in alphas:
        probe.load_state_dict(interpolate_state(state_a, state_b, alpha))
        if bn_data is not None:
            recalibrate_batchnorm(probe, bn_data.x, batch_size)
        record = {"alpha": alpha}
        for name, split in splits.items():
            metrics = evaluate(probe, split, batch_size)
            record[f"{name}_loss"] = metrics["loss"]
            record[f"{name}_top1"] = metrics["top1"]
        results.append(record)
    return results


def barrier(results: list[dict], key: str = "train_loss") -> float:
    """Largest rise of ``key`` above the chord between the end points, over α in [0, 1].

    ``max_α [L(α) − ((1 − α)·L(0) + α·L(1))]`` (Frankle et al. 2020's instability measure); about
    0 or negative when A and B lie in one valley.

    Args:
        results: output of :func:`valley`; must contain α = 0 and α = 1.
        key: the metric (``"train_loss"``, ``"test_loss"``, …).

    Returns:
        The barrier height (same units as ``key``).
    """
    by_alpha = {r["alpha"]: r[key] for r in results}
    if 0.0 not in by_alpha or 1.0 not in by_alpha:
        raise ConfigError("barrier needs results at alpha = 0 and alpha = 1")
    start, end = by_alpha[0.0], by_alpha[1.0]
    return max(v - ((1 - a) * start + a * end) for a, v in by_alpha.items() if 0.0 <= a <= 1.0)


def plot_valley(results: list[dict], path, title: str | None = None,
                labels: tuple[str, str] = ("A", "B")) -> Path:
    """Plot loss and top-1 accuracy against α (one line per split) and write a PNG.

    Args:
        results: output of :func:`valley`.
        path: the PNG to write (written to a temp file, then renamed; parents are created).
        title: figure title.
        labels: names of the end points, marked at α = 0 and α = 1.

    Returns:
        The path written.
    """
    if not results:
        raise ConfigError("nothing to plot: the valley results are empty")
    alphas = [r["alpha"] for r in results]
    splits = [k[: -len("_loss")] for k in results[0] if k.endswith("_loss")]
    fig = new_figure(10, 4, dpi=120)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split in splits:
        ax_loss.plot(alphas, [r[f"{split}_loss"] for r in results], marker="o", ms=3, label=split)
        ax_acc.plot(alphas, [100 * r[f"{split}_top1"] for r in results], marker="o", ms=3, label=split)
    for ax, ylabel in ((ax_loss, "cross-entropy loss"), (ax_acc, "top-1 accuracy (%)")):
        for x, text in zip((0.0, 1.0), labels):
            ax.axvline(x, color="grey", lw=0.8, ls="--")
            ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom")
        ax.set_xlabel("α   (θ = (1 − α)·A + α·B)")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return atomic_write_bytes(path, png_bytes(fig), mkdir=True)
