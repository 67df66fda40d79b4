"""Loss and metric of the reference paper's protocol: cross-entropy + soft Dice, and Dice per class averaged.

Pixels labelled IGNORE_INDEX (255) count in neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from slidefuse.train.dataset import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

DICE_EPS = 1.0  # smoothing of the soft Dice loss (in pixels): a class absent from a batch costs ~0


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and soft Dice loss of one batch.

    `logits`: float [B, C, H, W]; `target`: integer [B, H, W] with values 0..C-1 or IGNORE_INDEX.
    Returns (cross-entropy, Dice loss), two scalar tensors; the training loss is their sum. The Dice loss is
    1 - mean over classes of (2 sum(p g) + eps) / (sum p + sum g + eps), summed over the batch's labelled pixels,
    with p the softmax probability and g the one-hot target.
    """
    import torch
    import torch.nn.functional as F

    target = target.long()
    ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
    valid = (target != IGNORE_INDEX).unsqueeze(1)  # [B, 1, H, W]
    probs = torch.softmax(logits.float(), dim=1) * valid
    onehot = F.one_hot(torch.where(valid[:, 0], target, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + DICE_EPS) / (denom + DICE_EPS)
    return ce, 1.0 - dice.mean()


class DiceMeter:
    """Accumulates hard-prediction Dice per class over a whole split (not averaged per tile).

    Dice_c = 2 |P_c and G_c| / (|P_c| + |G_c|) over every labelled pixel seen; a class absent from both the
    labels and the predictions has no Dice (NaN) and is left out of the mean.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.inter = np.zeros(num_classes, dtype=np.int64)
        self.pred = np.zeros(num_classes, dtype=np.int64)
        self.true = np.zeros(num_classes, dtype=np.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """`logits` float [B, C, H, W], `target` integer [B, H, W] (0..C-1 or IGNORE_INDEX)."""
        import torch

        c = self.num_classes
        pred = logits.argmax(dim=1)
        valid = target != IGNORE_INDEX
        p, g = pred[valid], target[valid].long()
        self.pred += torch.bincount(p, minlength=c)[:c].cpu().numpy()
        self.true += torch.bincount(g, minlength=c)[:c].cpu().numpy()
        self.inter += torch.bincount(p[p == g], minlength=c)[:c].cpu().numpy()

    def per_class(self) -> np.ndarray:
        """float64 [C]: Dice per class in 0..1 (NaN where the class is in neither labels nor predictions)."""
        denom = self.pred + self.true
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2.0 * self.inter / np.maximum(denom, 1), np.nan)

    def mean(self) -> float:
        """Dice per class averaged over the classes that have one (the paper's selection metric)."""
        d = self.per_class()
        return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")
