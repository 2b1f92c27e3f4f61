"""The iterative driver: train → prune → rewind → retrain, T rounds, as the code of Diao et al. (ICLR
2023, ``train_classifier.py``) runs them; the procedure and every deviation are in the docstring of
:mod:`prunelab.methods.iterative`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from prunelab.training import distributed as _dist
from prunelab.errors import ConfigError, MethodError
from prunelab.utils.io import plain_json
from prunelab.core.masks import Masks, resolve_parameters
from prunelab.core.prunable import input_first_weights
from prunelab.core.pqi import gini_index_model, grid_to_lists, pq_index_grid_model, pq_index_model
from prunelab.training.loop import Callback, TrainConfig, evaluate, train
from prunelab.training.sources import batch_source
from prunelab.methods.base import MethodOutcome
from prunelab.methods.iterative.allocation import _cap_to
from prunelab.methods.iterative.schedules import SCHEDULES, IterativeHparams, paper_train_config


@dataclass
class IterativeResult:
    """What :func:`iterate` returns.

    Attributes:
        model: the last round's trained model, masks applied.
        masks: the last round's masks.
        rounds: one dict per round (see :func:`iterate`).
        info: schedule, hparams, rounds run, final density, whether the target was reached, and
            ``pruned_scores`` (the last pruned model before retraining, val and test).
        phase_times: seconds: ``train`` (round 0), ``retrain`` (rounds ≥ 1), ``prune``, ``eval``.
    """

    model: nn.Module
    masks: Masks
    rounds: list[dict]
    info: dict = field(default_factory=dict)
    phase_times: dict = field(default_factory=dict)

    def densities(self) -> list[float]:
        """Density of the prunable weights per round."""
        return [r["density"] for r in self.rounds]

    def to_outcome(self) -> MethodOutcome:
        """The harness's :class:`~prunelab.methods.base.MethodOutcome`."""
        return MethodOutcome(model=self.model, masks=self.masks, traces={"rounds": self.rounds},
                             info=dict(self.info), phase_times=dict(self.phase_times))


class _CaptureStep(Callback):
    """Saves the model state after ``step`` optimizer steps (rewinding to iteration k)."""

    def __init__(self, step: int):
        self.step, self.state = step, None

    def on_batch_end(self, state):
        if state.step == self.step and self.state is None:
            self.state = _clone_state(state.model)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _has_data(part) -> bool:
    if part is None:
        return False
    try:
        return len(part) > 0
    except TypeError:   # an iterable without a length
        return True


