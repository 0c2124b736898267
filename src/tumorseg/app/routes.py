"""The REST API's endpoints, as routers: meta (health, model, classify), images, studies, held results.

Front end only: every prediction goes through the Predictor; held results live in a ``ResultStore``.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..imaging.geometry import CONVENTIONS, display_turn, geometry, turned, volume_nifti_gz
from ..imaging.images import encode_png
from ..imaging.render import jet
from ..inference import DISCLAIMER
from ..model.metrics import compare_masks
from ..studies import (
    classify_names,
    dicom_seg_bytes,
    file_format_of,
    is_single_dicom,
    mask_nifti_gz_bytes,
    parse_spacing,
    read_reference,
    reference_from_slice_masks,
    study_exports,
    study_file_suffixes,
    study_name,
    write_study_outputs,
)
from ..version import __version__
from .common import BadRequest, UploadTooLarge, attachment, b64png, read_upload, requested_slice, upload_stem

MAX_CLASSIFY_NAMES = 20_000


def meta_router(pred) -> APIRouter:
    router = APIRouter()

    @router.get("/api/health")
    def health() -> dict:
        if not getattr(pred, "ready", True):  # the app serves while its model loads (server.LoadingPredictor)
            return {"status": "loading", "version": __version__}
        return {"status": "ok", "version": __version__, "model": pred.model_path.name, "engine": pred.engine.name}

    @router.post("/api/classify")
    async def classify(request: Request) -> dict:
        """How the page should send the files a user chose: one study, or separate images (file names only).

        Body: a JSON list of at most 20,000 file names."""

        try:
            names = json.loads(await request.body())
        except ValueError:
            raise BadRequest(422, "send a JSON list of file names") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest(422, "send a JSON list of file names")
        if len(names) > MAX_CLASSIFY_NAMES:
            raise BadRequest(422, f"{len(names):,} names; at most {MAX_CLASSIFY_NAMES:,} files can be opened at once")
        return {"kind": classify_names(names)}

    @router.get("/api/model")
    def model_info() -> dict:
        return pred.info()

    @router.get("/api/colormap")
    def colormap() -> dict:
        """The JET colours the CLI's overlays use (``render.jet``), for the page's instant re-rendering:
        one home for the colormap."""

        return {"jet": jet(np.arange(256) / 255.0).tolist()}

    return router


def image_router(pred, store, cap: int) -> APIRouter:
    router = APIRouter()

    @router.post("/api/segment")
    async def segment(file: UploadFile = File(...), threshold: float | None = Form(None), tta: bool = Form(False)):
        """Segment one 2D image. Returns PNGs (base64) of the image, probability map and mask."""

        name, data = await read_upload(file, threshold, cap)
        if file_format_of(name) is not None or is_single_dicom(name):
            raise BadRequest(400, f"{name}: this is a study; send it to /api/study")
        r = await run_in_threadpool(pred.predict, data, tta, threshold, None, name)
        summary = {k: v for k, v in r.summary().items() if k != "source"}  # the CLI's numbers, one home
        body = {
            "result_id": store.remember("image", r, name),
            "filename": name,
            **summary,
            "image_png": b64png(r.image),
            "prob_png": b64png(r.prob_png_array()),
            "mask_png": b64png(r.mask_png_array()),
            "model": {"model": pred.model_path.name, "engine": pred.engine.name},  # the rest: GET /api/model
            "disclaimer": DISCLAIMER,
        }
        if r.uncertainty is not None:
            body["uncertainty_png"] = b64png((r.uncertainty.clip(0, 0.5) * 510).astype(np.uint8))
        return body

    return router


def study_router(pred, store, cap: int, jobs=None) -> tuple[APIRouter, object]:
    """The study endpoints (at once, and as a job with progress), and ``study_response`` (the PACS
    router answers the same way)."""
    from .jobs import JobStore

    router = APIRouter()
    jobs = jobs or JobStore()

    @router.post("/api/study")
    async def study(form: StudyForm = Depends()):
        """Segment a whole study: one .zip (DICOM series or slice images) or NIfTI file in ``file``, or
        several files in ``files`` (a DICOM series, a patient folder's numbered slices, or one NIfTI per
        sequence). ``spacing`` = "ROW,COL,SLICE" mm for slice stacks, which carry no geometry; ``folder``:
        the chosen folder's name, which names the study as the CLI names it."""
        name, payload, sp_mm = await read_study_request(form, cap)
        sp = await run_in_threadpool(run_study, pred, name, payload, form.series, form.threshold, sp_mm)
        return study_response(pred, store, sp, name)

    @router.post("/api/jobs/study", status_code=202)
    async def study_job(form: StudyForm = Depends()):
        """``/api/study`` as a job: answers at once with its id; ``GET /api/jobs/{id}`` gives progress
        (slices done of total, elapsed, an estimate) and, when done, what ``/api/study`` answers."""
        name, payload, sp_mm = await read_study_request(form, cap)
        job = jobs.start(
            name,
            lambda job: _slotted_study(job, pred, name, payload, form, sp_mm),
            lambda sp: study_response(pred, store, sp, name),
        )
        return job.view()

    @router.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        return jobs.get(job_id).response()

    @router.delete("/api/jobs/{job_id}")
    def job_cancel(job_id: str) -> dict:
        """Stop a study between two batches of slices; nothing of it is kept."""
        job = jobs.get(job_id)
        job.cancel.set()
        return job.view()

    return router, lambda sp, name: study_response(pred, store, sp, name)


