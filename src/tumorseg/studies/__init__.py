"""Whole studies: kaggle_3m patient folders, NIfTI volumes and DICOM series (folder or zip).

A study is read once into a stack of slices with its voxel spacing and geometry, then
mapped with one study-level intensity scaling to the 8-bit RGB the model was trained on.
"""

from __future__ import annotations

import io as _io
import math
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import (
    IMAGE_EXTENSIONS,
    MAX_DECODED_BYTES,
    MAX_STUDY_SLICES,
    ImageReadError,
    check_decoded_size,
    check_model_time,
    check_working_set,
    read_image,
    standardise_brain_intensity,
    to_uint8_rgb,
)

MAX_ZIP_BYTES = MAX_DECODED_BYTES // 2  # refuse zips that would expand beyond this (zip bombs)
MAX_ZIP_MEMBERS = 20_000
MAX_MEMBER_RATIO = 200  # one member's expansion; a real DICOM or image compresses 2-10x
MAX_STUDY_VOXELS = 64_000_000  # voxels x channels, e.g. 512 x 512 x 244
DEFLATED_TS = "1.2.840.10008.1.2.1.99"
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
    frame_order: list[int] | None = None  # multi-frame DICOM: the source frame of each slice
    notes: list[str] = field(default_factory=list)
    sequences: dict | None = None  # model channel -> the file or sequence that filled it
    intensity_gains: list[float] | None = None  # per channel, from standardise_brain_intensity
    pacs: dict | None = None  # where a DICOMweb study came from (url, study and series UIDs, the choice)
    raw_scale: list | None = None  # per channel (lo, hi): the input's units mapped to 0..255 before the gains

    @property
    def n_slices(self) -> int:
        return int(self.volume.shape[0])

    def slice_rgb(self, i: int) -> np.ndarray:
        return self.volume[i]


_SEQUENCE_SUFFIX = re.compile(
    r"[_\-.](flair|t2f|t2-?flair|t1|t1n|t1ce|t1c|t1gd|t1-?post|t2|t2w|seg|0000|0001|0002|0003)$", re.I
)
_NUMBERED = re.compile(r"^(?P<stem>.+?)[_\-. ]?(?P<n>\d+)$")


def strip_extension(name: str) -> str:
    """A file name without its study or image suffix (the formats' suffixes, ``.dcm``, image suffixes)."""
    known = [x for f in FILE_FORMATS for x in f.suffixes] + [".dcm", *IMAGE_EXTENSIONS]
    for suf in sorted(known, key=len, reverse=True):
        if name.lower().endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def study_name(files, folder: str | None = None) -> str:
    """The name a study goes by in the CLI's output folder, on the page and in every download.

    A folder is named after itself; one file after its stem; one case's per-sequence files after the
    case ("Brats18_CBICA_ABM_1_flair.nii.gz" -> "Brats18_CBICA_ABM_1"); numbered slices after the
    patient ("TCGA_CS_6669_20020102_12.tif" -> "TCGA_CS_6669_20020102"); anything else after the
    files' common start, cut at a separator, or "N files". Not made safe for the file system here
    (``batch.output_name`` does that).
    """
    if folder:
        return strip_extension(Path(str(folder).rstrip("/")).name)
    if isinstance(files, dict):  # per-sequence files of one case: named after the case
        return _SEQUENCE_SUFFIX.sub("", strip_extension(Path(files.get("flair") or next(iter(files.values()))).name))
    names = [Path(str(f).replace("\\", "/")).name for f in files]
    stems = [strip_extension(n) for n in names]
    if len(stems) == 1:
        return stems[0]
    cases = {_SEQUENCE_SUFFIX.sub("", x) for x in stems}
    if len(cases) == 1 and all(_is_nifti(Path(n)) for n in names):
        return cases.pop()
    numbered = [_NUMBERED.match(re.sub(r"_mask$", "", x, flags=re.I)) for x in stems]
    if all(numbered) and len({m.group("stem") for m in numbered}) == 1:
        return numbered[0].group("stem")
    import os

    prefix = os.path.commonprefix(stems)
    cut = max(prefix.rfind(c) for c in "_-. ")
    prefix = (prefix[:cut] if cut > 0 and prefix not in stems else prefix).rstrip("_-. ")
    return prefix if len(prefix) >= 3 else f"{len(names)} files"


