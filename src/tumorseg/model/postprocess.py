"""From probabilities to the mask: the one home of the rule.

A 2D image: threshold, then small 2D components removed (``apply``). A stack of slices (a study, a
slice folder, a patient in evaluation): the same per slice, then, where the model records a low
threshold, 3D hysteresis (``apply_stack``): voxels above the low threshold are kept when they connect
in 3D to the 2D rule's mask, which is how the faint ends of a lesion beside its obvious slices come back
without admitting faint blobs elsewhere.

Evaluation, the robustness suite, packaging, the Predictor (so the CLI, the API and the page) all call
these: the Dice we report is the Dice of the masks users get.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .info import ModelInfo


def planar_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of an H x W mask, or of each slice of an N x H x W stack (never across
    slices): (labels, size of each label; label 0 is the background)."""
    from scipy import ndimage

    structure = np.ones((3, 3), bool)
    if mask.ndim == 3:
        structure = np.zeros((3, 3, 3), bool)
        structure[1] = True
    lab, _ = ndimage.label(mask, structure=structure)
    return lab, np.bincount(lab.ravel())


def drop_small(labels: np.ndarray, sizes: np.ndarray, min_pixels: int) -> np.ndarray:
    """The mask of the components of at least ``min_pixels`` pixels."""
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def remove_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop 2D connected components (8-connectivity) smaller than ``min_pixels``, slice by slice."""
    if min_pixels <= 0 or not mask.any():
        return mask
    return drop_small(*planar_components(mask), min_pixels)


def volume_components(prob: np.ndarray, low: float) -> np.ndarray:
    """26-connected 3D components of ``prob >= low`` over one study's N x H x W stack."""
    from scipy import ndimage

    return ndimage.label(prob >= low, structure=np.ones((3, 3, 3), bool))[0]


def grow_into(mask: np.ndarray, volume_labels: np.ndarray) -> np.ndarray:
    """Hysteresis: the mask plus every low-threshold 3D component that touches it."""
    keep = np.zeros(volume_labels.max() + 1, bool)
    keep[np.unique(volume_labels[mask])] = True
    keep[0] = False
    return keep[volume_labels] | mask


@dataclass(frozen=True)
class PostProcess:
    threshold: float
    min_component_pixels: int  # at the model's input size; scaled to each image's own size
    model_size: int
    hysteresis_low: float = 0.0  # stacks only: 0 = off

    @classmethod
    def of(cls, info: ModelInfo, threshold: float | None = None) -> PostProcess:
        thr = info.post.threshold if threshold is None else float(threshold)
        return cls(thr, info.post.min_component_pixels, info.input.size, info.post.hysteresis_low)

    def with_threshold(self, threshold: float | None) -> PostProcess:
        return self if threshold is None else replace(self, threshold=float(threshold))

    def min_pixels_at(self, shape: tuple[int, ...]) -> int:
        """The component size rule at an image of ``shape`` (H, W): the same area fraction as at the model size."""
        if not self.min_component_pixels:
            return 0
        scale = shape[0] * shape[1] / (self.model_size * self.model_size)
        return max(1, int(round(self.min_component_pixels * scale)))

    def apply(self, prob: np.ndarray) -> np.ndarray:
        """The mask of one H x W probability map, or of each map of an N x H x W batch."""
        return remove_small_components(prob >= self.threshold, self.min_pixels_at(prob.shape[-2:]))

    def apply_stack(self, prob: np.ndarray) -> np.ndarray:
        """The mask of an N x H x W stack of one study's slices, in order (3D hysteresis where recorded)."""
        m = self.apply(prob)
        low = self.hysteresis_low
        if not (0 < low < self.threshold) or not m.any() or len(prob) < 2:
            return m
        return grow_into(m, volume_components(prob, low))
