"""What a follow-up writes: followup.json, the change map, a side-by-side picture, and for DICOM pairs each time
point's DICOM-SEG and TID 1500 SR with one tracking UID; the CLI's one line; and the check that no output can
replace an input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FollowUpError
from ..imaging.files import atomic_write_bytes, out_touches_input
from ..imaging.geometry import display_turn, turned
from ..imaging.images import write_png
from ..imaging.render import heatmap_overlay
from ..studies.outputs import dicom_seg_dataset, dicom_sr_dataset, label_nifti_gz_bytes
from .comparison import FollowUp, patient_of


def check_out(out, inputs) -> Path:
    """The output folder, refused where an output could replace an input or land inside one: ``out`` inside (or
    equal to) an input folder, or the folder an input file lies in (change.nii.gz, followup.json, ... could be an
    input's name). Checked writable here, before any work, without making it. ``inputs``: paths (others are
    skipped)."""
    out_p = Path(out)
    why = out_touches_input(out, inputs)
    if why:
        raise FollowUpError(f"--out {out}: {why}; choose a folder outside the inputs so no input is replaced")
    if out_p.exists() and not out_p.is_dir():
        raise FollowUpError(f"--out {out}: exists and is not a folder")
    # writable? checked without making anything (a refused comparison leaves no empty folder behind): the
    # folder itself where it exists, else the nearest existing folder above it
    above = out_p
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
        raise FollowUpError(f"--out {out}: cannot be written ({above} is not a writable folder)")
    return out_p


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
