"""DICOM series (single- and multi-frame, folder or zip) and zip archives, judged from their headers
before any pixel is decoded."""

from __future__ import annotations

import io as _io
import zipfile
import zlib
from datetime import date
from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ..imaging.limits import MAX_DECODED_BYTES, check_decoded_size, check_model_time, check_working_set
from .core import (
    MAX_STUDY_VOXELS,
    SINGLE_SEQUENCE_NOTE,
    SPACING_RANGE_MM,
    STUDY_BYTES_PER_VOXEL,
    Study,
    StudyError,
    study_to_uint8,
    valid_spacing,
)

MAX_ZIP_BYTES = MAX_DECODED_BYTES // 2  # refuse zips that would expand beyond this (zip bombs)


MAX_ZIP_MEMBERS = 20_000


MAX_MEMBER_RATIO = 200  # one member's expansion; a real DICOM or image compresses 2-10x


DEFLATED_TS = "1.2.840.10008.1.2.1.99"


def zip_members(p: Path) -> list[tuple[str, bytes]]:
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
            raise StudyError(
                p,
                f"zip would expand to {total / 2**20:,.0f} MB, over the limit of "
                f"{MAX_ZIP_BYTES / 2**20:,.0f} MB (zip bomb?)",
            )
        try:
            check_decoded_size(p, total, p.stat().st_size, "zip archive")
        except ImageReadError as exc:
            raise StudyError(p, exc.reason) from None
        out = []
        for i in infos:
            name = i.filename
            if name.startswith("/") or ".." in Path(name).parts or ":" in name:
                raise StudyError(p, f"zip member {name!r} has an unsafe path; refusing the archive")
            if i.compress_size and i.file_size > 1_000_000 and i.file_size / max(i.compress_size, 1) > MAX_MEMBER_RATIO:
                raise StudyError(p, f"zip member {name!r} expands more than {MAX_MEMBER_RATIO}x (zip bomb?)")
            try:
                with zf.open(i) as fh:
                    data = fh.read(i.file_size + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
                raise StudyError(
                    p, f"zip member {name!r} is corrupt or unreadable ({type(exc).__name__}: {exc})"
                ) from None
            if len(data) > i.file_size:
                raise StudyError(p, f"zip member {name!r} is larger than its header says")
            out.append((name, data))
    return out


def _inflated_size(data: bytes, limit: int) -> int | None:
    """Size of a deflated-transfer-syntax DICOM once inflated, counted only up to ``limit``.

    pydicom inflates such a file whole while parsing it; a 1 kB file can hold 100s of MB of zeros.
    Returns None for any other transfer syntax.
    """
    if DEFLATED_TS.encode() not in data[:8192]:
        return None
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = _io.BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    if str(getattr(meta, "TransferSyntaxUID", "")) != DEFLATED_TS:
        return None
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    buf, total = data[fp.tell() :], 0
    while buf and not d.eof:
        try:
            out = d.decompress(buf, 1 << 20)
        except zlib.error:
            return total  # corrupt stream: pydicom will refuse the file itself
        total += len(out)
        if total > limit:
            return total
        if not out and d.unconsumed_tail == buf:
            break  # no progress (truncated stream)
        buf = d.unconsumed_tail
    return total


def _declared_pixel_bytes(ds) -> int:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    bits = int(getattr(ds, "BitsAllocated", 16) or 16)
    return int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1) or 1) * frames * max(1, bits // 8)


def _floats(ds, tag: str, n: int, source: str) -> list[float] | None:
    """A multi-valued DICOM attribute as n finite floats; None when absent; StudyError when malformed."""
    v = getattr(ds, tag, None)
    if v is None or v == "":
        return None
    seq = list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]
    try:
        vals = [float(x) for x in seq]
    except (TypeError, ValueError):
        raise StudyError(source, f"{tag} {v!r} is not numeric") from None
    if len(vals) != n or not all(np.isfinite(vals)):
        raise StudyError(source, f"{tag} has {len(vals)} value(s) {vals}; expected {n} finite numbers")
    return vals


