"""Follow-up: two studies of one patient, what changed in mL and where (issue 39, the core).

The follow-up is registered rigidly onto the baseline with SimpleITK (the field's registration library:
Mattes mutual information, multi-resolution, on FLAIR inside the brain), so the change map lives in baseline
space; each time point is segmented and measured in its own space (no resampling bias in its volume). The
numbers: volumes, largest diameters, the RANO-style bidimensional product, absolute and relative change,
days between and growth per month, new and resolved tumour, and a RANO-style wording marked as a suggestion.
Registration is ``registration``'s; the outputs and DICOM reports ``reports``'; the use case ``run``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from ..errors import FollowUpError
from ..imaging.files import same_file
from ..imaging.geometry import voxel_ml
from ..studies import Study, read_study
from ..studies.dicom import parse_dicom_date
from .registration import (
    MIRROR_MARGIN,
    QUALITY_MIN_BRAIN_DICE,
    QUALITY_MIN_CORRELATION,
    Registration,
    half_transform,
    on_baseline,
    register,
    resample,
    resample_study,
)

MAX_INTERVAL_DAYS = 36500


# RANO-style thresholds on the bidimensional product (Wen et al., JCO 2010): a suggestion, never a diagnosis.
PROGRESSION = 0.25  # >= +25 %


PARTIAL_RESPONSE = -0.50  # <= -50 %


DAYS_PER_MONTH = 30.4375


@dataclass
class FollowUp:
    baseline: object  # StudyPrediction
    followup: object  # StudyPrediction
    registration: Registration
    change: np.ndarray  # baseline grid, Z x H x W uint8: 0 none, 1 unchanged, 2 new, 3 resolved
    summary: dict = field(default_factory=dict)


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
        return base, seg(resample_study(sts[0], sts[1], reg.transform), n0 + n1), None
    h = half_transform(reg)
    b_half = resample_study(sts[0], sts[0], h.GetInverse())
    f_half = resample_study(sts[0], sts[1], h)
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
    if same_file(sts[0].source, sts[1].source):
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
    vml = voxel_ml(sts[0].spacing)  # every study has a spacing here (refused above otherwise)
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
        change = resample(sts[0], sts[0], change, to_space, nearest=True).astype(np.uint8)
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


def _point(sp, bi: dict, day: date | None) -> dict:
    return {
        "source": sp.study.source,
        "date": day.isoformat() if day else None,
        "volume_ml": sp.measurements.get("volume_ml"),
        "largest_diameter_mm": sp.measurements.get("largest_diameter_mm"),
        "bidimensional": bi,
    }
