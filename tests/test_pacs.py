"""Into the PACS: a real Orthanc with its DICOMweb plugin, started on loopback by the tests.

Studies are uploaded, listed, retrieved and segmented through the CLI and the app; the stored DICOM-SEG
and TID 1500 report are read back from Orthanc and checked against what was written to disk.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from .conftest import cli_predict, free_port, smooth_noise

ORTHANC = shutil.which("Orthanc")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ORTHANC and PLUGIN.is_file()),
        reason="Orthanc and its DICOMweb plugin are not installed (.ci/run: apt-get install orthanc orthanc-dicomweb)",
    ),
]
USER, PASSWORD = "radiology", "s3cret-pw"


def start_orthanc(root: Path, user: str = USER, password: str = PASSWORD) -> tuple[subprocess.Popen, str]:
    """A private Orthanc with DICOMweb on a free loopback port, storage in ``root``; (process, base URL)."""
    import requests

    port = free_port()
    cfg = {
        "Name": "tumorseg-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([ORTHANC, str(root / "config.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/system", auth=(user, password), timeout=1).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("Orthanc did not start within 30 s")


def upload(url: str, folder: Path, user: str = USER, password: str = PASSWORD) -> None:
    import requests

    for f in sorted(folder.rglob("*.dcm")):
        r = requests.post(f"{url}/instances", data=f.read_bytes(), auth=(user, password), timeout=10)
        assert r.ok, r.text


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    proc, url = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _series(folder: Path, study_uid: str, frame_uid: str, desc: str, seed: int, n: int = 6, modality: str = "MR"):
    """One series of a synthetic study; all series share one grid (as a co-registered protocol does)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "Test^Pacs", "PACS1", "O", "19700101"
        ds.StudyDate = ds.SeriesDate = datetime.date.today().strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
        ds.StudyDescription = "MR BRAIN"
        ds.SeriesDescription = desc
        ds.SeriesNumber, ds.InstanceNumber = seed, k + 1
        ds.Manufacturer = "synthetic"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-30.0, -30.0, 10 + k * 3.0]
        ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 3.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        img = smooth_noise((64, 64), 100 * seed + k, 400).astype(np.uint16)
        img[20:36, 24:40] += 300 if 1 <= k <= 4 else 0
        ds.PixelData = img.tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return series_uid


@pytest.fixture(scope="module")
def studies(orthanc, tmp_path_factory):
    """A three-sequence MR study (plus a localizer), a FLAIR-only study and a CT-only study."""
    root = tmp_path_factory.mktemp("pacs-src")
    full, frame = generate_uid(), generate_uid()
    series = {
        "flair": _series(root / "full" / "flair", full, frame, "AX T2 FLAIR", 2),
        "t1": _series(root / "full" / "t1", full, frame, "AX T1 SE", 3),
        "t1c": _series(root / "full" / "t1c", full, frame, "AX T1 POST GD", 4),
    }
    _series(root / "full" / "loc", full, frame, "LOCALIZER", 1, n=3)
    flair_only = generate_uid()
    _series(root / "flair_only" / "flair", flair_only, generate_uid(), "FLAIR", 5)
    ct = generate_uid()
    _series(root / "ct" / "ct", ct, generate_uid(), "HEAD CT", 6, modality="CT")
    upload(orthanc, root)
    return {"root": root, "full": full, "series": series, "flair_only": flair_only, "ct": ct}


@pytest.fixture
def pacs_env(monkeypatch):
    monkeypatch.setenv("TUMORSEG_PACS_USER", USER)
    monkeypatch.setenv("TUMORSEG_PACS_PASSWORD", PASSWORD)


def _web(url: str) -> str:
    return f"{url}/dicom-web"


def _client(url: str):
    import requests
    from dicomweb_client.api import DICOMwebClient

    s = requests.Session()
    s.auth = (USER, PASSWORD)
    return DICOMwebClient(_web(url), session=s)


