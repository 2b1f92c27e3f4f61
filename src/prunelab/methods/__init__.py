"""Pruning methods, registered by name.

>>> prunelab.methods.registry.list()
>>> method = prunelab.methods.create("magnitude", scope="layer")
>>> masks = method.prune(model, None, sparsity=0.9)

A new method is one module in this package: a class deriving from one of the three families in
:mod:`prunelab.methods.base`, with a frozen ``Hparams`` dataclass whose fields are documented in
its ``Attributes:`` section, decorated with ``@register("name")``, and imported at the bottom of
this file.
"""

from __future__ import annotations

import dataclasses
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
from prunelab.utils.docstrings import class_attribute_docs, field_defaults
from prunelab.utils.registry import Registry

registry: Registry[type[Method]] = Registry("method", error=MethodError)

# The registry's own dict: tests insert stand-in methods with ``monkeypatch.setitem``.
_REGISTRY = registry._entries


def register(name: str):
    """Class decorator registering a method class under ``name``.

    Sets ``cls.name``; the class's ``family`` must be one of :data:`~prunelab.methods.base.FAMILIES`.

    Raises:
        TypeError: the class has no valid family.
        MethodError: another class is already registered under ``name``.
    """

    def decorate(cls):
        if cls.family not in FAMILIES:
            raise TypeError(f"{cls.__name__}.family must be one of {FAMILIES}")
        registry.register(name, cls)
        cls.name = name
        return cls

    return decorate


def get(name: str) -> type[Method]:
    """The method class registered as ``name`` (:class:`MethodError` listing the known names if none)."""
    return registry.get(name)


def create(name: str, **hparams) -> Method:
    """An instance of method ``name`` with the given hyperparameters (others at their defaults)."""
    return get(name)(**hparams)


def hparam_docs(name: str) -> dict[str, dict]:
    """Method ``name``'s hyperparameters: ``field -> {"default": value, "doc": text}``.

    The text is the field's entry in the ``Attributes:`` section of the ``Hparams`` docstring
    (continuation lines joined; empty when the field is not documented there).
    """
    cls = get(name).Hparams
    docs = class_attribute_docs(cls)   # a subclass's entry replaces its base's
    return {field: {"default": None if default is dataclasses.MISSING else default, "doc": docs.get(field, "")}
            for field, default in field_defaults(cls).items()}


# Each module registers itself on import; one that fails to import is an error, never a silent skip.
for _module in ("magnitude", "hard_threshold", "layerwise.feta", "layerwise.nettrim", "layerwise.lobs",
                "layerwise.sparsegpt", "layerwise.wanda", "iterative", "ltp", "gmp", "grda.method"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "registry", "register", "get", "create", "hparam_docs", "Method", "OneShotMethod",
    "IterativeMethod", "TrainingMethod", "MethodContext", "MethodOutcome", "check_sparsity",
]
