"""What every endpoint shares: its errors, reading an upload within the cap, names safe to use."""

from __future__ import annotations

import base64
import re
import tempfile
from pathlib import Path

import numpy as np
from fastapi import UploadFile

from ..errors import ImageReadError
from ..imaging.images import encode_png
from ..model.input_checks import CannotJudge
from ..studies import strip_extension


class UploadTooLarge(Exception):
    pass


class BadRequest(Exception):
    def __init__(self, status: int, msg: str):
        self.status, self.msg = status, msg


def b64png(arr: np.ndarray) -> str:
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


_TEMP_PATH = re.compile(re.escape(tempfile.gettempdir()) + r"/tumorseg-[^/\s]+/(?:series/|slices/)?")


def public_message(msg: str) -> str:
    """An error message without the server's temporary paths (the client knows its own file names)."""
    return _TEMP_PATH.sub("", msg)


def failure(exc: BaseException) -> tuple[int, str]:
    """(status, message) a client gets for a failure: the one mapping shared by the server's exception
    handlers and the background jobs (which have no request to hand to FastAPI's handlers)."""
    from ..errors import FollowUpError
    from ..pacs.config import InvalidUID, PacsError

    if isinstance(exc, BadRequest):
        return exc.status, public_message(exc.msg)
    if isinstance(exc, (InvalidUID, FollowUpError)):  # the request's fault, not the archive's nor ours
        return 400, public_message(str(exc))
    if isinstance(exc, PacsError):
        return 502, public_message(str(exc))
    if isinstance(exc, ImageReadError):
        return (422 if isinstance(exc, CannotJudge) else 400), public_message(str(exc))
    return 500, f"internal error ({type(exc).__name__}); the server is still running"


def upload_stem(name: str) -> str:
    """A download's name stem: the study's name as the CLI names it (``studies.strip_extension``)."""

    return strip_extension(name or "") or "study"


def attachment(filename: str) -> dict[str, str]:
    """The Content-Disposition header of a download named ``filename`` in any alphabet (RFC 6266 / 5987): an
    ASCII fallback (quotes, backslashes, control characters and anything non-ASCII replaced) and the exact
    name UTF-8-encoded, so a Polish, Cyrillic or CJK study name downloads, and nothing from a name (a quote, a
    CR-LF) can add parameters or headers."""
    from urllib.parse import quote

    clean = "".join(c if c.isprintable() else "_" for c in filename)
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in clean) or "download"
    return {"Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(clean, safe='')}"}


def _safe_name(name: str | None) -> str:
    """A client's file name, safe as a temporary file name: never empty, '.', '..' or hidden."""
    base = Path((name or "upload").replace("\\", "/")).name
    return "".join(c if c.isalnum() or c in "-_. " else "_" for c in base)[:120].lstrip(". ") or "upload"


def requested_slice(k: int, n: int) -> int:
    if not 0 <= k < n:
        raise BadRequest(422, f"slice {k} is out of range: the study has slices 0 to {n - 1}")
    return k


async def read_upload(file: UploadFile, threshold: float | None, cap: int) -> tuple[str, bytes]:
    """(safe name, bytes) of one uploaded file, checked: threshold in 0..1, not empty, within ``cap``."""
    name = _safe_name(file.filename)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise BadRequest(422, f"threshold must be between 0 and 1, got {threshold}")
    data = await _read_capped(file, cap)
    if not data:
        raise ImageReadError(name, "file is empty (0 bytes)")
    return name, data
