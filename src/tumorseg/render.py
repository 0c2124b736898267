"""Colour maps and overlays shown to the clinician (no model logic)."""

from __future__ import annotations

import numpy as np


def jet(x: np.ndarray) -> np.ndarray:
    """The JET colormap (as in OpenCV/Matlab) for values in [0, 1] -> uint8 RGB."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.concatenate([r, g, b], -1) * 255 + 0.5).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, prob: np.ndarray, alpha: float = 0.5, floor: float = 0.05) -> np.ndarray:
    """JET heatmap blended over the image; probabilities below ``floor`` stay transparent."""
    col = jet(prob).astype(np.float32)
    a = np.where(prob >= floor, alpha, 0.0).astype(np.float32)[..., None]
    out = image.astype(np.float32) * (1 - a) + col * a
    return (out + 0.5).astype(np.uint8)


def contour_overlay(image: np.ndarray, mask: np.ndarray, color=(255, 255, 0), width: int = 1) -> np.ndarray:
    """The mask's outline drawn over the image."""
    from scipy import ndimage

    out = image.copy()
    if mask.any():
        inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
        out[mask & ~inner] = color
    return out
