"""From probabilities to the mask: the one home of the rule (threshold, then small 2D components removed).

Evaluation, the robustness suite, packaging, the Predictor (so the CLI, the API and the page) all call
``PostProcess.apply``: the Dice we report is the Dice of the masks users get.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .modelinfo import ModelInfo


def remove_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop 2D connected components (8-connectivity) smaller than ``min_pixels``."""
    if min_pixels <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    lab, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[lab]


@dataclass(frozen=True)
class PostProcess:
    threshold: float
    min_component_pixels: int  # at the model's input size; scaled to each image's own size
    model_size: int

    @classmethod
    def of(cls, info: ModelInfo, threshold: float | None = None) -> PostProcess:
        thr = info.post.threshold if threshold is None else float(threshold)
        return cls(thr, info.post.min_component_pixels, info.input.size)

    def with_threshold(self, threshold: float | None) -> PostProcess:
        return self if threshold is None else PostProcess(float(threshold), self.min_component_pixels, self.model_size)

    def min_pixels_at(self, shape: tuple[int, ...]) -> int:
        """The component size rule at an image of ``shape`` (H, W): the same area fraction as at the model size."""
        if not self.min_component_pixels:
            return 0
        scale = shape[0] * shape[1] / (self.model_size * self.model_size)
        return max(1, int(round(self.min_component_pixels * scale)))

    def apply(self, prob: np.ndarray) -> np.ndarray:
        """The mask of one H x W probability map, or of each map of an N x H x W batch."""
        m = prob >= self.threshold
        min_px = self.min_pixels_at(prob.shape[-2:])
        if not min_px:
            return m
        if m.ndim == 2:
            return remove_small_components(m, min_px)
        return np.stack([remove_small_components(x, min_px) for x in m])
