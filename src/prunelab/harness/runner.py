"""The experiment harness: ``RunSpec`` → :func:`run` → ``RunResult``, and :func:`sweep` over many.

The harness follows the comparison protocol of Blalock et al. 2020 ("What is the State of Neural
Network Pruning?"): every method of a sweep starts from the same trained dense model (cached on
disk per data set, model, dense budget and seed, :mod:`prunelab.harness.dense`), gets the same
retraining budget, and is scored on the validation and test splits; the validation split alone is
used to choose anything (the epoch kept after training).

* one-shot methods: the harness prunes ``prune(dense copy, None, target, calib)`` (starting masks
  over the weights of ``spec.prunable`` instead of None when it restricts them), records the
  prune phase's wall time and peak memory (``info["prune_peak_bytes"]``,
  :class:`~prunelab.utils.memory.PeakMemory`), evaluates, retrains with the mask fixed for
  ``retrain`` epochs and evaluates again;
* iterative and training-time methods run their own loop through ``run(MethodContext)``.

Under ``torchrun`` (``prunelab.training.distributed`` initialised with several ranks) every rank calls
:func:`sweep` / :func:`run` with the same specs and trains data-parallel; rank 0 alone holds the
result store (the others pass a :class:`prunelab.harness.store.FollowerStore`) and takes every decision
that depends on files (which runs are done, whether the dense cache is usable), broadcasting it;
rank 0 alone writes the store, the dense cache and ``errors.log``. Masks computed by a one-shot
method are rank 0's, broadcast; masks and weights are checked identical across ranks after every
method. A failed run ends the sweep on every rank (a run cannot be skipped on one rank only).

The specs and results themselves live in :mod:`prunelab.harness.spec`; their names are importable
from here too.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from prunelab import methods
from prunelab.core.masks import Masks
from prunelab.core.metrics import summary as metrics_summary
from prunelab.errors import ConfigError, PrunelabError
from prunelab.harness.dense import (  # noqa: F401  (re-exported: the harness's public names)
    calibration_split,
    dense_key,
    dense_path,
    get_dense,
    load_data,
    model_factory,
    score_names,
    split_scores,
    token_info,
    with_lm_scores,
)
from prunelab.harness.spec import (  # noqa: F401  (re-exported: the harness's public names)
    PHASES,
    SPLITS,
    RunResult,
    RunSpec,
    canonical_options,
    method_class,
    stable_hash,
)
from prunelab.methods.base import MethodContext
from prunelab.training import distributed
from prunelab.training.loop import train
from prunelab.utils.memory import PeakMemory

__all__ = [
    "RunSpec", "RunResult", "SweepReport", "run", "sweep", "validate_all", "canonical_options", "method_class",
    "stable_hash", "load_data", "dense_key", "dense_path", "get_dense", "model_factory", "calibration_split",
    "split_scores", "score_names", "token_info", "with_lm_scores", "git_sha", "PHASES", "SPLITS", "SUMMARY_KEYS",
    "run_device",
]

SUMMARY_KEYS = (
    "params_total", "params_nonzero", "prunable", "prunable_nonzero", "sparsity",
    "compression_ratio", "compression_ratio_all", "size_bytes", "size_nonzero_bytes",
    "flops", "flops_nonzero", "theoretical_speedup",
)


# --------------------------------------------------------------------------- provenance

_GIT_SHA: list = []


def git_sha() -> str | None:
    """The commit of the prunelab source tree, or None outside a git checkout."""
    if not _GIT_SHA:
        sha = None
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                 text=True, timeout=5)
            if out.returncode == 0:
                sha = out.stdout.strip()
                dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                       cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
                if dirty.returncode == 0 and dirty.stdout.strip():
                    sha += "+dirty"
        except (OSError, subprocess.SubprocessError):
            sha = None
        _GIT_SHA.append(sha)
    return _GIT_SHA[0]


def _provenance() -> dict:
    try:
        from importlib.metadata import version

        release = version("prunelab")
    except Exception:  # not installed (PYTHONPATH checkout)
        release = None
    return {"git_sha": git_sha(), "prunelab": release, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


# --------------------------------------------------------------------------- the harness

def run_device(device=None) -> torch.device | None:
    """The device a run computes on: ``device`` as a :class:`torch.device`; when None, the rank's
    device under ``torchrun`` (``cuda:LOCAL_RANK`` under NCCL) and otherwise None (the CPU, where
    models are created).

    Raises:
        ConfigError: ``device`` names no device.
    """
    if device is None:
        return distributed.device() if distributed.is_active() else None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; pass e.g. 'cpu', 'cuda', 'cuda:1' or a torch.device") from None


def _on_device(split, device):
    """``split`` (a ``Split``) with its tensors on ``device`` (itself when ``device`` is None)."""
    if device is None or split is None:
        return split
    return type(split)(split.x.to(device), split.y.to(device))


def run(spec: RunSpec, store, *, dataset=None, data_dir=None, log: Callable[[str], None] | None = None,
        device=None) -> RunResult:
    """Run ``spec`` (or return its stored result) and record it in ``store``.

    Args:
        spec: what to run.
        store: a :class:`prunelab.harness.store.Store`; a completed run is returned from it, a new
            one is written to it in one transaction when complete. The dense model is cached
            under ``store.outdir / "dense"``.
        dataset: the loaded data set (loaded from ``spec`` when omitted).
        data_dir: where to look for data files.
        log: receives progress lines (silent when omitted).
        device: where the whole run computes: dense training, the method, retraining and
            evaluation (a :class:`torch.device` or its name; default: the CPU, or the rank's GPU
            under ``torchrun`` with NCCL). It is an execution option, not part of the spec: the
            hash, and so the stored result a rerun finds, do not depend on it; the result's
            ``info["device"]`` records it.

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigError: the spec is invalid (checked before anything trains), or ``device`` is.

    Under ``torchrun`` call it on every rank with the same spec; ``store`` is the real store on
    rank 0 and may be a :class:`prunelab.harness.store.FollowerStore` elsewhere. Rank 0 decides whether the
    run is stored already and writes the result; every rank returns rank 0's result.
    """
    spec.validate()
    device = run_device(device)
    done = store.get(spec.hash) if distributed.is_main() else None
    if distributed.is_active():
        shared = distributed.broadcast_json(done.to_dict(with_traces=True) if done is not None else None)
        if shared is not None:
            return done if done is not None else RunResult.from_dict(shared)
    elif done is not None:
        return done
    log = log or (lambda msg: None)
    dataset = dataset if dataset is not None else load_data(spec, data_dir)
    dense, dense_info = get_dense(spec, dataset, store.outdir, log, device=device)
    method = methods.create(spec.method, **spec.hparams)
    family = getattr(method, "family", "oneshot")
    retrain_config = spec.retrain_config()
    scores = {"dense": dense_info["scores"], "pruned": None}
    traces: dict = {}
    info: dict = {}
    phase_times = {"dense_train": dense_info["seconds"]}
    if family == "oneshot":
        model = copy.deepcopy(dense)
        calib = _on_device(calibration_split(dataset, spec.calib_size, spec.seed), device)
        rule = spec.prunable_rule()
        # A restricted run starts from masks over the allowed weights only: the method prunes those.
        start = None if rule is None else Masks.ones(model, rule=rule)
        peak = PeakMemory(device)
        t0 = time.perf_counter()
        with peak:
            masks = method.prune(model, start, float(spec.target), calib)
        if start is not None:   # the weights left out stay dense, and count in the run's sparsity
            masks = Masks({**dict(Masks.ones(model).items()), **dict(masks.items())})
        if distributed.is_active():
            # Every rank pruned; rank 0's masks and weights (some methods rewrite them) are kept,
            # so a method that is not bit-reproducible across processes cannot split the ranks.
            masks = distributed.broadcast_masks(masks)
            distributed.broadcast_module(model)
        masks.apply(model)
        phase_times["prune"] = time.perf_counter() - t0
        info.update(prune_peak_bytes=peak.peak_bytes, prune_peak_kind=peak.kind)
        scores["pruned"] = split_scores(model, dataset, retrain_config.eval_batch_size)
        phase_times["retrain"] = 0.0
        if retrain_config.epochs > 0:
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed)
                state = train(model, dataset, retrain_config, masks=masks, progress=False,
                              select_best=len(dataset.val) > 0, label="retrain", device=device)
            phase_times["retrain"] = time.perf_counter() - t0
            traces["retrain"] = [_with_val_bpb(dict(r, sparsity=masks.sparsity()), dataset) for r in state.history]
    else:
        ctx = MethodContext(
            data=dataset, model_factory=model_factory(spec, dataset, device),
            init_state={k: v.clone() for k, v in model_factory(spec, dataset, device)().state_dict().items()},
            dense_model=copy.deepcopy(dense), target=float(spec.target), train_config=spec.dense_config(),
            retrain_config=retrain_config, seed=spec.seed, log=log, device=device,
        )
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            outcome = method.run(ctx)
        elapsed = time.perf_counter() - t0
        model, masks = outcome.model, outcome.masks
        traces = dict(outcome.traces or {})
        info.update(outcome.info or {})
        reported = {k: float(v) for k, v in (outcome.phase_times or {}).items()}
        # Time the method did not attribute to a phase still counts, as "other".
        other = elapsed - sum(reported.values())
        phase_times.update(reported)
        if other > 0.05 * elapsed and other > 0.01:
            phase_times["other"] = other
        if isinstance(info.get("pruned_scores"), dict):
            scores["pruned"] = with_lm_scores(info.pop("pruned_scores"), dataset)
        if distributed.is_active() and distributed.checks_enabled():
            distributed.assert_masks_equal_across_ranks(masks)
            distributed.assert_params_equal_across_ranks(model)
    scores["final"] = split_scores(model, dataset, retrain_config.eval_batch_size)
    s = metrics_summary(model, masks, tuple(dataset.in_shape))
    metrics = {k: s.get(k) for k in SUMMARY_KEYS}
    metrics["target"] = float(spec.target)
    metrics["num_classes"] = dataset.num_classes
    names = score_names(dataset)   # token data adds ppl and bpb
    scores["dense"] = with_lm_scores(scores["dense"], dataset)
    for phase in PHASES:
        for split in SPLITS:
            for name in names:
                block = scores.get(phase)
                metrics[f"{phase}_{split}_{name}"] = block[split].get(name) if block else None
    for phase, seconds in phase_times.items():
        metrics[f"time_{phase}"] = seconds
    metrics["time_total"] = sum(v for k, v in phase_times.items() if k != "dense_train")
    info.update(counted=s.get("counted"), dense_path=dense_info["path"], data_source=getattr(dataset, "source", None),
                device=str(device or "cpu"), **_provenance())
    tokens = (getattr(dataset, "info", None) or {}).get("tokens")
    if tokens:  # token data say exactly which text they are (the manifest's hash and the bytes per split)
        info["data_tokens"] = {k: tokens[k] for k in ("manifest_hash", "bytes", "root", "split", "python", "unit")
                               if k in tokens}
    result = RunResult(spec=spec, hash=spec.hash, family=family, metrics=metrics, phase_times=phase_times,
                       dense_cached=dense_info["cached"], traces=traces, layers=s.get("layers", []), info=info)
    if distributed.is_main():
        store.put(result)
    if distributed.is_active():
        # Timings (and, across machines, possibly the last bits of a score) differ between ranks:
        # every rank returns what rank 0 stored.
        shared = distributed.broadcast_json(result.to_dict(with_traces=True) if distributed.is_main() else None)
        if not distributed.is_main():
            result = RunResult.from_dict(shared)
    return result


def _with_val_bpb(row: dict, dataset) -> dict:
    """A retraining history row with ``val_bpb`` beside ``val_loss`` for token data (unchanged otherwise)."""
    if token_info(dataset) is None or not isinstance(row.get("val_loss"), (int, float)):
        return row
    return dict(row, val_bpb=with_lm_scores({"val": {"loss": row["val_loss"]}}, dataset)["val"]["bpb"])


@dataclass
class SweepReport:
    """What :func:`sweep` did: results (in spec order), skipped hashes, failures ``(spec, message)``."""

    results: list
    skipped: list
    failures: list


def validate_all(specs: Iterable[RunSpec]) -> list[RunSpec]:
    """Validate every spec before anything trains; duplicates (same hash) are dropped.

    Raises:
        ConfigError: naming the first bad spec (its position and method).
    """
    unique, seen = [], set()
    for i, spec in enumerate(specs):
        if not isinstance(spec, RunSpec):
            raise ConfigError(f"suite entry {i} is a {type(spec).__name__}, not a RunSpec")
        try:
            spec.validate()
        except ConfigError as exc:
            raise ConfigError(f"run {i + 1} ({spec.method} at target {spec.target}): {exc}") from None
        h = spec.hash
        if h not in seen:
            seen.add(h)
            unique.append(spec)
    return unique


def sweep(specs: Iterable[RunSpec], store, *, data_dir=None, log=None, on_start=None, on_end=None,
          keep_going: bool = True, device=None) -> SweepReport:
    """Run every spec not already in ``store``; a rerun after any interruption resumes.

    Args:
        specs: the runs (validated all together first; duplicates dropped).
        store: the :class:`prunelab.harness.store.Store`.
        data_dir: where to look for data files.
        log: receives progress lines.
        on_start: ``on_start(index, total, spec)`` before each run that is not yet stored.
        on_end: ``on_end(index, total, spec, result_or_None)`` after it.
        keep_going: a run that raises is logged (traceback in ``OUTDIR/errors.log``) and the
            sweep goes on; False re-raises.
        device: where every run computes (see :func:`run`; not part of any run's identity).

    Returns:
        A :class:`SweepReport`.

    Under ``torchrun`` call it on every rank with the same specs (``store``: the real store on
    rank 0, a :class:`prunelab.harness.store.FollowerStore` elsewhere, see ``prunelab.harness.store.open_store``).
    Rank 0 decides which runs are still to do and broadcasts the list, so the ranks run the same
    runs in the same order; rank 0 alone writes. ``keep_going`` does not apply there: a run that
    fails on any rank ends the sweep on every rank (its error is raised; the runs completed so far
    are stored, so a rerun resumes). ``results`` is complete on rank 0; on the other ranks it holds
    the runs done by this call.
    """
    log = log or (lambda msg: None)
    specs = validate_all(specs)
    device = run_device(device)   # a bad device fails here, before any run starts
    if distributed.is_active():
        stored = set(distributed.broadcast_json(sorted(store.hashes()) if distributed.is_main() else None))
        keep_going = False
    else:
        stored = store.hashes()
    todo = [s for s in specs if s.hash not in stored]
    skipped = [s.hash for s in specs if s.hash in stored]
    # Group by data set so each is loaded once; keep the given order within a group.
    order = {}
    for s in todo:
        order.setdefault((s.dataset, json.dumps(s.data_kwargs, sort_keys=True)), []).append(s)
    todo = [s for group in order.values() for s in group]
    failures = []
    ran = []
    for i, spec in enumerate(todo):
        if on_start:
            on_start(i, len(todo), spec)
        result = None
        try:
            dataset = load_data(spec, data_dir)
            result = run(spec, store, dataset=dataset, log=log, device=device)
            ran.append(result)
        except PrunelabError as exc:
            if not keep_going:
                if distributed.is_active() and distributed.is_main():
                    _log_failure(store.outdir, spec, exc, cause=distributed.failure_message())
                raise
            failures.append((spec, str(exc)))
            _log_failure(store.outdir, spec, exc)
            log(f"run failed: {spec.label} at target {spec.target}, seed {spec.seed}: {exc}")
        except Exception as exc:  # a bug in one method must not cost the rest of a long sweep
            if not keep_going:
                if distributed.is_active() and distributed.is_main():
                    _log_failure(store.outdir, spec, exc, cause=distributed.failure_message())
                raise
            failures.append((spec, f"{type(exc).__name__}: {exc}"))
            _log_failure(store.outdir, spec, exc)
            log(f"run failed: {spec.label} at target {spec.target}, seed {spec.seed}: "
                f"{type(exc).__name__}: {exc} (traceback in errors.log)")
        if on_end:
            on_end(i, len(todo), spec, result)
    if distributed.is_main():
        results = [r for r in (store.get(s.hash) for s in specs) if r is not None]
    else:
        results = ran
    return SweepReport(results=results, skipped=skipped, failures=failures)


def _log_failure(outdir, spec: RunSpec, exc: BaseException, cause: str | None = None) -> None:
    """Append the failure of ``spec`` to ``OUTDIR/errors.log``; ``cause``: another rank's failure
    that ``exc`` (e.g. a broken connection) is a consequence of, recorded instead of the traceback."""
    path = Path(outdir) / "errors.log"
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {spec.hash} {json.dumps(spec.to_dict())}\n")
        if cause is not None:
            f.write(f"{cause}\n(here, on rank {distributed.rank()}: {type(exc).__name__}: {exc})\n")
        else:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        f.flush()
        os.fsync(f.fileno())
