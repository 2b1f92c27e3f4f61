"""One registry idiom for methods, models, data sets and suites: ``register``, ``get``, ``create``, ``list``.

A name that does not resolve is an error that lists the known names, never a silent skip; a name
registered twice is an error too.
"""

from __future__ import annotations

import builtins
from typing import Any, Callable, Generic, Iterator, TypeVar

from prunelab.errors import PrunelabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects (classes or factories), filled by a decorator.

    Args:
        kind: what is registered ("method", "model", ...), for messages.
        error: the :class:`PrunelabError` subclass raised for an unknown name.
        normalize: maps a user's spelling to the registered key (e.g. lower-case, aliases).

    Example:
        >>> models = Registry("model")
        >>> @models.register("tiny")
        ... def tiny(width=4):
        ...     return ["layer"] * width
        >>> models.create("tiny", width=2)
        ['layer', 'layer']
        >>> models.list()
        ['tiny']
    """

    def __init__(self, kind: str, error: type[PrunelabError] = PrunelabError,
                 normalize: Callable[[str], str] | None = None):
        self.kind = kind
        self.error = error
        self._normalize = normalize or (lambda name: name)
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` as ``name`` (normalised); without ``obj``, a decorator that does so.

        Raises:
            the registry's error: ``name`` is registered already (by this object or another).
        """
        key = self._normalize(name)

        def add(item: T) -> T:
            if key in self._entries:
                raise self.error(f"{self.kind} {key!r} is registered twice: already registered by "
                                 f"{_describe(self._entries[key])}, again by {_describe(item)}; pick another name")
            self._entries[key] = item
            return item

        return add if obj is None else add(obj)

    def key(self, name: str) -> str:
        """The registered key of ``name``; raises the registry's error when there is none."""
        key = self._normalize(name) if isinstance(name, str) else name
        if key not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self.list())}")
        return key

    def get(self, name: str) -> T:
        """The object registered as ``name``."""
        return self._entries[self.key(name)]

    def create(self, name: str, *args: Any, **kwargs: Any):
        """Call the object registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def list(self) -> builtins.list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)


def _describe(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