def classify_names(names: list[str], dicom: list[bool] | None = None) -> str:
    """How a set of chosen files is read: 'study-file' (one file a ``FILE_FORMATS`` entry claims: NIfTI,
    zip), 'study-files' (one study from several files, claimed by a ``FOLDER_FORMATS`` entry: per-sequence
    NIfTIs, a DICOM series, numbered slices of one patient), 'studies' (several study files that are not
    one case's sequences: each is a study) or 'images'.

    The one rule for the CLI's folders and the page's file choices (the page asks /api/classify).
    ``dicom`` flags files known to be DICOM by content; without it, names ending .dcm or with no
    extension count.
    """
    keep = [i for i, n in enumerate(names) if not Path(n).name.startswith(".")]
    names = [Path(names[i]).name for i in keep]
    flags = (
        [dicom[i] for i in keep] if dicom is not None else [n.lower().endswith(".dcm") or "." not in n for n in names]
    )
    if len(names) == 1 and file_format_of(names[0]) is not None:
        return "study-file"
    folder = folder_format_of(names, flags)
    if folder is not None and folder.name == "sequences":
        return "study-files"
    if len(names) > 1 and all(file_format_of(n) is not None for n in names):
        return "studies"
    return "study-files" if folder is not None else "images"


def looks_like_study_folder(p: Path) -> bool:
    """A DICOM series folder, a folder of per-sequence NIfTIs, or one patient's numbered slices
    (``classify_names``). A folder of unrelated images with a stray .dcm among them is not a study."""
    files = [q for q in sorted(p.iterdir()) if q.is_file() and not q.name.startswith(".")]
    if len(files) == 1 and _is_nifti(files[0]):
        return False
    flags = [_is_dicom_file(q) if i < 400 else q.suffix.lower() == ".dcm" for i, q in enumerate(files)]
    return classify_names([q.name for q in files], flags) == "study-files"


def _is_dicom_file(p: Path) -> bool:
    if p.suffix.lower() == ".dcm":
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _is_nifti(p: Path) -> bool:
    n = p.name.lower()
    return n.endswith(".nii") or n.endswith(".nii.gz")


def _nifti_stem(p: Path) -> str:
    n = p.name
    return n[: -len(".nii.gz")] if n.lower().endswith(".nii.gz") else n[: -len(".nii")]


# One home for sequence names: BraTS (2013-2023), common scanner exports and nnU-Net / MSD channel suffixes
# (MSD Task01 BrainTumour order: 0000 FLAIR, 0001 T1w, 0002 T1gd, 0003 T2w).
_SEQUENCE_RULES = (
    (re.compile(r"(^|[_\-.])(t1c|t1ce|t1gd|t1-?contrast|t1post|t1\+c|post)$"), "t1c"),
    (re.compile(r"(^|[_\-.])(t1|t1w|t1n|pre)$"), "t1"),
    (re.compile(r"(^|[_\-.])(flair|t2f|t2-?flair)$"), "flair"),
    (re.compile(r"(^|[_\-.])(t2|t2w)$"), "t2"),
    (re.compile(r"(^|[_\-.])(seg|mask|label|labels)$"), "label"),
    (re.compile(r"_0000$"), "flair"),
    (re.compile(r"_0001$"), "t1"),
    (re.compile(r"_0002$"), "t1c"),
    (re.compile(r"_0003$"), "t2"),
)
MODEL_CHANNELS = ("t1", "flair", "t1c")  # pre-contrast, FLAIR, post-contrast: the LGG order


