"""What the model can judge: refusals for inputs that are not MRI slices, warnings for unusual ones.

Thresholds come from the 3,226 shared LGG slices (`python scripts/input_checks.py --data DATA` lists
each statistic and what each check catches); none of those slices is refused.
"""

from __future__ import annotations

import numpy as np

from ..errors import ImageReadError

MIN_SIDE = 32  # px; the LGG slices are 256, MRI slices are rarely under 128
MIN_NEIGHBOUR_CORRELATION = 0.2  # LGG min 0.43, median 0.97; uniform noise ~0
TRAINING_MEAN_MAX = 65.0  # brightest mean (of 255) among the LGG slices
SINGLE_SEQUENCE_WARNING = (
    "single-channel image: copied into the three channels (pre-contrast, FLAIR, post-contrast) the model "
    "was trained on; expect lower accuracy, and more false positives on a FLAIR-only slice"
)


class CannotJudge(ImageReadError):
    """A readable image that the model cannot judge (the API answers 422)."""


def neighbour_correlation(gray: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels; on at most ~1024 rows (every k-th row of a larger
    image: pairs stay adjacent, and the working memory stays bounded whatever the image size)."""
    g = gray[:: -(-gray.shape[0] // 1024)]
    s = np.zeros(5)  # sums of a, b, a^2, b^2, ab over row blocks: float64 temporaries stay small
    for r in range(0, g.shape[0], 128):
        a, b = g[r : r + 128, :-1].astype(np.float64), g[r : r + 128, 1:].astype(np.float64)
        s += [a.sum(), b.sum(), (a * a).sum(), (b * b).sum(), (a * b).sum()]
    n = g.shape[0] * max(g.shape[1] - 1, 0)
    if n < 2:
        return 1.0
    va, vb = n * s[2] - s[0] ** 2, n * s[3] - s[1] ** 2
    if va <= 1e-9 * max(1.0, n * s[2]) or vb <= 1e-9 * max(1.0, n * s[3]):
        return 1.0  # a blank image: judged (no tumour)
    return float((n * s[4] - s[0] * s[1]) / np.sqrt(va * vb))


def judge(raw: np.ndarray, img8: np.ndarray, source: str) -> list[str]:
    """Raise CannotJudge for inputs outside what the model can judge; return warnings for unusual ones.

    raw: the image as read (any dtype, gray or colour); img8: the uint8 RGB the model will see.
    """
    h, w = img8.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise CannotJudge(
            source,
            f"image is {w}x{h} px; the model needs at least {MIN_SIDE}x{MIN_SIDE} "
            "(MRI slices are usually 256x256 or larger)",
        )
    gray = img8.mean(2, dtype=np.float32)
    c = neighbour_correlation(gray)  # a blank image correlates fully: it is judged (no tumour)
    if c < MIN_NEIGHBOUR_CORRELATION:
        raise CannotJudge(
            source,
            f"image looks like noise, not an MRI slice (neighbouring pixels correlate "
            f"{c:.2f}; MRI slices {MIN_NEIGHBOUR_CORRELATION:g} or more)",
        )
    warnings = []
    if max(h, w) > 4 * min(h, w):
        warnings.append(
            f"unusual shape {w}x{h} px (aspect ratio {max(h, w) / min(h, w):.1f}): the model sees it squeezed to "
            "a square; an MRI slice is close to square"
        )
    if raw.ndim == 2 or (
        raw.ndim == 3
        and raw.shape[2] >= 3
        and np.array_equal(raw[..., 0], raw[..., 1])
        and np.array_equal(raw[..., 1], raw[..., 2])
    ):
        warnings.append(SINGLE_SEQUENCE_WARNING)
    if raw.dtype != np.uint8:
        warnings.append(f"{raw.dtype} image: scaled to 8 bits from its 0.5-99.5 percentiles")
    if gray.mean() > TRAINING_MEAN_MAX * 1.5:
        warnings.append(
            f"brighter than any training slice (mean {gray.mean():.0f} of 255; training at most "
            f"{TRAINING_MEAN_MAX:.0f}): the model may under-call. Whole studies (NIfTI, DICOM) are "
            "standardised to the training level; single images are not"
        )
    return warnings
