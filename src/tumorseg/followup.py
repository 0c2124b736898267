"""Follow-up: two studies of one patient, what changed in mL and where (issue 39, the core).

The follow-up is registered rigidly onto the baseline with SimpleITK (the field's registration library:
Mattes mutual information, multi-resolution, on FLAIR inside the brain), so the change map lives in baseline
space; each time point is segmented and measured in its own space (no resampling bias in its volume). The
numbers: volumes, largest diameters, the RANO-style bidimensional product, absolute and relative change,
days between and growth per month, new and resolved tumour, and a RANO-style wording marked as a suggestion.
Why SimpleITK and not itk-elastix: one wheel on PyPI for every platform, a rigid registration needs nothing
elastix adds, and its Euler transform maps points exactly for the quality figures.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes
from .geometry import display_affine, display_turn, turned, voxel_ml
from .images import write_png
from .render import heatmap_overlay
from .studies import Study, read_study
from .studies.dicom import parse_dicom_date
from .studies.outputs import dicom_seg_dataset, dicom_sr_dataset, label_nifti_gz_bytes

# A registration is trusted when the two brain masks overlap at least this much after it (Dice): the same
# brain imaged twice overlaps at 0.95+ once aligned (tests: 0.97-0.99 under 10 degree / 15 mm moves); a failed
# registration leaves it far lower. Below it the numbers are still given, flagged everywhere.
QUALITY_MIN_BRAIN_DICE = 0.85
# Brain masks are nearly symmetric and alike between people, so their overlap cannot tell a mirrored follow-up or
# another patient's brain from the same brain. What can: the correlation of the two FLAIRs inside the baseline's
# brain once registered (the same brain: high; another brain: its folds and ventricles differ) and a mirror test
# (registering the follow-up flipped left-right fits clearly better: a flip is suspected). Levels calibrated on
# brats-dev / brats-train pairs (research/followup/gate.py, docs/followup.md).
QUALITY_MIN_CORRELATION = 0.75
MIRROR_MARGIN = 0.05  # mirrored fit's correlation this much above the fit as given: a left-right flip suspected
MAX_INTERVAL_DAYS = 36500
# RANO-style thresholds on the bidimensional product (Wen et al., JCO 2010): a suggestion, never a diagnosis.
PROGRESSION = 0.25  # >= +25 %
PARTIAL_RESPONSE = -0.50  # <= -50 %
DAYS_PER_MONTH = 30.4375


class FollowUpError(ValueError):
    """Two studies that cannot be compared (another patient, no brain to register): the message says why."""


@dataclass
class Registration:
    transform: object  # SimpleITK transform: baseline (fixed) physical points -> follow-up (moving) points
    metric: float  # final Mattes mutual information (lower is better)
    brain_dice: float  # the two brain masks' overlap after registration
    rotation_deg: float
    translation_mm: list[float]
    correlation: float = 1.0  # the two FLAIRs' correlation inside the baseline's brain after registration
    mirrored_correlation: float | None = None  # the same for the follow-up flipped left-right and registered

    @property
    def mirror_suspected(self) -> bool:
        """The follow-up flipped left-right fits as one brain fits itself, and clearly better than as given."""
        m = self.mirrored_correlation
        return m is not None and m >= QUALITY_MIN_CORRELATION and m > self.correlation + MIRROR_MARGIN

    @property
    def trusted(self) -> bool:
        return (
            self.brain_dice >= QUALITY_MIN_BRAIN_DICE
            and self.correlation >= QUALITY_MIN_CORRELATION
            and not self.mirror_suspected
        )

    def why_not_trusted(self) -> list[str]:
        """Each failed check in words (empty when trusted)."""
        out = []
        if self.brain_dice < QUALITY_MIN_BRAIN_DICE:
            out.append(f"brain overlap {self.brain_dice:.3f} < {QUALITY_MIN_BRAIN_DICE}")
        if self.correlation < QUALITY_MIN_CORRELATION:
            out.append(
                f"FLAIR correlation inside the brain {self.correlation:.3f} < {QUALITY_MIN_CORRELATION} (another "
                "brain, another sequence, or a failed registration)"
            )
        if self.mirror_suspected:
            out.append(
                f"the follow-up flipped left-right fits clearly better (correlation {self.mirrored_correlation:.3f} "
                f"vs {self.correlation:.3f}): a left-right flip of one study is suspected"
            )
        return out


@dataclass
class FollowUp:
    baseline: object  # StudyPrediction
    followup: object  # StudyPrediction
    registration: Registration
    change: np.ndarray  # baseline grid, Z x H x W uint8: 0 none, 1 unchanged, 2 new, 3 resolved
    summary: dict = field(default_factory=dict)


def _sitk_image(st, vol: np.ndarray):
    """A study's (slice, row, column) volume as a SimpleITK image in LPS physical space (display_affine: RAS)."""
    import SimpleITK as sitk

    a, _ = display_affine(st)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ a
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol))
    img.SetSpacing([float(x) for x in spacing])
    img.SetDirection([float(x) for x in (lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(x) for x in lps[:3, 3]])
    return img


def brain_mask(st) -> np.ndarray:
    """The head's voxels on FLAIR (skull-stripped studies: the brain), the largest 3D component."""
    from scipy import ndimage

    flair = st.volume[..., 1]
    m = flair > max(8, np.percentile(flair[flair > 0], 5) if (flair > 0).any() else 8)
    m = ndimage.binary_opening(m, iterations=1)
    lab, n = ndimage.label(m)
    if n == 0:
        raise FollowUpError(f"{st.source}: no brain found on FLAIR to register")
    keep = np.argmax(np.bincount(lab.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(lab == keep)


def _left_right_axis(img) -> int:
    """The image index axis (SimpleITK order: column, row, slice) closest to the patient's left-right axis."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    return int(np.argmax(np.abs(d[0])))  # row 0 of the direction matrix: each index axis's L component (LPS)


def _flipped(img, axis: int):
    """The image's voxels mirrored along an index axis, its header kept (a left-right flip of the anatomy)."""
    import SimpleITK as sitk

    flip = [False, False, False]
    flip[axis] = True
    out = sitk.Flip(img, flip)
    out.CopyInformation(img)
    return out


def _correlation(fixed, moving, tx, fmask) -> float:
    """Pearson correlation of the fixed image and the moving one resampled through ``tx``, inside ``fmask``."""
    import SimpleITK as sitk

    f = sitk.GetArrayViewFromImage(fixed)
    m = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0))
    inside = sitk.GetArrayViewFromImage(fmask).astype(bool)
    a, b = f[inside].astype(np.float64), m[inside].astype(np.float64)
    if a.size < 10 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def register(fixed_st, moving_st, mirror_test: bool = True) -> Registration:
    """Rigid registration of the moving study onto the fixed one, on FLAIR inside the brain, with the checks
    that say whether it can be trusted (brain overlap, FLAIR correlation, and the mirror test)."""
    import SimpleITK as sitk

    fixed = sitk.Cast(_sitk_image(fixed_st, fixed_st.volume[..., 1]), sitk.sitkFloat32)
    moving = sitk.Cast(_sitk_image(moving_st, moving_st.volume[..., 1]), sitk.sitkFloat32)
    fmask = _sitk_image(fixed_st, brain_mask(fixed_st).astype(np.uint8))
    mmask = _sitk_image(moving_st, brain_mask(moving_st).astype(np.uint8))
    tx, metric = _rigid(fixed, moving, fmask, moving_st, fixed_st)
    moved_mask = sitk.GetArrayFromImage(sitk.Resample(mmask, fmask, tx, sitk.sitkNearestNeighbor, 0)).astype(bool)
    fm = sitk.GetArrayFromImage(fmask).astype(bool)
    dice = 2 * float((moved_mask & fm).sum()) / max(1, int(moved_mask.sum() + fm.sum()))
    corr = _correlation(fixed, moving, tx, fmask)
    mirrored = None
    if mirror_test:
        flipped = _flipped(moving, _left_right_axis(moving))
        try:
            ftx, _ = _rigid(fixed, flipped, fmask, moving_st, fixed_st, levels=2)
            mirrored = _correlation(fixed, flipped, ftx, fmask)
        except FollowUpError:
            mirrored = None
    euler = _as_euler(tx)
    rot = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(np.array(euler.GetMatrix()).reshape(3, 3)) - 1) / 2))))
    return Registration(tx, metric, dice, rot, [float(x) for x in euler.GetTranslation()], corr, mirrored)


