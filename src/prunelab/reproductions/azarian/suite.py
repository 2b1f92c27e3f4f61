"""The LTP reproduction suite of Azarian et al. 2020 (arXiv:2003.00075): ``prunelab bench --suite ltp``.

Fashion-MNIST, LeNet-300-100 and LeNet-5. LTP (Azarian et al. 2020) against gradual magnitude
pruning (Zhu & Gupta) and one-shot global magnitude pruning + retraining, at matched compression
(20×, 40×, 100×: sparsity 0.95, 0.975, 0.99) and equal epochs: per model every method starts from
the same dense model and gets the same epoch budget (LTP: thresholds until the target, then
fine-tuning with the mask fixed; GMP: the cubic schedule, then recovery; magnitude: one-shot, then
retraining). LTP's sparsity is set indirectly by λ (``penalty_weight``); λ per target and every
other choice (budget, threshold learning rate, T₀, gradient, learning rates, GMP's end point) were
made on the *validation* split of LeNet-300-100 (``docs/results/ltp/tuning.md``: no alternative
beat the incumbent by more than 0.3 point, so the recipe stayed). LeNet-5 reuses them, except λ at
100× (see :data:`LTP_LAMBDA_LENET5`).

LeNet-300-100 gets 10 epochs per method (20 dense). Both models run seeds 0, 1 and 2 at every
target (each seed with its own dense model): the checks (40× within 1 point of dense, LTP within
0.5 point of GMP) are on the mean of the three. Every method shares one retraining / fine-tune
recipe, weight decay :data:`RETRAIN_WEIGHT_DECAY` included (chosen on validation with seeds 3 and
4, which the report does not use). LeNet-5 is scaled down to 8 dense epochs and 5 per
method so the suite fits about an hour of one CPU core. One extra LTP run on LeNet-300-100 trains
thresholds for the whole budget (no stop at the target), to show the *trail*.

The batch-norm study runs LTP's thresholding on a narrow ``cnn`` with the L0 term and, under the
same thresholding, with L1 and L2 penalties on the weights instead; on the cnn with batch-norm
after every conv and on the same cnn without it (``batch_norm=False``), so the effect of BN is
isolated. Thresholds train for the whole budget; sparsity is recorded every epoch.

``python -m prunelab.reproductions.azarian OUTDIR --dest DIR`` (after the bench) writes ``report.md``
and ``report.html`` (the table, the checks of the acceptance criteria, the BN study), ``figures/``
(the trail and the BN study) and ``ltp_results.json`` (:func:`write_ltp_results`). The suite's
protocol is in :mod:`~prunelab.reproductions.azarian.plans`.
"""

from __future__ import annotations

from prunelab.harness.runner import RunSpec
from prunelab.harness.suites import Suite, register_suite
from prunelab.reproductions.azarian.checks import check_acceptance
from prunelab.reproductions.azarian.collect import collect
from prunelab.reproductions.azarian.figures import draw_figures
from prunelab.reproductions.azarian.plans import (
    BN_BUDGET, BN_DENSE, BN_FINETUNE_EPOCHS, BN_STUDY, BN_TARGET, BN_WIDTHS, LTP_LAMBDA, LTP_LAMBDA_LENET5, PLANS,
    RETRAIN_WEIGHT_DECAY, TARGETS, ModelPlan,
)
from prunelab.reproductions.azarian.report import main, report_document, write_ltp_results

__all__ = ["TARGETS", "PLANS", "BN_STUDY", "ModelPlan", "ltp_specs", "ltp_suite", "collect", "check_acceptance",
           "draw_figures", "report_document", "write_ltp_results", "main"]


