"""Local web app and REST API. Front end only: every prediction goes through the Predictor.

Privacy by default: binds 127.0.0.1, keeps uploads in memory (or a temporary folder that
is deleted before the response), writes nothing, logs no file names, CORS closed.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
import time
import webbrowser
import zipfile
from collections import OrderedDict
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..inference import DISCLAIMER, Predictor
from ..io import ImageReadError, encode_png

log = logging.getLogger("tumorseg.app")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class UploadTooLarge(Exception):
    pass


class BadRequest(Exception):
    def __init__(self, status: int, msg: str):
        self.status, self.msg = status, msg


def _b64png(arr: np.ndarray) -> str:
    return base64.b64encode(encode_png(arr, compress_level=1)).decode("ascii")


async def _read_capped(upload: UploadFile, cap: int) -> bytes:
    chunks, total = [], 0
    while True:
        chunk = await upload.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        if total > cap:
            raise UploadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


_TEMP_PATH = re.compile(re.escape(tempfile.gettempdir()) + r"/tumorseg-[^/\s]+/(?:series/\d{5}_|slices/)?")


def _public_message(msg: str) -> str:
    """An error message without the server's temporary paths (the client knows its own file names)."""
    return _TEMP_PATH.sub("", msg)


async def _send_json(send, status: int, msg: str) -> None:
    body = json.dumps({"error": msg, "status": status}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI guard in front of the app: Host check, body size counted as it streams, slow-client timeout,
    and a limit on requests that run the model at once.

    A body is never spooled beyond ``cap`` bytes: the 413 goes out as soon as the count passes it, with
    or without a Content-Length. A client that stops sending for ``body_timeout`` seconds, or whose
    whole body takes longer than ``body_deadline``, gets a 408. A request that runs the model takes a
    model slot only once its whole body has arrived: a slow client never holds one.
    """

    def __init__(
        self,
        app,
        cap: int,
        body_timeout: float = 30.0,
        max_concurrent: int = 2,
        allowed_hosts: set[str] | None = None,
        queue_timeout: float = 120.0,
        body_deadline: float = 120.0,
    ):
        self.app, self.cap, self.body_timeout, self.body_deadline = app, cap, body_timeout, body_deadline
        self.allowed_hosts = allowed_hosts
        self.queue_timeout = queue_timeout
        # First come, first served model slots; a lock, not an asyncio primitive, so any event loop works
        # (tests run several). Tickets of requests that gave up are skipped.
        self.max_concurrent = max_concurrent
        self.lock = threading.Lock()
        self.active = self.issued = self.serving = 0
        self.abandoned: set[int] = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.allowed_hosts is not None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            name = (
                host[1 : host.index("]")]
                if host.startswith("[") and "]" in host
                else host.rsplit(":", 1)[0]
                if host.count(":") == 1
                else host
            )
            if name.lower() not in self.allowed_hosts:
                return await _send_json(
                    send,
                    421,
                    f"host {host!r} is not served here (allowed: "
                    f"{', '.join(sorted(self.allowed_hosts))}; see --allow-host)",
                )
        responded = False
        total = 0

        async def guarded_send(msg):
            if not responded:
                await send(msg)

        async def guarded_receive():
            nonlocal responded, total
            try:
                msg = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                if not responded:
                    responded = True
                    await _send_json(send, 408, f"the request body stalled for {self.body_timeout:g} s")
                return {"type": "http.disconnect"}
            if msg["type"] == "http.request":
                total += len(msg.get("body", b""))
                if total > self.cap + 1_000_000 and not responded:
                    responded = True
                    await _send_json(send, 413, f"upload is larger than the {self.cap / 2**20:g} MB limit")
                    return {"type": "http.disconnect"}
            return msg

        heavy = scope.get("method") == "POST" and scope.get("path", "").startswith("/api/")
        if not heavy:
            return await self.app(scope, guarded_receive, guarded_send)
        body: list[dict] = []
        start = time.monotonic()
        while True:
            try:
                msg = await asyncio.wait_for(
                    guarded_receive(), max(0.0, self.body_deadline - (time.monotonic() - start))
                )
            except TimeoutError:
                return await _send_json(send, 408, f"the request body took longer than {self.body_deadline:g} s")
            if msg["type"] != "http.request" or responded:
                return  # the client left, or a 408/413 went out already
            body.append(msg)
            if not msg.get("more_body"):
                break

        async def replay():
            return body.pop(0) if body else await receive()  # after the body: only a disconnect, no timeout

        with self.lock:
            ticket = self.issued
            self.issued += 1
        deadline = time.monotonic() + self.queue_timeout
        while not self._enter(ticket):
            if time.monotonic() > deadline:
                with self.lock:
                    self.abandoned.add(ticket)
                return await _send_json(send, 503, "the server is busy with other requests; try again shortly")
            await asyncio.sleep(0.005)
        try:
            await self.app(scope, replay, guarded_send)
        finally:
            with self.lock:
                self.active -= 1

    def _enter(self, ticket: int) -> bool:
        with self.lock:
            while self.serving in self.abandoned:
                self.abandoned.discard(self.serving)
                self.serving += 1
            if ticket == self.serving and self.active < self.max_concurrent:
                self.serving += 1
                self.active += 1
                return True
            return False


MAX_RESULTS = 4
MAX_RESULT_BYTES = 512 * 2**20  # held results are bounded in bytes too (the oldest go first)
MAX_CLASSIFY_NAMES = 20_000


def _held_bytes(obj) -> int:
    """The numpy arrays a held result keeps alive (one level deep, plus its study's volume)."""
    seen, total = set(), 0
    for v in list(vars(obj).values()) + [getattr(getattr(obj, "study", None), "volume", None)]:
        if isinstance(v, np.ndarray) and id(v) not in seen:
            seen.add(id(v))
            total += v.nbytes
    return total


def _stem(name: str) -> str:
    for suf in (".nii.gz", ".nii", ".zip", ".tiff", ".tif", ".png", ".jpeg", ".jpg", ".webp", ".bmp", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)] or "study"
    return name or "study"


def _safe_name(name: str | None) -> str:
    """A client's file name, safe as a temporary file name: never empty, '.', '..' or hidden."""
    base = Path((name or "upload").replace("\\", "/")).name
    return "".join(c if c.isalnum() or c in "-_. " else "_" for c in base)[:120].lstrip(". ") or "upload"


def _slice_index(k: int, n: int) -> int:
    if not 0 <= k < n:
        raise BadRequest(422, f"slice {k} is out of range: the study has slices 0 to {n - 1}")
    return k


def create_app(
    predictor: Predictor | None = None,
    model: str | None = None,
    engine: str | None = None,
    token: str | None = None,
    max_upload_mb: float = 50.0,
    allowed_hosts: set[str] | None = None,
    body_timeout: float = 30.0,
    max_concurrent: int = 2,
    dicomweb=None,
):
    """Build the app; the predictor loads once and serves every request.

    Args:
        allowed_hosts: Host header names answered (None: any; ``serve`` passes the bound names).
        body_timeout: seconds a request body may stall before a 408.
        max_concurrent: requests that run the model at once; others wait, then get a 503.
    Returns:
        The ASGI app (the FastAPI app behind a :class:`RequestGuard`; the FastAPI app is ``.app``).
    """
    pred = predictor or Predictor(model, engine=engine)
    cap = int(max_upload_mb * 1024 * 1024)
    # Results held for re-thresholding and downloads: in memory only, the last MAX_RESULTS, never on disk.
    results: OrderedDict[str, tuple] = OrderedDict()
    results_lock = threading.Lock()

    def remember(kind: str, obj, name: str) -> str:
        rid = secrets.token_urlsafe(12)
        with results_lock:
            results[rid] = (kind, obj, name, _held_bytes(obj))
            while len(results) > 1 and (
                len(results) > MAX_RESULTS or sum(r[3] for r in results.values()) > MAX_RESULT_BYTES
            ):
                results.popitem(last=False)
        return rid

    app = FastAPI(title="tumorseg", version=__version__, description=f"Brain-tumour segmentation in MRI. {DISCLAIMER}")
    app.state.predictor = pred

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": _public_message(msg), "status": status})

    @app.middleware("http")
    async def guard(request: Request, call_next):
        protected = request.url.path.startswith("/api/") or request.url.path in ("/docs", "/openapi.json", "/redoc")
        if protected and request.url.path != "/api/health" and token:
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                return error(401, "missing or wrong API token (Authorization: Bearer <token>)")
        cl = request.headers.get("content-length")
        if cl and cl.isdigit() and int(cl) > cap + 1_000_000:
            return error(413, f"upload is larger than the {max_upload_mb:g} MB limit")
        try:
            return await call_next(request)
        except Exception as exc:  # never a bare 500 with a traceback to the client
            log.error("unexpected error: %s", type(exc).__name__)
            return error(500, f"internal error ({type(exc).__name__}); the server is still running")

    @app.exception_handler(UploadTooLarge)
    async def _too_large(request, exc):
        return error(413, f"upload is larger than the {max_upload_mb:g} MB limit")

    @app.exception_handler(ImageReadError)
    async def _bad_image(request, exc: ImageReadError):
        from ..checks import CannotJudge

        return error(422 if isinstance(exc, CannotJudge) else 400, str(exc))

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, exc):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', []))}: {e.get('msg')}" for e in exc.errors()]
        return error(422, "invalid request: " + "; ".join(parts))

    async def upload(file: UploadFile, threshold: float | None) -> tuple[str, bytes]:
        name = _safe_name(file.filename)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise BadRequest(422, f"threshold must be between 0 and 1, got {threshold}")
        data = await _read_capped(file, cap)
        if not data:
            raise ImageReadError(name, "file is empty (0 bytes)")
        return name, data

    @app.exception_handler(BadRequest)
    async def _bad_req(request, exc: BadRequest):
        return error(exc.status, exc.msg)

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "model": pred.model_path.name, "engine": pred.engine.name}

    @app.post("/api/classify")
    async def classify(request: Request) -> dict:
        """How the page should send the files a user chose: one study, or separate images (file names only).

        Body: a JSON list of at most 20,000 file names."""
        from ..studies import classify_names

        try:
            names = json.loads(await request.body())
        except ValueError:
            raise BadRequest(422, "send a JSON list of file names") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest(422, "send a JSON list of file names")
        if len(names) > MAX_CLASSIFY_NAMES:
            raise BadRequest(422, f"{len(names):,} names; at most {MAX_CLASSIFY_NAMES:,} files can be opened at once")
        return {"kind": classify_names(names)}

    @app.get("/api/model")
    def model_info() -> dict:
        return pred.info()

    @app.post("/api/segment")
    async def segment(file: UploadFile = File(...), threshold: float | None = Form(None), tta: bool = Form(False)):
        """Segment one 2D image. Returns PNGs (base64) of the image, probability map and mask."""
        name, data = await upload(file, threshold)
        lower = name.lower()
        if lower.endswith((".nii", ".nii.gz", ".zip", ".dcm")):
            return error(400, f"{name}: this is a study; send it to /api/study")
        from starlette.concurrency import run_in_threadpool

        r = await run_in_threadpool(pred.predict, data, tta, threshold, None, name)
        summary = {k: v for k, v in r.summary().items() if k != "source"}  # the CLI's numbers, one home
        body = {
            "result_id": remember("image", r, name),
            "filename": name,
            **summary,
            "image_png": _b64png(r.image),
            "prob_png": _b64png(r.prob_png_array()),
            "mask_png": _b64png(r.mask_png_array()),
            "model": {"model": pred.model_path.name, "engine": pred.engine.name},  # the rest: GET /api/model
            "disclaimer": DISCLAIMER,
        }
        if r.uncertainty is not None:
            body["uncertainty_png"] = _b64png((r.uncertainty.clip(0, 0.5) * 510).astype(np.uint8))
        return body

    @app.post("/api/study")
    async def study(
        file: UploadFile | None = File(None),
        files: list[UploadFile] | None = File(None),
        threshold: float | None = Form(None),
        series: str | None = Form(None),
        spacing: str | None = Form(None),
    ):
        """Segment a whole study: one .zip (DICOM series or slice images) or NIfTI file in ``file``, or
        several files in ``files`` (a DICOM series, a patient folder's numbered slices, or one NIfTI per
        sequence). ``spacing`` = "ROW,COL,SLICE" mm for slice stacks, which carry no geometry."""
        from starlette.concurrency import run_in_threadpool

        sp_mm = None
        if spacing:
            try:
                sp_mm = tuple(float(x) for x in spacing.split(","))
                assert len(sp_mm) == 3
            except (ValueError, AssertionError):
                return error(422, f"spacing must be ROW,COL,SLICE in mm, got {spacing!r}")

        if file is not None:
            name, data = await upload(file, threshold)
            lower = name.lower()
            if not lower.endswith((".nii", ".nii.gz", ".zip")):
                return error(400, f"{name}: a study must be a .zip, .nii or .nii.gz file")
            members = None
        elif files:
            members, total = [], 0
            for f in files:
                n, d = await upload(f, threshold)
                total += len(d)
                if total > cap:
                    raise UploadTooLarge()
                members.append((n, d))
            prefix = os.path.commonprefix([n for n, _ in members]).rstrip("_-. 0123456789")
            name, lower = (prefix or f"{len(members)} files"), ""
        else:
            return error(422, "send a study as 'file' (.zip, .nii, .nii.gz) or a series as 'files'")

        def run():
            with tempfile.TemporaryDirectory(prefix="tumorseg-") as tmp:
                if members is not None:
                    p = Path(tmp) / "series"
                    p.mkdir()
                    for i, (n, d) in enumerate(members):
                        (p / f"{i:05d}_{n}").write_bytes(d)
                else:
                    p = Path(tmp) / name
                    p.write_bytes(data)
                return pred.predict_study(p, series=series, threshold=threshold, spacing=sp_mm)

        sp = await run_in_threadpool(run)
        sp.study.source = name  # the client's name, never the server's temporary path
        return study_response(sp, name)

    def study_response(sp, name: str) -> dict:
        """What /api/study and /api/pacs/open answer: the held result, measurements and every slice's PNGs."""
        slices = [
            {
                "name": Path(sp.study.names[k]).name,
                "image_png": _b64png(sp.images[k]),
                "prob_png": _b64png((sp.prob[k] * 255 + 0.5).astype(np.uint8)),
                "tumour_pixels": int(sp.mask[k].sum()),
            }
            for k in range(sp.study.n_slices)
        ]
        return {
            "result_id": remember("study", sp, name),
            "filename": name,
            "threshold": sp.threshold,
            "measurements": sp.summary(),
            "slices": slices,
            "spacing": sp.study.spacing,
            "model": {"model": pred.model_path.name, "engine": pred.engine.name},
            "disclaimer": DISCLAIMER,
        }

    from ..pacs import PacsError

    @app.exception_handler(PacsError)
    async def _pacs_error(request, exc):
        return error(502, str(exc))

    def _result(rid: str, threshold: float | None):
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise BadRequest(422, f"threshold must be between 0 and 1, got {threshold}")
        with results_lock:
            held = results.get(rid)
        if held is None:
            raise BadRequest(
                404,
                f"result {rid!r} is not held here (the server keeps the last {MAX_RESULTS} results, "
                f"{MAX_RESULT_BYTES >> 20} MB at most, in memory only); open the file again",
            )
        kind, obj, name, _ = held
        if kind == "image":
            return kind, pred.rethreshold(obj, threshold), name
        return kind, pred.finish_study(obj.study, obj.images, obj.prob, obj.uncertainty, threshold), name

    from .pacs_routes import pacs_router

    app.include_router(pacs_router(pred, dicomweb, study_response, _result))

    @app.post("/api/mask")
    async def mask(result_id: str = Form(...), threshold: float | None = Form(None), slice: int = Form(0)):
        """The model's mask of a held result at another threshold: the same post-processing as the CLI.

        The page re-draws instantly in the browser, then takes its counts, volume and downloads from here.
        """
        from starlette.concurrency import run_in_threadpool

        kind, r, name = await run_in_threadpool(_result, result_id, threshold)  # finish_study is CPU work
        if kind == "image":
            return {
                "threshold": r.threshold,
                "tumour_pixels": r.area_pixels,
                "area_mm2": r.area_mm2,
                "mask_png": _b64png(r.mask_png_array()),
            }
        k = _slice_index(slice, r.mask.shape[0])
        return {
            "threshold": r.threshold,
            "slice": k,
            "tumour_pixels": int(r.mask[k].sum()),
            "mask_png": _b64png(r.mask[k].astype(np.uint8) * 255),
            "measurements": r.summary(),
        }

    @app.post("/api/compare")
    async def compare(result_id: str = Form(...), threshold: float | None = Form(None), file: UploadFile = File(...)):
        """Compare a held result with the user's reference mask: Dice, volumes, the slices that disagree most,
        and the reference as PNG masks for the page's second contour."""
        from starlette.concurrency import run_in_threadpool

        from ..metrics import compare_masks
        from ..studies import read_reference

        name, data = await upload(file, threshold)
        kind, r, _ = await run_in_threadpool(_result, result_id, threshold)

        notes: list[str] = []

        def run():
            with tempfile.TemporaryDirectory(prefix="tumorseg-") as tmp:
                f = Path(tmp) / name
                f.write_bytes(data)
                if kind == "study":
                    ref = read_reference(f, r.study, name, notes)
                    return ref, {**compare_masks(r.mask, ref, r.study.spacing), "notes": notes}
                ref = read_reference(f, r.mask.shape, name)
                return ref, compare_masks(r.mask, ref)

        ref, res = await run_in_threadpool(run)
        pngs = [_b64png(m.astype(np.uint8) * 255) for m in (ref if ref.ndim == 3 else [ref])]
        return {"reference": name, "threshold": r.threshold, **res, "reference_png": pngs}

    @app.get("/api/result/{result_id}/mask.png")
    def mask_png(result_id: str, threshold: float | None = None, slice: int = 0):
        """The CLI's ``<name>_mask.png`` (for a study: one slice of its mask)."""
        kind, r, name = _result(result_id, threshold)
        arr = r.mask_png_array() if kind == "image" else r.mask[_slice_index(slice, r.mask.shape[0])] * np.uint8(255)
        stem = _stem(name) + ("" if kind == "image" else f"_slice{slice + 1:04d}")
        return Response(
            encode_png(arr),
            media_type="image/png",
            headers={"Content-Disposition": f'attachment; filename="{stem}_mask.png"'},
        )

    @app.get("/api/result/{result_id}/study.zip")
    def study_zip(result_id: str, threshold: float | None = None):
        """The CLI's study folder (mask.nii.gz, DICOM-SEG for DICOM input, study.json, overlays) as one zip."""
        kind, r, name = _result(result_id, threshold)
        if kind != "study":
            raise BadRequest(400, f"{name}: not a study")
        from ..studies import write_study_outputs

        stem = _stem(name)
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
            headers={"Content-Disposition": f'attachment; filename="{stem}_tumorseg.zip"'},
        )

    @app.get("/api/result/{result_id}/{filename}")
    def study_file(result_id: str, filename: str, threshold: float | None = None):
        """One of the CLI's study outputs: ``mask.nii.gz`` (input geometry) or ``mask_seg.dcm`` (DICOM input)."""
        if filename not in ("mask.nii.gz", "mask_seg.dcm"):
            raise BadRequest(404, f"{filename}: not a study output (mask.nii.gz, mask_seg.dcm, study.zip)")
        kind, r, name = _result(result_id, threshold)
        if kind != "study":
            raise BadRequest(400, f"{name}: not a study")
        if filename == "mask_seg.dcm" and r.study.kind != "dicom":
            raise BadRequest(400, f"{name}: DICOM-SEG needs DICOM input; download mask.nii.gz")
        from ..studies import dicom_seg_bytes, mask_nifti_gz_bytes

        stem = _stem(name)
        if filename == "mask.nii.gz":
            data = mask_nifti_gz_bytes(r)
        else:
            try:
                data = dicom_seg_bytes(r)
            except Exception as exc:
                raise BadRequest(500, f"{name}: {filename} could not be written ({type(exc).__name__}: {exc})") from exc
        media = "application/gzip" if filename.endswith(".gz") else "application/dicom"
        return Response(
            data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{stem}_{filename}"'}
        )

    static = Path(str(resources.files("tumorseg") / "app" / "static"))
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(static / "index.html", headers={"Cache-Control": "no-store"})

    guard_app = RequestGuard(app, cap, body_timeout, max_concurrent, allowed_hosts)
    guard_app.state = app.state  # tests and callers reach the predictor as before
    return guard_app


