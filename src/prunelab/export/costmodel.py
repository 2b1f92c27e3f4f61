"""A latency model of dense and sparse layers, calibrated once per machine, for :func:`to_sparse`.

Timing every layer at conversion is exact but slow (minutes for a ResNet at batch 64). Instead
each layer's latency is predicted as ``overhead + multiply-accumulates / rate``: dense layers by
their full MACs, sparse layers by their non-zero MACs, with a rate and an overhead per layer kind
(Linear, Conv2d), per batch class (at most 4 samples: "small", else "large") and per backend,
measured on a few reference layers with 90 % of their weights zero. The calibration takes about
a second and is cached as JSON in ``$PRUNELAB_CACHE/costmodel`` (beside the kernel builds),
keyed by a machine fingerprint: the CPU model and flags, the thread count, the torch version and
the kernel source. :func:`to_sparse` times a layer (briefly) only where the predicted speedup is
close to 1.

Example:
    >>> model = costmodel.load("native", threads=1)
    >>> model.predict("conv", batch=64, macs=..., nnz_macs=...)
    {'dense_us': 812.0, 'sparse_us': 190.3, 'speedup': 4.27}
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.export import native, timing
from prunelab.export.modules import SparseConv2d, SparseLinear
from prunelab.utils.io import atomic_path

__all__ = ["CostModel", "load", "forget", "fingerprint", "calibrate", "layer_macs", "cache_folder", "VERSION"]

#: Bumped whenever the calibration or the model changes, so that old caches are not reused.
VERSION = 2
SMALL_BATCH = 4
_SPARSITY = 0.9
_lock = threading.Lock()
_loaded: dict[str, "CostModel"] = {}


def fingerprint(backend: str, threads: int) -> dict:
    """What the calibration depends on: CPU, threads, torch, kernel source, backend."""
    return {"version": VERSION, "backend": backend, "threads": int(threads), "torch": torch.__version__,
            "cpu": hashlib.sha256(native._cpu_signature().encode()).hexdigest()[:16],
            "kernel": hashlib.sha256(native.kernel_source().encode()).hexdigest()[:16] if backend == "native" else ""}


def _key(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:20]


def _cache_file(fp: dict) -> Path:
    return native._cache_dir().parent / "costmodel" / f"costmodel_{_key(fp)}.json"


def layer_macs(module: nn.Module, input_shape: tuple, batch: int) -> tuple[int, int]:
    """(dense, non-zero) multiply-accumulates of ``module`` on a batch of ``batch`` inputs of
    ``input_shape`` (one sample's shape, e.g. ``(C, H, W)``; a Linear's leading dimensions count
    as extra rows). The weight's zeros are what the sparse version skips."""
    weight = module.weight.detach()
    nnz = int(weight.count_nonzero())
    if isinstance(module, nn.Conv2d):
        with torch.no_grad():
            probe = nn.functional.conv2d(torch.zeros(1, *input_shape[-3:], dtype=weight.dtype, device=weight.device),
                                         torch.zeros_like(weight), None, module.stride, module.padding,
                                         module.dilation, module.groups)
        positions = probe.shape[-1] * probe.shape[-2] * batch
    else:
        positions = batch
        for size in input_shape[:-1]:
            positions *= int(size)
    return positions * weight.numel(), positions * nnz


class CostModel:
    """Predicted latencies from calibrated rates (MACs per µs) and per-call overheads (µs).

    Args:
        params: ``{kind: {batch class: {"dense_rate", "sparse_rate", "dense_us0", "sparse_us0"}}}``.
        fp: the fingerprint it was calibrated under.
    """

    def __init__(self, params: dict, fp: dict):
        self.params, self.fingerprint = params, fp

    def predict(self, kind: str, batch: int, macs: int, nnz_macs: int) -> dict:
        """Predicted ``dense_us``, ``sparse_us`` and their ratio ``speedup`` for one layer.

        Args:
            kind: ``"conv"`` or ``"linear"``.
            batch: samples per call.
            macs: the dense layer's multiply-accumulates per call; nnz_macs: the non-zero ones.

        Returns:
            dict with ``dense_us``, ``sparse_us``, ``speedup``.
        """
        p = self.params[kind]["small" if batch <= SMALL_BATCH else "large"]
        dense = p["dense_us0"] + macs / p["dense_rate"]
        sparse = p["sparse_us0"] + nnz_macs / p["sparse_rate"]
        return {"dense_us": round(dense, 2), "sparse_us": round(sparse, 2), "speedup": round(dense / sparse, 3)}


