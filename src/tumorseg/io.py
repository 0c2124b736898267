"""Reading and writing 2D images and masks.

Every reader raises :class:`ImageReadError` naming the file and the reason, so that
front ends can report a bad file in one line and carry on with the others.
"""

from __future__ import annotations

import hashlib
import io as _io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Refuse anything larger than this many pixels before decoding it: a 20 kB PNG can
# declare 100k x 100k pixels and exhaust memory (a "decompression bomb").
MAX_PIXELS = 64_000_000
# Every input is judged by its declared decoded size before it is decoded (one home for the rule):
# never more than MAX_DECODED_BYTES, and above FREE_DECODED_BYTES never more than MAX_EXPANSION times
# the bytes it arrived as, so that a few kilobytes cannot cost gigabytes.
MAX_DECODED_BYTES = int(float(os.environ.get("TUMORSEG_MAX_DECODED_MB", "1024")) * 2**20)
FREE_DECODED_BYTES = 16 * 2**20
MAX_EXPANSION = 20
MAX_SAMPLES_PER_PIXEL = 4
# The working copies count too (RGB copy, float temporaries, full-resolution probabilities, overlays):
# segmenting a 2D image peaks at ~28 bytes per pixel (tracemalloc, 3000x3000 PNG; the test
# test_working_set_of_a_large_image_stays_in_budget keeps it under this figure). A request may use
# up to FREE_WORKING_BYTES, beyond that at most MAX_WORKING_EXPANSION times the bytes it arrived as:
# an upload under 1 MB can never cost more than 300 MB.
WORKING_BYTES_PER_PIXEL = 32
MAX_WORKING_BYTES = int(float(os.environ.get("TUMORSEG_MAX_WORKING_MB", "2560")) * 2**20)  # a 64 M-voxel study
FREE_WORKING_BYTES = 64 * 2**20
MAX_WORKING_EXPANSION = 300
# Model time, known from a header before decoding: slices x the model's fixed input size. A study
# has at most MAX_STUDY_SLICES slices, in-plane at least MIN_STUDY_SIDE px, and beyond FREE_SLICES
# at most SLICES_PER_MB per MB received (a real slice is tens of kB even compressed).
MAX_STUDY_SLICES = int(os.environ.get("TUMORSEG_MAX_SLICES", "2048"))
MIN_STUDY_SIDE = 32
FREE_SLICES = 256
SLICES_PER_MB = 128


