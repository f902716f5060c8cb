"""Epoch-level classification metrics that average only over the classes present in the epoch's targets.

torchmetrics' macro averages count a class that is absent from the targets as a 0 (accuracy counts it when it was
predicted; AUROC always). With rare metadata bins that biases a head's score downwards, so here, as in
scikit-learn's ``balanced_accuracy_score``, absent classes are left out of the mean. Both metrics accumulate the
whole epoch (AUROC keeps all scores: exact, not binned) and honour ``ignore_index`` for missing labels.

Updates never wait for the GPU: torchmetrics' input checks and its removal of ignored labels by boolean indexing
copy a value to the host in every training step, which stalls the step on a GPU. Here ``update`` only appends
tensors on the device; ignored labels are dropped at ``compute``, once per epoch. The formulas are the pure core's
(:mod:`wsca_lightning.wsc.probes`): these classes only accumulate the epoch (torchmetrics' stateful half).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAUROC
from torchmetrics.utilities.data import dim_zero_cat

from wsca_lightning.wsc import balanced_accuracy, macro_auroc


def _labelled(target: Tensor, num_classes: int, ignore_index: int | None) -> Tensor:
    """Which rows carry a label the metric counts: a class index that is not ``ignore_index``."""
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    return keep


class BalancedAccuracy(Metric):
    """Mean per-class recall over the classes that occur in the targets (``update``: ``(N, C)`` scores and ``(N,)``
    labels, ``ignore_index`` = missing).

    The epoch's arg-max predictions and labels are accumulated on the device; the statistic is the pure core's
    :func:`wsca_lightning.wsc.balanced_accuracy`, the same code that scores the probes.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("predicted", [], dist_reduce_fx="cat")  # arg-max class per row
        self.add_state("target", [], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.predicted.append(preds.argmax(dim=1))
        self.target.append(target)

    def compute(self) -> Tensor:
        # a list of per-step tensors in one process; after a DDP sync, one concatenated tensor
        if isinstance(self.target, list) and not self.target:
            return torch.tensor(float("nan"), device=self.device)
        predicted = dim_zero_cat(self.predicted)
        target = dim_zero_cat(self.target).long()
        # the core's missing label is -1; a one-hot row is a score row whose arg-max is the prediction
        labels = torch.where(_labelled(target, self.num_classes, self.ignore_index), target, -1)
        scores = F.one_hot(predicted, self.num_classes).to(torch.float32)
        return balanced_accuracy(scores, labels).to(torch.float32)


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
        keep = _labelled(target, self.num_classes, self.ignore_index)
        scores, target = scores[keep], target[keep]
        if scores.numel() == 0 or not bool(torch.isfinite(scores).all()):  # nothing seen, or a diverged model
            return torch.tensor(float("nan"), device=scores.device)
        return macro_auroc(scores, target).to(torch.float32)
