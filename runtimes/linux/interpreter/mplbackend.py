"""A matplotlib backend for the Python kernel: Agg rendering, `plt.show()` publishes.

The kernel points MPLBACKEND at this module (as `module://<package>.mplbackend`), so it is
imported only by matplotlib itself, from the user's environment; the kernel never imports
matplotlib. Figures still open when a cell ends are published by the kernel as well.
"""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg

from .richdisplay import flush_figures

FigureCanvas = FigureCanvasAgg


def show(*args: Any, **kwargs: Any) -> None:
    """Publish every open figure as an image/png result, then close them."""
    flush_figures()
