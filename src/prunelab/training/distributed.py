"""Multi-process training with ``torch.distributed``: setup, rank helpers, cross-rank checks.

prunelab runs data-parallel: every rank holds the whole model, the same masks and the same
optimizer state, and takes its share of every global batch; :func:`prunelab.train` sums the
gradients across ranks (:func:`sum_gradients_`) so every rank makes the same update. Pruning
toolkits break here in two ways (field-notes §4 item 10): ranks that end up with different masks,
and runs that hang when one rank fails. This module guards against both:

- **Identical state, checked.** :func:`assert_masks_equal_across_ranks` and
  :func:`assert_params_equal_across_ranks` compare a SHA-256 digest of every tensor across ranks
  (one all-gather of 64 bytes per rank when everything agrees) and raise
  :class:`DistributedError` on every rank, naming the tensors that differ. ``train`` runs them when
  it starts and when it ends, so a pruning event that produced different masks, or any drift of
  the weights, stops the run instead of silently training different models. Set
  ``PRUNELAB_DIST_CHECK=0`` to skip them.
- **No hangs.** :func:`init` starts a watchdog thread that polls the rendezvous store; a rank that
  fails (an exception reaching the top level, or :func:`report_failure`) writes its error there
  first, and every other rank prints ``rank R stopping: rank F failed: <error>`` and exits with
  status 1 within about a second, even while blocked in a collective or busy without one (a
  launcher only ends the processes it started itself, and not at all when ranks were started by
  hand). Collectives also time out after ``PRUNELAB_DIST_TIMEOUT`` seconds.

Everything here is a no-op, or the identity, when the process group is not initialised or has one
rank, so single-process code pays nothing. Launch with ``torchrun`` (see the README); :func:`init`
reads its environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``).

This module imports only the core (``errors``, ``masks``), so the training loop may use it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
import threading
import time
from typing import Iterable, Iterator

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.core.masks import Masks

try:
    import torch.distributed as dist
except ImportError:  # pragma: no cover - torch built without distributed support
    dist = None

__all__ = [
    "DistributedError", "init", "shutdown", "is_active", "world_size", "rank", "local_rank", "is_main",
    "device", "single_process", "barrier", "broadcast_masks", "broadcast_module", "broadcast_json",
    "assert_masks_equal_across_ranks", "assert_params_equal_across_ranks", "sum_gradients_",
    "all_reduce_sum", "any_rank", "report_failure", "failure_message", "broadcast_buffers", "launched",
    "checks_enabled", "tensor_digest",
]

ENV_BACKEND = "PRUNELAB_DIST_BACKEND"
ENV_TIMEOUT = "PRUNELAB_DIST_TIMEOUT"
ENV_CHECK = "PRUNELAB_DIST_CHECK"
DEFAULT_TIMEOUT_S = 1800.0
POLL_S = 0.25           # how often the watchdog asks the store whether a rank failed
LINGER_S = 3.0          # a failing store host waits this long at most for the others to read why
STORE_ERRORS_FATAL = 8  # consecutive unreachable-store polls (~2 s) after which the run is dead


class DistributedError(PrunelabError):
    """Ranks disagree (masks, weights, model structure), or the distributed setup is invalid."""


_local_depth = 0          # > 0 inside single_process(): collectives are skipped
_watchdog: "_Watchdog | None" = None
_store = None             # this thread's client of the rendezvous store (the watchdog has its own)
_generation = 0           # counts init() calls, so a re-initialised group gets fresh store keys
_barrier_count = 0
_previous_excepthook = None


# -- state ----------------------------------------------------------------------------------------
def _initialized() -> bool:
    return dist is not None and dist.is_available() and dist.is_initialized()


def is_active() -> bool:
    """True when the process group is initialised with more than one rank (and not inside
    :func:`single_process`): collectives are needed."""
    return _local_depth == 0 and _initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 when not distributed or inside :func:`single_process`)."""
    return dist.get_world_size() if _local_depth == 0 and _initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed or inside :func:`single_process`)."""
    return dist.get_rank() if _local_depth == 0 and _initialized() else 0


def _true_rank() -> int:
    return dist.get_rank() if _initialized() else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if _initialized() else 0


def is_main() -> bool:
    """True on rank 0, and always when not distributed: the rank that writes files and prints."""
    return _true_rank() == 0


def device() -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` under NCCL, the CPU otherwise."""
    if _initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _comm_device() -> torch.device:
    return device()


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
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


