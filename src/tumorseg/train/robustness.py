"""Robustness suite: the same validation patients as other collections would deliver them.

Each condition transforms the LGG slices (and their masks where geometry changes) the way another
site's preprocessing would: skull-stripped (BraTS-style), only FLAIR (copied into the three
channels, as the LGG set does for missing sequences), other voxel sizes (zoomed out/in), other
intensity scaling (gamma, contrast). Scores are pixel-pooled and per-patient 3D Dice, computed
with the model's own threshold and small-component rule.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..engines.runners import Engine
from ..model.info import ModelInfo
from ..model.postprocess import PostProcess
from ..model.preprocess import groups_of
from .data import LoadedSet, brain_mask, flair_only

CONDITIONS = (
    "original",
    "skull_stripped",
    "flair_only",
    "flair_only_stripped",
    "zoom_0.75",
    "zoom_1.25",
    "gamma_0.6",
    "contrast_0.6",
)


def _zoom(img: np.ndarray, mask: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample by ``s`` about the centre, keeping the slice size (pads with 0 or crops)."""
    n = img.shape[0]
    m = max(8, int(round(n * s)))
    im = np.asarray(Image.fromarray(img).resize((m, m), Image.BILINEAR))
    mk = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((m, m), Image.BILINEAR)) >= 128
    out_i = np.zeros_like(img)
    out_m = np.zeros(mask.shape, bool)
    if m >= n:
        o = (m - n) // 2
        return im[o : o + n, o : o + n], mk[o : o + n, o : o + n]
    o = (n - m) // 2
    out_i[o : o + m, o : o + m] = im
    out_m[o : o + m, o : o + m] = mk
    return out_i, out_m


def transform(condition: str, img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 RGB slice and its mask under ``condition`` (one of CONDITIONS)."""
    if condition == "original":
        return img, mask
    if condition in ("skull_stripped", "flair_only_stripped"):
        img = img * brain_mask(img)[..., None].astype(np.uint8)
    if condition in ("flair_only", "flair_only_stripped"):
        img = flair_only(img)
    if condition.startswith("zoom_"):
        img, mask = _zoom(img, mask, float(condition.split("_")[1]))
    if condition.startswith("gamma_"):
        g = float(condition.split("_")[1])
        img = np.clip(255.0 * (img / 255.0) ** g, 0, 255).astype(np.uint8)
    if condition.startswith("contrast_"):
        c = float(condition.split("_")[1])
        img = np.clip(img.astype(np.float32) * c, 0, 255).astype(np.uint8)
    return img, mask


def transformed(data: LoadedSet, condition: str) -> tuple[np.ndarray, np.ndarray]:
    """All slices of ``data`` under ``condition``: (N x S x S x 3 uint8, N x S x S bool)."""
    pairs = [transform(condition, im, m) for im, m in zip(data.images, data.masks)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def score(engine: Engine, images: np.ndarray, truth: np.ndarray, patients: list[str], batch: int = 16) -> dict:
    """Metrics of ``engine`` on one transformed set, with the model's threshold and component rule."""
    from .evaluation import stack_metrics

    post = PostProcess.of(ModelInfo.from_meta(engine.meta))
    m = stack_metrics(engine.run_stack(images, groups_of(patients), batch=batch), truth, patients, post)
    return {
        k: m[k] for k in ("dice", "recall", "precision", "dice_per_patient_mean", "empty_slice_fp_rate", "patient_dice")
    }


def run_suite(engines: dict[str, Engine], data: LoadedSet, conditions=CONDITIONS) -> dict[str, dict[str, dict]]:
    """{model: {condition: metrics}}; each condition's slices are built once and shared by the models."""
    out: dict[str, dict[str, dict]] = {k: {} for k in engines}
    for cond in conditions:
        images, truth = transformed(data, cond)
        for name, eng in engines.items():
            out[name][cond] = score(eng, images, truth, data.patients)
    return out
