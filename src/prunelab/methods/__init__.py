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

from ..errors import MethodError
from .base import (
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

# Each module registers itself on import; a module still missing is simply not registered.
for _module in ("magnitude", "hard_threshold", "feta", "nettrim", "lobs", "iterative", "ltp", "gmp", "grda"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_module}":
            raise

__all__ = [
    "register", "get", "create", "list", "list_methods", "Method", "OneShotMethod",
    "IterativeMethod", "TrainingMethod", "MethodContext", "MethodOutcome", "check_sparsity",
]