# -- setup ----------------------------------------------------------------------------------------
def launched() -> bool:
    """True when the environment describes a multi-process launch (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise DistributedError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise DistributedError(f"WORLD_SIZE > 1 but {name} is not set; launch with torchrun "
                               f"(torchrun --nproc-per-node N -m prunelab ...), which sets it")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {value!r}") from None


def _timeout_seconds(timeout: float | None) -> float:
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
    global _watchdog, _store, _generation, _previous_excepthook
    if _initialized():
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
    seconds = _timeout_seconds(timeout)
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
    _generation += 1
    _store = _connect_store()
    _watchdog = _Watchdog(_failure_key())
    _watchdog.start()
    if _previous_excepthook is None:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
    return world > 1


def shutdown() -> None:
    """Leave the process group after every rank got here (a barrier), stopping the watchdog.

    Call it at the end of a successful run; a failed run just exits. No-op when not initialised.
    """
    global _watchdog, _store
    if not _initialized():
        return
    try:
        if dist.get_world_size() > 1:
            dist.barrier()
    finally:
        if _watchdog is not None:
            _watchdog.stop()
            _watchdog = None
        _store = None
        dist.destroy_process_group()


# -- failure propagation --------------------------------------------------------------------------
def _connect_store():
    """A client of the rendezvous store (torchrun's agent store, or rank 0's), one per thread:
    sharing one client between the watchdog and the main thread is not safe."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=datetime.timedelta(seconds=30), wait_for_workers=False)


def _failure_key() -> str:
    # A torchrun restart reuses the agent's store: the key must not carry an old attempt's failure.
    return f"prunelab/failure/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_generation}"


class _Watchdog(threading.Thread):
    """Polls the rendezvous store; when another rank reported a failure, or the store is gone
    (its host died), prints why and ends this process at once (``os._exit(1)``): the main thread
    may be blocked in a collective that would otherwise wait for the full timeout."""

    def __init__(self, key: str):
        super().__init__(name="prunelab-dist-watchdog", daemon=True)
        self.key = key
        self.halt = threading.Event()
        self.failed_here = False
        self.store = _connect_store()

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)

    def run(self) -> None:
        errors = 0
        while not self.halt.wait(POLL_S):
            try:
                found = self.store.check([self.key])
                errors = 0
            except Exception:  # noqa: BLE001 - any store error means the rendezvous host is unreachable
                errors += 1
                if errors >= STORE_ERRORS_FATAL and not self.halt.is_set():
                    self._abort("the rendezvous store is unreachable (its host process ended)")
                continue
            if found and not self.failed_here and not self.halt.is_set():
                try:
                    message = self.store.get(self.key).decode("utf-8", "replace")
                    self.store.add(self.key + "/read", 1)
                except Exception:  # noqa: BLE001
                    message = "another rank failed"
                self._abort(message)

    def _abort(self, why: str) -> None:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        sys.stderr.write(f"prunelab: rank {_true_rank()} stopping: {why}\n")
        sys.stderr.flush()
        os._exit(1)


def failure_message() -> str | None:
    """The failure another rank reported, if any (None when none, or when not distributed)."""
    wd = _watchdog
    if wd is None or _store is None:
        return None
    try:
        if _store.check([wd.key]):
            message = _store.get(wd.key).decode("utf-8", "replace")
            if not message.startswith(f"rank {_true_rank()} failed"):
                return message
    except Exception:  # noqa: BLE001
        return None
    return None


def report_failure(error: BaseException | str) -> str | None:
    """Tell the other ranks this rank failed, so that they exit instead of waiting in a collective.

    Call it before exiting on an error (the CLI does; an uncaught exception does it by itself once
    :func:`init` ran). Safe to call when not distributed (no-op).

    Args:
        error: the exception or a message.

    Returns:
        The message of another rank's earlier failure when there was one (this rank's error is
        then probably a consequence of it), else None.
    """
    wd = _watchdog
    if wd is None or _store is None:
        return None
    wd.failed_here = True   # before publishing: this rank's own watchdog must not abort it
    text = error if isinstance(error, str) else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    mine = f"rank {_true_rank()} failed: {text}"
    try:
        # compare_set keeps the first failure: of ranks failing together, the root cause is kept.
        first = _store.compare_set(wd.key, "", mine).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the store is gone: the launcher or the timeout ends the others
        first = mine
    if first != mine:
        _acknowledge(wd.key)
        return first
    _record_for_torchrun(error)
    _linger(wd.key)
    return None


def _acknowledge(key: str) -> None:
    try:
        _store.add(key + "/read", 1)
    except Exception:  # noqa: BLE001
        pass


def _linger(key: str) -> None:
    """When this process hosts the store (rank 0 launched without torchrun's agent), its exit takes
    the store down; wait (at most LINGER_S) until every other rank has read the failure, so they
    report its cause instead of a bare "connection closed"."""
    if _true_rank() != 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return
    deadline = time.monotonic() + LINGER_S
    others = dist.get_world_size() - 1
    try:
        while _store.add(key + "/read", 0) < others and time.monotonic() < deadline:
            time.sleep(0.02)
    except Exception:  # noqa: BLE001
        pass