def sequence_of(path) -> str | None:
    """'t1', 't1c', 'flair', 't2', 'label' or None, from a NIfTI file's name."""
    stem = _nifti_stem(Path(path)).lower()
    for rx, seq in _SEQUENCE_RULES:
        if rx.search(stem):
            return seq
    return None


_SERIES_RULES = (  # on the words of SeriesDescription + ProtocolName (lower case, split on non-alphanumerics)
    ("flair", re.compile(r"\b(flair|t2f|tirm|dark ?fluid|t2 ?flair)\b")),
    ("t1c", re.compile(r"\b(t1c|t1ce|t1gd|t1\+c|post|postcontrast|post contrast|gd|gad|gado|contrast|c\+|\+c|ce)\b")),
    ("t1", re.compile(r"\b(t1|t1w|t1n|mprage|spgr|bravo|vibe|t1 ?se|t1 ?fse|pre)\b")),
    ("t2", re.compile(r"\b(t2|t2w)\b")),
)
_T1_LIKE = re.compile(r"\b(t1|t1w|t1c|t1ce|t1gd|mprage|spgr|bravo|vibe)\b")


def sequence_of_series(description: str, protocol: str = "") -> tuple[str | None, str]:
    """('flair' | 't1' | 't1c' | 't2' | None, why) from a DICOM series' description and protocol name:
    the DICOM counterpart of ``sequence_of`` for file names. Contrast words count for T1 only when the
    series also looks T1-weighted (a 'post' FLAIR is still a FLAIR)."""
    text = " ".join(x for x in (description, protocol) if x).lower()
    text = re.sub(r"[^a-z0-9+]+", " ", text)
    for seq, rx in _SERIES_RULES:
        m = rx.search(text)
        if not m:
            continue
        if seq == "t1c" and not _T1_LIKE.search(text):
            continue
        return seq, f"{seq}: {m.group(0)!r} in {text.strip()!r}"
    return None, f"no sequence recognised in {text.strip()!r}"


def find_sequences(files) -> dict[str, Path]:
    """The per-sequence NIfTI files among ``files`` (one case), or {} when they are not such a set."""
    found: dict[str, Path] = {}
    for f in files:
        f = Path(f)
        if not _is_nifti(f):
            continue
        seq = sequence_of(f)
        if seq is None:
            return {}
        if seq in found and seq != "label":
            raise StudyError(f.parent, f"two files for sequence {seq}: {found[seq].name} and {f.name}")
        found[seq] = f
    return found if "flair" in found or len([k for k in found if k != "label"]) > 1 else {}


# --------------------------------------------------------------------------- the formats


