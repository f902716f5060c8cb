"""Epoch-level classification metrics that average only over the classes present in the epoch's targets.

torchmetrics' macro averages count a class that is absent from the targets as a 0 (accuracy counts it when it was
predicted; AUROC always). With rare metadata bins that biases a head's score downwards, so here, as in
scikit-learn's ``balanced_accuracy_score``, absent classes are left out of the mean. Both metrics accumulate the
whole epoch (AUROC keeps all scores: exact, not binned) and honour ``ignore_index`` for missing labels.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAUROC, MulticlassStatScores
from torchmetrics.utilities.data import dim_zero_cat

from wsca_lightning.wsc import macro_auroc


class BalancedAccuracy(MulticlassStatScores):
    """Mean per-class recall over the classes that occur in the targets."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__(num_classes=num_classes, average=None, ignore_index=ignore_index)

    def compute(self) -> Tensor:
        tp, _, _, fn = self._final_state()
        support = tp + fn
        present = support > 0
        if not bool(present.any()):
            return torch.tensor(float("nan"), device=tp.device)
        return (tp[present].float() / support[present]).mean()


class MacroAUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC over the classes that have both positives and negatives in the targets.

    torchmetrics accumulates the epoch's scores (and syncs them across processes); the statistic itself is the
    pure core's :func:`wsca_lightning.wsc.macro_auroc`, the same code that scores the probes.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__(num_classes=num_classes, average=None, thresholds=None, ignore_index=ignore_index)

    def compute(self) -> Tensor:
        scores = dim_zero_cat(self.preds)  # probabilities; ignored labels were already dropped in update()
        target = dim_zero_cat(self.target)
        if scores.numel() == 0 or not bool(torch.isfinite(scores).all()):  # nothing seen, or a diverged model
            return torch.tensor(float("nan"), device=scores.device)
        return macro_auroc(scores, target.long()).to(torch.float32)
