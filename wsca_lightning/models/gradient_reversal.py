"""Gradient reversal and its schedule: domain-adversarial training of metadata heads (plain torch, no Lightning).

A metadata head that reads the embedding through :func:`reverse_gradient` still learns to predict its metadata (its
own weights get the ordinary gradient), while the backbone gets that gradient multiplied by ``-lambda``: it is pushed
towards an embedding from which the metadata cannot be predicted, so no head can use it as a shortcut. This is the
gradient reversal layer of Ganin & Lempitsky, *Unsupervised Domain Adaptation by Backpropagation*, ICML 2015, and
Ganin et al., *Domain-Adversarial Training of Neural Networks*, JMLR 2016, whose schedule :func:`adversarial_lambda`
follows: ``lambda`` starts at 0, while the heads are still random and their gradients noise, and rises to ``weight``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

#: ``constant``: ``lambda = weight`` from the first step; ``dann``: Ganin et al.'s ramp from 0 to ``weight``.
ADVERSARIAL_SCHEDULES: tuple[str, ...] = ("constant", "dann")


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)  # a new tensor, so autograd records this node even though the values are x's

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad_output, None


def reverse_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged in the forward pass; in the backward pass the gradient reaching ``x`` is ``-scale`` times what
    it would be without this call (``scale >= 0``; 0 cuts the gradient off without removing ``x`` from the graph)."""
    return _ReverseGradient.apply(x, float(scale))


def adversarial_lambda(progress: float, weight: float, schedule: str = "dann", gamma: float = 10.0) -> float:
    """The reversal strength at training progress ``progress`` in ``[0, 1]`` (clamped).

    ``dann``: ``weight * (2 / (1 + exp(-gamma * progress)) - 1)``, 0 at the start and ``weight * tanh(gamma / 2)``
    at the end (0.987 ``weight`` for ``gamma = 10``, Ganin et al.'s value); ``constant``: ``weight``.
    """
    if schedule == "constant":
        return float(weight)
    if schedule != "dann":
        raise ValueError(f"schedule must be one of {', '.join(ADVERSARIAL_SCHEDULES)}, got {schedule!r}")
    p = min(max(float(progress), 0.0), 1.0)
    return float(weight) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
