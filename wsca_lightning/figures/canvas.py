"""Drawing without pyplot: matplotlib imported lazily, figures saved atomically.

matplotlib is a core dependency (figures are part of the default output) but is imported lazily, only when a figure
is drawn, so importing the package stays quick.

Figures are built as ``matplotlib.figure.Figure`` objects directly, never through ``pyplot``: no backend is selected,
no global figure registry is touched (an interactive user's backend and open windows are left alone, and a figure
drawn in a training thread cannot leak), and so no ``plt.close`` is needed -- a figure is freed when its last
reference goes. ``savefig`` picks a file-writing canvas (Agg for PNG) by itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["load_matplotlib", "save_figure"]


def load_matplotlib() -> ModuleType:
    """Import matplotlib and the submodules the figures use.

    Deliberately no ``matplotlib.use``: ``Figure`` objects need no backend, so whatever backend a user chose (an
    interactive one included) stays as it is.
    """
    import matplotlib
    import matplotlib.colors
    import matplotlib.figure
    import matplotlib.lines
    import matplotlib.patches
    import matplotlib.ticker
    import matplotlib.transforms

    return matplotlib


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` atomically (150 dpi, tight box), creating parent directories.

    The image is written to ``<path>.partial<suffix>`` and renamed into place, so a reader (a file browser, a
    dashboard, a crash mid-write) never sees half a file. The format follows ``path``'s suffix (PNG if none).
    ``fig`` is a plain ``Figure``, not registered with pyplot, so there is nothing to ``plt.close`` afterwards.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = target.suffix or ".png"
    partial = target.with_name(f"{target.name}.partial{suffix}")
    try:
        fig.savefig(partial, format=suffix.lstrip("."), dpi=150, bbox_inches="tight")
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
