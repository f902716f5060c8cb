"""Counterfactual dependence on the built-in data: the ground truth of "the model *uses* this metadata".

WSC infers use from weight directions. On generated data use can be measured directly: draw ``n`` anatomies once,
render each of them through every value of one acquisition column (every scanner, or every hospital marker) with
the generator's own chain (:func:`~wsca_lightning.data.synthetic.render_ultrasound`, same pose, speckle and texture
draws for every value), and measure how much the model's primary class probabilities move when only that column
changes. A model that ignores the scanner gives the same probabilities for all of them; a model that took the
scanner as a shortcut does not.

Score: the mean, over anatomies and over every pair of values, of the total-variation distance between the two
probability vectors (0: no dependence, 1: the prediction flips completely), and the share of anatomies whose
predicted class changes across values. Pure torch; the model is any callable from inputs to class probabilities.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import torch
from torch import Tensor

from wsca_lightning.data.synthetic import render_ultrasound, sample_metadata
from wsca_lightning.data.transforms import normalize_image

#: Acquisition columns whose value can be swapped under a fixed anatomy, with the option giving their count.
COUNTERFACTUAL_COLUMNS: dict[str, str] = {"scanner": "num_scanners", "hospital": "num_hospitals"}


def counterfactual_inputs(
    column: str,
    *,
    n: int,
    image_size: Sequence[int],
    num_scanners: int,
    num_hospitals: int,
    normalization: str = "sononet",
    in_channels: int = 1,
    seed: int = 0,
) -> Tensor:
    """``(V, n, C, H, W)`` model inputs: ``n`` anatomies, each rendered through all ``V`` values of ``column``.

    Anatomies (cervical length, spacing, pose, speckle, texture) are drawn from ``seed``; only ``column`` differs
    between the ``V`` renderings of one anatomy. Inputs are built like the dataset's items (normalised image; for
    ``in_channels == 8`` also the segmentation maps and the two spacing planes).
    """
    if column not in COUNTERFACTUAL_COLUMNS:
        raise ValueError(f"column: must be one of {', '.join(COUNTERFACTUAL_COLUMNS)}, got {column!r}")
    if in_channels not in (1, 8):
        raise ValueError(f"in_channels: must be 1 or 8, got {in_channels!r}")
    counts = {"num_scanners": num_scanners, "num_hospitals": num_hospitals}
    size = (int(image_size[0]), int(image_size[1]))
    meta = sample_metadata(n, shortcut_strength=0.0, num_scanners=num_scanners, num_hospitals=num_hospitals,
                           missing_fraction=0.0, generator=torch.Generator().manual_seed(int(seed)), image_size=size)
    out = []
    for value in range(counts[COUNTERFACTUAL_COLUMNS[column]]):
        swapped = {**meta, f"true_{column}": torch.full_like(meta[f"true_{column}"], value)}
        # the same generator seed for every value: identical pose, speckle and texture draws
        image, seg = render_ultrasound(swapped, size, num_scanners=num_scanners, num_hospitals=num_hospitals,
                                       generator=torch.Generator().manual_seed(int(seed) + 1),
                                       with_segmentation=in_channels == 8)
        x = normalize_image(image, normalization)
        if seg is not None:
            planes = torch.stack([meta["true_pixel_spacing_x"], meta["true_pixel_spacing_y"]], dim=1).to(x.dtype)
            x = torch.cat([x, seg, planes.view(n, 2, 1, 1).expand(n, 2, *size)], dim=1)
        out.append(x)
    return torch.stack(out)


def dependence_score(probabilities: Tensor) -> dict[str, float]:
    """``{"tv", "flip_rate"}`` of ``(V, n, C)`` class probabilities of ``n`` anatomies under ``V`` column values.

    ``tv``: mean total-variation distance ``0.5 * |p_v - p_w|_1`` over anatomies and value pairs; ``flip_rate``:
    share of anatomies whose arg-max class is not the same under every value.
    """
    if probabilities.ndim != 3 or probabilities.shape[0] < 2:
        raise ValueError(f"probabilities must be (V >= 2, n, C), got shape {tuple(probabilities.shape)}")
    p = probabilities.detach().to(torch.float64)
    pairs = list(combinations(range(p.shape[0]), 2))
    tv = torch.stack([0.5 * (p[v] - p[w]).abs().sum(dim=1) for v, w in pairs]).mean()
    predicted = p.argmax(dim=2)
    flips = (predicted != predicted[:1]).any(dim=0).to(torch.float64).mean()
    return {"tv": float(tv), "flip_rate": float(flips)}


def counterfactual_dependence(
    predict: Callable[[Tensor], Tensor],
    column: str,
    *,
    n: int = 256,
    batch_size: int = 128,
    **render_options: object,
) -> dict[str, float]:
    """:func:`dependence_score` of ``predict`` (inputs ``(B, C, H, W)`` -> probabilities ``(B, C_A)``) on
    :func:`counterfactual_inputs` (``render_options``: ``image_size``, ``num_scanners``, ``num_hospitals``,
    ``normalization``, ``in_channels``, ``seed``). Runs without gradients."""
    inputs = counterfactual_inputs(column, n=n, **render_options)  # type: ignore[arg-type]
    values, count = inputs.shape[:2]
    flat = inputs.flatten(0, 1)
    with torch.inference_mode():
        probs = torch.cat([predict(flat[i:i + batch_size]).float().cpu() for i in range(0, flat.shape[0], batch_size)])
    return {**dependence_score(probs.view(values, count, -1)), "n": count}
