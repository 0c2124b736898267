"""The study and what every reader shares: its errors, limits, intensity scaling and spacing rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import ImageReadError
from ..imaging.geometry import axis_label, display_affine

MAX_STUDY_VOXELS = 64_000_000  # voxels x channels, e.g. 512 x 512 x 244


# One working-memory figure per study voxel and channel (the raw and float32 copies, percentile
# temporaries, the uint8 RGB volume, probabilities, mask): predict_study peaks at ~27 bytes per voxel
# (tracemalloc, 240x240x100 NIfTI; test_working_set_of_a_study_stays_in_budget keeps it under this).
STUDY_BYTES_PER_VOXEL = 32


SPACING_RANGE_MM = (0.01, 100.0)


SINGLE_SEQUENCE_NOTE = (
    "The model was trained on three channels (pre-contrast, FLAIR, post-contrast). This study has a single "
    "sequence, which was copied into all three channels; expect lower accuracy than on the training data."
)


class StudyError(ImageReadError):
    """A study cannot be read; the message names the file or folder and the reason."""


class VoxelSize(NamedTuple):
    """A voxel size as a user types it (``--spacing ROW,COL,SLICE``, a manifest's spacing column), in mm."""

    row: float
    col: float
    slice: float


class Spacing(NamedTuple):
    """A study's voxel size in its volume's axis order (slice, row, column), in mm: ``Study.spacing``. A distinct
    type from ``VoxelSize`` so the two orders cannot be mixed: ``Spacing.of(VoxelSize)`` is the one conversion."""

    slice: float
    row: float
    col: float

    @classmethod
    def of(cls, v: VoxelSize) -> Spacing:
        return cls(float(v.slice), float(v.row), float(v.col))


@dataclass
class Study:
    source: str
    kind: str  # slices (a folder of 2D slices, no geometry) | nifti | dicom
    volume: np.ndarray  # Z x H x W x 3 uint8 (display/model-ready)
    spacing: Spacing | None  # (slice, row, column) in mm; a plain 3-tuple given here is taken in that order
    names: list[str]
    single_sequence: bool = False
    affine: np.ndarray | None = None  # NIfTI: the input's affine
    nifti_shape: tuple | None = None
    dicom: list | None = None  # pydicom datasets, sorted
    frame_order: list[int] | None = None  # multi-frame DICOM: the source frame of each slice
    notes: list[str] = field(default_factory=list)
    sequences: dict | None = None  # model channel -> the file or sequence that filled it
    intensity_gains: list[float] | None = None  # per channel, from standardise_brain_intensity
    pacs: dict | None = None  # where a DICOMweb study came from (url, study and series UIDs, the choice)
    raw_scale: list | None = None  # per channel (lo, hi): the input's units mapped to 0..255 before the gains

    def __post_init__(self) -> None:
        if isinstance(self.spacing, VoxelSize):
            raise TypeError("Study.spacing is (slice, row, column): convert a VoxelSize with Spacing.of")
        if self.spacing is not None and not isinstance(self.spacing, Spacing):
            self.spacing = Spacing(*(float(v) for v in self.spacing))

    @property
    def n_slices(self) -> int:
        return int(self.volume.shape[0])

    def slice_rgb(self, i: int) -> np.ndarray:
        return self.volume[i]


def looks_like_label_map(volume: np.ndarray) -> bool:
    """Few distinct values, mostly zero: a segmentation (BraTS ``_seg``: 0, 1, 2, 4), not an image."""
    counts = np.bincount(volume[..., 1].ravel(), minlength=256)
    return int((counts > 0).sum()) <= 6 and counts[0] > 0.5 * volume[..., 1].size


def study_to_uint8(vol: np.ndarray, low: float = 0.5, high: float = 99.5, scales: list | None = None) -> np.ndarray:
    """One scaling for the whole volume (per channel), from robust percentiles of the non-zero voxels;
    ``scales`` receives each channel's (lo, hi) in the input's own units (the page's W/L in those units)."""
    vol = np.nan_to_num(vol.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    out = np.empty(vol.shape, np.uint8)
    chans = vol.shape[-1]
    for c in range(chans):
        v = vol[..., c]
        fg = v[v != 0]
        ref = fg if fg.size > 100 else v.ravel()
        lo, hi = np.percentile(ref, [low, high]) if ref.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        out[..., c] = np.round(np.clip((v - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        if scales is not None:
            scales.append((float(lo), float(hi)))
    return out


def parse_spacing(text: str) -> VoxelSize:
    """ "ROW,COL,SLICE" in mm (the CLI's --spacing and a manifest's spacing column); ValueError says why."""
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r}: expected three numbers ROW,COL,SLICE in mm") from None
    lo, hi = SPACING_RANGE_MM
    if len(vals) != 3 or not all(lo <= v <= hi for v in vals):
        raise ValueError(f"{text!r}: expected three values between {lo:g} and {hi:g} mm")
    return VoxelSize(*vals)


def valid_spacing(source, values, what: str, notes: list[str]) -> list[float]:
    """Voxel sizes that are finite and plausible; negative ones are used by magnitude, with a note."""
    out = []
    for v in values:
        if not np.isfinite(v) or v == 0 or not SPACING_RANGE_MM[0] <= abs(v) <= SPACING_RANGE_MM[1]:
            raise StudyError(
                source,
                f"{what} {list(values)} is not a usable voxel size (each value must be "
                f"finite and between {SPACING_RANGE_MM[0]} and {SPACING_RANGE_MM[1]:g} mm)",
            )
        out.append(abs(float(v)))
    if any(v < 0 for v in values):
        notes.append(f"{what} {list(values)} has negative values; their magnitudes were used as the voxel size.")
    return out


def orientation_labels(st: Study) -> dict | None:
    """Labels for the held slice's edges {left, right, top, bottom} (before the viewer turns it), from
    ``geometry.display_affine``, the one geometry rule the page uses too; None where the input has no
    orientation (2D images and slice stacks, with or without a voxel size: the page says "orientation unknown")."""
    a4, known = display_affine(st)
    if st.affine is None or not known:  # a voxel size typed for slice images gives their size, not an orientation
        return None
    a = a4[:3, :3]
    right, down = a[:, 0], a[:, 1]  # + column, + row of the held slice
    return {
        "right": axis_label(right),
        "left": axis_label(-right),
        "bottom": axis_label(down),
        "top": axis_label(-down),
    }


@dataclass
class StudyPrediction:
    study: Study
    images: list[np.ndarray]
    prob: np.ndarray  # Z x H x W
    mask: np.ndarray  # Z x H x W bool
    threshold: float
    measurements: dict
    uncertainty: np.ndarray | None
    model: dict

    def summary(self) -> dict:
        return {
            "source": self.study.source,
            "kind": self.study.kind,
            "threshold": self.threshold,
            **self.measurements,
            "single_sequence": self.study.single_sequence,
            "sequences": self.study.sequences,
            "orientation": orientation_labels(self.study),
            "orientation_of": "the stored slice's edges as held, before any turn (display.labels: after the "
            "page's turn, as the overlays and the page show it)",
            "voxel_spacing_order": ["slice", "row", "column"],  # voxel_spacing_mm's order (--spacing: row,col,slice)
            "notes": self.study.notes,
            **({"pacs": self.study.pacs} if self.study.pacs else {}),
            "model": self.model.get("model"),
            "engine": self.model.get("engine"),
            "disclaimer": self.model.get("disclaimer"),
        }
