"""The validation carve and normalisation that :func:`prunelab.data.load` applies to raw arrays."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from prunelab.errors import ConfigError

if TYPE_CHECKING:
    from prunelab.data.datasets import RawData

NORMALIZATIONS = ("standard", "unit", "none")

#: (mean, std) per channel that ``normalize="standard"`` applies after scaling pixels to [0, 1]:
#: the statistics of the PQ Index code (Diao et al., ICLR 2023).
STANDARD_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}


def val_count(val_size: int | float, n_full: int, key: str) -> int:
    """The number of validation samples ``val_size`` asks for out of ``n_full``.

    Args:
        val_size: a sample count (int) or a fraction in ``[0, 1)`` (float).
        n_full: the size of the training set before the carve.
        key: the dataset name, for messages.

    Returns:
        A count in ``[0, n_full)``.

    Raises:
        ConfigError: ``val_size`` has the wrong type or is out of range.
    """
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


def to_float(x: np.ndarray) -> np.ndarray:
    """A fresh C-contiguous float32 copy of ``x``."""
    # Always a fresh array: normalisation works in place and must never touch cached raw data.
    return np.array(x, dtype=np.float32, order="C", copy=True)


def normalize_inplace(
    raw: RawData, normalize: str, train_x: np.ndarray, others: tuple[np.ndarray, ...]
) -> tuple[list[float] | None, list[float] | None]:
    """Normalise all splits in place.

    Args:
        raw: the loader's data (its ``scale``, ``mean`` and ``std``).
        normalize: ``"standard"``, ``"unit"`` or ``"none"``.
        train_x: the training inputs; without stored statistics, ``"standard"`` uses theirs.
        others: the other splits' inputs, normalised the same way.

    Returns:
        The (mean, std) applied, or (None, None).
    """
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
