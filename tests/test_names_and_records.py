"""Names from every alphabet, spreadsheets, and the records the tool reads back (hardening round 4, items
5, 8, 10, 11, 12, 13 and 16): downloads named in Polish, Cyrillic, Greek or CJK; a folder name that tries
to add header parameters; summary.csv cells a spreadsheet would run; --skip-done over a study.json of any
shape; the engine cache with any content; study jobs counted against the model slots; a restart on the
same port."""

from __future__ import annotations

import csv
import json
import os
import socket
import threading
import time
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest

from .conftest import api_client, cli_predict, png_bytes, smooth_noise

NAMES = ["Zażółć_gęślą", "Пациент_Иванов", "Ασθενής", "患者_山田", "환자"]


def _nifti_bytes(tmp_path) -> bytes:
    vol = np.zeros((40, 40, 5), np.int16)
    vol[10:20, 10:20, 1:4] = 500
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.5, 2.0, 1.0])), p)
    return p.read_bytes()


def _filename(resp) -> str:
    cd = resp.headers["content-disposition"]
    assert "\r" not in cd and "\n" not in cd
    return unquote(cd.split("filename*=UTF-8''", 1)[1])


@pytest.mark.parametrize("name", NAMES)
def test_downloads_are_named_in_any_alphabet(predictor, tmp_path, name):
    """Item 5: mask.png, study.zip and mask.nii.gz of a study named outside Latin-1 answer 200 with the exact
    name (RFC 5987) and an ASCII fallback."""
    client = api_client(predictor)
    r = client.post("/api/study", files={"file": (f"{name}.nii.gz", _nifti_bytes(tmp_path))})
    assert r.status_code == 200, r.text
    rid = r.json()["result_id"]
    for path, suffix in (
        ("mask.png", "_slice0001_mask.png"),
        ("study.zip", "_tumorseg.zip"),
        ("mask.nii.gz", "_mask.nii.gz"),
    ):
        d = client.get(f"/api/result/{rid}/{path}")
        assert d.status_code == 200, (path, d.text)
        assert _filename(d) == f"{name}{suffix}"
        assert 'filename="' in d.headers["content-disposition"]


def test_a_folder_name_cannot_add_header_parameters(predictor, tmp_path):
    """Item 16: the page's folder field (it names the study) with a quote, a semicolon and CR-LF: the download
    answers 200, one header, no parameter or header added."""
    client = api_client(predictor)
    folder = 'x"; filename=evil.exe\r\nSet-Cookie: a=b'
    files = [("files", (f"P_{n}.png", png_bytes(smooth_noise((32, 32, 3), n)))) for n in (1, 2, 3)]
    r = client.post("/api/study", files=files, data={"folder": folder})
    assert r.status_code == 200, r.text
    d = client.get(f"/api/result/{r.json()['result_id']}/study.zip")
    assert d.status_code == 200 and "set-cookie" not in {k.lower() for k in d.headers}
    from email.message import Message

    m = Message()
    m["content-disposition"] = d.headers["content-disposition"]
    params = m.get_params(header="content-disposition")
    assert [k for k, _ in params] == ["attachment", "filename", "filename"]  # nothing added (filename* decoded)
    assert m.get_filename().endswith("_tumorseg.zip")


def test_summary_cells_that_look_like_formulas_are_quoted(tiny_model, tmp_path):
    """Item 13: file names starting with =, +, - or @ reach summary.csv as text, not as formulas; numbers stay
    numbers."""
    src = tmp_path / "in"
    src.mkdir()
    names = ["=cmd|' -C calc'!A0.png", "+1+1.png", "-2+3.png", "@SUM(1).png", "plain.png"]
    for i, n in enumerate(names):
        (src / n).write_bytes(png_bytes(smooth_noise((64, 64, 3), i)))
    assert cli_predict(src, tmp_path / "out", tiny_model) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").read_text().splitlines()))
    for row in rows:
        for v in row.values():
            assert not v or v[0] not in "=+-@", row
    assert {r["file"].lstrip("'").split("/")[-1] for r in rows} >= set(names)


