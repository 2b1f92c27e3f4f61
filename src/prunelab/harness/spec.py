"""Run specs and run results: what decides a run, its canonical form and stable hash, what it produced.

A :class:`RunSpec` names everything that decides a run's outcome: data set, model, pruning method
and its hyperparameters, target sparsity, dense-training budget, retraining budget and seed. Its
:attr:`RunSpec.hash` is the sha256 of a canonical JSON form in which every value equal to its
default is left out (the trick of OpenLTH's ``hparams.__str__``): adding a hyperparameter whose
default changes nothing to a method's ``Hparams``, or a field to ``TrainConfig``, leaves every
existing hash, and so every stored result, valid. The result store looks runs up by this hash, so
the canonical form (:func:`_jsonable`, :func:`canonical_options`, :meth:`RunSpec.canonical`) must
never change what it produces for an existing spec.

A :class:`RunResult` is what :func:`prunelab.harness.runner.run` produced for one spec; everything
in it is JSON-able, and the result store keeps it as JSON.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
from dataclasses import MISSING, dataclass, field, fields

from prunelab import data as data_mod
from prunelab import methods, models
from prunelab.core.prunable import PrunableRule
from prunelab.errors import ConfigError, PrunelabError
from prunelab.training.loop import TrainConfig
from prunelab.utils.docstrings import field_defaults
from prunelab.utils.io import plain_json

PHASES = ("dense", "pruned", "final")
#: the :class:`~prunelab.core.prunable.PrunableRule` options a run spec may set (the JSON-able ones).
PRUNABLE_OPTIONS = ("embeddings", "patterns", "exclude", "exclude_first", "exclude_last")
_PRUNABLE_DEFAULTS = {name: PrunableRule.__dataclass_fields__[name].default for name in PRUNABLE_OPTIONS}
SPLITS = ("val", "test")


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
    known = methods.registry.list()
    if name not in known:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(known)}")
    return methods.get(name)


def data_option_defaults() -> dict:
    """The options of ``prunelab.data.load`` and their defaults (``MISSING`` where it has none)."""
    params = inspect.signature(data_mod.load).parameters
    return {k: (p.default if p.default is not inspect.Parameter.empty else MISSING)
            for k, p in params.items() if k not in ("name", "data_dir") and p.kind is not p.VAR_KEYWORD}


def _model_defaults(name: str) -> dict:
    if name not in models.registry.list():
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(models.registry.list())}")
    return models.defaults(name)


def stable_hash(obj) -> str:
    """sha256 hex digest of ``obj``'s compact, key-sorted, ASCII JSON text (the same on every platform)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------- the spec

