"""Display in patient space: where each displayed voxel is (RAS mm), how a slice is turned to the
radiological convention, and the study's volumes as NIfTI files a field viewer (NiiVue) opens.

Every study is held as slices (k) of images (row r, column c) as the model saw them. ``display_affine``
maps (c, r, k) to RAS+ mm for every kind of input (NIfTI, DICOM, slice stacks with a spacing); the page's
canvas view and the three-plane view both take their geometry from it, so they cannot disagree.
"""

from __future__ import annotations

import gzip
import itertools

import numpy as np

CONVENTIONS = ("radiological", "neurological")


def display_affine(st) -> tuple[np.ndarray, bool]:
    """(4x4 affine from (column, row, slice) of the study's slices to RAS+ mm, known?).

    Unknown geometry (slice images without a spacing) is taken as stored with 1 mm voxels, axial and
    radiological (the patient's right on the image's left, anterior up), which is how TCGA slices and
    most exported slice images are written; ``known`` is then False and the page says so.
    """
    if st.affine is not None and st.kind == "nifti":
        # slice image = flipud(array[:, :, k].T): (c, r, k) -> array index (i=c, j=ny-1-r, k)
        ny = st.volume.shape[1]
        flip = np.array([[1, 0, 0, 0], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        return np.asarray(st.affine, float) @ flip, True
    if st.affine is not None and st.kind == "dicom":
        return np.asarray(st.affine, float), True
    sp = st.spacing or (1.0, 1.0, 1.0)
    # as stored, radiological axial: column -> patient left (-R), row -> posterior (-A), slice -> superior. Slice
    # images carry no orientation, and a voxel size typed for them gives none: the orientation stays assumed.
    known = st.kind not in ("slices",) and st.spacing is not None and st.affine is not None
    return np.diag([-sp[2], -sp[1], sp[0], 1.0]), known


def axis_label(v: np.ndarray) -> str:
    """The anatomical direction (RAS+ world) a vector points to most."""
    k = int(np.argmax(np.abs(v)))
    return ("L", "P", "I")[k] if v[k] < 0 else ("R", "A", "S")[k]


def plane_of(affine: np.ndarray) -> str:
    """axial, coronal or sagittal: which world axis the slice normal points along most."""
    normal = affine[:3, 2]
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


# screen right / screen down for each plane, radiological (neurological mirrors left-right)
_TARGET = {"axial": ("L", "P"), "coronal": ("L", "I"), "sagittal": ("P", "I")}
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def display_transform(st, convention: str = "radiological") -> dict:
    """How the page turns a stored slice so it shows in ``convention``: transpose, then flip x/y.

    Returns the flags, the plane, the edge labels after turning and ``known`` (False: geometry assumed).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    a, known = display_affine(st)
    plane = plane_of(a)
    want_right, want_down = _TARGET[plane]
    if convention == "neurological" and plane != "sagittal":
        want_right = _OPPOSITE[want_right]
    col, row = a[:3, 0], a[:3, 1]
    best = None
    for transpose, fx, fy in itertools.product((False, True), repeat=3):
        right, down = (row, col) if transpose else (col, row)
        right, down = (-right if fx else right), (-down if fy else down)
        score = (axis_label(right) == want_right) + (axis_label(down) == want_down)
        if best is None or score > best[0]:
            best = (score, transpose, fx, fy, axis_label(right), axis_label(down))
    _, transpose, fx, fy, right, down = best
    return {
        "plane": plane,
        "convention": convention,
        "transpose": transpose,
        "flip_x": fx,
        "flip_y": fy,
        "labels": {"right": right, "left": _OPPOSITE[right], "bottom": down, "top": _OPPOSITE[down]},
        "known": known,
    }


def turned(arr: np.ndarray, t: dict) -> np.ndarray:
    """A stored slice (H x W [x C]) turned as the page shows it (``display_transform``'s flags: transpose,
    then flip x/y): the one rule for the screen, the PNG downloads and the CLI's overlays."""
    if t.get("transpose"):
        arr = arr.swapaxes(0, 1)
    if t.get("flip_x"):
        arr = arr[:, ::-1]
    if t.get("flip_y"):
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


def unturned(arr: np.ndarray, t: dict) -> np.ndarray:
    """``turned`` undone: a picture of a turned slice (a probability map) back on the stored grid."""
    if t.get("flip_y"):
        arr = arr[::-1]
    if t.get("flip_x"):
        arr = arr[:, ::-1]
    if t.get("transpose"):
        arr = arr.swapaxes(0, 1)
    return np.ascontiguousarray(arr)


def model_turn(st) -> dict:
    """How a study's stored slices are turned before the network: upright as the training slices lie
    (axial, anterior up, the patient's right on the left: the page's radiological turn) where the geometry is
    known; not at all where it is assumed (slice folders carry none and are stored upright already). The
    one rule for inference and for training on studies (research/orientation: fed upside down, the bundled
    model found less of the tumour on most BraTS files)."""
    t = display_transform(st, "radiological")
    if not t["known"]:
        return {"transpose": False, "flip_x": False, "flip_y": False}
    return {k: t[k] for k in ("transpose", "flip_x", "flip_y")}


def display_turn(st, convention: str = "radiological") -> dict:
    """What a picture of ``st``'s slices written for people records (study.json's ``display``): the
    convention, the turn and the edge labels after it."""
    t = display_transform(st, convention)
    return {k: t[k] for k in ("convention", "plane", "transpose", "flip_x", "flip_y", "labels", "known")}


def raw_units(st) -> list | None:
    """Per channel (slope, intercept): the displayed 0..255 value back to the input's own units (NIfTI
    values, DICOM after its rescale), so window/level can be read as the scanner wrote them; None where
    the input has no such units (slice images are already 0..255)."""
    if not st.raw_scale or len(st.raw_scale) != 3:
        return None
    gains = st.intensity_gains or [1.0, 1.0, 1.0]
    return [[(hi - lo) / (255.0 * g), lo] for (lo, hi), g in zip(st.raw_scale, gains)]


def file_index_affine(st) -> np.ndarray:
    """RAS+ mm -> the input file's own voxel indices (i, j, k as stored: what nibabel, ITK-SNAP and 3D Slicer show):
    the inverse of a NIfTI's own affine; for DICOM and slice folders the (column, row, slice) of the sorted
    series, which is the file's own order."""
    if st.affine is not None and st.kind == "nifti":
        return np.linalg.inv(np.asarray(st.affine, float))
    return np.linalg.inv(display_affine(st)[0])


def file_index(st, ras_mm) -> tuple[int, int, int]:
    """The input file's voxel index (i, j, k) of a point in RAS+ mm (nearest voxel)."""
    v = file_index_affine(st) @ np.array([*ras_mm[:3], 1.0])
    return tuple(int(x) for x in np.rint(v[:3]))


def geometry(st) -> dict:
    """What the page needs to show a study in patient space (JSON-ready)."""
    a, known = display_affine(st)
    units = raw_units(st)
    return {
        "units": [[round(x, 6) for x in u] for u in units] if units else None,
        "affine": [[round(float(x), 6) for x in row] for row in a],
        # RAS+ mm -> the file's own voxel index, so every view shows the index other tools show for that point
        "file_index": [[round(float(x), 9) for x in row] for row in file_index_affine(st)],
        "known": known,  # the orientation (and so the RAS coordinates) is the file's own, not assumed
        "spacing_known": st.spacing is not None,  # the voxel size is known (a file's, or typed for slices)
        "coordinates": "RAS+ mm (x: towards the patient's right, y: anterior, z: superior)",
        "radiological": display_transform(st, "radiological"),
        "neurological": display_transform(st, "neurological"),
    }


def volume_nifti_gz(st, vol: np.ndarray, scale: tuple[float, float] | None = None) -> bytes:
    """One of the study's volumes (slices x rows x columns, as held) as a gzipped NIfTI-1 file in patient
    space (array (column, row, slice), ``display_affine``), for a viewer that displays from the affine.

    ``scale`` = (slope, intercept) recorded so a viewer shows the stored integers in their own units."""
    import nibabel as nib

    a, _ = display_affine(st)
    arr = np.ascontiguousarray(np.transpose(vol, (2, 1, 0)))
    img = nib.Nifti1Image(arr, a)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(a, code=1)
    img.header.set_sform(a, code=1)
    if scale is not None:
        img.header.set_slope_inter(*scale)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def voxel_ml(spacing) -> float | None:
    """One voxel's volume in mL from its spacing in mm (any order: a product); None without a spacing. The one
    home of the conversion every volume in the product uses (measurements, comparisons, follow-up, evaluation)."""
    return float(np.prod(spacing)) / 1000.0 if spacing is not None and len(spacing) else None
