"""Latency measurement: interleaved repetitions, medians, fixed thread count.

Candidates are timed round-robin (rep 1 of A, rep 1 of B, ..., rep 2 of A, ...) so that a burst
of load from other processes hits every candidate alike, and the median is reported because it
ignores the bursts that remain. Garbage collection is off while timing.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping

import torch

__all__ = ["interleaved", "threads"]


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(count)`` (``None``: leave it), then restore."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def interleaved(fns: Mapping[str, Callable[[], object]], warmup: int = 10, reps: int = 50) -> dict[str, dict]:
    """Time every callable ``reps`` times, interleaved, after ``warmup`` untimed rounds.

    Args:
        fns: name -> zero-argument callable.
        warmup: untimed rounds first (caches, allocator, lazily built descriptors).
        reps: timed rounds.

    Returns:
        name -> ``{"median_us", "p10_us", "p90_us", "reps"}`` (microseconds per call).
    """
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            for _ in range(max(0, warmup)):
                for n in names:
                    fns[n]()
            for _ in range(max(1, reps)):
                for n in names:
                    start = time.perf_counter_ns()
                    fns[n]()
                    samples[n].append((time.perf_counter_ns() - start) / 1e3)
    finally:
        if enabled:
            gc.enable()
    out = {}
    for n, values in samples.items():
        values.sort()
        k = len(values)
        out[n] = {"median_us": round(statistics.median(values), 2), "p10_us": round(values[k // 10], 2),
                  "p90_us": round(values[min(k - 1, (9 * k) // 10)], 2), "reps": k}
    return out