def allowed_host_names(host: str, extra: list[str] | None = None) -> set[str] | None:
    """Host header names to answer: the bound name and the loopback names (DNS-rebinding defence).

    None (any) for a wildcard bind without ``extra``: the operator exposed the server on purpose.
    """
    if host in ("0.0.0.0", "::") and not extra:
        return None
    names = {host.lower().strip("[]")} | (LOCAL_HOSTS if host in LOCAL_HOSTS else set())
    return names | {h.lower() for h in (extra or [])}


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | None = None,
    engine: str | None = None,
    open_browser: bool = True,
    token: str | None = None,
    max_upload_mb: float = 50.0,
    allow_hosts: list[str] | None = None,
    dicomweb=None,
) -> None:
    import socket

    import uvicorn

    try:  # a busy port is one clear line, before the model loads
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as sk:
            sk.bind((host, port))
    except OSError as exc:
        raise OSError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc} (is another tumorseg app running? "
            "choose another --port)"
        ) from None
    if host not in LOCAL_HOSTS:
        bar = "!" * 78
        print(
            f"{bar}\nWARNING: serving on {host}, reachable from other machines. Patient images sent to this\n"
            f"server cross the network.{'' if token else ' No --token is set: anyone who can reach it can use it.'}\n"
            f"{bar}",
            file=sys.stderr,
        )
    app = create_app(
        model=model,
        engine=engine,
        token=token,
        max_upload_mb=max_upload_mb,
        allowed_hosts=allowed_host_names(host, allow_hosts),
        dicomweb=dicomweb,
    )
    if dicomweb is not None:
        print(f"PACS: {dicomweb.url} (studies listed in the page; credentials stay on this server)", file=sys.stderr)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    pred = app.state.predictor
    print(
        f"tumorseg {__version__} at {url}  (API docs: {url}docs)\n{pred.engine_line()}\n{DISCLAIMER}",
        file=sys.stderr,
    )
    if open_browser:
        threading.Timer(1.2, lambda: webbrowser.open(url)).start()
    # SIGTERM/Ctrl+C: in-flight requests get a few seconds, then the server stops even mid-inference.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
