"""Suites: named lists of run specs (methods × targets × seeds), in code or in a TOML/JSON/YAML file.

The comparison protocol of Blalock et al. 2020 ("What is the State of Neural Network Pruning?") is
built in: five operating points of about 2, 4, 8, 16 and 32× compression (:data:`TARGETS`), the
same dense model and retraining budget for every method, and the global-magnitude,
layer-wise-magnitude and random baselines in every suite.

Adding a method to a suite is one line, in either place:

* in the method's own class: ``suite_hparams = {"quick": {"rounds": 3}}`` (a dict of
  hyperparameters, or a list of dicts for several variants; ``{}`` means the defaults). A suite
  without its own entry uses the method's ``"quick"`` entry. An optional
  ``suite_targets = {"quick": [0.9]}`` replaces the suite's targets for methods that choose their
  own sparsity (one run instead of five identical ones);
* or in :data:`SUITE_METHODS` below: ``"quick": [("feta", {"theta": 10}), ...]``.

A method named there that is not registered, or hyperparameters the method does not have, are an
error (:func:`method_entries`), never a silent skip.

Code suites are functions decorated with ``@register_suite("name")`` that take the data set name
(None: the suite's own default) and return a :class:`Suite`; they live in :data:`registry`. The
papers' suites live with their papers in :mod:`prunelab.reproductions`, which ``import prunelab``
imports (the package sits above the harness, so this module never imports it).

File suites (``prunelab bench --suite my.toml``)::

    name = "my-sweep"                  # default: the file name
    dataset = "fashion-mnist"
    models = ["lenet-300-100"]         # or [{name = "fc", kwargs = {hidden = [100, 100]}}]
    targets = [0.5, 0.75, 0.875, 0.9375, 0.96875]
    seeds = [0, 1, 2]
    baselines = true                   # global/layer magnitude + random (default true)
    dense = {epochs = 8, optimizer = "adam", lr = 0.001}
    retrain = {epochs = 2, optimizer = "adam", lr = 0.0005}
    [[methods]]
    name = "magnitude"
    hparams = {scope = "layer"}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prunelab import methods
from prunelab.errors import ConfigError
from prunelab.harness.spec import RunSpec
from prunelab.utils.registry import Registry

#: sparsities giving about 2, 4, 8, 16 and 32× compression of the prunable weights.
TARGETS = (0.5, 0.75, 0.875, 0.9375, 0.96875)

#: global and layer-wise magnitude and random pruning: in every suite (Blalock et al. 2020).
BASELINES = (("magnitude", {"scope": "global"}), ("magnitude", {"scope": "layer"}), ("random", {}))

#: one line per (suite, method): ``(method, hparams)`` or ``(method, hparams, targets)``, for
#: methods that do not carry ``suite_hparams`` themselves.
#: The quick entries keep the suite near 6 minutes of one CPU core (measured per run: see the
#: comments); ``standard`` uses the methods' defaults where they are affordable.
SUITE_METHODS: dict[str, list[tuple]] = {
    "quick": [
        ("hard-threshold", {}),                          # Pitas et al.'s histogram threshold, ~6 s
        ("feta", {}),                                    # ~8 s
        ("lobs", {"update": "oneshot"}),                 # ~8 s (the exact sequential update: ~50 s)
        ("nettrim", {}),                                 # ~5 s
        ("sparsegpt", {}),                               # < 1 s
        ("wanda", {}),                                   # < 1 s
        ("os", {"rate": 0.5, "epochs": 1}),              # density halves each round: round t = target t
        ("lt", {"rate": 0.5, "epochs": 1}),
        ("sap", {"rounds": 8, "epochs": 1}, [0.96875]),  # SAP sets its own pace: one run, 8 rounds traced
        ("gmp", {}),                                     # ~5 s
        ("ltp", {}),                                     # ~5 s
        ("grda", {"lr": 0.1, "c": 0.005, "mu": 0.6}, [0.9]),  # trains from scratch; target unused, ~14 s
    ],
    "standard": [
        ("hard-threshold", {}),
        ("feta", {}),
        ("lobs", {}),
        ("nettrim", {}),
        ("sparsegpt", {}),
        ("wanda", {}),
        ("os", {"rate": 0.5}),
        ("lt", {"rate": 0.5}),
        ("sap", {"rounds": 15}, [0.96875]),
        ("gmp", {}),
        ("ltp", {}),
        ("grda", {"lr": 0.1, "c": 0.005, "mu": 0.6}, [0.9]),
    ],
}

#: budgets of the quick suite per data set: dense training and retraining (TrainConfig fields).
#: Fashion-MNIST: LeNet-300-100 reaches 87.7 % test top-1 (88.6 % val) in 8 Adam epochs (seed 0).
QUICK_BUDGETS = {
    "fashion-mnist": ({"epochs": 8, "optimizer": "adam", "lr": 1e-3, "batch_size": 128},
                      {"epochs": 2, "optimizer": "adam", "lr": 5e-4, "batch_size": 128}),
    "mnist": ({"epochs": 8, "optimizer": "adam", "lr": 1e-3, "batch_size": 128},
              {"epochs": 2, "optimizer": "adam", "lr": 5e-4, "batch_size": 128}),
    # digits has ~1.4k training images: more epochs cost less than one Fashion-MNIST epoch.
    "digits": ({"epochs": 40, "optimizer": "adam", "lr": 1e-3, "batch_size": 64},
               {"epochs": 10, "optimizer": "adam", "lr": 5e-4, "batch_size": 64}),
}
STANDARD_BUDGETS = {
    "fashion-mnist": ({"epochs": 20, "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "schedule": "cosine"},
                      {"epochs": 5, "optimizer": "adam", "lr": 5e-4, "batch_size": 128, "schedule": "cosine"}),
    "digits": ({"epochs": 60, "optimizer": "adam", "lr": 1e-3, "batch_size": 64, "schedule": "cosine"},
               {"epochs": 15, "optimizer": "adam", "lr": 5e-4, "batch_size": 64, "schedule": "cosine"}),
}


@dataclass(frozen=True)
class Suite:
    """A named list of run specs.

    Attributes:
        name: the suite's name.
        specs: the runs, in order.
        description: one line: what the suite compares and with which budgets.
        notes: anything a report should say (e.g. budgets scaled down from the paper).
        report: an optional writer of the suite's own report, ``report(outdir) -> dict`` of the
            paths written; ``prunelab bench`` and ``prunelab report`` call it after the generic report.
    """

    name: str
    specs: tuple = ()
    description: str = ""
    notes: str = ""
    report: Callable | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.specs)

    def methods(self) -> list[str]:
        """The method labels in the suite, in order of first appearance."""
        return list(dict.fromkeys(s.label for s in self.specs))


#: suite name → ``fn(dataset: str | None) -> Suite``; ``registry.list()`` names them all.
registry: Registry[Callable[..., Suite]] = Registry("suite", error=ConfigError)


def register_suite(name: str):
    """Decorator registering ``fn(dataset: str | None) -> Suite`` as suite ``name``.

    Raises:
        ConfigError: another function is already registered as ``name``.
    """
    return registry.register(name)


def get_suite(name: str, dataset: str | None = None) -> Suite:
    """Build registered suite ``name`` (on ``dataset`` when given).

    Raises:
        ConfigError: no suite of that name (the message lists the registered ones).
    """
    if name not in registry:
        raise ConfigError(f"unknown suite {name!r}; known suites: {', '.join(registry.list())} "
                          "(or give the path of a .toml/.json/.yaml suite file)")
    suite = registry.create(name, dataset)
    if not isinstance(suite, Suite):
        suite = Suite(name=name, specs=tuple(suite))
    return suite


def is_suite_file(name_or_path: str) -> bool:
    """Whether :func:`resolve` reads ``name_or_path`` as a file (a suite suffix, a ``/``, or it exists)."""
    path = Path(name_or_path)
    return path.suffix.lower() in (".toml", ".json", ".yaml", ".yml") or path.exists() or "/" in name_or_path


def resolve(name_or_path: str, dataset: str | None = None) -> Suite:
    """A registered suite by name, or a suite file by path (``.toml``, ``.json``, ``.yaml``)."""
    if is_suite_file(name_or_path):
        return load_suite_file(Path(name_or_path), dataset)
    return get_suite(name_or_path, dataset)


# --------------------------------------------------------------------------- building specs

def method_entries(suite: str, baselines: bool = True) -> list[tuple[str, dict, tuple | None]]:
    """The ``(method, hparams, targets or None)`` entries of ``suite``.

    Order: the baselines, then :data:`SUITE_METHODS`, then the methods' own ``suite_hparams``
    (which replace a method's :data:`SUITE_METHODS` lines for that suite).

    Raises:
        ConfigError: an entry names a method that is not registered, or a hyperparameter its
            method does not have (the message names the entry and the known names).
    """
    entries: list[tuple[str, dict, tuple | None]] = []
    if baselines:
        entries += [(m, dict(hp), None) for m, hp in BASELINES]
    own: set[str] = set()
    for name in methods.registry.list():
        cls = methods.get(name)
        table = getattr(cls, "suite_hparams", None) or {}
        variants = table.get(suite, table.get("quick")) if suite in ("quick", "standard") else table.get(suite)
        if variants is None:
            continue
        own.add(name)
        targets = (getattr(cls, "suite_targets", None) or {}).get(suite)
        for hp in variants if isinstance(variants, (list, tuple)) else [variants]:
            _check_entry(name, hp, f"{cls.__name__}.suite_hparams[{suite!r}]")
            entries.append((name, dict(hp), tuple(targets) if targets is not None else None))
    table_entries = []
    for entry in SUITE_METHODS.get(suite, []):
        if entry[0] in own:
            continue  # the table is the fallback: a method's own suite_hparams (its author's choice) win
        _check_entry(entry[0], entry[1], f"SUITE_METHODS[{suite!r}] entry {entry!r}")
        table_entries.append((entry[0], dict(entry[1]), tuple(entry[2]) if len(entry) > 2 and entry[2] is not None
                              else None))
    entries[len(BASELINES) if baselines else 0:0] = table_entries
    out, seen = [], set()
    for name, hp, targets in entries:
        key = (name, json.dumps(hp, sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append((name, hp, targets))
    return out


def _check_entry(method: str, hparams: dict, where: str) -> None:
    """Raise ConfigError when ``method`` is not registered or ``hparams`` names a field its ``Hparams`` lacks."""
    if method not in methods.registry:
        raise ConfigError(f"{where}: method {method!r} is not registered; "
                          f"known methods: {', '.join(methods.registry.list())}")
    unknown = sorted(set(hparams) - _hparam_names(method))
    if unknown:
        raise ConfigError(f"{where}: method {method!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(sorted(_hparam_names(method))) or 'none'}")


def grid(dataset: str, models: list, entries: list, targets=TARGETS, seeds=(0,), dense: dict | None = None,
         retrain: dict | None = None, data_kwargs: dict | None = None, calib_size: int | None = None) -> list[RunSpec]:
    """Specs for every model × method entry × target × seed.

    Args:
        dataset: data set name.
        models: model names, or ``(name, kwargs)`` pairs.
        entries: ``(method, hparams)`` or ``(method, hparams, targets)`` tuples.
        targets: target sparsities (an entry's own targets replace them).
        seeds: seeds.
        dense, retrain: ``TrainConfig`` fields of the two budgets.
        data_kwargs: options of ``prunelab.data.load``.
        calib_size: calibration samples for one-shot methods (None: the default).

    Returns:
        The specs, seeds outermost (a killed sweep has whole seeds done), then models, methods,
        targets.
    """
    specs = []
    for seed in seeds:
        for model in models:
            name, kwargs = (model, {}) if isinstance(model, str) else (model[0], dict(model[1]))
            for entry in entries:
                method, hp = entry[0], dict(entry[1])
                own_targets = entry[2] if len(entry) > 2 else None
                if "seed" in _hparam_names(method) and "seed" not in hp:
                    hp["seed"] = seed  # a method's own randomness varies with the run seed, like the rest
                for target in own_targets if own_targets is not None else targets:
                    extra = {} if calib_size is None else {"calib_size": calib_size}
                    specs.append(RunSpec(dataset=dataset, model=name, method=method, target=float(target), seed=seed,
                                         hparams=hp, model_kwargs=kwargs, data_kwargs=dict(data_kwargs or {}),
                                         dense=dict(dense or {}), retrain=dict(retrain or {}), **extra))
    return specs


def _hparam_names(method: str) -> set[str]:
    if method not in methods.registry.list():
        return set()  # validation reports the unknown method
    return {f.name for f in dataclasses.fields(methods.get(method).Hparams)}


def _budgets(table: dict, dataset: str) -> tuple[dict, dict]:
    return table.get(dataset, table["fashion-mnist"])


@register_suite("quick")
def quick(dataset: str | None = None) -> Suite:
    """The README main job: LeNet-300-100, every suite method at five targets, one seed."""
    dataset = dataset or "fashion-mnist"
    dense, retrain = _budgets(QUICK_BUDGETS, dataset)
    entries = method_entries("quick")
    specs = grid(dataset, ["lenet-300-100"], entries, TARGETS, (0,), dense, retrain)
    return Suite("quick", tuple(specs),
                 description=f"{dataset}, LeNet-300-100, {len(entries)} methods at 2-32x compression, seed 0; "
                             f"dense {dense['epochs']} epochs, retrain {retrain['epochs']} epochs",
                 notes="Budgets are short so the suite runs in minutes on 2 CPU cores; use `standard` for the "
                       "three-seed comparison.")


@register_suite("standard")
def standard(dataset: str | None = None) -> Suite:
    """Three seeds, LeNet-300-100 and LeNet-5, every suite method at five targets."""
    dataset = dataset or "fashion-mnist"
    dense, retrain = _budgets(STANDARD_BUDGETS, dataset)
    entries = method_entries("standard")
    specs = grid(dataset, ["lenet-300-100", "lenet5"], entries, TARGETS, (0, 1, 2), dense, retrain)
    return Suite("standard", tuple(specs),
                 description=f"{dataset}, LeNet-300-100 and LeNet-5, 5 targets, seeds 0-2; dense "
                             f"{dense['epochs']} epochs, retrain {retrain['epochs']} epochs")


# --------------------------------------------------------------------------- suite files

_FILE_KEYS = {"name", "description", "notes", "dataset", "models", "targets", "seeds", "baselines", "methods",
              "dense", "retrain", "data_kwargs", "calib_size"}


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read suite file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"suite file {path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"suite file {path} is YAML but PyYAML is not installed; "
                                  "pip install pyyaml, or write the suite as .toml") from None
            return yaml.safe_load(text)
    except ConfigError:
        raise
    except Exception as exc:  # tomllib / json / yaml each raise their own parse error
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"suite file {path} is not valid {suffix[1:].upper()}: {first}") from None
    raise ConfigError(f"suite file {path}: unknown format {suffix!r}; use .toml, .json or .yaml")


def load_suite_file(path, dataset: str | None = None) -> Suite:
    """Read a suite file (format in the module docstring).

    Args:
        path: a ``.toml``, ``.json`` or ``.yaml`` file.
        dataset: replaces the file's ``dataset`` when given.

    Returns:
        The :class:`Suite`; its specs are not validated yet (``experiment.validate_all`` does).

    Raises:
        ConfigError: unreadable file, bad syntax, unknown or ill-typed keys.
    """
    path = Path(path)
    d = _read_file(path)
    _check_tree(d, f"suite file {path}")
    if not isinstance(d, dict):
        raise ConfigError(f"suite file {path} must hold a table/object at the top level")
    if not d:   # else an empty file would silently run every default (a whole sweep)
        raise ConfigError(f"suite file {path} is empty; write at least its dataset, models, targets and "
                          "[[methods]] (see README, Benchmark harness)")
    unknown = sorted((k for k in d if k not in _FILE_KEYS), key=str)   # YAML keys may be numbers
    if unknown:
        shown = ", ".join(k if k.isprintable() else repr(k) for k in map(str, unknown))
        raise ConfigError(f"suite file {path}: unknown key(s) {shown}; known: {', '.join(sorted(_FILE_KEYS))}")
    where = f"suite file {path}"
    dataset = dataset or d.get("dataset")
    if not isinstance(dataset, str):
        raise ConfigError(f"{where}: set dataset = \"fashion-mnist\" (or another data set name)")
    models = d.get("models", ["lenet-300-100"])
    if isinstance(models, str):
        models = [models]
    model_list = []
    for m in _list(models, "models", where):
        if isinstance(m, str):
            model_list.append(m)
        elif isinstance(m, dict) and isinstance(m.get("name"), str) and set(m) <= {"name", "kwargs"}:
            model_list.append((m["name"], _dict(m.get("kwargs", {}), "model kwargs", where)))
        else:
            raise ConfigError(f"{where}: each model is a name or {{name = ..., kwargs = {{...}}}}, got {m!r}")
    targets = [_number(t, "targets", where) for t in _list(d.get("targets", list(TARGETS)), "targets", where)]
    seeds = _list(d.get("seeds", [0]), "seeds", where)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where}: seeds must be integers, got {seeds!r}")
    baselines = d.get("baselines", True)
    if not isinstance(baselines, bool):
        raise ConfigError(f"{where}: baselines must be true or false")
    entries = [(m, dict(hp), None) for m, hp in BASELINES] if baselines else []
    for m in _list(d.get("methods", []), "methods", where):
        if isinstance(m, str):
            entries.append((m, {}, None))
        elif isinstance(m, dict) and isinstance(m.get("name"), str) and set(m) <= {"name", "hparams", "targets"}:
            own = m.get("targets")
            own = tuple(_number(t, "method targets", where) for t in _list(own, "method targets", where)) if own is not None else None
            entries.append((m["name"], _dict(m.get("hparams", {}), "hparams", where), own))
        else:
            raise ConfigError(f"{where}: each method is a name or {{name = ..., hparams = {{...}}, targets = [...]}}, "
                              f"got {m!r}")
    if not entries:
        raise ConfigError(f"{where}: no methods (add [[methods]] or set baselines = true)")
    calib = d.get("calib_size")
    runs = len(model_list) * len(seeds) * sum(len(own if own is not None else targets) for _, _, own in entries)
    if runs > MAX_RUNS:   # the product of short lists can be huge: refuse before building it
        raise ConfigError(f"{where}: {runs} runs (models x methods x targets x seeds), more than {MAX_RUNS}; "
                          "split the suite into several files")
    specs = grid(dataset, model_list, entries, targets, seeds, _dict(d.get("dense", {}), "dense", where),
                 _dict(d.get("retrain", {}), "retrain", where), _dict(d.get("data_kwargs", {}), "data_kwargs", where),
                 calib)
    return Suite(name=str(d.get("name", path.stem)), specs=tuple(specs), description=str(d.get("description", "")),
                 notes=str(d.get("notes", "")))


#: the most values (counting each use of a YAML alias) and the deepest nesting a suite file may
#: hold, and the most runs it may describe.
MAX_VALUES, MAX_DEPTH, MAX_RUNS = 100_000, 64, 100_000


def _check_tree(doc, where: str) -> None:
    """ConfigError when ``doc`` holds more than :data:`MAX_VALUES` values or nests deeper than
    :data:`MAX_DEPTH`: YAML aliases can make a small file a huge or self-referring tree, which
    everything after the parser would walk for ever (or until the recursion limit)."""
    stack, count = [(doc, 0)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise ConfigError(f"{where} is too large or too deeply nested (over {MAX_VALUES} values or "
                              f"{MAX_DEPTH} levels; YAML anchors that refer to themselves?)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _list(value, key, where) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
    return value


def _dict(value, key, where) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a table/object, got {value!r}")
    return value


def _number(value, key, where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key} must be numbers, got {value!r}")
    return float(value)
