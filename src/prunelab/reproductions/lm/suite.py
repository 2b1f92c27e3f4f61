"""The suites ``lm`` and ``lm-quick``: every pruning family on a byte-level language model.

``prunelab bench --suite lm`` runs, on the ``text`` data set (Python standard library sources,
bytes, context 128; ``--data-dir DIR`` reads the text files under DIR instead) and the default
``gpt`` (tied head; the prunable weights are the transformer blocks' matrices):

* the dense model (:data:`~prunelab.reproductions.lm.protocol.DENSE`), once per seed;
* every one-shot method (magnitude at global and layer scope, random, hard thresholding, FeTa,
  Net-Trim, L-OBS, SparseGPT, Wanda) at 50, 70 and 90 % and, for those offering N:M patterns, at
  2:4, each scored right after pruning ("pruned") and after one epoch of retraining ("final");
* OS, LT and SAP to 90 %, a round = prune + one epoch of fine-tuning, PQ Index traced per round;
* GMP and LTP at 50, 70 and 90 %, two epochs each from the dense model;
* gRDA trained from initialisation with plain SGD + its threshold for dense + retraining epochs,
  and its baseline SGD + magnitude (the same SGD recipe, global magnitude, one retraining epoch).

Budgets and time: :mod:`~prunelab.reproductions.lm.protocol`. ``lm-quick`` is the same pipeline on
fewer methods and targets (90 % and SparseGPT's 2:4, no gRDA family), from the same dense model. The suites' report (:func:`write_lm_report`, also ``python -m
prunelab.reproductions.lm OUTDIR``) gives the dense model beside an order-2 byte n-gram, the table
of test bits per byte, the figures and the verdicts of four claims.

Overrides, e.g. for a smoke run in CI: :func:`lm_specs` takes ``data_kwargs``, ``model_kwargs``,
``dense``, ``retrain``, ``calib_size``, ``targets`` and ``seeds``; the registered suites read the
same keys from the environment variable :data:`OVERRIDES_ENV` (a JSON object), e.g.
``PRUNELAB_LM_OVERRIDES='{"dense": {"epochs": 1}, "model_kwargs": {"layers": 1, "width": 32}}'``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from prunelab import methods
from prunelab.core.patterns import parse_pattern, pattern_name
from prunelab.errors import ConfigError
from prunelab.harness.runner import RunSpec
from prunelab.harness.suites import Suite, register_suite
from prunelab.reproductions.lm.protocol import LM, QUICK, SGD_MAGNITUDE, Plan
from prunelab.reproductions.lm.report import write_lm_report

__all__ = ["OVERRIDES_ENV", "DATASET", "lm_specs", "sgd_budget", "suite_for", "lm_suite", "lm_quick_suite"]

#: the environment variable holding a JSON object of :func:`lm_specs` overrides for the registered suites.
OVERRIDES_ENV = "PRUNELAB_LM_OVERRIDES"
#: the data set of both suites.
DATASET = "text"
_OVERRIDE_KEYS = ("data_kwargs", "model_kwargs", "dense", "retrain", "calib_size", "targets", "seeds")


def sgd_budget(budget: dict, lr: float) -> dict:
    """``budget`` as plain SGD (no momentum, no weight decay) at ``lr``: gRDA's family's recipe.

    Args:
        budget: TrainConfig fields (epochs, batch size, schedule, clipping are kept).
        lr: the learning rate.

    Returns:
        A new dict of TrainConfig fields.
    """
    out = {k: v for k, v in budget.items() if k not in ("betas", "nesterov")}
    out.update(optimizer="sgd", lr=float(lr), momentum=0.0, weight_decay=0.0)
    return out


def _with_seed(method: str, hparams: dict, seed: int) -> dict:
    names = {f.name for f in dataclasses.fields(methods.get(method).Hparams)}
    # a method's own randomness (random pruning, calibration subsets) follows the run seed
    return {**hparams, "seed": seed} if "seed" in names and "seed" not in hparams else dict(hparams)


def lm_specs(plan: Plan = LM, *, dataset: str = DATASET, data_kwargs: dict | None = None,
             model_kwargs: dict | None = None, dense: dict | None = None, retrain: dict | None = None,
             calib_size: int | None = None, targets=None, seeds=None) -> list[RunSpec]:
    """The run specs of a plan, with optional overrides (merged into the plan's dicts).

    Args:
        plan: :data:`~prunelab.reproductions.lm.protocol.LM` or ``QUICK``.
        dataset: the data set (a token data set such as ``text``).
        data_kwargs: options of ``prunelab.data.load`` merged over the plan's.
        model_kwargs: options of the ``gpt`` merged over the plan's.
        dense, retrain: TrainConfig fields merged over the plan's recipes (the gRDA family's SGD
            recipes follow them: batch size, schedule and clipping, and, when ``dense`` sets them, the
            epochs too; else the SGD dense model trains ``plan.grda.dense_epochs``).
        calib_size: calibration sequences of the one-shot methods.
        targets: unstructured targets (the iterative methods run to the highest).
        seeds: run seeds.

    Returns:
        Specs ordered seed, then one-shot (method, target, pattern last), iterative,
        training-time, gRDA and SGD + magnitude.

    Raises:
        ConfigError: no target, or a target outside (0, 1).

    Example:
        >>> len(lm_specs())      # 32 one-shot + 3 iterative + 6 training-time + 1 gRDA + 3 SGD + magnitude
        45
    """
    plan = plan.with_overrides(
        data_kwargs={**plan.data_kwargs, **(data_kwargs or {})}, model_kwargs={**plan.model_kwargs, **(model_kwargs or {})},
        dense={**plan.dense, **(dense or {})}, retrain={**plan.retrain, **(retrain or {})}, calib_size=calib_size,
        targets=tuple(float(t) for t in targets) if targets is not None else None,
        seeds=tuple(seeds) if seeds is not None else None)
    if not plan.targets or not all(0 < t < 1 for t in plan.targets):
        raise ConfigError(f"lm suite targets must be fractions in (0, 1), got {plan.targets!r}")

    def spec(method, target, hparams, seed, dense_budget=plan.dense, retrain_budget=plan.retrain):
        return RunSpec(dataset=dataset, model="gpt", method=method, target=float(target), seed=seed,
                       hparams=_with_seed(method, hparams, seed), model_kwargs=dict(plan.model_kwargs),
                       data_kwargs=dict(plan.data_kwargs), dense=dict(dense_budget), retrain=dict(retrain_budget),
                       calib_size=plan.calib_size)

    specs = []
    for seed in plan.seeds:
        for entry in plan.methods:
            if entry.family == "oneshot":
                for target in entry.targets or plan.targets:
                    specs.append(spec(entry.method, target, entry.hparams_at(float(target)), seed))
                if plan.pattern and entry.pattern:
                    n, m = parse_pattern(plan.pattern)
                    specs.append(spec(entry.method, 1.0 - n / m, {**entry.hparams, "pattern": pattern_name((n, m))},
                                      seed))
            elif entry.family == "iterative":
                specs.append(spec(entry.method, max(entry.targets or plan.targets), entry.hparams, seed))
            else:
                for target in entry.targets or plan.targets:
                    specs.append(spec(entry.method, target, entry.hparams_at(float(target)), seed))
        if plan.grda is not None:
            g = plan.grda
            sgd_dense, sgd_retrain = sgd_budget(plan.dense, g.lr), sgd_budget(plan.retrain, g.lr)
            if g.dense_epochs is not None and "epochs" not in (dense or {}):   # an epochs override applies to both
                sgd_dense["epochs"] = int(g.dense_epochs)
            epochs = int(sgd_dense.get("epochs", 10)) + int(sgd_retrain.get("epochs", 10))
            # gRDA's nominal target is 0 (its sparsity follows from c and mu); its dense model is the
            # SGD one, shared with the baseline, so the run also records plain SGD's scores.
            specs.append(spec("grda", 0.0, {"lr": g.lr, "c": g.c, "mu": g.mu, "epochs": epochs, "schedule": "config"},
                              seed, sgd_dense, sgd_retrain))
            for target in g.magnitude_targets:
                specs.append(spec("magnitude", target, {"scope": "global"}, seed, sgd_dense, sgd_retrain))
    return specs


def _env_overrides() -> dict:
    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{OVERRIDES_ENV} is not valid JSON ({exc}); give an object such as "
                          '\'{"dense": {"epochs": 1}}\'') from None
    if not isinstance(overrides, dict) or set(overrides) - set(_OVERRIDE_KEYS):
        raise ConfigError(f"{OVERRIDES_ENV} must be a JSON object with keys among {', '.join(_OVERRIDE_KEYS)}; "
                          f"got {text!r}")
    return overrides


def suite_for(plan: Plan, dataset: str | None = None) -> Suite:
    """The :class:`~prunelab.harness.suites.Suite` of ``plan`` (with :data:`OVERRIDES_ENV` applied).

    Args:
        plan: the protocol.
        dataset: the data set (None: ``text``).

    Returns:
        The suite; its report hook writes ``OUTDIR/lm/report.md``.
    """
    overrides = _env_overrides()
    specs = lm_specs(plan, dataset=dataset or DATASET, **overrides)
    names = [m.name for m in plan.methods]
    seeds = overrides.get("seeds", plan.seeds)
    note = f" Overrides from {OVERRIDES_ENV}: {json.dumps(overrides, sort_keys=True)}." if overrides else ""
    return Suite(
        plan.name, tuple(specs),
        description=f"{dataset or DATASET} {json.dumps(plan.data_kwargs, sort_keys=True)}, gpt: dense, then "
                    f"{', '.join(names)} at {', '.join(f'{t:g}' for t in plan.targets)}"
                    f"{' and ' + plan.pattern if plan.pattern else ''}, gRDA vs {SGD_MAGNITUDE}; seeds "
                    f"{', '.join(map(str, seeds))}",
        notes="Scores are bits per byte (bpb) and perplexity; one-shot runs are scored without retraining and after "
              f"{plan.retrain.get('epochs')} epoch of retraining; budgets and their equalisation: "
              "prunelab.reproductions.lm.protocol. Suite report: OUTDIR/lm/report.md (python -m "
              "prunelab.reproductions.lm OUTDIR)." + note,
        report=lambda outdir: write_lm_report(outdir),
    )


@register_suite("lm")
def lm_suite(dataset: str | None = None) -> Suite:
    """Every pruning family on the byte-level gpt: 50/70/90 % and 2:4, one seed (~36 min on 2 threads)."""
    return suite_for(LM, dataset)


@register_suite("lm-quick")
def lm_quick_suite(dataset: str | None = None) -> Suite:
    """The ``lm`` pipeline on fewer methods: 90 % and SparseGPT's 2:4, no gRDA family (~9 min on 2 threads)."""
    return suite_for(QUICK, dataset)