def _rigid(fixed, moving, fmask, moving_st, fixed_st, levels: int = 3):
    """(transform, final metric) of SimpleITK's rigid registration of ``moving`` onto ``fixed`` (Mattes MI inside
    the fixed brain; ``levels`` of the 4-2-1 pyramid, coarsest first: 2 stops at half resolution)."""
    import SimpleITK as sitk

    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # every voxel of a small study (a sample of few voxels lets it drift), 15 % of a large one; a fixed seed:
    # 0 would mean the wall clock, and the same two studies would get a different answer each run
    reg.SetMetricSamplingPercentage(0.15 if fixed.GetNumberOfPixels() > 2_000_000 else 1.0, seed=39)
    reg.SetMetricFixedMask(fmask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=200, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    # three levels where the smallest side keeps >= 16 voxels at the coarsest (4x); fewer for small volumes
    small = min(min(fixed.GetSize()), min(moving.GetSize()))
    shrink = [4, 2, 1] if small >= 64 else [2, 1] if small >= 32 else [1]
    sigmas = [2.0, 1.0, 0.0][-len(shrink) :]
    if levels < len(shrink) and len(shrink) > 1:
        shrink, sigmas = shrink[: max(1, levels)], sigmas[: max(1, levels)]
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    try:
        tx = reg.Execute(fixed, moving)
    except RuntimeError as exc:
        why = str(exc).strip().splitlines()[-1][:200]
        raise FollowUpError(f"{moving_st.source} could not be registered onto {fixed_st.source} ({why})") from None
    return tx, float(reg.GetMetricValue())


def _as_euler(tx):
    import SimpleITK as sitk

    t = tx
    while isinstance(t, sitk.CompositeTransform) or t.GetName() == "CompositeTransform":
        t = sitk.CompositeTransform(t).GetNthTransform(0)
    return sitk.Euler3DTransform(t)


def _resample(grid_st, src_st, vol: np.ndarray, tx, nearest: bool) -> np.ndarray:
    """``vol`` (on ``src_st``'s grid) on ``grid_st``'s grid, ``tx`` mapping grid points to ``src_st`` points: nearest
    neighbour for masks and labels, linear for images. The one resampling every follow-up view and space uses."""
    import SimpleITK as sitk

    out = sitk.Resample(
        _sitk_image(src_st, vol),
        _sitk_image(grid_st, np.zeros(grid_st.volume.shape[:3], np.uint8)),
        tx,
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        0,
    )
    return sitk.GetArrayFromImage(out)


def on_baseline(reg: Registration, fixed_st, moving_st, vol: np.ndarray, nearest: bool) -> np.ndarray:
    """A follow-up volume (its own grid) on the baseline's grid through the registration: a mask (nearest
    neighbour) for the change map, or an image (linear) for showing the two side by side."""
    return _resample(fixed_st, moving_st, vol, reg.transform, nearest)


def bidimensional(mask: np.ndarray, spacing) -> dict:
    """RANO-style: on the slice of largest area, the longest in-plane diameter and the longest extent
    perpendicular to it (mm), and their product (mm²). Zeros for an empty mask."""
    if spacing is None or not mask.any():
        return {"slice": None, "longest_mm": 0.0, "perpendicular_mm": 0.0, "product_mm2": 0.0}
    areas = mask.reshape(mask.shape[0], -1).sum(1)
    k = int(np.argmax(areas))
    ys, xs = np.nonzero(mask[k])
    pts = np.stack([ys * spacing[1], xs * spacing[2]], 1).astype(float)
    if len(pts) > 1:
        from scipy.spatial import ConvexHull, QhullError

        try:
            hull = pts[ConvexHull(pts).vertices]
        except (QhullError, ValueError):
            hull = pts
    else:
        hull = pts
    d = np.linalg.norm(hull[:, None] - hull[None], axis=-1)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    longest = float(d[i, j]) + min(spacing[1], spacing[2])  # pixel centres to edges
    axis = (hull[j] - hull[i]) / max(1e-9, np.linalg.norm(hull[j] - hull[i]))
    perp = np.array([-axis[1], axis[0]])
    proj = pts @ perp
    width = float(proj.max() - proj.min()) + min(spacing[1], spacing[2])
    return {"slice": k + 1, "longest_mm": longest, "perpendicular_mm": width, "product_mm2": longest * width}


def _raw_date(st) -> tuple[str, str] | None:
    """(tag, value) of the first date tag a DICOM study fills (StudyDate, else AcquisitionDate, SeriesDate)."""
    for ds in (st.dicom or [])[:1]:
        for tag in ("StudyDate", "AcquisitionDate", "SeriesDate"):
            v = str(getattr(ds, tag, "") or "").strip()
            if v:
                return tag, v
    return None


def study_date(st) -> date | None:
    """StudyDate (else AcquisitionDate) of a DICOM study; None where the files carry none (NIfTI) or it is no date."""
    raw = _raw_date(st)
    return parse_dicom_date(raw[1]) if raw else None


def date_notes(sts: list, dates: list, interval_days: float | None) -> list[str]:
    """What a reader must know about the two dates: one that is not a date, one in the future, only one side dated
    (give --interval), or --interval given beside real dates (the dates win)."""
    notes = []
    for st, d in zip(sts, dates):
        raw = _raw_date(st)
        if raw and d is None:
            notes.append(f"{st.source}: {raw[0]} {raw[1]!r} is not a valid date; it was ignored.")
        if d is not None and d > date.today():
            notes.append(f"{st.source}: dated {d.isoformat()}, in the future; check the study's date.")
    if dates[0] and dates[1]:
        if interval_days is not None:
            notes.append(
                f"--interval {interval_days:g} was ignored: the studies' dates give {(dates[1] - dates[0]).days} days."
            )
    elif (dates[0] or dates[1]) and interval_days is None:
        notes.append("Only one study carries a date: no growth per month (give --interval DAYS).")
    return notes


def patient_of(st) -> str | None:
    for ds in (st.dicom or [])[:1]:
        return str(getattr(ds, "PatientID", "") or "") or None
    return None


def rano_wording(rel: float | None, before: float, after: float, band: dict | None = None) -> str:
    """The change of the bidimensional product in RANO-style words, marked as a suggestion; "stable" whenever the
    volume change lies within the model's repeatability (``band``), since such a change may be the model's own."""
    if before == 0 and after == 0:
        return "no measurable tumour at either time point (suggestion, not a diagnosis)"
    if before == 0:
        return "new measurable tumour: progression suspected (suggestion, not a diagnosis)"
    if after == 0:
        return "no measurable tumour left: complete response suggested (suggestion, not a diagnosis)"
    if band is not None and band.get("volume_change_within"):
        return (
            f"product {100 * rel:+.0f} %, but the volume change lies within the model's repeatability "
            f"(±{band['abs_volume_change_pct']:.0f} % of the volume): stable (suggestion, not a diagnosis)"
        )
    if rel >= PROGRESSION:
        return f"product up {100 * rel:+.0f} % (>= +25 %): progression suspected (suggestion, not a diagnosis)"
    if rel <= PARTIAL_RESPONSE:
        return f"product down {100 * rel:+.0f} % (<= -50 %): partial response suggested (suggestion, not a diagnosis)"
    return f"product {100 * rel:+.0f} % (between -50 % and +25 %): stable (suggestion, not a diagnosis)"


def check_interval(days: float | None) -> float | None:
    """The days between two studies as a user gives them (CLI ``--interval``, REST ``interval``): a finite number
    of days in (0, 36500], or None; anything else is refused in one line."""
    if days is None:
        return None
    try:
        v = float(days)
    except (TypeError, ValueError):
        raise FollowUpError(f"interval {days!r}: not a number of days") from None
    if not math.isfinite(v) or not 0 < v <= MAX_INTERVAL_DAYS:
        raise FollowUpError(f"interval {days}: must be a number of days between 0 and {MAX_INTERVAL_DAYS}")
    return v


def _same_file(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() and Path(a).exists()
    except (OSError, TypeError):
        return False


def check_out(out, inputs) -> Path:
    """The output folder, refused where an output could replace an input or land inside one: ``out`` inside (or
    equal to) an input folder, or the folder an input file lies in (change.nii.gz, followup.json, ... could be an
    input's name). Checked writable here, before any work, without making it. ``inputs``: paths (others are
    skipped)."""
    out_p = Path(out)
    out_r = out_p.resolve()
    for src in inputs:
        if not isinstance(src, (str, os.PathLike)) or "://" in str(src):
            continue
        p = Path(src).resolve()
        if p.is_dir() and (out_r == p or p in out_r.parents):
            raise FollowUpError(f"--out {out}: lies inside the input {src}; choose a folder outside the inputs")
        if p.is_file() and out_r == p.parent:
            raise FollowUpError(
                f"--out {out}: is the folder of the input {src}; choose another so no input is replaced"
            )
    if out_p.exists() and not out_p.is_dir():
        raise FollowUpError(f"--out {out}: exists and is not a folder")
    # writable? checked without making anything (a refused comparison leaves no empty folder behind): the
    # folder itself where it exists, else the nearest existing folder above it
    probe = out_p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise FollowUpError(f"--out {out}: cannot be written ({probe} is not a writable folder)")
    return out_p


CHANNEL_NAMES = ("pre-contrast", "FLAIR", "post-contrast")


def sequences_present(st) -> frozenset[int]:
    """The model channels a study fills with a sequence of its own (FLAIR always; a channel identical to FLAIR
    is a copy standing in for a missing sequence)."""
    v = st.volume
    if st.single_sequence:
        return frozenset({1})
    return frozenset({1} | {c for c in (0, 2) if not np.array_equal(v[..., c], v[..., 1])})


def on_shared_sequences(sts: list) -> tuple[list, str | None]:
    """Both studies restricted to the sequences they share (the others replaced by FLAIR, as a FLAIR-only study
    is fed), so that a change is not made by the input; the note saying so, or None when the sets are equal."""
    from dataclasses import replace

    sets = [sequences_present(s) for s in sts]
    if sets[0] == sets[1]:
        return sts, None
    shared = sets[0] & sets[1]
    out = []
    for st in sts:
        vol = st.volume.copy()
        for c in (0, 2):
            if c not in shared:
                vol[..., c] = vol[..., 1]
        out.append(replace(st, volume=vol, single_sequence=shared == {1}))

    def names(x):
        return ", ".join(CHANNEL_NAMES[c] for c in sorted(x))

    note = (
        f"The two time points were read from different sequences (baseline: {names(sets[0])}; follow-up: "
        f"{names(sets[1])}): both were segmented on the sequences they share ({names(shared)}), so the change is "
        "not made by the input; each volume is the one those sequences give."
    )
    return out, note


def _voxel_ml(st) -> float | None:
    return voxel_ml(st.spacing) if st.spacing else None


def _in_order(sts: list, force: bool) -> tuple[list, list, list[str]]:
    """The two studies checked to be one patient's (refused unless forced) and put in date order: the
    studies, their dates and the notes saying what was assumed or swapped."""
    notes: list[str] = []
    pids = [patient_of(s) for s in sts]
    if pids[0] and pids[1] and pids[0] != pids[1]:
        if not force:
            raise FollowUpError(
                f"{sts[0].source} and {sts[1].source} belong to different patients (PatientID differs); refused "
                "(--force compares them anyway)"
            )
        notes.append("The two studies belong to different patients (PatientID differs): compared because forced.")
    elif not (pids[0] and pids[1]):
        notes.append("The files carry no PatientID (NIfTI or slices): that both are one patient's is the user's word.")
    dates = [study_date(s) for s in sts]
    if dates[0] and dates[1] and dates[0] > dates[1]:
        sts, dates = sts[::-1], dates[::-1]
        notes.append("The baseline was later than the follow-up: the two were swapped.")
    return sts, dates, notes


# Where the change between two time points is measured (issue 47; research/followup/one_space.md decides):
# own: each study segmented in its own space, the follow-up's mask moved onto the baseline (the first release);
# baseline: the follow-up's images resampled onto the baseline's grid and segmented there;
# halfway: both studies resampled halfway between them (Reuter & Fischl 2011), neither favoured.
SPACES = ("own", "baseline", "halfway")
SPACE = "own"  # what the pre-registered rule chose (research/followup/one_space.md)
FLIPS = False  # averaged left-right test-time flips for the segmentations the change is measured on
# The model's repeatability for the chosen method: 95th percentiles over unchanged tumours (each study against
# itself moved rigidly; research/followup/one_space.json). None: not measured for this method.
REPEATABILITY: dict | None = {
    "space": "own",
    "flips": False,
    "abs_volume_change_pct": 11.8,  # |volume change| / baseline volume, 95th percentile (the "within" test)
    "abs_volume_change_ml": 7.0,  # the same in mL (tumours of 30-180 mL), recorded
    "new_ml": 10.8,
    "resolved_ml": 7.0,
    "pairs": 11,
    "model": "v5 (bundled), int8",
    "how": "95th percentiles over 11 unchanged tumours (brats-dev and two held-out brats-train FLAIRs against "
    "themselves moved 5 and 2 degrees and 6/-4/2 voxels, three of them as 5 mm slices), the bundled v5 on the int8 "
    "engine: research/followup/band_v5.json (the space chosen with v2: research/followup/one_space.json)",
}


def repeatability(space: str, flips: bool, v_base: float, change_ml: float, new_ml: float, resolved_ml: float):
    """The band beside the numbers, and whether each number lies inside it (None where the method has no band)."""
    band = REPEATABILITY
    if band is None or (band["space"], band["flips"]) != (space, flips):
        return None
    rel = abs(change_ml) / v_base * 100 if v_base else None
    return {  # the volume change is judged relative to the volume (the noise grows with the tumour), new/resolved in mL
        **band,
        "volume_change_within": bool(rel is not None and rel <= band["abs_volume_change_pct"]),
        "new_within": bool(new_ml <= band["new_ml"]),
        "resolved_within": bool(resolved_ml <= band["resolved_ml"]),
    }


def half_transform(reg: Registration):
    """H with H(H(x)) = T(x) for the rigid T (baseline points -> follow-up points): the halfway space's map to the
    follow-up (and H^-1 to the baseline)."""
    import SimpleITK as sitk
    from scipy.spatial.transform import Rotation

    e = _as_euler(reg.transform)
    r = np.array(e.GetMatrix()).reshape(3, 3)
    c, t = np.array(e.GetCenter()), np.array(e.GetTranslation())
    offset = c + t - r @ c  # T(x) = R x + offset
    r_half = Rotation.from_rotvec(Rotation.from_matrix(r).as_rotvec() / 2).as_matrix()
    h = sitk.AffineTransform(3)
    h.SetMatrix([float(x) for x in r_half.ravel()])
    h.SetTranslation([float(x) for x in np.linalg.solve(r_half + np.eye(3), offset)])
    return h


def _resample_study(grid_st, src_st, tx):
    """``src_st``'s three channels (linear) on ``grid_st``'s grid, ``tx`` mapping grid points to ``src_st`` points:
    a Study with the grid's geometry (so it is fed to the model as the grid study is)."""
    from dataclasses import replace

    chans = [_resample(grid_st, src_st, src_st.volume[..., ch], tx, False) for ch in range(src_st.volume.shape[-1])]
    vol = np.clip(np.rint(np.stack(chans, -1)), 0, 255).astype(np.uint8)
    return replace(grid_st, volume=vol, source=src_st.source, notes=[], single_sequence=src_st.single_sequence)


def change_masks(pred, sts, sps, reg, space: str, flips: bool, counted) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(baseline mask, follow-up mask, baseline-grid -> measuring-grid transform or None) in the space the change is
    measured in: both masks on one grid, the one the numbers are counted on."""
    if space not in SPACES:
        raise ValueError(f"unknown follow-up space {space!r}; one of {', '.join(SPACES)}")

    def seg(st, offset, own=None):
        if own is not None and not flips:
            return own.mask
        return pred.predict_study(st, tta=flips, on_progress=counted(offset)).mask

    n0, n1 = sts[0].n_slices, sts[1].n_slices
    if space == "own":
        base = seg(sts[0], n0 + n1, sps[0])
        fu = seg(sts[1], n0 + n1 + n0, sps[1])
        return base, on_baseline(reg, sts[0], sts[1], fu.astype(np.uint8), nearest=True).astype(bool), None
    if space == "baseline":
        base = seg(sts[0], n0 + n1 + n0, sps[0])
        return base, seg(_resample_study(sts[0], sts[1], reg.transform), n0 + n1), None
    h = half_transform(reg)
    b_half = _resample_study(sts[0], sts[0], h.GetInverse())
    f_half = _resample_study(sts[0], sts[1], h)
    return seg(b_half, n0 + n1), seg(f_half, n0 + n1 + n0), h


def compare(
    pred,
    baseline,
    followup,
    interval_days: float | None = None,
    force: bool = False,
    on_progress=None,
    space: str | None = None,
    flips: bool | None = None,
) -> FollowUp:
    """Segment two studies of one patient (paths or Studies) and say what changed: the one function the CLI,
    REST and the page call. Each time point's own volume and diameters come from its own space; the change, new
    and resolved from one space for both (``space``, ``flips``: the module's choice by default), so the model's
    errors fall alike on both. ``interval_days`` where the files carry no dates; ``on_progress(done, total)``
    counts every slice segmented (a job's progress bar)."""
    space = SPACE if space is None else space
    flips = FLIPS if flips is None else flips
    interval_days = check_interval(interval_days)
    sts = [s if isinstance(s, Study) else read_study(s) for s in (baseline, followup)]
    sts, dates, notes = _in_order(sts, force)
    if _same_file(sts[0].source, sts[1].source):
        notes.append("The same file was given as both time points: nothing can have changed but the model's noise.")
    sts, seq_note = on_shared_sequences(sts)
    if seq_note:
        notes.append(seq_note)
    days = (dates[1] - dates[0]).days if dates[0] and dates[1] else interval_days
    notes += date_notes(sts, dates, interval_days)
    if any(s.spacing is None for s in sts):
        raise FollowUpError("a study without a voxel size cannot be registered or measured in mL (give --spacing)")
    n0, n1 = sts[0].n_slices, sts[1].n_slices
    extra = {"own": (n0 + n1) if flips else 0, "baseline": n0 * (2 if flips else 1), "halfway": 2 * n0}.get(space, 0)
    total = n0 + n1 + extra

    def counted(offset: int):
        return None if on_progress is None else (lambda done, _n: on_progress(offset + done, total))

    sps = [pred.predict_study(sts[0], on_progress=counted(0)), pred.predict_study(sts[1], on_progress=counted(n0))]
    reg = register(sts[0], sts[1])
    if not reg.trusted:
        notes.append(
            f"Registration not trusted ({'; '.join(reg.why_not_trusted())}): the change map and new/resolved "
            "volumes are unreliable; volumes and diameters of each study stand on their own."
        )
    base, fu, to_space = change_masks(pred, sts, sps, reg, space, flips, counted)
    change = np.zeros(base.shape, np.uint8)
    change[base & fu] = 1
    change[~base & fu] = 2
    change[base & ~fu] = 3
    vml = _voxel_ml(sts[0])
    bis = [bidimensional(sp.mask, st.spacing) for sp, st in zip(sps, sts)]
    if space == "own" and not flips:  # the first release: each volume and product in its own space
        v_base, v_fu = (float(sp.measurements.get("volume_ml") or 0.0) for sp in sps)
        common = bis
    else:
        v_base, v_fu = float(base.sum() * vml), float(fu.sum() * vml)
        common = [bidimensional(m, sts[0].spacing) for m in (base, fu)]
    rel_prod = (
        (common[1]["product_mm2"] - common[0]["product_mm2"]) / common[0]["product_mm2"]
        if common[0]["product_mm2"]
        else None
    )
    counts = {k: float((change == v).sum() * vml) for k, v in (("new", 2), ("resolved", 3), ("unchanged", 1))}
    if (
        to_space is not None
    ):  # halfway: baseline point b lies at H(b) there; the change map is shown on the baseline grid
        change = _resample(sts[0], sts[0], change, to_space, nearest=True).astype(np.uint8)
    measured = {"space": space, "flips": flips, "volume_ml": {"baseline": v_base, "followup": v_fu}}
    summary = _summary(sps, bis, dates, days, (v_base, v_fu), rel_prod, common, counts, measured, reg, notes)
    return FollowUp(sps[0], sps[1], reg, change, summary)


def _summary(sps, bis, dates, days, vols, rel_prod, common, counts, measured, reg, notes) -> dict:
    """followup.json's numbers (the CLI, REST, the page and the SR all read these)."""
    v_base, v_fu = vols
    band = repeatability(measured["space"], measured["flips"], v_base, v_fu - v_base, counts["new"], counts["resolved"])
    return {
        "baseline": _point(sps[0], bis[0], dates[0]),
        "followup": _point(sps[1], bis[1], dates[1]),
        "days_between": days,
        "volume_change_ml": v_fu - v_base,
        "volume_change_relative": (v_fu - v_base) / v_base if v_base else None,
        "growth_ml_per_month": (v_fu - v_base) / (days / DAYS_PER_MONTH) if days else None,
        "product_change_relative": rel_prod,
        "new_ml": counts["new"],
        "resolved_ml": counts["resolved"],
        "unchanged_ml": counts["unchanged"],
        "rano_style": rano_wording(rel_prod, common[0]["product_mm2"], common[1]["product_mm2"], band),
        "repeatability": band,
        "thresholds": {"progression": "product >= +25 %", "partial_response": "product <= -50 %"},
        "measured_in": {
            **measured,
            "what": "each time point's volume and diameters in its own space; the change, new, resolved and the "
            f"product's change in the {SPACE_WORDS[measured['space']]}",
        },
        "registration": {
            "method": "SimpleITK rigid (Euler 3D), Mattes MI, up to 3 levels, FLAIR inside the brain; follow-up onto "
            "baseline",
            "metric": reg.metric,
            "brain_dice": reg.brain_dice,
            "correlation": reg.correlation,
            "mirrored_correlation": reg.mirrored_correlation,
            "mirror_suspected": reg.mirror_suspected,
            "trusted": reg.trusted,
            "why_not_trusted": reg.why_not_trusted(),
            "quality_threshold": QUALITY_MIN_BRAIN_DICE,
            "correlation_threshold": QUALITY_MIN_CORRELATION,
            "mirror_margin": MIRROR_MARGIN,
            "rotation_deg": reg.rotation_deg,
            "translation_mm": reg.translation_mm,
        },
        "change_map": {"space": "baseline", "values": {"0": "none", "1": "unchanged", "2": "new", "3": "resolved"}},
        "notes": notes,
        "disclaimer": sps[0].model.get("disclaimer"),
    }


SPACE_WORDS = {
    "own": "follow-up's mask moved onto the baseline",
    "baseline": "baseline's grid (the follow-up resampled onto it and segmented there)",
    "halfway": "halfway space between the two studies (both resampled, neither favoured)",
}


def followup_line(s: dict, out) -> str:
    """The CLI's one line: the numbers, each beside the model's repeatability where it was measured."""
    band = s.get("repeatability")

    def within(ok: bool, ml: float) -> str:
        return f" (within the model's repeatability of ±{ml:.1f} mL)" if band and ok else ""

    reg = s["registration"]
    pct = f" (within the model's repeatability of ±{band['abs_volume_change_pct']:.0f} %)" if band and band[
        "volume_change_within"] else ""  # fmt: skip
    return (
        f"baseline {s['baseline']['volume_ml']:.2f} mL -> follow-up {s['followup']['volume_ml']:.2f} mL; change "
        f"{s['volume_change_ml']:+.2f} mL{pct}"
        f"; new {s['new_ml']:.2f} mL{within(band and band['new_within'], band and band['new_ml'])}, resolved "
        f"{s['resolved_ml']:.2f} mL{within(band and band['resolved_within'], band and band['resolved_ml'])}; "
        f"{s['rano_style']}; registration {'trusted' if reg['trusted'] else 'NOT trusted'} (brain overlap "
        f"{reg['brain_dice']:.3f}, FLAIR correlation {reg['correlation']:.3f}); {out}"
    )


def _point(sp, bi: dict, day: date | None) -> dict:
    return {
        "source": sp.study.source,
        "date": day.isoformat() if day else None,
        "volume_ml": sp.measurements.get("volume_ml"),
        "largest_diameter_mm": sp.measurements.get("largest_diameter_mm"),
        "bidimensional": bi,
    }


TRACKING_IDENTIFIER = "whole tumour (FLAIR abnormality)"


def tracking_uids(fu: FollowUp) -> dict[str, str]:
    """Each time point's Tracking Unique Identifier of the whole tumour. One patient: one UID for both reports, so a
    PACS viewer links the time points. It is derived from the baseline study's StudyInstanceUID (itself a unique,
    unguessable number), never from the PatientID alone, which anyone holding a report could test candidate IDs
    against. Two patients (compared because forced): each report its own UID, so no finding is linked to another
    patient's track."""
    from pydicom.uid import generate_uid

    def derived(st) -> str:
        key = str(getattr((st.dicom or [None])[0], "StudyInstanceUID", "") or st.source)
        return generate_uid(entropy_srcs=["tumorseg", TRACKING_IDENTIFIER, key])

    base, follow = fu.baseline.study, fu.followup.study
    pids = [patient_of(base), patient_of(follow)]
    one_patient = not (pids[0] and pids[1] and pids[0] != pids[1])
    return {"baseline": derived(base), "followup": derived(base) if one_patient else derived(follow)}


def _local(code: str, meaning: str, value, unit: str, unit_meaning: str) -> tuple:
    return (code, meaning, float(value), unit, unit_meaning)


def dicom_reports(fu: FollowUp) -> list[tuple[str, str, list]]:
    """For a pair of DICOM studies, per time point: (``baseline``|``followup``, its StudyInstanceUID, [its
    DICOM-SEG, its TID 1500 SR]). Both SRs' measurement groups carry the tracking identifier and one UID
    (``tracking_uids``: two patients get two); the follow-up's also carries the change (new and resolved only when the registration
    is trusted). Empty for studies that are not DICOM (nothing to reference)."""

    if not (fu.baseline.study.dicom and fu.followup.study.dicom):
        return []
    uids, s = tracking_uids(fu), fu.summary
    out = []
    for point, sp in (("baseline", fu.baseline), ("followup", fu.followup)):
        bi = s[point]["bidimensional"]
        extra = [
            _local("longest-diam", "Longest diameter on the slice of largest area",
                   bi["longest_mm"], "mm", "millimeter"),
            _local("perp-diam", "Perpendicular diameter", bi["perpendicular_mm"], "mm", "millimeter"),
            _local("bidim-product", "Bidimensional product (RANO-style)", bi["product_mm2"], "mm2",
                   "square millimeter"),
        ]  # fmt: skip
        if point == "followup":
            extra.append(_local("vol-change", "Volume change since baseline", s["volume_change_ml"], "ml",
                                "milliliter"))  # fmt: skip
            if s.get("repeatability"):
                extra.append(_local("vol-repeat-band", "Volume change within the model's repeatability (95 %)",
                                    s["repeatability"]["abs_volume_change_pct"], "%", "percent"))  # fmt: skip
            if s["days_between"]:
                extra.append(_local("days-since-base", "Days since baseline", s["days_between"], "d", "day"))
                extra.append(_local("growth-rate", "Volume growth per month", s["growth_ml_per_month"], "ml/mo",
                                    "milliliter per month"))  # fmt: skip
            if s["registration"]["trusted"]:
                extra.append(_local("new-volume", "New tumour volume", s["new_ml"], "ml", "milliliter"))
                extra.append(_local("resolved-volume", "Resolved tumour volume", s["resolved_ml"], "ml", "milliliter"))
        seg = dicom_seg_dataset(sp)
        sr = dicom_sr_dataset(sp, seg, tracking=(uids[point], TRACKING_IDENTIFIER), extra=extra)
        out.append((point, str(sp.study.dicom[0].StudyInstanceUID), [seg, sr]))
    return out


def write_outputs(fu: FollowUp, out, reports: list | None = None) -> list:
    """followup.json, the change map (NIfTI, baseline space), a side-by-side PNG (baseline | follow-up |
    change, on the baseline's slice of largest tumour, turned as the page shows studies) and, for DICOM
    pairs, each time point's DICOM-SEG and SR (``reports``: what ``dicom_reports`` gave, so a store sends
    the same objects)."""
    import io as _io
    import json

    out = check_out(out, [fu.baseline.study.source, fu.followup.study.source])
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "change.nii.gz", out / "side_by_side.png", out / "followup.json"]
    atomic_write_bytes(written[0], label_nifti_gz_bytes(fu.baseline.study, fu.change))
    k = int(np.argmax(fu.change.reshape(fu.change.shape[0], -1).astype(bool).sum(1)))
    t = display_turn(fu.baseline.study)
    colours = np.array([[0, 0, 0], [255, 220, 0], [255, 0, 255], [0, 200, 255]], np.uint8)  # -, same, new, gone
    base_img = fu.baseline.images[k]
    change_rgb = np.where(fu.change[k][..., None] > 0, colours[fu.change[k]], base_img)
    fk = min(k, fu.followup.study.n_slices - 1)
    panels = [
        turned(heatmap_overlay(base_img, fu.baseline.prob[k]), t),
        turned(heatmap_overlay(fu.followup.images[fk], fu.followup.prob[fk]), display_turn(fu.followup.study)),
        turned(change_rgb, t),
    ]
    h = max(p.shape[0] for p in panels)
    row = np.concatenate([np.pad(p[..., :3], ((0, h - p.shape[0]), (0, 4), (0, 0))) for p in panels], 1)
    write_png(written[1], row)
    atomic_write_bytes(written[2], (json.dumps(fu.summary, indent=1) + "\n").encode())
    for point, _uid, (seg, sr) in dicom_reports(fu) if reports is None else reports:
        for kind, ds in (("seg", seg), ("sr", sr)):
            buf = _io.BytesIO()
            ds.save_as(buf)
            atomic_write_bytes(out / f"{point}_{kind}.dcm", buf.getvalue())
            written.append(out / f"{point}_{kind}.dcm")
    return written


def run(
    predictor,
    sources: list,
    out,
    *,
    pacs=None,
    prior: bool = False,
    store: bool = False,
    interval=None,
    force: bool = False,
    spacing=None,
    say=lambda line: None,
) -> tuple[FollowUp, Path]:
    """The follow-up use case, whichever front end asks: check what was given (the interval, an --out that could
    touch an input) before any work, read the two studies (files, or a PACS's studies, with ``prior`` the
    patient's latest earlier one), compare, write the outputs and, with ``store``, send each time point's SEG and
    SR into its study. ``predictor``: a Predictor, or a function that makes one (loaded only once the checks
    passed). ``say`` gets the lines a user should read."""
    import tempfile

    if (prior or store) and pacs is None:
        raise FollowUpError(f"{'--prior' if prior else '--store'} works with a PACS: give --dicomweb URL")
    if len(sources) != (1 if prior else 2):
        raise FollowUpError("with --prior give the follow-up's study UID alone" if prior else "give BASELINE FOLLOWUP")
    interval = check_interval(interval)
    out = check_out(out, [] if pacs is not None else sources).resolve()
    pred = predictor() if callable(predictor) and not hasattr(predictor, "predict_study") else predictor
    say(f"tumorseg: {pred.engine_line()}")
    with tempfile.TemporaryDirectory(prefix="tumorseg-followup-") as tmp:
        if pacs is not None:
            from .pacs import open_study

            uids = list(sources)
            if prior:
                found = pacs.prior_study(uids[0])
                say(f"baseline: the prior study {found['study_uid']} of {found['date']}")
                uids.insert(0, found["study_uid"])
            studies = [open_study(pacs, uid, None, Path(tmp) / f"study{k}") for k, uid in enumerate(uids)]
        else:
            studies = [read_study(s, spacing=spacing) for s in sources]
        fu = compare(pred, studies[0], studies[1], interval_days=interval, force=force)
        reports = dicom_reports(fu)
        write_outputs(fu, out, reports)
        if store:
            if not reports:
                raise FollowUpError("--store: the studies are not DICOM, so there is no report to send")
            for point, study_uid, datasets in reports:
                for line in pacs.store(datasets, study_uid):
                    say(f"stored into the {point} study {study_uid}: {line}")
    say(followup_line(fu.summary, out))
    return fu, out
