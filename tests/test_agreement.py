"""One input, one threshold, one answer: Predictor, REST API, CLI files and the page's downloads agree."""

from __future__ import annotations

import io
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tumorseg.app.server import create_app
from tumorseg.inference import Predictor

from .conftest import cli_predict, png_bytes, save_tiny_model, smooth_noise


@pytest.fixture(scope="module")
def cc_model(tmp_path_factory):
    """The tiny model with a small-component rule, so that post-processing matters."""
    return save_tiny_model(tmp_path_factory.mktemp("ccmodel") / "cc.safetensors", seed=3, min_component_pixels=40)


@pytest.fixture(scope="module")
def cc_pred(cc_model):
    return Predictor(cc_model, engine="torch-fp32")


def _count(png: bytes) -> int:
    return int((np.asarray(Image.open(io.BytesIO(png))) > 0).sum())


def _threshold_with_small_components(pred, img) -> float:
    """A threshold where the component rule removes something (else the test would prove nothing)."""
    prob = pred.predict(img).prob  # a random model's probabilities sit in a narrow band: search its quantiles
    for q in np.linspace(0.5, 0.995, 100):
        t = float(np.quantile(prob, q))
        kept = pred.mask_from_prob(prob, t).sum()
        if 0 < kept < (prob >= t).sum():
            return t
    pytest.skip("the random model gives no small components on this image")


def test_slice_agrees_everywhere(cc_pred, cc_model, tmp_path):
    img = smooth_noise((96, 80, 3), 5)
    t = _threshold_with_small_components(cc_pred, img)
    src = tmp_path / "slice.png"
    src.write_bytes(png_bytes(img))
    py = cc_pred.predict(src, threshold=t)
    client = TestClient(create_app(cc_pred))
    r = client.post("/api/segment", files={"file": ("slice.png", src.read_bytes())}, data={"threshold": str(t)})
    assert r.status_code == 200
    body = r.json()
    # the page re-thresholds through /api/mask and downloads /api/result/<id>/mask.png
    m = client.post("/api/mask", data={"result_id": body["result_id"], "threshold": str(t)}).json()
    dl = client.get(f"/api/result/{body['result_id']}/mask.png", params={"threshold": t})
    assert dl.status_code == 200 and 'filename="slice_mask.png"' in dl.headers["content-disposition"]
    out = tmp_path / "out"
    assert cli_predict(src, out, cc_model, "--threshold", str(t)) == 0
    cli_png = (out / "slice_mask.png").read_bytes()
    counts = {
        "python": py.area_pixels,
        "api": body["tumour_pixels"],
        "api_mask": m["tumour_pixels"],
        "download": _count(dl.content),
        "cli": _count(cli_png),
    }
    assert len(set(counts.values())) == 1, counts
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(dl.content))), np.asarray(Image.open(out / "slice_mask.png"))
    )
    # a threshold moved later, without a model call, still agrees with the CLI at that threshold
    t2 = float(np.quantile(py.prob, 0.9))
    m2 = client.post("/api/mask", data={"result_id": body["result_id"], "threshold": str(t2)}).json()
    assert m2["tumour_pixels"] == cc_pred.predict(src, threshold=t2).area_pixels


def test_study_volume_and_downloads_agree_with_cli(cc_pred, cc_model, tmp_path):
    rng = np.random.default_rng(1)
    vol = (rng.random((48, 40, 6)) * 400).astype(np.int16)
    vol[10:30, 12:28, 1:5] += 900
    p = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.9, 2.5, 1.0])), str(p))
    client = TestClient(create_app(cc_pred))
    body = client.post("/api/study", files={"file": ("case.nii.gz", p.read_bytes())}).json()
    t = 0.55
    m = client.post("/api/mask", data={"result_id": body["result_id"], "threshold": str(t), "slice": "2"}).json()
    z = client.get(f"/api/result/{body['result_id']}/study.zip", params={"threshold": t})
    assert z.status_code == 200
    zf = zipfile.ZipFile(io.BytesIO(z.content))
    names = set(zf.namelist())
    assert {"case/mask.nii.gz", "case/study.json"} <= names
    page_json = json.loads(zf.read("case/study.json"))
    out = tmp_path / "out"
    assert cli_predict(p, out, cc_model, "--threshold", str(t)) == 0
    cli_json = json.loads((out / "case" / "study.json").read_text())
    for k in ("tumour_voxels", "volume_ml", "slices_with_tumour", "largest_diameter_mm"):
        assert page_json[k] == cli_json[k] == m["measurements"][k], k
    assert cli_json["source"].endswith("case.nii.gz") and page_json["source"] == "case.nii.gz"
    cli_nii = nib.load(str(out / "case" / "mask.nii.gz"))
    page_nii = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(zf.read("case/mask.nii.gz")))
    assert np.array_equal(np.asarray(cli_nii.dataobj), np.asarray(page_nii.dataobj))
    assert np.allclose(cli_nii.affine, page_nii.affine)
    py = cc_pred.predict_study(p, threshold=t)
    assert py.measurements["tumour_voxels"] == cli_json["tumour_voxels"]


def test_unknown_result_is_404(cc_pred):
    client = TestClient(create_app(cc_pred))
    r = client.post("/api/mask", data={"result_id": "nope", "threshold": "0.5"})
    assert r.status_code == 404 and "open the file again" in r.json()["error"]


def test_reference_comparison_for_a_slice_matches_the_cli(cc_pred, cc_model, tmp_path):
    img = smooth_noise((96, 80, 3), 7)
    src = tmp_path / "slice.png"
    src.write_bytes(png_bytes(img))
    ref = np.zeros((96, 80), np.uint8)
    ref[20:60, 10:50] = 255
    ref_path = tmp_path / "slice_ref.png"
    Image.fromarray(ref).save(ref_path)
    client = TestClient(create_app(cc_pred))
    body = client.post("/api/segment", files={"file": ("slice.png", src.read_bytes())}).json()
    r = client.post(
        "/api/compare", data={"result_id": body["result_id"]}, files={"file": ("slice_ref.png", ref_path.read_bytes())}
    )
    assert r.status_code == 200, r.text[:300]
    out = tmp_path / "o"
    assert cli_predict(src, out, cc_model, "--reference", str(ref_path)) == 0
    cli = json.loads((out / "comparison.json").read_text())
    assert r.json()["dice"] == pytest.approx(cli["dice"]) and cli["reference_voxels"] == 1600
    wrong = np.zeros((10, 10), np.uint8)
    r = client.post("/api/compare", data={"result_id": body["result_id"]}, files={"file": ("w.png", png_bytes(wrong))})
    assert r.status_code == 400 and "w.png" in r.json()["error"]
    # study-only downloads refuse a 2D result with a reason
    r = client.get(f"/api/result/{body['result_id']}/mask.nii.gz")
    assert r.status_code == 400 and "not a study" in r.json()["error"]