def test_cli_retrieves_segments_stores_and_matches_the_files_on_disk(orthanc, studies, tiny_model, tmp_path, pacs_env):
    import highdicom as hd

    out = tmp_path / "pacs"
    rc = cli_predict(
        [], out, tiny_model, "--dicomweb", _web(orthanc), "--study", studies["full"], "--store", "--threshold", "0.3"
    )
    assert rc == 0
    folder = out / studies["full"]
    summary = json.loads((folder / "study.json").read_text())
    assert summary["pacs"]["series"] == studies["series"]  # FLAIR, T1, T1c picked; the localizer not
    assert any("FLAIR <- series" in c for c in summary["pacs"]["chosen"])
    assert [s.split()[0] for s in summary["stored"]] == ["DICOM-SEG", "SR"]

    # the same series read from disk give the same voxels
    src = studies["root"] / "full"
    disk = tmp_path / "disk"
    rc = cli_predict(
        [],
        disk,
        tiny_model,
        "--flair",
        str(src / "flair"),
        "--t1",
        str(src / "t1"),
        "--t1c",
        str(src / "t1c"),
        "--threshold",
        "0.3",
    )
    assert rc == 0
    disk_study = next(disk.glob("*/study.json")).parent
    a = np.asarray(nib.load(folder / "mask.nii.gz").dataobj)
    b = np.asarray(nib.load(disk_study / "mask.nii.gz").dataobj)
    assert a.shape == b.shape and np.array_equal(a, b) and a.any()
    assert summary["volume_ml"] == json.loads((disk_study / "study.json").read_text())["volume_ml"]

    # the stored SEG, read back from Orthanc, equals the mask on disk voxel for voxel, on the FLAIR series
    c = _client(orthanc)
    found = {
        d["00080060"]["Value"][0]: d["0020000E"]["Value"][0]
        for d in c.search_for_series(search_filters={"StudyInstanceUID": studies["full"]})
    }
    seg = hd.seg.Segmentation.from_dataset(c.retrieve_series(studies["full"], found["SEG"])[0])
    flair = sorted(
        c.retrieve_series(studies["full"], studies["series"]["flair"]), key=lambda d: float(d.ImagePositionPatient[2])
    )
    pix = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in flair], segment_numbers=[1]
    )[..., 0]
    assert np.array_equal(pix.astype(bool), np.transpose(a, (2, 1, 0)).astype(bool))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == studies["series"]["flair"]

    # the report's volume is study.json's
    sr = c.retrieve_series(studies["full"], found["SR"])[0]
    assert _sr_value(sr, "118565006") == pytest.approx(summary["volume_ml"], rel=1e-6)
    assert _sr_value(sr, "tumour-slices") == summary["slices_with_tumour"]


