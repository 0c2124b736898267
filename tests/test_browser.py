"""Real browser end to end: Chromium (Debian's) driven by Playwright against a live server."""

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model):
    import uvicorn

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor

    app = create_app(Predictor(tiny_model, engine="torch-fp32"))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    th.join(timeout=5)


def test_upload_see_heatmap_move_threshold(server, tmp_path, tiny_model):
    from playwright.sync_api import sync_playwright

    # a .tif slice with a bright blob, like the LGG data
    img = (np.random.default_rng(0).random((128, 128, 3)) * 60).astype(np.uint8)
    img[40:80, 50:90] += 150
    tif = tmp_path / "TCGA_XX_0001_20000101_12.tif"
    tifffile.imwrite(tif, img)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server)
            assert "not a medical device" in page.inner_text("#notice")
            page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
            page.set_input_files("#file-input", str(tif))
            page.wait_for_function("document.getElementById('ai').dataset.rendered !== undefined", timeout=60000)
            assert page.inner_text("#s-file") == tif.name
            # the page's count and its mask download are the server's post-processing: the CLI's answer
            from PIL import Image

            from tumorseg.inference import Predictor

            expected = Predictor(tiny_model, engine="torch-fp32").predict(tif).area_pixels
            page.wait_for_selector("#s-area[data-official='1']", timeout=30000)
            shown = int(page.inner_text("#s-area").split(" px")[0].replace(",", "").replace("\u202f", ""))
            assert shown == expected
            with page.expect_download() as dl:
                page.click("#dl-mask")
            assert dl.value.suggested_filename == "TCGA_XX_0001_20000101_12_mask.png"
            assert int((np.asarray(Image.open(dl.value.path())) > 0).sum()) == expected
            before = page.evaluate("document.getElementById('ai').toDataURL()")
            orig = page.evaluate("document.getElementById('orig').toDataURL()")
            assert before != orig  # the heatmap differs from the original
            page.evaluate("""() => { const s = document.getElementById('threshold'); s.value = '0.05';
                               s.dispatchEvent(new Event('input')); }""")
            after_low = page.evaluate("document.getElementById('ai').toDataURL()")
            page.evaluate("""() => { const s = document.getElementById('threshold'); s.value = '0.95';
                               s.dispatchEvent(new Event('input')); }""")
            after_high = page.evaluate("document.getElementById('ai').toDataURL()")
            assert after_low != after_high, "moving the threshold slider must change the heatmap"
            assert page.inner_text("#threshold-val") == "0.95"
            # a bad file shows an error in the page and the app keeps working
            bad = tmp_path / "notes.png"
            bad.write_text("not an image")
            page.set_input_files("#file-input", str(bad))
            page.wait_for_selector("#error:not([hidden])", timeout=30000)
            assert "notes.png" in page.inner_text("#error")
            page.set_input_files("#file-input", str(tif))
            page.wait_for_function("document.getElementById('error').hidden", timeout=60000)
            shots = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
            out = tmp_path / "app.png"
            page.screenshot(path=str(out), full_page=True)
            assert out.stat().st_size > 10_000
            if shots.is_dir():
                page.screenshot(path=str(tmp_path / "copy.png"))
        finally:
            browser.close()


def test_patient_slices_chosen_together_open_as_one_study(server, tmp_path, tiny_model):
    """The page asks the server's rule: numbered slices of one patient are a study, as in the CLI."""
    import json

    from playwright.sync_api import sync_playwright

    from tumorseg.cli import main

    from .conftest import make_kaggle

    root = make_kaggle(tmp_path / "k", patients=1, slices=5, size=64)
    folder = next(p for p in root.iterdir() if p.is_dir())
    files = sorted(str(p) for p in folder.iterdir())
    out = tmp_path / "cli"
    assert main(["predict", str(folder), "--out", str(out), "--model", str(tiny_model), "--engine", "torch-fp32"]) == 0
    cli = json.loads(next(out.glob("*/study.json")).read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(server)
            page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
            page.set_input_files("#file-input", files)
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            assert not page.is_hidden("#slice-group")
            assert page.get_attribute("#slice", "max") == "4"
            text = page.inner_text("#s-volume")
            assert f"{cli['tumour_voxels']:,} voxels" in text or f"{cli['tumour_voxels']} voxels" in text, text
            assert not page.is_hidden("#dl-study")
        finally:
            browser.close()
