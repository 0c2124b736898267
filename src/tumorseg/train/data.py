"""Datasets: discovery of slice/mask pairs, patient-level splits, preprocessing (numpy; no torch, so the
int8 path never imports it). Patch sampling and augmentation, which need torch, are in ``augment``."""

from __future__ import annotations

import json
import os
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..imaging.files import atomic_write_bytes
from ..imaging.geometry import model_turn, turned
from ..imaging.images import IMAGE_EXTENSIONS, read_image, read_mask, to_uint8_rgb
from ..imaging.intensity import head_depth
from ..model.info import Normalisation
from ..model.preprocess import groups_of, with_context
from ..model.preprocess import model_input as _mi
from ..studies import find_sequences, read_study
from ..studies.reference import read_reference

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalisation(imagenet: bool) -> dict:
    """The input normalisation a model file records (and every engine then applies)."""

    return (Normalisation(IMAGENET_MEAN, IMAGENET_STD) if imagenet else Normalisation()).as_meta()


def model_input(batch_u8: np.ndarray, norm: dict) -> np.ndarray:
    """Kept for callers of the v2 API; ``preprocess.model_input`` is the rule."""

    return _mi(batch_u8, norm)


_MASK_RE = re.compile(r"^(?P<stem>.+)_mask$", re.IGNORECASE)
_SLICE_RE = re.compile(r"^(?P<patient>.+)_(?P<index>\d+)$")


class DatasetError(ValueError):
    """The dataset folder cannot be used; the message says which file/folder and why."""


@dataclass
class SliceRecord:
    patient: str
    index: int
    image: Path
    mask: Path


@dataclass
class Case:
    """One patient: its slices in order along the head axis, or (``study``) a folder of per-sequence NIfTIs
    with a ``_seg`` label file, read as ``tumorseg predict`` reads it."""

    patient: str
    slices: list[SliceRecord] = field(default_factory=list)
    study: Path | None = None  # a NIfTI case folder (BraTS / nnU-Net naming)
    label: Path | None = None  # its label map; whole tumour = label > 0
    source: str = ""  # the --data source it came from
    weight: float = 1.0  # that source's share of the training patches (relative to the other sources')


@dataclass(frozen=True)
class Source:
    """One ``--data`` source: a folder, and the share of training patches drawn from it."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> Source:
        """``PATH`` or ``PATH=WEIGHT`` (a path that exists as written is never split)."""
        if "=" in spec and not Path(spec).exists():
            path, _, w = spec.rpartition("=")
            try:
                weight = float(w)
            except ValueError:
                raise DatasetError(f"--data {spec!r}: the weight after '=' must be a number") from None
            if not weight > 0 or weight != weight or weight == float("inf"):
                raise DatasetError(f"--data {spec!r}: the weight must be a positive number")
            return cls(path, weight)
        return cls(spec)


def sources_of(data: str | Sequence[str]) -> list[Source]:
    """The sources of a training config's ``data`` (one folder, or several ``PATH[=WEIGHT]``)."""
    specs = [data] if isinstance(data, str) else list(data)
    if not specs:
        raise DatasetError("no --data source given")
    return [Source.parse(s) for s in specs]