@pytest.mark.parametrize("content", ["[]", "null", '{"run": null}', '{"run": 5, "source_label": []}', "{", "\x00\xff"])
def test_skip_done_over_a_study_json_of_any_shape(tiny_model, tmp_path, capsys, content):
    """Item 8: a study.json of the wrong shape is not 'done': the study is segmented again, summary.csv written,
    no traceback."""
    vol = np.zeros((40, 40, 5), np.int16)
    vol[10:20, 10:20, 1:4] = 500
    p = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.5, 2.0, 1.0])), p)
    out = tmp_path / "out"
    assert cli_predict(p, out, tiny_model) == 0
    sj = out / "case" / "study.json"
    good = json.loads(sj.read_text())
    sj.write_text(content)
    assert cli_predict(p, out, tiny_model, "--skip-done") == 0
    assert "Traceback" not in capsys.readouterr().err
    assert json.loads(sj.read_text())["volume_ml"] == good["volume_ml"]
    assert (out / "summary.csv").is_file()
    # a record of the right run but with fields missing or of the wrong type: also redone
    bad = {**good, "tumour_voxels": None, "max_probability": "high"}
    sj.write_text(json.dumps(bad))
    assert cli_predict(p, out, tiny_model, "--skip-done") == 0
    assert json.loads(sj.read_text())["max_probability"] == good["max_probability"]


@pytest.mark.parametrize(
    "record",
    [
        [],
        "onnx-int8",
        {"engine": 5},
        {"engine": "torch-fp32", "timings_ms": []},
        {"engine": "torch-fp32", "timings_ms": {"torch-fp32": "fast"}},
    ],
)
def test_the_engine_cache_tolerates_any_record(tmp_path, monkeypatch, record):
    """Item 12: a wrong-typed record in the engine cache is ignored (the engine choice measures again and rewrites it)."""
    from tumorseg.engines import choice as engine_choice

    monkeypatch.setattr(engine_choice, "user_cache_dir", lambda: tmp_path)
    loads = []

    def load(name):
        loads.append(name)
        return type("E", (), {"run": lambda self, x: None})()

    kp = {"model_sha256": "m", "versions": {}}
    c, _ = engine_choice.choose(["torch-fp32", "onnx-int8"], {}, load, 32, 1, kp, timer=lambda *a: 1.0)
    data = json.loads((tmp_path / engine_choice.CACHE_FILE).read_text())
    key = next(iter(data))
    data[key] = record
    (tmp_path / engine_choice.CACHE_FILE).write_text(json.dumps(data))
    loads.clear()
    c2, _ = engine_choice.choose(["torch-fp32", "onnx-int8"], {}, load, 32, 1, kp, timer=lambda *a: 1.0)
    assert not c2.cached and loads  # measured again
    c3, _ = engine_choice.choose(["torch-fp32", "onnx-int8"], {}, load, 32, 1, kp, timer=lambda *a: 1.0)
    assert c3.cached  # and rewritten


@pytest.mark.parametrize("kind", ["dev-zero-link", "fifo", "huge"])
def test_the_engine_cache_is_never_read_from_a_device_fifo_or_huge_file(tmp_path, kind):
    """Item 12: a cache file that is a symlink to an endless device, a FIFO, or larger than any real cache is
    not read (it would hang or exhaust memory): the engine choice just measures."""
    from tumorseg.engines.choice import _read_cache

    f = tmp_path / "engines.json"
    if kind == "dev-zero-link":
        f.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(f)
    else:
        f.write_bytes(b"{" + b" " * (2 << 20) + b"}")
    t0 = time.monotonic()
    assert _read_cache(f) == {}
    assert time.monotonic() - t0 < 2


def test_study_jobs_count_against_the_model_slots(predictor, tmp_path):
    """Item 10: a study job holds one of the documented model slots for its model work, so with both slots
    taken a job waits (queued) instead of running beside them."""
    from tumorseg.app.guard import ModelSlots
    from tumorseg.app.jobs import JobStore

    slots = ModelSlots(2)
    jobs = JobStore(slots)
    held = [slots.ticket(), slots.ticket()]
    assert all(slots.enter(t) for t in held)
    ran = threading.Event()

    def work(job):
        with job.model_slot():
            ran.set()
            return 1

    job = jobs.start("a study", work, lambda r: {"ok": r})
    time.sleep(0.3)
    assert not ran.is_set() and job.view()["state"] == "queued"
    slots.release()
    for _ in range(100):
        if job.view()["state"] == "done":
            break
        time.sleep(0.05)
    assert ran.is_set() and job.view()["result"] == {"ok": 1}
    slots.release()
    assert slots.active == 0


def test_the_app_restarts_on_a_port_its_last_clients_left_in_time_wait():
    """Item 11: the start-up port check binds as uvicorn does (SO_REUSEADDR), so a port whose last connections
    are in TIME_WAIT is free to serve again at once; a port really in use is still refused."""
    from tumorseg.app.server import serve

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.listen()
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server side closes first: its end of the connection lingers in TIME_WAIT
    cli.close()
    srv.close()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))  # what serve's check now does: it succeeds
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(OSError, match="another program"):
            serve(port=busy.getsockname()[1], open_browser=False)
    finally:
        busy.close()


