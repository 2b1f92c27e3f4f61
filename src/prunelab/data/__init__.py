"""Datasets: a name registry, file search, safe parsing, validation split and normalisation.

``load(name)`` returns a :class:`Dataset` of in-memory float32 tensors, shaped ``(n, C, H, W)``.
The training loop batches these tensors itself.

Where files come from. File-backed datasets are searched in this order, and the first complete
set of files wins:

1. an explicit ``data_dir`` (the CLI's ``--data-dir``);
2. every folder in ``$PRUNELAB_DATA`` (``os.pathsep``-separated);
3. the user cache, ``$XDG_CACHE_HOME/prunelab`` or ``~/.cache/prunelab``;
4. system locations. Only Fashion-MNIST has one: ``/usr/share/datasets/fashion-mnist``, from the
   Debian package ``dataset-fashion-mnist``.

Each root is tried as is and in the usual sub-layouts. For example, Fashion-MNIST is looked for in
``ROOT``, ``ROOT/FashionMNIST/raw`` (torchvision) and ``ROOT/fashion-mnist``. prunelab never
downloads and never writes a cache to disk. Parsed raw arrays are kept in a small in-process LRU
cache, keyed by each file's resolved path, mtime and size.

Safety. The CIFAR-10 "python version" batches are pickles. They are read with a restricted
unpickler that can only rebuild numpy arrays and dtypes, so a crafted file cannot run code.

Protocol (papers.md §2.5, DESIGN.md "Data"):

* The validation split is carved from the training set with a permutation seeded by ``seed``.
  The test set is never used for selection.
* ``normalize="standard"`` first scales pixels to [0, 1], then subtracts the per-channel mean and
  divides by the per-channel std of papers.md §2.5. ``"unit"`` only scales to [0, 1]: Pitas et
  al. divide by 255 and subtract no mean. ``"none"`` keeps the raw values as float32.
"""

from __future__ import annotations

import builtins
import codecs
import functools
import gzip
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prunelab.errors import ConfigError, DataError

__all__ = [
    "Split",
    "Dataset",
    "RawData",
    "load",
    "list_datasets",
    "register",
    "search_paths",
    "read_idx",
    "NORMALIZATIONS",
]

NORMALIZATIONS = ("standard", "unit", "none")

#: papers.md §2.5: (mean, std) per channel, applied after scaling pixels to [0, 1].
STANDARD_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}

#: System folders searched last. Tests monkeypatch this.
SYSTEM_LOCATIONS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

_ALIASES = {
    "fmnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
}


