"""The data-parallel engines :func:`prunelab.train` steps through when there are several ranks.

- **DistributedDataParallel** (the default): every rank holds the whole model; DDP all-reduces the
  gradients in buckets while the backward pass is still running. DDP *averages* over ranks, and the
  loop's per-rank loss is the rank's share of the global batch mean (whose gradients *sum* to the
  single-process gradient), so the loop multiplies the loss by the number of ranks
  (:attr:`DataParallel.loss_scale`): with a power-of-two number of ranks the scaling and DDP's
  division are exact, and the gradients equal those of the former hand-made sum bit for bit.
- **FSDP** (``shard=True``, ``torch.distributed.fsdp.fully_shard``): parameters, gradients and
  optimizer state are sharded across ranks during training (see :mod:`.fsdp`).

Parameters the optimizer updates but the wrapped model does not own (an optimizer built over extra
tensors) are averaged by hand after the backward pass, so every rank still makes the same update.
DDP is built without its start-up broadcast (``train`` checks the ranks' parameters itself),
without per-step buffer broadcasts (the loop takes rank 0's buffers after every epoch, which ends
with the same buffers at a fraction of the traffic), and with ``static_graph=True``: the first step
learns which parameters get a gradient (a layer the forward skips gets none, and keeps none), so
the set of parameters a step uses must not change from step to step.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from prunelab.training.distributed.collectives import sum_gradients_
from prunelab.training.distributed.ranks import DistributedError, dist, world_size

#: Environment variable that makes ``train`` shard with FSDP by default (``1``/``true``).
ENV_SHARD = "PRUNELAB_DIST_SHARD"
_SHARD_DEFAULT: list[bool | None] = [None]


def set_sharding(enabled: bool | None) -> None:
    """Make :func:`prunelab.train` shard with FSDP by default (``None``: back to ``$PRUNELAB_DIST_SHARD``).

    The command line's ``--shard`` calls this, so every method that trains through ``train``
    (retraining, iterative rounds, the harness) shards too.

    Args:
        enabled: the new default.
    """
    _SHARD_DEFAULT[0] = None if enabled is None else bool(enabled)


def sharding_default() -> bool:
    """Whether ``train(shard=None)`` shards: :func:`set_sharding`'s value, else ``$PRUNELAB_DIST_SHARD``."""
    if _SHARD_DEFAULT[0] is not None:
        return _SHARD_DEFAULT[0]
    return os.environ.get(ENV_SHARD, "0").strip().lower() in ("1", "true", "yes", "on")


class _DDP(nn.parallel.DistributedDataParallel):
    """DDP whose missing attributes are read from the wrapped model, so a ``forward_fn`` written for
    the bare model (``model.config``, ``model.encoder(...)``) keeps working. Named like torch's
    class, so :func:`prunelab.core.prunable.unwrap` looks through it."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None or name.startswith("_"):   # DDP's own (private) state stays its own
                raise
            return getattr(inner, name)


_DDP.__name__ = _DDP.__qualname__ = "DistributedDataParallel"


class DataParallel:
    """One training run's data-parallel engine.

    Use: ``engine = DataParallel(model, shard)`` (FSDP: shards a copy, ``engine.net``, now), build
    the optimizer over ``engine.net.parameters()`` (or :meth:`adopt` a given one), :meth:`attach`
    it, then in every step call :meth:`forward`, backward ``loss * engine.loss_scale``, and
    :meth:`after_backward`, with masks applied to ``engine.net``; :meth:`close` at the end (FSDP:
    the model holds the trained parameters again, whole, on every rank).

    Args:
        model: the network (same structure and values on every rank).
        shard: FSDP (``fully_shard``) instead of DDP.

    Raises:
        DistributedError: FSDP is not available in this torch build.
    """

    def __init__(self, model: nn.Module, shard: bool = False):
        self.model, self.shard, self.world = model, bool(shard), world_size()
        self.loss_scale = float(self.world)
        self._leftover: list[torch.Tensor] = []
        self._sharded = None
        if self.shard:
            check_engine_available(True)
            from prunelab.training.distributed.fsdp import ShardedTraining

            self._sharded = ShardedTraining(model)
        #: The module whose parameters are trained (the sharded copy under FSDP).
        self.net: nn.Module = self._sharded.net if self._sharded is not None else model
        #: What the forward is called on (the DDP wrapper, or the sharded copy).
        self.module: nn.Module = self.net

    def adopt(self, optimizer: torch.optim.Optimizer) -> None:
        """Point a given optimizer at the sharded parameters (FSDP replaces them); no-op for DDP."""
        if self._sharded is not None:
            self._sharded.remap_optimizer(optimizer)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Wrap the model for the steps (DDP) and note the optimizer's parameters it does not own."""
        owned = {id(p) for p in self.net.parameters()}
        seen: set[int] = set()
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in owned and id(p) not in seen:
                    seen.add(id(p))
                    self._leftover.append(p)
        if self.shard or not any(p.requires_grad for p in self.net.parameters()):
            return
        # static_graph: the first step finds the parameters that get no gradient (a layer the
        # forward skips) once, where find_unused_parameters would walk the graph every step.
        self.module = _DDP(self.net, init_sync=False, forward_sync_buffers=False, static_graph=True)

    def forward(self, forward_fn, batch):
        """``forward_fn(engine.module, batch)``: the step's forward, through DDP when it wraps the model."""
        return forward_fn(self.module, batch)

    def after_backward(self) -> None:
        """Average the gradients of the optimizer's parameters that the engine does not reduce."""
        if self._leftover:
            sum_gradients_(self._leftover)
            for p in self._leftover:
                if p.grad is not None:
                    p.grad.div_(self.loss_scale)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the model's parameters and buffers, whole on every rank (collective under FSDP)."""
        if self._sharded is not None:
            return self._sharded.full_state_dict()
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def evaluation(self):
        """A context giving the model to evaluate inside training (FSDP: the user's model, its
        parameters gathered whole for the evaluation)."""
        if self._sharded is not None:
            return self._sharded.evaluation()
        return _Plain(self.model)

    def close(self, gather: bool = True) -> None:
        """Release DDP's gradient hooks; under FSDP gather the trained parameters into the model
        (collective: pass ``gather=False`` on the way out of a failure, where the other ranks may
        never arrive; the model's parameters then stay empty)."""
        if isinstance(self.module, nn.parallel.DistributedDataParallel):
            ddp = self.module
            self.module = self.net
            # The reducer's hooks live on the parameters' gradient accumulators until it is freed:
            # a later backward on the bare model must not reach them.
            for attribute in ("reducer", "logger"):
                if hasattr(ddp, attribute):
                    delattr(ddp, attribute)
        if self._sharded is not None:
            sharded, self._sharded = self._sharded, None
            if gather:
                sharded.close()


class _Plain:
    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        return self.model

    def __exit__(self, *exc):
        return False


def check_engine_available(shard: bool) -> None:
    """Raise :class:`DistributedError` when ``shard`` asks for FSDP that this torch lacks."""
    if not shard:
        return
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        raise DistributedError("shard=True needs torch.distributed.fsdp.fully_shard (torch >= 2.6); "
                               "upgrade torch or train without --shard (DistributedDataParallel)") from None
    if dist is None:
        raise DistributedError("this torch build has no torch.distributed")
