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


BLOCK_PIXELS = 1 << 18  # blend in row blocks: the float temporaries of a huge image stay ~15 MB


def heatmap_overlay(image: np.ndarray, prob: np.ndarray, alpha: float = 0.5, floor: float = 0.05) -> np.ndarray:
    """JET heatmap blended over the image; probabilities below ``floor`` stay transparent."""
    out = np.empty(image.shape[:2] + (3,), np.uint8)
    rows = max(1, BLOCK_PIXELS // max(1, image.shape[1]))
    for r in range(0, image.shape[0], rows):
        p = prob[r : r + rows]
        col = jet(p).astype(np.float32)
        a = np.where(p >= floor, alpha, 0.0).astype(np.float32)[..., None]
        out[r : r + rows] = (image[r : r + rows].astype(np.float32) * (1 - a) + col * a + 0.5).astype(np.uint8)
    return out


def contour_overlay(image: np.ndarray, mask: np.ndarray, color=(255, 255, 0), width: int = 1) -> np.ndarray:
    """The mask's outline drawn over the image."""
    from scipy import ndimage

    out = image.copy()
    if mask.any():
        inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
        out[mask & ~inner] = color
    return out