# --------------------------------------------------------------------------------------------
# Public containers
# --------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split, held in memory.

    Attributes:
        x: float32 inputs, shape ``(n, *in_shape)``, already normalised.
        y: int64 class labels, shape ``(n,)``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    """A loaded dataset: train / val / test splits and what they are.

    Attributes:
        name: registry name, for example ``"fashion-mnist"``.
        train: training split. It is what is left after the validation carve, capped by ``limit``.
        val: validation split, carved from the training set (never from test). May be empty.
        test: the official test split (for digits, a fixed holdout; see ``_load_digits``).
        in_shape: shape of one input, for example ``(1, 28, 28)``.
        num_classes: number of classes.
        source: where the data came from (folder and format), for reports.
        info: how the data was prepared: normalize, mean/std used, seed, val_size, limit.
    """

    name: str
    train: Split
    val: Split
    test: Split
    in_shape: tuple[int, ...]
    num_classes: int
    source: str
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RawData:
    """What a registered loader returns: raw arrays before splitting and normalising.

    Attributes:
        train_x, test_x: arrays of shape ``(n, C, H, W)`` (uint8 pixels or floats).
        train_y, test_y: integer labels in ``[0, num_classes)``.
        num_classes: number of classes.
        source: where the data came from.
        scale: divide by this to map values to [0, 1] (255 for pixels, 16 for digits). Use 1 when
            the values have no natural range (synthetic).
        mean, std: per-channel statistics that "standard" applies after scaling. ``None`` means
            "standardise with the mean/std of the returned train split".
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    source: str
    scale: float = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class _Entry:
    loader: Callable[..., RawData]
    default_val_size: int | float


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, default_val_size: int | float = 5000) -> Callable:
    """Register a dataset loader: ``@register("name")`` on ``loader(data_dir, **kwargs) -> RawData``.

    :func:`load` calls the loader with the caller's ``data_dir`` and extra keyword arguments, then
    carves the validation split, applies ``limit`` and normalises.

    Args:
        name: dataset name, lower case. Must not be registered already.
        default_val_size: the ``val_size`` that :func:`load` uses when the caller passes ``None``.

    Returns:
        The decorator. It returns the loader unchanged.

    Example:
        >>> @register("tiny", default_val_size=0.1)
        ... def _tiny(data_dir, **kwargs):
        ...     return RawData(...)
    """

    def decorator(loader: Callable[..., RawData]) -> Callable[..., RawData]:
        if name in _REGISTRY:
            raise ConfigError(f"dataset {name!r} is registered twice; pick another name")
        _REGISTRY[name] = _Entry(loader, default_val_size)
        return loader

    return decorator


def list_datasets() -> builtins.list[str]:
    """Names of the registered datasets, sorted.

    Returns:
        For example ``["cifar10", "digits", "fashion-mnist", "mnist", "synthetic"]``.
    """
    return sorted(_REGISTRY)


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"dataset name must be a string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ConfigError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        )
    return key


# --------------------------------------------------------------------------------------------
# load(): split, cap, normalise
# --------------------------------------------------------------------------------------------


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    val_size: int | float | None = None,
    seed: int = 0,
    normalize: str = "standard",
    limit: int | None = None,
    **kwargs,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: a name from :func:`list` (aliases: ``fmnist``, ``fashion_mnist``, ``cifar-10``).
        data_dir: folder to search first (see the module docstring for the full search order).
            If it is given, it must exist.
        val_size: size of the validation split carved from the training set. An int is a number
            of samples, and 0 gives an empty split. A float in ``[0, 1)`` is a fraction of the
            training set. ``None`` means the dataset's default: 5000 for the image sets, 0.1 for
            ``digits`` and ``synthetic``.
        seed: seeds the permutation that picks the validation samples. It also picks the training
            samples kept by ``limit``.
        normalize: ``"standard"``, ``"unit"`` or ``"none"`` (see the module docstring). For
            ``digits`` and ``synthetic``, ``"standard"`` uses the returned train split's
            per-channel mean/std. For ``synthetic``, ``"unit"`` equals ``"none"``.
        limit: keep at most this many training samples (after the validation carve); for tests
            and quick runs. Validation and test splits are not capped.
        **kwargs: options of the dataset's loader, for example
            ``load("synthetic", in_shape=(1, 8, 8), num_classes=10, n_train=500)``.

    Returns:
        A :class:`Dataset` of float32 ``x`` and int64 ``y`` tensors.

    Raises:
        ConfigError: unknown dataset, option or normalisation, or ``val_size``/``limit`` out of range.
        DataError: files missing, truncated or corrupt. The message names the file and says what to do.

    Example:
        >>> ds = load("fashion-mnist", val_size=5000, normalize="unit")
        >>> len(ds.train), len(ds.val), len(ds.test)
        (55000, 5000, 10000)
    """
    key = _canonical(name)
    if normalize not in NORMALIZATIONS:
        raise ConfigError(
            f"unknown normalize={normalize!r}; choose one of {', '.join(NORMALIZATIONS)}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    entry = _REGISTRY[key]
    if val_size is None:
        val_size = entry.default_val_size
    raw = entry.loader(data_dir, **kwargs)

    n_full = int(raw.train_y.shape[0])
    n_val = _val_count(val_size, n_full, key)
    order = np.random.default_rng(int(seed)).permutation(n_full)
    val_idx = np.sort(order[:n_val])
    train_idx = order[n_val:]
    if limit is not None:
        train_idx = train_idx[: int(limit)]
    # Sorting makes the gather read memory in order; the training loop shuffles anyway.
    train_idx = np.sort(train_idx)

    train_x = _to_float(raw.train_x[train_idx])
    val_x = _to_float(raw.train_x[val_idx])
    test_x = _to_float(raw.test_x)
    mean, std = _normalize_inplace(raw, normalize, train_x, (val_x, test_x))

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        # Copy y too: the raw labels may be a read-only array shared through the cache.
        return Split(torch.from_numpy(x), torch.from_numpy(np.array(y, dtype=np.int64, copy=True)))

    return Dataset(
        name=key,
        train=split(train_x, raw.train_y[train_idx]),
        val=split(val_x, raw.train_y[val_idx]),
        test=split(test_x, raw.test_y),
        in_shape=tuple(int(d) for d in raw.train_x.shape[1:]),
        num_classes=raw.num_classes,
        source=raw.source,
        info={
            "normalize": normalize,
            "scale": raw.scale,
            "mean": mean,
            "std": std,
            "seed": int(seed),
            "val_size": n_val,
            "limit": None if limit is None else int(limit),
        },
    )


def _val_count(val_size: int | float, n_full: int, key: str) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise ConfigError(f"val_size must be an int or a float, got {val_size!r}")
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 <= val_size < 1.0:
            raise ConfigError(
                f"val_size={val_size} is a fraction and must be in [0, 1); "
                f"or pass a sample count (int)"
            )
        count = int(round(float(val_size) * n_full))
    else:
        count = int(val_size)
    if not 0 <= count < n_full:
        raise ConfigError(
            f"val_size={val_size} is out of range for {key}, whose training set has {n_full} "
            f"samples; use 0 <= val_size < {n_full}, or a fraction such as 0.1"
        )
    return count


def _to_float(x: np.ndarray) -> np.ndarray:
    # Always a fresh array: normalisation works in place and must never touch cached raw data.
    return np.array(x, dtype=np.float32, order="C", copy=True)


def _normalize_inplace(
    raw: RawData, normalize: str, train_x: np.ndarray, others: tuple[np.ndarray, ...]
) -> tuple[builtins.list[float] | None, builtins.list[float] | None]:
    """Normalise all splits in place. Returns the (mean, std) applied, or (None, None)."""
    arrays = (train_x, *others)
    if normalize == "none":
        return None, None
    if raw.scale != 1.0:
        scale = np.float32(raw.scale)
        for x in arrays:
            np.divide(x, scale, out=x)
    if normalize == "unit":
        return None, None
    if raw.mean is not None:
        mean = np.asarray(raw.mean, dtype=np.float64)
        std = np.asarray(raw.std, dtype=np.float64)
    else:
        axes = (0,) + tuple(range(2, train_x.ndim))
        mean = train_x.mean(axis=axes, dtype=np.float64)
        std = train_x.std(axis=axes, dtype=np.float64)
        # A constant channel has std 0; leaving it unscaled beats dividing by zero.
        std = np.where(std > 1e-12, std, 1.0)
    shape = (1, -1) + (1,) * (train_x.ndim - 2)
    mean32 = mean.astype(np.float32).reshape(shape)
    std32 = std.astype(np.float32).reshape(shape)
    for x in arrays:
        np.subtract(x, mean32, out=x)
        np.divide(x, std32, out=x)
    return [float(v) for v in mean], [float(v) for v in std]


# --------------------------------------------------------------------------------------------
# Search paths
# --------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "prunelab"


def _roots(data_dir: str | os.PathLike | None) -> builtins.list[tuple[Path, str]]:
    roots: builtins.list[tuple[Path, str]] = []
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


_SUBDIRS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("", "FashionMNIST/raw", "fashion-mnist", "fashion_mnist"),
    "mnist": ("", "MNIST/raw", "mnist"),
    "cifar10": ("", "cifar-10-batches-py", "cifar-10-batches-bin", "cifar10",
                "cifar10/cifar-10-batches-py", "cifar10/cifar-10-batches-bin"),
}