def ltp_specs(dataset: str = "fashion-mnist", plans=PLANS, targets=TARGETS, bn_study=BN_STUDY,
              bn_widths=BN_WIDTHS, bn_dense=None, bn_budget=None, seed: int = 0,
              data_kwargs: dict | None = None) -> list[RunSpec]:
    """The suite's run specs (smaller plans for tests and smoke runs).

    Args:
        dataset: data set name.
        plans: :class:`ModelPlan` per model of the comparison.
        targets: target sparsities of the comparison.
        bn_study: ``(penalty, λ)`` pairs of the BN study (empty: no study).
        bn_widths: widths of the study's ``cnn``.
        bn_dense, bn_budget: the study's dense and LTP budgets (default :data:`BN_DENSE`,
            :data:`BN_BUDGET`).
        seed: run seed.
        data_kwargs: options of ``prunelab.data.load``.

    Returns:
        Per model: LTP, GMP and magnitude at every target, then the trail run, then the extra
        seeds; then the BN study (with batch-norm, then without).
    """
    data_kwargs = dict(data_kwargs or {})

    def spec(model, kwargs, method, target, hp, dense, retrain, run_seed=seed):
        return RunSpec(dataset=dataset, model=model, method=method, target=float(target), seed=run_seed,
                       hparams=dict(hp), model_kwargs=dict(kwargs), data_kwargs=data_kwargs, dense=dict(dense),
                       retrain=dict(retrain))

    def compare(plan, target, run_seed):
        out = []
        if target in plan.ltp:
            out.append(spec(plan.model, plan.model_kwargs, "ltp", target, plan.ltp[target], plan.dense, plan.retrain,
                            run_seed))
        out.append(spec(plan.model, plan.model_kwargs, "gmp", target, plan.gmp, plan.dense, plan.retrain, run_seed))
        out.append(spec(plan.model, plan.model_kwargs, "magnitude", target, {}, plan.dense, plan.retrain, run_seed))
        return out

    specs = []
    for plan in plans:
        for target in targets:
            specs += compare(plan, target, seed)
        if plan.trail is not None:
            target, hp = plan.trail
            specs.append(spec(plan.model, plan.model_kwargs, "ltp", target, hp, plan.dense, plan.retrain))
        for extra in plan.extra_seeds:
            for target in plan.extra_seed_targets:
                specs += compare(plan, target, extra)
    for batch_norm in (True, False):
        for penalty, weight in bn_study:
            hp = {"penalty": penalty, "penalty_weight": weight, "stop_at_target": False,
                  "min_finetune_epochs": BN_FINETUNE_EPOCHS, "match_target": False}
            specs.append(spec("cnn", {"widths": list(bn_widths), "batch_norm": batch_norm}, "ltp", BN_TARGET, hp,
                              bn_dense or BN_DENSE, bn_budget or BN_BUDGET))
    return specs


@register_suite("ltp")
def ltp_suite(dataset: str | None = None) -> Suite:
    """LTP vs GMP vs magnitude + retraining at 20/40/100×, plus the batch-norm study."""
    dataset = dataset or "fashion-mnist"
    l300, l5 = PLANS
    return Suite(
        "ltp", tuple(ltp_specs(dataset)),
        description=f"{dataset}: LTP vs GMP vs magnitude+retrain at 20/40/100x, equal epochs "
                    f"(LeNet-300-100: {l300.retrain['epochs']}, LeNet-5: {l5.retrain['epochs']}); "
                    "BN study on a narrow cnn with and without batch-norm (L0 vs L1 vs L2)",
        notes=f"LTP's lambda per target and every other choice were made on the validation split of LeNet-300-100 "
              f"(docs/results/ltp/tuning.md); LeNet-5 reuses them, except lambda {LTP_LAMBDA_LENET5[0.99]:g} at 100x "
              f"(lambda {LTP_LAMBDA[0.99]:g} did not reach 100x within its budget). LeNet-5 is scaled down to fit the "
              f"suite in about an hour of one CPU core: dense {l5.dense['epochs']} epochs, {l5.retrain['epochs']} epochs per method "
              f"(LeNet-300-100: {l300.dense['epochs']} and {l300.retrain['epochs']}). Every method retrains / fine-tunes "
              f"with the same recipe, weight decay {RETRAIN_WEIGHT_DECAY:g} included (chosen on validation with seeds "
              f"that are not reported). Both models also run seeds {', '.join(map(str, l300.extra_seeds))} at every "
              "target (own dense models); the checks are on the mean of the seeds. "
              "Figures, checks and JSON: python -m prunelab.reproductions.azarian OUTDIR --dest DIR.")