def _dicom_series(members: list[tuple[str, bytes]], source: str, series: str | None) -> tuple[list, int]:
    """The chosen series' datasets (pixel data not decoded yet), and the bytes received for them all."""
    import pydicom

    by_series: dict[str, list] = {}
    input_bytes = sum(len(d) for _, d in members)
    inflated_total = 0
    for name, data in members:
        if name.startswith("__MACOSX") or Path(name).name.startswith("."):
            continue
        try:
            inflated = _inflated_size(data, MAX_ZIP_BYTES - inflated_total)
        except Exception:
            continue  # not DICOM
        if inflated is not None:
            inflated_total += inflated
            try:
                check_decoded_size(source, inflated_total, input_bytes, f"deflated DICOM ({name})")
            except ImageReadError as exc:
                raise StudyError(source, exc.reason) from None
            if inflated_total > MAX_ZIP_BYTES:
                raise StudyError(source, f"{name}: deflated DICOM inflates beyond {MAX_ZIP_BYTES / 2**20:,.0f} MB")
        try:
            ds = pydicom.dcmread(_io.BytesIO(data), force=False)
        except Exception:
            continue  # not DICOM: README, DICOMDIR oddities, thumbnails
        if "PixelData" not in ds:
            continue
        ds.filename = name
        by_series.setdefault(str(getattr(ds, "SeriesInstanceUID", "unknown")), []).append(ds)
    if not by_series:
        raise StudyError(source, "no DICOM image with pixel data found")
    if series:
        if series not in by_series:
            raise StudyError(source, f"series {series} not found; series here: {', '.join(sorted(by_series))}")
        return by_series[series], input_bytes
    if len(by_series) > 1:
        listing = "; ".join(
            f"{u} ({len(v)} slices, {getattr(v[0], 'SeriesDescription', '')})" for u, v in sorted(by_series.items())
        )
        raise StudyError(source, f"holds {len(by_series)} series, choose one with --series: {listing}")
    return next(iter(by_series.values())), input_bytes


def _check_series_budget(dss: list, source: str, input_bytes: int) -> None:
    """Size, working memory and model time, judged from the headers before any pixel is decoded."""
    try:
        raw = sum(_declared_pixel_bytes(ds) for ds in dss)
        voxels = sum(int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in dss)
    except (AttributeError, TypeError, ValueError) as exc:
        raise StudyError(source, f"DICOM header lacks a usable image size ({type(exc).__name__}: {exc})") from None
    if voxels * 3 > MAX_STUDY_VOXELS:
        raise StudyError(source, f"series has {voxels:,} voxels, over the limit of {MAX_STUDY_VOXELS // 3:,}")
    n_slices = sum(int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in dss)
    try:
        check_decoded_size(source, raw, input_bytes, "DICOM series")
        check_working_set(source, voxels * STUDY_BYTES_PER_VOXEL, input_bytes, "DICOM series")
        check_model_time(source, n_slices, int(dss[0].Rows), int(dss[0].Columns), input_bytes, "DICOM series")
    except ImageReadError as exc:
        raise StudyError(source, exc.reason) from None


