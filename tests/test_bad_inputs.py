"""Bad-input suite: every kind of broken or odd file, through the CLI and the REST API.

Valid-but-odd files must be processed; broken ones must give one clear line (CLI) or a
4xx JSON error (API), and everything else must still work afterwards.
"""

import gzip
import io
import zipfile

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tumorseg.cli.main import main

from .conftest import api_client, png_bytes, smooth_noise, tif_bytes


def _jpg(arr) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "JPEG")
    return b.getvalue()


RGB = smooth_noise((64, 64, 3), 0)


def _bomb() -> bytes:
    b = io.BytesIO()
    Image.new("1", (25000, 25000)).save(b, "PNG")
    return b.getvalue()


def _palette() -> bytes:
    b = io.BytesIO()
    Image.fromarray(RGB).convert("P").save(b, "PNG")
    return b.getvalue()


def _nan_tif() -> bytes:
    a = smooth_noise((40, 40), 1, 1.0, np.float32)
    a[0, :5] = np.nan
    a[1, :5] = np.inf
    a[2, :5] = -np.inf
    return tif_bytes(a)


# name -> (file name, bytes); broken files must fail cleanly
BROKEN = {
    "zero-byte": ("empty.png", lambda: b""),
    "truncated png": ("trunc.png", lambda: png_bytes(RGB)[:80]),
    "truncated tiff": ("trunc.tif", lambda: tif_bytes(RGB)[:120]),
    "truncated jpeg": ("trunc.jpg", lambda: _jpg(RGB)[:200]),
    "text as png": ("notes.png", lambda: b"patient list, do not share\n" * 10),
    "pdf as png": ("report.png", lambda: b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer<<>>\n%%EOF"),
    "html as png": ("page.png", lambda: b"<!doctype html><html><body>hello</body></html>"),
    "decompression bomb": ("bomb.png", _bomb),
    "random bytes as tif": ("noise.tif", lambda: np.random.default_rng(2).bytes(5000)),
    "tiff header only": ("hdr.tif", lambda: b"II*\x00\x08\x00\x00\x00"),
    "seven-channel tiff": (
        "seven.tif",
        lambda: tif_bytes(np.zeros((7, 16, 16), np.uint8), photometric="minisblack", planarconfig="separate"),
    ),
    "zip as png": ("archive.png", lambda: b"PK\x03\x04" + b"\x00" * 40),
    # readable, but nothing the model can judge (refused with 422, never "0 px")
    "1x1 image": ("one.png", lambda: png_bytes(np.array([[200]], np.uint8))),
    "tall thin": ("thin.png", lambda: png_bytes(np.zeros((300, 3), np.uint8))),
}
# odd but valid: must be processed
VALID = {
    "16-bit tiff": ("deep.tif", lambda: tif_bytes((np.arange(64 * 64).reshape(64, 64) * 13).astype(np.uint16))),
    "32-bit float tiff": ("float.tif", lambda: tif_bytes(smooth_noise((50, 60), 3, 1.0, np.float32))),
    "float tiff with nan/inf": ("nan.tif", _nan_tif),
    "rgba png": ("rgba.png", lambda: png_bytes(np.dstack([RGB, np.full((64, 64), 128, np.uint8)]))),
    "palette png": ("palette.png", _palette),
    "multi-page tiff": ("pages.tif", lambda: tif_bytes(np.stack([RGB, RGB[::-1]]))),
    "gray jpeg": ("gray.jpg", lambda: _jpg(RGB[..., 1])),
    "unicode name": ("Müller_脑 slice (1).png", lambda: png_bytes(RGB)),
}


@pytest.fixture(scope="module")
def client(predictor):
    return api_client(predictor, max_upload_mb=5)


def test_there_are_at_least_25_kinds():
    studies = 6  # see test_bad_studies below
    assert len(BROKEN) + len(VALID) + studies + 2 >= 25


@pytest.mark.parametrize("kind", list(BROKEN))
def test_api_rejects_broken_with_4xx(client, kind):
    name, make = BROKEN[kind]
    r = client.post("/api/segment", files={"file": (name, make())})
    assert 400 <= r.status_code < 500, (kind, r.status_code, r.text[:300])
    assert r.json()["error"]
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize("kind", list(VALID))
def test_api_processes_odd_but_valid(client, kind):
    name, make = VALID[kind]
    r = client.post("/api/segment", files={"file": (name, make())})
    assert r.status_code == 200, (kind, r.text[:300])


def test_api_path_traversal_name_is_harmless(client, tmp_path):
    r = client.post("/api/segment", files={"file": ("../../../../tmp/evil.png", png_bytes(RGB))})
    assert r.status_code == 200 and r.json()["filename"] == "evil.png"


@pytest.mark.slow
def test_cli_one_line_per_bad_file_and_the_rest_processed(tiny_model, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name, make in list(BROKEN.values()) + list(VALID.values()):
        (src / name).write_bytes(make())
    out = tmp_path / "out"
    rc = main(["predict", str(src), "--out", str(out), "--model", str(tiny_model)])
    err = capsys.readouterr().err
    assert rc == 1
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == len(BROKEN)
    for name, _ in BROKEN.values():
        assert sum(name in line for line in error_lines) == 1, name
    assert "Traceback" not in err
    for name, _ in VALID.values():
        stem = name.rsplit(".", 1)[0]
        assert (out / f"{stem}_mask.png").is_file(), name
    assert (src / "empty.png").read_bytes() == b""  # inputs untouched


def _study_files(tmp_path):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    files = {}
    p = tmp_path / "broken_header.nii"
    p.write_bytes(b"\x00" * 200)
    files["broken nifti header"] = p
    p = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.int16), np.eye(4)), p)
    files["2d nifti"] = p
    p = tmp_path / "trunc.nii.gz"
    p.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 400)[:60])
    files["truncated nifti.gz"] = p
    d = tmp_path / "nopix"
    d.mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.save_as(d / "a.dcm", enforce_file_format=True)
    assert pydicom.dcmread(d / "a.dcm").Modality == "MR"
    files["dicom without pixel data"] = d
    p = tmp_path / "bomb.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.dcm", b"\0" * (30 * 1024 * 1024))
    files["zip bomb"] = p
    p = tmp_path / "traversal.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("../../outside.dcm", b"DICM")
    files["zip with ../ paths"] = p
    return files


def test_bad_studies_cli(tiny_model, tmp_path, capsys):
    files = _study_files(tmp_path)
    out = tmp_path / "out"
    rc = main(["predict", *[str(p) for p in files.values()], "--out", str(out), "--model", str(tiny_model)])
    err = capsys.readouterr().err
    assert rc == 2  # nothing could be processed (README: 2)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == len(files), err
    assert "Traceback" not in err
    assert not (tmp_path.parent / "outside.dcm").exists()


def test_bad_studies_api(client, tmp_path):
    files = _study_files(tmp_path)
    for kind, p in files.items():
        if p.is_dir():
            continue
        r = client.post("/api/study", files={"file": (p.name, p.read_bytes())})
        assert 400 <= r.status_code < 500, (kind, r.status_code, r.text[:300])
        assert client.get("/api/health").status_code == 200


@pytest.mark.train
def test_wrong_size_mask_in_dataset(tmp_path, capsys):
    from .conftest import make_kaggle

    make_kaggle(tmp_path / "d", patients=3, slices=2, size=64)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(next((tmp_path / "d").rglob("*_1_mask.png")))
    rc = main(
        [
            "train",
            "--data",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--image-size",
            "64",
            "--patch-size",
            "64",
        ]
    )
    assert rc == 2 and "mask is 32x32" in capsys.readouterr().err
