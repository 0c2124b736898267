"""Whole studies: kaggle_3m patient folders, NIfTI volumes and DICOM series (folder or zip).

A study is read once into a stack of slices with its voxel spacing and geometry, then
mapped with one study-level intensity scaling to the 8-bit RGB the model was trained on.
"""

from __future__ import annotations

import io as _io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import IMAGE_EXTENSIONS, ImageReadError, atomic_write_bytes, read_image, to_uint8_rgb, write_png

MAX_ZIP_BYTES = 2 * 1024**3  # refuse zips that would expand beyond this (zip bombs)
MAX_ZIP_MEMBERS = 20_000
SINGLE_SEQUENCE_NOTE = (
    "The model was trained on three channels (pre-contrast, FLAIR, post-contrast). This study has a single "
    "sequence, which was copied into all three channels; expect lower accuracy than on the training data."
)


class StudyError(ImageReadError):
    """A study cannot be read; the message names the file or folder and the reason."""


@dataclass
class Study:
    source: str
    kind: str  # kaggle | nifti | dicom
    volume: np.ndarray  # Z x H x W x 3 uint8 (display/model-ready)
    spacing: tuple[float, float, float] | None  # (slice, row, column) in mm
    names: list[str]
    single_sequence: bool = False
    affine: np.ndarray | None = None  # NIfTI: the input's affine
    nifti_shape: tuple | None = None
    dicom: list | None = None  # pydicom datasets, sorted
    notes: list[str] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return int(self.volume.shape[0])

    def slice_rgb(self, i: int) -> np.ndarray:
        return self.volume[i]


def looks_like_study_folder(p: Path) -> bool:
    """A folder of DICOM files, or a kaggle_3m patient folder of numbered slices."""
    files = [q for q in p.iterdir() if q.is_file()]
    if any(_is_dicom_file(q) for q in files[:20]):
        return True
    imgs = [q for q in files if q.suffix.lower() in IMAGE_EXTENSIONS and not q.stem.lower().endswith("_mask")]
    return bool(imgs) and all(re.search(r"_\d+$", q.stem) for q in imgs) and any(
        q.stem.lower().endswith("_mask") for q in files)


def _is_dicom_file(p: Path) -> bool:
    if p.suffix.lower() == ".dcm":
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def read_study(path, series: str | None = None) -> Study:
    p = Path(path)
    if not p.exists():
        raise StudyError(p, "not found")
    name = p.name.lower()
    if p.is_file() and (name.endswith(".nii") or name.endswith(".nii.gz")):
        return read_nifti(p)
    if p.is_file() and name.endswith(".zip"):
        return read_dicom(_zip_members(p), str(p), series)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        dcm = [q for q in files if _is_dicom_file(q)]
        if dcm:
            return read_dicom([(q.name, q.read_bytes()) for q in dcm], str(p), series)
        return read_kaggle_patient(p)
    raise StudyError(p, "not a study (expected a NIfTI file, a DICOM folder or .zip, or a patient folder)")


# --------------------------------------------------------------------------- kaggle folder


def read_kaggle_patient(folder: Path) -> Study:
    items = []
    for q in folder.iterdir():
        if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS and not q.stem.lower().endswith("_mask"):
            m = re.search(r"_(\d+)$", q.stem)
            items.append((int(m.group(1)) if m else 0, q))
    if not items:
        raise StudyError(folder, "folder holds no image slices")
    items.sort()
    slices = [to_uint8_rgb(read_image(q)) for _, q in items]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise StudyError(folder, f"slices differ in size: {sorted(shapes)}")
    return Study(str(folder), "kaggle", np.stack(slices), None, [q.name for _, q in items],
                 notes=["No voxel spacing is stored in this format: volumes are reported in voxels only."])


# --------------------------------------------------------------------------- intensity


