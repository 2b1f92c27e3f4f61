"""Checks of the model options, each raising :class:`ModelError` that names the option."""

from __future__ import annotations

import math

from prunelab.errors import ModelError
from prunelab.utils import plain_json


def positive_ints(option: str, value, allow_empty: bool = False) -> tuple[int, ...]:
    """``value`` (an int or a tuple of ints) as a tuple of positive ints."""
    values = value if isinstance(value, tuple) else (value,)
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    if not ok or (not values and not allow_empty):
        raise ModelError(
            f"{option} must be a non-empty sequence of positive integers, got {plain_json(value)!r}"
        )
    return values


def positive_int(option: str, value) -> int:
    """``value`` if it is an int ≥ 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{option} must be a positive integer, got {value!r}")
    return value


def probability(option: str, value) -> float:
    """``value`` as a float if it lies in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"{option} must be a probability in [0, 1), got {value!r}")
    return float(value)


def positive_float(option: str, value, allow_none: bool = False) -> float | None:
    """``value`` as a float if it is finite and > 0 (or None, when ``allow_none``)."""
    if value is None and allow_none:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        none = " or None" if allow_none else ""
        raise ModelError(f"{option} must be a positive number{none}, got {value!r}")
    return float(value)


def flag(option: str, value) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise ModelError(f"{option} must be true or false, got {value!r}")
    return value


def chw(in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``in_shape`` if it is (channels, height, width)."""
    if len(in_shape) != 3:
        raise ModelError(f"needs an input shape (channels, height, width), got {in_shape}")
    return in_shape  # type: ignore[return-value]


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))
