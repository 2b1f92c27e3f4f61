"""Multi-process training with ``torch.distributed``: setup, rank helpers, cross-rank checks.

prunelab runs data-parallel: every rank holds the whole model, the same masks and the same
optimizer state, and takes its share of every global batch; :func:`prunelab.train` steps through
torch's ``DistributedDataParallel`` (bucketed all-reduce overlapping the backward pass) so every
rank makes the same update, or, with ``shard=True`` (``--shard``), through FSDP's ``fully_shard``,
which shards parameters, gradients and optimizer state across ranks (:mod:`.parallel`,
:mod:`.fsdp`). Pruning
under data parallelism breaks in two ways: ranks that end up with different masks (a pruning step
that is not deterministic, or that sees different weights on different ranks), and runs that
hang when one rank fails while the others wait in a collective. This package guards against both:

- **Identical state, checked** (:mod:`.checks`). :func:`assert_masks_equal_across_ranks` and
  :func:`assert_params_equal_across_ranks` compare a SHA-256 digest of every tensor across ranks
  (one all-gather of 64 bytes per rank when everything agrees) and raise
  :class:`DistributedError` on every rank, naming the tensors that differ. ``train`` runs them when
  it starts and when it ends, so a pruning event that produced different masks, or any drift of
  the weights, stops the run instead of silently training different models. Set
  ``PRUNELAB_DIST_CHECK=0`` to skip them.
- **No hangs** (:mod:`.watchdog`). :func:`init` starts a watchdog thread that polls the
  rendezvous store; a rank that fails (an exception reaching the top level, or
  :func:`report_failure`) writes its error there first, and every other rank prints
  ``rank R stopping: rank F failed: <error>`` and exits with status 1 within about a second, even
  while blocked in a collective or busy without one (a launcher only ends the processes it started
  itself, and not at all when ranks were started by hand). Collectives also time out after
  ``PRUNELAB_DIST_TIMEOUT`` seconds.

Everything here is a no-op, or the identity, when the process group is not initialised or has one
rank, so single-process code pays nothing. Launch with ``torchrun`` (see the README); :func:`init`
reads its environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``).

The submodules: :mod:`.ranks` (who this process is, and the state the others share),
:mod:`.setup` (:func:`init`, :func:`shutdown`), :mod:`.watchdog`, :mod:`.collectives`,
:mod:`.checks`, :mod:`.parallel` (the DDP/FSDP engine of ``train``), :mod:`.fsdp`. Tunables such as the watchdog's poll interval live in, and are read from, their
submodule (``prunelab.training.distributed.watchdog.POLL_S``). This package imports only the core
(``errors``, ``masks``), so the training loop may use it.
"""

from __future__ import annotations

from prunelab.training.distributed.ranks import (
    DEFAULT_TIMEOUT_S, ENV_BACKEND, ENV_CHECK, ENV_TIMEOUT, DistributedError, checks_enabled, device, dist,
    is_active, is_main, launched, local_rank, rank, single_process, world_size,
)
from prunelab.training.distributed.watchdog import failure_message, report_failure
from prunelab.training.distributed.setup import init, shutdown
from prunelab.training.distributed.checks import (
    assert_masks_equal_across_ranks, assert_params_equal_across_ranks, tensor_digest,
)
from prunelab.training.distributed.collectives import (
    all_reduce_sum, any_rank, barrier, broadcast_buffers, broadcast_json, broadcast_masks, broadcast_module,
    sum_gradients_,
)
from prunelab.training.distributed.parallel import ENV_SHARD, DataParallel, set_sharding, sharding_default

__all__ = [
    "DistributedError", "init", "shutdown", "is_active", "world_size", "rank", "local_rank", "is_main",
    "device", "single_process", "barrier", "broadcast_masks", "broadcast_module", "broadcast_json",
    "assert_masks_equal_across_ranks", "assert_params_equal_across_ranks", "sum_gradients_",
    "all_reduce_sum", "any_rank", "report_failure", "failure_message", "broadcast_buffers", "launched",
    "checks_enabled", "tensor_digest", "DataParallel", "set_sharding", "sharding_default", "ENV_SHARD",
]
