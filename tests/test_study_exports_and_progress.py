"""Viewer 2 and its server side: exports that tolerate absent type 2 attributes, failures that count,
study progress and cancel, names without internal prefixes, references offered from the study itself,
and display in patient space."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from .conftest import api_client, cli_predict, write_dicom_series

TYPE2_DROPPED = ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _series_without_type2(folder: Path) -> Path:
    write_dicom_series(folder, n=4)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for k in TYPE2_DROPPED:
            delattr(ds, k)
        ds.save_as(f)
    return folder


def test_dicom_seg_of_a_series_without_type2_attributes_is_written(tiny_model, tmp_path, predictor):
    src = _series_without_type2(tmp_path / "s")
    out = tmp_path / "out"
    assert cli_predict(src, out, tiny_model) == 0
    seg = pydicom.dcmread(next(out.glob("*/mask_seg.dcm")))
    assert seg.Modality == "SEG" and seg.PatientBirthDate == "" and seg.AccessionNumber == ""
    client = api_client(predictor)
    files = [("files", (p.name, p.read_bytes())) for p in sorted(src.iterdir())]
    body = client.post("/api/study", files=files).json()
    r = client.get(f"/api/result/{body['result_id']}/mask_seg.dcm")
    assert r.status_code == 200, r.text
    assert pydicom.dcmread(io.BytesIO(r.content)).Modality == "SEG"


def test_a_failed_export_is_a_failure_in_the_exit_code_and_summary(tiny_model, tmp_path, monkeypatch, capsys):
    import tumorseg.studies as studies

    def broken(sp):
        raise AttributeError("synthetic export failure")

    monkeypatch.setattr(studies.outputs, "dicom_seg_bytes", broken)
    write_dicom_series(tmp_path / "s", n=4)
    out = tmp_path / "out"
    assert cli_predict(tmp_path / "s", out, tiny_model) != 0
    err = capsys.readouterr().err
    assert "0 segmented" in err and "1 failed" in err
    summary = (out / "summary.csv").read_text()
    assert "DICOM-SEG not written" in summary and "synthetic export failure" in summary
    assert list(out.glob("*/mask.nii.gz")), "the other outputs are kept"


def _slice_stack(folder: Path, n: int, patient: str = "TCGA_XX_0001_20000101") -> list[Path]:
    from .conftest import png_bytes, smooth_noise

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(1, n + 1):
        p = folder / f"{patient}_{k}.png"
        p.write_bytes(png_bytes(smooth_noise((64, 64), seed=k)))
        out.append(p)
    return out


def _poll(client, job_id: str, timeout: float = 60.0) -> dict:
    import time

    t0 = time.monotonic()
    seen = []
    while time.monotonic() - t0 < timeout:
        v = client.get(f"/api/jobs/{job_id}").json()
        seen.append(v)
        if v["state"] in ("done", "failed", "cancelled"):
            return {**v, "seen": seen}
        time.sleep(0.05)
    raise AssertionError(f"job did not finish: {seen[-1]}")


def test_a_study_job_reports_progress_and_ends_with_the_study_answer(predictor, tmp_path):
    client = api_client(predictor)
    files = [("files", (p.name, p.read_bytes())) for p in _slice_stack(tmp_path / "s", 40)]
    r = client.post("/api/jobs/study", files=files)
    assert r.status_code == 202, r.text
    v = _poll(client, r.json()["job_id"])
    assert v["state"] == "done" and v["done"] == v["total"] == 40
    res = v["result"]
    assert res["filename"] == "TCGA_XX_0001_20000101"  # the CLI's name: the patient, no upload prefix
    assert [s["name"] for s in res["slices"]][:2] == ["TCGA_XX_0001_20000101_1.png", "TCGA_XX_0001_20000101_2.png"]
    direct = client.post("/api/study", files=files).json()
    assert direct["measurements"]["tumour_voxels"] == res["measurements"]["tumour_voxels"]
    assert client.get("/api/jobs/nope").status_code == 404


def test_a_failed_job_answers_what_the_synchronous_endpoint_answers(predictor, tmp_path, monkeypatch):
    """One mapping from failure to status and message (app.common.failure) for both."""
    client = api_client(predictor)

    def answers(files) -> list[tuple[int, str]]:
        r = client.post("/api/study", files=files)
        j = client.post("/api/jobs/study", files=files)
        job = _poll(client, j.json()["job_id"]) if j.status_code == 202 else {"status": j.status_code, **j.json()}
        return [(r.status_code, r.json()["error"]), (job["status"], job["error"])]

    bad = [("file", ("scan.nii.gz", b"\x1f\x8b not really gzip"))]
    (sync, job) = answers(bad)
    assert sync == job and sync[0] == 400 and "scan.nii.gz" in sync[1], (sync, job)

    def boom(*a, **k):
        raise RuntimeError("/secret/path exploded")

    monkeypatch.setattr(predictor, "predict_study", boom)
    files = [("files", (p.name, p.read_bytes())) for p in _slice_stack(tmp_path / "s", 3)]
    (sync, job) = answers(files)
    assert sync == job == (500, "internal error (RuntimeError); the server is still running"), (sync, job)


def test_a_study_job_can_be_cancelled_between_batches(predictor, tmp_path, monkeypatch):
    import time

    client = api_client(predictor)
    run = predictor.engine.run

    def slow(x):
        time.sleep(0.3)
        return run(x)

    monkeypatch.setattr(predictor.engine, "run", slow)
    files = [("files", (p.name, p.read_bytes())) for p in _slice_stack(tmp_path / "s", 64)]
    job = client.post("/api/jobs/study", files=files).json()
    assert client.delete(f"/api/jobs/{job['job_id']}").json()["state"] in ("cancelling", "queued", "cancelled")
    v = _poll(client, job["job_id"])
    assert v["state"] == "cancelled" and v["done"] < 64


def test_study_names_are_the_clis(tmp_path):
    from tumorseg.batch.plan import output_name
    from tumorseg.studies import study_name

    seqs = [f"Brats18_CBICA_ABM_1_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2")]
    assert study_name(seqs) == "Brats18_CBICA_ABM_1"
    assert study_name([f"TCGA_CS_6669_20020102_{k}.tif" for k in range(1, 12)]) == "TCGA_CS_6669_20020102"
    assert study_name(["IM0001.dcm", "IM0002.dcm"], folder="Patient 7 FLAIR") == "Patient 7 FLAIR"
    (tmp_path / "TCGA_CS_6669_20020102").mkdir()
    assert output_name(tmp_path / "TCGA_CS_6669_20020102", set()) == "TCGA_CS_6669_20020102"
    assert output_name({"flair": Path(seqs[0]), "t1": Path(seqs[1])}, set()) == "Brats18_CBICA_ABM_1"


def _nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, affine), path)
    return path


def _head(shape=(40, 48, 12)) -> np.ndarray:
    """A synthetic head in RAS voxel order with a marker towards the patient's right-anterior."""
    from .conftest import smooth_noise

    vol = np.stack([smooth_noise(shape[:2], seed=k, hi=800).astype(np.float32) for k in range(shape[2])], axis=2)
    vol[30:36, 36:42, :] = 3000.0  # right (+x) and anterior (+y)
    return vol


