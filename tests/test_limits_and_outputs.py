"""Hardening round 3: working copies counted, model time bounded, multi-frame DICOM, outputs never in inputs,
references in world space, NIfTI oddities read right, slow bodies never hold a model slot."""

from __future__ import annotations

import asyncio
import gzip
import io
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from tumorseg.imaging.images import read_image
from tumorseg.studies import StudyError, read_reference, read_study

from .conftest import cli_predict, smooth_noise, write_dicom_series
from .test_hostile_inputs import _nifti_header_only, _peak_rss_delta_mb

# --------------------------------------------------------------------------- 1. working copies


def _flat_png(w: int, h: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 40).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize("side,reason", [(8000, "bomb"), (4000, "working memory")])
def test_small_upload_of_a_huge_flat_image_is_refused_before_decoding(tmp_path, side, reason):
    """8000x8000 grey PNG of ~80 kB (61 MB of pixels: over 16 MB, the expansion rule applies) and
    4000x4000 (16 MB of pixels, but ~500 MB of working copies, counted from the header)."""
    p = tmp_path / "flat.png"
    p.write_bytes(_flat_png(side, side))
    assert p.stat().st_size < 300_000
    delta, msg = _peak_rss_delta_mb("read_image(p)", p)
    assert reason in msg, msg
    assert delta < 50


def test_working_set_of_a_large_image_stays_in_budget():
    """The budget's bytes-per-pixel figure holds: segmenting a 2000x2000 image peaks under it."""
    import tracemalloc

    from tumorseg.imaging.limits import WORKING_BYTES_PER_PIXEL
    from tumorseg.inference import Predictor

    pred = Predictor(engine="onnx-int8", threads=1)
    img = np.asarray(Image.fromarray(smooth_noise((200, 200, 3), 1, 120)).resize((2000, 2000)))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    pred.predict(np.zeros((256, 256, 3), np.uint8))
    tracemalloc.start()
    r = pred.predict(buf.getvalue())
    _ = r.heatmap_overlay, r.mask_png_array(), r.prob_png_array()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak / 4e6 < WORKING_BYTES_PER_PIXEL, peak / 4e6


def test_ordinary_images_are_still_accepted(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.asarray(Image.fromarray(smooth_noise((100, 100, 3), 2, 120)).resize((1200, 1200)))).save(p)
    assert read_image(p).shape == (1200, 1200, 3)


# --------------------------------------------------------------------------- 2. model time


@pytest.mark.parametrize(
    "shape,reason",
    [
        ((16, 16, 2000), "at least 32x32"),
        ((44, 44, 32767), "over the limit|bomb"),
        ((32, 32, 3000), "3,000 slices, over the limit"),
        ((1, 240, 155), "at least 32x32"),  # would have been read as 155 slices 1 px wide
        ((64, 64, 1500), "bytes per slice"),  # 1,500 slices from a few kB
    ],
)
def test_studies_whose_model_time_is_absurd_are_refused_from_the_header(tmp_path, shape, reason):
    p = _nifti_header_only(tmp_path / "x.nii.gz", shape, (1, 1, 1))
    t = time.perf_counter()
    with pytest.raises(StudyError, match=reason):
        read_study(p)
    assert time.perf_counter() - t < 2


# --------------------------------------------------------------------------- 3. multi-frame DICOM


def _enhanced(tmp_path: Path, n: int = 8) -> tuple[Path, Path]:
    import highdicom as hd

    write_dicom_series(tmp_path / "single", n=n, rows=48, cols=48)
    dss = [pydicom.dcmread(p) for p in sorted((tmp_path / "single").iterdir())]
    enh = hd.legacy.LegacyConvertedEnhancedMRImage(
        dss, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1
    )
    (tmp_path / "multi").mkdir()
    enh.save_as(tmp_path / "multi" / "enhanced.dcm")
    return tmp_path / "single", tmp_path / "multi"


