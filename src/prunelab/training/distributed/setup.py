"""Joining and leaving the process group that torchrun's environment describes."""

from __future__ import annotations

import datetime
import os
import sys

import torch

from prunelab.training.distributed.ranks import (
    ENV_BACKEND, DistributedError, dist, initialized, launched, state, timeout_seconds,
)
from prunelab.training.distributed.watchdog import Watchdog, connect_store, excepthook, failure_key


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise DistributedError(f"WORLD_SIZE > 1 but {name} is not set; launch with torchrun "
                               f"(torchrun --nproc-per-node N -m prunelab ...), which sets it")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {value!r}") from None


def init(backend: str | None = None, timeout: float | None = None) -> bool:
    """Join the process group described by torchrun's environment variables.

    Does nothing (returns False) unless ``WORLD_SIZE`` > 1, so it is safe to call in every entry
    point. Idempotent: a second call returns whether the group is active.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default ``$PRUNELAB_DIST_BACKEND``, else NCCL when CUDA
            is available and gloo otherwise. Under NCCL each rank uses ``cuda:LOCAL_RANK``.
        timeout: seconds a collective may wait before failing (default ``$PRUNELAB_DIST_TIMEOUT``,
            else 1800).

    Returns:
        True when this process is now one of several ranks.

    Raises:
        DistributedError: the environment is incomplete, or NCCL is asked for without a GPU.
    """
    if initialized():
        return dist.get_world_size() > 1
    if not launched():
        return False
    if dist is None or not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; install a build with it to use torchrun")
    rank_, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if not os.environ.get("MASTER_ADDR"):
        raise DistributedError("MASTER_ADDR is not set; launch with torchrun, which sets it")
    _env_int("MASTER_PORT")
    if not 0 <= rank_ < world:
        raise DistributedError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank_}, WORLD_SIZE={world}")
    backend = (backend or os.environ.get(ENV_BACKEND) or
               ("nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo")).lower()
    seconds = timeout_seconds(timeout)
    kwargs = {}
    if backend == "nccl":
        if not (torch.cuda.is_available() and dist.is_nccl_available()):
            raise DistributedError("backend nccl needs CUDA GPUs and a torch built with NCCL; use gloo on CPU "
                                   f"({ENV_BACKEND}=gloo)")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s); "
                                   "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)
    elif backend != "gloo":
        raise DistributedError(f"unknown backend {backend!r}; choose gloo (CPU) or nccl (GPU)")
    dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=seconds), **kwargs)
    state.generation += 1
    state.store = connect_store()
    state.watchdog = Watchdog(failure_key())
    state.watchdog.start()
    if state.previous_excepthook is None:
        state.previous_excepthook = sys.excepthook
        sys.excepthook = excepthook
    return world > 1


def shutdown() -> None:
    """Leave the process group after every rank got here (a barrier), stopping the watchdog.

    Call it at the end of a successful run; a failed run just exits. No-op when not initialised.
    """
    if not initialized():
        return
    try:
        if dist.get_world_size() > 1:
            dist.barrier()
    finally:
        if state.watchdog is not None:
            state.watchdog.stop()
            state.watchdog = None
        state.store = None
        dist.destroy_process_group()
