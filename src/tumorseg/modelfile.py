"""A model file's header, read without PyTorch: what the runtime needs to pick an engine."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelFileError


def model_file_meta(path: str | os.PathLike) -> dict:
    """A .safetensors model's tumorseg metadata from its header alone (no PyTorch, no weights read)."""
    import json
    import struct

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(fh.read(n))
        return json.loads(header["__metadata__"]["tumorseg"])
    except FileNotFoundError:
        raise ModelFileError(f"{p}: model file not found") from None
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        raise ModelFileError(f"{p}: not a tumorseg model file (no readable safetensors header with metadata)") from None
