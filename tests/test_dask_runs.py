"""Archive runs on Dask: same outputs as a local run, a killed worker loses nothing, --skip-done, manifests."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import cli_predict, free_port, smooth_noise

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


def _studies(folder: Path, n: int, slices: int = 6) -> list[Path]:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        vol = np.stack([smooth_noise((48, 48), 100 * k + z, 300, np.int16) for z in range(slices)], axis=2)
        vol[18:30, 20:32, 1:-1] += 400
        p = folder / f"case{k:02d}.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 3.0, 1.0])), str(p))
        paths.append(p)
    return paths


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "summary.csv").read_text().splitlines()))


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    studies = _studies(root / "in", 4)
    bad = root / "in" / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not a NIfTI")
    return root, studies + [bad]


def test_local_cluster_writes_what_a_local_run_writes(tiny_model, archive, tmp_path):
    root, inputs = archive
    local, dask = tmp_path / "local", tmp_path / "dask"
    assert cli_predict(inputs, local, tiny_model, "--threads", "1") == 1  # the broken file fails, the rest done
    assert cli_predict(inputs, dask, tiny_model, "--threads", "1", "--dask", "local:2") == 1
    assert _files(local) == _files(dask)  # summary.csv, masks, overlays, study.json: byte for byte
    rows = _rows(dask)
    assert [Path(r["file"]).name for r in rows] == [p.name for p in inputs]  # input order
    assert [bool(r["error"]) for r in rows] == [False] * 4 + [True]  # the bad file once, with its reason
    assert "broken.nii.gz" in rows[-1]["error"]
    assert not list(dask.glob(".*"))  # no temporary folders left behind

    # --skip-done redoes nothing and reports the same rows
    before = {p: p.stat().st_mtime_ns for p in dask.rglob("study.json")}
    assert cli_predict(inputs, dask, tiny_model, "--threads", "1", "--dask", "local:2", "--skip-done") == 1
    assert {p: p.stat().st_mtime_ns for p in dask.rglob("study.json")} == before
    assert _rows(dask) == rows
    # ... unless the settings differ: another threshold redoes every study
    assert cli_predict(inputs, dask, tiny_model, "--threads", "1", "--skip-done", "--threshold", "0.6") == 1
    assert all(p.stat().st_mtime_ns != before[p] for p in before)


def test_skip_done_redoes_an_unfinished_study(tiny_model, archive, tmp_path):
    root, inputs = archive
    out = tmp_path / "o"
    assert cli_predict(inputs[:2], out, tiny_model, "--threads", "1") == 0
    (out / "case01" / "study.json").unlink()  # as if the run had died while writing case01
    kept = (out / "case00" / "study.json").stat().st_mtime_ns
    assert cli_predict(inputs[:2], out, tiny_model, "--threads", "1", "--skip-done") == 0
    assert (out / "case01" / "study.json").is_file()
    assert (out / "case00" / "study.json").stat().st_mtime_ns == kept


def test_manifest_csv_names_spacing_and_bad_lines(tiny_model, archive, tmp_path):
    root, inputs = archive
    man = tmp_path / "list.csv"
    man.write_text(
        "path,name,spacing\n"
        f'{inputs[0]},first,"1,1,5"\n'
        f"file://{inputs[1]},,\n"
        f"{inputs[2]},third,1 1 nope\n"
        f"{tmp_path / 'gone.nii.gz'},,\n"
    )
    out = tmp_path / "o"
    assert cli_predict([], out, tiny_model, "--threads", "1", "--manifest", str(man)) == 1
    assert json.loads((out / "first" / "study.json").read_text())["source_label"] == str(inputs[0])
    assert (out / "case01" / "study.json").is_file()  # a file:// URL is read through fsspec's path
    errors = [r["error"] for r in _rows(out) if r["error"]]
    assert any("spacing" in e for e in errors) and any("gone.nii.gz" in e for e in errors)
    text = tmp_path / "list.txt"
    text.write_text(f"# two studies\n{inputs[0]}\n\n{inputs[1]}\n")
    assert cli_predict([], tmp_path / "t", tiny_model, "--threads", "1", "--manifest", str(text)) == 0
    assert len(_rows(tmp_path / "t")) == 2


def _dask_bin(name: str) -> list[str]:
    return [str(Path(sys.executable).with_name("dask")), name]


def test_hand_started_scheduler_survives_kill_9_of_a_worker(tiny_model, tmp_path):
    """`dask scheduler` and two `dask worker`s started by hand on loopback; one worker is killed by its PID
    while the run goes on; every study still ends done, with the volumes of a local run."""
    from distributed import Client

    inputs = _studies(tmp_path / "in", 10, slices=10)
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            _dask_bin("scheduler") + ["--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    _dask_bin("worker") + [addr, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )
        with Client(addr, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            pids = client.run(os.getpid)
        out = tmp_path / "dask"
        result: dict = {}
        t = threading.Thread(
            target=lambda: result.update(rc=cli_predict(inputs, out, tiny_model, "--threads", "1", "--dask", addr))
        )
        t.start()
        deadline = time.time() + 120
        while not list(out.glob("*/study.json")) and time.time() < deadline:
            time.sleep(0.05)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        t.join(timeout=300)
        assert not t.is_alive() and result["rc"] == 0
        rows = _rows(out)
        assert len(rows) == 10 and not any(r["error"] for r in rows)
        assert not list(out.glob(".*"))  # the killed worker's half-written study was cleared
        local = tmp_path / "local"
        assert cli_predict(inputs, local, tiny_model, "--threads", "1") == 0
        assert [r["volume_ml"] for r in rows] == [r["volume_ml"] for r in _rows(local)]
        # a rerun with --skip-done does nothing
        before = {p: p.stat().st_mtime_ns for p in out.rglob("study.json")}
        assert cli_predict(inputs, out, tiny_model, "--threads", "1", "--dask", addr, "--skip-done") == 0
        assert {p: p.stat().st_mtime_ns for p in out.rglob("study.json")} == before
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_unreachable_scheduler_is_one_line(tiny_model, archive, tmp_path, capsys):
    root, inputs = archive
    port = free_port()
    rc = cli_predict(inputs[:1], tmp_path / "o", tiny_model, "--dask", f"tcp://127.0.0.1:{port}")
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the Dask scheduler" in err and "Traceback" not in err
