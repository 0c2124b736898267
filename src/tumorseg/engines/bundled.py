"""The model files that ship inside the package, and the one checksum that identifies any model file.

The bundled default.safetensors and its int8 ONNX file are checked against default.json's sha256 records before
they are used, so a corrupted installation is refused instead of giving quietly wrong maps.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from ..errors import ModelFileError
from ..imaging.files import file_sha256


def bundled_model_path() -> Path:
    return Path(str(resources.files("tumorseg") / "models" / "default.safetensors"))


def bundled_info() -> dict:

    info_path = bundled_model_path().with_suffix(".json")
    return json.loads(info_path.read_text()) if info_path.is_file() else {}


def bundled_int8() -> tuple[Path | None, str]:
    """The bundled int8 file where it passed the packaging check and is intact, else (None, why)."""
    info = bundled_info()
    q8 = info.get("int8") or {}
    if not q8.get("passed"):
        return None, "no int8 file passed the validation check at packaging"
    q = bundled_model_path().with_name(q8["file"])
    if not q.is_file():
        return None, f"{q.name} is missing from this installation"
    if file_sha256(q) != q8["sha256"]:
        name = bundled_model_path().with_suffix(".json").name
        raise ModelFileError(f"{q}: sha256 does not match {name}; the bundled int8 model is corrupted")
    return q, "passed the packaging check"


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A model file path; None means the bundled default, whose sha256 is checked."""
    if model is not None:
        p = Path(model)
        if not p.is_file():
            raise ModelFileError(f"{p}: model file not found")
        return p
    p = bundled_model_path()
    if not p.is_file():
        raise ModelFileError(f"{p}: the bundled default model is missing from this installation; pass --model FILE")
    info = p.with_suffix(".json")
    if info.is_file():
        want = json.loads(info.read_text()).get("sha256")
        if want and file_sha256(p) != want:
            raise ModelFileError(f"{p}: sha256 does not match {info.name}; the bundled model is corrupted")
    return p


def model_checksum(model: str | os.PathLike | None) -> str:
    """The sha256 that identifies a model file (the bundled one: checked against default.json's record)."""
    path = resolve_model(model)
    return (bundled_info().get("sha256") if model is None else None) or file_sha256(path)