@dataclass(frozen=True)
class FileFormat:
    """A study held in one file, known by its suffix."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path, str | None], Study]  # (path, DICOM series UID or None)


@dataclass(frozen=True)
class FolderFormat:
    """A study spread over several files (a folder, or files chosen together), known by their names
    (and, for DICOM, by content flags)."""

    name: str
    claims: Callable[[list[str], list[bool]], bool]
    read: Callable[[list[Path], str, str | None], Study]  # (files, source name, series UID or None)


def _read_zip(p: Path, series: str | None) -> Study:
    members = _zip_members(p)
    if _mostly_images(members):
        return read_slices(members, str(p))
    return read_dicom(members, str(p), series)


def _claims_sequences(names: list[str], flags: list[bool]) -> bool:
    """One case's per-sequence NIfTIs (other files that are neither images nor DICOM, e.g. a README, are
    let be)."""
    niftis = [Path(n) for n in names if _is_nifti(Path(n))]
    others = [n for n, f in zip(names, flags) if not _is_nifti(Path(n)) and (f or _is_slice_image(n))]
    return len(niftis) > 1 and not others and bool(find_sequences(niftis))


def _claims_dicom(names: list[str], flags: list[bool]) -> bool:
    imgs = [n for n in names if _is_slice_image(n)]
    return bool(sum(flags)) and sum(flags) >= len(imgs)


def _claims_slices(names: list[str], flags: list[bool]) -> bool:
    imgs = [n for n in names if _is_slice_image(n)]
    stems = [re.match(r"^(.*)_(\d+)$", Path(n).stem) for n in imgs]
    numbered = len(imgs) >= 2 and all(stems) and len({m.group(1) for m in stems}) == 1
    has_masks = any(Path(n).stem.lower().endswith("_mask") for n in names)
    return numbered and (has_masks or len(imgs) >= 3)


def _read_sequence_files(files: list[Path], source: str, series: str | None) -> Study:
    return read_sequences(find_sequences(files), source)


def _read_dicom_files(files: list[Path], source: str, series: str | None) -> Study:
    return read_dicom([(q.name, q.read_bytes()) for q in files if _is_dicom_file(q)], source, series)


def _read_slice_files(files: list[Path], source: str, series: str | None) -> Study:
    imgs = [q for q in files if _is_slice_image(q.name)]
    st = read_slices([(q.name, q) for q in imgs], source)
    others = len(files) - len(imgs) - sum(q.stem.lower().endswith("_mask") for q in files)
    if others:
        st.notes.append(f"{others} other file(s) in the folder were not slices and were ignored.")
    return st


# The one list of study formats: the CLI's input expansion, /api/classify (the page), read_study and
# output naming all ask these. A new format is an entry here and its reader.
FILE_FORMATS: tuple[FileFormat, ...] = (
    FileFormat("nifti", (".nii", ".nii.gz"), lambda p, series: read_nifti(p)),
    FileFormat("zip", (".zip",), _read_zip),
)
FOLDER_FORMATS: tuple[FolderFormat, ...] = (  # first claim wins
    FolderFormat("sequences", _claims_sequences, _read_sequence_files),
    FolderFormat("dicom", _claims_dicom, _read_dicom_files),
    FolderFormat("slices", _claims_slices, _read_slice_files),
)


def file_format_of(name: str) -> FileFormat | None:
    n = str(name).lower()
    return next((f for f in FILE_FORMATS if n.endswith(f.suffixes)), None)


def study_file_suffixes() -> str:
    """The suffixes of a study held in one file, for messages: ".nii, .nii.gz, .zip"."""
    return ", ".join(x for f in FILE_FORMATS for x in f.suffixes)


def is_single_dicom(name: str) -> bool:
    """A lone ``.dcm``: one slice of a DICOM series, a study only together with the rest of it."""
    return str(name).lower().endswith(".dcm")


def folder_format_of(names: list[str], flags: list[bool]) -> FolderFormat | None:
    return next((f for f in FOLDER_FORMATS if f.claims(names, flags)), None)


def read_study(path, series: str | None = None, spacing: tuple[float, float, float] | None = None) -> Study:
    """Read any study source the project knows; each front end asks here (``FILE_FORMATS``, ``FOLDER_FORMATS``).

    ``path``: a NIfTI file; a folder of per-sequence NIfTIs (BraTS / nnU-Net naming) or a dict
    {'t1'|'flair'|'t1c': path}; a DICOM folder or zip; a patient folder or zip of numbered slices.
    ``spacing`` (row, column, slice mm) gives stacks of 2D slices their geometry.
    """
    if isinstance(path, dict):
        return _with_spacing(read_sequences(path), spacing)
    p = Path(path)
    if not p.exists():
        raise StudyError(p, "not found")
    fmt = file_format_of(p.name) if p.is_file() else None
    if fmt is not None:
        return _with_spacing(fmt.read(p, series), spacing)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        flags = [_is_dicom_file(q) for q in files]
        folder = folder_format_of([q.name for q in files], flags)
        if folder is None or folder.name == "slices":  # a folder read as a study at all is read as slices
            folder = FOLDER_FORMATS[-1]
        return _with_spacing(folder.read(files, str(p), series), spacing)
    raise StudyError(p, "not a study (expected a NIfTI file, a DICOM folder or .zip, or a patient folder)")


def is_study_source(p: Path) -> bool:
    """Whether ``p`` is read as one study (rather than as separate 2D images)."""
    if p.is_file():
        return file_format_of(p.name) is not None
    if p.is_dir():
        return looks_like_study_folder(p)
    return False


def _is_slice_image(name: str) -> bool:
    q = Path(name)
    return q.suffix.lower() in IMAGE_EXTENSIONS and not q.stem.lower().endswith("_mask") and not q.name.startswith(".")


def _mostly_images(members: list[tuple[str, bytes]]) -> bool:
    members = [(n, d) for n, d in members if not n.startswith("__MACOSX") and not Path(n).name.startswith(".")]
    imgs = [n for n, _ in members if _is_slice_image(n)]
    return bool(imgs) and len(imgs) >= len(members) // 2


def looks_like_label_map(volume: np.ndarray) -> bool:
    """Few distinct values, mostly zero: a segmentation (BraTS ``_seg``: 0, 1, 2, 4), not an image."""
    counts = np.bincount(volume[..., 1].ravel(), minlength=256)
    return int((counts > 0).sum()) <= 6 and counts[0] > 0.5 * volume[..., 1].size


def reference_from_slice_masks(like: Study, members: list[tuple[str, bytes]]) -> np.ndarray:
    """A slice stack's reference from its own ``<slice>_mask`` images (as the LGG folders ship them):
    Z x H x W bool in the study's slice order; a slice without a mask file is refused by name."""
    from ..io import read_mask

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


