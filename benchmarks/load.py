"""Load test: N concurrent clients x M requests against a running tumorseg server on 127.0.0.1.

    tumorseg app --no-browser --port 8765 &            # or let this script start one: --start
    python benchmarks/load.py --url http://127.0.0.1:8765 --clients 8 --requests 500

Each request uploads a small slice (mix of valid images and a share of bad files, which
must come back as 4xx, not errors); with --hostile the hardening probes (decompression bombs,
header-only giants, corrupt zips, NaN geometry) join the rotation and must come back 4xx too.
Reports p50/p95 latency, errors (5xx, connection failures, wrong answers), and the server's RSS
before and after. Bounded: stops at --max-seconds whatever happens.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def payloads(size: int) -> list[tuple[str, str, bytes, int]]:
    """(endpoint, name, bytes, expected status): four valid slices and one bad file."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        b = io.BytesIO()
        small = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)  # smooth: noise is refused (422)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(b, "PNG")
        out.append(("/api/segment", f"slice{i}.png", b.getvalue(), 200))
    out.append(("/api/segment", "bad.png", b"not an image", 400))
    return out


def hostile_payloads(tmp: Path) -> list[tuple[str, str, bytes, int]]:
    """The hardening probes (tests/test_hostile_inputs.py's builders) as uploads; each must come back 4xx.
    Expected status 0 means "any 4xx"."""
    import zipfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests is a package
    from tests.test_hostile_inputs import (
        _corrupt_zip,
        _deflated_dicom,
        _nifti,
        _nifti_header_only,
        _tiff_header,
        _zip_of_zeros,
    )
    from tests.test_limits_and_outputs import flat_png, rgb24_nifti

    dcm = _deflated_dicom(tmp / "d" / "bomb.dcm", 8192, 8192)
    z4 = tmp / "four_deflated.zip"
    with zipfile.ZipFile(z4, "w") as zf:
        for k in range(4):
            zf.writestr(f"b{k}.dcm", dcm.read_bytes())
    files = [
        ("/api/study", "four_deflated.zip", z4.read_bytes()),
        ("/api/segment", "planar.tif", _tiff_header(22000, 22000, 3, 2)),
        ("/api/segment", "samples.tif", _tiff_header(4000, 4000, 100, 1)),
        ("/api/study", "h.nii.gz", _nifti_header_only(tmp / "h.nii.gz", (1400, 1400, 1000)).read_bytes()),
        ("/api/study", "z.zip", _zip_of_zeros(tmp / "z.zip", {"a.tif": 150 << 20, "b.tif": 150 << 20}).read_bytes()),
        ("/api/study", "corrupt.zip", _corrupt_zip(tmp / "c" / "corrupt.zip").read_bytes()),
        ("/api/study", "nan.nii", _nifti(tmp / "nan.nii", (float("nan"), 1, 1)).read_bytes()),
        # round 3: working copies, model time, odd NIfTI
        ("/api/segment", "flat8000.png", flat_png(8000, 8000)),
        ("/api/segment", "flat4000.png", flat_png(4000, 4000)),
        ("/api/study", "m1.nii.gz", _nifti_header_only(tmp / "m1.nii.gz", (16, 16, 2000), (1, 1, 1)).read_bytes()),
        ("/api/study", "m2.nii.gz", _nifti_header_only(tmp / "m2.nii.gz", (44, 44, 32767), (1, 1, 1)).read_bytes()),
        ("/api/study", "m3.nii.gz", _nifti_header_only(tmp / "m3.nii.gz", (1, 240, 155), (1, 1, 1)).read_bytes()),
        ("/api/study", "rgb.nii.gz", rgb24_nifti(tmp / "rgb.nii.gz").read_bytes()),
    ]
    return [(ep, name, data, 0) for ep, name, data in files]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8765")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500, help="per client")
    ap.add_argument("--size", type=int, default=128, help="uploaded image size")
    ap.add_argument("--max-seconds", type=float, default=3600)
    ap.add_argument("--start", action="store_true", help="start `tumorseg app` for the test")
    ap.add_argument("--model", default=None)
    ap.add_argument("--engine", default=None)
    ap.add_argument("--pid", type=int, default=None, help="server PID for RSS (found automatically with --start)")
    ap.add_argument("--hostile", action="store_true", help="mix the hardening probes in (each must come back 4xx)")
    ap.add_argument("--out", default="benchmarks/results/load.json")
    a = ap.parse_args()
    proc = None
    if a.start:
        port = a.url.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "tumorseg", "app", "--no-browser", "--port", port]
        cmd += ["--model", a.model] if a.model else []
        cmd += ["--engine", a.engine] if a.engine else []
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        a.pid = proc.pid
        for _ in range(600):
            try:
                if httpx.get(a.url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
    tmpdir = tempfile.TemporaryDirectory(prefix="tumorseg-load-")
    try:
        files = payloads(a.size) + (hostile_payloads(Path(tmpdir.name)) if a.hostile else [])
        with httpx.Client(timeout=60) as c:  # warm-up
            for endpoint, name, data, _ in files:
                c.post(a.url + endpoint, files={"file": (name, data)})
        rss_before = rss_mb(a.pid) if a.pid else None
        lat: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        deadline = time.time() + a.max_seconds

        def client(k: int) -> None:
            with httpx.Client(timeout=120) as c:
                for i in range(a.requests):
                    if time.time() > deadline:
                        return
                    endpoint, name, data, want = files[(k + i) % len(files)]
                    t = time.perf_counter()
                    try:
                        r = c.post(a.url + endpoint, files={"file": (name, data)})
                        if want == 0:  # a hostile probe: any 4xx with a JSON error is right
                            ok = 400 <= r.status_code < 500 and "error" in r.json()
                        else:
                            ok = r.status_code == want and (want != 200 or "prob_png" in r.json())
                        msg = None if ok else f"{name}: HTTP {r.status_code}"
                    except Exception as exc:
                        msg = f"{name}: {type(exc).__name__}"
                    dt = time.perf_counter() - t
                    with lock:
                        lat.append(dt)
                        if msg:
                            errors.append(msg)

        t0 = time.time()
        ts = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        wall = time.time() - t0
        rss_after = rss_mb(a.pid) if a.pid else None
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
        res = {
            "payloads": [f"{ep} {name}" for ep, name, _, _ in files],
            "clients": a.clients,
            "requests_per_client": a.requests,
            "completed": len(lat),
            "errors": len(errors),
            "error_examples": errors[:5],
            "p50_ms": q[49] * 1000,
            "p95_ms": q[94] * 1000,
            "throughput_req_s": len(lat) / wall,
            "wall_s": wall,
            "rss_before_mb": rss_before,
            "rss_after_mb": rss_after,
            "rss_growth_mb": None if rss_before is None or rss_after is None else rss_after - rss_before,
        }
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
    finally:
        tmpdir.cleanup()
        if proc:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
