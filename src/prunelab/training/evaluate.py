"""Evaluation: loss, top-1 and top-5 accuracy of a model on any data.

Accuracy needs class logits and integer labels: ``(N, C)`` logits against ``(N,)`` labels count
per sample; ``(N, T, V)`` logits against ``(N, T)`` labels (token-level, e.g. a language model)
count per token, position by position (no shift), leaving out labels of -100 (the ignore index of
the cross-entropy). Other outputs get no accuracy (None).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import ConfigError
from prunelab.training import distributed as _dist
from prunelab.training.guards import check_input_shape
from prunelab.training.batches import (
    batch_size_of, check_iterable, default_forward, default_loss, logits_of, move_to, targets_of, tensor_pair,
)

#: The label the cross-entropy ignores (HuggingFace pads labels with it).
IGNORE_INDEX = -100


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a model without any."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def label_pairs(output, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """``(logits, labels, valid)`` when accuracy is defined for this output and batch, else None.

    ``logits`` is ``(N, C)`` or ``(N, T, V)``, ``labels`` ``(N,)`` or ``(N, T)`` integers, ``valid``
    None for per-sample labels and the mask of labels that are not -100 for token-level ones.
    """
    labels = targets_of(batch)
    if labels is None or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return None
    try:
        logits = logits_of(output)
    except ConfigError:
        return None
    if logits.dim() == 2 and labels.dim() == 1 and logits.shape[0] == labels.shape[0]:
        return logits, labels, None
    if logits.dim() == 3 and labels.dim() == 2 and logits.shape[:2] == labels.shape:
        return logits, labels, labels != IGNORE_INDEX
    return None


def train_hits(output, batch) -> tuple[torch.Tensor, torch.Tensor | int] | None:
    """(top-1 hits, labels counted) of one training batch, as tensors on the output's device (no
    device sync), or None when accuracy is not defined (see the module docstring)."""
    pairs = label_pairs(output, batch)
    if pairs is None:
        return None
    logits, labels, valid = pairs
    if valid is None:
        return (logits.argmax(1) == labels).sum(), len(labels)
    return ((logits.argmax(-1) == labels) & valid).sum(), valid.sum()


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 1000, *, forward_fn=None, loss_fn=None,
             device: torch.device | str | None = None) -> dict:
    """Loss, top-1 and top-5 accuracy of ``model`` on ``data``.

    Args:
        model: the network (put in eval mode for the call, then restored).
        data: a ``Split``, an ``(x, y)`` pair of tensors, a ``TensorDataset``, a ``DataLoader`` or
            any iterable of batches (see ``prunelab.training.batches``); not a whole ``Dataset``
            (pass its ``val`` or ``test`` split).
        batch_size: evaluation batch size for in-memory tensors (other data come batched).
        forward_fn: ``forward_fn(model, batch) -> output`` (default ``batches.default_forward``).
        loss_fn: ``loss_fn(output, batch) -> scalar`` mean loss of a batch (default
            ``batches.default_loss``).
        device: move the model there first (default: evaluate where the model is); batches follow
            the model.

    Returns:
        ``{"loss", "top1", "top5", "n"}``: ``n`` samples; ``loss`` the mean per sample (batch
        losses weighted by their sample counts; with the default loss of class logits, the exact
        summed cross-entropy over ``n``); accuracies are fractions in [0, 1] (``top5`` equals
        ``top1`` with 5 classes or fewer), per token for token-level labels, and None when the
        outputs are not class logits with integer labels (see the module docstring).

    Raises:
        ConfigError: ``data`` is not data, or is a whole ``Dataset``.

    Under ``torch.distributed`` every rank evaluates the whole of ``data`` on its own (no
    collective), so ranks may call it independently; :func:`~prunelab.training.loop.train` shards
    its validation instead.

    Example:
        >>> evaluate(model, data.test)["top1"]
        >>> evaluate(gpt2, loader, loss_fn=lm_loss)["loss"]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if device is not None:
        model.to(device)
    pair = _pair_of(data)
    if pair is not None:
        x, y = pair
        n = len(y)
        if n == 0:
            return _empty()
        sums = _sums(model, _tensor_batches(x, y, batch_size), forward_fn, loss_fn)
    else:
        sums = _sums(model, check_iterable(data), forward_fn, loss_fn)
        n = sums[3]
        if n == 0:
            return _empty()
    return _metrics(*sums[:3], n, counted=sums[4])