class ImageReadError(ValueError):
    """A file could not be used as an image; the message names the file and why."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else "<upload>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _check_budget(
    path, amount: int, input_bytes: int | None, cap: int, free: int, ratio: int, over_cap: str, over_ratio: str
):
    """The one shape of every size rule: an absolute ceiling, and above ``free`` at most ``ratio`` times
    the bytes received. The messages are formatted with amount/input/ratio in MB and x."""
    mb = 2**20
    if amount > cap:
        raise ImageReadError(path, over_cap.format(mb=amount / mb, cap=cap / mb))
    if input_bytes and amount > free and amount > ratio * input_bytes:
        raise ImageReadError(
            path, over_ratio.format(mb=amount / mb, got=input_bytes, got_mb=input_bytes / mb, x=amount / input_bytes)
        )


def check_decoded_size(path, decoded_bytes: int, input_bytes: int | None = None, what: str = "image") -> None:
    """Refuse an input whose declared decoded size is over the budget, or far out of proportion to its file."""
    what = what.replace("{", "{{").replace("}", "}}")  # a zip member's name may hold braces
    _check_budget(
        path,
        decoded_bytes,
        input_bytes,
        MAX_DECODED_BYTES,
        FREE_DECODED_BYTES,
        MAX_EXPANSION,
        what + " would take {mb:,.0f} MB once decoded, over the {cap:,.0f} MB limit",
        what + " of {got:,} bytes declares {mb:,.0f} MB of pixels ({x:,.0f}x; a decompression bomb?)",
    )


def check_working_set(path, working_bytes: int, input_bytes: int | None, what: str) -> None:
    """Refuse work whose working memory is over the budget, or far out of proportion to the upload."""
    what = what.replace("{", "{{").replace("}", "}}")
    _check_budget(
        path,
        working_bytes,
        input_bytes,
        MAX_WORKING_BYTES,
        FREE_WORKING_BYTES,
        MAX_WORKING_EXPANSION,
        what + " needs about {mb:,.0f} MB of working memory, over the {cap:,.0f} MB limit",
        what + " needs about {mb:,.0f} MB of working memory from {got_mb:,.2f} MB received (over "
        f"{MAX_WORKING_EXPANSION}x); send it downscaled (the model sees 256x256)",
    )


def check_model_time(path, slices: int, rows: int, cols: int, input_bytes: int | None, what: str = "study") -> None:
    """Refuse a study whose model time (slices at the model's fixed input size) a few bytes could buy."""
    if min(rows, cols) < MIN_STUDY_SIDE:
        raise ImageReadError(
            path,
            f"{what} slices are {cols}x{rows} px; the model needs at least {MIN_STUDY_SIDE}x{MIN_STUDY_SIDE} "
            f"(a volume stored in another axis order, or not an image volume?)",
        )
    if slices > MAX_STUDY_SLICES:
        raise ImageReadError(path, f"{what} has {slices:,} slices, over the limit of {MAX_STUDY_SLICES:,}")
    if input_bytes and slices > FREE_SLICES and slices > SLICES_PER_MB * input_bytes / 2**20:
        raise ImageReadError(
            path,
            f"{what} declares {slices:,} slices in {input_bytes / 2**20:,.2f} MB ({input_bytes / slices:,.0f} "
            "bytes per slice): not a real image volume",
        )


def _check_dims(path, shape) -> None:
    if len(shape) < 2 or min(shape[:2]) < 1:
        raise ImageReadError(path, f"image has no pixels (shape {tuple(shape)})")
    h, w = int(shape[0]), int(shape[1])
    if h * w > MAX_PIXELS:
        raise ImageReadError(path, f"image is {w}x{h} pixels, over the limit of {MAX_PIXELS:,} pixels")


def _check_image_working_set(path, h: int, w: int, input_bytes: int) -> None:
    check_working_set(path, h * w * WORKING_BYTES_PER_PIXEL, input_bytes, f"a {w}x{h} px image")


def _read_tiff(path, data: bytes | None) -> np.ndarray:
    import tifffile

    src = _io.BytesIO(data) if data is not None else path
    try:
        with tifffile.TiffFile(src) as tif:
            if not tif.pages:
                raise ImageReadError(path, "TIFF file has no pages")
            page = tif.pages[0]
            h, w = int(page.imagelength), int(page.imagewidth)
            size = len(data) if data is not None else os.path.getsize(path)
            _check_dims(path, (h, w))
            spp = int(page.samplesperpixel)
            if spp > MAX_SAMPLES_PER_PIXEL:
                raise ImageReadError(path, f"TIFF has {spp} samples per pixel; expected 1 to {MAX_SAMPLES_PER_PIXEL}")
            depth = int(getattr(page, "imagedepth", 1) or 1)
            nbytes = h * w * spp * depth * max(1, (int(page.bitspersample) + 7) // 8)
            check_decoded_size(path, nbytes, size, "TIFF image")
            _check_image_working_set(path, h, w, size)
            arr = page.asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise ImageReadError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
    # TIFF planar configuration may put channels first.
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _read_pil(path, data: bytes | None) -> np.ndarray:
    src = _io.BytesIO(data) if data is not None else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                size = len(data) if data is not None else os.path.getsize(path)
                _check_dims(path, (im.size[1], im.size[0]))
                bpp = 4 if im.mode in ("I", "F") else 2 if im.mode.startswith("I;16") else 1
                check_decoded_size(path, im.size[0] * im.size[1] * max(1, len(im.getbands())) * bpp, size)
                _check_image_working_set(path, im.size[1], im.size[0], size)
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("1", "L;16", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("L" if im.mode == "1" else "RGB")
                elif im.mode == "LA":
                    im = im.convert("RGBA")
                arr = np.asarray(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(path, "image dimensions are too large (decompression bomb)") from None
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format (supported: TIFF, PNG, JPEG, WebP, BMP)") from None
    except Exception as exc:
        raise ImageReadError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    return arr


def exif_orientation(path=None, data: bytes | None = None) -> int:
    """The EXIF orientation tag of an image file (1, 'as stored', when absent or unreadable); header only."""
    try:
        with Image.open(_io.BytesIO(data) if data is not None else path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def _looks_like_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_image(path: str | os.PathLike | None = None, data: bytes | None = None) -> np.ndarray:
    """Read a 2D image (8/16-bit or float; gray, RGB or RGBA) as a numpy array.

    Give either a path or the raw bytes (for uploads; then ``path`` is only a name for
    messages). The result is HxW or HxWxC with C in (3, 4), in the file's own dtype.
    """
    if data is None:
        if path is None:
            raise ValueError("read_image needs a path or data")
        p = Path(path)
        if not p.exists():
            raise ImageReadError(path, "file not found")
        if p.is_dir():
            raise ImageReadError(path, "is a folder, not an image file")
        if p.stat().st_size == 0:
            raise ImageReadError(path, "file is empty (0 bytes)")
        with open(p, "rb") as fh:
            head = fh.read(16)
    else:
        if len(data) == 0:
            raise ImageReadError(path, "file is empty (0 bytes)")
        head = data[:16]

    if _looks_like_tiff(head):
        arr = _read_tiff(path, data)
    else:
        arr = _read_pil(path, data)
    return _tidy(path, arr)


def _tidy(path, arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageReadError(path, f"unsupported image layout {arr.shape}; expected HxW, HxWx3 or HxWx4")
    _check_dims(path, arr.shape)
    _check_image_working_set(path, int(arr.shape[0]), int(arr.shape[1]), 0)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    if arr.dtype.kind not in "uif":
        raise ImageReadError(path, f"unsupported pixel type {arr.dtype}")
    return arr


def read_mask(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Read a binary mask stored as 0/255, 0/1 or any 0/non-zero image; returns bool HxW."""
    arr = read_image(path, data=data) if data is not None else read_image(path)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    return arr > (arr.max() / 2 if arr.max() > 1 else 0)


def to_uint8_rgb(img: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Bring any image to the 8-bit RGB range the model was trained on.

    8-bit input is kept as is (the training data are 8-bit); anything else is mapped
    from its robust intensity range (percentiles) to 0..255.
    """
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = np.percentile(f, [low_pct, high_pct])
        if hi <= lo:
            lo, hi = float(f.min()), float(f.max())
        if hi <= lo:
            f = np.zeros_like(f)
        else:
            f = np.clip((f - lo) / (hi - lo), 0, 1) * 255.0
        img = np.round(f).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img)


def head_depth(img: np.ndarray) -> np.ndarray:
    """Distance in pixels (uint8, capped at 255) from each head pixel to the outside of the head.

    Head = the largest filled component above a low intensity cut. Thresholding this depth at the
    scalp-and-skull thickness gives a rough brain mask (``brain_mask``), which imitates skull-stripped
    inputs (BraTS-style preprocessing) in training and in the robustness suite. Not a clinical skull
    stripper.
    """
    from scipy import ndimage as ndi

    v = img.astype(np.float32).mean(axis=2) if img.ndim == 3 else img.astype(np.float32)
    hi = float(np.percentile(v, 99.5))
    if hi <= 0:
        return np.zeros(v.shape, np.uint8)
    head = ndi.binary_opening(v > 0.08 * hi, iterations=2)
    lab, n = ndi.label(head)
    if n == 0:
        return np.zeros(v.shape, np.uint8)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    head = ndi.binary_fill_holes(lab == sizes.argmax())
    return np.minimum(ndi.distance_transform_edt(head), 255).astype(np.uint8)


# Median of each channel (pre-contrast, FLAIR, post-contrast) inside the brain (head pixels deeper than
# 10 px) of the LGG training slices, out of 255: `python scripts/intensity_reference.py` recomputes it.
LGG_BRAIN_MEDIAN = (50.0, 48.0, 49.0)


def standardise_brain_intensity(vol8: np.ndarray, target=LGG_BRAIN_MEDIAN) -> tuple[np.ndarray, list[float]]:
    """Scale each channel of a Z x H x W x 3 uint8 study so its brain median is the training data's.

    A study scaled by its own percentiles lands where its preprocessing puts it: skull-stripped
    volumes (BraTS) put the brain at 2-3x the brightness the model saw, because nothing brighter than
    brain is left. One gain per channel and volume brings the brain to the training data's level, the
    same way on any scanner. Returns the volume and the gains.
    """
    z = vol8.shape[0]
    # up to 12 slices of the middle 60 %: a median needs no more, and each costs a distance transform
    picks = sorted({int(k) for k in np.linspace(z * 0.2, max(z * 0.8 - 1, z * 0.2), min(12, max(1, z)))})
    inside = [vol8[k][head_depth(vol8[k]) > 10] for k in picks if vol8[k].any()]
    inside = [v for v in inside if len(v)]
    if not inside:
        return vol8, [1.0, 1.0, 1.0]
    v = np.concatenate(inside)
    gains = []
    out = np.empty_like(vol8)
    for c in range(vol8.shape[-1]):
        med = float(np.median(v[:, c]))
        g = float(np.clip(target[c] / med, 0.1, 10.0)) if med > 0 else 1.0
        gains.append(g)
        out[..., c] = np.clip(np.round(vol8[..., c].astype(np.float32) * g), 0, 255).astype(np.uint8)
    return out, gains


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


def encode_png(arr: np.ndarray, compress_level: int = 3) -> bytes:
    """PNG bytes. Files use zlib level 3: on our overlays it is 2.3x faster than level 6 and no larger
    (6.1 vs 13.9 ms, 44 vs 46 KB); the API's in-page images use level 1 (faster still, a little larger)."""
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write an 8-bit gray/RGB/RGBA array as PNG, atomically."""
    atomic_write_bytes(path, encode_png(arr))


class ModelFileError(ValueError):
    """A model or checkpoint file is missing, corrupt or not a tumorseg model."""


_SHA256_SEEN: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, computed once per process for an unchanged file (same path, size and mtime):
    starting a Predictor checks the bundled files, and the probe and batch runs key on the same sums."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_SEEN:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _SHA256_SEEN[key] = h.hexdigest()
    return _SHA256_SEEN[key]


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
