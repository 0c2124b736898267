"""A user's reference mask on the study's grid, in world space where both have geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..imaging.images import read_mask
from .core import MAX_STUDY_VOXELS, Study, StudyError
from .formats import strip_extension
from .names import is_nifti
from .nifti import nifti_slice_to_image

# The one rule for a study's own reference, beside it: a case folder's ``_seg`` NIfTI, a slice folder's
# ``<slice>_mask`` images. The page offers what matches (static/study.js REF_NAME, the same pattern, kept equal
# by a test) and the CLI takes it with --reference auto.
REFERENCE_NAME = r"(_mask\.[^.]+|_seg\.nii(\.gz)?)$"


def own_reference(source) -> list[Path]:
    """The reference files found beside a study (a folder's, or a NIfTI file's siblings of the same case):
    [the _seg NIfTI] or [every _mask image]; [] when there is none."""
    import re

    rx = re.compile(REFERENCE_NAME, re.IGNORECASE)
    if isinstance(source, dict):
        source = next(iter(source.values()))
    p = Path(source)
    folder = p if p.is_dir() else p.parent
    found = sorted(q for q in folder.iterdir() if q.is_file() and rx.search(q.name) and not q.name.startswith("."))
    segs = [q for q in found if is_nifti(q)]
    if not p.is_dir():  # a file: only its own case's _seg (case_flair.nii.gz -> case_seg.nii.gz)
        case = strip_extension(p.name).rsplit("_", 1)[0]
        return [q for q in segs if strip_extension(q.name).rsplit("_", 1)[0] == case][:1]
    return segs[:1] if segs else [q for q in found if not is_nifti(q)]


def read_reference_files(files: list[Path], like, notes: list[str] | None = None) -> np.ndarray:
    """A reference given as files: one NIfTI or 2D mask (``read_reference``), or a slice stack's own
    ``<slice>_mask`` images (``reference_from_slice_masks``) — what the page's Reference… and the CLI's
    --reference both take."""
    if len(files) == 1 and (not isinstance(like, Study) or is_nifti(files[0])):
        return read_reference(files[0], like, notes=notes)
    if not isinstance(like, Study):
        raise StudyError(files[0].parent, "masks per slice are a slice stack's reference; this input is an image")
    return reference_from_slice_masks(like, [(f.name, f.read_bytes()) for f in files])


def reference_from_slice_masks(like: Study, members: list[tuple[str, bytes]]) -> np.ndarray:
    """A slice stack's reference from its own ``<slice>_mask`` images (as the LGG folders ship them):
    Z x H x W bool in the study's slice order; a slice without a mask file is refused by name."""

    by_stem = {}
    for n, data in members:
        stem = strip_extension(Path(n).name)
        if stem.lower().endswith("_mask"):
            by_stem[stem[:-5]] = (n, data)
    out = np.zeros(like.volume.shape[:3], bool)
    for k, sname in enumerate(like.names):
        stem = strip_extension(Path(sname).name)
        if stem not in by_stem:
            raise StudyError(f"{stem}_mask", f"no mask file for slice {Path(sname).name}; send one per slice")
        n, data = by_stem[stem]
        m = read_mask(n, data=data)
        if m.shape[:2] != out.shape[1:]:
            raise StudyError(n, f"mask is {m.shape[1]}x{m.shape[0]} but its slice is {out.shape[2]}x{out.shape[1]}")
        out[k] = m
    return out


def read_reference(path: Path, like, source_name: str | None = None, notes: list[str] | None = None) -> np.ndarray:
    """A user's reference mask in the layout of ``like`` (a Study -> Z x H x W bool; an HxW shape -> H x W).

    For a study with geometry (NIfTI, DICOM): a NIfTI mask compared in world space, through both
    affines: on the same grid it is used as is; on another grid that overlaps the study it is resampled
    onto the study's (nearest neighbour; a note says so); one that does not overlap is refused. For a
    slice stack (no geometry): a NIfTI of the same shape. For an image: a 2D mask of the same size.
    """
    import nibabel as nib

    name = source_name or Path(path).name
    if isinstance(like, Study):
        if not is_nifti(Path(name)):
            raise StudyError(name, "a study's reference must be a NIfTI mask (.nii or .nii.gz)")
        try:
            img = nib.load(str(path))
            shape = tuple(int(x) for x in img.header.get_data_shape())
        except Exception as exc:
            raise StudyError(name, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
        if int(np.prod(shape)) > MAX_STUDY_VOXELS:
            raise StudyError(name, f"reference {shape} is too large")
        arr = np.asanyarray(img.dataobj) > 0
        arr = arr[..., 0] if arr.ndim == 4 else arr
        if arr.ndim != 3:
            raise StudyError(name, f"reference has shape {arr.shape}; a study's reference is a 3D mask")
        # The study's voxel grid as NIfTI lays it out: (x, y, slice) for NIfTI, (col, row, slice) for DICOM.
        grid = (
            tuple(like.nifti_shape)
            if like.kind == "nifti"
            else (like.volume.shape[2], like.volume.shape[1], like.volume.shape[0])
        )
        if like.affine is not None and like.kind in ("nifti", "dicom"):
            arr = _reference_on_grid(arr, img.affine, grid, like.affine, name, notes)
        elif arr.shape != grid:
            raise StudyError(name, f"reference is {arr.shape} but the study's mask is {grid}")
        if like.kind == "nifti":
            return np.stack([nifti_slice_to_image(arr[:, :, k]) for k in range(arr.shape[2])])
        return np.transpose(arr, (2, 1, 0))

    m = read_mask(path)
    if m.shape != tuple(like):
        raise StudyError(name, f"reference mask is {m.shape[1]}x{m.shape[0]} but the image is {like[1]}x{like[0]}")
    return m


def _reference_on_grid(
    ref: np.ndarray, ref_affine: np.ndarray, grid: tuple, affine: np.ndarray, name: str, notes: list[str] | None
) -> np.ndarray:
    """``ref`` sampled at the study's voxel centres through both affines (world space, mm)."""
    from scipy import ndimage

    if ref.shape == grid and np.allclose(ref_affine, affine, atol=1e-3):
        return ref
    try:
        m = np.linalg.inv(ref_affine) @ affine  # study voxel -> reference voxel
    except np.linalg.LinAlgError:
        raise StudyError(name, "reference has a singular affine; its position in space is unknown") from None
    corners = np.array([[i, j, k, 1] for i in (0, grid[0] - 1) for j in (0, grid[1] - 1) for k in (0, grid[2] - 1)])
    idx = (m @ corners.T)[:3].T
    lo, hi = idx.min(0), idx.max(0)
    if np.any(hi < -0.5) or np.any(lo > np.array(ref.shape) - 0.5):
        raise StudyError(
            name, "reference does not overlap the study in space (compare their affines); nothing to compare"
        )
    out = ndimage.affine_transform(
        ref.astype(np.uint8), m[:3, :3], offset=m[:3, 3], output_shape=grid, order=0, mode="constant", cval=0
    ).astype(bool)
    if notes is not None:
        same = ref.shape == grid and np.allclose(m[:3, :3], np.round(m[:3, :3]), atol=1e-3)
        how = (
            "re-indexed (same voxels, another storage order)"
            if same
            else "resampled onto the study's grid (nearest neighbour)"
        )
        notes.append(f"Reference {name} {how} through both affines: it is compared in world space.")
    return out
