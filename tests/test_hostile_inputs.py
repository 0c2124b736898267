"""Hardening probes: tiny inputs that declare huge decodes, malformed geometry, hostile clients.

Each probe is built here. Memory cases run in a subprocess that reports its own peak RSS, so the
bound is measured, not assumed.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from tumorseg.app.guard import RequestGuard
from tumorseg.app.server import create_app
from tumorseg.cli.main import main
from tumorseg.errors import ImageReadError
from tumorseg.imaging.images import read_image
from tumorseg.studies import StudyError, read_study

from .conftest import api_client, smooth_noise, write_dicom_series

RSS_BOUND_MB = 200


def _peak_rss_delta_mb(call: str, path: Path) -> tuple[float, str]:
    """Run ``call`` (Python, with ``p`` bound to the path) in a fresh process; peak RSS above its baseline."""
    code = f"""
import resource, sys, json
from pathlib import Path
import tumorseg.studies, tumorseg.imaging.images, numpy, pydicom, nibabel, tifffile
from tumorseg.studies import read_study
from tumorseg.imaging.images import read_image
p = Path({str(path)!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
msg = "ok"
try:
    {call}
except Exception as exc:
    msg = type(exc).__name__ + ": " + str(exc)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"delta_mb": (peak - base) / 1024, "msg": msg}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["delta_mb"], r["msg"]


# --------------------------------------------------------------------------- builders


def _deflated_dicom(path: Path, rows: int, cols: int) -> Path:
    write_dicom_series(path.parent / "tmpl", n=1, rows=8, cols=8)
    ds = pydicom.dcmread(next((path.parent / "tmpl").iterdir()))
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = bytes(rows * cols * 2)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    ds.save_as(path, enforce_file_format=True)
    return path


def _tiff_header(width: int, height: int, spp: int, planar: int) -> bytes:
    """A minimal little-endian TIFF whose IFD declares an image it does not contain."""
    tags = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 2 if spp == 3 else 1),
        (273, 4, 8),
        (277, 3, spp),
        (278, 4, height),
        (279, 4, 16),
        (284, 3, planar),
    ]
    ifd = (
        struct.pack("<H", len(tags))
        + b"".join(
            struct.pack("<HHI", t, typ, 1) + (struct.pack("<HH", v, 0) if typ == 3 else struct.pack("<I", v))
            for t, typ, v in tags
        )
        + struct.pack("<I", 0)
    )
    return b"II*\x00" + struct.pack("<I", 24) + b"\0" * 16 + ifd


def _nifti_header_only(path: Path, shape, pixdim=None) -> Path:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    if pixdim is not None:
        hdr["pixdim"][1:4] = pixdim
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4))
    return path


def _nifti(path: Path, pixdim, affine=None) -> Path:
    """A NIfTI with this pixdim as written (``affine``: its sform; where the two disagree the affine's voxel size
    is used, with a note: tests/test_geometry_refusals.py)."""
    img = nib.Nifti1Image(
        np.random.default_rng(0).integers(0, 200, (32, 32, 4)).astype(np.int16), np.eye(4) if affine is None else affine
    )
    img.header["pixdim"][1:4] = pixdim
    path.write_bytes(img.to_bytes())
    return path


