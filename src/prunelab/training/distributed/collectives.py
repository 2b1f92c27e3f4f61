"""Collectives: barrier, sums, and broadcasts of masks, modules, buffers and JSON values.

Each is a no-op, or the identity, when the process group is not active (one rank, or inside
``single_process()``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Iterable

import torch
from torch import nn

from prunelab.core.masks import Masks
from prunelab.training.distributed.checks import check_structure
from prunelab.training.distributed.ranks import (
    ENV_TIMEOUT, DistributedError, device, dist, is_active, rank, state, timeout_seconds, true_rank,
)


def barrier(timeout: float | None = None) -> None:
    """Wait until every rank got here, at most ``timeout`` seconds.

    Uses the store (works under gloo and NCCL alike), so a rank that never arrives is named.

    Args:
        timeout: seconds (default: the collective timeout of :func:`init`).

    Raises:
        DistributedError: some rank did not arrive in time (names them).
    """
    if not is_active():
        return
    if state.store is None:  # initialised by someone else: fall back to torch's barrier
        dist.barrier()
        return
    state.barrier_count += 1
    base = f"prunelab/barrier/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{state.generation}/{state.barrier_count}"
    seconds = timeout_seconds(timeout)
    state.store.set(f"{base}/{true_rank()}", "1")
    keys = [f"{base}/{r}" for r in range(dist.get_world_size())]
    deadline = time.monotonic() + seconds
    while True:
        if state.store.check(keys):
            return
        if time.monotonic() > deadline:
            missing = [r for r, k in enumerate(keys) if not state.store.check([k])]
            raise DistributedError(f"barrier timed out after {seconds:g}s: rank(s) {missing} did not arrive; "
                                   f"raise {ENV_TIMEOUT} if they are just slow")
        time.sleep(0.01)


def all_reduce_sum(values: Iterable[float]) -> list[float]:
    """Sum a few numbers across ranks (float64; exact for integer counts below 2**53).

    Args:
        values: this rank's numbers.

    Returns:
        The sums, identical on every rank; the input itself when not distributed.
    """
    values = [float(v) for v in values]
    if not is_active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one rank."""
    if not is_active():
        return bool(flag)
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def sum_gradients_(params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` across ranks, in place (one all-reduce per dtype).

    ``train`` reduces the model's gradients with DistributedDataParallel and uses this for the
    optimizer's parameters outside the model (divided by the number of ranks there). A gradient that is None on every rank stays None (optimizers skip such parameters, and
    weight decay must not touch them); one that is None on some ranks only counts as zero there.

    Args:
        params: the trainable parameters, in the same order on every rank.
    """
    if not is_active():
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise DistributedError("distributed training does not support sparse gradients; use dense layers")
        groups.setdefault((p.device, p.dtype), []).append(p)
    for (dev, dtype), ps in groups.items():
        missing = any(p.grad is None for p in ps)
        # A presence flag per parameter rides in the same buffer, so no second collective; it is
        # read back (a device sync) only on a rank that lacks some gradient itself.
        present = (torch.tensor([p.grad is not None for p in ps], dtype=dtype, device=dev) if missing
                   else _ones(len(ps), dtype, dev))
        pieces = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=dev)
                  for p in ps]
        flat = torch.cat(pieces + [present])
        dist.all_reduce(flat)
        counts = flat[-len(ps):].tolist() if missing else None
        offset = 0
        for i, p in enumerate(ps):
            n = p.numel()
            summed = flat[offset : offset + n].view_as(p)
            if p.grad is not None:
                p.grad.copy_(summed)
            elif counts[i] > 0:
                p.grad = summed.clone()
            offset += n


_ONES: dict[tuple, torch.Tensor] = {}


def _ones(n: int, dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
    key = (n, dtype, dev)
    if key not in _ONES:
        _ONES.clear()   # one model at a time in practice: keep one entry
        _ONES[key] = torch.ones(n, dtype=dtype, device=dev)
    return _ONES[key]


def broadcast_tensors_(tensors: list[torch.Tensor], src: int) -> None:
    """Broadcast tensors from ``src`` in place, one flat buffer per dtype (bool sent as uint8)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    comm = device()
    for (_, dtype), ts in groups.items():
        wire = torch.uint8 if dtype == torch.bool else dtype
        flat = torch.cat([t.detach().reshape(-1).to(device=comm, dtype=wire) for t in ts])
        dist.broadcast(flat, src)
        offset = 0
        for t in ts:
            n = t.numel()
            with torch.no_grad():
                t.copy_(flat[offset : offset + n].view(t.shape).to(dtype=dtype))
            offset += n


def broadcast_masks(masks: Masks, src: int = 0) -> Masks:
    """Rank ``src``'s masks on every rank: compute masks once, share them.

    Every rank passes masks with the same names and shapes (e.g. ``Masks.ones(model)`` on the
    ranks that do not compute them).

    Args:
        masks: this rank's masks.
        src: the rank whose masks win.

    Returns:
        New :class:`Masks` equal to rank ``src``'s (``masks`` itself when not distributed).

    Raises:
        DistributedError: the ranks' masks differ in names or shapes.
    """
    if not is_active():
        return masks
    check_structure([(n, m) for n, m in masks.items()], "masks")
    copies = {n: m.clone() for n, m in masks.items()}
    broadcast_tensors_(list(copies.values()), src)
    return Masks(copies)


def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``model`` with rank ``src``'s, in place.

    Args:
        model: the network, of the same structure on every rank.
        src: the rank whose values win.

    Raises:
        DistributedError: the ranks' models differ in names or shapes.
    """
    if not is_active():
        return
    named = list(model.named_parameters()) + list(model.named_buffers())
    check_structure(named, "model")
    broadcast_tensors_([t.data for _, t in named], src)


def broadcast_json(obj=None, src: int = 0):
    """Rank ``src``'s JSON-able value on every rank (sent as UTF-8 JSON, never pickled).

    For decisions only one rank may take, e.g. which runs a result store still lacks.

    Args:
        obj: the value on rank ``src`` (ignored elsewhere).
        src: the deciding rank.

    Returns:
        The value, decoded from JSON, on every rank (``obj`` itself when not distributed).
    """
    if not is_active():
        return obj
    comm = device()
    payload = json.dumps(obj).encode("utf-8") if rank() == src else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=comm)
    dist.broadcast(size, src)
    buf = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(comm) if rank() == src
           else torch.empty(int(size), dtype=torch.uint8, device=comm))
    dist.broadcast(buf, src)
    return json.loads(buf.cpu().numpy().tobytes().decode("utf-8"))


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Overwrite the buffers (batch-norm running statistics, ...) with rank ``src``'s, in place.

    Each rank normalises with its own shard's batch statistics, so running statistics drift
    apart; the training loop calls this after every epoch, as DDP broadcasts rank 0's buffers.
    """
    if not is_active():
        return
    buffers = [b for _, b in model.named_buffers()]
    if buffers:
        broadcast_tensors_(buffers, src)