def _series_slices(dss: list, source: str, notes: list[str]) -> tuple[np.ndarray, dict, list[int] | None, list[str]]:
    """The series' slices in anatomical order (rescaled, float32), its geometry, the source frame of each
    slice for a multi-frame image (else None), and the slices' names."""
    frame_order = None
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in dss):
        if len(dss) != 1:
            raise StudyError(
                source,
                f"the series holds {len(dss)} images of which some are multi-frame; expected one multi-frame image",
            )
        frames = _frames_of(dss[0], source, notes)
        geom = _dicom_geometry(frames, source, notes)
        frame_order = [f.index for f in frames]
    else:
        geom = _dicom_geometry(dss, source, notes)
    try:
        if frame_order is not None:
            pix = dss[0].pixel_array
            arrs = [pix[f.index].astype(np.float32) * f.slope + f.intercept for f in frames]
        else:
            arrs = [
                ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1)
                + float(getattr(ds, "RescaleIntercept", 0) or 0)
                for ds in dss
            ]
    except Exception as exc:
        raise StudyError(source, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise StudyError(source, f"slices of the series differ in size: {sorted(shapes)}")
    names = [str(ds.filename) for ds in dss] if frame_order is None else [f"frame {i + 1}" for i in frame_order]
    return np.stack(arrs), geom, frame_order, names


def read_dicom(members: list[tuple[str, bytes]], source: str, series: str | None = None, scale: bool = True) -> Study:
    """A DICOM series (single- or multi-frame); ``scale=False`` keeps the raw intensities (float32,
    Z x H x W) for ``read_sequences``."""
    dss, input_bytes = _dicom_series(members, source, series)
    _check_series_budget(dss, source, input_bytes)
    notes: list[str] = []
    vol, geom, frame_order, names = _series_slices(dss, source, notes)
    chans = 3 if vol.ndim == 4 and vol.shape[-1] == 3 else 1
    raw_scale: list = []
    if not scale:
        if chans != 1:
            raise StudyError(source, "expected one grey-level sequence per series, found colour (RGB) images")
    else:
        if chans == 1:
            vol = vol[..., None] if vol.ndim == 3 else vol[..., :1]
        vol = study_to_uint8(vol, scales=raw_scale)
        if chans == 1:
            vol = np.repeat(vol, 3, -1)
            raw_scale *= 3
            notes.append(SINGLE_SEQUENCE_NOTE)
    return Study(
        source,
        "dicom",
        vol,
        geom["spacing"],
        names,
        single_sequence=scale and chans == 1,
        dicom=dss,
        affine=geom["affine"],
        notes=notes,
        frame_order=frame_order,
        raw_scale=raw_scale if scale else None,
    )


class _Frame:
    """One frame of a multi-frame DICOM image, with the attributes ``_dicom_geometry`` reads of a slice."""

    def __init__(self, index: int, attrs: dict, slope: float, intercept: float):
        self.index, self.slope, self.intercept = index, slope, intercept
        self.InstanceNumber = index + 1
        for k, v in attrs.items():
            setattr(self, k, v)


def _frames_of(ds, source: str, notes: list[str]) -> list[_Frame]:
    """Per-frame geometry of an Enhanced (or legacy converted) multi-frame image from its functional groups.

    Per-frame groups win over shared ones, shared over the top level. A legacy multi-frame image without
    functional groups has no per-frame positions: its frames are taken in stored order (noted).
    """
    n = int(ds.NumberOfFrames)
    shared = (getattr(ds, "SharedFunctionalGroupsSequence", None) or [None])[0]
    per = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
    if per and len(per) != n:
        raise StudyError(source, f"multi-frame image declares {n} frames but has {len(per)} per-frame groups")

    def find(group_item, seq: str, tag: str):
        if group_item is None:
            return None
        items = getattr(group_item, seq, None)
        return getattr(items[0], tag, None) if items else None

    def attr(i: int, seq: str, tag: str):
        for g in (per[i] if per else None, shared):
            v = find(g, seq, tag)
            if v is not None:
                return v
        return getattr(ds, tag, None)

    frames = []
    for i in range(n):
        attrs = {
            "ImageOrientationPatient": attr(i, "PlaneOrientationSequence", "ImageOrientationPatient"),
            "ImagePositionPatient": attr(i, "PlanePositionSequence", "ImagePositionPatient") if per else None,
            "PixelSpacing": attr(i, "PixelMeasuresSequence", "PixelSpacing"),
            "SliceThickness": attr(i, "PixelMeasuresSequence", "SliceThickness"),
            "SpacingBetweenSlices": attr(i, "PixelMeasuresSequence", "SpacingBetweenSlices"),
        }
        slope = attr(i, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = attr(i, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(_Frame(i, attrs, float(slope or 1), float(intercept or 0)))
    if not per:
        notes.append(f"Multi-frame image without per-frame functional groups: its {n} frames taken in stored order.")
    else:
        notes.append(f"One multi-frame image of {n} frames, placed by their per-frame positions.")
    return frames


def _slice_axis(dss: list, ipps: list, normal: np.ndarray, have: int, source: str, notes: list[str]):
    """Sort ``dss`` in place along the slice normal; (slice spacing, step vector, origin), every fallback noted."""

    def thickness() -> float | None:
        for tag in ("SpacingBetweenSlices", "SliceThickness"):
            v = getattr(dss[0], tag, None)
            try:
                f = float(v) if v not in (None, "") else None
            except (TypeError, ValueError):
                f = None
            if f is not None and np.isfinite(f) and SPACING_RANGE_MM[0] <= abs(f) <= SPACING_RANGE_MM[1]:
                return abs(f)
        return None

    if have:
        order = sorted(range(len(dss)), key=lambda i: float(np.dot(ipps[i], normal)))
        dss[:] = [dss[i] for i in order]
        ipps = [ipps[i] for i in order]
        proj = np.array([np.dot(p, normal) for p in ipps])
        steps = np.diff(proj)
        if len(dss) > 1 and np.all(steps > 1e-3):
            dz = float(np.median(steps))
            if steps.max() - steps.min() > 0.1 * dz:
                k = int(np.argmax(np.abs(steps - dz)))
                raise StudyError(
                    source,
                    f"slice positions are unevenly spaced ({steps.min():.2f} to {steps.max():.2f} mm apart; "
                    f"{steps[k]:.2f} mm between slices {k + 1} and {k + 2}"
                    + (", a slice seems to be missing" if steps[k] > 1.5 * dz else "")
                    + "): a volume on one grid would misplace slices and misstate the volume; refused (send the "
                    "complete series)",
                )
            step = (np.array(ipps[-1]) - np.array(ipps[0])) / (len(dss) - 1)
        else:
            t = thickness()
            if len(dss) > 1:
                raise StudyError(
                    source,
                    "two or more slices share one ImagePositionPatient; the series is not one stack of distinct slices",
                )
            dz = t or 1.0
            if t is None:
                notes.append("One slice without SliceThickness: 1 mm slice thickness assumed.")
            step = normal * dz
        origin = np.array(ipps[0])
    else:
        if not all(getattr(ds, "InstanceNumber", None) is not None for ds in dss):
            raise StudyError(
                source, "slices have neither ImagePositionPatient nor InstanceNumber; their order is unknown"
            )
        dss.sort(key=lambda ds: int(ds.InstanceNumber))
        t = thickness()
        dz = t or 1.0
        notes.append(
            "No ImagePositionPatient: slices ordered by InstanceNumber, slice spacing "
            + (f"{dz:g} mm from SpacingBetweenSlices/SliceThickness" if t else "1 mm assumed")
            + "; the position in the scanner is unknown."
        )
        step = normal * dz
        origin = np.zeros(3)
    return dz, step, origin


def _check_one_grid(dss: list, iop: list[float], ps: list[float], source: str) -> None:
    """Every slice in the first slice's orientation and pixel spacing, or the series is refused with the reason:
    one volume measured with one slice's spacing, or slices of another orientation stacked as if parallel, would
    give a wrong number with no sign of it."""
    for k, ds in enumerate(dss[1:], start=2):
        who = Path(str(getattr(ds, "filename", None) or f"image {k}")).name
        o = _floats(ds, "ImageOrientationPatient", 6, source)
        if o is not None and not np.allclose(o, iop, atol=1e-3):
            plane = _plane(o)
            raise StudyError(
                source,
                f"{who} lies in another orientation ({plane}, ImageOrientationPatient {[round(x, 3) for x in o]}) "
                f"than another ({_plane(iop)}): the series is not one stack of parallel slices; refused (load the "
                "blocks as separate series)",
            )
        p = _floats(ds, "PixelSpacing", 2, source)
        if p is not None and not np.allclose(np.abs(p), ps, rtol=1e-3, atol=1e-4):
            raise StudyError(
                source,
                f"{who} declares PixelSpacing {list(p)} mm where another declares {ps}: the slices are not on one "
                "grid, and a volume measured with either spacing would be wrong; refused",
            )


def _plane(iop) -> str:
    """'axial', 'coronal', 'sagittal' or 'oblique', from the slice normal's largest component."""
    n = np.abs(np.cross(np.array(iop[:3], float), np.array(iop[3:], float)))
    if n.max() < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[int(np.argmax(n))]


def _dicom_geometry(dss: list, source: str, notes: list[str]) -> dict:
    """Sort the series along its normal and derive spacing and affine; every fallback becomes a note.

    Order: ImagePositionPatient projected on the slice normal; when no slice has it, InstanceNumber.
    Slice spacing: from the positions; else SpacingBetweenSlices; else SliceThickness; else 1 mm (noted).
    Geometry that is malformed (wrong number of values, zero or non-finite spacing, some slices with
    positions and some without) is refused, never guessed.
    """
    iop = _floats(dss[0], "ImageOrientationPatient", 6, source)
    if iop is None:
        iop = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        notes.append("No ImageOrientationPatient: axial orientation assumed; orientation labels are unreliable.")
    r, c = np.array(iop[:3]), np.array(iop[3:])
    if not (0.9 < np.linalg.norm(r) < 1.1 and 0.9 < np.linalg.norm(c) < 1.1 and abs(np.dot(r, c)) < 0.1):
        raise StudyError(source, f"ImageOrientationPatient {iop} is not two orthogonal unit vectors")
    normal = np.cross(r, c)
    ps = _floats(dss[0], "PixelSpacing", 2, source)
    if ps is None:
        ps = [1.0, 1.0]
        notes.append("No PixelSpacing: 1 mm pixels assumed; areas and volumes are in assumed units.")
    valid_spacing(source, ps, "PixelSpacing", notes)
    ps = [abs(x) for x in ps]
    _check_one_grid(dss, iop, ps, source)
    ipps = [_floats(ds, "ImagePositionPatient", 3, source) for ds in dss]
    have = sum(p is not None for p in ipps)
    if 0 < have < len(dss):
        raise StudyError(
            source,
            f"{len(dss) - have} of {len(dss)} slices lack ImagePositionPatient; the slice order cannot be trusted",
        )

    dz, step, origin = _slice_axis(dss, ipps, normal, have, source, notes)
    lps = np.eye(4)
    lps[:3, 0] = r * ps[1]  # along columns (x index)
    lps[:3, 1] = c * ps[0]  # along rows (y index)
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return {"spacing": (abs(dz), ps[0], ps[1]), "affine": np.diag([-1, -1, 1, 1]) @ lps}  # LPS -> RAS


def parse_dicom_date(v) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None when empty or not a real date (20241399): dates are compared
    as dates, never as strings."""
    v = str(v or "").strip()
    if len(v) != 8 or not v.isdigit():
        return None
    try:
        return date(int(v[:4]), int(v[4:6]), int(v[6:]))
    except ValueError:
        return None