def _zip_of_zeros(path: Path, members: dict[str, int]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, size in members.items():
            with zf.open(name, "w", force_zip64=True) as fh:
                chunk = bytes(1 << 20)
                for _ in range(size >> 20):
                    fh.write(chunk)
    return path


# --------------------------------------------------------------------------- memory: refused before decoding


def test_deflated_dicom_bomb_refused_within_memory_bound(tmp_path):
    p = _deflated_dicom(tmp_path / "bomb.dcm", 8192, 8192)
    assert p.stat().st_size < 300_000  # 128 MB of pixels in a few hundred kB
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for k in range(4):
            zf.writestr(f"b{k}.dcm", p.read_bytes())
    delta, msg = _peak_rss_delta_mb("read_study(p)", z)
    assert "StudyError" in msg and ("decompression bomb" in msg or "limit" in msg), msg
    assert delta < RSS_BOUND_MB, delta


@pytest.mark.parametrize(
    "w,h,spp,planar,reason",
    [
        (22000, 22000, 3, 2, "limit"),  # planar-separate RGB: 1.45 GB declared
        (4000, 4000, 100, 1, "samples per pixel"),
    ],
)
def test_tiff_declaring_huge_decode_refused(tmp_path, w, h, spp, planar, reason):
    p = tmp_path / "big.tif"
    p.write_bytes(_tiff_header(w, h, spp, planar))
    delta, msg = _peak_rss_delta_mb("read_image(p)", p)
    assert "ImageReadError" in msg and reason in msg, msg
    assert delta < RSS_BOUND_MB


def test_tiny_nifti_declaring_gigabytes_refused(tmp_path):
    p = _nifti_header_only(tmp_path / "huge.nii.gz", (1400, 1400, 1000))
    assert p.stat().st_size < 500
    delta, msg = _peak_rss_delta_mb("read_study(p)", p)
    assert "StudyError" in msg and "voxels" in msg, msg
    assert delta < RSS_BOUND_MB


def test_zip_with_highly_compressed_members_refused_before_extraction(tmp_path):
    z = _zip_of_zeros(tmp_path / "two.zip", {"a.tif": 150 << 20, "b.tif": 150 << 20})
    assert z.stat().st_size < 1_000_000
    delta, msg = _peak_rss_delta_mb("read_study(p)", z)
    assert "StudyError" in msg and "decompression bomb" in msg, msg
    assert delta < RSS_BOUND_MB


def test_real_sized_inputs_still_read(tmp_path):
    """The limits refuse bombs, not ordinary studies: a 240x240x155 uint8 volume (BraTS size)."""
    rng = np.random.default_rng(0)
    vol = (rng.random((240, 240, 155)) * 255).astype(np.uint8)
    p = tmp_path / "brats_like.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    st = read_study(p)
    assert st.volume.shape == (155, 240, 240, 3)


# --------------------------------------------------------------------------- crashes become clear errors


def _corrupt_zip(path: Path) -> Path:
    series = path.parent / "series"
    write_dicom_series(series, n=3)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f.name)
    raw = bytearray(path.read_bytes())
    first = zipfile.ZipFile(path).infolist()[0]
    start = first.header_offset + 30 + len(first.filename) + len(first.extra)
    for i in range(start + 10, start + 60):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def test_corrupt_zip_member_is_a_clear_error(tmp_path):
    z = _corrupt_zip(tmp_path / "corrupt.zip")
    with pytest.raises(StudyError, match="corrupt|unreadable|CRC|Bad"):
        read_study(z)


@pytest.mark.parametrize(
    "pixdim,match",
    [
        ((float("nan"), 1, 1), "not a usable voxel size|not a readable NIfTI"),
        ((float("inf"), 1, 1), "not a usable voxel size|not a readable NIfTI"),
        ((0, 1, 1), "not a usable voxel size"),
        ((1e30, 1, 1), "not a usable voxel size"),
    ],
)
def test_nifti_impossible_pixdim_refused(tmp_path, pixdim, match):
    with pytest.raises(StudyError, match=match):
        read_study(_nifti(tmp_path / "bad.nii", pixdim))


def test_nifti_negative_pixdim_is_used_by_magnitude_with_a_note(tmp_path):
    st = read_study(_nifti(tmp_path / "neg.nii", (-0.9, 0.9, 3.0), np.diag([-0.9, 0.9, 3.0, 1.0])))
    assert st.spacing == pytest.approx((3.0, 0.9, 0.9))
    assert any("negative" in n for n in st.notes)


def _edit_series(folder: Path, fn) -> None:
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        fn(ds, f)
        ds.save_as(f, enforce_file_format=True)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda ds, f: setattr(ds, "ImageOrientationPatient", [1, 0, 0]), "ImageOrientationPatient has 3"),
        (lambda ds, f: setattr(ds, "PixelSpacing", [0.8]), "PixelSpacing has 1"),
        (lambda ds, f: setattr(ds, "PixelSpacing", [0, 0]), "PixelSpacing .* not a usable voxel size"),
    ],
)
def test_dicom_malformed_geometry_refused(tmp_path, edit, match):
    s = tmp_path / "s"
    write_dicom_series(s, n=4)
    _edit_series(s, edit)
    with pytest.raises(StudyError, match=match):
        read_study(s)


