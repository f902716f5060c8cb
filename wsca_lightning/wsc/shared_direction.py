"""The direction a primary head shares with a metadata head, as one unit vector of the embedding space (pure torch).

WSC says that the primary head's rows and a metadata head's rows point the same way inside the principal subspace.
To ask *what in the image* carries that, the shared part has to become one scalar function of the image,
``s(x) = u . z(x)``, which a gradient method can attribute to pixels (:mod:`wsca_lightning.attribution`).

The choice made here, in the projected space the WSC itself used (``W' = W V_k``, ``V_k`` the ``d x k`` principal
basis):

0. a softmax head's rows are centred first (its mean row removed; a one-row sigmoid head is kept as it is). A row
   shift common to every class changes no prediction, so only the centred rows are decisions the head makes, and
   only they say which directions a head discriminates by;
1. ``Q`` = orthogonal projector onto the row space of the centred metadata head ``W'_m``: every direction the
   metadata head discriminates by;
2. ``S = W'_p Q``: each centred primary row's component inside that span (zero when the heads are orthogonal);
3. ``S = U Sigma V^T``; ``c = U[:, 0]`` weighs the primary classes so that their combination ``c^T W'_p`` has the
   largest component inside the metadata span (``strength = Sigma[0]``). As the rows are centred, that combination
   is a contrast of the primary head's logits (its weights sum to zero for a softmax head): a decision the head
   actually computes. Mapped back to the embedding space and normalised, ``u = V_k W'_p^T c / ||W'_p^T c||`` is the
   attributed direction; ``share = strength / ||W'_p^T c||`` is the cosine between it and the metadata span (1: it
   lies inside; near 0: the head shares almost nothing).

Why not ``V[:, 0]``, the shared part itself: it lies inside the metadata head's span by construction, so its
attribution finds the metadata's own pixels whatever the primary head does. Measured on the built-in data (the
``marker_shortcut`` experiment): for a multitask model trained *without* the hospital shortcut (hospital n.s.,
share 0.12), that direction still put 22x the marker's area share of its gradient x input attribution on the
hospital marker. It is kept as :attr:`SharedDirection.shared_part` for inspection.

Even the contrast ``u`` is *chosen* for its overlap with the metadata span, so in a model whose backbone encodes the
metadata strongly it reads the metadata's pixels also when the primary head does not use them: measured in
``experiments/marker_shortcut``'s multitask models, where ``share`` (0.43-0.70 with the hospital shortcut, 0.05-0.12
without) separates the two conditions and the attribution's concentration on the marker does not. In risk-only
backbones, which encode the marker only when the risk task rewarded it, the concentration separates them too. The
attribution explains a significant verdict; it is no test of its own.

Signs are fixed so that the class with the largest weight in ``c`` (the first of equal ones) has a positive one (the
sign does not change absolute attributions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SharedDirection", "decision_rows", "shared_direction"]

#: Singular values below this share of the largest one are treated as zero (rank of the metadata head, and an
#: empty shared part), in float64.
_RANK_TOLERANCE = 1e-9


@dataclass(frozen=True, eq=False)
class SharedDirection:
    """The primary head's combination of classes most aligned with a metadata head (module docstring).

    ``eq=False``: tensor fields have no single truth value.
    """

    direction: Tensor  # (d,) unit vector u in the embedding space, float64: the attributed direction
    class_weights: Tensor  # (C_p,) c: the primary classes' weights in that combination (unit norm)
    strength: float  # top singular value of the shared part S
    share: float  # cosine between u's projected form and the metadata head's span (0..1)
    shared_part: Tensor  # (d,) unit vector of the shared part itself, V_k V[:, 0], inside the metadata span


def decision_rows(weight: Tensor) -> Tensor:
    """A head's rows ``(C, ...)`` as decisions: a softmax head's (``C >= 2``) minus their mean row, a one-row sigmoid
    head's as they are (module docstring, step 0)."""
    return weight - weight.mean(dim=0, keepdim=True) if weight.shape[0] > 1 else weight


def _row_space_projector(weight: Tensor) -> Tensor:
    """Orthogonal projector ``(k, k)`` onto the row space of ``weight`` ``(C, k)`` (float64)."""
    _, singular, vh = torch.linalg.svd(weight, full_matrices=False)
    rank = int((singular > _RANK_TOLERANCE * singular.max().clamp_min(torch.finfo(weight.dtype).tiny)).sum())
    basis = vh[:rank]  # (rank, k) orthonormal rows
    return basis.T @ basis


def shared_direction(primary_k: Tensor, metadata_k: Tensor, components: Tensor) -> SharedDirection | None:
    """The primary head's combination of classes most aligned with a metadata head (module docstring).

    Args:
        primary_k: ``(C_p, k)`` the primary head's rows in the principal basis, ``W_p V_k``
            (:meth:`~wsca_lightning.wsc.PCAProjection.project_weights`).
        metadata_k: ``(C_m, k)`` the metadata head's (or refitted probe's) rows in the same basis (what the WSC
            compared: :attr:`~wsca_lightning.wsc.TaskAnalysis.observed_weight`).
        components: ``(k, d)`` the principal basis ``V_k^T`` (orthonormal rows,
            :attr:`~wsca_lightning.wsc.PCAProjection.components`).

    Returns:
        the :class:`SharedDirection`, or None when nothing is shared (the primary rows have no component inside the
        metadata head's span, or either head is zero or non-finite).
    """
    if primary_k.ndim != 2 or metadata_k.ndim != 2 or components.ndim != 2:
        raise ValueError(f"primary_k, metadata_k and components must be 2-D, got shapes {tuple(primary_k.shape)}, "
                         f"{tuple(metadata_k.shape)}, {tuple(components.shape)}")
    k = components.shape[0]
    if primary_k.shape[1] != k or metadata_k.shape[1] != k:
        raise ValueError(f"primary_k {tuple(primary_k.shape)} and metadata_k {tuple(metadata_k.shape)} must have "
                         f"k = {k} columns, as components {tuple(components.shape)} has rows")
    p = decision_rows(primary_k.detach().to(dtype=torch.float64))
    m = decision_rows(metadata_k.detach().to(device=p.device, dtype=torch.float64))
    basis = components.detach().to(device=p.device, dtype=torch.float64)
    if not (bool(torch.isfinite(p).all()) and bool(torch.isfinite(m).all())):
        return None
    primary_norm = float(torch.linalg.matrix_norm(p))
    if primary_norm == 0.0 or float(m.abs().max()) == 0.0:
        return None
    shared = p @ _row_space_projector(m)  # (C_p, k): each primary row's component inside span(W'_m)
    u, singular, vh = torch.linalg.svd(shared, full_matrices=False)
    strength = float(singular[0])
    if strength <= _RANK_TOLERANCE * primary_norm:
        return None
    weights, part = u[:, 0], vh[0]
    # fix the signs (module docstring; on ties, e.g. a two-class contrast, the first class); S^T c = strength * part
    # keeps holding
    lead = int((weights.abs() >= weights.abs().max() * (1 - _RANK_TOLERANCE)).nonzero()[0])
    if weights[lead] < 0:
        weights, part = -weights, -part
    contrast = weights @ p  # (k,): the combination of the primary head's rows
    norm = float(torch.linalg.vector_norm(contrast))
    return SharedDirection(direction=basis.T @ (contrast / norm), class_weights=weights, strength=strength,
                           share=min(1.0, strength / norm), shared_part=basis.T @ part)
