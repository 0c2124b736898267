"""The 2D readers (tumorseg.imaging.images): formats, bit depths, alpha and palettes, masks, refusals that name the file."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from tumorseg.errors import ImageReadError
from tumorseg.imaging.images import read_image, read_mask, to_uint8_rgb


@pytest.mark.parametrize("ext", [".png", ".tif", ".webp", ".jpg", ".bmp"])
def test_rgb_formats_round_trip(tmp_path, ext):
    arr = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    p = tmp_path / f"a{ext}"
    if ext == ".tif":
        tifffile.imwrite(p, arr)
    else:
        Image.fromarray(arr).save(p, **({"lossless": True} if ext == ".webp" else {}))
    out = read_image(p)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    if ext != ".jpg":
        assert np.array_equal(out, arr)


def test_16bit_gray_tiff_and_png(tmp_path):
    arr = (np.arange(60 * 70).reshape(60, 70) * 10).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", arr)
    Image.fromarray(arr).save(tmp_path / "a.png")
    for name in ("a.tif", "a.png"):
        out = read_image(tmp_path / name)
        assert out.shape == (60, 70)
        assert out.max() > 255  # kept at 16-bit
        rgb = to_uint8_rgb(out)
        assert rgb.shape == (60, 70, 3) and rgb.dtype == np.uint8 and rgb.max() == 255


def test_rgba_and_palette(tmp_path):
    rgba = np.zeros((8, 9, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").shape == (8, 9, 4)
    assert to_uint8_rgb(read_image(tmp_path / "a.png")).shape == (8, 9, 3)
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (8, 9, 3)


@pytest.mark.parametrize("scale", [1, 255])
def test_mask_01_and_0255(tmp_path, scale):
    m = np.zeros((10, 10), np.uint8)
    m[2:5, 3:7] = scale
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == bool and out.sum() == 12


def test_float_tiff_with_nan(tmp_path):
    a = np.random.default_rng(1).random((20, 20)).astype(np.float32)
    a[0, 0] = np.nan
    a[1, 1] = np.inf
    tifffile.imwrite(tmp_path / "f.tif", a)
    out = read_image(tmp_path / "f.tif")
    assert np.isfinite(out).all()
    assert to_uint8_rgb(out).shape == (20, 20, 3)


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "empty"),
        (b"this is text, not an image", "damaged or not a PNG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not a readable image"),
        (b"II*\x00\x08\x00\x00\x00garbage", "TIFF"),
    ],
)
def test_bad_files_name_file_and_reason(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert str(p) in str(e.value) and reason in str(e.value)


def test_missing_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_decompression_bomb_refused(tmp_path):
    # A tiny PNG declaring 30000 x 30000 pixels.
    Image.new("1", (30000, 30000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageReadError, match="too large|over the limit"):
        read_image(tmp_path / "bomb.png")
