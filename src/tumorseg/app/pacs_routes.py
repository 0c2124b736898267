"""The page's PACS endpoints (DICOMweb): list, open, store. The server's credentials never reach the browser.

A router of its own, so the PACS is one file to read; it uses the app's study response and held results.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from fastapi import APIRouter, Form
from starlette.concurrency import run_in_threadpool

MAX_PACS_CALLS = 4


def _call_limit(n: int):
    """At most ``n`` requests to the archive at once; more get a 503 at once rather than a worker thread each
    (a slow archive must not fill the server's thread pool: /api/health stays fast)."""
    from .common import BadRequest

    calls = threading.BoundedSemaphore(n)

    @contextmanager
    def pacs_call():
        if not calls.acquire(blocking=False):
            raise BadRequest(503, f"{n} requests to the PACS are running already; try again shortly")
        try:
            yield
        finally:
            calls.release()

    return pacs_call


def pacs_router(pred, dicomweb, study_response, held_result, jobs) -> APIRouter:
    """``dicomweb``: a ``pacs.PacsConfig`` or None (then every endpoint but /api/pacs answers 404). Opening a
    study retrieves it without a model slot and takes one (``jobs.model_slot``) for the model work only."""
    from .common import BadRequest

    router = APIRouter()
    client = None
    pacs_call = _call_limit(MAX_PACS_CALLS)

    if dicomweb is not None:
        from ..pacs.client import Pacs

        client = Pacs(dicomweb)

    def need_pacs():
        if client is None:
            raise BadRequest(404, "no PACS is configured (start the app with --dicomweb URL)")
        return client

    @router.get("/api/pacs")
    def pacs_info() -> dict:
        return {"enabled": client is not None, "url": dicomweb.url if dicomweb else None}

    @router.get("/api/pacs/studies")
    def pacs_studies(patient: str | None = None, name: str | None = None, date: str | None = None) -> dict:
        """The archive's MR studies (QIDO-RS), searched by patient ID, name or date."""
        p = need_pacs()
        with pacs_call():
            return {"studies": p.studies(patient or None, name or None, date or None)}

    def open_and_segment(study_uid: str, series_uid: str | None, slot, on_progress=None):
        """Retrieve without a model slot (network I/O, at most MAX_PACS_CALLS at once), then segment in one."""
        from ..pacs.usecases import segment_study

        p = need_pacs()
        return segment_study(
            p, pred, study_uid, series_uid, retrieve=pacs_call(), segment=slot, on_progress=on_progress
        )

    def answer(sp, study_uid: str) -> dict:
        return {**study_response(sp, f"study {study_uid}"), "pacs": sp.study.pacs}

    @router.post("/api/pacs/open")
    async def pacs_open(study_uid: str = Form(...), series_uid: str | None = Form(None)):
        """Retrieve (WADO-RS) and segment a study exactly like a dropped DICOM series."""
        need_pacs()
        sp = await run_in_threadpool(open_and_segment, study_uid, series_uid, jobs.model_slot(timeout=120.0))
        return answer(sp, study_uid)

    @router.post("/api/jobs/pacs", status_code=202)
    def pacs_open_job(study_uid: str = Form(...), series_uid: str | None = Form(None)) -> dict:
        """``/api/pacs/open`` as a job (``GET /api/jobs/{id}`` for progress; cancel with ``DELETE``)."""
        need_pacs()
        return jobs.start(
            f"study {study_uid}",
            lambda job: open_and_segment(study_uid, series_uid, job.model_slot(), job.progress),
            lambda sp: answer(sp, study_uid),
        ).view()

    @router.post("/api/pacs/store")
    async def pacs_store(result_id: str = Form(...), threshold: float | None = Form(None)):
        """Store the held study's DICOM-SEG and TID 1500 report (at this threshold) into its source study."""

        p = need_pacs()
        kind, r, _ = await run_in_threadpool(held_result, result_id, threshold)
        if kind != "study" or not r.study.pacs:
            raise BadRequest(400, "only a study opened from the PACS can be sent back to it")

        def run():
            from ..pacs.usecases import store_results

            with pacs_call():
                return store_results(p, r)

        arrived = await run_in_threadpool(run)
        return {"stored": arrived, "study_uid": r.study.pacs["study_uid"], "volume_ml": r.measurements["volume_ml"]}

    return router