def test_dicom_without_positions_uses_slice_thickness_and_says_so(tmp_path):
    s = tmp_path / "s"
    write_dicom_series(s, n=5, thickness=3.0)
    _edit_series(s, lambda ds, f: delattr(ds, "ImagePositionPatient"))
    st = read_study(s)
    assert st.spacing[0] == 3.0
    assert any("No ImagePositionPatient" in n and "3 mm" in n for n in st.notes)
    # slices ordered by InstanceNumber (the writer reverses them against file order)
    assert [int(ds.InstanceNumber) for ds in st.dicom] == sorted(int(ds.InstanceNumber) for ds in st.dicom)


def test_dicom_with_half_the_positions_missing_refused(tmp_path):
    s = tmp_path / "s"
    write_dicom_series(s, n=6)
    files = sorted(s.iterdir())
    for f in files[:3]:
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f, enforce_file_format=True)
    with pytest.raises(StudyError, match="3 of 6 slices lack ImagePositionPatient"):
        read_study(s)


# --------------------------------------------------------------------------- the server


@pytest.fixture()
def client(predictor):
    return api_client(predictor, max_upload_mb=2)


def test_api_answers_every_probe_with_4xx_and_no_temp_path(client, tmp_path):
    import tempfile

    probes = {
        "corrupt.zip": _corrupt_zip(tmp_path / "c" / "corrupt.zip").read_bytes(),
        "nan.nii": _nifti(tmp_path / "nan.nii", (float("nan"), 1, 1)).read_bytes(),
        "zero.nii": _nifti(tmp_path / "zero.nii", (0, 1, 1)).read_bytes(),
        "huge.nii.gz": _nifti_header_only(tmp_path / "huge.nii.gz", (1400, 1400, 1000)).read_bytes(),
    }
    s = tmp_path / "iop"
    write_dicom_series(s, n=3)
    _edit_series(s, lambda ds, f: setattr(ds, "ImageOrientationPatient", [1, 0, 0]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in s.iterdir():
            zf.write(f, f.name)
    probes["iop.zip"] = buf.getvalue()
    for name, data in probes.items():
        r = client.post("/api/study", files={"file": (name, data)})
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert tempfile.gettempdir() not in err and "tumorseg-" not in err, err
        assert name in err, err
    r = client.post("/api/segment", files={"file": ("big.tif", _tiff_header(22000, 22000, 3, 2))})
    assert r.status_code == 400 and "limit" in r.json()["error"]
    assert client.get("/api/health").status_code == 200


def _run_guard(guard: RequestGuard, chunks, scope_extra=None):
    sent, consumed = [], [0]

    async def receive():
        item = next(chunks, None)
        if item is None:
            await asyncio.sleep(3600)
        consumed[0] += 1
        return {"type": "http.request", "body": item, "more_body": True}

    async def send(msg):
        sent.append(msg)

    async def app(scope, receive, send):
        while True:
            m = await receive()
            if m["type"] == "http.disconnect":
                return

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/segment",
        "headers": [(b"host", b"127.0.0.1:8000")],
        **(scope_extra or {}),
    }
    asyncio.run(asyncio.wait_for(RequestGuard(app, guard.cap, guard.body_timeout)(scope, receive, send), 10))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, consumed[0]


def test_chunked_upload_without_length_stops_at_the_cap():
    cap = 2 << 20
    chunks = iter([bytes(1 << 20)] * 300)  # 300 MB offered, no Content-Length
    status, consumed = _run_guard(RequestGuard(None, cap, 5.0), chunks)
    assert status == 413 and consumed <= 4


def test_stalled_body_times_out():
    status, _ = _run_guard(RequestGuard(None, 2 << 20, 0.3), iter([b"x" * 100]))
    assert status == 408


def test_host_header_checked_against_bound_names(predictor):
    from tumorseg.app.server import allowed_host_names

    hosts = allowed_host_names("127.0.0.1")
    assert {"127.0.0.1", "localhost", "::1"} <= hosts
    c = TestClient(create_app(predictor, allowed_hosts=hosts), base_url="http://127.0.0.1:8000")
    assert c.get("/api/health").status_code == 200
    assert c.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
    r = c.get("/api/health", headers={"host": "evil.example"})
    assert r.status_code == 421 and "evil.example" in r.json()["error"]
    assert allowed_host_names("0.0.0.0") is None
    assert "scanner.lan" in allowed_host_names("0.0.0.0", ["scanner.lan"])


def test_token_from_environment_or_file(monkeypatch, tmp_path):
    from tumorseg.app import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda **kw: seen.update(kw))
    monkeypatch.setenv("TUMORSEG_TOKEN", "from-env")
    assert main(["app", "--no-browser"]) == 0 and seen["token"] == "from-env"
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    assert main(["app", "--no-browser", "--token-file", str(f)]) == 0 and seen["token"] == "from-file"