def discover_sources(data: str | Sequence[str], patient_pattern: str | None = None) -> list[Case]:
    """Every source's cases, each case tagged with its source and weight; patient names must be unique
    across sources (a split names patients)."""
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for src in sources_of(data):
        for c in discover(src.path, patient_pattern):
            if c.patient in seen:
                raise DatasetError(f"{src.path}: patient {c.patient} is also in {seen[c.patient]}")
            seen[c.patient] = src.path
            c.source, c.weight = src.path, src.weight
            cases.append(c)
    return cases


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _pairs_in_folder(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not _is_image(p):
            continue
        m = _MASK_RE.match(p.stem)
        if m:
            masks[m.group("stem")] = p
        else:
            images[p.stem] = p
    return images, masks


def discover(root: str | os.PathLike, patient_pattern: str | None = None) -> list[Case]:
    """Find slice/mask pairs in a kaggle_3m layout or a generic images/ + masks/ layout.

    kaggle_3m: ``<root>/[kaggle_3m/]<patient>/<patient>_<n>.<ext>`` with ``..._<n>_mask.<ext>``.
    Generic: ``<root>/images/<name>.<ext>`` and ``<root>/masks/<name>[_mask].<ext>``; each
    image is its own patient unless ``patient_pattern`` (a regex with a ``patient``
    group, matched against the file stem) groups them.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: is not a folder")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        cases = _discover_generic(root, patient_pattern)
    elif nifti_cases := _discover_nifti_cases(root):
        cases = nifti_cases
    else:
        if (root / "kaggle_3m").is_dir():
            root = root / "kaggle_3m"
        cases = _discover_kaggle(root)
    if not cases:
        raise DatasetError(
            f"{root}: no image/mask pairs found (expected <patient>/<patient>_<n>.tif with "
            "<patient>_<n>_mask.tif, images/ and masks/ folders, or NIfTI case folders "
            "<case>/<case>_flair.nii.gz with <case>_seg.nii.gz)"
        )
    return cases


def _nifti_case(folder: Path, skipped: list[str] | None = None) -> Case | None:
    """A folder of one case's per-sequence NIfTIs (``studies.find_sequences``: BraTS / nnU-Net names) with a
    label file; None when the folder is not such a case (why, appended to ``skipped``). A case without a label
    cannot train: refused."""

    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    try:
        found = find_sequences(files)
    except ValueError as exc:  # StudyError: two files for one sequence
        raise DatasetError(str(exc)) from None
    if "flair" not in found:
        if skipped is not None:
            what = ", ".join(p.name for p in files[:3]) + (" ..." if len(files) > 3 else "") or "no files"
            skipped.append(f"{folder}: skipped, no FLAIR NIfTI named as a case's sequence ({what})")
        return None
    if "label" not in found:
        raise DatasetError(f"{folder}: NIfTI case without a label file (expected {folder.name}_seg.nii.gz)")
    return Case(patient=folder.name, study=folder, label=found["label"])


def _discover_nifti_cases(root: Path) -> list[Case]:
    """NIfTI case folders under ``root`` (or ``root`` itself as one case). Where there are such cases, every other
    folder beside them is said on stderr with the reason it was skipped (a folder without FLAIR, a stray file)."""
    one = _nifti_case(root)
    if one is not None:
        return [one]
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    skipped: list[str] = []
    cases = [c for c in (_nifti_case(f, skipped) for f in folders) if c is not None]
    if cases:
        for line in skipped:
            print(f"tumorseg train: {line}", file=sys.stderr)
    return cases


def _discover_kaggle(root: Path) -> list[Case]:
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    # A single patient folder given directly.
    if not folders and any(_is_image(p) for p in root.iterdir()):
        folders = [root]
    cases = []
    for folder in folders:
        images, masks = _pairs_in_folder(folder)
        if not images and not masks:
            continue
        orphan_masks = sorted(set(masks) - set(images))
        if orphan_masks:
            raise DatasetError(f"{masks[orphan_masks[0]]}: mask without an image")
        case = Case(patient=folder.name)
        for stem, img in images.items():
            if stem not in masks:
                raise DatasetError(f"{img}: image without a mask (expected {stem}_mask{img.suffix})")
            m = _SLICE_RE.match(stem)
            index = int(m.group("index")) if m else 0
            case.slices.append(SliceRecord(folder.name, index, img, masks[stem]))
        case.slices.sort(key=lambda s: (s.index, s.image.name))
        cases.append(case)
    return cases


def _discover_generic(root: Path, patient_pattern: str | None) -> list[Case]:
    images = {p.stem: p for p in sorted((root / "images").iterdir()) if _is_image(p)}
    masks: dict[str, Path] = {}
    for p in sorted((root / "masks").iterdir()):
        if _is_image(p):
            m = _MASK_RE.match(p.stem)
            masks[m.group("stem") if m else p.stem] = p
    pat = re.compile(patient_pattern) if patient_pattern else None
    by_patient: dict[str, Case] = {}
    for stem, img in images.items():
        if stem not in masks:
            raise DatasetError(f"{img}: image without a mask in {root / 'masks'}")
        patient, index = stem, 0
        if pat:
            m = pat.search(stem)
            if not m:
                raise DatasetError(f"{img}: name does not match patient pattern {patient_pattern!r}")
            patient = m.group("patient")
            idx = m.groupdict().get("index")
            index = int(idx) if idx else 0
        case = by_patient.setdefault(patient, Case(patient))
        case.slices.append(SliceRecord(patient, index, img, masks[stem]))
    for c in by_patient.values():
        c.slices.sort(key=lambda s: (s.index, s.image.name))
    return [by_patient[k] for k in sorted(by_patient)]


# --------------------------------------------------------------------------- loading


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return np.asarray(im) >= 128


def flair_only(images: np.ndarray) -> np.ndarray:
    """... x 3 uint8 slices with FLAIR copied into all three channels: how the LGG set stores a
    missing sequence, and what a FLAIR-only collection gives the model."""
    return np.repeat(images[..., 1:2], 3, axis=-1)


@dataclass
class LoadedSet:
    """Slices of several patients held in RAM as uint8, resized to the model input."""

    images: np.ndarray  # N x S x S x 3 uint8
    masks: np.ndarray  # N x S x S bool
    patients: list[str]  # per slice
    indices: list[int]  # per slice
    names: list[str]  # image file per slice
    depth: np.ndarray | None = None  # N x S x S uint8 from head_depth(); for skull-strip augmentation
    sources: list[str] | None = None  # per slice: its --data source (None: one source)
    source_weights: dict[str, float] | None = None  # each source's share of the training patches

    def __len__(self) -> int:
        return len(self.patients)

    def groups(self) -> list[tuple[int, int]]:
        """(start, stop) of each patient's run of slices (``load_cases`` keeps them together, in order)."""

        return groups_of(self.patients)

    def model_channels(self, sel: np.ndarray, context: int, step: int = 1) -> np.ndarray:
        """The selected slices as the model's uint8 channels (with neighbours for a 2.5D model)."""

        return with_context(self.images, context, step, sel, self.groups() if context else None)

    def flair_only(self) -> LoadedSet:
        """The same slices as a FLAIR-only collection delivers them (see ``flair_only``)."""
        return replace(self, images=flair_only(self.images), depth=None)

    def with_head_depth(self) -> LoadedSet:
        """Compute every slice's head depth once, for skull-strip augmentation."""
        if self.depth is None:
            from concurrent.futures import ThreadPoolExecutor

            self.depth = np.zeros(self.masks.shape, np.uint8)
            with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as ex:
                for i, d in enumerate(ex.map(head_depth, self.images)):
                    self.depth[i] = d
        return self


def pad_centred(a: np.ndarray, side: int) -> np.ndarray:
    """``a`` (H x W [x C]) centred on a zero square of at least ``side`` (and at least its larger side), so that a
    brain-cropped study is resized as a full study's field of view is: the brain as small, its aspect kept."""
    h, w = a.shape[:2]
    s = max(side, h, w)
    if (h, w) == (s, s):
        return a
    out = np.zeros((s, s) + a.shape[2:], a.dtype)
    y0, x0 = (s - h) // 2, (s - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = a
    return out


def load_cases(cases: Sequence[Case], size: int, progress: bool = False, pad_studies: int = 0) -> LoadedSet:
    """Read every slice and mask once, checking they fit together. A NIfTI case is read as a study (the
    readers and brain-intensity standardisation of ``tumorseg predict``), its label as the reference;
    ``pad_studies`` > 0 pads its slices with zeros, centred, to that square in-plane size before resizing
    (brain-cropped cases such as brats-train's, about 145 x 180, shown as a 240 x 240 study shows them)."""
    n = sum(len(c.slices) if c.study is None else 0 for c in cases)
    studies = [_read_case_study(c) for c in cases if c.study is not None]
    if pad_studies:
        studies = [(pad_centred_stack(v, pad_studies), pad_centred_stack(m, pad_studies)) for v, m in studies]
    n += sum(len(v) for v, _ in studies)
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), bool)
    patients: list[str] = []
    indices: list[int] = []
    names: list[str] = []
    srcs: list[str] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="reading slices", unit="slice", leave=False)
    i, studies_it = 0, iter(studies)
    for c in cases:
        if c.study is not None:
            vol, lab = next(studies_it)
            for k in range(len(vol)):
                images[i] = resize_rgb(vol[k], size)
                masks[i] = resize_mask(lab[k], size)
                patients.append(c.patient)
                indices.append(k)
                names.append(f"{c.study}#slice{k}")
                srcs.append(c.source)
                i += 1
            if bar is not None:
                bar.update(len(vol))
            continue
        for r in c.slices:
            img = read_image(r.image)
            msk = read_mask(r.mask)
            if img.shape[:2] != msk.shape[:2]:
                raise DatasetError(
                    f"{r.mask}: mask is {msk.shape[1]}x{msk.shape[0]} but its image is {img.shape[1]}x{img.shape[0]}"
                )
            images[i] = resize_rgb(to_uint8_rgb(img), size)
            masks[i] = resize_mask(msk, size)
            patients.append(r.patient)
            indices.append(r.index)
            names.append(str(r.image))
            srcs.append(c.source)
            i += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    weights = {c.source: c.weight for c in cases}
    several = len(weights) > 1 or any(w != 1.0 for w in weights.values())
    return LoadedSet(
        images,
        masks,
        patients,
        indices,
        names,
        sources=srcs if several else None,
        source_weights=weights if several else None,
    )


