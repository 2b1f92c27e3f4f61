"""Run specs and the experiment harness: ``RunSpec`` → :func:`run` → ``RunResult``.

A :class:`RunSpec` names everything that decides a run's outcome: data set, model, pruning method
and its hyperparameters, target sparsity, dense-training budget, retraining budget and seed. Its
:attr:`RunSpec.hash` is the sha256 of a canonical JSON form in which every value equal to its
default is left out (the trick of OpenLTH's ``hparams.__str__``): adding a hyperparameter whose
default changes nothing to a method's ``Hparams``, or a field to ``TrainConfig``, leaves every
existing hash, and so every stored result, valid.

The harness follows the protocol of Blalock et al. 2020 (field-notes.md §5): every method of a
sweep starts from the same trained dense model (cached on disk per data set, model, dense budget
and seed), gets the same retraining budget, and is scored on the validation and test splits; the
validation split alone is used to choose anything (the epoch kept after training).

* one-shot methods: the harness prunes ``prune(dense copy, None, target, calib)``, evaluates,
  retrains with the mask fixed for ``retrain`` epochs and evaluates again;
* iterative and training-time methods run their own loop through ``run(MethodContext)``.

Under ``torchrun`` (``prunelab.training.distributed`` initialised with several ranks) every rank calls
:func:`sweep` / :func:`run` with the same specs and trains data-parallel; rank 0 alone holds the
result store (the others pass a :class:`prunelab.harness.store.FollowerStore`) and takes every decision
that depends on files (which runs are done, whether the dense cache is usable), broadcasting it;
rank 0 alone writes the store, the dense cache and ``errors.log``. Masks computed by a one-shot
method are rank 0's, broadcast; masks and weights are checked identical across ranks after every
method. A failed run ends the sweep on every rank (a run cannot be skipped on one rank only).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import re
import subprocess
import time
import traceback
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

import torch

from prunelab import data as data_mod
from prunelab.training import distributed
from prunelab import methods, models
from prunelab.core.checkpoints import load_checkpoint, save_checkpoint
from prunelab.errors import CheckpointError, ConfigError, PrunelabError
from prunelab.methods.base import MethodContext
from prunelab.core.metrics import summary as metrics_summary
from prunelab.training.loop import TrainConfig, evaluate, train

PHASES = ("dense", "pruned", "final")
SPLITS = ("val", "test")
SUMMARY_KEYS = (
    "params_total", "params_nonzero", "prunable", "prunable_nonzero", "sparsity",
    "compression_ratio", "compression_ratio_all", "size_bytes", "size_nonzero_bytes",
    "flops", "flops_nonzero", "theoretical_speedup",
)


# --------------------------------------------------------------------------- canonical form

def _jsonable(value, default=MISSING, where="value"):
    """``value`` as plain JSON types, ints widened to float where the default is a float."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return float(value) if isinstance(default, float) else value
    if isinstance(value, float):
        return value
    if isinstance(value, (list, tuple)):
        defaults = list(default) if isinstance(default, (list, tuple)) and len(default) == len(value) else None
        return [_jsonable(v, defaults[i] if defaults else MISSING, where) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, MISSING, where) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item(), default, where)
    raise ConfigError(f"{where} = {value!r} is not a number, string, boolean, list or dict; "
                      "run specs must be JSON-able")


def _field_defaults(cls) -> dict:
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = MISSING
    return out


def canonical_options(values: dict, defaults: dict, what: str, allow_unknown: bool = False) -> dict:
    """Drop the entries of ``values`` equal to their default; reject unknown names.

    Args:
        values: option name → value, as the user gave them.
        defaults: option name → default (``MISSING`` when the option has none).
        what: what the options are, for error messages (e.g. ``"hyperparameter of magnitude"``).
        allow_unknown: keep names without a known default (loader options of ``data.load``).

    Returns:
        A dict, sorted by name, with JSON-typed values: only the options that differ from their
        defaults. Two option sets that configure the same thing give the same dict.
    """
    unknown = sorted(set(values) - set(defaults))
    if unknown and not allow_unknown:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(defaults)) or 'none'}")
    out = {}
    for name in sorted(values):
        default = defaults.get(name, MISSING)
        value = _jsonable(values[name], default, f"{what} {name}")
        if default is not MISSING and value == _jsonable(default, default, f"{what} {name}"):
            continue
        out[name] = value
    return out


