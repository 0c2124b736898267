"""Local web app and REST API. Front end only: every prediction goes through the Predictor.

Privacy by default: binds 127.0.0.1, keeps uploads in memory (or a temporary folder that
is deleted before the response), writes nothing, logs no file names, CORS closed.
"""

from __future__ import annotations

import logging
import sys
import threading
import webbrowser
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..errors import ImageReadError
from ..inference import DISCLAIMER, Predictor
from ..version import __version__
from .common import BadRequest, UploadTooLarge, failure, public_message
from .guard import RequestGuard
from .results import ResultStore

log = logging.getLogger("tumorseg.app")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class LoadingPredictor:
    """The app's Predictor while it loads in a thread of its own (on a fresh machine the engine choice loads and
    times every candidate, seconds): the page and /api/health answer at once; anything that needs the model
    waits for it (up to ``LOAD_WAIT_S``, then a 503 saying it is still loading). A failed load is the same
    error every time, never a hung request."""

    LOAD_WAIT_S = 120.0

    def __init__(self, factory) -> None:
        self._ready = threading.Event()
        self._pred = None
        self._error: BaseException | None = None

        def load() -> None:
            try:
                self._pred = factory()
            except BaseException as exc:  # reported to every request, and by serve
                self._error = exc
            finally:
                self._ready.set()

        threading.Thread(target=load, name="tumorseg-model-load", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._error is None

    def wait(self, timeout: float | None = None):
        if not self._ready.wait(self.LOAD_WAIT_S if timeout is None else timeout):
            raise BadRequest(503, "the model is still loading (the first start measures this machine's engines)")
        if self._error is not None:
            raise BadRequest(503, f"the model could not be loaded: {self._error}")
        return self._pred

    def __getattr__(self, name: str):
        return getattr(self.wait(), name)


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
        dicomweb: a ``pacs.PacsConfig`` to list, open and store studies in a PACS.
    Returns:
        The ASGI app (the FastAPI app behind a :class:`RequestGuard`; the FastAPI app is ``.app``).
    """
    from .followup_routes import followup_router
    from .pacs_routes import pacs_router
    from .routes import download_router, held_router, image_router, meta_router, study_router, view_router

    pred = predictor or LoadingPredictor(lambda: Predictor(model, engine=engine))
    cap = int(max_upload_mb * 1024 * 1024)
    store = ResultStore(pred)
    app = FastAPI(
        title="tumorseg",
        version=__version__,
        description=f"Brain-tumour segmentation in MRI. {DISCLAIMER}",
        docs_url=None,  # served below from this app's own files: the API page works offline, as the page does
        redoc_url=None,
    )
    app.state.predictor = pred
    app.state.results = store  # what is held, and its counted bytes (benchmarks/app_memory.py)
    _install_error_handling(app, max_upload_mb)
    app.include_router(meta_router(pred))
    app.include_router(image_router(pred, store, cap))
    from .guard import ModelSlots
    from .jobs import JobStore

    slots = ModelSlots(max_concurrent)  # requests and jobs share them
    jobs = JobStore(slots)  # long studies (files or the PACS) with progress and cancel
    studies, study_response = study_router(pred, store, cap, jobs)
    app.include_router(studies)
    app.include_router(pacs_router(pred, dicomweb, study_response, store.get, jobs))
    app.include_router(followup_router(pred, store, cap, jobs))
    app.include_router(held_router(pred, store, cap))
    app.include_router(view_router(store))
    app.include_router(download_router(pred, store))
    _offline_api_docs(app)  # before /static, which would otherwise take /static/swagger's paths
    static = Path(str(resources.files("tumorseg") / "app" / "static"))
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(static / "index.html", headers={"Cache-Control": "no-store"})

    guard_app = RequestGuard(app, cap, body_timeout, max_concurrent, allowed_hosts, token=token, slots=slots)
    guard_app.state = app.state  # tests and callers reach the predictor as before
    return guard_app


def _offline_api_docs(app) -> None:
    """``/docs``: Swagger UI from the swagger-ui-bundle wheel (its JS, CSS and favicon served by this app), so the
    footer's API link works on a machine without internet and nothing is fetched from another host."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="tumorseg API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def _install_error_handling(app: FastAPI, max_upload_mb: float) -> None:
    """One JSON error shape for every failure, never a traceback (the token and size checks: ``RequestGuard``)."""
    from fastapi.exceptions import RequestValidationError

    from ..pacs.config import InvalidUID, PacsError

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": public_message(msg), "status": status})

    @app.middleware("http")
    async def no_tracebacks(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as exc:  # never a bare 500 with a traceback to the client
            log.error("unexpected error: %s", type(exc).__name__)
            return error(*failure(exc))

    @app.exception_handler(UploadTooLarge)
    async def _too_large(request, exc):
        return error(413, f"upload is larger than the {max_upload_mb:g} MB limit")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, exc):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', []))}: {e.get('msg')}" for e in exc.errors()]
        return error(422, "invalid request: " + "; ".join(parts))

    async def _known(request, exc):
        return error(*failure(exc))

    for kind in (ImageReadError, BadRequest, PacsError, InvalidUID):
        app.add_exception_handler(kind, _known)


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
            # as uvicorn binds: a port left in TIME_WAIT by the last run's clients is free to serve again
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sk.bind((host, port))
    except OSError as exc:
        raise OSError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc} (another program, perhaps another tumorseg "
            "app, is listening there; choose another --port)"
        ) from None
    if host not in LOCAL_HOSTS:
        bar = "!" * 78
        print(
            f"{bar}\nWARNING: serving on {host}, reachable from other machines. Patient images sent to this\n"
            f"server cross the network.{'' if token else ' No --token is set: anyone who can reach it can use it.'}\n"
            f"{bar}",
            file=sys.stderr,
        )
    from ..engines.bundled import resolve_model

    resolve_model(model)  # a missing or unreadable --model is one line now, not a 503 on every request later
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
    print(f"tumorseg {__version__} at {url}  (API docs: {url}docs)\n{DISCLAIMER}", file=sys.stderr)

    def say_engine() -> None:  # the page serves while the model loads; its engine line follows when ready
        try:
            print(pred.wait(timeout=600).engine_line(), file=sys.stderr)
        except BadRequest as exc:
            print(f"tumorseg app: error: {exc.msg}", file=sys.stderr)

    threading.Thread(target=say_engine, daemon=True).start()
    if open_browser:
        threading.Timer(1.2, lambda: webbrowser.open(url)).start()
    # SIGTERM/Ctrl+C: in-flight requests get a few seconds, then the server stops even mid-inference.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
