"""How much memory is free, and a clear error for what will not fit in it.

Allocating more than the machine has does not always fail at once: Linux hands out memory it does
not have and kills the process when it is touched. So prunelab compares what a model or a data set
needs with what is available *before* allocating it, and turns an allocation failure that still
happens into the same one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunelab.errors import PrunelabError

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