@dataclass(frozen=True, eq=False)
class RunSpec:
    """Everything that decides the outcome of one run.

    Attributes:
        dataset: a name of ``prunelab.data.registry.list()``.
        model: a name of ``prunelab.models.registry.list()``.
        method: a name of ``prunelab.methods.registry.list()``.
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
        prunable: options of :class:`~prunelab.core.prunable.PrunableRule` (:data:`PRUNABLE_OPTIONS`,
            e.g. ``{"exclude_last": True}``) restricting the weights a one-shot method is given to
            prune (as its starting masks); the others stay dense and are still counted in the
            run's sparsity. Empty (default): every prunable weight, as ``method.prune(model)``
            gives it. A layer-wise method's own default (every given layer but the last) then
            applies to the given layers only.
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
    prunable: dict = field(default_factory=dict)

    def __post_init__(self):
        # Private copies: a caller mutating its dict later must not change a spec (or its hash).
        for name in ("hparams", "model_kwargs", "data_kwargs", "dense", "retrain", "prunable"):
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
            "hparams": canonical_options(self.hparams, field_defaults(cls.Hparams), f"hyperparameter of method {self.method!r}:"),
            "model_kwargs": canonical_options(self.model_kwargs, _model_defaults(self.model), f"option of model {self.model!r}:"),
            "data_kwargs": canonical_options(self.data_kwargs, data_option_defaults(), "data option", allow_unknown=True),
            "dense": canonical_options(self.dense, _train_defaults(), "dense-training option"),
            "retrain": canonical_options(self.retrain, _train_defaults(), "retraining option"),
            "calib_size": self.calib_size,
            "prunable": canonical_options(self.prunable, _PRUNABLE_DEFAULTS, "prunable-rule option"),
        }
        # A field at its default is left out, so adding a spec field later keeps old hashes.
        spec_defaults = field_defaults(RunSpec)
        return {k: v for k, v in out.items() if not (spec_defaults.get(k, MISSING) is not MISSING
                                                      and v == _jsonable(spec_defaults[k]))}

    @property
    def hash(self) -> str:
        """sha256 hex digest of :meth:`canonical` (stable across Python versions and runs)."""
        return stable_hash(self.canonical())

    def __eq__(self, other):
        return isinstance(other, RunSpec) and self.hash == other.hash

    def __hash__(self):
        return hash(self.hash)

    @property
    def label(self) -> str:
        """The method with its non-default hyperparameters, e.g. ``magnitude(scope=layer)``."""
        try:
            hp = self.canonical().get("hparams", {}) if self.method in methods.registry.list() else self.hparams
        except PrunelabError:
            hp = self.hparams
        # A method seed that follows the run seed (random pruning in the suites) is not a variant.
        hp = {k: v for k, v in hp.items() if not (k == "seed" and v == self.seed)}
        label = self.method
        if hp:
            label += "(" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(hp.items())) + ")"
        try:
            rule = canonical_options(self.prunable, _PRUNABLE_DEFAULTS, "prunable-rule option")
        except PrunelabError:
            rule = self.prunable
        if rule:
            label += "[" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(rule.items())) + "]"
        return label

    def prunable_rule(self) -> PrunableRule | None:
        """The :class:`~prunelab.core.prunable.PrunableRule` of :attr:`prunable`, or None when every
        option is at its default (the same run as an empty ``prunable``, so the same behaviour).

        Raises:
            ConfigError: an unknown option or a bad value.
        """
        if not canonical_options(self.prunable, _PRUNABLE_DEFAULTS, "prunable-rule option"):
            return None
        for key in ("patterns", "exclude"):
            value = self.prunable.get(key, [])
            if not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"prunable {key} must be a list of names or fnmatch patterns, got {value!r}")
        for key in ("embeddings", "exclude_first", "exclude_last"):
            if not isinstance(self.prunable.get(key, False), bool):
                raise ConfigError(f"prunable {key} must be true or false, got {self.prunable[key]!r}")
        return PrunableRule(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.prunable.items()})

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
        if self.dataset not in data_mod.registry.list():
            raise ConfigError(f"unknown dataset {self.dataset!r}; known: {', '.join(data_mod.registry.list())}")
        if self.model not in models.registry.list():
            raise ConfigError(f"unknown model {self.model!r}; known: {', '.join(models.registry.list())}")
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
        if self.prunable_rule() is not None and getattr(method_class(self.method), "family", "oneshot") != "oneshot":
            raise ConfigError(f"prunable applies to one-shot methods; {self.method!r} runs its own loop "
                              "(give it the layers through its hyperparameters, if it has any)")
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
    defaults = field_defaults(TrainConfig)
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
            (``pruned_*`` are None when the method owns its loop and reports none); for token
            data (``dataset.info["tokens"]``) also ``{dense,pruned,final}_{val,test}_{ppl,bpb}``,
            perplexity and bits per byte from the loss (:func:`prunelab.core.metrics.lm_scores`;
            top-1/top-5 are then per token),
            ``time_<phase>`` seconds and ``time_total`` (all phases but dense training).
        phase_times: seconds per phase; ``dense_train`` is the time the dense model originally
            took, also when it came from the cache (``dense_cached``).
        dense_cached: the dense model was loaded from the cache rather than trained by this run.
        traces: name → list of per-round / per-epoch dicts.
        layers: the per-layer table of ``metrics.summary`` for the final model.
        info: method-specific facts and provenance (git SHA, versions, counting convention); for
            one-shot runs ``prune_peak_bytes`` (the prune phase's peak memory above its start,
            None where not measurable) and ``prune_peak_kind`` (``"rss"``, ``"cuda"`` or None;
            :class:`~prunelab.utils.memory.PeakMemory`).
    """

    spec: RunSpec
    hash: str
    family: str
    metrics: dict[str, float | int | None]
    phase_times: dict[str, float]
    dense_cached: bool
    traces: dict[str, list[dict]] = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The spec's label (method and non-default hyperparameters)."""
        return self.spec.label

    def to_dict(self, with_traces: bool = True) -> dict:
        """The result as plain JSON types (tensors and numpy scalars as numbers, other objects as text).

        Args:
            with_traces: include ``traces`` (the store keeps them in their own table).
        """
        d = {
            "spec": self.spec.to_dict(), "hash": self.hash, "family": self.family,
            "metrics": self.metrics, "phase_times": self.phase_times,
            "dense_cached": self.dense_cached, "layers": self.layers, "info": self.info,
        }
        if with_traces:
            d["traces"] = self.traces
        return plain_json(d)

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        """Rebuild a result from :meth:`to_dict`'s output."""
        return cls(spec=RunSpec.from_dict(d["spec"]), hash=d["hash"], family=d["family"],
                   metrics=d["metrics"], phase_times=d["phase_times"], dense_cached=d["dense_cached"],
                   traces=d.get("traces", {}), layers=d.get("layers", []), info=d.get("info", {}))
