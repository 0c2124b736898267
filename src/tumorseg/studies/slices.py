"""Stacks of numbered 2D slices (the kaggle_3m patient folders), from files or bytes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ..imaging.images import read_image, to_uint8_rgb
from ..imaging.limits import MAX_STUDY_SLICES, check_model_time
from .core import SINGLE_SEQUENCE_NOTE, Study, StudyError
from .names import is_slice_image


def read_slices(items: list[tuple[str, object]], source: str) -> Study:
    """A stack of numbered 2D slices (``<name>_<n>.<ext>``, masks skipped), from paths or bytes."""
    rows = []
    for name, src in items:
        if not is_slice_image(name):
            continue
        m = re.search(r"_(\d+)$", Path(name).stem)
        rows.append((int(m.group(1)) if m else 0, Path(name).name, src))
    if not rows:
        raise StudyError(source, "holds no image slices")
    if len(rows) > MAX_STUDY_SLICES:
        raise StudyError(source, f"holds {len(rows):,} slices, over the limit of {MAX_STUDY_SLICES:,}")
    rows.sort(key=lambda r: (r[0], r[1]))
    slices = []
    for _, name, src in rows:
        arr = read_image(src) if isinstance(src, Path) else read_image(f"{source}/{name}", data=src)
        slices.append(to_uint8_rgb(arr))
        if slices[0].shape != slices[-1].shape:
            raise StudyError(source, f"slices differ in size: {slices[0].shape} and {slices[-1].shape} ({name})")
    try:
        got = sum(s.stat().st_size if isinstance(s, Path) else len(s) for _, _, s in rows)
        check_model_time(source, len(slices), slices[0].shape[0], slices[0].shape[1], got, "slice stack")
    except ImageReadError as exc:
        raise StudyError(source, exc.reason) from None
    vol = np.stack(slices)
    # one warning rule for a missing sequence, as for a single image and a single-sequence study: grey slices
    # (the three channels equal everywhere) are one sequence copied into three
    grey = bool(np.array_equal(vol[..., 0], vol[..., 1]) and np.array_equal(vol[..., 1], vol[..., 2]))
    notes = [
        "No voxel spacing is stored in this format: volumes are reported in voxels only (give the voxel size "
        "ROW,COL,SLICE in mm: --spacing in the CLI, 'Voxel (mm)' on the page)."
    ]
    if grey:
        notes.append(SINGLE_SEQUENCE_NOTE)
    return Study(source, "slices", vol, None, [name for _, name, _ in rows], single_sequence=grey, notes=notes)