def test_busy_port_is_one_line(monkeypatch, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", "--no-browser", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the CLI


def test_cli_batch_survives_bad_studies_and_writes_summary(tiny_model, tmp_path, capsys):
    good = tmp_path / "good.png"
    from PIL import Image

    Image.fromarray(smooth_noise((64, 64, 3), 0)).save(good)
    bad = [_corrupt_zip(tmp_path / "c" / "corrupt.zip"), _nifti(tmp_path / "nan.nii", (float("nan"), 1, 1))]
    out = tmp_path / "out"
    code = main(["predict", str(good), *map(str, bad), "--out", str(out), "--model", str(tiny_model)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert (out / "summary.csv").is_file() and "good.png" in (out / "summary.csv").read_text()
    for b in bad:
        assert sum(str(b) in line for line in err.splitlines()) == 1, err  # one line per bad input


def test_cli_out_below_a_file_is_one_line(tiny_model, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    img = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert main(["predict", str(img), "--out", str(f / "sub"), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert "cannot write results there" in err and "Traceback" not in err


def test_cli_file_name_with_glob_characters(tiny_model, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "scan[1].tif"
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(img)
    assert main(["predict", str(img), "--out", str(tmp_path / "o"), "--model", str(tiny_model)]) in (0, 1)
    assert "no file matches" not in capsys.readouterr().err


def test_nothing_readable_exits_2(tiny_model, tmp_path, capsys):
    assert (
        main(["predict", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"), "--model", str(tiny_model)]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("missing.png") == 1


def test_read_image_refuses_expansion(tmp_path):
    """A 2D image whose declared pixels are 20x more than its bytes and over 64 MB is refused."""
    p = tmp_path / "big.tif"
    p.write_bytes(_tiff_header(7000, 7000, 3, 1))  # 147 MB declared in 200 bytes
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(p)
    assert os.path.getsize(p) < 300


def test_model_slots_are_first_come_first_served_and_a_timed_out_wait_is_skipped():
    order, sent = [], []

    async def app(scope, receive, send):
        order.append(scope["path"])
        await asyncio.sleep(0.2 if scope["path"] == "/api/a" else 0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    def scope(path):
        return {"type": "http", "method": "POST", "path": path, "headers": [(b"host", b"127.0.0.1")]}

    async def run():
        guard = RequestGuard(app, 1 << 20, 5.0, max_concurrent=1, queue_timeout=0.05)

        async def call(g, path):
            out = []

            async def send(m):
                out.append(m)

            await g(scope(path), receive, send)
            sent.append((path, next(m["status"] for m in out if m["type"] == "http.response.start")))

        t1 = asyncio.create_task(call(guard, "/api/a"))
        await asyncio.sleep(0.01)
        t2 = asyncio.create_task(call(guard, "/api/b"))  # gives up after 0.05 s: 503
        await asyncio.gather(t1, t2)
        t3 = asyncio.create_task(call(guard, "/api/c"))  # the abandoned ticket is skipped
        t4 = asyncio.create_task(call(guard, "/api/d"))
        await asyncio.gather(t3, t4)

    asyncio.run(run())
    assert ("/api/b", 503) in sent and ("/api/c", 200) in sent and ("/api/d", 200) in sent
    assert order == ["/api/a", "/api/c", "/api/d"]