def _random_sparse(module: nn.Module, generator: torch.Generator) -> nn.Module:
    with torch.no_grad():
        keep = torch.rand(module.weight.shape, generator=generator) >= _SPARSITY
        module.weight.mul_(keep)
    return module.eval()


def _pair(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, reps: int) -> tuple[float, float]:
    timed = timing.interleaved({"dense": lambda: dense(x), "sparse": lambda: sparse(x)}, warmup=2, reps=reps)
    return timed["dense"]["median_us"], timed["sparse"]["median_us"]


def calibrate(backend: str, threads: int) -> CostModel:
    """Measure the rates and overheads on reference layers (about a second); not cached.

    Args:
        backend: the sparse backend to model (``"native"`` or ``"torch"``).
        threads: torch threads and kernel threads during the measurement.

    Returns:
        A :class:`CostModel`.
    """
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    references = {
        "conv": (lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 16, 16), {"small": 1, "large": 16},
                 lambda: nn.Conv2d(4, 4, 3, padding=1), (4, 4, 4)),
        "linear": (lambda: nn.Linear(1024, 1024), (1024,), {"small": 1, "large": 64},
                   lambda: nn.Linear(8, 8), (8,)),
    }
    params: dict = {}
    with timing.threads(threads):
        for kind, (make, shape, batches, make_tiny, tiny_shape) in references.items():
            layer, tiny = _random_sparse(make(), g), _random_sparse(make_tiny(), g)
            wrap = SparseConv2d if kind == "conv" else SparseLinear
            sparse, sparse_tiny = wrap(layer, backend=backend), wrap(tiny, backend=backend)
            params[kind] = {}
            for label, batch in batches.items():
                x = torch.randn(batch, *shape, generator=g)
                xt = torch.randn(batch, *tiny_shape, generator=g)
                d0, s0 = _pair(tiny, sparse_tiny, xt, 15)
                d, s = _pair(layer, sparse, x, 7)
                macs, nnz_macs = layer_macs(layer, shape, batch)
                params[kind][label] = {"dense_us0": d0, "sparse_us0": s0,
                                       "dense_rate": macs / max(d - d0, 0.05 * d),
                                       "sparse_rate": nnz_macs / max(s - s0, 0.05 * s)}
    return CostModel(params, fingerprint(backend, threads))


def load(backend: str, threads: int, *, refresh: bool = False) -> CostModel:
    """The calibrated model for this machine: from memory, else from the cache file whose
    fingerprint matches, else calibrated now and cached (written atomically).

    Args:
        backend: ``"native"`` or ``"torch"``.
        threads: thread count the layers will run with.
        refresh: calibrate again even if a cached model exists.

    Returns:
        A :class:`CostModel`.
    """
    fp = fingerprint(backend, threads)
    key = _key(fp)
    with _lock:
        if not refresh and key in _loaded:
            return _loaded[key]
        path = _cache_file(fp)
        model = None
        if not refresh and path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("fingerprint") == fp:
                    model = CostModel(data["params"], fp)
            except (OSError, ValueError, KeyError):
                model = None   # unreadable or from another version: calibrate again
        if model is None:
            model = calibrate(backend, threads)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as partial:
                    Path(partial).write_text(json.dumps({"fingerprint": fp, "params": model.params}, indent=1))
            except (OSError, PrunelabError):
                pass   # a read-only cache only costs a calibration per process
        _loaded[key] = model
        return model


def forget() -> None:
    """Drop the in-process models (the next :func:`load` reads the cache file or calibrates)."""
    with _lock:
        _loaded.clear()


def cache_folder() -> Path:
    """Where calibrations are cached."""
    return native._cache_dir().parent / "costmodel"
