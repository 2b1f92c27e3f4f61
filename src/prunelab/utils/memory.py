"""How much memory is free, a clear error for what will not fit in it, and how much a block of
code took at its peak (:class:`PeakMemory`).

Allocating more than the machine has does not always fail at once: Linux hands out memory it does
not have and kills the process when it is touched. So prunelab compares what a model or a data set
needs with what is available *before* allocating it, and turns an allocation failure that still
happens into the same one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunelab.errors import ConfigError, PrunelabError

#: where the memory limit and usage of this process's cgroup (v2) are, when it has one.
CGROUP = Path("/sys/fs/cgroup")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((CGROUP / "memory.current").read_text()), 0)
    except (OSError, ValueError):
        return None


def available_bytes() -> int | None:
    """Bytes that new allocations can take now.

    Returns:
        The system's available memory (``MemAvailable``), or less when this process's cgroup is
        limited; None when neither can be read (then nothing is refused).

    Example:
        >>> available_bytes() > 0
        True
    """
    known = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    return min(known) if known else None


def format_bytes(n: int | float) -> str:
    """``n`` bytes for people: ``"512 B"``, ``"3.1 MB"``, ``"2.4 GB"`` (powers of 1000).

    Args:
        n: a number of bytes.

    Returns:
        The number with one decimal and its unit.

    Example:
        >>> format_bytes(2_400_000_000)
        '2.4 GB'
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_fits(needed: int, what: str, error: type[PrunelabError], hint: str) -> None:
    """Raise ``error`` when ``needed`` bytes exceed the memory available now.

    Args:
        needed: bytes the allocation will take.
        what: what is allocated, for the message (``"model 'mlp'"``).
        error: the :class:`PrunelabError` subclass to raise (ModelError, DataError...).
        hint: what to do instead, ending the message.

    Raises:
        error: ``"<what> does not fit in memory: it needs 40.0 GB, 22.1 GB is available; <hint>"``.

    Example:
        >>> check_fits(4 * 10**12, "model 'mlp'", ModelError, "use a smaller model")   # doctest: +SKIP
        Traceback (most recent call last):
        prunelab.errors.ModelError: model 'mlp' does not fit in memory: it needs 4.0 TB, ...
    """
    available = available_bytes()
    if available is not None and needed > available:
        raise error(f"{what} does not fit in memory: it needs {format_bytes(needed)}, "
                    f"{format_bytes(available)} is available; {hint}")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure.

    Args:
        exc: any exception.

    Returns:
        True for ``MemoryError``, ``torch.OutOfMemoryError`` (CUDA) and the ``RuntimeError`` of
        torch's CPU allocator ("not enough memory", "can't allocate memory").

    Example:
        >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB"))
        True
    """
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":   # torch.OutOfMemoryError, without importing torch
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("not enough memory" in text or "out of memory" in text
                                               or "can't allocate memory" in text)


#: where Linux keeps this process's memory counters, and the file that resets its peak (VmHWM).
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
# Open PeakMemory readers of this process, innermost last: resetting the peak counter for an inner
# one must not lose the peak an outer one has seen so far.
_OPEN: list = []


def _proc_status_bytes(key: str) -> int | None:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_process_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open(PROC_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak memory a block of code took above what was in use when it started.

    On the CPU the reading is the process's peak resident memory (Linux ``VmHWM``) during the
    block minus its resident memory (``VmRSS``) at the start: the peak counter is reset on entry
    by writing ``5`` to ``/proc/self/clear_refs``. Where that is not allowed the reading is still
    exact when the block set a new lifetime peak (``VmHWM`` grew), and None when it did not (the
    block's peak is then hidden under an earlier one). On CUDA it is
    ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` at the start (tensors only,
    not the caching allocator's reserve), after ``reset_peak_memory_stats``. The reading is None
    on other devices and systems (macOS, Windows) and where the counters cannot be read.

    Resident memory counts the whole process: other threads' allocations during the block count
    too, and memory freed before the block but kept by the allocator can be reused without showing.
    Nested blocks are measured correctly (an inner reset first hands the peak seen so far to the
    outer blocks).

    Args:
        device: where the measured work allocates: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``
            or a :class:`torch.device`.

    Attributes:
        peak_bytes: the reading after the block (None before it ends or where not measurable).
        kind: ``"rss"`` (process resident memory), ``"cuda"`` (allocated tensor memory) or None.

    Example:
        >>> with PeakMemory("cpu") as peak:
        ...     x = torch.ones(25_000_000)   # 100 MB
        >>> peak.peak_bytes >= 99_000_000   # resident pages: a few kB may come and go
        True
    """

    def __init__(self, device=None):
        self.device = _device_of(device)
        self.kind = "cuda" if self.device.type == "cuda" else ("rss" if self.device.type == "cpu" else None)
        self.peak_bytes: int | None = None
        self._start = self._seen = None
        self._reset = False

    def _read_peak(self) -> int | None:
        if self.kind == "cuda":
            import torch

            return int(torch.cuda.max_memory_allocated(self.device))
        return _proc_status_bytes("VmHWM")

    def _restart_peak(self) -> bool:
        for outer in _OPEN:   # the counter is shared: hand its peak so far to every open reader
            if outer.kind == self.kind and outer._reset:
                peak = outer._read_peak()
                if peak is not None:
                    outer._seen = max(outer._seen or 0, peak)
        if self.kind == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        return _reset_process_peak()

    def __enter__(self) -> "PeakMemory":
        if self.kind == "cuda":
            import torch

            if not torch.cuda.is_available():
                self.kind = None
                return self
            torch.cuda.synchronize(self.device)
            self._start = int(torch.cuda.memory_allocated(self.device))
        elif self.kind == "rss":
            self._start = _proc_status_bytes("VmRSS")
            if self._start is None:
                self.kind = None
                return self
        else:
            return self
        self._reset = self._restart_peak()
        self._seen = None if self._reset else self._read_peak()
        _OPEN.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None or self.kind is None:
            return
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        _OPEN.remove(self)
        peak = self._read_peak()
        if peak is None:
            return
        if self._reset:
            peak = max(peak, self._seen or 0)
        elif peak <= (self._seen or 0):
            return    # no new lifetime peak: this block's own peak cannot be told apart
        self.peak_bytes = max(peak - self._start, 0)


def _device_of(device):
    import torch

    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; pass e.g. 'cpu', 'cuda' or a torch.device") from None
