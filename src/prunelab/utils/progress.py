"""Progress bars on stderr, from tqdm; silent when stderr is not a terminal unless asked."""

from __future__ import annotations

import sys
from typing import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             enabled: bool | None = None, unit: str = "it", leave: bool = False):
    """A tqdm bar over ``iterable`` (or a manual one of ``total`` steps: call ``.update()``).

    Args:
        iterable: what to iterate over; None for a manual bar.
        total: the number of steps when ``iterable`` has no length.
        desc: the label in front of the bar.
        enabled: show it; None shows it only when stderr is a terminal.
        unit: the unit of one step.
        leave: keep the finished bar on screen.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, leave=leave,
                file=sys.stderr, dynamic_ncols=True)
