"""Atomic file writes and plain JSON.

Every file prunelab writes goes to a temporary name beside its target and is renamed over it only
when complete, so a crash or a kill never leaves a half-written file and never destroys what was
there before.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mkdir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    Args:
        path: the final file.
        mkdir: create the parent directories first.

    Example:
        >>> with atomic_path("model.safetensors") as tmp:   # doctest: +SKIP
        ...     save_file(tensors, str(tmp))
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mkdir: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path, mkdir) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, mkdir: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), mkdir)


def plain_json(obj: Any, finite: bool = False) -> Any:
    """``obj`` as plain JSON types, leniently.

    Mappings become dicts with string keys, lists and tuples become lists, one-element tensors and
    numpy scalars become numbers, larger tensors and arrays nested lists, paths and any other object
    their ``str``. With ``finite=True``, NaN and infinities become ``None`` (strict JSON).
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return None if finite and not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): plain_json(v, finite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v, finite) for v in obj]
    if hasattr(obj, "item") and _count(obj) == 1:   # torch tensors, numpy arrays and scalars
        return plain_json(obj.item(), finite)
    if hasattr(obj, "tolist"):
        return plain_json(obj.tolist(), finite)
    return str(obj)


def _count(obj: Any) -> int:
    """Number of elements of a tensor (``numel()``) or array (``size``); 1 for a numpy scalar."""
    numel = getattr(obj, "numel", None)
    if callable(numel):
        return int(numel())
    return int(getattr(obj, "size", 1))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, finite: bool = True,
                      mkdir: bool = False, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (through :func:`plain_json`) to ``path`` atomically; returns the path."""
    text = json.dumps(plain_json(obj, finite), indent=indent, allow_nan=not finite, sort_keys=sort_keys)
    return atomic_write_text(path, text + "\n", mkdir)
