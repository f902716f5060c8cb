"""Image normalisation shared by every datamodule (synthetic now, real images later).

Only the grayscale image channel is normalised; segmentation maps and pixel-spacing planes (SA-SonoNet's extra
channels) keep their physical meaning and are never passed through here.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NORMALIZATIONS", "normalize_image"]

#: ``sononet``: per-image z-score times 255, the input scale the public SonoNet weights were trained on;
#: ``minus_one_one``: ``2x - 1``; ``none``: unchanged.
NORMALIZATIONS: tuple[str, ...] = ("sononet", "minus_one_one", "none")

# Images whose standard deviation is below this are treated as constant (output 0) instead of blowing up noise.
_MIN_STD = 1e-6


def normalize_image(image: Tensor, mode: str = "sononet") -> Tensor:
    """Normalise an image or a batch of images with values in [0, 1].

    Args:
        image: ``(1, H, W)`` or ``(..., 1, H, W)``; statistics for ``sononet`` are taken per image over its last
            three dimensions (channel, height, width).
        mode: one of :data:`NORMALIZATIONS`.

    Returns:
        A floating tensor of the same shape (integer inputs are converted to float32 first).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
    if image.ndim < 3:
        raise ValueError(f"image must have shape (..., C, H, W), got {tuple(image.shape)}")
    x = image if image.is_floating_point() else image.to(torch.float32)
    if mode == "none":
        return x
    if mode == "minus_one_one":
        return x * 2.0 - 1.0
    dims = (-3, -2, -1)
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    # A blank image (zero std) maps to all zeros rather than NaN/inf.
    std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
    return (x - mean) / std * 255.0
