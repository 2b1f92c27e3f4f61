"""The data set registry and :func:`load`: resolve a name, call its loader, carve, cap, normalise.

A registered loader returns :class:`RawData` (raw arrays, before any split or scaling);
:func:`load` turns it into a :class:`Dataset` of float32 tensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from prunelab.data.splits import NORMALIZATIONS, normalize_inplace, to_float, val_count
from prunelab.errors import ConfigError, DataError
from prunelab.utils import Registry
from prunelab.utils.memory import check_fits

_ALIASES = {
    "fmnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
}


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
        test: the official test split (for digits, a fixed holdout; see ``prunelab.data.builtin``).
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
        tokens: set by token (language-modelling) loaders only: what the tokens are (see the
            ``text`` data set). :func:`load` then keeps the integer arrays as they are (no float
            conversion, no normalisation), takes ``val_x``/``val_y`` as the validation split and
            puts this dict into ``Dataset.info["tokens"]``.
        val_x, val_y: the loader's own validation split (token loaders only).
        manifest: which file bytes make up each split (token loaders only); it goes into
            ``Dataset.info["manifest"]``, apart from ``tokens`` because it can be long.
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
    tokens: dict | None = None
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None
    manifest: dict | None = None


@dataclass(frozen=True)
class DatasetEntry:
    """A registered loader, the validation size :func:`load` uses when given none, and whether the
    loader brings its own validation split (then ``val_size`` must be None)."""

    loader: Callable[..., RawData]
    default_val_size: int | float
    own_val_split: bool = False

    def __call__(self, data_dir=None, **kwargs) -> RawData:
        return self.loader(data_dir, **kwargs)


def _normalize_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


#: Data set names → loaders. Names match case-insensitively, with ``_`` read as ``-`` and the
#: aliases ``fmnist``, ``fashionmnist`` and ``cifar-10``.
registry: Registry[DatasetEntry] = Registry("dataset", ConfigError, normalize=_normalize_name)


def register(name: str, default_val_size: int | float = 5000, own_val_split: bool = False) -> Callable:
    """Register a dataset loader: ``@register("name")`` on ``loader(data_dir, **kwargs) -> RawData``.

    :func:`load` calls the loader with the caller's ``data_dir`` and extra keyword arguments, then
    carves the validation split, applies ``limit`` and normalises.

    Args:
        name: dataset name (stored lower case, with ``_`` read as ``-``). Must not be registered already.
        default_val_size: the ``val_size`` that :func:`load` uses when the caller passes ``None``.
        own_val_split: the loader returns its own validation split (``RawData.val_x``); a
            ``val_size`` other than None is then refused before the loader runs.

    Returns:
        The decorator. It returns the loader unchanged.

    Raises:
        ConfigError: ``name`` is registered already.

    Example:
        >>> @register("tiny", default_val_size=0.1)
        ... def _tiny(data_dir, **kwargs):
        ...     return RawData(...)
    """

    def decorator(loader: Callable[..., RawData]) -> Callable[..., RawData]:
        registry.register(name, DatasetEntry(loader, default_val_size, own_val_split))
        return loader

    return decorator


def canonical_name(name: str) -> str:
    """The registered name of ``name`` (aliases and spelling resolved).

    Raises:
        ConfigError: ``name`` is not a string or names no registered dataset (the message lists them).
    """
    if not isinstance(name, str):
        raise ConfigError(f"dataset name must be a string, got {name!r}")
    return registry.key(name)


def get(name: str) -> DatasetEntry:
    """The registered entry of ``name``: call it as ``entry(data_dir, **options)`` for the raw data."""
    return registry.get(canonical_name(name))


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
        name: a name of ``prunelab.data.registry.list()`` (aliases: ``fmnist``, ``fashion_mnist``,
            ``cifar-10``).
        data_dir: folder to search first (see ``prunelab.data`` for the full search order).
            If it is given, it must exist.
        val_size: size of the validation split carved from the training set. An int is a number
            of samples, and 0 gives an empty split. A float in ``[0, 1)`` is a fraction of the
            training set. ``None`` means the dataset's default: 5000 for the image sets, 0.1 for
            ``digits`` and ``synthetic``. Token data (``text``) brings its own validation split
            and takes only ``None``.
        seed: seeds the permutation that picks the validation samples. It also picks the training
            samples kept by ``limit``.
        normalize: ``"standard"``, ``"unit"`` or ``"none"`` (see ``prunelab.data``). For
            ``digits`` and ``synthetic``, ``"standard"`` uses the returned train split's
            per-channel mean/std. For ``synthetic``, ``"unit"`` equals ``"none"``.
        limit: keep at most this many training samples (after the validation carve); for tests
            and quick runs. Validation and test splits are not capped. For token data, ``limit``
            training windows drawn with ``seed`` (kept in stream order).
        **kwargs: options of the dataset's loader, for example
            ``load("synthetic", in_shape=(1, 8, 8), num_classes=10, n_train=500)``.

    Returns:
        A :class:`Dataset` of float32 ``x`` and int64 ``y`` tensors (token data: int64 ``x``
        too, not normalised).

    Raises:
        ConfigError: unknown dataset, option or normalisation, or ``val_size``/``limit`` out of range.
        DataError: files missing, truncated or corrupt. The message names the file and says what to do.

    Example:
        >>> ds = load("fashion-mnist", val_size=5000, normalize="unit")
        >>> len(ds.train), len(ds.val), len(ds.test)
        (55000, 5000, 10000)
    """
    key = canonical_name(name)
    if normalize not in NORMALIZATIONS:
        raise ConfigError(
            f"unknown normalize={normalize!r}; choose one of {', '.join(NORMALIZATIONS)}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    entry = registry.get(key)
    if entry.own_val_split and val_size is not None:
        raise ConfigError(
            f"dataset {key!r} has its own validation split (whole files go to train, val or test); "
            f"drop val_size (--val-size)"
        )
    raw = entry(data_dir, **kwargs)
    if raw.tokens is not None:
        return _token_dataset(key, raw, seed, limit)
    if val_size is None:
        val_size = entry.default_val_size

    n_full = int(raw.train_y.shape[0])
    n_val = val_count(val_size, n_full, key)
    order = np.random.default_rng(int(seed)).permutation(n_full)
    val_idx = np.sort(order[:n_val])
    train_idx = order[n_val:]
    if limit is not None:
        train_idx = train_idx[: int(limit)]
    # Sorting makes the gather read memory in order; the training loop shuffles anyway.
    train_idx = np.sort(train_idx)

    # float32 copies of the three splits, checked first: Linux grants a too-large allocation and
    # kills the process when it is written.
    per_sample = int(np.prod(raw.train_x.shape[1:]))
    check_fits(4 * (per_sample * (len(train_idx) + len(val_idx)) + int(np.prod(raw.test_x.shape))),
               f"data set {key!r} (as float32)", DataError,
               "use fewer training samples (limit=, --limit) or a machine with more memory")
    train_x = to_float(raw.train_x[train_idx])
    val_x = to_float(raw.train_x[val_idx])
    test_x = to_float(raw.test_x)
    mean, std = normalize_inplace(raw, normalize, train_x, (val_x, test_x))

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


def _token_dataset(key: str, raw: RawData, seed: int, limit: int | None) -> Dataset:
    """The :class:`Dataset` of a token loader: its own three splits as int64, ``limit`` windows kept."""
    n_full = int(raw.train_y.shape[0])
    train_idx = np.arange(n_full)
    if limit is not None and int(limit) < n_full:
        train_idx = np.sort(np.random.default_rng(int(seed)).permutation(n_full)[: int(limit)])
    per_sample = int(np.prod(raw.train_x.shape[1:]))
    n_windows = len(train_idx) + int(raw.val_y.shape[0]) + int(raw.test_y.shape[0])
    check_fits(2 * 8 * per_sample * n_windows, f"data set {key!r} (as int64)", DataError,
               "use fewer training windows (limit=, --limit) or a machine with more memory")

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        # Copies: the raw windows may be read-only views of cached bytes.
        return Split(torch.from_numpy(np.array(x, dtype=np.int64, copy=True)),
                     torch.from_numpy(np.array(y, dtype=np.int64, copy=True)))

    return Dataset(
        name=key,
        train=split(raw.train_x[train_idx], raw.train_y[train_idx]),
        val=split(raw.val_x, raw.val_y),
        test=split(raw.test_x, raw.test_y),
        in_shape=tuple(int(d) for d in raw.train_x.shape[1:]),
        num_classes=raw.num_classes,
        source=raw.source,
        info={"normalize": "none", "scale": 1.0, "mean": None, "std": None, "seed": int(seed),
              "val_size": int(raw.val_y.shape[0]), "limit": None if limit is None else int(limit),
              "tokens": dict(raw.tokens), "manifest": raw.manifest},
    )


def no_options(key: str, kwargs: dict) -> None:
    """Raise :class:`ConfigError` when a loader that takes no options was given some."""
    if kwargs:
        raise ConfigError(f"dataset {key!r} takes no options, got {', '.join(sorted(kwargs))}")
