"""What a file is, by its name (and a DICOM file by its first bytes), and which sequence it holds."""

from __future__ import annotations

import re
from pathlib import Path

from ..imaging.images import IMAGE_EXTENSIONS
from .core import StudyError

DICOM_SUFFIX = ".dcm"


def is_single_dicom(name: str) -> bool:
    """A ``.dcm`` name: one slice of a DICOM series, a study only together with the rest of it."""
    return str(name).lower().endswith(DICOM_SUFFIX)


def is_dicom_file(p: Path) -> bool:
    """By name, else by the DICM magic after the 128-byte preamble."""
    if is_single_dicom(p.name):
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def is_nifti(p: Path) -> bool:
    n = p.name.lower()
    return n.endswith(".nii") or n.endswith(".nii.gz")


def _nifti_stem(p: Path) -> str:
    n = p.name
    return n[: -len(".nii.gz")] if n.lower().endswith(".nii.gz") else n[: -len(".nii")]


def is_slice_image(name: str) -> bool:
    q = Path(name)
    return q.suffix.lower() in IMAGE_EXTENSIONS and not q.stem.lower().endswith("_mask") and not q.name.startswith(".")


def mostly_images(members: list[tuple[str, bytes]]) -> bool:
    members = [(n, d) for n, d in members if not n.startswith("__MACOSX") and not Path(n).name.startswith(".")]
    imgs = [n for n, _ in members if is_slice_image(n)]
    return bool(imgs) and len(imgs) >= len(members) // 2


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
        if not is_nifti(f):
            continue
        seq = sequence_of(f)
        if seq is None:
            return {}
        if seq in found and seq != "label":
            raise StudyError(f.parent, f"two files for sequence {seq}: {found[seq].name} and {f.name}")
        found[seq] = f
    return found if "flair" in found or len([k for k in found if k != "label"]) > 1 else {}