class StudyForm:
    """The form of ``/api/study`` and ``/api/jobs/study``, declared once for both."""

    def __init__(
        self,
        file: UploadFile | None = File(None),
        files: list[UploadFile] | None = File(None),
        threshold: float | None = Form(None),
        series: str | None = Form(None),
        spacing: str | None = Form(None),
        folder: str | None = Form(None),
    ):
        self.file, self.files, self.threshold = file, files, threshold
        self.series, self.spacing, self.folder = series, spacing, folder


async def read_study_request(form: StudyForm, cap: int) -> tuple[str, object, tuple | None]:
    """(the study's name, its bytes or (name, bytes) members, spacing) from the form, checked."""

    sp_mm = None
    if form.spacing:
        try:
            sp_mm = parse_spacing(form.spacing)  # the CLI's --spacing rule
        except ValueError as exc:
            raise BadRequest(422, f"spacing: {exc}") from None
    if form.file is not None:
        name, data = await read_upload(form.file, form.threshold, cap)
        if file_format_of(name) is None:
            raise BadRequest(400, f"{name}: a study must be one of these files: {study_file_suffixes()}")
        return name, data, sp_mm
    if form.files:
        members, total = [], 0
        for f in form.files:
            n, d = await read_upload(f, form.threshold, cap)
            total += len(d)
            if total > cap:
                raise UploadTooLarge()
            members.append((n, d))
        if classify_names([n for n, _ in members]) == "study-file":
            return members[0][0], members[0][1], sp_mm  # one NIfTI or zip sent as 'files': as 'file' sends it
        return study_name([n for n, _ in members], form.folder or None), members, sp_mm
    raise BadRequest(422, f"send a study as 'file' ({study_file_suffixes()}) or a series as 'files'")


def _slotted_study(job, pred, name, payload, form, sp_mm):
    with job.model_slot():
        return run_study(pred, name, payload, form.series, form.threshold, sp_mm, job.progress)


def run_study(pred, name, payload, series, threshold, sp_mm, on_progress=None):
    """Write the upload to a temporary folder under its own names and segment it as a study."""
    with tempfile.TemporaryDirectory(prefix="tumorseg-") as tmp:
        p = materialise(name, payload, Path(tmp))
        sp = pred.predict_study(p, series=series, threshold=threshold, spacing=sp_mm, on_progress=on_progress)
    sp.study.source = name  # the client's name, never the server's temporary path
    return sp


def materialise(name: str, payload, tmp: Path) -> Path:
    """An upload as files in ``tmp`` under their own names (notes and slices name them): a study file, or
    a folder of the files sent together."""
    if isinstance(payload, list):
        p = tmp / "series"
        p.mkdir()
        for n, d in payload:
            target, k = p / n, 1
            while target.exists():
                k += 1
                target = p / f"{upload_stem(n)}-{k}{n[len(upload_stem(n)) :]}"
            target.write_bytes(d)
        return p
    p = tmp / name
    p.write_bytes(payload)
    return p