@pytest.mark.parametrize("storage", ["RAS", "LAS", "LPS"])
def test_every_storage_order_shows_anterior_up_and_the_patients_right_on_the_left(tmp_path, storage):
    from tumorseg.imaging.geometry import display_transform, geometry, volume_nifti_gz
    from tumorseg.studies import read_study

    vol = _head()
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    if "L" in storage[0]:  # stored right-to-left: same anatomy, flipped array and affine
        vol, aff = vol[::-1], aff @ np.array([[-1, 0, 0, vol.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    if storage[1] == "P":
        vol, aff = (
            vol[:, ::-1],
            aff @ np.array([[1, 0, 0, 0], [0, -1, 0, vol.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]),
        )
    st = read_study(_nifti(tmp_path / f"{storage}.nii.gz", np.ascontiguousarray(vol), aff))
    t = display_transform(st)
    assert t["plane"] == "axial" and t["known"]
    assert t["labels"] == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert display_transform(st, "neurological")["labels"] == {"top": "A", "bottom": "P", "left": "L", "right": "R"}
    # the displayed slice, turned as the page turns it, has the marker top-left (anterior, patient right)
    img = st.volume[6, ..., 1]
    if t["transpose"]:
        img = img.T
    if t["flip_x"]:
        img = img[:, ::-1]
    if t["flip_y"]:
        img = img[::-1]
    ys, xs = np.nonzero(img > 250)
    assert ys.mean() < img.shape[0] / 2 and xs.mean() < img.shape[1] / 2
    # the patient-space NIfTI puts the marker at the same world position as the input file
    import gzip

    import nibabel as nib

    g = geometry(st)
    out = nib.Nifti1Image.from_bytes(gzip.decompress(volume_nifti_gz(st, st.volume[..., 1])))
    assert np.allclose(out.affine, g["affine"], atol=1e-4)
    i, j, k = np.argwhere(out.get_fdata() > 250).mean(0)
    world = out.affine @ [i, j, k, 1]
    assert 30 <= world[0] <= 36 and 36 <= world[1] <= 42


def test_dicom_and_nifti_of_the_same_patient_show_the_same_way(tmp_path):
    from tumorseg.imaging.geometry import display_transform
    from tumorseg.studies import read_study

    write_dicom_series(tmp_path / "dcm", n=4)  # LPS: rows go posterior, columns go to the patient's left
    assert display_transform(read_study(tmp_path / "dcm"))["labels"] == {
        "top": "A",
        "bottom": "P",
        "left": "R",
        "right": "L",
    }


def test_study_answer_carries_geometry_and_volumes_open_in_patient_space(predictor, tmp_path):
    import gzip

    import nibabel as nib

    client = api_client(predictor)
    p = _nifti(tmp_path / "case_flair.nii.gz", np.ascontiguousarray(_head()), np.diag([1.0, 1.0, 3.0, 1.0]))
    body = client.post("/api/study", files={"file": (p.name, p.read_bytes())}).json()
    assert body["geometry"]["radiological"]["labels"]["top"] == "A"
    for what in ("flair", "prob", "mask"):
        r = client.get(f"/api/result/{body['result_id']}/view/{what}.nii.gz")
        assert r.status_code == 200, r.text
        img = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
        assert img.shape == (40, 48, 12) and np.allclose(img.affine, body["geometry"]["affine"], atol=1e-4)
    assert client.get(f"/api/result/{body['result_id']}/view/../x.nii.gz").status_code == 404
    assert client.get(f"/api/result/{body['result_id']}/view/etc.nii.gz").status_code == 404


def test_a_slice_folders_own_masks_are_the_reference(predictor, tmp_path):
    from .conftest import png_bytes

    client = api_client(predictor)
    slices = _slice_stack(tmp_path / "s", 6)
    masks = []
    for k, p in enumerate(slices):
        m = np.zeros((64, 64), np.uint8)
        m[10 + k : 30, 10:30] = 255
        masks.append(("files", (p.name.replace(".png", "_mask.png"), png_bytes(m))))
    body = client.post("/api/study", files=[("files", (p.name, p.read_bytes())) for p in slices]).json()
    r = client.post("/api/compare", data={"result_id": body["result_id"], "threshold": "0.0"}, files=masks)
    assert r.status_code == 200, r.text
    res = r.json()
    assert len(res["reference_png"]) == 6
    expected = sum((30 - 10 - k) * 20 for k in range(6))
    assert res["dice"] == pytest.approx(2 * expected / (expected + 6 * 64 * 64), rel=1e-3)  # threshold 0: all tumour
    bad = client.post("/api/compare", data={"result_id": body["result_id"]}, files=masks[:-1])
    assert bad.status_code == 400 and "no mask file for slice" in bad.json()["error"]


def test_a_label_map_opened_as_a_study_is_warned_about(predictor, tmp_path):
    seg = np.zeros((40, 48, 12), np.uint8)
    seg[10:20, 10:20, 3:8] = 2
    seg[12:16, 12:16, 4:6] = 4
    p = _nifti(tmp_path / "case_seg.nii.gz", seg, np.eye(4))
    body = api_client(predictor).post("/api/study", files={"file": (p.name, p.read_bytes())}).json()
    assert any("label map" in n for n in body["measurements"]["notes"])


def test_window_level_units_map_back_to_the_inputs_values(tmp_path):
    from tumorseg.imaging.geometry import geometry
    from tumorseg.studies import read_study

    vol = _head()
    st = read_study(_nifti(tmp_path / "u_flair.nii.gz", np.ascontiguousarray(vol), np.diag([1.0, 1.0, 3.0, 1.0])))
    units = geometry(st)["units"]
    m, b = units[1]
    # a displayed value below saturation maps back to the voxel's own value (up to the uint8 step)
    k, r, c = 6, 20, 20
    shown = float(st.volume[k, r, c, 1])
    assert 0 < shown < 255
    raw = vol[c, vol.shape[1] - 1 - r, k]  # displayed (r, c) of slice k = array (i=c, j=ny-1-r, k)
    assert abs(shown * m + b - raw) <= abs(m) * 1.01
