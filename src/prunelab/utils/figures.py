"""Figures without pyplot: a matplotlib ``Figure`` on its own Agg canvas, saved as PNG bytes.

Nothing here touches matplotlib's global state (no ``matplotlib.use``, no pyplot figure manager),
so the library can draw inside any application, notebook or test run.
"""

from __future__ import annotations

import io


def new_figure(width: float = 6.4, height: float = 4.0, dpi: int = 100):
    """A ``matplotlib.figure.Figure`` with constrained layout, not registered with pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, without a timestamp or software tag (same figure, same bytes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