@pytest.mark.filterwarnings("ignore")
def test_enhanced_multiframe_dicom_reads_like_the_single_frame_series(tmp_path):
    single, multi = _enhanced(tmp_path)
    a, b = read_study(single), read_study(multi)
    assert b.n_slices == a.n_slices == 8
    assert b.spacing == pytest.approx(a.spacing)
    assert np.array_equal(a.volume, b.volume) and np.allclose(a.affine, b.affine)
    assert any("multi-frame" in n for n in b.notes)


@pytest.mark.filterwarnings("ignore")
def test_multiframe_dicom_seg_follows_the_source_frames(tiny_model, tmp_path):
    import highdicom as hd

    from tumorseg.inference import Predictor
    from tumorseg.studies import dicom_seg_bytes

    _, multi = _enhanced(tmp_path)
    sp = Predictor(tiny_model, engine="torch-fp32", threshold=0.0).predict_study(multi)  # every voxel tumour
    sp.mask[:] = False
    sp.mask[2] = True  # one slice marked: its source frame must carry the segment
    seg = hd.seg.segread(io.BytesIO(dicom_seg_bytes(sp)))
    frame = sp.study.frame_order[2]
    src = pydicom.dcmread(next(multi.iterdir()))
    assert seg.NumberOfFrames == 1
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and int(ref.ReferencedFrameNumber) == frame + 1