def method_class(name: str):
    """The registered class of method ``name``; ConfigError naming the known ones otherwise."""
    known = methods.list()
    if name not in known:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(known)}")
    return methods.get(name)


def _data_defaults() -> dict:
    params = inspect.signature(data_mod.load).parameters
    return {k: (p.default if p.default is not inspect.Parameter.empty else MISSING)
            for k, p in params.items() if k not in ("name", "data_dir") and p.kind is not p.VAR_KEYWORD}


def _model_defaults(name: str) -> dict:
    if name not in models.list():
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(models.list())}")
    return models.defaults(name)


def _sha(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------- the spec

@dataclass(frozen=True, eq=False)
class RunSpec:
    """Everything that decides the outcome of one run.

    Attributes:
        dataset: a name of ``prunelab.data.list()``.
        model: a name of ``prunelab.models.list()``.
        method: a name of ``prunelab.methods.list()``.
        target: requested sparsity of the prunable weights, in [0, 1).
        seed: seeds initialisation, batch order, dropout and the calibration subset. The
            validation split is fixed by ``data_kwargs["seed"]`` (default 0), the same for
            every seed, so seeds vary training only.
        hparams: the method's hyperparameters (fields of its ``Hparams``; the rest default).
        model_kwargs: keyword arguments of ``prunelab.models.create``.
        data_kwargs: keyword arguments of ``prunelab.data.load`` (``val_size``, ``normalize``,
            ``limit``, ``seed``).
        dense: ``TrainConfig`` fields of the dense training budget (``seed`` is ``self.seed``).
        retrain: ``TrainConfig`` fields of the retraining budget; ``epochs=0`` skips retraining.
        calib_size: training samples handed to one-shot methods as calibration data.
    """

    dataset: str
    model: str
    method: str
    target: float
    seed: int = 0
    hparams: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    data_kwargs: dict = field(default_factory=dict)
    dense: dict = field(default_factory=dict)
    retrain: dict = field(default_factory=dict)
    calib_size: int = 1024

    def __post_init__(self):
        # Private copies: a caller mutating its dict later must not change a spec (or its hash).
        for name in ("hparams", "model_kwargs", "data_kwargs", "dense", "retrain"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ConfigError(f"run spec field {name} must be a dict, got {type(value).__name__}")
            object.__setattr__(self, name, copy.deepcopy(value))

    # -- canonical form and hash
    def canonical(self) -> dict:
        """The canonical JSON-able form: defaults dropped, names sorted (see module docstring)."""
        cls = method_class(self.method)
        out = {
            "dataset": self.dataset,
            "model": self.model,
            "method": self.method,
            "target": _jsonable(self.target, 0.0, "target"),
            "seed": _jsonable(self.seed, 0, "seed"),
            "hparams": canonical_options(self.hparams, _field_defaults(cls.Hparams), f"hyperparameter of method {self.method!r}:"),
            "model_kwargs": canonical_options(self.model_kwargs, _model_defaults(self.model), f"option of model {self.model!r}:"),
            "data_kwargs": canonical_options(self.data_kwargs, _data_defaults(), "data option", allow_unknown=True),
            "dense": canonical_options(self.dense, _train_defaults(), "dense-training option"),
            "retrain": canonical_options(self.retrain, _train_defaults(), "retraining option"),
            "calib_size": self.calib_size,
        }
        # A field at its default is left out, so adding a spec field later keeps old hashes.
        spec_defaults = _field_defaults(RunSpec)
        return {k: v for k, v in out.items() if not (spec_defaults.get(k, MISSING) is not MISSING
                                                      and v == _jsonable(spec_defaults[k]))}

    @property
    def hash(self) -> str:
        """sha256 hex digest of :meth:`canonical` (stable across Python versions and runs)."""
        return _sha(self.canonical())

    def __eq__(self, other):
        return isinstance(other, RunSpec) and self.hash == other.hash

    def __hash__(self):
        return hash(self.hash)

    @property
    def label(self) -> str:
        """The method with its non-default hyperparameters, e.g. ``magnitude(scope=layer)``."""
        try:
            hp = self.canonical().get("hparams", {}) if self.method in methods.list() else self.hparams
        except PrunelabError:
            hp = self.hparams
        # A method seed that follows the run seed (random pruning in the suites) is not a variant.
        hp = {k: v for k, v in hp.items() if not (k == "seed" and v == self.seed)}
        if not hp:
            return self.method
        return f"{self.method}(" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(hp.items())) + ")"

    def to_dict(self) -> dict:
        """All fields as given (JSON-able); :meth:`from_dict` inverts it."""
        return {f.name: _jsonable(getattr(self, f.name), MISSING, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        """Build a spec from :meth:`to_dict`'s output (unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown run spec field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        missing = [n for n in ("dataset", "model", "method", "target") if n not in d]
        if missing:
            raise ConfigError(f"run spec lacks {', '.join(missing)}")
        return cls(**d)

    # -- validation
    def dense_config(self) -> TrainConfig:
        """The dense-training ``TrainConfig`` (seeded with :attr:`seed`)."""
        return _train_config(self.dense, self.seed, "dense-training")

    def retrain_config(self) -> TrainConfig:
        """The retraining ``TrainConfig`` (seeded with :attr:`seed`)."""
        return _train_config(self.retrain, self.seed, "retraining")

    def validate(self) -> None:
        """Check the spec without training anything.

        Raises:
            ConfigError: unknown data set, model, method or option; target outside [0, 1);
                a budget of 0 epochs (dense) or below 0 (retraining); bad seed or calib size.
        """
        if self.dataset not in data_mod.list():
            raise ConfigError(f"unknown dataset {self.dataset!r}; known: {', '.join(data_mod.list())}")
        if self.model not in models.list():
            raise ConfigError(f"unknown model {self.model!r}; known: {', '.join(models.list())}")
        method_class(self.method)
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) \
                or not math.isfinite(self.target) or not 0 <= self.target < 1:
            raise ConfigError(f"target sparsity {self.target!r} is outside [0, 1); give the fraction of "
                              "prunable weights to remove, e.g. 0.9 for 10x compression")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if isinstance(self.calib_size, bool) or not isinstance(self.calib_size, int) or self.calib_size <= 0:
            raise ConfigError(f"calib_size must be a positive integer, got {self.calib_size!r}")
        dense = self.dense_config()
        if dense.epochs <= 0:
            raise ConfigError(f"dense training budget must be at least 1 epoch, got epochs={dense.epochs}")
        self.retrain_config()
        self.canonical()  # unknown hyperparameters, data options, non-JSON values
        try:
            methods.create(self.method, **self.hparams)
        except PrunelabError as exc:
            raise ConfigError(f"method {self.method!r}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"method {self.method!r}: bad hyperparameters ({exc})") from None


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _train_defaults() -> dict:
    defaults = _field_defaults(TrainConfig)
    defaults.pop("seed")  # the spec's seed is the one seed; a budget may not carry its own
    return defaults


def _train_config(options: dict, seed: int, what: str) -> TrainConfig:
    if "seed" in options:
        raise ConfigError(f"the {what} budget sets 'seed'; set RunSpec.seed (the suite's seeds) instead")
    try:
        return TrainConfig.from_dict({**options, "seed": seed})
    except PrunelabError as exc:
        raise ConfigError(f"{what} budget: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{what} budget: bad value ({exc})") from None


# --------------------------------------------------------------------------- results

@dataclass
class RunResult:
    """What one run produced; everything JSON-able.

    Attributes:
        spec: the :class:`RunSpec`.
        hash: ``spec.hash``.
        family: ``"oneshot"``, ``"iterative"`` or ``"training"``.
        metrics: flat numbers: the keys of ``metrics.summary`` (final model; ``sparsity`` is the
            achieved sparsity), ``{dense,pruned,final}_{val,test}_{top1,top5,loss}``
            (``pruned_*`` are None when the method owns its loop and reports none),
            ``time_<phase>`` seconds and ``time_total`` (all phases but dense training).
        phase_times: seconds per phase; ``dense_train`` is the time the dense model originally
            took, also when it came from the cache (``dense_cached``).
        dense_cached: the dense model was loaded from the cache rather than trained by this run.
        traces: name → list of per-round / per-epoch dicts.
        layers: the per-layer table of ``metrics.summary`` for the final model.
        info: method-specific facts and provenance (git SHA, versions, counting convention).
    """

    spec: RunSpec
    hash: str
    family: str
    metrics: dict
    phase_times: dict
    dense_cached: bool
    traces: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.label

    def to_dict(self, with_traces: bool = True) -> dict:
        d = {
            "spec": self.spec.to_dict(), "hash": self.hash, "family": self.family,
            "metrics": self.metrics, "phase_times": self.phase_times,
            "dense_cached": self.dense_cached, "layers": self.layers, "info": self.info,
        }
        if with_traces:
            d["traces"] = self.traces
        return _plain(d)

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        return cls(spec=RunSpec.from_dict(d["spec"]), hash=d["hash"], family=d["family"],
                   metrics=d["metrics"], phase_times=d["phase_times"], dense_cached=d["dense_cached"],
                   traces=d.get("traces", {}), layers=d.get("layers", []), info=d.get("info", {}))


def _plain(obj):
    """Lenient JSON conversion for results (tensors → numbers, other objects → str)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") and getattr(o, "numel", lambda: 1)() == 1
                                 else (o.tolist() if hasattr(o, "tolist") else str(o))))


# --------------------------------------------------------------------------- data and dense cache

_DATA_CACHE: dict = {}


def load_data(spec: RunSpec, data_dir=None):
    """The spec's data set, loaded once per process (keyed by name, options and data_dir)."""
    options = canonical_options(spec.data_kwargs, _data_defaults(), "data option", allow_unknown=True)
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
    return Path(outdir) / "dense" / f"{slug}-{_sha(dense_key(spec))[:16]}.safetensors"


def model_factory(spec: RunSpec, dataset) -> Callable[[], torch.nn.Module]:
    """A function returning a fresh model initialised from ``spec.seed`` (same weights each call)."""

    def make():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            return models.create(spec.model, tuple(dataset.in_shape), dataset.num_classes, **spec.model_kwargs)

    return make


def _scores(model, dataset, batch_size) -> dict:
    out = {}
    for split in SPLITS:
        r = evaluate(model, getattr(dataset, split), batch_size)
        out[split] = {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"]}
    return out


def get_dense(spec: RunSpec, dataset, outdir, log=None) -> tuple[torch.nn.Module, dict]:
    """The trained dense model of ``spec``, from the cache or trained now and cached.

    Args:
        spec: the run spec (its dense key decides the cache entry).
        dataset: the loaded data set.
        outdir: the output directory (cache under ``outdir/dense``).
        log: progress lines.

    Returns:
        ``(model, info)`` with info ``seconds`` (original training time), ``cached``, ``path``,
        ``scores`` (val/test top-1, top-5, loss) and ``history``.
    """
    log = log or (lambda msg: None)
    path = dense_path(spec, outdir)
    key = dense_key(spec)
    factory = model_factory(spec, dataset)
    cached = None
    # Under torchrun rank 0 alone reads the cache (other ranks may not see its files) and shares it.
    if distributed.is_main() and path.exists():
        try:
            ckpt = load_checkpoint(path, factory())
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
        state = train(model, dataset, config, progress=False, select_best=len(dataset.val) > 0, label="dense")
    seconds = time.perf_counter() - t0
    scores = _scores(model, dataset, config.eval_batch_size)
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
    from prunelab import __name__ as package

    try:
        from importlib.metadata import version

        release = version(package)
    except Exception:  # not installed (PYTHONPATH checkout)
        release = None
    return {"git_sha": git_sha(), "prunelab": release, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


# --------------------------------------------------------------------------- the harness

def run(spec: RunSpec, store, *, dataset=None, data_dir=None, log: Callable[[str], None] | None = None) -> RunResult:
    """Run ``spec`` (or return its stored result) and record it in ``store``.

    Args:
        spec: what to run.
        store: a :class:`prunelab.harness.store.Store`; a completed run is returned from it, a new
            one is written to it in one transaction when complete. The dense model is cached
            under ``store.outdir / "dense"``.
        dataset: the loaded data set (loaded from ``spec`` when omitted).
        data_dir: where to look for data files.
        log: receives progress lines (silent when omitted).

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigError: the spec is invalid (checked before anything trains).

    Under ``torchrun`` call it on every rank with the same spec; ``store`` is the real store on
    rank 0 and may be a :class:`prunelab.harness.store.FollowerStore` elsewhere. Rank 0 decides whether the
    run is stored already and writes the result; every rank returns rank 0's result.
    """
    spec.validate()
    done = store.get(spec.hash) if distributed.is_main() else None
    if distributed.is_active():
        shared = distributed.broadcast_json(done.to_dict(with_traces=True) if done is not None else None)
        if shared is not None:
            return done if done is not None else RunResult.from_dict(shared)
    elif done is not None:
        return done
    log = log or (lambda msg: None)
    dataset = dataset if dataset is not None else load_data(spec, data_dir)
    dense, dense_info = get_dense(spec, dataset, store.outdir, log)
    method = methods.create(spec.method, **spec.hparams)
    family = getattr(method, "family", "oneshot")
    retrain_config = spec.retrain_config()
    scores = {"dense": dense_info["scores"], "pruned": None}
    traces: dict = {}
    info: dict = {}
    phase_times = {"dense_train": dense_info["seconds"]}
    if family == "oneshot":
        model = copy.deepcopy(dense)
        calib = calibration_split(dataset, spec.calib_size, spec.seed)
        t0 = time.perf_counter()
        masks = method.prune(model, None, float(spec.target), calib)
        if distributed.is_active():
            # Every rank pruned; rank 0's masks and weights (some methods rewrite them) are kept,
            # so a method that is not bit-reproducible across processes cannot split the ranks.
            masks = distributed.broadcast_masks(masks)
            distributed.broadcast_module(model)
        masks.apply(model)
        phase_times["prune"] = time.perf_counter() - t0
        scores["pruned"] = _scores(model, dataset, retrain_config.eval_batch_size)
        phase_times["retrain"] = 0.0
        if retrain_config.epochs > 0:
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed)
                state = train(model, dataset, retrain_config, masks=masks, progress=False,
                              select_best=len(dataset.val) > 0, label="retrain")
            phase_times["retrain"] = time.perf_counter() - t0
            traces["retrain"] = [dict(r, sparsity=masks.sparsity()) for r in state.history]
    else:
        ctx = MethodContext(
            data=dataset, model_factory=model_factory(spec, dataset),
            init_state={k: v.clone() for k, v in model_factory(spec, dataset)().state_dict().items()},
            dense_model=copy.deepcopy(dense), target=float(spec.target), train_config=spec.dense_config(),
            retrain_config=retrain_config, seed=spec.seed, log=log,
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
            scores["pruned"] = info.pop("pruned_scores")
        if distributed.is_active() and distributed.checks_enabled():
            distributed.assert_masks_equal_across_ranks(masks)
            distributed.assert_params_equal_across_ranks(model)
    scores["final"] = _scores(model, dataset, retrain_config.eval_batch_size)
    s = metrics_summary(model, masks, tuple(dataset.in_shape))
    metrics = {k: s.get(k) for k in SUMMARY_KEYS}
    metrics["target"] = float(spec.target)
    metrics["num_classes"] = dataset.num_classes
    for phase in PHASES:
        for split in SPLITS:
            for name in ("top1", "top5", "loss"):
                block = scores.get(phase)
                metrics[f"{phase}_{split}_{name}"] = block[split][name] if block else None
    for phase, seconds in phase_times.items():
        metrics[f"time_{phase}"] = seconds
    metrics["time_total"] = sum(v for k, v in phase_times.items() if k != "dense_train")
    info.update(counted=s.get("counted"), dense_path=dense_info["path"], data_source=getattr(dataset, "source", None),
                **_provenance())
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
          keep_going: bool = True) -> SweepReport:
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
            result = run(spec, store, dataset=dataset, log=log)
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
