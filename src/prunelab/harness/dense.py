"""The data and the shared dense model of a run: loaded once per process, trained once per seed.

Every method of a sweep starts from the same trained dense model (Blalock et al. 2020, "What is the
State of Neural Network Pruning?": compare methods from one trained network under one budget). It
is cached on disk per data set, model, dense budget and seed
(``OUTDIR/dense/<data>-<model>-s<seed>-<hash>.safetensors``), so a second method, a second suite or
a resumed sweep does not train it again.

Under ``torchrun`` rank 0 alone reads and writes the cache and shares what it found with the other
ranks (see :mod:`prunelab.training.distributed`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import torch

from prunelab import data as data_mod
from prunelab import models
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.errors import CheckpointError
from prunelab.harness.spec import SPLITS, RunSpec, data_option_defaults, stable_hash, canonical_options
from prunelab.training import distributed
from prunelab.training.loop import evaluate, train

_DATA_CACHE: dict = {}


def load_data(spec: RunSpec, data_dir=None):
    """The spec's data set, loaded once per process (keyed by name, options and data_dir)."""
    options = canonical_options(spec.data_kwargs, data_option_defaults(), "data option", allow_unknown=True)
    key = (spec.dataset, json.dumps(options, sort_keys=True), str(data_dir))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one data set in memory at a time: sweeps are grouped by data set
        _DATA_CACHE[key] = data_mod.load(spec.dataset, data_dir=data_dir, **spec.data_kwargs)
    return _DATA_CACHE[key]


def dense_key(spec: RunSpec) -> dict:
    """What decides the dense model: data set and options, model and kwargs, dense budget, seed."""
    c = spec.canonical()
    return {"dataset": c["dataset"], "data_kwargs": c.get("data_kwargs", {}), "model": c["model"],
            "model_kwargs": c.get("model_kwargs", {}), "dense": c.get("dense", {}), "seed": c.get("seed", 0)}


def dense_path(spec: RunSpec, outdir) -> Path:
    """Where the dense model of ``spec`` is cached: ``OUTDIR/dense/<data>-<model>-s<seed>-<hash>.safetensors``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{spec.dataset}-{spec.model}-s{spec.seed}")
    return Path(outdir) / "dense" / f"{slug}-{stable_hash(dense_key(spec))[:16]}.safetensors"


def model_factory(spec: RunSpec, dataset, device: torch.device | None = None) -> Callable[[], torch.nn.Module]:
    """A function returning a fresh model initialised from ``spec.seed`` (same weights each call).

    Args:
        spec: the run spec (model, its options, seed).
        dataset: the loaded data set (input shape, classes).
        device: put every model there (None: leave it on the CPU). Models are initialised on the
            CPU and then moved, so one seed gives the same initial weights on every device.
    """

    def make():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = models.create(spec.model, tuple(dataset.in_shape), dataset.num_classes, **spec.model_kwargs)
        return model if device is None else model.to(device)

    return make


def split_scores(model, dataset, batch_size) -> dict:
    """``{"val": {"top1", "top5", "loss"}, "test": {...}}`` of ``model`` on ``dataset``."""
    out = {}
    for split in SPLITS:
        r = evaluate(model, getattr(dataset, split), batch_size)
        out[split] = {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"]}
    return out


def get_dense(spec: RunSpec, dataset, outdir, log=None, device: torch.device | None = None
              ) -> tuple[torch.nn.Module, dict]:
    """The trained dense model of ``spec``, from the cache or trained now and cached.

    Args:
        spec: the run spec (its dense key decides the cache entry).
        dataset: the loaded data set.
        outdir: the output directory (cache under ``outdir/dense``).
        log: progress lines.
        device: train it there, and return it there (None: the CPU). The cache is
            device-independent (checkpoints hold CPU tensors).

    Returns:
        ``(model, info)`` with info ``seconds`` (original training time), ``cached``, ``path``,
        ``scores`` (val/test top-1, top-5, loss) and ``history``.
    """
    log = log or (lambda msg: None)
    path = dense_path(spec, outdir)
    key = dense_key(spec)
    factory = model_factory(spec, dataset, device)
    cached = None
    # Under torchrun rank 0 alone reads the cache (other ranks may not see its files) and shares it.
    if distributed.is_main() and path.exists():
        try:
            ckpt = load_checkpoint(path, factory())   # the factory's model is on the device already
            extra = ckpt.meta.get("extra", {})
            if extra.get("dense_key") == key:
                cached = ckpt.model, {"seconds": extra["seconds"], "cached": True, "path": str(path),
                                      "scores": extra["scores"], "history": extra.get("history", [])}
            else:
                log(f"dense cache {path.name} does not match this spec; retraining it")
        except CheckpointError as exc:
            log(f"dense cache unreadable ({exc}); retraining it")
    if distributed.is_active():
        info = distributed.broadcast_json(cached[1] if cached is not None else None)
        if info is not None:
            model = cached[0] if cached is not None else factory()
            distributed.broadcast_module(model)
            return model, info
    elif cached is not None:
        return cached
    model = factory()
    config = spec.dense_config()
    log(f"training dense {spec.model} on {spec.dataset}, seed {spec.seed}, {config.epochs} epochs")
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # dropout
        state = train(model, dataset, config, progress=False, select_best=len(dataset.val) > 0, label="dense",
                      device=device)
    seconds = time.perf_counter() - t0
    scores = split_scores(model, dataset, config.eval_batch_size)
    extra = {"dense_key": key, "seconds": seconds, "scores": scores, "history": state.history}
    # save_checkpoint writes a temp file then os.replace()s it: a kill leaves no half file.
    if distributed.is_main():
        save_checkpoint(path, model, metrics={"val_top1": scores["val"]["top1"], "test_top1": scores["test"]["top1"]},
                        extra=extra)
    return model, {"seconds": seconds, "cached": False, "path": str(path), "scores": scores,
                   "history": state.history}


def calibration_split(dataset, size: int, seed: int):
    """A seeded random subset of ``size`` training samples (the whole set when smaller)."""
    n = len(dataset.train)
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=generator)[: min(size, n)]
    return type(dataset.train)(dataset.train.x[idx], dataset.train.y[idx])

