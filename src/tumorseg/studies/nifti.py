"""NIfTI volumes, and one study from one NIfTI file or DICOM series per sequence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ..imaging.limits import check_decoded_size, check_model_time, check_working_set
from .core import (
    MAX_STUDY_VOXELS,
    SINGLE_SEQUENCE_NOTE,
    STUDY_BYTES_PER_VOXEL,
    Study,
    StudyError,
    study_to_uint8,
    valid_spacing,
)
from .dicom import read_dicom, zip_members
from .names import MODEL_CHANNELS, is_dicom_file, is_nifti


def nifti_slice_to_image(a2: np.ndarray) -> np.ndarray:
    return np.flipud(a2.T)


def image_to_nifti_slice(im: np.ndarray) -> np.ndarray:
    return np.flipud(im).T


def _raw_pixdim(p: Path, img) -> list[float]:
    """pixdim[1:4] as written in the file: nibabel's loader silently turns 0 into 1, which must be refused."""
    import gzip

    import nibabel as nib

    try:
        opener = gzip.open if p.name.lower().endswith(".gz") else open
        two = isinstance(img.header, nib.Nifti2Header)
        with opener(p, "rb") as fh:
            block = fh.read(540 if two else 348)
        cls = nib.Nifti2Header if two else nib.Nifti1Header
        hdr = cls(binaryblock=block, check=False, endianness=img.header.endianness)
        return [float(x) for x in hdr["pixdim"][1:4]]
    except Exception:
        return [float(x) for x in img.header["pixdim"][1:4]]


def _finite_in_float32(source, data: np.ndarray, notes: list[str]) -> np.ndarray:
    """Intensities beyond float32's range (e.g. scl_slope 1e38) divided down, so they do not become inf
    and read as an empty volume; only relative intensities matter (every study is percentile-scaled)."""
    if data.dtype.kind != "f" or data.dtype.itemsize <= 4:
        return data
    finite = np.isfinite(data)
    top = float(np.abs(data[finite]).max(initial=0.0)) if finite.any() else 0.0
    if top <= 1e37:
        return data
    notes.append(f"intensities reach {top:.3g} (beyond 32-bit floats; scl_slope?); divided by that to stay finite")
    return np.where(finite, data / top, 0.0)


def _zooms_of_affine(p: Path, img, zooms: list[float], notes: list[str]) -> list[float]:
    """The voxel size the file's affine (sform, else qform: what nibabel, the written mask and every viewer use)
    carries. Where pixdim says otherwise, the affine's is used and a note says so: a volume measured by pixdim
    would disagree with the mask it comes with in any other tool."""
    if len(zooms) < 3:
        return zooms
    try:
        ax = [float(x) for x in np.linalg.norm(np.asarray(img.affine, float)[:3, :3], axis=0)]
    except Exception:
        return zooms
    if not all(np.isfinite(a) and a > 0 for a in ax) or np.allclose(ax, zooms[:3], rtol=1e-3, atol=1e-4):
        return zooms
    ax = valid_spacing(p, ax, "NIfTI affine voxel size", notes)
    notes.append(
        f"NIfTI pixdim {[round(z, 4) for z in zooms[:3]]} and its {'sform' if img.header['sform_code'] > 0 else 'qform'} "
        f"voxel size {[round(a, 4) for a in ax]} mm disagree; the affine's was used (the written mask and every "
        "viewer place voxels by it)."
    )
    return ax + list(zooms[3:])


