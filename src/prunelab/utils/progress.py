"""Progress bars on stderr, from tqdm; silent when stderr is not a terminal unless asked.

``PRUNELAB_PROGRESS=0`` silences every bar left to its default (``prunelab bench`` sets it so that
the training loops inside a sweep stay quiet under the sweep's own bar).
"""

from __future__ import annotations

import os
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
        enabled: show it; None shows it only when stderr is a terminal and ``PRUNELAB_PROGRESS``
            is not ``0``.
        unit: the unit of one step.
        leave: keep the finished bar on screen.
    """
    if enabled is None:
        enabled = sys.stderr.isatty() and os.environ.get("PRUNELAB_PROGRESS", "1") != "0"
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, leave=leave,
                file=sys.stderr, dynamic_ncols=True)
