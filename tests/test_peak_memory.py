"""PeakMemory: the peak memory of a block above its start (process RSS on the CPU, allocated tensors on CUDA)."""

import sys

import pytest
import torch

from prunelab.errors import ConfigError
from prunelab.utils import memory
from prunelab.utils.memory import PeakMemory

MB = 1_000_000
# Resident memory moves in pages and other small buffers come and go: a reading may fall short of
# the tensor's size by this much (far less than the sizes tested).
SLACK = 2 * MB
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def _touch(n_bytes: int) -> torch.Tensor:
    return torch.ones(n_bytes // 4, dtype=torch.float32)   # written, so every page is resident


@linux
def test_a_large_tensor_raises_the_reading_by_its_size_and_an_empty_block_reads_little():
    with PeakMemory("cpu") as big:
        x = _touch(200 * MB)
        del x
    with PeakMemory() as empty:
        pass
    assert big.kind == empty.kind == "rss"
    assert big.peak_bytes >= 200 * MB - SLACK
    # freed before the end, the tensor still sets the peak; a block that allocates nothing reads
    # far below it (the reset works: the earlier 200 MB peak is not seen again)
    assert empty.peak_bytes < 20 * MB


@linux
def test_nested_blocks_keep_the_outer_peak():
    with PeakMemory() as outer:
        x = _touch(150 * MB)
        del x
        with PeakMemory() as inner:   # its reset must not hide the outer block's peak
            y = _touch(40 * MB)
            del y
    assert 40 * MB - SLACK <= inner.peak_bytes < 100 * MB
    assert outer.peak_bytes >= 150 * MB - SLACK
    assert memory._OPEN == []


@linux
def test_without_a_reset_the_reading_is_exact_only_for_a_new_lifetime_peak(monkeypatch):
    monkeypatch.setattr(memory, "_reset_process_peak", lambda: False)
    with PeakMemory() as nothing_new:
        pass
    assert nothing_new.peak_bytes is None   # hidden under the process's earlier peaks
    hwm = memory._proc_status_bytes("VmHWM")
    rss = memory._proc_status_bytes("VmRSS")
    with PeakMemory() as new_peak:
        x = _touch(hwm - rss + 100 * MB)   # sure to pass the lifetime peak
        del x
    assert new_peak.peak_bytes >= hwm - rss + 100 * MB - SLACK


def test_unmeasurable_places_read_none(monkeypatch):
    with PeakMemory("meta") as meta:
        torch.ones(10, device="meta")
    assert (meta.kind, meta.peak_bytes) == (None, None)
    monkeypatch.setattr(memory, "PROC_STATUS", memory.Path("/nonexistent/status"))
    with PeakMemory("cpu") as no_proc:
        _touch(MB)
    assert (no_proc.kind, no_proc.peak_bytes) == (None, None)
    with pytest.raises(ConfigError, match="unknown device"):
        PeakMemory("not-a-device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reading_counts_allocated_tensors():
    with PeakMemory("cuda") as peak:
        x = torch.ones(100 * MB // 4, device="cuda")
        del x
    assert peak.kind == "cuda" and 100 * MB <= peak.peak_bytes < 110 * MB
