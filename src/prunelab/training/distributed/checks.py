"""Cross-rank equality checks: every rank must hold bit-identical masks and weights.

A SHA-256 digest of every tensor is compared across ranks (one all-gather of 64 bytes per rank
when everything agrees); a difference raises :class:`DistributedError` on every rank, naming the
tensors that differ.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from prunelab.core.masks import Masks
from prunelab.training.distributed.ranks import DistributedError, device, dist, is_active


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """SHA-256 of a tensor's dtype, shape and bytes: equal digests mean bit-identical tensors."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    h = hashlib.sha256(f"{t.dtype}|{tuple(tensor.shape)}|".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy().data)
    return h.digest()


def gather_bytes(data: bytes) -> list[bytes]:
    """All-gather one fixed-length byte string from every rank."""
    comm = device()
    mine = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(comm)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [t.cpu().numpy().tobytes() for t in out]


def structure_digest(named: list[tuple[str, torch.Tensor]]) -> bytes:
    text = json.dumps([[n, list(t.shape), str(t.dtype)] for n, t in named])
    return hashlib.sha256(text.encode()).digest()


def check_structure(named: list[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise :class:`DistributedError` on every rank unless all ranks have the same names, shapes, dtypes."""
    digests = gather_bytes(structure_digest(named))
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise DistributedError(f"the {what} differ in names, shapes or dtypes between rank 0 and rank(s) {differ}; "
                               "every rank must build the same model (same model name, arguments and masks)")


def _compare(named: list[tuple[str, torch.Tensor]], what: str, hint: str) -> None:
    """Raise DistributedError on every rank unless ``named`` is bit-identical on all ranks."""
    if not is_active():
        return
    digests = [tensor_digest(t) for _, t in named]
    structure = structure_digest(named)
    content = hashlib.sha256(b"".join(digests)).digest()
    gathered = gather_bytes(structure + content)
    if all(g == gathered[0] for g in gathered):
        return
    if any(g[:32] != gathered[0][:32] for g in gathered):
        ranks = [r for r, g in enumerate(gathered) if g[:32] != gathered[0][:32]]
        raise DistributedError(f"the {what} differ in names or shapes between rank 0 and rank(s) {ranks}; {hint}")
    # Same structure, different values: find which tensors (a second, rare collective).
    per_tensor = gather_bytes(b"".join(digests))
    sums = torch.tensor([float(t.detach().double().sum()) for _, t in named], dtype=torch.float64,
                        device=device())
    all_sums = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(all_sums, sums)
    lines = []
    for i, (name, _) in enumerate(named):
        ranks = [r for r, blob in enumerate(per_tensor) if blob[32 * i : 32 * i + 32] != per_tensor[0][32 * i : 32 * i + 32]]
        if ranks:
            values = ", ".join(f"rank {r}: {float(all_sums[r][i]):.9g}" for r in [0, *ranks])
            lines.append(f"{name} differs on rank(s) {ranks} (sums {values})")
    shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
    raise DistributedError(f"the {what} are not identical across ranks: {shown}. {hint}")


def assert_masks_equal_across_ranks(masks: Masks) -> None:
    """Raise :class:`DistributedError`, on every rank, unless ``masks`` are bit-identical on all ranks.

    One all-gather of 64 bytes when they agree; when not, the error names each differing mask
    with its kept count per rank.

    Args:
        masks: this rank's masks.
    """
    _compare(list(masks.items()), "masks",
             "Pruning must see identical weights on every rank and be deterministic; or compute the masks on "
             "one rank and share them with prunelab.training.distributed.broadcast_masks")


def assert_params_equal_across_ranks(model: nn.Module, buffers: bool = True) -> None:
    """Raise :class:`DistributedError`, on every rank, unless ``model``'s parameters (and buffers)
    are bit-identical on all ranks.

    Args:
        model: the network.
        buffers: compare the buffers too (batch-norm statistics, LTP threshold scales, ...).
    """
    named = list(model.named_parameters())
    if buffers:
        named += list(model.named_buffers())
    _compare(named, "model parameters" + (" and buffers" if buffers else ""),
             "Start every rank from the same weights (same seed, or prunelab.training.distributed.broadcast_module) "
             "and do not change them on one rank only")
