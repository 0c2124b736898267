"""Writing files so that readers never see half of one, never over an input, and checksums computed once."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old or the new content, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the user's usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_SHA256_SEEN: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, computed once per process for an unchanged file (same path, size and mtime):
    starting a Predictor checks the bundled files, and the engine choice and batch runs key on the same sums."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_SEEN:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _SHA256_SEEN[key] = h.hexdigest()
    return _SHA256_SEEN[key]


def inside(p: Path, folder: Path) -> bool:
    """``p`` is ``folder`` or lies under it (both resolved by the caller)."""
    return p == folder or folder in p.parents


def out_touches_input(out: str | os.PathLike, inputs) -> str | None:
    """Why an output folder could let an output replace an input or land inside one, or None: ``out`` is (or lies
    inside) an input folder, or it is the folder an input file lies in (an output's name could be the input's).
    The one rule behind every command's --out (predict's runs, follow-up); ``inputs``: paths (URLs are skipped)."""
    out_r = Path(out).resolve()
    for src in inputs:
        if not isinstance(src, (str, os.PathLike)) or "://" in str(src):
            continue
        p = Path(src).resolve()
        if p.is_dir() and inside(out_r, p):
            return f"lies inside the input {src}"
        if p.is_file() and out_r == p.parent:
            return f"is the folder of the input {src}"
    return None


def same_file(a, b) -> bool:
    """``a`` and ``b`` name one existing file (links and relative paths resolved); False for anything not a path."""
    try:
        return Path(a).resolve() == Path(b).resolve() and Path(a).exists()
    except (OSError, TypeError):
        return False
