"""Viewer 2 and its server side: exports that tolerate absent type 2 attributes, failures that count,
study progress and cancel, names without internal prefixes, references offered from the study itself,
and display in patient space."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom

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

    monkeypatch.setattr(studies, "dicom_seg_bytes", broken)
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
    from tumorseg.batch import output_name
    from tumorseg.studies import study_name

    seqs = [f"Brats18_CBICA_ABM_1_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2")]
    assert study_name(seqs) == "Brats18_CBICA_ABM_1"
    assert study_name([f"TCGA_CS_6669_20020102_{k}.tif" for k in range(1, 12)]) == "TCGA_CS_6669_20020102"
    assert study_name(["IM0001.dcm", "IM0002.dcm"], folder="Patient 7 FLAIR") == "Patient 7 FLAIR"
    (tmp_path / "TCGA_CS_6669_20020102").mkdir()
    assert output_name(tmp_path / "TCGA_CS_6669_20020102", set()) == "TCGA_CS_6669_20020102"
    assert output_name({"flair": Path(seqs[0]), "t1": Path(seqs[1])}, set()) == "Brats18_CBICA_ABM_1"
