"""Dice at several thresholds, accumulated during validation: how the training run picks its threshold."""

from __future__ import annotations

import torch

from ..model.metrics import dice_score


class ThresholdSweep:
    """Pooled Dice at several thresholds at once, for choosing the threshold on validation data (an
    ``metrics.Accumulator``; on the training device, so validation never copies probabilities back)."""

    def __init__(self, thresholds=(0.3, 0.4, 0.5, 0.6, 0.7)) -> None:
        self.thresholds = torch.tensor(thresholds)
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(len(self.thresholds), 3, dtype=torch.float64)

    def update(self, prob: torch.Tensor, truth: torch.Tensor) -> None:
        t = truth.bool().flatten()
        p = prob.float().flatten()
        for i, th in enumerate(self.thresholds):
            pb = p >= th
            self.counts[i, 0] += (pb & t).sum()
            self.counts[i, 1] += (pb & ~t).sum()
            self.counts[i, 2] += (~pb & t).sum()

    def aggregate(self) -> dict[float, float]:
        return {round(float(th), 3): dice_score(*map(float, c)) for th, c in zip(self.thresholds, self.counts)}
