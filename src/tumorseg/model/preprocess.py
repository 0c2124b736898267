"""One rule from display-ready slices to the model's input, driven by the model's ``InputSpec``.

Every front end (single images, slice stacks, NIfTI/DICOM volumes, the PACS) hands the predictor
uint8 RGB slices (pre-contrast, FLAIR, post-contrast) in stack order; this module adds the
neighbouring slices a 2.5D model takes as context and applies the recorded normalisation. Training
builds its batches with the same functions (numpy; no torch, so the int8 path never imports it).

A 2.5D model's channels: the three sequences of slice k, then FLAIR of slices k-c*s ... k+c*s
(c = ``InputSpec.context`` slices each side, s = the step that puts neighbours about
``InputSpec.context_mm`` apart). At the ends of a stack, and for a single image, a missing neighbour
is the slice itself: the model was trained to read "no context" that way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FLAIR = 1  # index of FLAIR among the three sequences


def channel_sequences(context: int) -> tuple[int, ...]:
    """Which of the three sequences each model channel holds (the neighbours are FLAIR)."""
    return (0, 1, 2) + (FLAIR,) * (2 * context)


def context_offsets(context: int) -> tuple[int, ...]:
    """The slice offset of each neighbour channel, in steps: -c..-1, 1..c."""
    return tuple(range(-context, 0)) + tuple(range(1, context + 1))


def context_step(spacing_mm: float | None, context_mm: float) -> int:
    """Slices between a slice and its neighbour: about ``context_mm`` apart where the spacing is known,
    the adjacent slice otherwise (slice folders carry no spacing)."""
    if not spacing_mm or not math.isfinite(spacing_mm) or spacing_mm <= 0 or context_mm <= 0:
        return 1
    return max(1, int(round(context_mm / spacing_mm)))


def groups_of(labels: Sequence[str]) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal labels (a patient's or a study's slices, kept together in order)."""
    out, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append((start, i))
            start = i
    return out


def neighbour_positions(n: int, offset: int, groups: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """For each of ``n`` stacked slices, the position of the slice ``offset`` away in the same group
    (patient/study; ``groups`` = (start, stop) ranges, default one group), clamped at its ends."""
    pos = np.arange(n)
    out = np.empty(n, np.int64)
    for start, stop in groups or [(0, n)]:
        out[start:stop] = np.clip(pos[start:stop] + offset, start, stop - 1)
    return out


def with_context(
    slices_u8: np.ndarray,
    context: int,
    step: int = 1,
    sel: np.ndarray | None = None,
    groups: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """N x H x W x 3 uint8 stack -> len(sel) x H x W x (3 + 2*context) uint8 model channels."""
    sel = np.arange(len(slices_u8)) if sel is None else np.asarray(sel)
    if context <= 0:
        return slices_u8[sel]
    n, h, w = slices_u8.shape[:3]
    out = np.empty((len(sel), h, w, 3 + 2 * context), np.uint8)
    out[..., :3] = slices_u8[sel]
    for j, off in enumerate(context_offsets(context)):
        out[..., 3 + j] = slices_u8[neighbour_positions(n, off * step, groups)[sel], ..., FLAIR]
    return out


def single_with_context(img_u8: np.ndarray, context: int) -> np.ndarray:
    """One H x W x 3 image -> H x W x C: without neighbours, each context channel is its own FLAIR."""
    return with_context(img_u8[None], context)[0]


def expand_per_channel(values: Sequence[float], n_channels: int) -> np.ndarray:
    """Per-sequence numbers (mean, std, gamma ...) -> per model channel."""
    seq = channel_sequences((n_channels - 3) // 2)
    return np.asarray([values[s] for s in seq], np.float32)


def model_input(batch_u8: np.ndarray, norm: dict) -> np.ndarray:
    """N x S x S x C uint8 -> N x C x S x S float32, scaled and normalised as the model file says.

    The one numpy home of this rule: the engines and int8 calibration call it; training applies the
    same numbers on its device (``expand_per_channel`` for both).
    """
    c = batch_u8.shape[-1]
    mean = expand_per_channel(norm.get("mean", [0, 0, 0]), c).reshape(1, c, 1, 1)
    std = expand_per_channel(norm.get("std", [1, 1, 1]), c).reshape(1, c, 1, 1)
    if batch_u8.dtype != np.uint8:
        return (batch_u8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
    # the same float32 arithmetic on the 256 possible values, then one lookup per pixel (3x faster)
    lut = (np.arange(256, dtype=np.float32).reshape(1, 256) / 255.0 - mean.reshape(c, 1)) / std.reshape(c, 1)
    out = np.empty((batch_u8.shape[0], c, *batch_u8.shape[1:3]), np.float32)
    for k in range(c):
        np.take(lut[k], batch_u8[..., k], out=out[:, k])
    return out
