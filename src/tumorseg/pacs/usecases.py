"""The PACS use cases every front end calls (the CLI, the app, a follow-up): open a study into a folder, segment it,
store its results back into it."""

from __future__ import annotations

from pathlib import Path

from ..studies import StudyError, read_study
from .client import Pacs
from .config import PacsError, check_uid


def open_study(pacs: Pacs, study_uid: str, series_uid: str | None, folder: Path):
    """Retrieve a study's chosen series into ``folder`` and read them as the same files on disk are
    (``studies.read_study``): one series, or FLAIR/T1/T1c when they lie on one grid. Where they do not,
    FLAIR alone is used and the note says why. The choice goes into the study's notes (study.json)."""

    check_uid(study_uid, "study UID")
    if series_uid:
        check_uid(series_uid, "series UID")
    choice = pacs.choose(study_uid, series_uid)
    paths = pacs.fetch_study(choice, folder)
    notes = [f"From {pacs.cfg.url}, study {study_uid}: " + "; ".join(choice.reasons) + "."]
    if len(paths) > 1:
        try:
            study = read_study(paths)
        except StudyError as exc:
            study = read_study(paths["flair"])
            notes.append(f"FLAIR alone was segmented: {exc.reason}")
    else:
        study = read_study(paths["flair"])
    study.notes[:0] = notes
    study.source = f"{pacs.cfg.url} study {study_uid}"
    study.pacs = {
        "url": pacs.cfg.url,
        "study_uid": study_uid,
        "series": {seq: s["series_uid"] for seq, s in choice.series.items()},
        "chosen": choice.reasons,
    }
    return study


# ---------------------------------------------------------------- the use cases every front end calls
def segment_study(pacs: Pacs, pred, study_uid: str, series_uid: str | None = None, *, retrieve=None, segment=None,
                  **predict_kw):  # fmt: skip
    """Retrieve a study from the archive and segment it as the same files on disk would be: the one "open a PACS
    study" the CLI, the page's endpoints and its jobs share. ``retrieve`` / ``segment`` are context managers a
    server wraps the two steps in (its limit on archive calls; a model slot); ``predict_kw`` goes to
    ``predict_study`` (tta, min_component_mm3, on_progress)."""
    import contextlib
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tumorseg-pacs-") as tmp:
        with retrieve or contextlib.nullcontext():
            study = open_study(pacs, study_uid, series_uid or None, Path(tmp))
        with segment or contextlib.nullcontext():
            return pred.predict_study(study, **predict_kw)


def store_results(pacs: Pacs, sp, study_uid: str | None = None) -> list[str]:
    """Send a segmented study's DICOM-SEG and TID 1500 report into its study (the one it came from by default):
    what arrived, one line each. The CLI's --store and the page's "Send to PACS" both call this."""
    from ..studies import dicom_seg_dataset, dicom_sr_dataset

    uid = study_uid or (sp.study.pacs or {}).get("study_uid")
    if not uid:
        raise PacsError("only a study opened from the PACS can be sent back to it")
    seg = dicom_seg_dataset(sp)
    return pacs.store([seg, dicom_sr_dataset(sp, seg)], uid)
