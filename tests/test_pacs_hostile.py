"""Hardening round 4, the PACS items, against a fake DICOMweb server on loopback that misbehaves on purpose:
answers without end or without a boundary, dripping answers, another patient's or another study's images,
random bytes, redirects to another origin, a password in the URL, malformed UIDs; and the app's PACS calls
never hold a model slot nor fill the thread pool."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from tumorseg.pacs import client, config, transport
from tumorseg.pacs.client import Pacs
from tumorseg.pacs.config import InvalidUID, PacsConfig, PacsError
from tumorseg.pacs.usecases import open_study

from .conftest import write_dicom_series

BOUNDARY = "tumorsegboundary"


def _series(tmp: Path, patient: str = "X1"):
    folder = tmp / "src"
    write_dicom_series(folder, n=3)
    dss = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    for ds in dss:
        ds.PatientID = patient
    return dss


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Fake:
    """A DICOMweb server with one study; ``mode`` says how it misbehaves on instance retrieval."""

    def __init__(self, dss, mode: str = "ok", patient: str = "X1"):
        self.dss, self.mode, self.patient = dss, mode, patient
        self.sent = 0
        self.other = None  # a second server, for redirects
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                try:
                    fake.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def study(self) -> str:
        return str(self.dss[0].StudyInstanceUID)

    @property
    def series(self) -> str:
        return str(self.dss[0].SeriesInstanceUID)

    def handle(self, h) -> None:
        path = h.path.split("?")[0][len("/dicom-web") :]
        parts = [p for p in path.split("/") if p]
        if self.mode == "redirect" and parts[-1:] != ["series"]:
            h.send_response(302)
            h.send_header("Location", self.other + h.path[len("/dicom-web") :])
            h.end_headers()
            return
        if parts == ["studies"]:
            return h._json(
                [{"0020000D": {"vr": "UI", "Value": [self.study]}, "00100020": {"vr": "LO", "Value": [self.patient]}}]
            )
        if parts[-1] == "series":
            return h._json(
                [
                    {
                        "0020000E": {"vr": "UI", "Value": [self.series]},
                        "00080060": {"vr": "CS", "Value": ["MR"]},
                        "0008103E": {"vr": "LO", "Value": ["AX FLAIR"]},
                        "00201209": {"vr": "IS", "Value": [len(self.dss)]},
                    }
                ]
            )
        if parts[-1] == "instances":
            return h._json([{"00080018": {"vr": "UI", "Value": [str(d.SOPInstanceUID)]}} for d in self.dss])
        sop = parts[-1]
        ds = next((d for d in self.dss if str(d.SOPInstanceUID) == sop), self.dss[0])
        h.send_response(200)
        h.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        if self.mode in ("endless", "no-boundary", "drip"):
            h.end_headers()
            head = (
                b""
                if self.mode == "no-boundary"
                else f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            )
            h.wfile.write(head)
            chunk = b"\0" * (1 << 16)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:
                h.wfile.write(chunk[:10] if self.mode == "drip" else chunk)
                self.sent += 10 if self.mode == "drip" else len(chunk)
                if self.mode == "drip":
                    h.wfile.flush()
                    time.sleep(0.2)
            return
        data = b"\x00garbage\xff" * 50 if self.mode == "random" else _bytes(ds)
        body = (
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + data
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self):
        self.server.shutdown()


@pytest.fixture
def series(tmp_path):
    return _series(tmp_path)


def _pacs(fake: Fake, **kw) -> Pacs:
    return Pacs(PacsConfig.from_env(fake.url, **kw))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_well_behaved_archive_still_retrieves_instance_by_instance(series, tmp_path):
    fake = Fake(series)
    try:
        st = open_study(_pacs(fake), fake.study, None, tmp_path / "got")
        assert st.n_slices == 3 and st.pacs["study_uid"] == fake.study
    finally:
        fake.close()


@pytest.mark.parametrize("mode", ["endless", "no-boundary"])
def test_an_endless_answer_is_cut_as_it_streams(series, tmp_path, monkeypatch, mode):
    """Item 1: an instance answer without end, or without a boundary, is counted as it streams and cut at the
    per-instance limit (here 8 MB), never buffered whole; memory stays far under +300 MB."""
    monkeypatch.setattr(client, "MAX_INSTANCE_BYTES", 8 << 20)
    fake = Fake(series, mode)
    try:
        before = _rss_mb()
        with pytest.raises(PacsError, match="larger than 8 MB"):
            _pacs(fake).retrieve(fake.study, fake.series, tmp_path / "got")
        assert _rss_mb() - before < 300
        assert fake.sent < 64 << 20  # stopped reading long before the server stopped sending
    finally:
        fake.close()


def test_a_dripping_answer_ends_at_the_request_deadline(series, tmp_path, monkeypatch):
    """Item 2: the read timeout alone never ends a drip; the per-request deadline does."""
    monkeypatch.setattr(transport, "DEADLINE_S", 1.5)
    fake = Fake(series, "drip")
    try:
        t0 = time.monotonic()
        with pytest.raises(PacsError, match="took longer than 1.5 s"):
            _pacs(fake).retrieve(fake.study, fake.series, tmp_path / "got")
        assert time.monotonic() - t0 < 6
    finally:
        fake.close()


def test_another_patient_or_study_is_refused_and_never_shown(series, tmp_path):
    """Item 3: instances of another study, or of another patient than the study's, are refused before anything
    is read as the study (so nothing can be stored back into it)."""
    fake = Fake(series, patient="SOMEONE-ELSE")  # the archive's study belongs to another PatientID
    try:
        with pytest.raises(PacsError, match="another patient"):
            open_study(_pacs(fake), fake.study, None, tmp_path / "a")
        fake.patient = "X1"
        series[1].StudyInstanceUID = "1.2.3.4"  # one instance of another study
        with pytest.raises(PacsError, match="belongs to study 1.2.3.4, not the requested"):
            open_study(_pacs(fake), fake.study, None, tmp_path / "b")
        series[1].StudyInstanceUID = series[0].StudyInstanceUID
        series[2].PatientID = "Y2"  # one instance of another patient
        with pytest.raises(PacsError, match="another patient"):
            open_study(_pacs(fake), fake.study, None, tmp_path / "c")
    finally:
        fake.close()


def test_a_password_in_the_url_is_refused_without_repeating_it():
    """Item 4."""
    with pytest.raises(PacsError) as exc:
        PacsConfig.from_env("http://radiology:s3cret@127.0.0.1:8042/dicom-web")
    assert "s3cret" not in str(exc.value) and "credentials in the URL are refused" in str(exc.value)
    assert "s3cret" not in repr(PacsConfig("http://x", "u", "s3cret"))


def test_random_bytes_are_one_line_and_a_bad_uid_is_the_users_fault(series, tmp_path, capsys, tiny_model):
    """Item 9: random bytes are a PacsError (CLI: one line, exit 2); a malformed UID is refused as input,
    before anything is sent."""
    from tumorseg.cli.main import main

    fake = Fake(series, "random")
    try:
        with pytest.raises(PacsError, match="not valid DICOMweb"):
            _pacs(fake).retrieve(fake.study, fake.series, tmp_path / "got")
        args = ["predict", "--dicomweb", fake.url, "--out", str(tmp_path / "o"), "--model", str(tiny_model)]
        assert main([*args, "--study", fake.study]) == 2
        err = capsys.readouterr().err
        assert "not valid DICOMweb" in err and "Traceback" not in err
        assert main([*args, "--study", "1.2.x;DROP"]) == 2
        assert "is not a DICOM UID" in capsys.readouterr().err
    finally:
        fake.close()
    with pytest.raises(InvalidUID):
        config.check_uid("1." + "2" * 70)


def test_redirects_to_another_origin_are_refused_unless_allowed(series, tmp_path):
    """Item 14: a retrieval redirected off the configured origin is refused (a STOW goes the same way);
    --pacs-allow-redirect ORIGIN allows it."""
    good = Fake(series)
    bad = Fake(series, "redirect")
    bad.other = good.url
    try:
        with pytest.raises(PacsError, match="redirected to another origin"):
            open_study(_pacs(bad), bad.study, None, tmp_path / "a")
        origin = good.url.rsplit("/", 1)[0]
        st = open_study(_pacs(bad, allow_redirects_to=[origin]), bad.study, None, tmp_path / "b")
        assert st.n_slices == 3
    finally:
        good.close()
        bad.close()


def test_app_pacs_calls_hold_no_model_slot_and_never_fill_the_thread_pool(series, tiny_model, monkeypatch):
    """Item 2 in the app: while two retrievals drip, /api/segment is served (they hold no model slot), a fifth
    PACS call is refused at once with a 503, and /api/health answers fast."""
    from fastapi.testclient import TestClient

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor

    from .conftest import png_bytes, smooth_noise

    monkeypatch.setattr(transport, "DEADLINE_S", 6.0)
    fake = Fake(series, "drip")
    try:
        app = create_app(predictor=Predictor(tiny_model, engine="torch-fp32"), dicomweb=PacsConfig.from_env(fake.url))
        with TestClient(app) as c:
            results = []

            def open_():
                results.append(c.post("/api/pacs/open", data={"study_uid": fake.study}).status_code)

            threads = [threading.Thread(target=open_) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            t0 = time.monotonic()
            r = c.post("/api/segment", files={"file": ("a.png", png_bytes(smooth_noise((64, 64, 3))), "image/png")})
            assert r.status_code == 200 and time.monotonic() - t0 < 5
            assert c.post("/api/pacs/open", data={"study_uid": fake.study}).status_code == 503
            t0 = time.monotonic()
            assert c.get("/api/health").status_code == 200 and time.monotonic() - t0 < 1
            assert c.post("/api/pacs/open", data={"study_uid": "not-a-uid"}).status_code in (400, 503)
            for t in threads:
                t.join(30)
            assert results == [502] * 4  # each ended at its deadline with the archive's fault
    finally:
        fake.close()
