"""The LTP trail: one hard-masked network per epoch, the callback that records it, and the driver.

At the end of each epoch of LTP (Azarian et al. 2020) the hard mask ``1[w² > τ_l]`` gives one
point of the trail (compression, validation accuracy, thresholds, transition fraction); the
paper's §3.2 "premature termination" (no weight left in the sigmoid's transition band) is
detected and warned about.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from prunelab.errors import ConfigError, MethodError
from prunelab.core.masks import Masks
from prunelab.training.batchnorm import recalibrate_batchnorm
from prunelab.training.batches import Calibration, batch_size_of, check_iterable, default_forward, tensor_pair
from prunelab.training.loop import Callback, TrainConfig, evaluate, make_optimizer, train
from prunelab.methods.ltp.soft_mask import PENALTIES, SoftThresholdModel, hard_mask, soft_mask

logger = logging.getLogger("prunelab.ltp")


class LTPStallWarning(UserWarning):
    """Almost no weight is left in the sigmoid's transition band: the thresholds stop learning."""


@dataclass
class TrailEntry:
    """One point of the trail: the hard-masked network after an epoch of LTP.

    Attributes:
        epoch: epochs of LTP done (0: the starting point), counting a partial epoch as one.
        step: optimizer steps done.
        compression: prunable weights / kept prunable weights (``inf`` when none is kept).
        sparsity: fraction of prunable weights pruned.
        val_top1: validation top-1 accuracy of the hard-masked network (NaN without validation,
            or when the outputs are not class logits, e.g. a language model's).
        val_loss: its validation loss (NaN without validation).
        transition_fraction: share of weights with |w² − τ|/T < 4.
        thresholds: ``name -> τ_l``.
        temperatures: ``name -> T_l``.
        layer_sparsity: ``name -> fraction pruned``.
        soft_density: Σσ/N, the normalised soft-L0.
        partial: recorded mid-epoch, when the target compression stopped training.
        bn_recalibrated: batch-norm statistics were re-estimated for the hard-masked network.
        state: the hard-masked model's ``state_dict`` (None when not kept in memory).
        masks: the hard masks.
        path: checkpoint file, when the trail is saved to disk.
    """

    epoch: int
    step: int
    compression: float
    sparsity: float
    val_top1: float
    val_loss: float
    transition_fraction: float
    thresholds: dict[str, float]
    temperatures: dict[str, float]
    layer_sparsity: dict[str, float]
    soft_density: float
    partial: bool = False
    bn_recalibrated: bool = False
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    masks: Masks | None = field(default=None, repr=False)
    path: str | None = None

    def record(self) -> dict:
        """The JSON-able fields (no tensors)."""
        out = {k: getattr(self, k) for k in (
            "epoch", "step", "compression", "sparsity", "val_top1", "val_loss", "transition_fraction",
            "thresholds", "temperatures", "layer_sparsity", "soft_density", "partial", "bn_recalibrated", "path")}
        return out

    def restore(self, model: nn.Module) -> Masks:
        """Load this entry's weights into ``model`` (the unwrapped network) and return its masks.

        Raises:
            MethodError: the entry kept neither its state in memory nor a checkpoint file.
        """
        if self.state is not None:
            model.load_state_dict(self.state)
            masks = self.masks
        elif self.path is not None:
            from prunelab.core.checkpoints import load_checkpoint

            masks = load_checkpoint(self.path, model).masks
        else:
            raise MethodError(f"trail entry of epoch {self.epoch} kept no weights "
                              "(keep_states=False and no checkpoint_dir)")
        masks.validate(model)
        masks.apply(model)
        return masks.clone()