def _with_spacing(st: Study, spacing) -> Study:
    """The last step of every read: scanner-independent intensities, then the user's --spacing."""
    if looks_like_label_map(st.volume):
        st.notes.append(
            "This looks like a label map (a segmentation with a few integer values), not an MRI: the model's "
            "answer on it means nothing. Open it as the reference to compare with instead."
        )
    if st.kind in ("nifti", "dicom") and st.intensity_gains is None:
        st.volume, gains = standardise_brain_intensity(st.volume)
        st.intensity_gains = gains
        st.notes.append(
            "Intensities standardised: each channel scaled by "
            + ", ".join(f"{g:.2f}" for g in gains)
            + " so that its brain median matches the training data's."
        )
    if spacing is None:
        return st
    row, col, sl = _valid_spacing(st.source, list(spacing), "--spacing", [])
    if st.spacing is not None:
        st.notes.append(
            f"--spacing {row:g},{col:g},{sl:g} ignored: the file carries its own geometry "
            f"({', '.join(f'{v:g}' for v in st.spacing)} mm slice, row, column)."
        )
        return st
    st.spacing = (sl, row, col)
    st.affine = np.diag([col, row, sl, 1.0])
    st.notes = [n for n in st.notes if not n.startswith("No voxel spacing")]
    st.notes.append(
        f"Voxel spacing {row:g} x {col:g} mm, slices {sl:g} mm apart, as given by --spacing (the files carry none)."
    )
    return st


# --------------------------------------------------------------------------- kaggle folder


def read_slices(items: list[tuple[str, object]], source: str) -> Study:
    """A stack of numbered 2D slices (``<name>_<n>.<ext>``, masks skipped), from paths or bytes."""
    rows = []
    for name, src in items:
        if not _is_slice_image(name):
            continue
        m = re.search(r"_(\d+)$", Path(name).stem)
        rows.append((int(m.group(1)) if m else 0, Path(name).name, src))
    if not rows:
        raise StudyError(source, "holds no image slices")
    if len(rows) > MAX_STUDY_SLICES:
        raise StudyError(source, f"holds {len(rows):,} slices, over the limit of {MAX_STUDY_SLICES:,}")
    rows.sort(key=lambda r: (r[0], r[1]))
    slices = []
    for _, name, src in rows:
        arr = read_image(src) if isinstance(src, Path) else read_image(f"{source}/{name}", data=src)
        slices.append(to_uint8_rgb(arr))
        if slices[0].shape != slices[-1].shape:
            raise StudyError(source, f"slices differ in size: {slices[0].shape} and {slices[-1].shape} ({name})")
    try:
        got = sum(s.stat().st_size if isinstance(s, Path) else len(s) for _, _, s in rows)
        check_model_time(source, len(slices), slices[0].shape[0], slices[0].shape[1], got, "slice stack")
    except ImageReadError as exc:
        raise StudyError(source, exc.reason) from None
    return Study(
        source,
        "kaggle",
        np.stack(slices),
        None,
        [name for _, name, _ in rows],
        notes=[
            "No voxel spacing is stored in this format: volumes are reported in voxels only "
            "(give --spacing ROW,COL,SLICE in mm)."
        ],
    )


