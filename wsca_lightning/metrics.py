"""Epoch-level classification metrics that average only over the classes present in the epoch's targets.

torchmetrics' macro averages count a class that is absent from the targets as a 0 (accuracy counts it when it was
predicted; AUROC always). With rare metadata bins that biases a head's score downwards, so here, as in
scikit-learn's ``balanced_accuracy_score``, absent classes are left out of the mean. Both metrics accumulate the
whole epoch (AUROC keeps all scores: exact, not binned) and honour ``ignore_index`` for missing labels.

Updates never wait for the GPU: torchmetrics' input checks and its removal of ignored labels by boolean indexing
copy a value to the host in every training step, which stalls the step on a GPU. Here ``update`` only appends or
adds tensors on the device; ignored labels are dropped at ``compute``, once per epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAUROC
from torchmetrics.utilities.data import dim_zero_cat

from wsca_lightning.wsc import macro_auroc


class BalancedAccuracy(Metric):
    """Mean per-class recall over the classes that occur in the targets, from a confusion matrix summed on the
    device (``update``: ``(N, C)`` scores and ``(N,)`` labels, ``ignore_index`` = missing)."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confusion", torch.zeros(num_classes * num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        target = target.long()
        valid = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        cell = target.clamp(0, self.num_classes - 1) * self.num_classes + preds.argmax(dim=1)
        self.confusion.scatter_add_(0, cell, valid.long())

    def compute(self) -> Tensor:
        confusion = self.confusion.view(self.num_classes, self.num_classes)  # rows: true class
        support = confusion.sum(dim=1)
        present = support > 0
        if not bool(present.any()):
            return torch.tensor(float("nan"), device=confusion.device)
        return (confusion.diagonal()[present].float() / support[present]).mean()


class MacroAUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC over the classes that have both positives and negatives in the targets.

    torchmetrics accumulates the epoch's scores (and syncs them across processes); the statistic itself is the
    pure core's :func:`wsca_lightning.wsc.macro_auroc`, the same code that scores the probes.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__(num_classes=num_classes, average=None, thresholds=None, ignore_index=ignore_index)

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.preds.append(preds)  # probabilities
        self.target.append(target)

    def compute(self) -> Tensor:
        scores = dim_zero_cat(self.preds)
        target = dim_zero_cat(self.target).long()
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        scores, target = scores[keep], target[keep]
        if scores.numel() == 0 or not bool(torch.isfinite(scores).all()):  # nothing seen, or a diverged model
            return torch.tensor(float("nan"), device=scores.device)
        return macro_auroc(scores, target).to(torch.float32)