class Trail(list):
    """The list of :class:`TrailEntry`, one per epoch (the first is the starting point)."""

    def records(self) -> list[dict]:
        """JSON-able records of every entry."""
        return [e.record() for e in self]

    def pick(self, target_compression: float | None = None, min_accuracy: float | None = None,
             strict: bool = True) -> TrailEntry:
        """Choose an entry.

        Rules: with a target compression, the entry of smallest compression ≥ the target (ties:
        higher validation accuracy, then the earlier epoch); with an accuracy floor, the most
        compressed entry whose validation top-1 is ≥ the floor (ties: higher accuracy); with
        both, the entries meeting both, then the compression rule.

        Args:
            target_compression: wanted compression ratio (≥ 1), e.g. 40 for 40×.
            min_accuracy: validation top-1 floor, a fraction in [0, 1].
            strict: when no entry qualifies, raise (True) or fall back (False) to the most
                compressed entry (target) or the most accurate one (floor only).

        Returns:
            The chosen entry.

        Raises:
            MethodError: the trail is empty, or no entry qualifies and ``strict``.
        """
        if not self:
            raise MethodError("the LTP trail is empty: train for at least one epoch")
        if target_compression is None and min_accuracy is None:
            raise ConfigError("pick needs target_compression, min_accuracy or both")
        if target_compression is not None and not target_compression >= 1:
            raise ConfigError(f"target_compression must be >= 1, got {target_compression!r}")
        candidates = list(self)
        if min_accuracy is not None:
            candidates = [e for e in candidates if e.val_top1 >= min_accuracy]
        if target_compression is not None:
            # A hair of tolerance so 1/(1 - 0.975) = 39.99999 still counts as reaching 40x.
            candidates = [e for e in candidates if e.compression >= target_compression * (1 - 1e-9)]
            if candidates:
                return min(candidates, key=lambda e: (e.compression, -_acc(e), e.epoch))
        elif candidates:
            return max(candidates, key=lambda e: (e.compression, _acc(e)))
        wanted = " and ".join(
            ([f"compression >= {target_compression:g}"] if target_compression is not None else [])
            + ([f"val top-1 >= {min_accuracy:g}"] if min_accuracy is not None else []))
        best = f"max compression {max(e.compression for e in self):.3g}, max val top-1 {max(_acc(e) for e in self):.4f}"
        if strict:
            raise MethodError(f"no trail entry has {wanted} ({best}); train longer or raise penalty_weight")
        if target_compression is not None:
            return max(self, key=lambda e: (e.compression, _acc(e)))
        return max(self, key=lambda e: (_acc(e), e.compression))


def _acc(entry: TrailEntry) -> float:
    return -1.0 if math.isnan(entry.val_top1) else entry.val_top1


