"""Training losses: Dice (the paper's), Tversky, per-image Dice, each optionally with BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LOSSES


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice over the whole batch (batch Dice), so empty patches do not dominate."""
    p = torch.sigmoid(logits.float())
    inter = (p * target).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + target.sum() + smooth)


def tversky_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0
) -> torch.Tensor:
    """Batch Tversky loss; beta > alpha weighs missed tumour more than false alarms (leans to recall)."""
    p = torch.sigmoid(logits.float())
    tp = (p * target).sum()
    fp = (p * (1 - target)).sum()
    fn = ((1 - p) * target).sum()
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def image_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice per patch, averaged over the patches that hold tumour: a small faint end counts as much
    as a large cross-section. Patches without tumour add nothing here (pair it with BCE for those)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    has = t.sum(1) > 0
    if not bool(has.any()):
        return p.sum() * 0.0  # keeps the graph; BCE carries a batch without tumour
    p, t = p[has], t[has]
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1 - dice.mean()


def _with_bce(region_loss):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return region_loss(logits, target) + F.binary_cross_entropy_with_logits(logits.float(), target)

    return loss


LOSS_FNS = {
    "dice": dice_loss,
    "dice+bce": _with_bce(dice_loss),
    "tversky+bce": _with_bce(tversky_loss),
    "image-dice+bce": _with_bce(image_dice_loss),
}


def make_loss(name: str):
    """The training loss called ``name`` (one of ``LOSSES``; ``dice_bce`` as old run records spell it)."""
    fn = LOSS_FNS.get("dice+bce" if name == "dice_bce" else name)
    if fn is None:
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    return fn
