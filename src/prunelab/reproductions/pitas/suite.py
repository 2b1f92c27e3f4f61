"""The reproduction suite ``pitas``: Pitas, Davies & Vandergheynst 2019 (arXiv:1905.08793), hard
thresholding against FeTa (arXiv:1803.04239), Net-Trim and L-OBS.

``prunelab bench --suite pitas`` runs, on Fashion-MNIST with /255 inputs, for the paper's FC
784-100-100-10 (``fc``: dropout 0.2, max-norm 3, Adam 1e-3, batch 300, Keras decay, 30 epochs)
and for LeNet-5, every method of :data:`METHODS` (hard thresholding, global magnitude, FeTa,
Net-Trim, L-OBS) from the same trained dense model, and writes the suite's own report
(:func:`write_pitas_report`, also ``python -m prunelab.reproductions.pitas OUTDIR``):

1. **Accuracy without retraining vs sparsity**: every method at every target of :data:`TARGETS`
   (50 … 95 %), test top-1 right after pruning.
2. **Prune time**: the wall time of every run's prune phase (all pruned layers, calibration
   capture included), and the growth with a layer's input width from
   ``benchmarks/bench_layerwise.py`` (one ReLU layer, d_in ∈ {256, 1024, 4096}, fixed N and
   d_out). That benchmark is run once, apart from the suite (it costs more than the whole suite),
   and its JSON is read from ``OUTDIR/bench_layerwise.json``, else from the checkout's
   ``docs/results/pitas/bench_layerwise.json`` (see :func:`find_bench_json`).
3. **Total time to recover** at :data:`RETRAIN_TARGET` (90 %): the 90 % run of every method is
   retrained with its mask fixed (the dense recipe, ``retrain_epochs`` epochs) and the harness
   records the validation top-1 and the wall time of every epoch. The time to get within
   0.5, 1, 2 and 5 points (:data:`GAPS`) of the dense model's validation top-1 is prune time +
   retraining time up to the first epoch that gets there (:func:`time_to_target`), or "not
   reached in E epochs". The stopping decision uses the **validation** split (5,000 training
   images held out), not the test split the authors' protocol reads: prunelab never selects on
   test. An epoch's time includes its validation pass (a stopping rule needs it).

Every run is an ordinary harness run (``prunelab.harness.runner``): stored, resumable, hashed. The
targets other than 90 % are not retrained (retrain budget of 0 epochs); the 90 % run's "pruned"
scores give experiment 1 its 90 % point, so nothing is pruned twice.

Scaled down from the paper (also in the suite's notes): one seed; calibration rows (the paper
uses all 60,000 training images); LeNet-5's dense budget, retraining budget and its L-OBS
(one-shot update) and Net-Trim (fewer search steps and iterations) settings, per
:data:`MODELS` (:mod:`~prunelab.reproductions.pitas.protocol`).

Adding a method to all three experiments is one line in :data:`METHODS`.
"""

from __future__ import annotations

import math

from prunelab.harness.runner import RunSpec
from prunelab.harness.suites import Suite, register_suite
from prunelab.reproductions.pitas.bench import find_bench_json
from prunelab.reproductions.pitas.claims import check_claims
from prunelab.reproductions.pitas.collect import collect, display_name, time_to_target
from prunelab.reproductions.pitas.protocol import (
    DATA_KWARGS, GAPS, METHODS, MODELS, RETRAIN_TARGET, TARGETS, ModelPlan,
)
from prunelab.reproductions.pitas.report import main, write_pitas_report

__all__ = ["TARGETS", "RETRAIN_TARGET", "GAPS", "METHODS", "MODELS", "DATA_KWARGS", "ModelPlan", "pitas_specs",
           "pitas_suite", "display_name", "time_to_target", "collect", "check_claims", "find_bench_json",
           "write_pitas_report", "main"]


def pitas_specs(dataset: str = "fashion-mnist", models=MODELS, methods=METHODS, targets=TARGETS,
                retrain_target: float = RETRAIN_TARGET, data_kwargs: dict | None = None, seed: int = 0) -> list[RunSpec]:
    """The suite's run specs.

    Args:
        dataset: data set name.
        models: :class:`ModelPlan` objects.
        methods: ``(display name, method, hparams)`` entries.
        targets: sparsities of experiment 1 (``retrain_target`` is added when missing).
        retrain_target: the sparsity retrained for experiment 3 (its retrain budget is the plan's
            ``retrain_epochs``; every other target gets 0 retraining epochs).
        data_kwargs: options of ``prunelab.data.load`` added to :data:`DATA_KWARGS`.
        seed: run seed.

    Returns:
        Specs ordered model, method, target.
    """
    targets = sorted(set(float(t) for t in targets) | {float(retrain_target)})
    data = {**DATA_KWARGS, **(data_kwargs or {})}
    specs = []
    for plan in models:
        for _, method, hparams in methods:
            hp = {**hparams, **plan.overrides.get(method, {})}
            for target in targets:
                epochs = plan.retrain_epochs if math.isclose(target, retrain_target) else 0
                specs.append(RunSpec(dataset=dataset, model=plan.model, method=method, target=target, seed=seed,
                                     hparams=hp, model_kwargs=dict(plan.kwargs), data_kwargs=data,
                                     dense=dict(plan.dense), retrain=plan.retrain(epochs), calib_size=plan.calib_size))
    return specs


@register_suite("pitas")
def pitas_suite(dataset: str | None = None) -> Suite:
    """Accuracy without retraining, prune time, and total time to recover (FC and LeNet-5)."""
    dataset = dataset or "fashion-mnist"
    specs = pitas_specs(dataset)
    names = ", ".join(name for name, _, _ in METHODS)
    return Suite(
        "pitas", tuple(specs),
        description=f"{dataset}, fc 784-100-100-10 and lenet5: {names} at "
                    f"{', '.join(f'{t:g}' for t in TARGETS)} without retraining; the {RETRAIN_TARGET:g} networks "
                    "retrained with the mask fixed, time to within 0.5/1/2/5 points of dense (validation); seed 0",
        notes="Scaled down from the paper: one seed; " + "; ".join(p.note for p in MODELS if p.note)
              + ". The time-to-target decision reads the validation split (the authors read test). "
                "Suite report: OUTDIR/pitas/report.md (python -m prunelab.reproductions.pitas OUTDIR).",
        report=lambda outdir: write_pitas_report(outdir),
    )
