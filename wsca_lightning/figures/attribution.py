"""The attribution figure: which pixels carry the direction the primary head shares with one metadata task.

Written per attributed task as ``wsc/attribution/<task>.png`` by the callback and ``wsca-analyze``, and shown by
``wsca-report``. Plain arrays in (no torch). Rows: the example images; their absolute attribution of the shared
direction laid over them; and, when given, their absolute attribution of each image's own primary decision (what
the primary head's decisions are sensitive to, for comparison). The first column holds the mean image and the mean
absolute attribution of each map over all attributed images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from wsca_lightning.figures.canvas import load_matplotlib

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["attribution_figure"]

#: Share of an example's largest |attribution| below which the overlay is transparent: the image stays readable.
_OVERLAY_FLOOR = 0.05


def attribution_figure(
    images: np.ndarray,
    attributions: np.ndarray,
    *,
    decisions: np.ndarray | None = None,
    examples: int = 4,
    captions: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """The figure (module docstring) of ``images`` ``(N, H, W)`` (one channel shown), the signed per-pixel
    ``attributions`` ``(N, H, W)`` of the shared direction and optionally ``decisions`` ``(N, H, W)``, those of each
    image's primary decision; the first ``examples`` images are drawn one by one, captioned by ``captions``."""
    mpl = load_matplotlib()
    images = np.asarray(images, dtype=np.float64)
    maps = [("shared direction", np.abs(np.asarray(attributions, dtype=np.float64)))]
    if decisions is not None:
        maps.append(("primary decision", np.abs(np.asarray(decisions, dtype=np.float64))))
    if images.ndim != 3 or images.shape[0] == 0 or any(m.shape != images.shape for _, m in maps):
        raise ValueError(f"images and attributions (and decisions) must all be (N, H, W) with N >= 1, got "
                         f"{images.shape} and {', '.join(str(m.shape) for _, m in maps)}")
    shown = min(int(examples), images.shape[0])
    rows, cols = 1 + len(maps), 1 + shown
    h, w = images.shape[1:]
    panel = 1.9
    fig = mpl.figure.Figure(figsize=(panel * cols * w / max(h, w) + 0.8, rows * panel * h / max(h, w) + 0.8),
                            layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    axes[0, 0].imshow(images.mean(axis=0), cmap="gray")
    axes[0, 0].set_title(f"mean image (n={images.shape[0]})", fontsize=8)
    for i in range(shown):
        axes[0, 1 + i].imshow(images[i], cmap="gray")
        axes[0, 1 + i].set_title(captions[i] if captions is not None else f"image {i}", fontsize=8)
    for row, (name, magnitude) in enumerate(maps, start=1):
        im = axes[row, 0].imshow(magnitude.mean(axis=0), cmap="magma")
        fig.colorbar(im, ax=axes[row, 0], fraction=0.046, pad=0.02)
        axes[row, 0].set_title(f"{name}:\nmean |attribution|", fontsize=8)
        for i in range(shown):
            axes[row, 1 + i].imshow(images[i], cmap="gray")
            scaled = magnitude[i] / max(float(magnitude[i].max()), np.finfo(float).tiny)
            # transparent where the attribution is negligible, opaque where it is largest
            axes[row, 1 + i].imshow(scaled, cmap="hot", alpha=np.clip((scaled - _OVERLAY_FLOOR) / (1 - _OVERLAY_FLOOR),
                                                                      0.0, 1.0), vmin=0.0, vmax=1.0)
            axes[row, 1 + i].set_title(f"{name} |attribution|", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
