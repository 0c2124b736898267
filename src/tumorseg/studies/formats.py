"""The one list of study formats, how a study is found among files and named, and ``read_study``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imaging.images import IMAGE_EXTENSIONS
from ..imaging.intensity import standardise_brain_intensity
from .core import Spacing, Study, StudyError, VoxelSize, looks_like_label_map, valid_spacing
from .dicom import read_dicom, zip_members
from .names import DICOM_SUFFIX, find_sequences, is_dicom_file, is_nifti, is_single_dicom, is_slice_image, mostly_images
from .nifti import read_nifti, read_sequences
from .slices import read_slices

_SEQUENCE_SUFFIX = re.compile(
    r"[_\-.](flair|t2f|t2-?flair|t1|t1n|t1ce|t1c|t1gd|t1-?post|t2|t2w|seg|0000|0001|0002|0003)$", re.I
)


_NUMBERED = re.compile(r"^(?P<stem>.+?)[_\-. ]?(?P<n>\d+)$")


def strip_extension(name: str) -> str:
    """A file name without its study or image suffix (the formats' suffixes, ``.dcm``, image suffixes)."""
    known = [x for f in FILE_FORMATS for x in f.suffixes] + [DICOM_SUFFIX, *IMAGE_EXTENSIONS]
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
    if len(cases) == 1 and all(is_nifti(Path(n)) for n in names):
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
    flags = [dicom[i] for i in keep] if dicom is not None else [is_single_dicom(n) or "." not in n for n in names]
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
    if len(files) == 1 and is_nifti(files[0]):
        return False
    flags = [is_dicom_file(q) if i < 400 else is_single_dicom(q.name) for i, q in enumerate(files)]
    return classify_names([q.name for q in files], flags) == "study-files"


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
    members = zip_members(p)
    if mostly_images(members):
        return read_slices(members, str(p))
    return read_dicom(members, str(p), series)


def _claims_sequences(names: list[str], flags: list[bool]) -> bool:
    """One case's per-sequence NIfTIs (other files that are neither images nor DICOM, e.g. a README, are
    let be)."""
    niftis = [Path(n) for n in names if is_nifti(Path(n))]
    others = [n for n, f in zip(names, flags) if not is_nifti(Path(n)) and (f or is_slice_image(n))]
    return len(niftis) > 1 and not others and bool(find_sequences(niftis))


def _claims_dicom(names: list[str], flags: list[bool]) -> bool:
    imgs = [n for n in names if is_slice_image(n)]
    return bool(sum(flags)) and sum(flags) >= len(imgs)


def _claims_slices(names: list[str], flags: list[bool]) -> bool:
    imgs = [n for n in names if is_slice_image(n)]
    stems = [re.match(r"^(.*)_(\d+)$", Path(n).stem) for n in imgs]
    numbered = len(imgs) >= 2 and all(stems) and len({m.group(1) for m in stems}) == 1
    has_masks = any(Path(n).stem.lower().endswith("_mask") for n in names)
    return numbered and (has_masks or len(imgs) >= 3)


def _read_sequence_files(files: list[Path], source: str, series: str | None) -> Study:
    return read_sequences(find_sequences(files), source)


def _read_dicom_files(files: list[Path], source: str, series: str | None) -> Study:
    return read_dicom([(q.name, q.read_bytes()) for q in files if is_dicom_file(q)], source, series)


def _read_slice_files(files: list[Path], source: str, series: str | None) -> Study:
    imgs = [q for q in files if is_slice_image(q.name)]
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


def folder_format_of(names: list[str], flags: list[bool]) -> FolderFormat | None:
    return next((f for f in FOLDER_FORMATS if f.claims(names, flags)), None)


def read_study(path, series: str | None = None, spacing: VoxelSize | tuple | None = None) -> Study:
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
        flags = [is_dicom_file(q) for q in files]
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
    if isinstance(spacing, Spacing):
        raise TypeError("read_study's spacing is the user's ROW,COL,SLICE (a VoxelSize), not a Study's Spacing")
    row, col, sl = valid_spacing(st.source, list(VoxelSize(*spacing)), "--spacing", [])
    if st.spacing is not None:
        st.notes.append(
            f"--spacing {row:g},{col:g},{sl:g} ignored: the file carries its own geometry "
            f"({', '.join(f'{v:g}' for v in st.spacing)} mm slice, row, column)."
        )
        return st
    st.spacing = Spacing.of(VoxelSize(row, col, sl))
    st.affine = np.diag([col, row, sl, 1.0])
    st.notes = [n for n in st.notes if not n.startswith("No voxel spacing")]
    st.notes.append(
        f"Voxel spacing {row:g} x {col:g} mm, slices {sl:g} mm apart, as given by --spacing (the files carry none)."
    )
    return st