def pad_centred_stack(stack: np.ndarray, side: int) -> np.ndarray:
    """``pad_centred`` for every slice of a Z x H x W [x C] stack."""
    if not len(stack):
        return stack
    return np.stack([pad_centred(a, side) for a in stack])


def _check_case_files(case: Case) -> None:
    """Refuse what would train silently wrong: non-finite image values (an all-NaN volume reads as black
    images carrying tumour) and negative labels (a -1 tumour would read as no tumour), naming the file."""
    import nibabel as nib

    files = [p for p in sorted(Path(case.study).iterdir()) if p.is_file()]
    for seq, f in find_sequences(files).items():
        try:
            a = np.asanyarray(nib.load(str(f)).dataobj)
        except Exception as exc:
            raise DatasetError(f"{f}: not a readable NIfTI ({type(exc).__name__}: {exc})") from None
        if seq == "label":
            if a.size and np.issubdtype(a.dtype, np.number) and float(np.nanmin(a)) < 0:
                raise DatasetError(
                    f"{f}: label holds negative values (min {float(np.nanmin(a)):g}); labels are 0 or more"
                )
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                raise DatasetError(f"{f}: label holds NaN or infinite values")
        elif np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise DatasetError(f"{f}: {bad} of {a.size} voxels are NaN or infinite; refused for training")


