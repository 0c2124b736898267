"""The page's own time for a study: Chromium opens a 36-slice NIfTI in the app until the study's
official measurements are on screen.

    python benchmarks/page.py [--model M] [--threads 2] [--runs 5] [--nifti FILE] [--out benchmarks/results]

Starts the app (default engine) on 127.0.0.1 in this process, drives Debian's Chromium with Playwright,
and per run reloads the page, chooses the file and waits until `#s-volume` carries the server's
measurements (`data-official=1`). The phases come from the browser's own clocks: the `/api/study`
round trip (server: read, segment, encode), the `/api/mask` round trip (the official measurements) and
the rest (decoding the slices, first render).
Without --nifti the volume is the synthetic 36-slice one of `benchmarks/inference.py`'s REST row.
Chromium runs on the same 2 cores as the server, as on a laptop.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"


def synthetic_nifti(path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    vol = (np.kron(rng.random((32, 32, 36)), np.ones((8, 8, 1))) * 1000).astype(np.int16)
    path.write_bytes(io.BytesIO(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 4.0, 1.0])).to_bytes()).getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nifti", default=None)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor

    pred = Predictor(a.model, threads=a.threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(pred), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        nifti = Path(a.nifti) if a.nifti else Path(tmp) / "study36.nii"
        if not a.nifti:
            synthetic_nifti(nifti)
        with sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            )
            try:
                page = b.new_page(viewport={"width": 1280, "height": 720})
                for k in range(a.runs + 1):  # the first is a warm-up
                    page.goto(url)
                    page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
                    page.evaluate("performance.clearResourceTimings()")
                    t0 = time.perf_counter()
                    page.set_input_files("#file-input", str(nifti))
                    page.wait_for_function(
                        "document.querySelector(\"#s-volume[data-official='1']\") || "
                        "!document.getElementById('error').hidden",
                        timeout=120000,
                        polling=10,
                    )
                    total = time.perf_counter() - t0
                    if not page.is_hidden("#error"):
                        raise SystemExit(f"the page refused the study: {page.inner_text('#error')}")
                    study, mask = (
                        page.evaluate(
                            f"performance.getEntriesByType('resource').filter(e => e.name.endsWith('{api}'))"
                            ".map(e => e.duration)[0] || 0"
                        )
                        for api in ("/api/study", "/api/mask")
                    )
                    n = int(page.get_attribute("#slice", "max")) + 1
                    if k:
                        rows.append(
                            {"total_s": total, "api_study_s": study / 1000, "api_mask_s": mask / 1000, "slices": n}
                        )
            finally:
                b.close()
    srv.should_exit = True
    med = {key: statistics.median(r[key] for r in rows) for key in ("total_s", "api_study_s", "api_mask_s")}
    res = {
        "engine": pred.engine.name,
        "threads": a.threads,
        "runs": len(rows),
        "slices": rows[0]["slices"],
        "nifti": nifti.name if a.nifti else "synthetic 36-slice 256x256 NIfTI",
        "page_study_s_median": med["total_s"],
        "api_study_s_median": med["api_study_s"],
        "api_mask_s_median": med["api_mask_s"],
        "rest_of_page_s_median": med["total_s"] - med["api_study_s"] - med["api_mask_s"],
        "runs_s": [r["total_s"] for r in rows],
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "page.json").write_text(json.dumps(res, indent=1) + "\n")
    print(
        f"page, {res['slices']}-slice study ({res['engine']}, {a.threads} threads, median of {len(rows)}): "
        f"{res['page_study_s_median']:.2f} s until the measurements show; /api/study {res['api_study_s_median']:.2f} s, "
        f"/api/mask {res['api_mask_s_median']:.2f} s, the rest (decode, render) {res['rest_of_page_s_median']:.2f} s"
    )


if __name__ == "__main__":
    main()
