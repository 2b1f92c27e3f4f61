"""The training loop: train, evaluate, callbacks; masks kept applied through every step.

One step is: zero_grad → forward → cross-entropy + Σ callback ``extra_loss`` → backward →
masks.mask_grads → gradient clipping → optimizer.step → model constraints (max-norm) →
masks.apply → masks.mask_optimizer_state → scheduler.step. Zeroing gradients before the step keeps
momentum, Adam moments and weight decay from touching pruned entries; re-applying the masks and
zeroing the state after it makes that hold for any optimizer.

Data are in-memory tensors (``prunelab.data.Split``) batched here: on a 2-core CPU a DataLoader's
workers cost more than they save for MNIST-sized data.

Under ``torch.distributed`` with several ranks (``prunelab.training.distributed``), every rank draws the same
seeded permutation, takes every ``world``-th sample of each global batch of ``batch_size``, and the
gradients are summed across ranks after backward; the loss is scaled so the sum equals the
gradient of the global batch mean, so a run on N ranks follows the single-process run (see
:func:`train`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.core.masks import Masks
from prunelab.errors import ConfigError
from prunelab.training import distributed as _dist
from prunelab.utils import progress as progress_bar

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "linear", "inverse")


@dataclass(frozen=True)
class TrainConfig:
    """A training budget and recipe.

    Attributes:
        epochs: passes over the training split (may be 0: nothing is trained).
        batch_size: samples per step.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: initial learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: L2 (SGD, Adam) or decoupled (AdamW) weight decay.
        betas: Adam/AdamW betas.
        schedule: ``"constant"``, ``"cosine"`` (to 0 over the run), ``"step"`` (×gamma every
            ``step_epochs``), ``"linear"`` (to 0 over the run) or ``"inverse"`` (Keras' ``decay``:
            lr / (1 + lr/epochs · t), t in steps, as Pitas et al. train).
        step_epochs: period of the step schedule, in epochs.
        gamma: factor of the step schedule.
        clip_grad_norm: clip the global gradient L2 norm to this value (None: no clipping).
        seed: seeds the batch order (and nothing else: initialisation is the model factory's).
        eval_batch_size: batch size for evaluation.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    step_epochs: int = 30
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("weight_decay and momentum must be >= 0")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError("nesterov needs optimizer 'sgd' with momentum > 0")
        object.__setattr__(self, "betas", tuple(self.betas))

    def to_dict(self) -> dict:
        """JSON-able dict of the fields."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)


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
    """What callbacks see. ``history`` holds one dict per finished epoch."""

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


def make_optimizer(params: Iterable, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config`` over ``params`` (parameters or param groups)."""
    params = list(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def lr_factor_fn(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a function of the step index, a factor of the initial lr."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        return lambda step: 1.0
    if config.schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if config.schedule == "linear":
        return lambda step: max(0.0, 1.0 - step / total)
    if config.schedule == "step":
        period = max(1, config.step_epochs * steps_per_epoch)
        return lambda step: config.gamma ** (step // period)
    # Keras' time-based decay with decay = lr / epochs (Pitas et al.): lr_t = lr / (1 + decay * t).
    decay = config.lr / max(1, config.epochs)
    return lambda step: 1.0 / (1.0 + decay * step)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """A ``LambdaLR`` stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(config, steps_per_epoch))


def _split_tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return split.x, split.y
    except AttributeError:
        x, y = split
        return x, y


@torch.no_grad()
def evaluate(model: nn.Module, split, batch_size: int = 1000) -> dict:
    """Loss, top-1 and top-5 accuracy of ``model`` on ``split``.

    Args:
        model: the network (put in eval mode for the call, then restored).
        split: a ``Split`` (or an ``(x, y)`` pair of tensors).
        batch_size: evaluation batch size.

    Returns:
        ``{"loss", "top1", "top5", "n"}``; accuracies are fractions in [0, 1]. ``top5`` equals
        ``top1`` when there are 5 classes or fewer.

    Under ``torch.distributed`` every rank evaluates the whole split on its own (no collective),
    so ranks may call it independently; :func:`train` shards its validation instead.
    """
    x, y = _split_tensors(split)
    n = len(y)
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0}
    loss_sum, correct1, correct5 = _evaluate_sums(model, x, y, batch_size)
    return {"loss": loss_sum / n, "top1": correct1 / n, "top5": correct5 / n, "n": n}


def _evaluate_distributed(model: nn.Module, split, batch_size: int, rank: int, world: int) -> dict:
    """:func:`evaluate` with the split cut in ``world`` contiguous shards and the sums all-reduced:
    every rank gets the same numbers (which a per-rank evaluation need not give bit for bit)."""
    x, y = _split_tensors(split)
    n = len(y)
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0}
    xs, ys = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
    sums = _evaluate_sums(model, xs, ys, batch_size) if len(ys) else (0.0, 0, 0)
    loss_sum, correct1, correct5 = _dist.all_reduce_sum(sums)
    return {"loss": loss_sum / n, "top1": correct1 / n, "top5": correct5 / n, "n": n}


@torch.no_grad()
def _evaluate_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, int, int]:
    """(summed loss, top-1 hits, top-5 hits) over non-empty ``x, y``; top-5 hits are top-1 hits
    when there are 5 classes or fewer."""
    n = len(y)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct1, correct5 = 0.0, 0, 0
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        out = model(xb)
        loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hits = top == yb[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
    model.train(was_training)
    return loss_sum, correct1, correct5 if out.shape[1] > 5 else correct1


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
) -> TrainState:
    """Train ``model`` in place.

    Args:
        model: the network.
        data: a ``prunelab.data.Dataset`` (its ``train`` split is used and ``val`` defaults to its
            ``val`` split) or a ``Split``.
        config: the recipe (:class:`TrainConfig`).
        masks: pruning masks kept applied throughout (sparsity never changes).
        callbacks: :class:`Callback` objects, called in order.
        optimizer: use this optimizer instead of the one ``config`` names.
        scheduler: use this LR scheduler (stepped per optimizer step) instead of ``config``'s.
        val: validation split evaluated after every epoch (recorded in the history).
        progress: show a progress bar of the steps, with the epoch and the running batch loss
            (default: only when stderr is a terminal and ``PRUNELAB_PROGRESS`` is not ``0``).
        select_best: restore, at the end, the parameters of the epoch with the best validation
            top-1 (ties: the later epoch). Needs ``val``.
        label: text in front of the progress bar.

    Returns:
        The final :class:`TrainState` (``history`` has per-epoch ``train_loss``, ``train_top1``,
        ``val_loss``, ``val_top1``, ``lr``, ``seconds``).

    Distributed (``torch.distributed`` initialised with several ranks, outside
    ``prunelab.training.distributed.single_process()``): call it on every rank with the same arguments.
    ``config.batch_size`` stays the *global* batch: rank r trains on samples r, r + world, ... of
    each batch of the shared seeded permutation, its loss is its summed cross-entropy divided by
    the global batch size (plus callback extra losses divided by the number of ranks), and the
    gradients of the optimizer's parameters are summed across ranks after backward, so every rank
    makes the single-process update (up to float summation order). Masks, clipping, constraints
    and the optimizer then act on identical values. History and validation metrics are all-reduced
    (identical on every rank); batch-norm statistics come from each rank's shard and the buffers
    are taken from rank 0 after every epoch. Parameters and masks are checked bit-identical across
    ranks at the start and the end (``prunelab.training.distributed.assert_params_equal_across_ranks``).
    A callback setting ``state.stop`` on one rank stops all of them. Only rank 0 shows progress.

    Example:
        >>> state = prunelab.train(model, data, TrainConfig(epochs=5, optimizer="adam", lr=1e-3))
        >>> prunelab.evaluate(model, data.test)["top1"]
    """
    if hasattr(data, "train") and hasattr(data, "val"):
        if val is None:
            val = data.val if len(data.val) else None
        data = data.train
    x, y = _split_tensors(data)
    n = len(y)
    if n == 0:
        raise ConfigError("the training split is empty")
    if select_best and val is None:
        raise ConfigError("select_best needs a validation split")
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(n / config.batch_size)
    if optimizer is None:
        optimizer = make_optimizer(model.parameters(), config)
    if scheduler is None:
        scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    if masks is not None:
        masks.validate(model)
        masks.apply(model)
        masks.mask_optimizer_state(optimizer, model)
    callbacks = list(callbacks)
    world = _dist.world_size()
    if world > 1:
        rank = _dist.rank()
        progress = progress if rank == 0 else False
        if _dist.checks_enabled():
            if masks is not None:
                _dist.assert_masks_equal_across_ranks(masks)
            _dist.assert_params_equal_across_ranks(model)
        # The optimizer's parameters are what gets updated, so what must see the same gradient.
        synced = list({id(p): p for g in optimizer.param_groups for p in g["params"] if p.requires_grad}.values())
        wants_batch_end = any(type(cb).on_batch_end is not Callback.on_batch_end for cb in callbacks)
    state = TrainState(model, optimizer, scheduler, config, masks, steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    constrained = _has_constraints(model)
    params = [p for p in model.parameters() if p.requires_grad]
    wants_extra = [cb for cb in callbacks if type(cb).extra_loss is not Callback.extra_loss]
    bar = progress_bar(total=config.epochs * steps_per_epoch, desc=label, enabled=progress, unit="step")
    show_progress = not bar.disable
    best_top1, best_params = -1.0, None

    for cb in callbacks:
        cb.on_train_begin(state)
    model.train()
    for epoch in range(config.epochs):
        if state.stop:
            break
        state.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_begin(state)
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            if world > 1:
                batch_total = len(idx)
                idx = idx[rank::world]
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            if world == 1:
                loss = F.cross_entropy(out, yb)
            else:
                # This rank's share of the global batch mean: the shares sum to the mean whatever
                # the shard sizes (the last batch may not split evenly).
                shard_loss_sum = F.cross_entropy(out, yb, reduction="sum")
                loss = shard_loss_sum / batch_total
            total_loss = loss
            for cb in wants_extra:
                extra = cb.extra_loss(state)
                if extra is not None:
                    # Every rank adds the whole term and the gradients are summed over ranks.
                    total_loss = total_loss + (extra if world == 1 else extra / world)
            total_loss.backward()
            if world > 1:
                _dist.sum_gradients_(synced)
            if masks is not None:
                masks.mask_grads(model)
            if config.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
            optimizer.step()
            if constrained:
                _apply_constraints(model)
            if masks is not None:
                masks.apply(model)
                masks.mask_optimizer_state(optimizer, model)
            scheduler.step()
            state.step += 1
            with torch.no_grad():
                loss_sum += loss.detach().double() * len(yb) if world == 1 else shard_loss_sum.detach().double()
                correct += (out.argmax(1) == yb).sum()
            for cb in callbacks:
                cb.on_batch_end(state)
            if world > 1 and wants_batch_end:
                state.stop = _dist.any_rank(state.stop)
            if show_progress:
                shown = loss.item() if world == 1 else shard_loss_sum.item() / max(1, len(yb))
                bar.set_postfix_str(f"epoch {epoch + 1}/{config.epochs} loss {shown:.3f}", refresh=False)
                bar.update()
            if state.stop:
                break
        if world == 1:
            epoch_loss, epoch_correct = float(loss_sum), int(correct)
        else:
            _dist.broadcast_buffers(model)
            epoch_loss, epoch_correct = _dist.all_reduce_sum([float(loss_sum), int(correct)])
        record = {
            "epoch": epoch + 1,
            "train_loss": epoch_loss / n,
            "train_top1": int(epoch_correct) / n,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if val is not None:
            if world == 1:
                metrics = evaluate(model, val, config.eval_batch_size)
            else:
                metrics = _evaluate_distributed(model, val, config.eval_batch_size, rank, world)
            model.train()
            record["val_loss"], record["val_top1"] = metrics["loss"], metrics["top1"]
            if select_best and metrics["top1"] >= best_top1:
                best_top1 = metrics["top1"]
                best_params = {k: v.detach().clone() for k, v in model.state_dict().items()}
                state.best = dict(record)
        record["seconds"] = time.perf_counter() - t0
        state.history.append(record)
        state.loss = record["train_loss"]
        for cb in callbacks:
            cb.on_epoch_end(state)
        if world > 1:
            state.stop = _dist.any_rank(state.stop)
    bar.close()
    if select_best and best_params is not None:
        model.load_state_dict(best_params)
    for cb in callbacks:
        cb.on_train_end(state)
    if world > 1 and _dist.checks_enabled():
        if masks is not None:
            _dist.assert_masks_equal_across_ranks(masks)
        _dist.assert_params_equal_across_ranks(model)
    return state
