"""Binning of continuous metadata into classes (pure torch).

Edges are fitted on the training split only and then applied to every split, so a value means the same class in
training, validation and post-hoc analysis. Values outside the training range fall into the first or last bin;
NaN (missing) becomes ``IGNORE_INDEX`` (-1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

BinningMethod = Literal["equal_width", "quantile"]
BINNING_METHODS: tuple[str, ...] = ("equal_width", "quantile")
#: Label meaning "missing for this task": that head's loss and metrics skip the sample, other heads keep it.
IGNORE_INDEX = -1


def fit_bin_edges(values: Tensor, num_bins: int, method: BinningMethod = "equal_width") -> Tensor:
    """Bin edges (``num_bins + 1``, float64, increasing) from the finite entries of ``values``.

    ``equal_width`` splits [min, max] into equal intervals (the paper's choice); ``quantile`` puts about the same
    number of training values in each bin. Raises ``ValueError`` when fewer than two distinct finite values exist or
    when quantile edges collapse (too many ties for that many bins).
    """
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    if method not in BINNING_METHODS:
        raise ValueError(f"binning must be one of {BINNING_METHODS}, got {method!r}")
    v = values.detach().to(torch.float64).flatten()
    v = v[torch.isfinite(v)]
    if v.numel() == 0 or torch.unique(v).numel() < 2:
        raise ValueError(f"cannot bin: need at least two distinct finite values, got {torch.unique(v).tolist()[:5]}")
    if method == "equal_width":
        return torch.linspace(float(v.min()), float(v.max()), num_bins + 1, dtype=torch.float64)
    edges = torch.quantile(v, torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64))
    if not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError(
            f"quantile binning into {num_bins} bins gives repeated edges {edges.tolist()} (too many tied values); "
            "use fewer bins or binning=equal_width"
        )
    return edges


def digitize(values: Tensor, edges: Tensor) -> Tensor:
    """Class index (int64) of each value for ``edges``; bins are [e_i, e_{i+1}), the last one closed.

    Values below the first edge go to bin 0, above the last edge to the last bin; NaN goes to ``IGNORE_INDEX``.
    """
    v = values.detach().to(torch.float64)
    inner = edges.to(torch.float64)[1:-1].to(v.device)
    idx = torch.bucketize(v, inner, right=True)
    return torch.where(torch.isnan(v), torch.full_like(idx, IGNORE_INDEX), idx)


def bin_names(edges: Tensor, precision: int = 3) -> list[str]:
    """Readable class names such as ``[0.5, 0.75)``; the last bin is closed: ``[0.75, 1]``."""
    e = [float(x) for x in edges]
    fmt = f"{{:.{precision}g}}"
    names = [f"[{fmt.format(a)}, {fmt.format(b)})" for a, b in zip(e[:-2], e[1:-1])]
    names.append(f"[{fmt.format(e[-2])}, {fmt.format(e[-1])}]")
    return names
