"""Measurements of a study's mask: volume, slices with tumour, largest in-plane diameter, 3D components."""

from __future__ import annotations

import numpy as np

from ..imaging.geometry import voxel_ml


def _max_diameter(mask2d: np.ndarray, row_mm: float, col_mm: float) -> float:
    ys, xs = np.nonzero(mask2d)
    if len(ys) == 0:
        return 0.0
    pts = np.stack([ys * row_mm, xs * col_mm], 1).astype(float)
    # pixel corners matter for tiny objects: use the pixel extent as a floor
    if len(pts) > 3:
        try:
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:
            pass
    if len(pts) > 2000:
        pts = pts[np.linspace(0, len(pts) - 1, 2000).astype(int)]
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max()
    return float(d + min(row_mm, col_mm))


def _largest_lesion_diameter(mask2d: np.ndarray, row_mm: float, col_mm: float) -> float:
    """The longest in-plane diameter of one lesion (8-connected component) in this slice: the span
    between two separate findings (a lesion and a false alarm across the brain) is no diameter."""
    from scipy import ndimage

    lab, n = ndimage.label(mask2d, structure=np.ones((3, 3), bool))
    return max((_max_diameter(lab == k, row_mm, col_mm) for k in range(1, n + 1)), default=0.0)


def study_measurements(mask: np.ndarray, spacing, min_component_mm3: float = 0.0) -> tuple[dict, np.ndarray]:
    """Volume (mL), slices with tumour, largest in-plane lesion diameter (mm); optional 3D component filter."""
    from scipy import ndimage

    removed = 0
    if min_component_mm3 > 0 and mask.any():
        vox_mm3 = float(np.prod(spacing)) if spacing else 1.0
        lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(lab.ravel()) * vox_mm3
        keep = sizes >= min_component_mm3
        keep[0] = False
        removed = int(n - keep[1:].sum())
        mask = keep[lab]
    voxels = int(mask.sum())
    dz, dy, dx = spacing if spacing else (None, 1.0, 1.0)
    diam = max((_largest_lesion_diameter(m, dy, dx) for m in mask if m.any()), default=0.0)
    lab, ncomp = ndimage.label(mask, structure=np.ones((3, 3, 3), bool)) if voxels else (None, 0)
    meas = {
        "tumour_voxels": voxels,
        "volume_ml": voxels * voxel_ml(spacing) if spacing else None,
        "slices_with_tumour": int(mask.reshape(mask.shape[0], -1).any(1).sum()),
        "n_slices": int(mask.shape[0]),
        "largest_diameter_mm": diam if spacing else None,
        "largest_diameter_pixels": None if spacing else diam,
        "components": int(ncomp),
        "components_removed": removed,
        "min_component_mm3": min_component_mm3,
        "voxel_spacing_mm": list(spacing) if spacing else None,
    }
    return meas, mask