class LTPCallback(Callback):
    """Adds the LTP penalty to the loss and records the trail after every epoch.

    Args:
        wrapped: the :class:`SoftThresholdModel` being trained.
        penalty_weight: λ.
        penalty: ``"l0"`` (LTP), ``"l1"`` or ``"l2"``.
        val: validation data for the trail, anything ``evaluate`` takes (None: accuracy NaN).
        keep_states: keep each entry's hard-masked ``state_dict`` in memory.
        checkpoint_dir: also save each entry with :func:`prunelab.core.checkpoints.save_checkpoint`.
        stall_fraction: warn when the transition fraction falls below this.
        stop_at_compression: stop training as soon as the hard mask reaches this compression
            (checked every ``check_every`` steps; the point is added to the trail).
        check_every: steps between those checks.
        calib: data on which the batch-norm statistics of every hard-masked trail network are
            re-estimated (:func:`recalibrate_batchnorm`) before it is evaluated and kept: a
            tensor of inputs, a ``Split``, a ``Calibration`` or any data ``as_calibration``
            takes; None or a model without batch-norm: no recalibration.
        eval_batch_size: batch size of the validation pass.
        log: progress lines (default: the ``prunelab.ltp`` logger).
        forward_fn: ``forward_fn(model, batch) -> output`` for the validation pass (as ``train``).
        loss_fn: ``loss_fn(output, batch) -> scalar`` for the validation pass (as ``train``).
    """

    def __init__(self, wrapped: SoftThresholdModel, penalty_weight: float, penalty: str = "l0", val=None,
                 keep_states: bool = True, checkpoint_dir: str | Path | None = None,
                 stall_fraction: float = 1e-3, stop_at_compression: float | None = None,
                 check_every: int = 50, calib=None, eval_batch_size: int = 1000,
                 log: Callable[[str], None] | None = None, forward_fn=None, loss_fn=None):
        if penalty not in PENALTIES:
            raise ConfigError(f"unknown penalty {penalty!r}; choose one of {', '.join(PENALTIES)}")
        if not (penalty_weight >= 0 and math.isfinite(penalty_weight)):
            raise ConfigError(f"penalty_weight (lambda) must be a number >= 0, got {penalty_weight!r}")
        self.wrapped, self.penalty_weight, self.penalty = wrapped, float(penalty_weight), penalty
        self.val, self.keep_states, self.stall_fraction = val, keep_states, stall_fraction
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.eval_batch_size, self.log = eval_batch_size, log or logger.info
        if stop_at_compression is not None and not stop_at_compression >= 1:
            raise ConfigError(f"stop_at_compression must be >= 1 or None, got {stop_at_compression!r}")
        if not isinstance(check_every, int) or check_every < 1:
            raise ConfigError(f"check_every must be an integer >= 1, got {check_every!r}")
        self.stop_at_compression, self.check_every = stop_at_compression, check_every
        self.calib = getattr(calib, "x", calib)
        self.forward_fn, self.loss_fn = forward_fn, loss_fn
        self.trail = Trail()
        self.stalled_epochs: list[int] = []

    def on_train_begin(self, state) -> None:
        if not self.trail:
            self._record(epoch=0, step=state.step)

    def extra_loss(self, state) -> torch.Tensor | None:
        if self.penalty_weight == 0:
            self.wrapped._soft_l0 = None
            return None
        return self.penalty_weight * self.wrapped.penalty(self.penalty)

    def on_batch_end(self, state) -> None:
        if self.stop_at_compression is None or state.step % self.check_every:
            return
        with torch.no_grad():
            taus = self.wrapped.thresholds()
            kept = sum(int(hard_mask(w, taus[i]).sum()) for i, w in enumerate(self.wrapped.weights()))
        if kept * self.stop_at_compression <= self.wrapped.total() * (1 + 1e-9):
            self._record(epoch=state.epoch + 1, step=state.step, partial=True)
            state.stop = True

    def on_epoch_end(self, state) -> None:
        if self.trail and self.trail[-1].step == state.step:
            return  # already recorded when the target stopped training
        self._record(epoch=state.epoch + 1, step=state.step)

    @torch.no_grad()
    def _record(self, epoch: int, step: int, partial: bool = False) -> None:
        wrapped = self.wrapped
        model, masks = wrapped.hard_model()
        recalibrated = self.calib is not None and recalibrate_batchnorm(model, self.calib)
        kept, total = masks.kept(), masks.total()
        metrics = evaluate(model, self.val, self.eval_batch_size, forward_fn=self.forward_fn,
                           loss_fn=self.loss_fn) if _has_data(self.val) else {}
        top1, loss = metrics.get("top1"), metrics.get("loss")
        taus, temps = wrapped.thresholds().detach(), wrapped.temperatures()
        soft = sum(soft_mask(w, taus[i], float(temps[i])).sum() for i, w in enumerate(wrapped.weights()))
        entry = TrailEntry(
            epoch=epoch, step=step, partial=partial,
            compression=total / kept if kept else math.inf,
            sparsity=1 - kept / total,
            val_top1=math.nan if top1 is None else top1, val_loss=math.nan if loss is None else loss,
            transition_fraction=wrapped.transition_fraction(),
            thresholds={n: float(taus[i]) for i, n in enumerate(wrapped.names)},
            temperatures={n: float(temps[i]) for i, n in enumerate(wrapped.names)},
            layer_sparsity={n: d["sparsity"] for n, d in masks.per_layer().items()},
            soft_density=float(soft) / total,
            bn_recalibrated=recalibrated,
            state={k: v.detach().clone() for k, v in model.state_dict().items()} if self.keep_states else None,
            masks=masks,
        )
        if self.checkpoint_dir is not None:
            from prunelab.training import distributed
            from prunelab.core.checkpoints import save_checkpoint

            path = self.checkpoint_dir / f"ltp_epoch{epoch:03d}.safetensors"
            if distributed.is_main():   # under torchrun rank 0 alone writes
                path = save_checkpoint(path, model, masks, metrics=entry.record())
            elif entry.state is None:   # the file may not be visible here: keep the weights instead
                entry.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            entry.path = str(path)
        self.trail.append(entry)
        self.log(f"ltp epoch {epoch}: compression {entry.compression:.2f}x, val top-1 {entry.val_top1:.4f}, "
                 f"transition fraction {entry.transition_fraction:.4f}")
        if epoch > 0 and entry.transition_fraction < self.stall_fraction and entry.sparsity < 1:
            self.stalled_epochs.append(epoch)
            message = (f"LTP pruning has stalled at epoch {epoch}: only {entry.transition_fraction:.2e} of the "
                       f"weights lie in the transition band |w^2 - tau|/T < 4, so the thresholds barely learn; "
                       f"raise temperature (T0) or threshold_lr, or pick from the trail so far")
            warnings.warn(message, LTPStallWarning, stacklevel=2)
            self.log("warning: " + message)


def _has_data(val) -> bool:
    if val is None:
        return False
    try:
        return len(val) > 0
    except TypeError:   # an iterable without a length: evaluate finds out
        return True


def bn_calibration(data, size: int, seed: int, forward_fn=None):
    """The batch-norm calibration set of a trail: ``size`` training samples.

    Args:
        data: the training data (anything ``train`` takes).
        size: samples wanted (0: none).
        seed: seeds the subset of in-memory tensors.
        forward_fn: ``forward_fn(model, batch)`` as in training (default ``model(x)``).

    Returns:
        For in-memory tensors a seeded random subset of their inputs (a tensor); for other data
        their first batches holding ``size`` samples (whole batches, as a ``Calibration`` that
        runs the model as training does). None for ``size <= 0`` or data that can be read only
        once (an iterator: its batches belong to training).

    Example:
        >>> recalibrate_batchnorm(hard_model, bn_calibration(loader, 2000, seed=0))
    """
    if size <= 0:
        return None
    pair = tensor_pair(data)
    if pair is not None:
        x = pair[0]
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:size]
        return x[pick.sort().values]
    if isinstance(check_iterable(data), Iterator):
        return None
    batches, seen = [], 0
    for batch in data:
        batches.append(batch)
        seen += batch_size_of(batch)
        if seen >= size:
            break
    return Calibration(batches, forward_fn or default_forward) if batches else None


