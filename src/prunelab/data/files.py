"""Where data files are looked for, and reading one file whole (gunzipped when it is gzip data).

File-backed datasets are searched in this order, the first complete set of files winning: an
explicit ``data_dir``; every folder of ``$PRUNELAB_DATA``; the user cache
(``$XDG_CACHE_HOME/prunelab`` or ``~/.cache/prunelab``); :data:`SYSTEM_LOCATIONS`. Each root is
tried as is and in the usual sub-layouts (:data:`SUBDIRS`).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from prunelab.data.datasets import canonical_name
from prunelab.errors import DataError
from prunelab.utils import memory

#: System folders searched last. Tests monkeypatch this (here, where :func:`search_paths` reads it).
SYSTEM_LOCATIONS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

#: The sub-folders tried under every root, per dataset ("" is the root itself).
SUBDIRS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("", "FashionMNIST/raw", "fashion-mnist", "fashion_mnist"),
    "mnist": ("", "MNIST/raw", "mnist"),
    "cifar10": ("", "cifar-10-batches-py", "cifar-10-batches-bin", "cifar10",
                "cifar10/cifar-10-batches-py", "cifar10/cifar-10-batches-bin"),
}

#: What to tell the user when a file of the dataset is damaged.
FIX = {
    "fashion-mnist": (
        "re-download it from https://github.com/zalandoresearch/fashion-mnist, "
        "or reinstall the Debian package (`sudo apt-get install --reinstall dataset-fashion-mnist`)"
    ),
    "mnist": "re-download the MNIST IDX files and replace it",
    "cifar10": (
        "re-download cifar-10-python.tar.gz (or cifar-10-binary.tar.gz) from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and extract it again"
    ),
}


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "prunelab"


def _roots(data_dir: str | os.PathLike | None) -> list[tuple[Path, str]]:
    roots: list[tuple[Path, str]] = []
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(
                f"data_dir {str(path)!r} does not exist or is not a folder; "
                f"pass an existing folder with --data-dir (or drop it to use the default search)"
            )
        roots.append((path, "data_dir"))
    for part in os.environ.get("PRUNELAB_DATA", "").split(os.pathsep):
        if part.strip():
            roots.append((Path(part.strip()).expanduser(), "$PRUNELAB_DATA"))
    roots.append((_cache_root(), "user cache"))
    return roots


def search_paths(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every folder searched for a file-backed dataset, in search order.

    Args:
        name: dataset name.
        data_dir: the explicit folder searched first. If it is given, it must exist.

    Returns:
        The folders, in search order. Datasets without files (digits, synthetic) return ``[]``.
    """
    key = canonical_name(name)
    if key not in SUBDIRS:
        return []
    paths = [root / sub if sub else root for root, _ in _roots(data_dir) for sub in SUBDIRS[key]]
    paths.extend(SYSTEM_LOCATIONS.get(key, ()))
    unique: dict[Path, None] = {}
    for path in paths:
        unique.setdefault(path, None)
    return [*unique]


def file_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, mtime, size): the cache key of a parsed file, so a changed file is reread."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


#: bytes read (or decompressed) at a time.
_CHUNK = 1 << 24


def read_bytes(path: Path, fix: str, max_size: int | None = None) -> bytes:
    """The content of ``path``, decompressed when it is gzip data (whatever its name).

    Args:
        path: the file.
        fix: what to tell the user to do if the file is damaged.
        max_size: read at most this many bytes of content (for a format whose header declares its
            size: a damaged header or a gzip bomb then cannot make the read exhaust memory).

    Returns:
        The content, or its first ``max_size`` bytes.

    Raises:
        DataError: unreadable file, corrupt gzip data, a ``.gz`` name on plain data, or content
            that does not fit in the memory available.
    """
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; {fix}") from err
    is_gzip = False
    with handle:
        try:
            is_gzip = handle.read(2) == b"\x1f\x8b"  # gzip magic, whatever the file is called
            handle.seek(0)
            if not is_gzip and path.suffix == ".gz":
                raise DataError(f"{path} is named .gz but is not gzip data; {fix}")
            return _read_stream(gzip.GzipFile(fileobj=handle) if is_gzip else handle, path, max_size)
        except (OSError, EOFError, zlib.error) as err:
            if is_gzip:
                raise DataError(f"{path} is a corrupt or truncated gzip file ({err}); {fix}") from err
            raise DataError(f"cannot read {path}: {err.strerror or err}; {fix}") from err


def _read_stream(stream, path: Path, max_size: int | None) -> bytes:
    """At most ``max_size`` bytes of ``stream``, in chunks: one ``read(n)`` would allocate ``n``
    bytes up front, and a decompressed size is only known once it is reached."""
    available = memory.available_bytes()
    parts, total = [], 0
    while max_size is None or total < max_size:
        part = stream.read(_CHUNK if max_size is None else min(_CHUNK, max_size - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
        if available is not None and 2 * total > available:   # the parts and their join
            raise DataError(f"{path} does not fit in memory: more than {memory.format_bytes(total)} of data, "
                            f"{memory.format_bytes(available)} available; use a machine with more memory")
    return b"".join(parts)

