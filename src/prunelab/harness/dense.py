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
from prunelab.core.metrics import lm_scores
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


def token_info(dataset) -> dict | None:
    """``dataset.info["tokens"]`` (what a token data set says of its tokens), None for other data."""
    info = getattr(dataset, "info", None)
    tokens = info.get("tokens") if isinstance(info, dict) else None
    return tokens if isinstance(tokens, dict) else None


def score_names(dataset) -> tuple[str, ...]:
    """The scores of a split: ``top1``, ``top5``, ``loss``, and ``ppl``, ``bpb`` for token data."""
    return ("top1", "top5", "loss") + (("ppl", "bpb") if token_info(dataset) is not None else ())


def with_lm_scores(scores: dict | None, dataset) -> dict | None:
    """``scores`` (``{split: {"loss", ...}}``) with ``ppl`` and ``bpb`` added from each split's
    loss when ``dataset`` is token data (:func:`prunelab.core.metrics.lm_scores`); other data, or
    None, unchanged. Recomputing is harmless: the values follow from the loss alone."""
    tokens = token_info(dataset)
    if scores is None or tokens is None:
        return scores
    per_token = tokens.get("bytes_per_token", 1.0)
    return {split: (dict(block, **lm_scores(block.get("loss"), per_token)) if isinstance(block, dict) else block)
            for split, block in scores.items()}


def split_scores(model, dataset, batch_size) -> dict:
    """``{"val": {"top1", "top5", "loss"}, "test": {...}}`` of ``model`` on ``dataset``; for token
    data (``dataset.info["tokens"]``) each split also has ``ppl`` and ``bpb`` (bits per byte)."""
    out = {}
    for split in SPLITS:
        r = evaluate(model, getattr(dataset, split), batch_size)
        out[split] = {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"]}
    return with_lm_scores(out, dataset)


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
        ``scores`` (val/test top-1, top-5, loss; ppl and bpb for token data) and ``history``.
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
                # A cache written before ppl/bpb were recorded still gives them (they follow from the loss).
                cached = ckpt.model, {"seconds": extra["seconds"], "cached": True, "path": str(path),
                                      "scores": with_lm_scores(extra["scores"], dataset),
                                      "history": extra.get("history", [])}
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
        metrics = {"val_top1": scores["val"]["top1"], "test_top1": scores["test"]["top1"]}
        if token_info(dataset) is not None:
            metrics.update({f"{split}_{name}": scores[split][name] for split in SPLITS for name in ("bpb", "ppl")})
        save_checkpoint(path, model, metrics=metrics, extra=extra)
    return model, {"seconds": seconds, "cached": False, "path": str(path), "scores": scores,
                   "history": state.history}


def calibration_split(dataset, size: int, seed: int):
    """A seeded random subset of ``size`` training samples (the whole set when smaller)."""
    n = len(dataset.train)
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=generator)[: min(size, n)]
    return type(dataset.train)(dataset.train.x[idx], dataset.train.y[idx])

