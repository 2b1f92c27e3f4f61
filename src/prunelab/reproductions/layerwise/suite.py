"""The suite ``layerwise``: every layer-wise pruner on three networks, with prune time and peak memory.

``prunelab bench --suite layerwise`` runs, on Fashion-MNIST with /255 inputs and one seed, every
method of :data:`METHODS` (per-layer magnitude, hard thresholding, FeTa, Net-Trim, L-OBS,
SparseGPT, Wanda; every layer but the classifier) at every target of :data:`TARGETS` and, for the
methods that offer N:M patterns, at :data:`PATTERN` (2:4), on the FC 784-100-100-10, LeNet-5 and
the MLP 784-1024-1024-10 (:data:`MODELS`), each from its one trained dense model with
:data:`CALIB_SIZE` calibration images. Every run is scored right after pruning (the run's
"pruned" scores) and after one epoch of the dense recipe with the mask fixed (its "final"
scores); the harness records the prune phase's wall time and peak memory
(``info["prune_peak_bytes"]``). The suite's report (:func:`write_layerwise_report`, also
``python -m prunelab.reproductions.layerwise OUTDIR``) tabulates them per model and draws accuracy
against target and against prune time.

Magnitude is given the same layers as the others through the run spec's ``prunable``
(``{"exclude_last": True}``: the harness hands it starting masks over every prunable weight but
the last), with ``scope="layer"``: the target applies to each layer.

Adding a method is one line in :data:`METHODS`.
"""

from __future__ import annotations

from prunelab.core.patterns import parse_pattern, pattern_name
from prunelab.harness.runner import RunSpec
from prunelab.harness.suites import Suite, register_suite
from prunelab.reproductions.layerwise.protocol import (
    CALIB_SIZE, COST_TARGET, DATA_KWARGS, METHODS, MODELS, PATTERN, PATTERN_TARGET, RETRAIN_EPOCHS, TARGETS, Method,
    ModelPlan,
)
from prunelab.reproductions.layerwise.report import main, write_layerwise_report

__all__ = ["TARGETS", "PATTERN", "PATTERN_TARGET", "COST_TARGET", "CALIB_SIZE", "RETRAIN_EPOCHS", "DATA_KWARGS",
           "Method", "METHODS", "MODELS", "ModelPlan", "layerwise_specs", "layerwise_suite", "write_layerwise_report", "main"]


def layerwise_specs(dataset: str = "fashion-mnist", models=MODELS, methods=METHODS, targets=TARGETS,
                    pattern: str | None = PATTERN, data_kwargs: dict | None = None, seed: int = 0) -> list[RunSpec]:
    """The suite's run specs.

    Args:
        dataset: data set name.
        models: :class:`~prunelab.reproductions.pitas.protocol.ModelPlan` objects (their
            ``retrain_epochs`` is every run's retraining budget).
        methods: :class:`~prunelab.reproductions.layerwise.protocol.Method` lines.
        targets: unstructured target sparsities.
        pattern: the N:M pattern run (at its sparsity 1 - N/M) by the methods marked ``pattern``;
            None: none.
        data_kwargs: options of ``prunelab.data.load`` added to :data:`DATA_KWARGS`.
        seed: run seed.

    Returns:
        Specs ordered model, method, target (the pattern run last).

    Example:
        >>> len(layerwise_specs())   # 3 models x (7 methods x 4 targets + 4 at 2:4)
        96
    """
    data = {**DATA_KWARGS, **(data_kwargs or {})}
    specs = []
    for plan in models:
        for entry in methods:
            hp = {**entry.hparams, **plan.overrides.get(entry.method, {})}
            runs = [(float(t), hp) for t in targets]
            if pattern and entry.pattern:
                n, m = parse_pattern(pattern)
                runs.append((1.0 - n / m, {**hp, "pattern": pattern_name((n, m))}))
            for target, hparams in runs:
                specs.append(RunSpec(dataset=dataset, model=plan.model, method=entry.method, target=target,
                                     seed=seed, hparams=hparams, model_kwargs=dict(plan.kwargs), data_kwargs=data,
                                     dense=dict(plan.dense), retrain=plan.retrain(plan.retrain_epochs),
                                     calib_size=plan.calib_size, prunable=dict(entry.prunable)))
    return specs


@register_suite("layerwise")
def layerwise_suite(dataset: str | None = None) -> Suite:
    """Every layer-wise pruner at 50-95 % and 2:4 on FC, LeNet-5 and MLP-1024: accuracy, prune time, peak memory."""
    dataset = dataset or "fashion-mnist"
    names = ", ".join(m.name for m in METHODS)
    patterned = ", ".join(m.name for m in METHODS if m.pattern)
    return Suite(
        "layerwise", tuple(layerwise_specs(dataset)),
        description=f"{dataset}, fc 784-100-100-10, lenet5 and mlp 784-1024-1024-10: {names} at "
                    f"{', '.join(f'{t:g}' for t in TARGETS)} and {patterned} at {PATTERN}; every layer but the "
                    f"classifier; {CALIB_SIZE} calibration images; scored without retraining and after "
                    f"{RETRAIN_EPOCHS} epoch of retraining with the mask fixed; seed 0",
        notes="One seed; " + "; ".join(p.note for p in MODELS if p.note) + ". Magnitude prunes each hidden layer "
              "to the target (scope=layer, the run's prunable rule leaves the classifier out). "
              "Suite report: OUTDIR/layerwise/report.md (python -m prunelab.reproductions.layerwise OUTDIR).",
        report=lambda outdir: write_layerwise_report(outdir),
    )
