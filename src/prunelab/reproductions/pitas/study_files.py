"""The studies' result records on disk: ``OUTDIR/studies/<study>.json`` and one figure per run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prunelab.data import Dataset, Split
from prunelab.errors import ConfigError
from prunelab.utils.io import atomic_write_json

__all__ = ["study_key", "dataset_info", "write_results"]


def study_key(*parts) -> str:
    """A short hash of what identifies a run (study, data set, model, method ...)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def dataset_info(data: Dataset, train: Split, evaluated: Split) -> dict:
    """What a study's record says about its data: name, source, classes, sample counts."""
    return {"name": data.name, "source": data.source, "num_classes": data.num_classes, "n_train": len(train), "n_eval": len(evaluated),
            "eval_split": "test (first samples)", "normalize": data.info.get("normalize")}


def write_results(results: dict, outdir: str | os.PathLike, figure: bool = True) -> tuple[Path, Path | None]:
    """Store a study's results in ``OUTDIR/studies/<study>.json`` and draw its figure.

    The JSON file holds ``{"study": name, "runs": [results, ...]}``; a run with the same ``key``
    (data set, model, method, and for the latent study the ks and layer) is replaced, others are
    kept, so several models accumulate in one file. The figure is
    ``OUTDIR/studies/<study>-<model>-<key>.png`` and its path relative to ``OUTDIR`` is recorded
    in the run as ``figure``. Both files are written to a temporary name and renamed.

    Args:
        results: from ``run_depth_study`` or ``run_latent_study``.
        outdir: the output directory.
        figure: also draw the figure.

    Returns:
        ``(json_path, figure_path or None)``.
    """
    from prunelab.reproductions.pitas.study_plots import plot_depth, plot_latent

    study = results.get("study")
    if study not in ("depth", "latent"):
        raise ConfigError(f"not a study result (study={study!r})")
    outdir = Path(outdir)
    folder = outdir / "studies"
    folder.mkdir(parents=True, exist_ok=True)
    fig_path = None
    if figure:
        name = (results.get("model") or {}).get("name", "model")
        fig_path = folder / f"{study}-{name}-{results['key']}.png"
        (plot_depth if study == "depth" else plot_latent)(results, fig_path)
        results = dict(results, figure=str(fig_path.relative_to(outdir)))
    json_path = folder / f"{study}.json"
    runs = []
    if json_path.exists():
        try:
            stored = json.loads(json_path.read_text())
            runs = [r for r in stored.get("runs", []) if r.get("key") != results["key"]]
        except (OSError, ValueError, AttributeError):
            raise ConfigError(f"{json_path} exists but is not a study file; move it away or choose another output directory") from None
    runs.append(results)
    atomic_write_json(json_path, {"study": study, "runs": runs}, indent=1, finite=False)
    return json_path, fig_path