def _read_case_study(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(Z x H x W x 3 uint8 volume, Z x H x W bool whole tumour) of a NIfTI case, as inference reads and turns it:
    ``studies.read_study`` (sequences to the model's channels, FLAIR filling a missing one, brain
    intensity standardised) and the label through ``studies.read_reference`` on the study's grid."""

    _check_case_files(case)
    try:
        st = read_study(case.study)
        lab = read_reference(case.label, st)
    except ValueError as exc:  # StudyError names the file and the reason
        raise DatasetError(str(exc)) from None
    turn = model_turn(st)  # upright, as inference feeds the network
    return np.stack([turned(v, turn) for v in st.volume]), np.stack([turned(m, turn) for m in lab])


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= r * r


def brain_mask(img: np.ndarray, rim_px: int = 10) -> np.ndarray:
    """Head pixels deeper than ``rim_px`` (scalp and skull are about 10 px on the LGG slices)."""
    return head_depth(img) > rim_px


# --------------------------------------------------------------------------- splits


def make_split(
    cases: Sequence[Case],
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    seed: int = 0,
    has_tumour: dict[str, bool] | None = None,
) -> dict[str, list[str]]:
    """Patient-level split, seeded, stratified by whether a patient has any tumour.

    Each part gets at least one patient with tumour when there are enough of them.
    ``has_tumour`` maps patient -> bool; when absent every patient counts as positive.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    patients = sorted({c.patient for c in cases})
    if len(patients) < 3:
        raise DatasetError(f"need at least 3 patients for a train/val/test split, found {len(patients)}")
    ht = has_tumour or {p: True for p in patients}
    if not any(ht.values()):
        raise DatasetError("no tumour in any mask: nothing to learn from")
    rng = random.Random(seed)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for group in (True, False):
        members = [p for p in patients if bool(ht.get(p, False)) == group]
        rng.shuffle(members)
        n = len(members)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if group and n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        n_train = n - n_val - n_test
        if group and n_train < 1:
            raise DatasetError(f"only {n} patients with tumour: too few to split")
        parts["train"] += members[:n_train]
        parts["val"] += members[n_train : n_train + n_val]
        parts["test"] += members[n_train + n_val :]
    for k in parts:
        parts[k].sort()
    return parts


def cv_folds(
    split: dict[str, list[str]], k: int, has_tumour: dict[str, bool] | None = None, seed: int = 0
) -> list[dict[str, list[str]]]:
    """``k`` cross-validation splits over the split's train + val patients; its test patients stay test.

    Each pool patient is validation in exactly one fold. Patients with and without tumour are dealt
    round-robin separately, after a seeded shuffle, so every fold gets its share of each. The folds
    depend on the split file and ``seed`` alone (not on a run's training seed), so the runs of one
    cross-validation, started in any order or on any machine, agree on them.
    """
    pool = sorted(split["train"] + split["val"])
    if k < 2 or k > len(pool):
        raise DatasetError(f"cannot make {k} folds from {len(pool)} train + val patients (2 <= folds <= patients)")
    ht = has_tumour or {p: True for p in pool}
    rng = random.Random(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    dealt = 0
    for group in (True, False):
        members = [p for p in pool if bool(ht.get(p, False)) == group]
        rng.shuffle(members)
        for p in members:  # continue the deal where the last group stopped: fold sizes differ by <= 1
            folds[dealt % k].append(p)
            dealt += 1
    return [
        {
            "train": sorted(p for j, f in enumerate(folds) if j != i for p in f),
            "val": sorted(fold),
            "test": sorted(split["test"]),
        }
        for i, fold in enumerate(folds)
    ]


def fold_split(
    split: dict[str, list[str]], fold: str, has_tumour: dict[str, bool] | None = None
) -> dict[str, list[str]]:
    """The split one run of a cross-validation trains on: ``fold`` is ``i/k`` (fold i of k, from 0) or
    ``all`` (every train + val patient, no validation: the model trained once the recipe is fixed)."""
    if fold == "all":
        return {"train": sorted(split["train"] + split["val"]), "val": [], "test": sorted(split["test"])}
    try:
        i, k = (int(x) for x in fold.split("/"))
    except ValueError:
        raise DatasetError(f"--fold {fold!r}: expected i/k (e.g. 0/5) or all") from None
    if not 0 <= i < k:
        raise DatasetError(f"--fold {fold!r}: fold index must be 0..{k - 1}")
    return cv_folds(split, k, has_tumour)[i]


def save_split(split: dict[str, list[str]], path: str | os.PathLike, meta: dict | None = None) -> None:

    payload = {**(meta or {}), **split}
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read split file ({exc})") from None
    missing = [k for k in ("train", "val", "test") if k not in d]
    if missing:
        raise DatasetError(f"{path}: split file lacks {missing}")
    return {k: list(d[k]) for k in ("train", "val", "test")}


def check_no_leak(split: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for part, pats in split.items():
        for p in pats:
            if p in seen:
                raise DatasetError(f"patient {p} is in both {seen[p]} and {part}")
            seen[p] = part


def patient_has_tumour(cases: Sequence[Case]) -> dict[str, bool]:
    """Which patients have any tumour pixel (reads only the masks)."""
    out = {}
    for c in cases:
        if c.study is not None:
            import nibabel as nib

            try:
                out[c.patient] = bool((np.asanyarray(nib.load(str(c.label)).dataobj) > 0).any())
            except Exception as exc:
                raise DatasetError(f"{c.label}: not a readable NIfTI label ({type(exc).__name__}: {exc})") from None
        else:
            out[c.patient] = any(read_mask(s.mask).any() for s in c.slices)
    return out
