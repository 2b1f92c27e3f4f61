"""FSDP for ``train(shard=True)``: parameters, gradients and optimizer state sharded across ranks.

The model the user passed is not rewired: :class:`ShardedTraining` trains a structural copy of it
(made by ``copy.deepcopy`` with the parameters and buffers *shared*, so nothing is copied) on which
``torch.distributed.fsdp.fully_shard`` is applied, every module that owns parameters a unit of its
own (parameters tied across modules stay with the root). Once the copy holds its shards, the
user's parameters are emptied (their storage released) until training ends; then every rank
gathers the whole parameters back into them (``DTensor.full_tensor``), so checkpoints, pruning and
evaluation after ``train`` see a plain model and rank 0 writes the usual safetensors checkpoint.
During training the copy's parameters are ``DTensor`` shards; :class:`prunelab.core.masks.Masks`
applies to them shard by shard (each rank multiplies its local shard by the matching piece of the
mask, no communication). Validation inside training gathers the parameters into the user's model
for the evaluation and releases them after.

Limits: callbacks see the sharded copy (``state.model``), whose parameters are ``DTensor`` shards,
so callbacks that prune during training (gradual magnitude pruning) or read the user's model (LTP)
are not supported with ``shard=True``; fixed masks (dense training, retraining) are. A given
optimizer must not have stepped yet.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunelab.training.distributed.ranks import DistributedError


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, _dtensor_type()) else t


class ShardedTraining:
    """The FSDP-sharded copy of a model for one training run.

    Args:
        model: the user's network (same values on every rank).

    Attributes:
        net: the sharded copy (train it, call it, mask it).
    """

    def __init__(self, model: nn.Module):
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if any(isinstance(m, FSDPModule) for m in model.modules()):
            raise DistributedError("the model is already sharded with fully_shard; pass the plain model to "
                                   "train(shard=True), which shards a copy of it itself")
        self.model = model
        self.params = dict(model.named_parameters())          # tied parameters once
        memo = {id(p): nn.Parameter(p.data, requires_grad=p.requires_grad) for p in self.params.values()}
        memo.update({id(b): b for b in model.buffers()})
        self.net = copy.deepcopy(model, memo)
        owners: dict[int, int] = {}
        for module in self.net.modules():
            for p in module.parameters(recurse=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
        units = [m for m in self.net.modules() if m is not self.net and any(True for _ in m.parameters(recurse=False))
                 and all(owners[id(p)] == 1 for p in m.parameters(recurse=False))]
        for module in reversed(units):    # innermost first, as fully_shard wants
            fully_shard(module)
        fully_shard(self.net)
        self.sharded = dict(self.net.named_parameters())
        if list(self.sharded) != list(self.params):
            raise DistributedError("sharding renamed the model's parameters; train this model without shard=True")
        self._release()
        self._remapped: list[torch.optim.Optimizer] = []

    def _release(self) -> None:
        with torch.no_grad():
            for p in self.params.values():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def gather_(self) -> None:
        """Every rank: the whole current parameters into the user's model (collective)."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.data = _full(self.sharded[name].detach()).clone()

    def remap_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Point a given optimizer (over the user's parameters) at the shards; undone by :meth:`close`."""
        if any(optimizer.state.get(p) for g in optimizer.param_groups for p in g["params"]):
            raise DistributedError("the optimizer has already stepped (it holds state); under shard=True pass a "
                                   "fresh optimizer, or none (train builds one over the shards)")
        to_shard = {id(self.params[n]): self.sharded[n] for n in self.params}
        for group in optimizer.param_groups:
            group["params"] = [to_shard.get(id(p), p) for p in group["params"]]
        self._remapped.append(optimizer)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the parameters and buffers, whole on every rank (collective)."""
        return {k: _full(v.detach()).clone() for k, v in self.net.state_dict().items()}

    def evaluation(self):
        """A context in which the user's model holds the whole parameters (to evaluate it)."""
        return _Gathered(self)

    def close(self) -> None:
        """Gather the trained parameters into the user's model; a given optimizer gets them back,
        with its state gathered whole (collective)."""
        self.gather_()
        back = {id(self.sharded[n]): self.params[n] for n in self.params}
        for optimizer in self._remapped:
            for group in optimizer.param_groups:
                group["params"] = [back.get(id(p), p) for p in group["params"]]
            state = {}
            for p, values in optimizer.state.items():
                state[back.get(id(p), p)] = {k: _full(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
            optimizer.state.clear()
            optimizer.state.update(state)
        self._remapped = []


class _Gathered:
    def __init__(self, sharded: ShardedTraining):
        self.sharded = sharded

    def __enter__(self):
        self.sharded.gather_()
        return self.sharded.model

    def __exit__(self, *exc):
        self.sharded._release()
        return False
