"""Who this process is: rank, world size, device; the shared state of the distributed package.

Everything here answers as a single process would (rank 0 of 1, the CPU) when the process group
is not initialised, or inside :func:`single_process`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from prunelab.errors import PrunelabError

try:
    import torch.distributed as dist
except ImportError:  # pragma: no cover - torch built without distributed support
    dist = None

ENV_BACKEND = "PRUNELAB_DIST_BACKEND"
ENV_TIMEOUT = "PRUNELAB_DIST_TIMEOUT"
ENV_CHECK = "PRUNELAB_DIST_CHECK"
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(PrunelabError):
    """Ranks disagree (masks, weights, model structure), or the distributed setup is invalid."""


class _State:
    """What :func:`~prunelab.training.distributed.setup.init` sets up, shared by the submodules."""

    local_depth = 0            # > 0 inside single_process(): collectives are skipped
    watchdog = None            # the running watchdog thread, if any
    store = None               # this thread's client of the rendezvous store (the watchdog has its own)
    generation = 0             # counts init() calls, so a re-initialised group gets fresh store keys
    barrier_count = 0
    previous_excepthook = None


state = _State()


def initialized() -> bool:
    """True when a ``torch.distributed`` process group exists."""
    return dist is not None and dist.is_available() and dist.is_initialized()


def is_active() -> bool:
    """True when the process group is initialised with more than one rank (and not inside
    :func:`single_process`): collectives are needed."""
    return state.local_depth == 0 and initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 when not distributed or inside :func:`single_process`)."""
    return dist.get_world_size() if state.local_depth == 0 and initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed or inside :func:`single_process`)."""
    return dist.get_rank() if state.local_depth == 0 and initialized() else 0


def true_rank() -> int:
    """This process's rank in the process group, also inside :func:`single_process`."""
    return dist.get_rank() if initialized() else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if initialized() else 0


def is_main() -> bool:
    """True on rank 0, and always when not distributed: the rank that writes files and prints."""
    return true_rank() == 0


def device() -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` under NCCL, the CPU otherwise."""
    if initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Run a block as if there were one rank: ``train``/``evaluate`` inside it use no collectives.

    For work only some ranks do (e.g. rank 0 training a small probe model). Every rank still sees
    the real rank through :func:`is_main`.

    Example:
        >>> if distributed.is_main():
        ...     with distributed.single_process():
        ...         train(probe, data, config)
    """
    state.local_depth += 1
    try:
        yield
    finally:
        state.local_depth -= 1


def launched() -> bool:
    """True when the environment describes a multi-process launch (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise DistributedError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def timeout_seconds(timeout: float | None) -> float:
    """``timeout``, or ``$PRUNELAB_DIST_TIMEOUT``, or the default, checked to be > 0 seconds."""
    if timeout is None:
        text = os.environ.get(ENV_TIMEOUT)
        if text is None:
            return DEFAULT_TIMEOUT_S
        try:
            timeout = float(text)
        except ValueError:
            raise DistributedError(f"{ENV_TIMEOUT} must be a number of seconds, got {text!r}") from None
    if not timeout > 0:
        raise DistributedError(f"the collective timeout must be > 0 seconds, got {timeout!r}")
    return float(timeout)


def checks_enabled() -> bool:
    """Whether the training loop runs the cross-rank equality checks (``PRUNELAB_DIST_CHECK``)."""
    return os.environ.get(ENV_CHECK, "1").strip().lower() not in ("0", "false", "no", "off")
