"""The training loop: train, callbacks; masks kept applied through every step.

One step is: zero_grad → forward → task loss (``loss_fn``) → divergence check → + Σ callback
``extra_loss`` → backward → masks.mask_grads → gradient clipping → optimizer.step → model
constraints (max-norm) → masks.apply → masks.mask_optimizer_state → scheduler.step. Zeroing
gradients before the step keeps momentum, Adam moments and weight decay from touching pruned
entries; re-applying the masks and zeroing the state after it makes that hold for any optimizer.

Data (see ``prunelab.training.batches``): in-memory tensors (a ``Split``, an ``(x, y)`` pair, a
``TensorDataset``) are batched here in a seeded order (``prunelab.training.sources``): on a 2-core
CPU a DataLoader's workers cost more than they save for MNIST-sized data. A ``DataLoader`` or any
iterable of batches is used as it comes, one pass per epoch.

Under ``torch.distributed`` with several ranks (``prunelab.training.distributed``), in-memory data
are sharded here: every rank draws the same seeded permutation, takes every ``world``-th sample of
each global batch of ``batch_size``, and the gradients are summed across ranks by
DistributedDataParallel during backward (or FSDP with ``shard=True``,
``prunelab.training.distributed.parallel``); the loss is scaled so the sum equals the gradient of
the global batch mean, so a run on N ranks follows the single-process run (see :func:`train`).
Other data are taken as sharded by the user.

``TrainConfig.amp`` runs the forward and the task loss under autocast (``training.guards.Precision``);
a batch whose task loss is not finite or far above the first batch's stops the run with a
:class:`~prunelab.errors.DivergenceError` before its backward (``training.guards.DivergenceGuard``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.core.masks import Masks
from prunelab.errors import ConfigError
from prunelab.training import distributed as _dist
from prunelab.training.batches import batch_size_of, default_forward, default_loss, logits_of, move_to
from prunelab.training.config import (
    AMP_MODES, OPTIMIZERS, SCHEDULES, SCHEDULES_NEEDING_STEPS, TrainConfig, lr_factor_fn, make_optimizer,
    make_scheduler,
)
from prunelab.training.evaluate import evaluate, evaluate_distributed, label_pairs, model_device, train_hits
from prunelab.training.guards import DIVERGENCE_FACTOR, DivergenceGuard, Precision, check_input_shape
from prunelab.training.sources import batch_source
from prunelab.utils import progress as progress_bar

__all__ = [
    "AMP_MODES", "DIVERGENCE_FACTOR", "OPTIMIZERS", "SCHEDULES", "Callback", "TrainConfig", "TrainState",
    "evaluate", "lr_factor_fn", "make_optimizer", "make_scheduler", "train",
]


class Callback:
    """Hooks into :func:`train`. Every hook is optional; ``state`` is the :class:`TrainState`."""

    def on_train_begin(self, state: "TrainState") -> None: ...

    def on_epoch_begin(self, state: "TrainState") -> None: ...

    def extra_loss(self, state: "TrainState") -> torch.Tensor | None:
        """A term added to the task loss of the current batch (e.g. a regulariser)."""
        return None

    def on_batch_end(self, state: "TrainState") -> None: ...

    def on_epoch_end(self, state: "TrainState") -> None: ...

    def on_train_end(self, state: "TrainState") -> None: ...


@dataclass
class TrainState:
    """What callbacks see. ``history`` holds one dict per finished epoch; ``batch`` and ``output``
    are the current batch (on the model's device) and the model's output on it, from the forward
    to ``on_batch_end`` (None before the first step and after training); ``steps_per_epoch`` is 0
    until known (data without a length: after the first epoch)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    config: TrainConfig
    masks: Masks | None = None
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    stop: bool = False
    loss: float = float("nan")
    best: dict | None = None
    batch: Any = None
    output: Any = None


def _apply_constraints(model: nn.Module) -> None:
    for module in model.modules():
        fn = getattr(module, "apply_constraint", None)
        if fn is not None and module is not model:
            fn()
    fn = getattr(model, "apply_constraint", None)
    if fn is not None:
        fn()


def _has_constraints(model: nn.Module) -> bool:
    return any(hasattr(m, "apply_constraint") for m in model.modules())


def _zero_loss(output, params: list[torch.Tensor]) -> torch.Tensor:
    """0 with a graph to every parameter the output depends on (an empty shard's loss)."""
    try:
        return logits_of(output).sum() * 0.0
    except ConfigError:
        return sum(p.sum() for p in params) * 0.0


def train(
    model: nn.Module,
    data,
    config: TrainConfig = TrainConfig(),
    *,
    masks: Masks | None = None,
    callbacks: Iterable[Callback] = (),
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    val=None,
    progress: bool | None = None,
    select_best: bool = False,
    label: str = "train",
    forward_fn=None,
    loss_fn=None,
    device: torch.device | str | None = None,
    shard: bool | None = None,
) -> TrainState:
    """Train ``model`` in place.

    Args:
        model: the network.
        data: a ``prunelab.data.Dataset`` (its ``train`` split is used and ``val`` defaults to its
            ``val`` split), a ``Split``, an ``(x, y)`` pair, a two-tensor ``TensorDataset`` (these
            in-memory tensors are batched here: ``config.batch_size``, order seeded by
            ``config.seed``), or a ``DataLoader`` or any re-iterable of batches (used as they come,
            one pass per epoch; ``config.batch_size`` and ``seed`` do not apply).
        config: the recipe (:class:`TrainConfig`).
        masks: pruning masks kept applied throughout (sparsity never changes).
        callbacks: :class:`Callback` objects, called in order.
        optimizer: use this optimizer instead of the one ``config`` names.
        scheduler: use this LR scheduler (stepped per optimizer step) instead of ``config``'s.
            ``config``'s cosine, linear and step schedules need the steps per epoch: with data
            that have no ``len()``, pass a scheduler.
        val: validation data evaluated after every epoch (recorded in the history); any data
            :func:`evaluate` takes.
        progress: show a progress bar of the steps, with the epoch and the running batch loss
            (default: only when stderr is a terminal and ``PRUNELAB_PROGRESS`` is not ``0``).
        select_best: restore, at the end, the parameters of the epoch with the best validation
            top-1 (the lowest validation loss when the outputs have no accuracy; ties: the later
            epoch). Needs ``val``.
        label: text in front of the progress bar.
        forward_fn: ``forward_fn(model, batch) -> output`` (default
            ``prunelab.training.batches.default_forward``: ``model(x)`` for ``(x, y)``,
            ``model(**batch)`` for a dict).
        loss_fn: ``loss_fn(output, batch) -> scalar``, the batch's mean task loss (default
            ``prunelab.training.batches.default_loss``: the output's own loss, else the
            cross-entropy against the labels).
        device: move the model there first (default: train where the model is); batches follow
            the model.
        shard: with several ranks, train through FSDP (``fully_shard``: parameters, gradients and
            optimizer state sharded) instead of DistributedDataParallel; default
            ``prunelab.training.distributed.sharding_default()`` (``--shard``,
            ``PRUNELAB_DIST_SHARD``). See ``prunelab.training.distributed.fsdp`` for its limits.

    Returns:
        The final :class:`TrainState` (``history`` has per-epoch ``train_loss``, ``train_top1``,
        ``val_loss``, ``val_top1``, ``lr``, ``seconds``; the accuracies are None when the outputs
        are not class logits with integer labels, see ``prunelab.training.evaluate``).

    Raises:
        ConfigError: empty or unusable data, a schedule that needs an unknown number of steps,
            ``select_best`` without ``val``, or an ``amp`` the device cannot run.
        DivergenceError: a batch's task loss is not finite or exceeds ``DIVERGENCE_FACTOR``
            (1000) × max(the first batch's loss, 1) (see ``prunelab.training.guards``); raised
            before that step's backward, so no callback sees the step.

    Distributed (``torch.distributed`` initialised with several ranks, outside
    ``prunelab.training.distributed.single_process()``): call it on every rank with the same arguments.
    With in-memory tensors ``config.batch_size`` stays the *global* batch: rank r trains on samples
    r, r + world, ... of each batch of the shared seeded permutation, its loss is its summed task
    loss divided by the global batch size (plus callback extra losses divided by the number of
    ranks), and the ranks' gradients are summed (DistributedDataParallel's bucketed all-reduce
    during backward, on the loss times the number of ranks since DDP averages; parameters of the
    optimizer outside the model are reduced after backward), so every rank makes the
    single-process update (up to float summation order). ``forward_fn`` then receives the DDP
    wrapper (attributes it lacks are read from the model). Any other data are taken as already
    sharded by the user (e.g. a ``DataLoader`` with a ``DistributedSampler``): each rank uses its
    own batches, its mean loss is divided by the number of ranks so that the summed gradients are
    the mean of the ranks' gradients, and the ranks must
    yield equally many batches (else a ConfigError on every rank). Masks, clipping, constraints and
    the optimizer then act on identical values. History and validation metrics are all-reduced
    (identical on every rank); batch-norm statistics come from each rank's shard and the buffers
    are taken from rank 0 after every epoch. Parameters and masks are checked bit-identical across
    ranks at the start and the end (``prunelab.training.distributed.assert_params_equal_across_ranks``).
    A callback setting ``state.stop`` on one rank stops all of them; divergence is judged on the
    global batch loss, so it stops all of them too. Only rank 0 shows progress.

    Example:
        >>> state = prunelab.train(model, data, TrainConfig(epochs=5, optimizer="adam", lr=1e-3))
        >>> prunelab.evaluate(model, data.test)["top1"]
        >>> prunelab.train(gpt2, loader, config, loss_fn=lm_loss, device="cuda")
    """
    if hasattr(data, "train") and hasattr(data, "val"):
        if val is None:
            val = data.val if len(data.val) else None
        data = data.train
    world = _dist.world_size()
    rank = _dist.rank() if world > 1 else 0
    source = batch_source(data, config.batch_size, config.seed, config.epochs, rank, world)
    if select_best and val is None:
        raise ConfigError("select_best needs a validation split")
    if device is not None:
        model.to(device)
    device = model_device(model)
    precision = Precision(config.amp, device)
    steps_per_epoch = source.steps_per_epoch
    if scheduler is None and steps_per_epoch is None and config.schedule in SCHEDULES_NEEDING_STEPS:
        raise ConfigError(f"schedule {config.schedule!r} needs the number of steps per epoch, but the training "
                          "data have no len(); pass data with a length (a list, a DataLoader over a map-style "
                          "dataset), schedule 'constant' or 'inverse', or your own scheduler=")
    if masks is not None:
        masks.validate(model)
        masks.apply(model)
    callbacks = list(callbacks)
    engine = None
    if world > 1:
        progress = progress if rank == 0 else False
        if _dist.checks_enabled():
            if masks is not None:
                _dist.assert_masks_equal_across_ranks(masks)
            _dist.assert_params_equal_across_ranks(model)
        wants_batch_end = any(type(cb).on_batch_end is not Callback.on_batch_end for cb in callbacks)
        # DDP, or FSDP on a sharded copy (net) of the model (training.distributed.parallel).
        engine = _dist.DataParallel(model, _dist.sharding_default() if shard is None else shard)
    net = model if engine is None else engine.net
    bar, finished = None, False
    try:
        if optimizer is None:
            optimizer = make_optimizer(net.parameters(), config)
        elif engine is not None:
            engine.adopt(optimizer)
        if scheduler is None:
            scheduler = make_scheduler(optimizer, config, steps_per_epoch or 1)
        if masks is not None:
            masks.mask_optimizer_state(optimizer, net)
        if engine is not None:
            engine.attach(optimizer)
        state = TrainState(net, optimizer, scheduler, config, masks, steps_per_epoch=steps_per_epoch or 0)
        constrained = _has_constraints(net)
        params = [p for p in net.parameters() if p.requires_grad]
        wants_extra = [cb for cb in callbacks if type(cb).extra_loss is not Callback.extra_loss]
        forward, task_loss = forward_fn or default_forward, loss_fn or default_loss
        guard = DivergenceGuard()
        # An asynchronous copy *to* the CPU could be read before it lands; to an accelerator it is safe.
        to_accelerator = device.type != "cpu"
        # float64 sums of the epoch's loss where the model is (MPS has no float64).
        sum_dtype = torch.float32 if device.type == "mps" else torch.float64
        total_steps = config.epochs * steps_per_epoch if steps_per_epoch is not None else None
        bar = progress_bar(total=total_steps, desc=label, enabled=progress, unit="step")
        show_progress = not bar.disable
        best_score, best_params = -1.0, None

        for cb in callbacks:
            cb.on_train_begin(state)
        net.train()
        for epoch in range(config.epochs):
            if state.stop:
                break
            state.epoch = epoch
            for cb in callbacks:
                cb.on_epoch_begin(state)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), dtype=sum_dtype, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            counted, samples, steps = 0, 0, 0
            for batch, batch_total in source.epoch():
                if state.step == 0:
                    check_input_shape(model, batch)
                batch = move_to(batch, device, non_blocking=to_accelerator)
                size = batch_size_of(batch)
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    out = forward(model, batch) if engine is None else engine.forward(forward, batch)
                    if world == 1 or not source.in_memory:
                        mean_loss = task_loss(out, batch)
                        # Other data are sharded by the user: the ranks' mean gradients are averaged.
                        loss = mean_loss if world == 1 else mean_loss / world
                        batch_loss_sum = mean_loss.detach().double() * size
                    else:
                        # This rank's share of the global batch mean: the shares sum to the mean
                        # whatever the shard sizes (the last batch may not split evenly).
                        pairs = label_pairs(out, batch) if loss_fn is None else None
                        if pairs is not None and pairs[2] is None and isinstance(out, torch.Tensor):
                            shard_loss_sum = F.cross_entropy(out, pairs[1], reduction="sum")
                        elif size:
                            shard_loss_sum = task_loss(out, batch) * size
                        else:
                            shard_loss_sum = _zero_loss(out, params)
                        loss = shard_loss_sum / batch_total
                        batch_loss_sum = shard_loss_sum.detach().double()
                state.batch, state.output = batch, out
                if world == 1:
                    batch_loss = loss.item()
                elif source.in_memory:
                    batch_loss = _dist.all_reduce_sum([float(batch_loss_sum)])[0] / batch_total
                else:
                    global_sum, global_size = _dist.all_reduce_sum([float(batch_loss_sum), size])
                    batch_loss = global_sum / max(global_size, 1)
                guard.check(batch_loss, epoch=epoch + 1, epochs=config.epochs, step=state.step + 1,
                            lr=optimizer.param_groups[0]["lr"])
                total_loss = loss
                for cb in wants_extra:
                    extra = cb.extra_loss(state)
                    if extra is not None:
                        # Every rank adds the whole term; the ranks' terms sum to it.
                        total_loss = total_loss + (extra if world == 1 else extra / world)
                if engine is None:
                    precision.backward(total_loss)
                else:
                    # The shares sum to the single-process loss and DDP/FSDP average: scale by world.
                    precision.backward(total_loss * engine.loss_scale)
                    engine.after_backward()
                if masks is not None:
                    masks.mask_grads(net)
                if config.clip_grad_norm is not None:
                    precision.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
                precision.step(optimizer)
                if constrained:
                    _apply_constraints(net)
                if masks is not None:
                    masks.apply(net)
                    masks.mask_optimizer_state(optimizer, net)
                scheduler.step()
                state.step += 1
                steps += 1
                samples += size
                with torch.no_grad():
                    loss_sum += batch_loss_sum.to(sum_dtype)
                    hits = train_hits(out, batch) if counted is not None else None
                    if hits is None:
                        counted = None
                    else:
                        correct += hits[0]
                        counted = counted + hits[1]
                for cb in callbacks:
                    cb.on_batch_end(state)
                if world > 1 and wants_batch_end:
                    state.stop = _dist.any_rank(state.stop)
                if show_progress:
                    bar.set_postfix_str(f"epoch {epoch + 1}/{config.epochs} loss {batch_loss:.3f}", refresh=False)
                    bar.update()
                if state.stop:
                    break
            record = _epoch_record(source, epoch, loss_sum, correct, counted, samples, steps, world, model)
            record["lr"] = optimizer.param_groups[0]["lr"]
            if not state.steps_per_epoch:
                state.steps_per_epoch = steps
                if bar.total is None and not state.stop:
                    bar.total = config.epochs * steps
            if val is not None:
                if world == 1:
                    metrics = evaluate(model, val, config.eval_batch_size, forward_fn=forward_fn, loss_fn=loss_fn)
                else:
                    with engine.evaluation() as evaluated:
                        metrics = evaluate_distributed(evaluated, val, config.eval_batch_size, rank, world,
                                                       forward_fn=forward_fn, loss_fn=loss_fn)
                model.train()
                net.train()
                record["val_loss"], record["val_top1"] = metrics["loss"], metrics["top1"]
                score = metrics["top1"] if metrics["top1"] is not None else -metrics["loss"]
                if select_best and (score >= best_score or best_params is None and not math.isnan(score)):
                    best_score = score
                    best_params = (engine.full_state_dict() if engine is not None
                                   else {k: v.detach().clone() for k, v in model.state_dict().items()})
                    state.best = dict(record)
            record["seconds"] = time.perf_counter() - t0
            state.history.append(record)
            state.loss = record["train_loss"]
            for cb in callbacks:
                cb.on_epoch_end(state)
            if world > 1:
                state.stop = _dist.any_rank(state.stop)
        finished = True
    finally:
        if bar is not None:
            bar.close()
        if engine is not None:
            # FSDP gathers the model whole again: collective, so not on a failing rank's way out.
            engine.close(gather=finished)
    state.batch = state.output = None
    state.model = model
    if select_best and best_params is not None:
        model.load_state_dict(best_params)
    for cb in callbacks:
        cb.on_train_end(state)
    if world > 1 and _dist.checks_enabled():
        if masks is not None:
            _dist.assert_masks_equal_across_ranks(masks)
        _dist.assert_params_equal_across_ranks(model)
    return state