def _sr_value(sr, code: str) -> float | None:
    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in it else None
            value = name and (getattr(name, "CodeValue", None) or getattr(name, "LongCodeValue", None))
            if getattr(it, "ValueType", "") == "NUM" and value == code:
                return float(it.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in it:
                v = walk(it.ContentSequence)
                if v is not None:
                    return v
        return None

    return walk(sr.ContentSequence)


def test_pacs_list_prints_the_mr_studies(orthanc, studies, pacs_env, capsys):
    from tumorseg.cli.main import main

    assert main(["pacs", "list", _web(orthanc)]) == 0
    out = capsys.readouterr().out
    assert studies["full"] in out and studies["flair_only"] in out and studies["ct"] not in out
    assert main(["pacs", "list", _web(orthanc), "--patient", "NOBODY"]) == 0
    assert studies["full"] not in capsys.readouterr().out


def test_flair_only_study_is_segmented_alone_with_a_note(orthanc, studies, tiny_model, tmp_path, pacs_env):
    out = tmp_path / "o"
    assert cli_predict([], out, tiny_model, "--dicomweb", _web(orthanc), "--study", studies["flair_only"]) == 0
    s = json.loads((out / studies["flair_only"] / "study.json").read_text())
    assert list(s["pacs"]["series"]) == ["flair"] and s["single_sequence"]


@pytest.mark.parametrize(
    "case,message",
    [
        ("dead", "cannot be reached"),
        ("password", "login was refused"),
        ("no-mr", "holds no MR series"),
        ("unknown", "not found"),
    ],
)
def test_bad_cases_are_one_line_and_exit_2(orthanc, studies, tiny_model, tmp_path, monkeypatch, capsys, case, message):
    url, study = _web(orthanc), studies["full"]
    monkeypatch.setenv("TUMORSEG_PACS_USER", USER)
    monkeypatch.setenv("TUMORSEG_PACS_PASSWORD", "wrong" if case == "password" else PASSWORD)
    if case == "dead":
        url = f"http://127.0.0.1:{free_port()}/dicom-web"
    study = {"no-mr": studies["ct"], "unknown": generate_uid()}.get(case, study)
    rc = cli_predict([], tmp_path / "o", tiny_model, "--dicomweb", url, "--study", study)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not list((tmp_path / "o").glob("*/study.json"))  # nothing half-written


def test_credentials_come_from_a_file_never_the_command_line(orthanc, studies, tmp_path, monkeypatch, capsys):
    from tumorseg.cli.main import main

    monkeypatch.delenv("TUMORSEG_PACS_USER", raising=False)
    auth = tmp_path / "pacs-auth"
    auth.write_text(f"{USER}:{PASSWORD}\n")
    assert main(["pacs", "list", _web(orthanc), "--pacs-auth-file", str(auth)]) == 0
    assert studies["full"] in capsys.readouterr().out
    assert main(["pacs", "list", _web(orthanc)]) == 2  # no credentials: the login is refused, one line
    assert "login was refused" in capsys.readouterr().err


def test_app_lists_opens_and_stores_without_showing_credentials(orthanc, studies, tiny_model, pacs_env):
    from fastapi.testclient import TestClient

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor
    from tumorseg.pacs.config import PacsConfig

    app = create_app(Predictor(tiny_model, engine="torch-fp32"), dicomweb=PacsConfig.from_env(_web(orthanc)))
    with TestClient(app) as c:
        info = c.get("/api/pacs").json()
        assert info["enabled"] and PASSWORD not in json.dumps(info)
        listed = c.get("/api/pacs/studies").json()["studies"]
        assert studies["flair_only"] in {s["study_uid"] for s in listed}
        r = c.post("/api/pacs/open", data={"study_uid": studies["flair_only"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["slices"]) == 6 and body["measurements"]["kind"] == "dicom" and PASSWORD not in r.text
        st = c.post("/api/pacs/store", data={"result_id": body["result_id"], "threshold": "0.3"})
        assert st.status_code == 200, st.text
        assert [s.split()[0] for s in st.json()["stored"]] == ["DICOM-SEG", "SR"]
        bad = c.post("/api/pacs/open", data={"study_uid": studies["ct"]})
        assert bad.status_code == 502 and "no MR series" in bad.json()["error"]
        # the same as a job with progress, as the page opens PACS studies
        import time

        job = c.post("/api/jobs/pacs", data={"study_uid": studies["flair_only"]}).json()
        for _ in range(600):
            v = c.get(f"/api/jobs/{job['job_id']}").json()
            if v["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.05)
        assert v["state"] == "done" and v["done"] == v["total"] == 6 and v["result"]["pacs"], v
        job = c.post("/api/jobs/pacs", data={"study_uid": studies["ct"]}).json()
        for _ in range(600):
            v = c.get(f"/api/jobs/{job['job_id']}").json()
            if v["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.05)
        assert v["state"] == "failed" and v["status"] == 502 and "no MR series" in v["error"]
    # without --dicomweb the page has no PACS
    with TestClient(create_app(Predictor(tiny_model, engine="torch-fp32"))) as c:
        assert c.get("/api/pacs").json()["enabled"] is False
        assert c.get("/api/pacs/studies").status_code == 404


def test_page_lists_opens_and_sends_a_pacs_study(orthanc, studies, tiny_model, pacs_env):
    """In real Chromium: the study list, opening one, and "Send to PACS"."""
    import threading

    import uvicorn

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor
    from tumorseg.pacs.config import PacsConfig

    app = create_app(Predictor(tiny_model, engine="torch-fp32"), dicomweb=PacsConfig.from_env(_web(orthanc)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=str(chromium),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            )
            page = b.new_page(viewport={"width": 1280, "height": 720})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("[data-testid=pacs-open]", timeout=30000)
            assert studies["full"] in page.inner_html("[data-testid=pacs-studies]")
            page.fill("#pacs-patient", "PACS1")
            page.click("#pacs-search button[type=submit]")
            page.locator("[data-testid=pacs-open]").first.click()
            page.wait_for_selector("[data-testid=pacs-store]:not([hidden])", timeout=60000)
            assert page.inner_text("[data-testid=volume]") not in ("", "–")
            page.click("[data-testid=pacs-store]")
            page.wait_for_function(
                "document.querySelector('[data-testid=pacs-result]').textContent.includes('Stored')", timeout=30000
            )
            assert "DICOM-SEG" in page.inner_text("[data-testid=pacs-result]")
            b.close()
    finally:
        server.should_exit = True
        t.join(timeout=10)


def test_pacs_error_messages_never_leak_credentials(tmp_path):
    from tumorseg.pacs.config import PacsConfig, PacsError

    with pytest.raises(PacsError, match="http:// or https://"):
        PacsConfig.from_env("ftp://x")
    f = tmp_path / "a"
    f.write_text("nonsense\n")
    with pytest.raises(PacsError, match="user:password"):
        PacsConfig.from_env("http://x", str(f))
    f.write_text("Bearer abc\n")
    assert PacsConfig.from_env("http://x", str(f)).token == "abc"


def test_followup_with_prior_from_the_pacs_stores_linked_reports(orthanc, tiny_model, tmp_path, pacs_env, capsys):
    """`followup --dicomweb URL LATER --prior --store`: the baseline is the patient's earlier MR study (another
    patient's, dated between, is never chosen); each time point's SEG and SR go into its own study, and the two
    SRs carry one tracking UID."""
    import highdicom as hd
    import pydicom

    from tumorseg.cli.main import main

    from .test_followup import _dicom_study

    early = _dicom_study(tmp_path / "early", "PFU", "20240101", 0)
    late = _dicom_study(tmp_path / "late", "PFU", "20240402", 1)
    other = _dicom_study(tmp_path / "other", "PFU-2", "20240301", 2)
    for f in (early, late, other):
        upload(orthanc, f)
    uid = {k: pydicom.dcmread(next(f.iterdir())).StudyInstanceUID for k, f in (("early", early), ("late", late))}
    out = tmp_path / "out"
    args = ["followup", "--dicomweb", _web(orthanc), uid["late"], "--prior", "--store", "--out", str(out)]
    assert main([*args, "--model", str(tiny_model), "--engine", "torch-fp32"]) == 0
    s = json.loads((out / "followup.json").read_text())
    assert s["baseline"]["date"] == "2024-01-01" and s["followup"]["date"] == "2024-04-02"
    err = capsys.readouterr().err
    assert f"the prior study {uid['early']}" in err and err.count("stored into the") == 4
    client = _client(orthanc)
    tracking = set()
    for key in ("early", "late"):
        srs = [s for s in client.search_for_series(uid[key]) if s["00080060"]["Value"] == ["SR"]]
        assert len(srs) == 1
        (inst,) = client.retrieve_series(uid[key], srs[0]["0020000E"]["Value"][0])
        sr = hd.sr.Comprehensive3DSR.from_dataset(inst)
        (group,) = sr.content.get_volumetric_roi_measurement_groups()
        tracking.add(group.tracking_uid)
    assert len(tracking) == 1
    # no earlier study: a clear error, exit 2
    capsys.readouterr()
    bad = ["followup", "--dicomweb", _web(orthanc), uid["early"], "--prior", "--out", str(tmp_path / "x")]
    assert main([*bad, "--model", str(tiny_model), "--engine", "torch-fp32"]) == 2
    assert "no MR study of this patient dated before" in capsys.readouterr().err
