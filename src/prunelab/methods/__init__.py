"""Pruning methods, registered by name.

>>> prunelab.methods.list()
>>> method = prunelab.methods.create("magnitude", scope="layer")
>>> masks = method.prune(model, None, sparsity=0.9)

A new method is one file in this package: a class deriving from one of the three families in
:mod:`prunelab.methods.base`, with a frozen ``Hparams`` dataclass, decorated with
``@register("name")``, and imported at the bottom of this file.
"""

from __future__ import annotations

import importlib

from prunelab.errors import MethodError
from prunelab.methods.base import (
    FAMILIES,
    IterativeMethod,
    Method,
    MethodContext,
    MethodOutcome,
    OneShotMethod,
    TrainingMethod,
    check_sparsity,
)

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator registering a method under ``name``."""

    def decorate(cls):
        if cls.family not in FAMILIES:
            raise TypeError(f"{cls.__name__}.family must be one of {FAMILIES}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise TypeError(f"method name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def create(name: str, **hparams) -> Method:
    """An instance of method ``name`` with the given hyperparameters (others at their defaults)."""
    return get(name)(**hparams)


def list_methods(family: str | None = None) -> list[str]:
    """Registered method names (of one family when given)."""
    return sorted(n for n, c in _REGISTRY.items() if family is None or c.family == family)


list = list_methods  # noqa: A001 - the registry idiom: prunelab.methods.list()


def hparam_docs(name: str) -> dict[str, dict]:
    """Method ``name``'s hyperparameters: ``field -> {"default": value, "doc": text}``.

    The text is the field's entry in the ``Attributes:`` section of the ``Hparams`` docstring
    (continuation lines joined; empty when the field is not documented there).
    """
    import dataclasses

    cls = get(name).Hparams
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):   # a subclass's entry replaces its base's
        docs.update(_attribute_docs(klass.__dict__.get("__doc__")))
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out[f.name] = {"default": default, "doc": docs.get(f.name, "")}
    return out


def _attribute_docs(doc: str | None) -> dict[str, str]:
    """``name -> text`` from the ``Attributes:`` section of a Google-style docstring."""
    import inspect
    import re

    docs: dict[str, str] = {}
    current, in_attrs = None, False
    for line in inspect.cleandoc(doc or "").splitlines():
        if not line.strip():
            continue
        if line.strip() == "Attributes:":
            in_attrs = True
            continue
        if not in_attrs:
            continue
        if not line.startswith(" "):  # a new section ends the attributes
            break
        match = re.match(r"^ {4}(\w+(?:, \w+)*): ?(.*)$", line)
        if match:
            current = [n.strip() for n in match.group(1).split(",")]
            for n in current:
                docs[n] = match.group(2).strip()
        elif current:
            for n in current:
                docs[n] = (docs[n] + " " + line.strip()).strip()
    return docs


# Each module registers itself on import; one that fails to import is an error, never a silent skip.
for _module in ("magnitude", "hard_threshold", "layerwise.feta", "layerwise.nettrim", "layerwise.lobs",
                "iterative", "ltp", "gmp", "grda.method"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "register", "get", "create", "list", "list_methods", "hparam_docs", "Method", "OneShotMethod",
    "IterativeMethod", "TrainingMethod", "MethodContext", "MethodOutcome", "check_sparsity",
]