def _record_for_torchrun(error: BaseException | str) -> None:
    """Write torchrun's error file, so its summary shows this rank's error as the root cause."""
    if not isinstance(error, BaseException) or not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(error)
    except Exception:  # noqa: BLE001 - a nicer summary is not worth a second error
        pass


def _excepthook(exc_type, exc, tb) -> None:
    if _watchdog is not None and not issubclass(exc_type, SystemExit):
        earlier = report_failure(exc)
        if earlier is not None:
            sys.stderr.write(f"prunelab: rank {_true_rank()} stopping: {earlier} "
                             f"(here: {exc_type.__name__}: {exc})\n")
            return
    (_previous_excepthook or sys.__excepthook__)(exc_type, exc, tb)


# -- collectives ----------------------------------------------------------------------------------
def barrier(timeout: float | None = None) -> None:
    """Wait until every rank got here, at most ``timeout`` seconds.

    Uses the store (works under gloo and NCCL alike), so a rank that never arrives is named.

    Args:
        timeout: seconds (default: the collective timeout of :func:`init`).

    Raises:
        DistributedError: some rank did not arrive in time (names them).
    """
    global _barrier_count
    if not is_active():
        return
    if _store is None:  # initialised by someone else: fall back to torch's barrier
        dist.barrier()
        return
    _barrier_count += 1
    base = f"prunelab/barrier/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_generation}/{_barrier_count}"
    seconds = _timeout_seconds(timeout)
    _store.set(f"{base}/{_true_rank()}", "1")
    keys = [f"{base}/{r}" for r in range(dist.get_world_size())]
    deadline = time.monotonic() + seconds
    while True:
        if _store.check(keys):
            return
        if time.monotonic() > deadline:
            missing = [r for r, k in enumerate(keys) if not _store.check([k])]
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
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one rank."""
    if not is_active():
        return bool(flag)
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def sum_gradients_(params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` across ranks, in place (one all-reduce per dtype).

    The training loop scales each rank's loss so that the sum is the gradient of the global batch
    mean. A gradient that is None on every rank stays None (optimizers skip such parameters, and
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


def _broadcast_tensors_(tensors: list[torch.Tensor], src: int) -> None:
    """Broadcast tensors from ``src`` in place, one flat buffer per dtype (bool sent as uint8)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    comm = _comm_device()
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
    _check_structure([(n, m) for n, m in masks.items()], "masks")
    copies = {n: m.clone() for n, m in masks.items()}
    _broadcast_tensors_(list(copies.values()), src)
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
    _check_structure(named, "model")
    _broadcast_tensors_([t.data for _, t in named], src)


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
    comm = _comm_device()
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
        _broadcast_tensors_(buffers, src)


# -- cross-rank equality checks -------------------------------------------------------------------
def checks_enabled() -> bool:
    """Whether the training loop runs the cross-rank equality checks (``PRUNELAB_DIST_CHECK``)."""
    return os.environ.get(ENV_CHECK, "1").strip().lower() not in ("0", "false", "no", "off")


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


def _gather_bytes(data: bytes) -> list[bytes]:
    """All-gather one fixed-length byte string from every rank."""
    comm = _comm_device()
    mine = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(comm)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [t.cpu().numpy().tobytes() for t in out]


def _structure_digest(named: list[tuple[str, torch.Tensor]]) -> bytes:
    text = json.dumps([[n, list(t.shape), str(t.dtype)] for n, t in named])
    return hashlib.sha256(text.encode()).digest()


def _check_structure(named: list[tuple[str, torch.Tensor]], what: str) -> None:
    digests = _gather_bytes(_structure_digest(named))
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise DistributedError(f"the {what} differ in names, shapes or dtypes between rank 0 and rank(s) {differ}; "
                               "every rank must build the same model (same model name, arguments and masks)")


def _compare(named: list[tuple[str, torch.Tensor]], what: str, hint: str) -> None:
    """Raise DistributedError on every rank unless ``named`` is bit-identical on all ranks."""
    if not is_active():
        return
    digests = [tensor_digest(t) for _, t in named]
    structure = _structure_digest(named)
    content = hashlib.sha256(b"".join(digests)).digest()
    gathered = _gather_bytes(structure + content)
    if all(g == gathered[0] for g in gathered):
        return
    if any(g[:32] != gathered[0][:32] for g in gathered):
        ranks = [r for r, g in enumerate(gathered) if g[:32] != gathered[0][:32]]
        raise DistributedError(f"the {what} differ in names or shapes between rank 0 and rank(s) {ranks}; {hint}")
    # Same structure, different values: find which tensors (a second, rare collective).
    per_tensor = _gather_bytes(b"".join(digests))
    sums = torch.tensor([float(t.detach().double().sum()) for _, t in named], dtype=torch.float64,
                        device=_comm_device())
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