def search_paths(name: str, data_dir: str | os.PathLike | None = None) -> builtins.list[Path]:
    """Every folder searched for a file-backed dataset, in search order.

    Args:
        name: dataset name.
        data_dir: the explicit folder searched first. If it is given, it must exist.

    Returns:
        The folders, in search order. Datasets without files (digits, synthetic) return ``[]``.
    """
    key = _canonical(name)
    if key not in _SUBDIRS:
        return []
    paths = [root / sub if sub else root for root, _ in _roots(data_dir) for sub in _SUBDIRS[key]]
    paths.extend(SYSTEM_LOCATIONS.get(key, ()))
    unique: dict[Path, None] = {}
    for path in paths:
        unique.setdefault(path, None)
    return [*unique]


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_FILES = {
    "train_x": ("train-images-idx3-ubyte", 0x00000803),
    "train_y": ("train-labels-idx1-ubyte", 0x00000801),
    "test_x": ("t10k-images-idx3-ubyte", 0x00000803),
    "test_y": ("t10k-labels-idx1-ubyte", 0x00000801),
}

_FIX = {
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


def _find_idx_file(folder: Path, base: str) -> Path | None:
    # The Kaggle / original-site variants spell "train-images.idx3-ubyte" with a dot.
    for stem in (base, base.replace("-idx", ".idx")):
        for name in (stem, stem + ".gz"):
            path = folder / name
            if path.is_file():
                return path
    return None


def _read_bytes(path: Path, fix: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; {fix}") from err
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({err}); {fix}") from err
    elif path.suffix == ".gz":
        raise DataError(f"{path} is named .gz but is not gzip data; {fix}")
    return data


def read_idx(path: str | os.PathLike, magic: int | None = None, fix: str = "replace the file") -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a read-only uint8 array.

    Format (LeCun et al., MNIST): a big-endian 4-byte magic ``0x0000TTNN`` (TT = 0x08 for
    unsigned bytes, NN = number of dimensions), then NN big-endian uint32 sizes, then the data.

    Args:
        path: the file. It may be gzip-compressed, whatever its name.
        magic: the expected magic number (0x803 for images, 0x801 for labels), or None for any
            unsigned-byte IDX file.
        fix: what to tell the user to do if the file is damaged.

    Returns:
        A read-only uint8 array shaped like the header says.

    Raises:
        DataError: wrong magic, short header, or a byte count that does not match the header.
    """
    path = Path(path)
    data = _read_bytes(path, fix)
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes, no IDX header); {fix}")
    found = int.from_bytes(data[:4], "big")
    if data[0:2] != b"\0\0" or data[2] != 0x08 or (magic is not None and found != magic):
        expected = f"0x{magic:08x}" if magic is not None else "0x000008NN"
        raise DataError(
            f"{path} is not the expected IDX file: magic number 0x{found:08x}, expected {expected}; {fix}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its IDX header; {fix}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected_len:
        raise DataError(
            f"{path} is truncated or damaged: its header says {'x'.join(map(str, dims))} "
            f"({expected_len} bytes) but it holds {len(data)} bytes; {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=4)
def _parse_idx_set(keys: tuple[tuple[str, int, int], ...], fix: str) -> tuple[np.ndarray, ...]:
    paths = [Path(k[0]) for k in keys]
    arrays = [read_idx(p, _IDX_FILES[slot][1], fix) for p, slot in zip(paths, _IDX_FILES)]
    train_x, train_y, test_x, test_y = arrays
    for images, labels, ipath, lpath in ((train_x, train_y, paths[0], paths[1]),
                                         (test_x, test_y, paths[2], paths[3])):
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{ipath} holds {images.shape[0]} images but {lpath} holds {labels.shape[0]} "
                f"labels; the files do not belong together; {fix}"
            )
        if labels.size and int(labels.max()) >= 10:
            raise DataError(f"{lpath} has label {int(labels.max())}, outside 0..9; {fix}")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{paths[0]} has images of {train_x.shape[1:]} but {paths[2]} has {test_x.shape[1:]}; {fix}"
        )
    return train_x[:, None], train_y, test_x[:, None], test_y


def _load_idx_dataset(key: str, title: str, how_to_get: str, data_dir) -> RawData:
    searched: builtins.list[str] = []
    partial: builtins.list[str] = []
    for folder in search_paths(key, data_dir):
        searched.append(str(folder))
        if not folder.is_dir():
            continue
        found = {slot: _find_idx_file(folder, base) for slot, (base, _) in _IDX_FILES.items()}
        if all(found.values()):
            keys = tuple(_file_key(found[slot]) for slot in _IDX_FILES)
            train_x, train_y, test_x, test_y = _parse_idx_set(keys, _FIX[key])
            gz = "gzip" if any(p.suffix == ".gz" for p in found.values()) else "raw"
            return RawData(train_x, train_y, test_x, test_y, 10, f"{folder} (IDX, {gz})", 255.0,
                           *STANDARD_STATS[key])
        have = [p.name for p in found.values() if p is not None]
        if have:
            missing = [base for slot, (base, _) in _IDX_FILES.items() if found[slot] is None]
            partial.append(f"{folder} has {', '.join(have)} but lacks {', '.join(missing)}[.gz]")
    names = ", ".join(f"{base}[.gz]" for base, _ in _IDX_FILES.values())
    note = f" Incomplete: {'; '.join(partial)}." if partial else ""
    raise DataError(
        f"{title} not found: looked for {names} in: {'; '.join(searched)}.{note} {how_to_get} "
        f"prunelab never downloads."
    )


@register("fashion-mnist")
def _load_fashion_mnist(data_dir=None, **kwargs) -> RawData:
    """Fashion-MNIST (Xiao et al. 2017): 60000 train / 10000 test 28x28 grey images, 10 classes."""
    _no_kwargs("fashion-mnist", kwargs)
    return _load_idx_dataset(
        "fashion-mnist",
        "Fashion-MNIST",
        "To get it: `sudo apt-get install dataset-fashion-mnist` (installs "
        "/usr/share/datasets/fashion-mnist), or put the four files from "
        "https://github.com/zalandoresearch/fashion-mnist in a folder DIR and pass --data-dir DIR "
        "or set PRUNELAB_DATA=DIR.",
        data_dir,
    )


@register("mnist")
def _load_mnist(data_dir=None, **kwargs) -> RawData:
    """MNIST (LeCun et al. 1998): 60000 train / 10000 test 28x28 grey digits, 10 classes."""
    _no_kwargs("mnist", kwargs)
    return _load_idx_dataset(
        "mnist",
        "MNIST",
        "To get it: put the four MNIST IDX files (gzipped or not) in a folder DIR "
        "(or a torchvision download, DIR/MNIST/raw) and pass --data-dir DIR or set PRUNELAB_DATA=DIR.",
        data_dir,
    )


def _no_kwargs(key: str, kwargs: dict) -> None:
    if kwargs:
        raise ConfigError(f"dataset {key!r} takes no options, got {', '.join(sorted(kwargs))}")


# --------------------------------------------------------------------------------------------
# CIFAR-10: python batches (restricted unpickler) or binary batches
# --------------------------------------------------------------------------------------------

_CIFAR_PY = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_BIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _latin1_encode(text, encoding="latin1", errors="strict"):
    # Protocol-2 pickles from Python 3 store bytes as _codecs.encode(str, "latin1"). Any other
    # codec is refused, so that this one allowed global cannot run arbitrary codecs.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1", errors)


def _numpy_global(module: str, name: str):
    import importlib

    # numpy 2 renamed numpy.core to numpy._core and warns on the old name; CIFAR's Python 2
    # pickles use the old one, so the new name is tried first.
    for candidate in (module.replace("numpy.core", "numpy._core"),
                      module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays and dtypes. Any other global is refused, so no code can run."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self._ALLOWED:
            return _numpy_global(module, name)
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not allowed in a CIFAR batch (only numpy arrays are)"
        )


def _read_cifar_py_batch(path: Path, fix: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            # The original batches are Python 2 pickles; "bytes" keeps their str keys as bytes.
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"refusing to load {path}: {err}; {fix}") from err
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OSError,
            MemoryError) as err:
        raise DataError(f"{path} is truncated or not a CIFAR-10 python batch ({err}); {fix}") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (no dict inside); {fix}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path} has no uint8 'data' array of shape (n, 3072); {fix}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path} has malformed 'labels' ({err}); {fix}") from err
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path} holds {data.shape[0]} images but {labels.size} labels; {fix}"
        )
    _check_labels(labels, path, fix)
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_bin_batch(path: Path, fix: str) -> tuple[np.ndarray, np.ndarray]:
    data = _read_bytes(path, fix)
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DataError(
            f"{path} is truncated or damaged: {len(data)} bytes is not a whole number of "
            f"{_CIFAR_RECORD}-byte CIFAR-10 records; {fix}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, path, fix)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _check_labels(labels: np.ndarray, path: Path, fix: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(f"{path} has labels outside 0..9; {fix}")


@functools.lru_cache(maxsize=2)
def _parse_cifar(binary: bool, keys: tuple[tuple[str, int, int], ...]) -> tuple[np.ndarray, ...]:
    reader = _read_cifar_bin_batch if binary else _read_cifar_py_batch
    parts = [reader(Path(k[0]), _FIX["cifar10"]) for k in keys]
    train_x = np.concatenate([x for x, _ in parts[:-1]])
    train_y = np.concatenate([y for _, y in parts[:-1]])
    test_x, test_y = parts[-1]
    test_x = np.ascontiguousarray(test_x)
    for array in (train_x, train_y, test_x, test_y):
        array.flags.writeable = False  # shared through the cache: nobody may modify it
    return train_x, train_y, test_x, test_y


@register("cifar10")
def _load_cifar10(data_dir=None, **kwargs) -> RawData:
    """CIFAR-10 (Krizhevsky 2009): 50000 train / 10000 test 32x32 RGB images, 10 classes."""
    _no_kwargs("cifar10", kwargs)
    searched: builtins.list[str] = []
    archives: builtins.list[str] = []
    for folder in search_paths("cifar10", data_dir):
        searched.append(str(folder))
        if not folder.is_dir():
            continue
        for binary, names in ((False, _CIFAR_PY), (True, _CIFAR_BIN)):
            paths = [folder / n for n in names]
            if all(p.is_file() for p in paths):
                keys = tuple(_file_key(p) for p in paths)
                train_x, train_y, test_x, test_y = _parse_cifar(binary, keys)
                fmt = "binary batches" if binary else "python batches"
                return RawData(train_x, train_y, test_x, test_y, 10, f"{folder} (CIFAR-10 {fmt})",
                               255.0, *STANDARD_STATS["cifar10"])
        for archive in ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"):
            if (folder / archive).is_file():
                archives.append(str(folder / archive))
    note = (f" Found {', '.join(archives)}: extract it there (tar xzf ARCHIVE) and retry."
            if archives else "")
    raise DataError(
        "CIFAR-10 not found: looked for cifar-10-batches-py (data_batch_1..5, test_batch) or "
        f"cifar-10-batches-bin (*.bin) in: {'; '.join(searched)}.{note} To get it: download "
        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it in a "
        "folder DIR and pass --data-dir DIR or set PRUNELAB_DATA=DIR. prunelab never downloads."
    )


# --------------------------------------------------------------------------------------------
# digits (scikit-learn) and synthetic
# --------------------------------------------------------------------------------------------

#: The digits test holdout is fixed (it does not depend on ``load(seed=...)``): 20% of the 1797
#: images, picked by a permutation seeded with this constant, so every run tests on the same 359.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0


@register("digits", default_val_size=0.1)
def _load_digits(data_dir=None, **kwargs) -> RawData:
    """scikit-learn's bundled 8x8 digits (UCI optdigits test set), values 0..16, 10 classes.

    The dataset has no official test split. prunelab holds out a fixed 20% (359 images), chosen
    by a permutation seeded with ``DIGITS_TEST_SEED``. The remaining 1438 images form the
    training set. ``"unit"`` divides by 16.
    """
    _no_kwargs("digits", kwargs)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_TEST_SEED).permutation(len(y))
    n_test = int(round(DIGITS_TEST_FRACTION * len(y)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return RawData(x[train], y[train], x[test], y[test], 10, "sklearn.datasets.load_digits", 16.0)


@register("synthetic", default_val_size=0.1)
def _load_synthetic(
    data_dir=None,
    in_shape=(1, 8, 8),
    num_classes: int = 10,
    n_train: int = 1000,
    n_test: int = 500,
    separation: float = 4.0,
    data_seed: int = 0,
    **kwargs,
) -> RawData:
    """Gaussian classes. It is learnable by a linear model and costs nothing to make.

    Each class ``c`` has a mean ``mu_c = separation * g_c / sqrt(d)``, where ``g_c ~ N(0, I_d)``
    and ``d = prod(in_shape)``. A sample is ``mu_c + N(0, I_d)``. Two class means are thus about
    ``separation * sqrt(2)`` noise-stds apart, whatever ``d`` is. With the defaults, a linear
    model reaches about 95% test accuracy.
    Labels are balanced (``i % num_classes``, shuffled).

    Args:
        in_shape: shape of one input, for example ``(1, 8, 8)`` or ``(3, 32, 32)``.
        num_classes: number of classes (>= 2).
        n_train, n_test: sizes of the training and test sets.
        separation: distance scale between class means. Higher is easier.
        data_seed: seeds the generator. The data does not depend on ``load(seed=...)``, which only
            picks the validation split.
    """
    _no_kwargs("synthetic", kwargs)
    try:
        shape = tuple(int(d) for d in in_shape)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"synthetic in_shape must be a tuple of ints, got {in_shape!r}") from err
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"synthetic in_shape must be non-empty positive sizes, got {in_shape!r}")
    for label, value, low in (("num_classes", num_classes, 2), ("n_train", n_train, 1),
                              ("n_test", n_test, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"synthetic {label} must be an integer >= {low}, got {value!r}")
    if not separation > 0:
        raise ConfigError(f"synthetic separation must be > 0, got {separation!r}")
    train_x, train_y, test_x, test_y = _make_synthetic(
        shape, int(num_classes), int(n_train), int(n_test), float(separation), int(data_seed)
    )
    source = (f"synthetic(in_shape={shape}, num_classes={num_classes}, n_train={n_train}, "
              f"n_test={n_test}, separation={separation}, data_seed={data_seed})")
    return RawData(train_x, train_y, test_x, test_y, int(num_classes), source, 1.0)


@functools.lru_cache(maxsize=4)
def _make_synthetic(shape, num_classes, n_train, n_test, separation, data_seed):
    rng = np.random.default_rng(data_seed)
    dim = int(np.prod(shape))
    means = rng.standard_normal((num_classes, dim)) * (separation / np.sqrt(dim))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        x = (means[y] + rng.standard_normal((n, dim))).astype(np.float32).reshape(n, *shape)
        x.flags.writeable = False
        y.flags.writeable = False
        return x, y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return train_x, train_y, test_x, test_y


# Named ``list`` per the contract (``prunelab.data.list()``). It is bound last, and the module
# code calls ``builtins.list``, so nothing in here uses the shadowed name. It stays out of
# ``__all__`` so that ``from prunelab.data import *`` cannot shadow the builtin.
list = list_datasets  # noqa: A001
