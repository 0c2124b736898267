import io
import re
import threading

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from PIL import Image

from tumorseg.app.server import create_app

from .conftest import api_client, png_bytes, smooth_noise, tif_bytes


@pytest.fixture(scope="module")
def client(predictor):
    return api_client(predictor, max_upload_mb=1)


def test_health_and_model(client):
    assert client.get("/api/health").json()["status"] == "ok"
    m = client.get("/api/model").json()
    assert m["input_size"] == 64 and "not a medical device" in m["disclaimer"].lower()
    # the same one line the CLI prints first and the page shows in its banner
    assert m["engine_line"].startswith(f"model {m['model']}, engine {m['engine']}: ") and "\n" not in m["engine_line"]


@pytest.mark.slow
def test_cli_first_line_is_the_engine_line(tiny_model, tmp_path, capsys):
    from tumorseg.cli.main import main
    from tumorseg.inference import Predictor

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 40, 3), np.uint8))
    main(["predict", str(tmp_path / "a.tif"), "--out", str(tmp_path / "o"), "--model", str(tiny_model)])
    first = capsys.readouterr().err.splitlines()[0]
    again = Predictor(tiny_model).engine_line()  # from the cache the first call wrote
    assert "fastest on this CPU" in first and "cached from" in again
    when = re.compile(r"; (measured now|cached from [^)]*)\)$")
    assert when.sub("", first) == "tumorseg: " + when.sub("", again)