def legacy_multiframe(folder: Path, frames: int = 20, side: int = 40) -> Path:
    """One legacy multi-frame MR image without functional groups (what was read as one slice 20 px wide)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "MR"
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 3.0
    ds.PixelData = np.stack([np.full((side, side), 10 * k, np.uint16) for k in range(frames)]).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "mf.dcm", enforce_file_format=True)
    return folder


def rgb24_nifti(path: Path) -> Path:
    rgb = np.zeros((40, 40, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    return path


def flat_png(w: int, h: int, mode: str = "L") -> bytes:
    return _flat_png(w, h, mode)


def test_legacy_multiframe_without_functional_groups_is_read_in_stored_order(tmp_path):
    legacy_multiframe(tmp_path / "s")
    st = read_study(tmp_path / "s")
    assert st.n_slices == 20 and st.volume.shape[1:3] == (40, 40)  # not one slice 20 px wide
    assert st.spacing[0] == pytest.approx(3.0)
    assert any("stored order" in n for n in st.notes)


# --------------------------------------------------------------------------- 4. outputs never in inputs


def test_out_inside_an_input_series_is_refused_and_nothing_is_written(tiny_model, tmp_path):
    write_dicom_series(tmp_path / "series", n=4)
    before = sorted(p.name for p in (tmp_path / "series").iterdir())
    assert cli_predict(tmp_path / "series", tmp_path / "series", tiny_model) == 2
    assert cli_predict(tmp_path / "series", tmp_path / "series" / "sub", tiny_model) == 2
    assert sorted(p.name for p in (tmp_path / "series").iterdir()) == before


def test_an_input_inside_a_study_output_folder_is_never_overwritten(tiny_model, tmp_path):
    vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(4)], 2)
    (tmp_path / "res" / "mask").mkdir(parents=True)
    src = tmp_path / "res" / "mask" / "mask.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(src))
    before = src.read_bytes()
    rc = cli_predict(src, tmp_path / "res", tiny_model)  # its output folder res/mask holds the input
    assert rc == 2 and src.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "res" / "mask").iterdir()) == ["mask.nii.gz"]


def test_output_names_from_inputs_are_never_dot_dot(tiny_model, tmp_path):
    from tumorseg.batch.plan import output_name, safe_name

    assert output_name(Path("...nii.gz"), set()) == "image"
    assert safe_name("..") == "image" and safe_name(".hidden") == "hidden"
    vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(4)], 2)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "in" / "...nii.gz"))
    out = tmp_path / "deep" / "out"
    assert cli_predict(tmp_path / "in" / "...nii.gz", out, tiny_model) == 0
    assert (out / "image" / "study.json").is_file()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]  # nothing beside --out


def test_interrupted_batch_still_writes_the_summary_of_what_finished(tiny_model, tmp_path, monkeypatch):
    from tumorseg.batch import job as batch

    imgs = []
    for k in range(3):
        p = tmp_path / f"s{k}.png"
        Image.fromarray(smooth_noise((64, 64, 3), k, 120)).save(p)
        imgs.append(p)
    real = batch.process_item
    calls = []

    def interrupt_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(batch, "process_item", interrupt_on_third)
    assert cli_predict(imgs, tmp_path / "o", tiny_model) == 130
    rows = (tmp_path / "o" / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and "s0.png" in rows[1] and "s1.png" in rows[2]


# --------------------------------------------------------------------------- 6. references in world space


def _study_and_mask(tmp_path: Path):
    affine = np.array([[0.9, 0, 0, -20], [0, 0.9, 0, -30], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    vol = np.stack([smooth_noise((48, 48), z, 300, np.int16) for z in range(6)], 2)
    p = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(p))
    ref = np.zeros(vol.shape, np.uint8)
    ref[10:20, 25:40, 2:4] = 1
    return read_study(p), ref, affine


def test_reference_with_flipped_voxel_order_in_the_same_world_is_reindexed(tmp_path):
    st, ref, affine = _study_and_mask(tmp_path)
    direct = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(ref, affine), str(direct))
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = ref.shape[0] - 1
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(ref[::-1].copy(), affine @ flip), str(flipped))  # same world, other storage
    notes: list[str] = []
    a = read_reference(direct, st)
    b = read_reference(flipped, st, notes=notes)
    assert a.sum() == ref.sum() and np.array_equal(a, b)
    assert notes and "world space" in notes[0]


def test_reference_shifted_in_space_is_not_scored_as_if_aligned(tmp_path):
    st, ref, affine = _study_and_mask(tmp_path)
    shifted = affine.copy()
    shifted[0, 3] += 9.0  # 10 voxels of 0.9 mm
    p = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(ref, shifted), str(p))
    m = read_reference(p, st)
    assert m.sum() > 0 and not np.array_equal(m, read_reference(_save(tmp_path / "r.nii.gz", ref, affine), st))
    far = affine.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(StudyError, match="does not overlap"):
        read_reference(_save(tmp_path / "far.nii.gz", ref, far), st)


def _save(p: Path, arr, affine) -> Path:
    nib.save(nib.Nifti1Image(arr, affine), str(p))
    return p


# --------------------------------------------------------------------------- 8. NIfTI oddities


def test_float64_flair_that_compresses_well_is_read(tmp_path):
    zz, yy, xx = np.mgrid[:240, :240, :60].astype(np.float64)
    brain = ((zz - 120) / 80) ** 2 + ((yy - 120) / 95) ** 2 + ((xx - 30) / 26) ** 2 < 1
    vol = np.where(brain, np.round(300 + 20 * np.sin(zz / 9) * np.cos(yy / 7)), 0.0)
    p = _save(tmp_path / "flair64.nii.gz", vol, np.eye(4))
    assert vol.nbytes / p.stat().st_size > 20  # what was refused as a "decompression bomb"
    st = read_study(p)
    assert st.n_slices == 60 and st.volume.max() > 0


def test_nifti2_reads_its_own_pixdim(tmp_path):
    vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(5)], 2)
    img = nib.Nifti2Image(vol, np.diag([0.8, 0.8, 2.5, 1]))
    p = tmp_path / "two.nii.gz"
    nib.save(img, str(p))
    assert read_study(p).spacing == pytest.approx((2.5, 0.8, 0.8))


def test_scl_slope_beyond_float32_is_not_an_empty_volume(tmp_path):
    vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(5)], 2)
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header.set_slope_inter(1e38, 0)
    p = tmp_path / "slope.nii"
    nib.save(img, str(p))
    st = read_study(p)
    assert st.volume.max() > 0 and any("beyond 32-bit" in n for n in st.notes)


def test_rgb24_nifti_is_a_clear_refusal(tmp_path):
    p = rgb24_nifti(tmp_path / "rgb.nii.gz")
    with pytest.raises(StudyError, match="grey-level"):
        read_study(p)


def test_dims_whose_product_wraps_int64_are_a_clear_refusal(tmp_path):
    hdr = nib.Nifti2Header()
    hdr.set_data_shape((2**31, 2**31, 2**31))
    hdr.set_data_dtype(np.int16)
    p = tmp_path / "wrap.nii.gz"
    p.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4))
    with pytest.raises(StudyError, match="over the limit|not a readable"):
        read_study(p)


# --------------------------------------------------------------------------- 5. slow bodies and the model slot


def test_a_slow_body_never_holds_a_model_slot_and_the_whole_body_has_a_deadline():
    from tumorseg.app.guard import RequestGuard

    done: list[str] = []

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        done.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = RequestGuard(app, cap=1 << 20, body_timeout=1.0, max_concurrent=1, body_deadline=1.5)

    def scope(path):
        return {"type": "http", "method": "POST", "path": path, "headers": [(b"host", b"127.0.0.1")]}

    def drip(n: int, every: float):
        k = 0

        async def receive():
            nonlocal k
            await asyncio.sleep(every)
            k += 1
            return {"type": "http.request", "body": b"x", "more_body": k < n}

        return receive

    async def fast():
        return {"type": "http.request", "body": b"x", "more_body": False}

    statuses: dict[str, int] = {}

    def sender(path):
        async def send(msg):
            if msg["type"] == "http.response.start":
                statuses[path] = msg["status"]

        return send

    async def main():
        slow = asyncio.create_task(guard(scope("/api/slow"), drip(100, 0.5), sender("/api/slow")))
        await asyncio.sleep(0.2)  # the slow client has started sending
        await asyncio.wait_for(guard(scope("/api/fast"), fast, sender("/api/fast")), 1.0)
        assert done == ["/api/fast"]  # served while the slow body was still dripping
        await asyncio.wait_for(slow, 5)

    asyncio.run(main())
    assert statuses == {"/api/fast": 200, "/api/slow": 408}  # each chunk in time, the whole body too late


# --------------------------------------------------------------------------- low items


def test_slice_out_of_range_is_an_error_not_slice_zero(tiny_model, tmp_path):
    from fastapi.testclient import TestClient

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor

    vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(4)], 2)
    p = _save(tmp_path / "v.nii.gz", vol, np.eye(4))
    with TestClient(create_app(Predictor(tiny_model, engine="torch-fp32"))) as c:
        r = c.post("/api/study", files={"file": ("v.nii.gz", p.read_bytes())})
        rid = r.json()["result_id"]
        assert c.post("/api/mask", data={"result_id": rid, "slice": "3"}).status_code == 200
        bad = c.post("/api/mask", data={"result_id": rid, "slice": "99999"})
        assert bad.status_code == 422 and "out of range" in bad.json()["error"]
        assert c.get(f"/api/result/{rid}/mask.png?slice=99999").status_code == 422


def test_safe_upload_names_are_never_dot_dot():
    from tumorseg.app.common import _safe_name

    assert _safe_name("..") == "upload" and _safe_name("../../etc/passwd") == "passwd"
    assert not _safe_name("...nii.gz").startswith(".")


def test_empty_token_is_refused(tmp_path):
    from tumorseg.cli.main import main

    assert main(["app", "--token", "", "--no-browser", "--port", "1"]) == 2


@pytest.mark.slow
def test_sigterm_stops_the_server_within_seconds(tiny_model, tmp_path):
    import os
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tumorseg",
            "app",
            "--no-browser",
            "--port",
            str(port),
            "--model",
            str(tiny_model),
            "--engine",
            "torch-fp32",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        import threading
        import urllib.request

        vol = np.stack([smooth_noise((240, 240), z, 300, np.int16) for z in range(250)], 2)
        body = io.BytesIO()
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "big.nii.gz"))
        data = (tmp_path / "big.nii.gz").read_bytes()
        boundary = "tumorsegtest"
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n\r\n'.encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/study",
            data=body.getvalue(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        threading.Thread(target=lambda: _ignore(urllib.request.urlopen, req, timeout=60), daemon=True).start()
        time.sleep(2.0)  # the study is being segmented
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.perf_counter() - t < 6
    finally:
        if proc.poll() is None:
            proc.kill()


def _ignore(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except Exception:
        pass


def test_exif_orientation_and_extreme_aspect_ratio_are_warned(tiny_model, tmp_path):
    from tumorseg.inference import Predictor

    pred = Predictor(tiny_model, engine="torch-fp32")
    img = Image.fromarray(smooth_noise((64, 64, 3), 3, 120))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    r = pred.predict(buf.getvalue(), name="photo.jpg")
    assert any("EXIF orientation 6" in w for w in r.warnings)
    plain = io.BytesIO()
    img.save(plain, "JPEG")
    assert not any("EXIF" in w for w in pred.predict(plain.getvalue(), name="p.jpg").warnings)
    wide = np.asarray(Image.fromarray(smooth_noise((40, 40, 3), 4, 120)).resize((4096, 32)))
    assert any("aspect ratio" in w for w in pred.predict(wide).warnings)


def test_held_results_are_bounded_in_bytes(tiny_model, monkeypatch):
    from fastapi.testclient import TestClient

    from tumorseg.app import results, server
    from tumorseg.inference import Predictor

    monkeypatch.setattr(results, "MAX_RESULT_BYTES", 200_000)  # about one 128x128 result
    buf = io.BytesIO()
    Image.fromarray(smooth_noise((128, 128, 3), 5, 120)).save(buf, "PNG")
    with TestClient(server.create_app(Predictor(tiny_model, engine="torch-fp32"))) as c:
        ids = [c.post("/api/segment", files={"file": ("a.png", buf.getvalue())}).json()["result_id"] for _ in range(3)]
        held = [c.post("/api/mask", data={"result_id": i}).status_code for i in ids]
    assert held[-1] == 200 and held.count(404) >= 1  # the oldest went first, the newest is always kept


def test_classify_refuses_a_million_names_quickly(tiny_model):
    from fastapi.testclient import TestClient

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor

    with TestClient(create_app(Predictor(tiny_model, engine="torch-fp32"))) as c:
        t = time.perf_counter()
        r = c.post("/api/classify", json=[f"f{k}.png" for k in range(1_000_000)])
        assert r.status_code == 422 and len(r.content) < 1000 and time.perf_counter() - t < 10
        assert c.post("/api/classify", json={"a": 1}).status_code == 422
        assert c.post("/api/classify", json=["a_1.png", "a_2.png"]).json()["kind"]


def test_docs_and_schema_need_the_token_when_one_is_set(tiny_model):
    from fastapi.testclient import TestClient

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor

    with TestClient(create_app(Predictor(tiny_model, engine="torch-fp32"), token="s3cret")) as c:
        for path in ("/openapi.json", "/docs"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200


@pytest.mark.slow
def test_working_set_of_a_study_stays_in_budget(tmp_path):
    import tracemalloc

    from tumorseg.inference import Predictor
    from tumorseg.studies import STUDY_BYTES_PER_VOXEL

    vol = np.stack([smooth_noise((240, 240), z, 300, np.int16) for z in range(48)], 2)
    p = _save(tmp_path / "v.nii.gz", vol, np.eye(4))
    pred = Predictor(engine="onnx-int8", threads=1)
    pred.predict(np.zeros((256, 256, 3), np.uint8))
    tracemalloc.start()
    pred.predict_study(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    batch = 16 * 256 * 256 * 12  # the model's batch at its own size: a constant, not per voxel
    assert (peak - batch) / vol.size < STUDY_BYTES_PER_VOXEL, peak / vol.size
