"""The attribution figure: which pixels carry the direction the primary head shares with one metadata task.

Written per attributed task as ``wsc/attribution/<task>.png`` by the callback and ``wsca-analyze``, and shown by
``wsca-report``. Plain arrays in (no torch): the first column is the mean absolute attribution over the attributed
images (top) and their mean image (bottom); each further column is one example image (top) and the same image with
its absolute attribution laid over it (bottom).
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
    examples: int = 4,
    captions: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """The figure (module docstring) of ``images`` ``(N, H, W)`` (one channel shown) and their signed per-pixel
    ``attributions`` ``(N, H, W)``; the first ``examples`` images are drawn one by one, captioned by ``captions``."""
    mpl = load_matplotlib()
    images = np.asarray(images, dtype=np.float64)
    magnitude = np.abs(np.asarray(attributions, dtype=np.float64))
    if images.ndim != 3 or images.shape != magnitude.shape or images.shape[0] == 0:
        raise ValueError(f"images and attributions must both be (N, H, W) with N >= 1, got {images.shape} and "
                         f"{magnitude.shape}")
    shown = min(int(examples), images.shape[0])
    cols = 1 + shown
    h, w = images.shape[1:]
    panel = 1.9
    fig = mpl.figure.Figure(figsize=(panel * cols * w / max(h, w) + 0.8, 2 * panel * h / max(h, w) + 0.8),
                            layout="constrained")
    axes = fig.subplots(2, cols, squeeze=False)
    mean_map = magnitude.mean(axis=0)
    im = axes[0, 0].imshow(mean_map, cmap="magma")
    fig.colorbar(im, ax=axes[0, 0], fraction=0.046, pad=0.02)
    axes[0, 0].set_title(f"mean |attribution|\n(n={images.shape[0]})", fontsize=8)
    axes[1, 0].imshow(images.mean(axis=0), cmap="gray")
    axes[1, 0].set_title("mean image", fontsize=8)
    for i in range(shown):
        axes[0, 1 + i].imshow(images[i], cmap="gray")
        axes[0, 1 + i].set_title(captions[i] if captions is not None else f"image {i}", fontsize=8)
        axes[1, 1 + i].imshow(images[i], cmap="gray")
        scaled = magnitude[i] / max(float(magnitude[i].max()), np.finfo(float).tiny)
        # transparent where the attribution is negligible, opaque where it is largest
        axes[1, 1 + i].imshow(scaled, cmap="hot", alpha=np.clip((scaled - _OVERLAY_FLOOR) / (1 - _OVERLAY_FLOOR),
                                                                0.0, 1.0), vmin=0.0, vmax=1.0)
        axes[1, 1 + i].set_title("|attribution| overlay", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