def test_segment_returns_pngs_at_original_size(client):
    import base64

    r = client.post(
        "/api/segment",
        files={"file": ("slice.tif", tif_bytes(np.zeros((70, 90, 3), np.uint8)))},
        data={"threshold": "0.4"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["threshold"]) == (90, 70, 0.4)
    for key in ("image_png", "prob_png", "mask_png"):
        im = Image.open(io.BytesIO(base64.b64decode(body[key])))
        assert im.size == (90, 70)
    assert {"tumour_pixels", "max_probability", "model"} <= set(body)


BAD = {
    "zero bytes": ("a.png", b""),
    "text as png": ("a.png", b"hello world"),
    "html": ("page.png", b"<html><body>hi</body></html>"),
    "pdf renamed": ("doc.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj"),
    "truncated png": ("t.png", None),
    "truncated tiff": ("t.tif", None),
    "study sent to segment": ("vol.nii.gz", b"\x1f\x8b whatever"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_uploads_are_4xx_json_and_server_survives(client, kind):
    name, data = BAD[kind]
    if kind == "truncated png":
        data = png_bytes(np.zeros((64, 64, 3), np.uint8) + 7)[:60]
    if kind == "truncated tiff":
        data = tif_bytes((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))[:100]
    r = client.post("/api/segment", files={"file": (name, data)})
    assert 400 <= r.status_code < 500, (kind, r.status_code, r.text)
    assert "error" in r.json() and r.json()["error"]
    assert client.get("/api/health").status_code == 200


def test_decompression_bomb_is_rejected(client):
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    r = client.post("/api/segment", files={"file": ("bomb.png", buf.getvalue())})
    assert r.status_code == 400 and "large" in r.json()["error"]


def test_upload_cap(client):
    r = client.post("/api/segment", files={"file": ("big.png", b"\x00" * (2 * 1024 * 1024))})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_missing_file_field_and_bad_threshold(client):
    assert client.post("/api/segment").status_code == 422
    r = client.post(
        "/api/segment", files={"file": ("a.png", png_bytes(np.zeros((8, 8), np.uint8)))}, data={"threshold": "7"}
    )
    assert r.status_code == 422 and "threshold" in r.json()["error"]


def test_token_protects_api(predictor):
    c = TestClient(create_app(predictor, token="s3cret"))
    assert c.get("/api/health").status_code == 200
    assert c.get("/api/model").status_code == 401
    assert c.get("/api/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_no_cors_by_default(client):
    r = client.get("/api/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}


def test_page_and_docs_served_offline(client):
    page = client.get("/").text
    assert "not a medical device" in page and "http://" not in page.replace("http://www.w3.org", "")
    assert client.get("/static/main.js").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/api/segment"]


def test_concurrent_requests_do_not_mix(client):
    imgs = {i: smooth_noise((64, 64, 3), i) for i in range(6)}
    expected = {}
    for i, im in imgs.items():
        expected[i] = client.post("/api/segment", files={"file": (f"{i}.png", png_bytes(im))}).json()["prob_png"]
    got = {}

    def worker(i):
        got[i] = client.post("/api/segment", files={"file": (f"{i}.png", png_bytes(imgs[i]))}).json()["prob_png"]

    ts = [threading.Thread(target=worker, args=(i,)) for i in imgs]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert got == expected


def test_study_upload_nifti_and_zip_of_slices(client, tmp_path):
    import zipfile

    import nibabel as nib

    vol = np.zeros((40, 40, 5), np.int16)
    vol[10:20, 10:20, 1:4] = 500
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.5, 2.0, 1.0])), p)
    r = client.post("/api/study", files={"file": ("v.nii.gz", p.read_bytes())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["slices"]) == 5 and body["spacing"] == [2.0, 0.5, 0.5]
    assert "volume_ml" in body["measurements"] and body["measurements"]["single_sequence"]
    z = tmp_path / "slices.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for n in (3, 1, 2):
            zf.writestr(f"P_{n}.png", png_bytes(np.full((32, 32, 3), n * 40, np.uint8)))
    r = client.post("/api/study", files={"file": ("slices.zip", z.read_bytes())})
    assert r.status_code == 200, r.text
    assert [s["name"] for s in r.json()["slices"]] == ["P_1.png", "P_2.png", "P_3.png"]


def test_study_upload_as_dicom_series_files(client, tmp_path):
    from .conftest import write_dicom_series

    write_dicom_series(tmp_path / "s", n=4)
    files = [("files", (p.name, p.read_bytes())) for p in sorted((tmp_path / "s").iterdir())]
    r = client.post("/api/study", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["slices"]) == 4 and body["measurements"]["kind"] == "dicom"
    assert body["spacing"] == [2.5, 0.8, 0.7]
    assert client.post("/api/study").status_code == 422
    # the study downloads are the CLI's files: DICOM-SEG of the series, the mask in the input geometry
    import gzip
    import io

    import nibabel as nib
    import pydicom

    seg = client.get(f"/api/result/{body['result_id']}/mask_seg.dcm")
    assert seg.status_code == 200 and seg.headers["content-type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(seg.content))
    assert ds.Modality == "SEG" and ds.NumberOfFrames >= 1
    nii = client.get(f"/api/result/{body['result_id']}/mask.nii.gz")
    vol = nib.Nifti1Image.from_bytes(gzip.decompress(nii.content))
    assert vol.shape == (32, 32, 4) and int(vol.get_fdata().sum()) == body["measurements"]["tumour_voxels"]


def test_serve_defaults_to_localhost_and_warns_when_exposed(tiny_model, monkeypatch, capsys):
    import inspect

    import uvicorn

    from tumorseg.app import server

    assert inspect.signature(server.serve).parameters["host"].default == "127.0.0.1"
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(host=host))
    server.serve(host="0.0.0.0", port=1, model=str(tiny_model), open_browser=False)
    err = capsys.readouterr().err
    assert seen["host"] == "0.0.0.0" and "WARNING" in err and "--token" in err


def test_the_page_takes_its_colours_from_the_clis_colormap(client):
    """One home for the JET colours: the page's instant re-rendering uses render.jet's values."""
    import numpy as np

    from tumorseg.imaging.render import jet

    lut = client.get("/api/colormap").json()["jet"]
    assert np.array_equal(np.array(lut, np.uint8), jet(np.arange(256) / 255.0))


@pytest.mark.parametrize("name", ["case.nii.gz", "case.NII", "series.zip", "slice1.dcm"])
def test_a_study_sent_as_an_image_is_sent_on(client, name):
    """Which names are studies has one home (``studies.FILE_FORMATS``); /api/segment asks it."""
    r = client.post("/api/segment", files={"file": (name, b"\x00" * 64)})
    assert r.status_code == 400 and r.json()["error"] == f"{name}: this is a study; send it to /api/study"


def test_an_image_sent_as_a_study_names_the_study_files(client):
    r = client.post("/api/study", files={"file": ("slice.png", png_bytes(np.zeros((8, 8), np.uint8)))})
    assert r.status_code == 400
    assert r.json()["error"] == "slice.png: a study must be one of these files: .nii, .nii.gz, .zip"