def study_response(pred, store, sp, name: str) -> dict:
    """What /api/study and /api/pacs/open answer: the held result, measurements and every slice's PNGs."""
    slices = [
        {
            "name": Path(sp.study.names[k]).name,
            "image_png": b64png(sp.images[k]),
            "prob_png": b64png((sp.prob[k] * 255 + 0.5).astype(np.uint8)),
            "tumour_pixels": int(sp.mask[k].sum()),
        }
        for k in range(sp.study.n_slices)
    ]
    return {
        "result_id": store.remember("study", sp, name),
        "filename": name,
        "threshold": sp.threshold,
        "measurements": sp.summary(),
        "slices": slices,
        "spacing": sp.study.spacing,
        "geometry": geometry(sp.study),
        "exports": study_exports(sp.study),
        "model": {"model": pred.model_path.name, "engine": pred.engine.name},
        "disclaimer": DISCLAIMER,
    }


def held_router(pred, store, cap: int) -> APIRouter:
    """A held result at another threshold, or compared with the user's reference."""
    router = APIRouter()

    @router.post("/api/mask")
    async def mask(result_id: str = Form(...), threshold: float | None = Form(None), slice: int = Form(0)):
        """The model's mask of a held result at another threshold: the same post-processing as the CLI.

        The page re-draws instantly in the browser, then takes its counts, volume and downloads from here.
        """
        kind, r, name = await run_in_threadpool(store.get, result_id, threshold)  # finish_study is CPU work
        if kind == "image":
            return {
                "threshold": r.threshold,
                "tumour_pixels": r.area_pixels,
                "area_mm2": r.area_mm2,
                "mask_png": b64png(r.mask_png_array()),
            }
        k = requested_slice(slice, r.mask.shape[0])
        return {
            "threshold": r.threshold,
            "slice": k,
            "tumour_pixels": int(r.mask[k].sum()),
            "mask_png": b64png(r.mask[k].astype(np.uint8) * 255),
            "measurements": r.summary(),
        }

    @router.post("/api/compare")
    async def compare(
        result_id: str = Form(...),
        threshold: float | None = Form(None),
        file: UploadFile | None = File(None),
        files: list[UploadFile] | None = File(None),
    ):
        """Compare a held result with the user's reference mask: Dice, volumes, the slices that disagree most,
        and the reference as PNG masks for the page's second contour. ``file``: a NIfTI mask (a study) or an
        image mask (an image); ``files``: a slice stack's own ``<slice>_mask`` images."""

        if file is None and not files:
            raise BadRequest(422, "send the reference as 'file', or a slice stack's masks as 'files'")
        members = [await read_upload(f, threshold, cap) for f in (files or [])]
        name, data = await read_upload(file, threshold, cap) if file is not None else ("slice masks", b"")
        kind, r, _ = await run_in_threadpool(store.get, result_id, threshold)

        notes: list[str] = []

        def run():
            if members:
                if kind != "study":
                    raise BadRequest(400, "masks per slice are a slice stack's reference; this result is an image")
                ref = reference_from_slice_masks(r.study, members)
                return ref, {**compare_masks(r.mask, ref, r.study.spacing), "notes": notes}
            with tempfile.TemporaryDirectory(prefix="tumorseg-") as tmp:
                f = Path(tmp) / name
                f.write_bytes(data)
                if kind == "study":
                    ref = read_reference(f, r.study, name, notes)
                    return ref, {**compare_masks(r.mask, ref, r.study.spacing), "notes": notes}
                ref = read_reference(f, r.mask.shape, name)
                return ref, compare_masks(r.mask, ref)

        ref, res = await run_in_threadpool(run)
        pngs = [b64png(m.astype(np.uint8) * 255) for m in (ref if ref.ndim == 3 else [ref])]
        return {"reference": name, "threshold": r.threshold, **res, "reference_png": pngs}

    return router


