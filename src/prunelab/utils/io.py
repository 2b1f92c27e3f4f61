"""Atomic file writes and plain JSON.

Every file prunelab writes goes to a temporary name beside its target (``.NAME.PID.tmp``) and is
renamed over it only when complete, so a crash or a kill never leaves a half-written file and never
destroys what was there before. A write that fails (disk full, no permission) raises a one-line
:class:`~prunelab.errors.StorageError` and removes its temporary file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

from prunelab.errors import PrunelabError, StorageError

# Writers in native code (safetensors) report an OS failure in their own exception type, with the
# Rust form of the OS message inside: "No space left on device (os error 28)".
_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def storage_error(path: str | os.PathLike, exc: BaseException, code: int | None = None) -> StorageError:
    """The one-line :class:`StorageError` for a failed write of ``path``.

    Args:
        path: the file that could not be written.
        exc: the failure (an ``OSError``, or a native writer's error).
        code: its ``errno`` when ``exc`` carries none.

    Returns:
        The error (``errno`` set), saying whether a previous file at ``path`` is still there.
    """
    path = Path(path)
    code = getattr(exc, "errno", None) if code is None else code
    reason = os.strerror(code) if code else " ".join(str(exc).split())
    before = "the previous file is unchanged" if path.exists() else "nothing was written"
    error = StorageError(f"cannot write {path}: {reason}; {before}; free some space or write elsewhere")
    error.errno = code
    return error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mkdir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    Args:
        path: the final file.
        mkdir: create the parent directories first.

    Raises:
        StorageError: the directory, the temporary file or the rename failed (disk full, no
            permission...); ``path`` is as it was and the temporary file is removed.

    Example:
        >>> with atomic_path("model.safetensors") as tmp:   # doctest: +SKIP
        ...     save_file(tensors, str(tmp))
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if mkdir:
            path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except PrunelabError:
        raise
    except OSError as exc:
        raise storage_error(path, exc) from exc
    except Exception as exc:
        native = _NATIVE_OS_ERROR.search(str(exc))
        if native is None:
            raise
        raise storage_error(path, exc, int(native.group(1))) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


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