def study_to_uint8(vol: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """One scaling for the whole volume (per channel), from robust percentiles of the non-zero voxels."""
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
    return out


# --------------------------------------------------------------------------- NIfTI


def _nifti_slice_to_image(a2: np.ndarray) -> np.ndarray:
    return np.flipud(a2.T)


def _image_to_nifti_slice(im: np.ndarray) -> np.ndarray:
    return np.flipud(im).T


def read_nifti(p: Path) -> Study:
    import nibabel as nib

    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise StudyError(p, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
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
    if data.shape[0] * data.shape[1] > 64_000_000 or data.size > 2_000_000_000:
        raise StudyError(p, f"volume {data.shape} is too large")
    zooms = img.header.get_zooms()
    sx, sy, sz = (float(z) for z in zooms[:3])
    vol8 = study_to_uint8(data)  # X Y Z C
    slices = []
    for k in range(vol8.shape[2]):
        s = np.stack([_nifti_slice_to_image(vol8[:, :, k, c]) for c in range(chans)], -1)
        slices.append(np.repeat(s, 3, -1) if chans == 1 else s)
    st = Study(str(p), "nifti", np.stack(slices), (sz, sy, sx), [f"slice {k + 1}" for k in range(len(slices))],
               single_sequence=chans == 1, affine=img.affine.copy(), nifti_shape=tuple(data.shape[:3]))
    if chans == 1:
        st.notes.append(SINGLE_SEQUENCE_NOTE)
    return st


# --------------------------------------------------------------------------- DICOM


def _zip_members(p: Path) -> list[tuple[str, bytes]]:
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as exc:
        raise StudyError(p, f"not a readable zip file ({exc})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > MAX_ZIP_MEMBERS:
            raise StudyError(p, f"zip holds {len(infos)} files, over the limit of {MAX_ZIP_MEMBERS}")
        total = sum(i.file_size for i in infos)
        if total > MAX_ZIP_BYTES:
            raise StudyError(p, f"zip would expand to {total / 1e9:.1f} GB, over the limit (zip bomb?)")
        out = []
        for i in infos:
            name = i.filename
            if name.startswith("/") or ".." in Path(name).parts or ":" in name:
                raise StudyError(p, f"zip member {name!r} has an unsafe path; refusing the archive")
            if i.compress_size and i.file_size / max(i.compress_size, 1) > 1000:
                raise StudyError(p, f"zip member {name!r} expands more than 1000x (zip bomb?)")
            with zf.open(i) as fh:
                data = fh.read(MAX_ZIP_BYTES + 1)
            if len(data) > i.file_size:
                raise StudyError(p, f"zip member {name!r} is larger than its header says")
            out.append((name, data))
    return out


def read_dicom(members: list[tuple[str, bytes]], source: str, series: str | None = None) -> Study:
    import pydicom

    by_series: dict[str, list] = {}
    for name, data in members:
        if name.startswith("__MACOSX") or Path(name).name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(_io.BytesIO(data), force=False)
        except Exception:
            continue  # not DICOM: README, DICOMDIR oddities, thumbnails
        if "PixelData" not in ds:
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "unknown"))
        ds.filename = name
        by_series.setdefault(uid, []).append(ds)
    if not by_series:
        raise StudyError(source, "no DICOM image with pixel data found")
    if series:
        if series not in by_series:
            raise StudyError(source, f"series {series} not found; series here: {', '.join(sorted(by_series))}")
        dss = by_series[series]
    elif len(by_series) > 1:
        listing = "; ".join(f"{u} ({len(v)} slices, {getattr(v[0], 'SeriesDescription', '')})"
                            for u, v in sorted(by_series.items()))
        raise StudyError(source, f"holds {len(by_series)} series, choose one with --series: {listing}")
    else:
        dss = next(iter(by_series.values()))
    iop = np.array(getattr(dss[0], "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
    normal = np.cross(iop[:3], iop[3:])

    def pos(ds):
        ipp = getattr(ds, "ImagePositionPatient", None)
        if ipp is None:
            return float(getattr(ds, "InstanceNumber", 0))
        return float(np.dot(np.array(ipp, float), normal))

    dss.sort(key=pos)
    try:
        arrs = []
        for ds in dss:
            a = ds.pixel_array.astype(np.float32)
            a = a * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
            arrs.append(a)
    except Exception as exc:
        raise StudyError(source, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise StudyError(source, f"slices of the series differ in size: {sorted(shapes)}")
    vol = np.stack(arrs)
    chans = 3 if vol.ndim == 4 and vol.shape[-1] == 3 else 1
    if chans == 1:
        vol = vol[..., None] if vol.ndim == 3 else vol[..., :1]
    vol8 = study_to_uint8(vol)
    if chans == 1:
        vol8 = np.repeat(vol8, 3, -1)
    ps = [float(x) for x in getattr(dss[0], "PixelSpacing", [1.0, 1.0])]
    if len(dss) > 1:
        dz = abs(pos(dss[1]) - pos(dss[0])) or float(getattr(dss[0], "SliceThickness", 1.0) or 1.0)
    else:
        dz = float(getattr(dss[0], "SliceThickness", 1.0) or 1.0)
    st = Study(source, "dicom", vol8, (dz, ps[0], ps[1]), [str(ds.filename) for ds in dss],
               single_sequence=chans == 1, dicom=dss)
    if chans == 1:
        st.notes.append(SINGLE_SEQUENCE_NOTE)
    return st


def dicom_affine(dss: list) -> np.ndarray:
    """The voxel-to-RAS affine (NIfTI convention) of a sorted DICOM series, array index (col, row, slice)."""
    iop = np.array(dss[0].ImageOrientationPatient, float)
    ps = [float(x) for x in dss[0].PixelSpacing]
    first = np.array(dss[0].ImagePositionPatient, float)
    if len(dss) > 1:
        step = (np.array(dss[-1].ImagePositionPatient, float) - first) / (len(dss) - 1)
    else:
        step = np.cross(iop[:3], iop[3:]) * float(getattr(dss[0], "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * ps[1]  # along columns (x index)
    lps[:3, 1] = iop[3:] * ps[0]  # along rows (y index)
    lps[:3, 2] = step
    lps[:3, 3] = first
    return np.diag([-1, -1, 1, 1]) @ lps  # LPS -> RAS


# --------------------------------------------------------------------------- measurements


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


def study_measurements(mask: np.ndarray, spacing, min_component_mm3: float = 0.0) -> tuple[dict, np.ndarray]:
    """Volume (mL), slices with tumour, largest in-plane diameter (mm); optional 3D component filter."""
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
    diam = max((_max_diameter(m, dy, dx) for m in mask if m.any()), default=0.0)
    lab, ncomp = ndimage.label(mask, structure=np.ones((3, 3, 3), bool)) if voxels else (None, 0)
    meas = {
        "tumour_voxels": voxels,
        "volume_ml": voxels * dz * dy * dx / 1000.0 if spacing else None,
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
        return {"source": self.study.source, "kind": self.study.kind, "threshold": self.threshold,
                **self.measurements, "single_sequence": self.study.single_sequence, "notes": self.study.notes,
                "model": self.model.get("model"), "engine": self.model.get("engine"),
                "disclaimer": self.model.get("disclaimer")}


def mask_to_nifti_array(sp: StudyPrediction) -> np.ndarray:
    """Mask in the input NIfTI's own array layout (X, Y, Z)."""
    m = sp.mask.astype(np.uint8)
    return np.stack([_image_to_nifti_slice(m[k]) for k in range(m.shape[0])], axis=2)


def write_study_outputs(sp: StudyPrediction, out: Path, protect: set | None = None) -> list[Path]:
    """mask volume (NIfTI, plus DICOM-SEG for DICOM input), overlay PNGs per slice, study.json."""
    import nibabel as nib

    from .render import heatmap_overlay

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    st = sp.study
    if st.kind == "nifti":
        arr, affine = mask_to_nifti_array(sp), st.affine
    else:
        arr = np.transpose(sp.mask.astype(np.uint8), (2, 1, 0))  # (col, row, slice)
        if st.kind == "dicom":
            affine = dicom_affine(st.dicom)
        else:
            affine = np.eye(4)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    target = out / "mask.nii.gz"
    atomic_write_bytes(target, img.to_bytes() if not str(target).endswith(".gz") else _gz(img.to_bytes()))
    written.append(target)
    if st.kind == "dicom":
        try:
            target = out / "mask_seg.dcm"
            atomic_write_bytes(target, dicom_seg_bytes(sp))
            written.append(target)
        except Exception as exc:  # DICOM-SEG is a bonus; never lose the other outputs
            st.notes.append(f"DICOM-SEG not written: {type(exc).__name__}: {exc}")
    ov = out / "overlays"
    for k in range(st.n_slices):
        if protect and (ov / f"slice_{k + 1:04d}.png").resolve() in protect:
            continue
        write_png(ov / f"slice_{k + 1:04d}.png", heatmap_overlay(sp.images[k], sp.prob[k]))
    atomic_write_bytes(out / "study.json", (json.dumps(sp.summary(), indent=1) + "\n").encode())
    written.append(out / "study.json")
    return written


def _gz(b: bytes) -> bytes:
    import gzip

    return gzip.compress(b, compresslevel=6, mtime=0)


def dicom_seg_bytes(sp: StudyPrediction) -> bytes:
    """A binary DICOM-SEG (highdicom) referencing the source series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from . import __version__

    dss = sp.study.dicom
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="tumour (FLAIR abnormality)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="tumorseg", version=__version__, family=codes.DCM.ArtificialIntelligence),
    )
    seg = hd.seg.Segmentation(
        source_images=dss, pixel_array=sp.mask.astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="tumorseg", manufacturer_model_name="tumorseg U-Net ResNet50",
        software_versions=__version__, device_serial_number="0", series_description="tumorseg AI mask (research)",
    )
    buf = _io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()