def _scores(model: nn.Module, parts: dict, batch_size: int, forward_fn=None, loss_fn=None) -> dict:
    out = {}
    for split in ("val", "test"):
        part = parts.get(split)
        if _has_data(part):
            r = evaluate(model, part, batch_size, forward_fn=forward_fn, loss_fn=loss_fn)
            out[split] = {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"]}
    return out


def _flat_scores(rec: dict, prefix: str, scores: dict) -> None:
    for split in ("val", "test"):
        block = scores.get(split)
        rec[f"{prefix}{split}_top1"] = block["top1"] if block else None
        rec[f"{prefix}{split}_loss"] = block["loss"] if block else None


def _resolve_hparams(schedule: str, hparams, overrides: dict):
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    cls = SCHEDULES[schedule].hparams
    base = {} if hparams is None else asdict(hparams)
    known = {f.name for f in fields(cls)}
    base = {k: v for k, v in base.items() if k in known}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"schedule {schedule!r} has no hyperparameter {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    base.update(overrides)
    return cls(**base)


def iterate(
    model: nn.Module | Callable[[], nn.Module],
    data,
    schedule: str = "sap",
    rounds: int | None = None,
    epochs: int | None = None,
    *,
    hparams: IterativeHparams | None = None,
    train_config: TrainConfig | None = None,
    retrain_config: TrainConfig | None = None,
    masks: Masks | None = None,
    dense_model: nn.Module | None = None,
    target: float = 0.0,
    callbacks: tuple = (),
    on_round: Callable[[dict, nn.Module, Masks], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    val=None,
    test=None,
    forward_fn=None,
    loss_fn=None,
    **hparam_fields,
) -> IterativeResult:
    """Run an iterative pruning schedule: train → prune → rewind → retrain, T rounds.

    Args:
        model: the network at initialisation (its current state is θ_0), or a function
            returning one.
        data: a ``prunelab.data.Dataset`` (train, val, test splits), or the training data alone
            in any form :func:`prunelab.training.loop.train` takes (a ``Split``, a ``DataLoader``
            of ``(x, y)`` or of dicts of token ids, ...; then ``val``/``test`` are given apart).
        schedule: ``"os"``, ``"lt"`` or ``"sap"``.
        rounds: T, pruning rounds (overrides ``hparams.rounds``).
        epochs: epochs per round (overrides ``hparams.epochs``); required unless a config is given.
        hparams: a :class:`FixedFractionHparams` (os, lt) or :class:`SAPHparams` (sap).
        train_config: recipe of round 0 (default: :func:`paper_train_config`).
        retrain_config: recipe of rounds ≥ 1 (default: ``train_config``).
        masks: initial masks (default: keep every prunable weight).
        dense_model: an already trained dense model (round 0's result) to reuse, with the same
            architecture; ignored when ``rewind="k"`` (round 0 must be observed).
        target: sparsity in [0, 1); > 0 with ``stop_at_target`` caps pruning there and stops.
        callbacks: training-loop callbacks, passed to every round's training.
        on_round: called after each round with ``(record, model, masks)``.
        checkpoint_dir: save every round as ``round_XXX.safetensors`` here (prunelab checkpoint:
            weights, masks, the round's record as metrics). Under ``torchrun``, rank 0 alone
            creates the directory and writes.
        log: receives one progress line per round.
        val: validation data (default: the ``Dataset``'s ``val`` split), any data ``evaluate`` takes.
        test: test data (default: the ``Dataset``'s ``test`` split).
        forward_fn: ``forward_fn(model, batch) -> output`` for training and evaluation (as ``train``).
        loss_fn: ``loss_fn(output, batch) -> scalar``, the task loss (as ``train``).
        **hparam_fields: any other hyperparameter of the schedule (``rate``, ``p``, ``scope`` …).

    Returns:
        An :class:`IterativeResult`. Each round's record has ``round``, ``kept``, ``total``,
        ``density``, ``pruned`` (weights pruned entering the round), ``pruned_val_top1`` /
        ``pruned_test_top1`` / ``…_loss`` (source weights ⊙ new mask, before retraining; None in
        round 0), ``val_top1`` / ``test_top1`` / ``…_loss`` (after training, the selected epoch),
        ``best_epoch``, ``pqi`` (global I_{p,q} of the trained weights over m_t), ``pqi_layer``,
        ``pqi_grid`` (global, rows p = 0.1..1.0, columns q = 1.0..2.0, None where p ≥ q),
        ``pqi_neuron_mean`` (neuron scope: mean per layer), ``gini``, ``pruned_pqi`` (of the
        pruned model), ``prune_info`` (SAP: d, PQ Index, r_t),
        ``seconds_train``, ``seconds_prune``, ``seconds_eval``.

    Raises:
        ConfigError: bad hyperparameters, no validation split with ``select="val"``, a rewind
            step beyond round 0's training.

    Example:
        >>> data = prunelab.data.load("fashion-mnist")
        >>> net = prunelab.models.create("mlp", data.in_shape, data.num_classes)
        >>> res = iterate(net, data, "sap", rounds=5, epochs=3, p=0.5, q=1.0)
        >>> res.densities()
    """
    if rounds is not None:
        hparam_fields["rounds"] = rounds
    if epochs is not None:
        hparam_fields["epochs"] = epochs
    hp = _resolve_hparams(schedule, hparams, hparam_fields)
    rule = SCHEDULES[schedule]
    if train_config is None:
        if hp.epochs is None:
            raise ConfigError("give epochs= (epochs per round; the paper trains 200) or a train_config")
        train_config = paper_train_config(hp.epochs)
    retrain_config = retrain_config or train_config
    if hp.epochs is not None:
        train_config = train_config.replace(epochs=hp.epochs)
        retrain_config = retrain_config.replace(epochs=hp.epochs)
    if not 0.0 <= float(target) < 1.0:
        raise ConfigError(f"target sparsity must be in [0, 1), got {target!r}")
    if hasattr(data, "train") and hasattr(data, "val"):
        train_data = data.train
        val = data.val if val is None else val
        test = getattr(data, "test", None) if test is None else test
    else:
        train_data = data
    parts = {"val": val, "test": test}
    if hp.select == "val" and not _has_data(val):
        raise ConfigError("select='val' needs a validation split: load the data with val_size > 0, "
                          "or use select='last'")
    if not isinstance(model, nn.Module):
        model = model()
    log = log or (lambda msg: None)
    masks = (masks.clone() if masks is not None else Masks.ones(model))
    masks.validate(model)
    if masks.total() == 0:
        raise ConfigError("the model has no prunable weights")
    if hp.rewind == "k":
        per_epoch = batch_source(train_data, train_config.batch_size, train_config.seed,
                                 train_config.epochs).steps_per_epoch
        steps = math.inf if per_epoch is None else per_epoch * train_config.epochs
        if hp.rewind_step > steps:
            raise ConfigError(f"rewind_step {hp.rewind_step} is beyond round 0's {steps} steps")
        dense_model = None
    init_state = _clone_state(model)
    rewind_state = init_state
    total = masks.total()
    target_kept = math.floor((1.0 - float(target)) * total + 0.5) if (target > 0 and hp.stop_at_target) else None
    # Under torchrun every rank runs the rounds (training is data-parallel); rank 0 alone writes.
    writer = checkpoint_dir is not None and _dist.is_main()
    if writer:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    records: list[dict] = []
    times = {"train": 0.0, "retrain": 0.0, "prune": 0.0, "eval": 0.0}
    dense_state = trained_state = None
    pruned_scores = None
    reached = target_kept is None
    bs = train_config.eval_batch_size
    for t in range(hp.rounds + 1):
        rec: dict = {"round": t}
        seconds_prune = 0.0
        if t > 0:
            t0 = time.perf_counter()
            source = dense_state if rule.source == "dense" else trained_state
            model.load_state_dict(source)
            # by the masks' names (canonical, tied alias or wrapper-prefixed), in model order
            resolved, rank = resolve_parameters(model, masks), {id(p): i for i, p in enumerate(model.parameters())}
            weights = dict(sorted(resolved.items(), key=lambda item: rank[id(item[1])]))
            new, info = _allocate_by_output_rows(rule, model, weights, masks, hp, t)
            if target_kept is not None and new.kept() < target_kept:
                new = _cap_to(masks, new, weights, masks.kept() - target_kept)
                info["capped_at_target"] = True
            if any(bool((new[n] & ~masks[n]).any()) for n in masks):
                raise MethodError("internal error: a round revived pruned weights (masks must only shrink)")
            rec["pruned"] = masks.kept() - new.kept()
            rec["prune_info"] = plain_json(info)
            masks = new
            masks.apply(model)
            seconds_prune = time.perf_counter() - t0
            t0 = time.perf_counter()
            pruned_scores = _scores(model, parts, bs, forward_fn, loss_fn)
            _flat_scores(rec, "pruned_", pruned_scores)
            rec["pruned_pqi"] = pq_index_model(model, masks, hp.p, hp.q, "global")["global"]
            times["eval"] += time.perf_counter() - t0
            if hp.rewind in ("init", "k"):
                model.load_state_dict(rewind_state)
                masks.apply(model)
        else:
            rec["pruned"] = 0
            _flat_scores(rec, "pruned_", {})
            rec["pruned_pqi"] = None
        rec.update(kept=masks.kept(), total=total, density=masks.kept() / total)

        t0 = time.perf_counter()
        config = (train_config if t == 0 else retrain_config)
        config = config.replace(seed=config.seed + t)
        if t == 0 and dense_model is not None:
            model.load_state_dict(dense_model.state_dict())
            masks.apply(model)
            rec["best_epoch"], rec["reused_dense"] = None, True
        else:
            extra = []
            capture = None
            if t == 0 and hp.rewind == "k":
                if hp.rewind_step == 0:
                    rewind_state = init_state
                else:
                    capture = _CaptureStep(hp.rewind_step)
                    extra.append(capture)
            state = train(model, train_data, config, masks=masks, callbacks=[*callbacks, *extra],
                          val=val if _has_data(val) else None, select_best=hp.select == "val",
                          progress=False, label=f"{schedule} round {t}", forward_fn=forward_fn,
                          loss_fn=loss_fn)
            if capture is not None:
                if capture.state is None:
                    raise ConfigError(f"rewind_step {hp.rewind_step} was never reached in round 0")
                rewind_state = capture.state
            rec["best_epoch"] = (state.best or {}).get("epoch") if hp.select == "val" else len(state.history)
        seconds_train = time.perf_counter() - t0
        times["train" if t == 0 else "retrain"] += seconds_train

        t0 = time.perf_counter()
        _flat_scores(rec, "", _scores(model, parts, bs, forward_fn, loss_fn))
        rec["pqi"] = pq_index_model(model, masks, hp.p, hp.q, "global")["global"]
        rec["pqi_layer"] = pq_index_model(model, masks, hp.p, hp.q, "layer")
        if hp.scope == "neuron":
            rec["pqi_neuron_mean"] = {n: float(v.mean()) if v.numel() else 0.0
                                      for n, v in pq_index_model(model, masks, hp.p, hp.q, "neuron").items()}
        if hp.record_grid:
            rec["pqi_grid"] = grid_to_lists(pq_index_grid_model(model, masks, "global")["global"])
        rec["gini"] = gini_index_model(model, masks, "global")["global"]
        seconds_eval = time.perf_counter() - t0
        times["eval"] += seconds_eval
        times["prune"] += seconds_prune
        rec.update(seconds_train=seconds_train, seconds_prune=seconds_prune, seconds_eval=seconds_eval)
        records.append(rec)

        trained_state = _clone_state(model)
        if t == 0:
            dense_state = trained_state
        log(f"{schedule} round {t}/{hp.rounds}: density {rec['density']:.4f} ({rec['kept']}/{total}), "
            f"val top-1 {_pct(rec['val_top1'])}, test top-1 {_pct(rec['test_top1'])}, "
            f"PQ Index {rec['pqi']:.4f}, {seconds_train:.1f}s")
        if writer:
            from prunelab.core.checkpoints import save_checkpoint

            save_checkpoint(checkpoint_dir / f"round_{t:03d}.safetensors", model, masks, metrics=rec,
                            extra={"schedule": schedule, "hparams": asdict(hp), "round": t,
                                   "dataset": getattr(data, "name", None)})
        if on_round is not None:
            on_round(rec, model, masks)
        if target_kept is not None and masks.kept() <= target_kept:
            reached = True
            break

    info = {
        "schedule": schedule, "hparams": asdict(hp), "rounds_run": len(records) - 1,
        "density": masks.density(), "sparsity": masks.sparsity(), "target": float(target),
        "reached_target": reached, "train_config": train_config.to_dict(),
        "retrain_config": retrain_config.to_dict(),
    }
    if pruned_scores:
        info["pruned_scores"] = pruned_scores
    return IterativeResult(model=model, masks=masks, rounds=records, info=info, phase_times=times)


def _allocate_by_output_rows(rule, model: nn.Module, weights: dict, masks: Masks, hp, round_index: int):
    """``rule.allocate`` with every weight seen as ``(d_out, d_in)``: at neuron scope a unit is a
    row of the weights it gets, so a HuggingFace ``Conv1D`` weight (stored ``(d_in, d_out)``, whose
    output units are columns) and its mask go in transposed and its new mask comes back transposed."""
    flip = input_first_weights(model, masks) if hp.scope == "neuron" else set()
    if not flip:
        return rule.allocate(weights, masks, hp, round_index)
    turn = lambda tensors: {n: t.detach().T.contiguous() if n in flip else t for n, t in tensors.items()}  # noqa: E731
    new, info = rule.allocate(turn(weights), Masks(turn(masks)), hp, round_index)
    return Masks(turn(new)), info


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2%}"
