"""Where training batches come from: in-memory tensors batched here, or batches as they come.

In-memory tensors (a ``Split``, an ``(x, y)`` pair, a two-tensor ``TensorDataset``) are batched by
:class:`TensorBatches`: a seeded permutation per epoch, cut in batches of ``batch_size``; under
``torch.distributed`` every rank takes every ``world``-th sample of each global batch. Any other
data (a ``DataLoader``, a list of batches, ...) go through :class:`IterableBatches`: one pass per
epoch, batches used as they come; under ``torch.distributed`` each rank's data are its own shard
(a ``DistributedSampler``), and the ranks must yield equally many batches per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from prunelab.errors import ConfigError
from prunelab.training import distributed as _dist
from prunelab.training.batches import check_iterable, tensor_pair

_END = object()


class TensorBatches:
    """Batches of in-memory ``x, y`` in a seeded order.

    Args:
        x, y: inputs and labels (same length, at least one sample).
        batch_size: samples per (global) batch.
        seed: seeds the permutation drawn each epoch.
        rank, world: this process's rank and the number of ranks.

    Attributes:
        in_memory: True (the loop shards the loss by the global batch size).
        num_samples: ``len(y)``.
        steps_per_epoch: batches per epoch.
    """

    in_memory = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1):
        self.x, self.y, self.batch_size, self.rank, self.world = x, y, batch_size, rank, world
        self.num_samples = len(y)
        self.steps_per_epoch = math.ceil(self.num_samples / batch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self):
        """Yield ``((x_batch, y_batch), global batch size)``; this rank's share of each batch."""
        order = torch.randperm(self.num_samples, generator=self.generator)
        for start in range(0, self.num_samples, self.batch_size):
            idx = order[start : start + self.batch_size]
            total = len(idx)
            if self.world > 1:
                idx = idx[self.rank :: self.world]
            yield (self.x[idx], self.y[idx]), total


class IterableBatches:
    """Batches of a ``DataLoader`` or any iterable, one pass per epoch.

    Args:
        data: the iterable (re-iterable when ``epochs > 1``).
        epochs: epochs of the run.
        world: the number of ranks (with several, every step first checks that all ranks still have
            a batch: an uneven shard would otherwise leave a rank waiting in a collective).

    Attributes:
        in_memory: False.
        steps_per_epoch: ``len(data)``, or None when ``data`` has no length (counted during the
            first epoch by the loop).

    Raises:
        ConfigError: not an iterable, an iterator (usable once) for several epochs, or no batch.
    """

    in_memory = False

    def __init__(self, data, epochs: int, world: int = 1):
        self.data = check_iterable(data)
        self.world = world
        if isinstance(data, Iterator) and epochs > 1:
            raise ConfigError(f"the training data is an iterator, which can be read once, but epochs is {epochs}; "
                              "pass a list of batches or a DataLoader")
        try:
            self.steps_per_epoch = len(data)
        except TypeError:
            self.steps_per_epoch = None
        if self.steps_per_epoch == 0:
            raise ConfigError("the training data is empty (no batch)")

    def epoch(self):
        """Yield ``(batch, None)`` for every batch of one pass."""
        batches = iter(self.data)
        while True:
            batch = next(batches, _END)
            if self.world > 1:
                have = _dist.all_reduce_sum([batch is not _END])[0]
                if 0 < have < self.world:
                    raise ConfigError(
                        f"the ranks' training data ran out at different steps ({int(have)} of {self.world} ranks "
                        "still had a batch); give every rank equally many batches, e.g. with a "
                        "DistributedSampler (which pads) or drop_last=True")
            if batch is _END:
                return
            yield batch, None


def batch_source(data, batch_size: int, seed: int, epochs: int, rank: int = 0, world: int = 1):
    """:class:`TensorBatches` for in-memory tensors, :class:`IterableBatches` for other data.

    Raises:
        ConfigError: empty tensors, or data that are not data.
    """
    pair = tensor_pair(data)
    if pair is None:
        return IterableBatches(data, epochs, world)
    if len(pair[1]) == 0:
        raise ConfigError("the training split is empty")
    return TensorBatches(pair[0], pair[1], batch_size, seed, rank, world)
