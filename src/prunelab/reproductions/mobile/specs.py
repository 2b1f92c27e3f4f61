"""The ``mobile`` suite's run specs: every method at every target from each seed's dense model."""

from __future__ import annotations

from prunelab.harness.runner import RunSpec
from prunelab.reproductions.mobile.protocol import (
    DATA_KWARGS, DENSE, GMP_HP, LTP_COMMON, LTP_LAMBDA, MAGNITUDE_HP, METHODS, MODELS, RETRAIN, SEEDS, TARGETS,
)

__all__ = ["method_hparams", "mobile_specs"]


def method_hparams(method: str, target: float, ltp_lambda: dict | None = None) -> dict:
    """The hyperparameters of ``method`` at ``target`` in this suite.

    Args:
        method: ``"ltp"``, ``"gmp"`` or ``"magnitude"``.
        target: the target sparsity (LTP's λ depends on it).
        ltp_lambda: ``target -> λ`` (default :data:`~prunelab.reproductions.mobile.protocol.LTP_LAMBDA`).

    Returns:
        A new dict.

    Example:
        >>> method_hparams("ltp", 0.875)
        {'gradient': 'exact', 'penalty_weight': 10.0}
    """
    if method == "ltp":
        return {**LTP_COMMON, "penalty_weight": float((ltp_lambda or LTP_LAMBDA)[target])}
    return dict(GMP_HP if method == "gmp" else MAGNITUDE_HP)


def mobile_specs(dataset: str = "fashion-mnist", models=MODELS, targets=TARGETS, seeds=SEEDS, methods=METHODS,
                 dense: dict | None = None, retrain: dict | None = None, data_kwargs: dict | None = None,
                 ltp_lambda: dict | None = None) -> list[RunSpec]:
    """The suite's run specs (smaller budgets for tests and smoke runs).

    Args:
        dataset: data set name.
        models: :class:`~prunelab.reproductions.mobile.protocol.MobilePlan` objects.
        targets: target sparsities.
        seeds: run seeds (each its own dense model).
        methods: the compared methods, a subset of ``("ltp", "gmp", "magnitude")``.
        dense: the dense budget (default :data:`~prunelab.reproductions.mobile.protocol.DENSE`).
        retrain: every method's budget (default :data:`~prunelab.reproductions.mobile.protocol.RETRAIN`).
        data_kwargs: options of ``prunelab.data.load`` (default
            :data:`~prunelab.reproductions.mobile.protocol.DATA_KWARGS`; replaces it).
        ltp_lambda: LTP's ``target -> λ`` (default :data:`~prunelab.reproductions.mobile.protocol.LTP_LAMBDA`).

    Returns:
        Specs ordered seed, model, target, method.

    Example:
        >>> len(mobile_specs())   # 3 models x 3 targets x 3 methods
        27
    """
    data = dict(DATA_KWARGS if data_kwargs is None else data_kwargs)
    return [RunSpec(dataset=dataset, model=plan.model, method=method, target=float(target), seed=int(seed),
                    hparams=method_hparams(method, target, ltp_lambda), model_kwargs=dict(plan.kwargs),
                    data_kwargs=data, dense=dict(dense or DENSE), retrain=dict(retrain or RETRAIN))
            for seed in seeds for plan in models for target in targets for method in methods]