def test_two_writers_swapping_one_study_folder_never_fail_nor_leave_old_folders(tmp_path):
    """Item 17: two processes writing one --out swap the same study folder at once; every swap succeeds, the
    last complete folder wins, and no hidden .old- folder is left."""
    from tumorseg.batch.items import _swap_in

    out = tmp_path / "out"
    out.mkdir()
    final = out / "case"
    errors = []

    def writer(w: int) -> None:
        for i in range(60):
            tmp = out / f".case.partial-{w}-{i}"
            tmp.mkdir()
            (tmp / "study.json").write_text(json.dumps({"writer": w, "i": i}))
            try:
                _swap_in(tmp, final)
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in out.iterdir()) == ["case"]
    assert json.loads((final / "study.json").read_text())["i"] == 59


def test_a_symlink_named_like_a_study_folder_is_replaced_not_followed(tmp_path):
    """Item 17: a symlink where a study folder goes is unlinked (its target untouched), not left behind under
    a hidden name."""
    from tumorseg.batch.items import _swap_in

    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case").symlink_to(target, target_is_directory=True)
    tmp = out / ".case.partial-x"
    tmp.mkdir()
    (tmp / "study.json").write_text("{}")
    _swap_in(tmp, out / "case")
    assert not (out / "case").is_symlink() and (out / "case" / "study.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["case"]
    assert (target / "keep.txt").read_text() == "mine"


def test_finished_job_answers_are_serialised_once_and_bounded(monkeypatch):
    """Item 10: a finished job's answer is serialised once (every poll sends the same bytes) and finished
    answers together stay within MAX_ANSWER_BYTES, the oldest forgotten first (the newest always kept)."""
    from tumorseg.app import jobs as jobs_mod
    from tumorseg.app.common import BadRequest
    from tumorseg.app.jobs import JobStore

    monkeypatch.setattr(jobs_mod, "MAX_ANSWER_BYTES", 3000)
    store = JobStore()
    done = []
    for i in range(4):
        job = store.start(f"s{i}", lambda job: "x" * 1000, lambda r: {"big": r})
        for _ in range(100):
            if job.view()["state"] == "done":
                break
            time.sleep(0.01)
        done.append(job)
    last = done[-1]
    a, b = last.response().body, last.response().body
    assert a == b and json.loads(a)["result"] == {"big": "x" * 1000} and json.loads(a)["state"] == "done"
    kept = [j for j in done if j.id in store._jobs]
    assert last in kept and len(kept) == 2  # 2 x ~1 kB within 3 kB; the oldest were forgotten
    with pytest.raises(BadRequest):
        store.get(done[0].id)


def test_held_study_counts_its_slice_images_and_dicom_pixels(tmp_path, predictor):
    """Item 10: a held DICOM study is counted with everything it keeps alive (slice images, DICOM pixel data)."""
    from tumorseg.app.results import _held_bytes

    from .conftest import write_dicom_series

    write_dicom_series(tmp_path / "s", n=6, rows=64, cols=64)
    sp = predictor.predict_study(tmp_path / "s")
    arrays = sp.prob.nbytes + sp.mask.nbytes + sp.study.volume.nbytes  # the slice images are views of the volume
    pixels = sum(len(ds.PixelData) for ds in sp.study.dicom)
    assert all(np.shares_memory(im, sp.study.volume) for im in sp.images)
    assert (
        arrays + pixels
        <= _held_bytes(sp)
        <= arrays + pixels + (sp.uncertainty.nbytes if sp.uncertainty is not None else 0) + sp.study.affine.nbytes
    )  # the study's own small arrays (its affine) count too


def test_the_app_serves_while_its_model_loads(tiny_model):
    """Viewer 3, item 7: on a fresh machine the engine choice takes seconds; the page and /api/health answer at
    once ("loading"), and a model request waits for the model, then answers."""
    from fastapi.testclient import TestClient

    from tumorseg.app.server import LoadingPredictor, create_app
    from tumorseg.inference import Predictor

    def slow():
        time.sleep(1.5)
        return Predictor(tiny_model, engine="torch-fp32")

    with TestClient(create_app(LoadingPredictor(slow))) as c:
        t0 = time.monotonic()
        assert c.get("/").status_code == 200
        assert c.get("/api/health").json()["status"] == "loading"
        assert time.monotonic() - t0 < 1.0
        assert c.get("/api/model").json()["input_size"] == 64  # waited for the model
        assert c.get("/api/health").json()["status"] == "ok"
    broken = LoadingPredictor(lambda: 1 / 0)
    with TestClient(create_app(broken)) as c:
        r = c.get("/api/model")
        assert r.status_code == 503 and "could not be loaded" in r.json()["error"]