def learn_thresholds(model: nn.Module, data, config: TrainConfig, *, penalty_weight: float = 1.0,
                     temperature: float = 2.0, threshold_lr: float = 1.0, threshold_momentum: float = 0.0,
                     penalty: str = "l0", gradient: str = "approx", threshold_init_quantile: float = 0.0,
                     val=None, keep_states: bool = True, checkpoint_dir: str | Path | None = None,
                     stall_fraction: float = 1e-3, stop_at_compression: float | None = None,
                     check_every: int = 50, bn_calibration_size: int = 2000,
                     log: Callable[[str], None] | None = None, forward_fn=None, loss_fn=None,
                     **prunable_kwargs) -> tuple[Trail, SoftThresholdModel]:
    """Run LTP on ``model`` (trained in place) with the core training loop and return the trail.

    Args:
        model: a (pretrained) network; its weights are trained in place, unmasked (the trail
            holds the hard-masked copies).
        data: a ``Dataset`` (``val`` defaults to its validation split), a training ``Split``, or
            any data :func:`prunelab.training.loop.train` takes (a ``DataLoader`` of ``(x, y)``
            or of dicts of token ids, ...).
        config: the training recipe for the weights (optimizer, lr, schedule, epochs, ...).
        penalty_weight: λ, weight of the normalised penalty.
        temperature: T₀ (Eq. 15).
        threshold_lr: learning rate of the relative thresholds (separate parameter group, same
            optimizer and schedule as the weights).
        threshold_momentum: SGD momentum of the thresholds (see
            :meth:`SoftThresholdModel.parameter_groups`).
        penalty: ``"l0"`` (LTP), ``"l1"`` or ``"l2"``.
        gradient: ``"approx"`` (Eq. 14) or ``"exact"``.
        threshold_init_quantile: initial τ_l as a quantile of w_l².
        val: validation data of the trail (anything ``evaluate`` takes).
        keep_states: keep each entry's weights in memory.
        checkpoint_dir: also save each entry as a prunelab checkpoint there.
        stall_fraction: warn below this transition fraction.
        stop_at_compression: stop once the hard mask reaches this compression.
        check_every: steps between checks of ``stop_at_compression``.
        bn_calibration_size: training samples (a seeded random subset of in-memory tensors, the
            first batches of other data) on which each trail network's batch-norm statistics are
            re-estimated (0: never; no effect without BN).
        log: progress lines.
        forward_fn: ``forward_fn(model, batch) -> output`` (as ``train``; also used for the
            validation and batch-norm passes).
        loss_fn: ``loss_fn(output, batch) -> scalar``, the task loss (as ``train``).
        **prunable_kwargs: which layers are thresholded (see ``prunable_parameters``).

    Returns:
        ``(trail, wrapped)``: the :class:`Trail` (entry 0 = the starting point) and the
        :class:`SoftThresholdModel` at the end of training.
    """
    if not (threshold_lr > 0 and math.isfinite(threshold_lr)):
        raise ConfigError(f"threshold_lr must be a positive number, got {threshold_lr!r}")
    if hasattr(data, "train") and hasattr(data, "val"):
        val = data.val if val is None else val
        data = data.train
    calib = bn_calibration(data, bn_calibration_size, config.seed, forward_fn)
    wrapped = SoftThresholdModel(model, temperature, gradient, threshold_init_quantile, **prunable_kwargs)
    callback = LTPCallback(wrapped, penalty_weight, penalty, val=val, keep_states=keep_states,
                           checkpoint_dir=checkpoint_dir, stall_fraction=stall_fraction,
                           stop_at_compression=stop_at_compression, check_every=check_every,
                           calib=calib, eval_batch_size=config.eval_batch_size, log=log,
                           forward_fn=forward_fn, loss_fn=loss_fn)
    optimizer = make_optimizer(wrapped.parameter_groups(threshold_lr, threshold_momentum), config)
    # The training split only: the callback evaluates the hard-masked network itself.
    train(wrapped, data, config, callbacks=[callback], optimizer=optimizer, label="ltp",
          forward_fn=forward_fn, loss_fn=loss_fn)
    return callback.trail, wrapped
