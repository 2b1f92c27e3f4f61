"""The suite ``mobile``: does LTP keep its edge over GMP on MobileNetV2, EfficientNet-B0 and MixNet-S?

``prunelab bench --suite mobile`` trains each network (:data:`MODELS`, width 0.25, depth 0.5) on a
4,000-image Fashion-MNIST subset, then runs LTP, GMP and magnitude pruning + retraining from that
dense model with equal epochs at 2×, 4× and 8× compression (:data:`TARGETS`), seed 0 (27 runs);
``--suite mobile-3seeds`` runs seeds 0, 1 and 2 (81 runs, the seed-0 runs shared with ``mobile``
in one output folder). Every run records its wall time; the dense models' test top-1 and training
time are the "documented accuracy in a documented time". The report (:func:`write_mobile_report`,
``OUTDIR/mobile/report.md``, also ``python -m prunelab.reproductions.mobile OUTDIR``) gives per
model the dense scores, a method × compression table, the LTP − GMP verdict computed from the runs
(:func:`~prunelab.reproductions.mobile.verdict.edge_verdict`) and the layers LTP prunes least at 8×
(:func:`~prunelab.reproductions.mobile.verdict.least_pruned`). Budgets and every choice are
explained in :mod:`prunelab.reproductions.mobile.protocol`.
"""

from __future__ import annotations

from prunelab.harness.suites import Suite, register_suite
from prunelab.reproductions.mobile.protocol import (
    DATA_KWARGS, DENSE, METHODS, MODELS, RETRAIN, SEEDS, SEEDS_FULL, TARGETS, MobilePlan,
)
from prunelab.reproductions.mobile.report import main, write_mobile_report
from prunelab.reproductions.mobile.specs import method_hparams, mobile_specs

__all__ = ["TARGETS", "SEEDS", "SEEDS_FULL", "MODELS", "METHODS", "MobilePlan", "method_hparams", "mobile_specs",
           "mobile_suite", "mobile_suite_3seeds", "write_mobile_report", "main"]


def _suite(name: str, dataset: str | None, seeds) -> Suite:
    dataset = dataset or "fashion-mnist"
    models = ", ".join(p.model for p in MODELS)
    return Suite(
        name, tuple(mobile_specs(dataset, seeds=seeds)),
        description=f"{dataset} ({DATA_KWARGS['limit']} training images), {models} at width "
                    f"{MODELS[0].kwargs['width']:g} and depth {MODELS[0].kwargs['depth']:g}: LTP vs GMP vs "
                    f"magnitude+retrain at 2/4/8x, {RETRAIN['epochs']} epochs each from a {DENSE['epochs']}-epoch "
                    f"dense model; seeds {', '.join(map(str, seeds))}",
        notes="Scaled to about 30 minutes on two CPU cores per seed: width 0.25, depth 0.5, a 4,000-image training "
              "subset, 1,000 validation images (the test split is the full 10,000). GMP and magnitude prune every "
              "layer to the target (global magnitude pruned whole classifiers away at 4x and 8x); LTP learns per-layer "
              "thresholds, lambda per target. " + "; ".join(p.note for p in MODELS) + ". Suite report: "
              "OUTDIR/mobile/report.md (python -m prunelab.reproductions.mobile OUTDIR).",
        report=lambda outdir: write_mobile_report(outdir),
    )


@register_suite("mobile")
def mobile_suite(dataset: str | None = None) -> Suite:
    """LTP vs GMP vs magnitude + retraining at 2/4/8× on MobileNetV2, EfficientNet-B0 and MixNet-S, seed 0."""
    return _suite("mobile", dataset, SEEDS)


@register_suite("mobile-3seeds")
def mobile_suite_3seeds(dataset: str | None = None) -> Suite:
    """The ``mobile`` suite with seeds 0, 1 and 2 (the verdict can then tell an edge from seed noise)."""
    return _suite("mobile-3seeds", dataset, SEEDS_FULL)