def _epoch_record(source, epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, counted, samples: int,
                  steps: int, world: int, model: nn.Module) -> dict:
    """The epoch's ``train_loss`` and ``train_top1``, summed over ranks.

    In-memory data divide by the split's size (as they always have, even when a callback stopped
    the epoch early); other data by the samples (and labels) seen."""
    undefined = counted is None
    if world == 1:
        if steps == 0 and not source.in_memory:
            raise ConfigError(f"the training data gave no batch in epoch {epoch + 1}; an iterator is used up after "
                              "one pass: pass a list of batches or a DataLoader")
        epoch_loss, epoch_correct, epoch_counted = float(loss_sum), int(correct), int(counted or 0)
    else:
        _dist.broadcast_buffers(model)
        epoch_loss, epoch_correct, epoch_counted, samples, undefined = _dist.all_reduce_sum(
            [float(loss_sum), int(correct), int(counted or 0), samples, undefined])
        if samples == 0 and not source.in_memory:
            raise ConfigError(f"the training data gave no batch in epoch {epoch + 1} on any rank")
    if source.in_memory:
        top1 = None if undefined else int(epoch_correct) / source.num_samples
        return {"epoch": epoch + 1, "train_loss": epoch_loss / source.num_samples, "train_top1": top1}
    top1 = None if undefined or not epoch_counted else int(epoch_correct) / epoch_counted
    return {"epoch": epoch + 1, "train_loss": epoch_loss / samples, "train_top1": top1}