def download_router(pred, store) -> APIRouter:
    """A held result as the CLI writes it: the mask PNG, the study folder as a zip, mask.nii.gz, DICOM-SEG."""
    router = APIRouter()

    @router.get("/api/result/{result_id}/mask.png")
    def mask_png(result_id: str, threshold: float | None = None, slice: int = 0, convention: str = "radiological"):
        """The CLI's ``<name>_mask.png`` (for a study: one slice of its mask, turned as the page shows it in
        ``convention``, as the CLI's overlays are)."""

        if convention not in CONVENTIONS:
            raise BadRequest(422, f"convention must be one of {', '.join(CONVENTIONS)}")
        kind, r, name = store.get(result_id, threshold)
        if kind == "image":
            arr = r.mask_png_array()
        else:
            arr = turned(
                r.mask[requested_slice(slice, r.mask.shape[0])] * np.uint8(255), display_turn(r.study, convention)
            )
        stem = upload_stem(name) + ("" if kind == "image" else f"_slice{slice + 1:04d}")
        return Response(
            encode_png(arr),
            media_type="image/png",
            headers=attachment(f"{stem}_mask.png"),
        )

    @router.get("/api/result/{result_id}/study.zip")
    def study_zip(result_id: str, threshold: float | None = None):
        """The CLI's study folder (mask.nii.gz, DICOM-SEG for DICOM input, study.json, overlays) as one zip."""
        kind, r, name = store.get(result_id, threshold)
        if kind != "study":
            raise BadRequest(400, f"{name}: not a study")

        stem = upload_stem(name)
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory(prefix="tumorseg-") as tmp:
            write_study_outputs(r, Path(tmp) / stem)
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for f in sorted((Path(tmp) / stem).rglob("*")):
                    if f.is_file():
                        zf.write(f, f.relative_to(tmp).as_posix())
        return Response(
            buf.getvalue(),
            media_type="application/zip",
            headers=attachment(f"{stem}_tumorseg.zip"),
        )

    @router.get("/api/result/{result_id}/{filename}")
    def study_file(result_id: str, filename: str, threshold: float | None = None):
        """One of the CLI's study outputs: ``mask.nii.gz`` (input geometry) or ``mask_seg.dcm`` (DICOM input)."""
        if filename not in ("mask.nii.gz", "mask_seg.dcm"):
            raise BadRequest(404, f"{filename}: not a study output (mask.nii.gz, mask_seg.dcm, study.zip)")
        kind, r, name = store.get(result_id, threshold)
        if kind != "study":
            raise BadRequest(400, f"{name}: not a study")

        if filename not in study_exports(r.study):
            raise BadRequest(400, f"{name}: DICOM-SEG needs DICOM input; download mask.nii.gz")

        stem = upload_stem(name)
        if filename == "mask.nii.gz":
            data = mask_nifti_gz_bytes(r)
        else:
            try:
                data = dicom_seg_bytes(r)
            except Exception as exc:
                raise BadRequest(500, f"{name}: {filename} could not be written ({type(exc).__name__}: {exc})") from exc
        media = "application/gzip" if filename.endswith(".gz") else "application/dicom"
        return Response(data, media_type=media, headers=attachment(f"{stem}_{filename}"))

    return router


def view_router(store) -> APIRouter:
    """A held study's volumes in patient space, for the three-plane viewer (NiiVue)."""
    router = APIRouter()

    @router.get("/api/result/{result_id}/view/{what}.nii.gz")
    def view_volume(result_id: str, what: str, threshold: float | None = None):
        """A held study's volume in patient space for the three-plane viewer: ``t1``, ``flair``, ``t1c``
        (the display volume as the model saw it, uint8), ``prob`` (probability x 255) or ``mask``."""

        kind, r, name = store.get(result_id, threshold)
        if kind != "study":
            raise BadRequest(400, f"{name}: not a study")
        channels = {"t1": 0, "flair": 1, "t1c": 2}
        if what in channels:
            vol, scale = r.study.volume[..., channels[what]], None
        elif what == "prob":
            vol, scale = (r.prob * 255 + 0.5).astype(np.uint8), (1 / 255, 0.0)
        elif what == "mask":
            vol, scale = r.mask.astype(np.uint8), None
        else:
            raise BadRequest(404, f"{what}: not a study volume (t1, flair, t1c, prob, mask)")
        data = volume_nifti_gz(r.study, vol, scale)
        return Response(data, media_type="application/gzip", headers={"Cache-Control": "no-store"})

    return router
