"""The hard-thresholding studies of Pitas, Davies & Vandergheynst 2019 (arXiv:1905.08793).

Their theory predicts that hard thresholding without retraining hurts more

1. the more layers remain after the pruned layer (the **depth study**,
   :mod:`~prunelab.reproductions.pitas.depth`), and
2. the higher the latent dimensionality of the data (the **latent study**,
   :mod:`~prunelab.reproductions.pitas.latent`).

This module is the studies' front door: it re-exports both studies, their budgets
(:mod:`~prunelab.reproductions.pitas.budgets`), the hard-thresholding masks
(:mod:`~prunelab.reproductions.pitas.thresholding`), the masked evaluator, the figures and the
files (:func:`write_results` stores results under ``OUTDIR/studies/``), and runs the
``pitas-studies`` suite (:func:`run_pitas_studies`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from prunelab.errors import ConfigError
from prunelab.reproductions.pitas.budgets import BUDGETS, HEADLINE_SPARSITY, SPARSITIES, StudyBudget, log_to_stderr
from prunelab.reproductions.pitas.depth import assess_depth, run_depth_study
from prunelab.reproductions.pitas.evaluator import MaskedEvaluator
from prunelab.reproductions.pitas.latent import assess_latent, run_latent_study
from prunelab.reproductions.pitas.stats import MIN_SPREAD
from prunelab.reproductions.pitas.study_files import write_results
from prunelab.reproductions.pitas.study_plots import plot_depth, plot_latent
from prunelab.reproductions.pitas.thresholding import depth_masks, layer_threshold_masks, resolve_layers

__all__ = [
    "SPARSITIES", "StudyBudget", "BUDGETS", "resolve_layers", "layer_threshold_masks",
    "depth_masks", "run_depth_study", "run_latent_study", "assess_depth", "assess_latent",
    "plot_depth", "plot_latent", "write_results", "run_pitas_studies", "HEADLINE_SPARSITY",
    "SUITE_MODELS", "MIN_SPREAD", "MaskedEvaluator", "STUDIES_DESCRIPTION", "write_studies_report",
]

#: What ``prunelab bench --list`` says of the ``pitas-studies`` suite.
STUDIES_DESCRIPTION = ("Pitas et al.'s depth and latent-dimensionality studies (hard thresholding, no retraining): "
                       "narrow conv6 and fc on Fashion-MNIST, 3 seeds")

#: Models of the `pitas-studies` suite: a narrow version of the paper's CIFAR CNN and its FC net.
SUITE_MODELS = {
    "cnn": ("conv6", {"widths": [8, 16, 32], "dense": [128, 64]}),
    "mlp": ("fc", {"hidden": [100, 100]}),
}


def run_pitas_studies(outdir: str | os.PathLike, dataset: str = "fashion-mnist", budget: str = "standard",
                      data_dir: str | None = None, ks: Sequence[int] = (10, 20, 50, 100, 784),
                      log: Callable[[str], None] | None = log_to_stderr) -> list[dict]:
    """Run both studies on one data set with the suite's CNN and MLP and store everything.

    Depth study on both models; latent study on the MLP (``SUITE_MODELS``). Files go to
    ``OUTDIR/studies/`` (:func:`write_results`).

    Args:
        outdir: output directory.
        dataset: data set name.
        budget: a :data:`BUDGETS` preset.
        data_dir: folder holding the data files.
        ks: PCA components of the latent study (clipped to the input size).
        log: progress lines.

    Returns:
        The results dicts, in the order run.
    """
    from prunelab import data as data_module

    if budget not in BUDGETS:
        raise ConfigError(f"unknown study budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    plan = BUDGETS[budget]
    data = data_module.load(dataset, data_dir=data_dir)
    dim = math.prod(data.in_shape)
    out = []
    for model_name, kwargs in SUITE_MODELS.values():
        res = run_depth_study(data, model_name, kwargs, budget=plan, log=log)
        write_results(res, outdir)
        out.append(res)
    model_name, kwargs = SUITE_MODELS["mlp"]
    res = run_latent_study(data, model_name, kwargs, ks=sorted({min(int(k), dim) for k in ks}), budget=plan, log=log)
    write_results(res, outdir)
    out.append(res)
    return out


def write_studies_report(results: Sequence[dict], dest: str | os.PathLike, dataset: str = "fashion-mnist") -> dict:
    """One self-contained report of the studies' results: a section per study (its verdict, its figure).

    Args:
        results: what :func:`run_pitas_studies` returned.
        dest: the folder (``OUTDIR/studies``): ``report.md``, ``figures/`` and ``report.html``.
        dataset: the data set name, for titles where a result does not record it.

    Returns:
        The paths written (:func:`prunelab.utils.render.write_document`).
    """
    from prunelab.utils.render import Document, Figure, Paragraph, Section, write_document

    sections = []
    for res in results:
        model, data_info = res.get("model") or {}, res.get("dataset") or {}
        model_name = model.get("name", "") if isinstance(model, dict) else str(model)
        data_name = data_info.get("name", dataset) if isinstance(data_info, dict) else str(data_info)
        title = f"{res.get('study', 'study')} study: {model_name} on {data_name}"
        blocks = [Paragraph((res.get("claims") or {}).get("text", ""))]
        figure = res.get("figure")
        if figure and Path(figure).is_file():
            blocks.append(Figure(title, Path(figure).read_bytes(), title))
        sections.append(Section(title, blocks))
    return write_document(Document("Pitas et al. studies", [], sections), dest)
