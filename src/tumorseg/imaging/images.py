"""Reading and writing 2D images and masks.

Every reader raises :class:`ImageReadError` naming the file and the reason, so that
front ends can report a bad file in one line and carry on with the others.
"""

from __future__ import annotations

import io as _io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageReadError
from .files import atomic_write_bytes
from .limits import MAX_PIXELS, WORKING_BYTES_PER_PIXEL, check_decoded_size, check_working_set

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".bmp")


MAX_SAMPLES_PER_PIXEL = 4


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


_FORMAT_BY_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".bmp": "BMP"}


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
        named = (
            _FORMAT_BY_SUFFIX.get(os.path.splitext(str(path))[1].lower())
            if isinstance(path, (str, os.PathLike))
            else None
        )
        if named:  # a file named as a format we read, whose data is not that format: damaged, not unsupported
            raise ImageReadError(
                path, f"damaged or not a {named} (named {named}, but its data cannot be read as one)"
            ) from None
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


def encode_png(arr: np.ndarray, compress_level: int = 3) -> bytes:
    """PNG bytes. Files use zlib level 3: on our overlays it is 2.3x faster than level 6 and no larger
    (6.1 vs 13.9 ms, 44 vs 46 KB); the API's in-page images use level 1 (faster still, a little larger)."""
    buf = _io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write an 8-bit gray/RGB/RGBA array as PNG, atomically."""
    atomic_write_bytes(path, encode_png(arr))