# --------------------------------------------------------------------------- intensity


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


# --------------------------------------------------------------------------- geometry


def parse_spacing(text: str) -> tuple[float, float, float]:
    """ "ROW,COL,SLICE" in mm (the CLI's --spacing and a manifest's spacing column); ValueError says why."""
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r}: expected three numbers ROW,COL,SLICE in mm") from None
    lo, hi = SPACING_RANGE_MM
    if len(vals) != 3 or not all(lo <= v <= hi for v in vals):
        raise ValueError(f"{text!r}: expected three values between {lo:g} and {hi:g} mm")
    return vals


def _valid_spacing(source, values, what: str, notes: list[str]) -> list[float]:
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


# --------------------------------------------------------------------------- NIfTI


def _nifti_slice_to_image(a2: np.ndarray) -> np.ndarray:
    return np.flipud(a2.T)


def _image_to_nifti_slice(im: np.ndarray) -> np.ndarray:
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
    zooms = _valid_spacing(p, raw[: len(shape)] if len(shape) < 3 else raw, "NIfTI pixdim", notes)
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
        vol = np.stack([_nifti_slice_to_image(raw[:, :, k]) for k in range(raw.shape[2])])
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
        s = np.stack([_nifti_slice_to_image(vol8[:, :, k, c]) for c in range(chans)], -1)
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
    if p.is_file() and _is_nifti(p):
        return read_nifti(p, scale=False)
    if p.is_file() and p.name.lower().endswith(".zip"):
        return read_dicom(_zip_members(p), str(p), scale=False)
    if p.is_dir():
        dcm = sorted(q for q in p.iterdir() if q.is_file() and _is_dicom_file(q))
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
                notes.append(
                    f"Slice positions are unevenly spaced ({steps.min():.2f} to {steps.max():.2f} mm); "
                    f"the median {dz:.2f} mm was used."
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
    _valid_spacing(source, ps, "PixelSpacing", notes)
    ps = [abs(x) for x in ps]
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


# --------------------------------------------------------------------------- reference masks


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
        if not _is_nifti(Path(name)):
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
            return np.stack([_nifti_slice_to_image(arr[:, :, k]) for k in range(arr.shape[2])])
        return np.transpose(arr, (2, 1, 0))
    from ..io import read_mask

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


# --------------------------------------------------------------------------- orientation


def orientation_labels(st: Study) -> dict | None:
    """Labels for the held slice's edges {left, right, top, bottom} (before the viewer turns it), from
    ``display.display_affine``, the one geometry rule; None where the input has none (2D images, slice
    stacks)."""
    if st.affine is None or st.kind not in ("nifti", "dicom"):
        return None
    from ..display import axis_label, display_affine

    a = display_affine(st)[0][:3, :3]
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
            "notes": self.study.notes,
            **({"pacs": self.study.pacs} if self.study.pacs else {}),
            "model": self.model.get("model"),
            "engine": self.model.get("engine"),
            "disclaimer": self.model.get("disclaimer"),
        }


# measurement and output writing live in their own modules; their names stay importable from here
from .measure import _max_diameter, study_measurements  # noqa: E402,F401
from .outputs import (  # noqa: E402,F401
    LOCAL_CODES,
    TYPE2_COPIED,
    dicom_seg_bytes,
    dicom_seg_dataset,
    dicom_sr_dataset,
    mask_nifti_gz_bytes,
    mask_to_nifti_array,
    study_exports,
    with_type2_attributes,
    write_study_outputs,
)