def _nifti_header(p: Path):
    """(image, voxel sizes, notes) of a NIfTI file judged from its header alone: voxel type, size,
    working memory, model time and pixdim, before any voxel is read."""
    import nibabel as nib

    try:
        img = nib.load(str(p))
        shape = tuple(int(x) for x in img.header.get_data_shape())
        dtype = img.header.get_data_dtype()
        itemsize = int(dtype.itemsize)
    except Exception as exc:
        raise StudyError(p, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if dtype.fields is not None or dtype.kind not in "uifb":
        raise StudyError(
            p, f"NIfTI voxel type {dtype} (e.g. RGB24) is not a grey-level volume; store one sequence per file"
        )
    nvox = math.prod(shape) if shape else 0  # Python ints: a product of absurd dims must not wrap around
    if nvox > MAX_STUDY_VOXELS:
        raise StudyError(p, f"volume {shape} has {nvox:,} voxels, over the limit of {MAX_STUDY_VOXELS:,}")
    size = p.stat().st_size
    try:
        check_decoded_size(p, nvox * itemsize, None, "NIfTI volume")
        # The expansion rule counts voxels (at 2 bytes, the usual int16), not the stored type: a real float64
        # FLAIR compresses 20-25x in bytes yet is no bomb; a volume of zeros is caught by its voxel count.
        check_decoded_size(p, nvox * 2, size, "NIfTI volume")
    except ImageReadError as exc:
        raise StudyError(p, exc.reason) from None
    notes: list[str] = []
    raw = [float(x) for x in _raw_pixdim(p, img)]
    zooms = valid_spacing(p, raw[: len(shape)] if len(shape) < 3 else raw, "NIfTI pixdim", notes)
    zooms = _zooms_of_affine(p, img, zooms, notes)
    try:
        if len(shape) >= 3 and shape[2] > 1:
            check_model_time(p, shape[2], shape[1], shape[0], size, "NIfTI volume")
        check_working_set(p, nvox * STUDY_BYTES_PER_VOXEL, size, "NIfTI volume")
    except ImageReadError as exc:
        raise StudyError(p, exc.reason) from None
    return img, zooms, notes


def read_nifti(p: Path, scale: bool = True) -> Study:
    """A NIfTI study; ``scale=False`` keeps the raw intensities (float32) for ``read_sequences`` to scale."""
    img, zooms, notes = _nifti_header(p)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise StudyError(p, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    data = _finite_in_float32(p, data, notes)
    if data.ndim == 2 or (data.ndim == 3 and min(data.shape) == 1 and data.shape[2] == 1):
        raise StudyError(p, f"NIfTI is 2D (shape {data.shape}); a study needs a 3D volume")
    if data.ndim == 4:
        if data.shape[3] not in (1, 3):
            raise StudyError(p, f"4D NIfTI has {data.shape[3]} channels; the model expects 1 or 3")
        chans = data.shape[3]
    elif data.ndim == 3:
        chans = 1
        data = data[..., None]
    else:
        raise StudyError(p, f"unsupported NIfTI shape {data.shape}")
    sx, sy, sz = (float(z) for z in (list(zooms) + [1.0, 1.0, 1.0])[:3])
    if not scale:
        if chans != 1:
            raise StudyError(p, f"expected one sequence per file, found {chans} channels")
        raw = np.nan_to_num(data[..., 0].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        vol = np.stack([nifti_slice_to_image(raw[:, :, k]) for k in range(raw.shape[2])])
        return Study(
            str(p),
            "nifti",
            vol,
            (sz, sy, sx),
            [f"slice {k + 1}" for k in range(vol.shape[0])],
            affine=img.affine.copy(),
            nifti_shape=tuple(data.shape[:3]),
            notes=notes,
        )
    scales: list = []
    vol8 = study_to_uint8(data, scales=scales)  # X Y Z C
    slices = []
    for k in range(vol8.shape[2]):
        s = np.stack([nifti_slice_to_image(vol8[:, :, k, c]) for c in range(chans)], -1)
        slices.append(np.repeat(s, 3, -1) if chans == 1 else s)
    st = Study(
        str(p),
        "nifti",
        np.stack(slices),
        (sz, sy, sx),
        [f"slice {k + 1}" for k in range(len(slices))],
        single_sequence=chans == 1,
        affine=img.affine.copy(),
        nifti_shape=tuple(data.shape[:3]),
        notes=notes,
        raw_scale=scales * 3 if chans == 1 else scales,
    )
    if chans == 1:
        st.notes.append(SINGLE_SEQUENCE_NOTE)
    return st


def _read_raw_sequence(p: Path) -> Study:
    """One sequence with its raw intensities: a NIfTI file, or a DICOM series (folder or zip)."""
    if p.is_file() and is_nifti(p):
        return read_nifti(p, scale=False)
    if p.is_file() and p.name.lower().endswith(".zip"):
        return read_dicom(zip_members(p), str(p), scale=False)
    if p.is_dir():
        dcm = sorted(q for q in p.iterdir() if q.is_file() and is_dicom_file(q))
        if dcm:
            return read_dicom([(q.name, q.read_bytes()) for q in dcm], str(p), scale=False)
    raise StudyError(p, "not a sequence (expected a NIfTI file or a DICOM series folder or .zip)")


def read_sequences(paths: dict, source: str | None = None) -> Study:
    """One study from one file (NIfTI) or series (DICOM) per sequence, mapped to the model's channels
    (pre-contrast, FLAIR, post-contrast); FLAIR fills a missing one, as the LGG set does. The mapping
    goes into study.json. The sequences must lie on one voxel grid."""
    paths = {k: Path(v) for k, v in paths.items() if v and k in ("t1", "flair", "t1c", "t2", "label")}
    source = source or str(paths.get("flair") or next(iter(paths.values()), "sequences"))
    if "flair" not in paths:
        raise StudyError(
            source,
            "a FLAIR sequence is needed (the model segments the FLAIR abnormality); found "
            + (", ".join(sorted(paths)) or "none"),
        )
    vols, ref = {}, None
    for seq in MODEL_CHANNELS:
        if seq not in paths:
            continue
        st = _read_raw_sequence(paths[seq])
        if ref is None:
            ref = st
        elif st.volume.shape != ref.volume.shape or st.kind != ref.kind:
            raise StudyError(
                source,
                f"{paths[seq].name} is {st.volume.shape[::-1]} but {paths['flair'].name} is "
                f"{ref.volume.shape[::-1]}: the sequences must be co-registered on one grid",
            )
        elif st.kind == "dicom" and not np.allclose(st.affine, ref.affine, atol=0.5):
            raise StudyError(
                source,
                f"{paths[seq].name} and {paths['flair'].name} lie on different grids (their positions or "
                "orientations differ): the sequences must be co-registered on one grid",
            )
        vols[seq] = st
    flair = vols["flair"]
    mapping, notes = {}, list(flair.notes)
    chans = []
    for seq, label in zip(MODEL_CHANNELS, ("pre-contrast", "FLAIR", "post-contrast")):
        use = seq if seq in vols else "flair"
        mapping[label] = paths[use].name + ("" if use == seq else " (FLAIR copied in: no such sequence)")
        chans.append(vols[use].volume)
    if not np.allclose(vols["flair"].affine, ref.affine, atol=1e-3):
        notes.append("The sequences' affines differ slightly; they were taken as co-registered.")
    raw = np.stack(chans, -1)  # Z H W C, each channel in its own units
    scales: list = []
    vol8 = study_to_uint8(raw, scales=scales)
    single = len(vols) == 1
    notes.append(
        "Sequences mapped to the model's channels: " + "; ".join(f"{k} <- {v}" for k, v in mapping.items()) + "."
    )
    if single:
        notes.append(SINGLE_SEQUENCE_NOTE)
    return Study(
        source,
        flair.kind,
        vol8,
        flair.spacing,
        flair.names,
        single_sequence=single,
        affine=flair.affine,
        nifti_shape=flair.nifti_shape,
        dicom=flair.dicom,
        notes=notes,
        sequences=mapping,
        frame_order=flair.frame_order,
        raw_scale=scales,
    )