def evaluate_distributed(model: nn.Module, data, batch_size: int, rank: int, world: int, *, forward_fn=None,
                         loss_fn=None) -> dict:
    """:func:`evaluate` across ranks, identical on every rank: in-memory tensors are cut in
    ``world`` contiguous shards, other data are taken as already sharded (each rank evaluates its
    own batches); the sums are all-reduced (which a per-rank evaluation need not give bit for bit)."""
    pair = _pair_of(data)
    if pair is not None:
        x, y = pair
        if len(y) == 0:
            return _empty()
        xs, ys = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
        sums = (_sums(model, _tensor_batches(xs, ys, batch_size), forward_fn, loss_fn) if len(ys)
                else (0.0, 0, 0, 0, 0))
    else:
        sums = _sums(model, check_iterable(data), forward_fn, loss_fn)
    loss_sum, correct1, correct5, n, counted = sums
    # One all-reduce; a rank whose batches have no accuracy makes it undefined on every rank.
    loss_sum, correct1, correct5, n, counted, undefined = _dist.all_reduce_sum(
        [loss_sum, correct1, correct5, n, counted or 0, counted is None])
    if n == 0:
        return _empty()
    return _metrics(loss_sum, int(correct1), int(correct5), int(n), counted=None if undefined else int(counted))


def _pair_of(data):
    if hasattr(data, "train") and hasattr(data, "val"):
        raise ConfigError("evaluate takes one split, not a whole Dataset; pass data.val or data.test")
    return tensor_pair(data)


def _empty() -> dict:
    return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0}


def _metrics(loss_sum: float, correct1: int, correct5: int, n: int, counted) -> dict:
    if counted is None or counted == 0:
        return {"loss": loss_sum / n, "top1": None, "top5": None, "n": n}
    return {"loss": loss_sum / n, "top1": correct1 / counted, "top5": correct5 / counted, "n": n}


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    return ((x[start : start + batch_size], y[start : start + batch_size]) for start in range(0, len(y), batch_size))


@torch.no_grad()
def _sums(model: nn.Module, batches, forward_fn, loss_fn) -> tuple:
    """(summed loss, top-1 hits, top-5 hits, samples, labels counted or None when some batch has
    no accuracy) over ``batches``; top-5 hits are top-1 hits with 5 classes or fewer."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    forward = forward_fn or default_forward
    loss_sum, correct1, correct5, n, counted, classes = 0.0, 0, 0, 0, 0, 0
    try:
        for batch in batches:
            # An asynchronous copy *to* the CPU could be read before it lands.
            if n == 0:
                check_input_shape(model, batch)
            batch = move_to(batch, device, non_blocking=device.type != "cpu")
            out = forward(model, batch)
            size = batch_size_of(batch)
            n += size
            pairs = label_pairs(out, batch)
            if loss_fn is None and isinstance(out, torch.Tensor) and pairs is not None and pairs[2] is None:
                loss_sum += F.cross_entropy(out, pairs[1], reduction="sum").item()
            else:
                loss_sum += float((loss_fn or default_loss)(out, batch)) * size
            if pairs is None or counted is None:
                counted = None
                continue
            logits, labels, valid = pairs
            classes = logits.shape[-1]
            top = logits.topk(min(5, classes), dim=-1).indices
            hits = top == labels[..., None]
            hits1, hits5 = hits[..., 0], hits.any(dim=-1)
            if valid is not None:
                hits1, hits5 = hits1 & valid, hits5 & valid
                counted += int(valid.sum())
            else:
                counted += len(labels)
            correct1 += int(hits1.sum())
            correct5 += int(hits5.sum())
    finally:
        model.train(was_training)
    return loss_sum, correct1, correct5 if classes > 5 else correct1, n, counted
