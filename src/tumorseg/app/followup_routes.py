"""Follow-up in the app: two studies of one patient compared as a job (``POST /api/jobs/followup``, progress
over both studies' slices), the result held like a study's, its volumes on the baseline's grid for the page's
three linked panels, and its outputs as the CLI writes them (one zip). Front end only: ``followup.run`` (the use
case the CLI calls too) does the work, ``followup.reports.write_outputs`` writes the files.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from ..imaging.geometry import volume_nifti_gz
from ..inference import DISCLAIMER
from ..studies import read_study
from .common import BadRequest, attachment
from .routes import StudyForm, materialise, read_study_request

VIEWS = ("baseline", "followup", "baseline_mask", "followup_mask", "change")


def followup_router(pred, store, cap: int, jobs) -> APIRouter:
    router = APIRouter()

    @router.post("/api/jobs/followup", status_code=202)
    async def followup_job(
        baseline: list[UploadFile] = File(...),
        followup: list[UploadFile] = File(...),
        interval: float | None = Form(None),
        force: bool = Form(False),
        spacing: str | None = Form(None),
        baseline_folder: str | None = Form(None),
        followup_folder: str | None = Form(None),
    ):
        """Compare a baseline and a follow-up study of one patient (each: one NIfTI or zip, or the files of a
        DICOM series or slice folder); ``interval`` in days where the files carry no dates; ``force`` compares
        two PatientIDs. Answers at once with the job's id; ``GET /api/jobs/{id}`` gives progress and, when
        done, the numbers (followup.json's), the held result's id and its views."""
        from ..errors import FollowUpError
        from ..followup.comparison import check_interval

        try:
            interval = check_interval(interval)
        except FollowUpError as exc:
            raise BadRequest(422, str(exc)) from None
        sides = []
        for files, folder in ((baseline, baseline_folder), (followup, followup_folder)):
            sides.append(await read_study_request(StudyForm(None, files, None, None, spacing, folder), cap))
        if sum(_size(p) for _, p, _ in sides) > cap:
            raise BadRequest(413, f"the two studies together are larger than {cap >> 20} MB")
        name = f"{sides[0][0]} -> {sides[1][0]}"
        job = jobs.start(
            name,
            lambda job: _run(job, pred, sides, interval, force),
            lambda fu: followup_response(store, fu, name),
        )
        return job.view()

    @router.get("/api/followup/{result_id}/view/{what}.nii.gz")
    def view(result_id: str, what: str):
        """A held follow-up's volume on the baseline's grid, in patient space: ``baseline`` (FLAIR),
        ``followup`` (FLAIR registered onto the baseline: for showing only; each time point is measured in its
        own space), ``baseline_mask``, ``followup_mask`` (registered) and ``change`` (1 unchanged, 2 new,
        3 resolved)."""
        from ..followup.registration import on_baseline

        fu, _ = _held(store, result_id)
        b, f = fu.baseline, fu.followup
        if what == "baseline":
            vol = b.study.volume[..., 1]
        elif what == "followup":
            vol = on_baseline(fu.registration, b.study, f.study, f.study.volume[..., 1], nearest=False)
        elif what == "baseline_mask":
            vol = b.mask.astype(np.uint8)
        elif what == "followup_mask":
            vol = on_baseline(fu.registration, b.study, f.study, f.mask.astype(np.uint8), nearest=True)
        elif what == "change":
            vol = fu.change
        else:
            raise BadRequest(404, f"{what}: not a follow-up volume ({', '.join(VIEWS)})")
        data = volume_nifti_gz(b.study, np.ascontiguousarray(vol.astype(np.uint8)), None)
        return Response(data, media_type="application/gzip", headers={"Cache-Control": "no-store"})

    @router.get("/api/followup/{result_id}/followup.zip")
    def outputs(result_id: str):
        """What ``tumorseg followup`` writes (followup.json, change.nii.gz, side_by_side.png and, for DICOM
        studies, each time point's DICOM-SEG and SR), as one zip."""
        from ..followup.reports import write_outputs

        fu, name = _held(store, result_id)
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory(prefix="tumorseg-") as tmp:
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for f in write_outputs(fu, Path(tmp)):
                    z.write(f, f.name)
        return Response(buf.getvalue(), media_type="application/zip", headers=attachment("followup.zip"))

    return router


def _size(payload) -> int:
    return sum(len(d) for _, d in payload) if isinstance(payload, list) else len(payload)


def _held(store, result_id: str):
    _, fu, name = store.get(result_id, None, kinds=("followup",))
    return fu, name


def _run(job, pred, sides, interval, force):
    """Both uploads written under their own names and read; then the follow-up use case (``followup.run``), holding
    one model slot while it segments, writing nothing (the result is held)."""
    from ..followup.run import run

    with tempfile.TemporaryDirectory(prefix="tumorseg-") as tmp:
        studies = []
        for k, (name, payload, sp_mm) in enumerate(sides):
            folder = Path(tmp) / f"study{k}"
            folder.mkdir()
            st = read_study(materialise(name, payload, folder), spacing=sp_mm)
            st.source = name  # the client's name, never the server's temporary path
            studies.append(st)
        fu, _ = run(pred, studies, None, interval=interval, force=force, on_progress=job.progress,
                    segment=job.model_slot())  # fmt: skip
    return fu


def followup_response(store, fu, name: str) -> dict:
    rid = store.remember("followup", fu, name)
    base = f"/api/followup/{rid}"
    return {
        "result_id": rid,
        "name": name,
        "summary": fu.summary,
        "views": {what: f"{base}/view/{what}.nii.gz" for what in VIEWS},
        "download": f"{base}/followup.zip",
        "slices": fu.baseline.study.n_slices,
        "disclaimer": DISCLAIMER,
    }
