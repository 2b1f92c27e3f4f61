"""Failure propagation: a rank that fails tells the others through the rendezvous store, and a
watchdog thread on every rank ends its process as soon as it reads that (or loses the store).
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time

from prunelab.training.distributed.ranks import dist, state, true_rank

POLL_S = 0.25           # how often the watchdog asks the store whether a rank failed
LINGER_S = 3.0          # a failing store host waits this long at most for the others to read why
STORE_ERRORS_FATAL = 8  # consecutive unreachable-store polls (~2 s) after which the run is dead


def connect_store():
    """A client of the rendezvous store (torchrun's agent store, or rank 0's), one per thread:
    sharing one client between the watchdog and the main thread is not safe."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=datetime.timedelta(seconds=30), wait_for_workers=False)


def failure_key() -> str:
    # A torchrun restart reuses the agent's store: the key must not carry an old attempt's failure.
    return f"prunelab/failure/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{state.generation}"


class Watchdog(threading.Thread):
    """Polls the rendezvous store; when another rank reported a failure, or the store is gone
    (its host died), prints why and ends this process at once (``os._exit(1)``): the main thread
    may be blocked in a collective that would otherwise wait for the full timeout."""

    def __init__(self, key: str):
        super().__init__(name="prunelab-dist-watchdog", daemon=True)
        self.key = key
        self.halt = threading.Event()
        self.failed_here = False
        self.store = connect_store()

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
        sys.stderr.write(f"prunelab: rank {true_rank()} stopping: {why}\n")
        sys.stderr.flush()
        os._exit(1)


def failure_message() -> str | None:
    """The failure another rank reported, if any (None when none, or when not distributed)."""
    wd = state.watchdog
    if wd is None or state.store is None:
        return None
    try:
        if state.store.check([wd.key]):
            message = state.store.get(wd.key).decode("utf-8", "replace")
            if not message.startswith(f"rank {true_rank()} failed"):
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
    wd = state.watchdog
    if wd is None or state.store is None:
        return None
    wd.failed_here = True   # before publishing: this rank's own watchdog must not abort it
    text = error if isinstance(error, str) else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    mine = f"rank {true_rank()} failed: {text}"
    try:
        # compare_set keeps the first failure: of ranks failing together, the root cause is kept.
        first = state.store.compare_set(wd.key, "", mine).decode("utf-8", "replace")
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
        state.store.add(key + "/read", 1)
    except Exception:  # noqa: BLE001
        pass


def _linger(key: str) -> None:
    """When this process hosts the store (rank 0 launched without torchrun's agent), its exit takes
    the store down; wait (at most LINGER_S) until every other rank has read the failure, so they
    report its cause instead of a bare "connection closed"."""
    if true_rank() != 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return
    deadline = time.monotonic() + LINGER_S
    others = dist.get_world_size() - 1
    try:
        while state.store.add(key + "/read", 0) < others and time.monotonic() < deadline:
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


def excepthook(exc_type, exc, tb) -> None:
    """``sys.excepthook`` while distributed: report the failure to the other ranks first."""
    if state.watchdog is not None and not issubclass(exc_type, SystemExit):
        earlier = report_failure(exc)
        if earlier is not None:
            sys.stderr.write(f"prunelab: rank {true_rank()} stopping: {earlier} "
                             f"(here: {exc_type.__name__}: {exc})\n")
            return
    (state.previous_excepthook or sys.__excepthook__)(exc_type, exc, tb)
