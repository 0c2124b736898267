"""Brain-intensity standardisation: any study brought to the training slices' brain level."""

from __future__ import annotations

import numpy as np


def head_depth(img: np.ndarray) -> np.ndarray:
    """Distance in pixels (uint8, capped at 255) from each head pixel to the outside of the head.

    Head = the largest filled component above a low intensity cut. Thresholding this depth at the
    scalp-and-skull thickness gives a rough brain mask (``brain_mask``), which imitates skull-stripped
    inputs (BraTS-style preprocessing) in training and in the robustness suite. Not a clinical skull
    stripper.
    """
    from scipy import ndimage as ndi

    v = img.astype(np.float32).mean(axis=2) if img.ndim == 3 else img.astype(np.float32)
    hi = float(np.percentile(v, 99.5))
    if hi <= 0:
        return np.zeros(v.shape, np.uint8)
    head = ndi.binary_opening(v > 0.08 * hi, iterations=2)
    lab, n = ndi.label(head)
    if n == 0:
        return np.zeros(v.shape, np.uint8)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    head = ndi.binary_fill_holes(lab == sizes.argmax())
    return np.minimum(ndi.distance_transform_edt(head), 255).astype(np.uint8)


# Median of each channel (pre-contrast, FLAIR, post-contrast) inside the brain (head pixels deeper than
# 10 px) of the LGG training slices, out of 255: `python scripts/intensity_reference.py` recomputes it.
LGG_BRAIN_MEDIAN = (50.0, 48.0, 49.0)


def standardise_brain_intensity(vol8: np.ndarray, target=LGG_BRAIN_MEDIAN) -> tuple[np.ndarray, list[float]]:
    """Scale each channel of a Z x H x W x 3 uint8 study so its brain median is the training data's.

    A study scaled by its own percentiles lands where its preprocessing puts it: skull-stripped
    volumes (BraTS) put the brain at 2-3x the brightness the model saw, because nothing brighter than
    brain is left. One gain per channel and volume brings the brain to the training data's level, the
    same way on any scanner. Returns the volume and the gains.
    """
    z = vol8.shape[0]
    # up to 12 slices of the middle 60 %: a median needs no more, and each costs a distance transform
    picks = sorted({int(k) for k in np.linspace(z * 0.2, max(z * 0.8 - 1, z * 0.2), min(12, max(1, z)))})
    inside = [vol8[k][head_depth(vol8[k]) > 10] for k in picks if vol8[k].any()]
    inside = [v for v in inside if len(v)]
    if not inside:
        return vol8, [1.0, 1.0, 1.0]
    v = np.concatenate(inside)
    gains = []
    out = np.empty_like(vol8)
    for c in range(vol8.shape[-1]):
        med = float(np.median(v[:, c]))
        g = float(np.clip(target[c] / med, 0.1, 10.0)) if med > 0 else 1.0
        gains.append(g)
        out[..., c] = np.clip(np.round(vol8[..., c].astype(np.float32) * g), 0, 255).astype(np.uint8)
    return out, gains
