"""Real browser end to end: Chromium (Debian's) driven by Playwright against a live server."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .chromium import CHROMIUM, launch
from .conftest import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def server(tiny_model):
    import uvicorn

    from tumorseg.app.server import create_app
    from tumorseg.inference import Predictor

    app = create_app(Predictor(tiny_model, engine="torch-fp32"))
    port = free_port()
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
        browser = launch(p)
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


def _open(p, server, viewport=(1280, 720), webgl=False, **kw):
    """Chromium on the app's page, with the model loaded; returns (browser, page)."""
    browser = launch(p, webgl=webgl)
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}, **kw)
    page.goto(server)
    page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
    return browser, page


def test_patient_slices_chosen_together_open_as_one_study(server, tmp_path, tiny_model):
    """The page asks the server's rule: numbered slices of one patient are a study, as in the CLI."""
    import json

    from playwright.sync_api import sync_playwright

    from .conftest import cli_predict, make_kaggle

    root = make_kaggle(tmp_path / "k", patients=1, slices=5, size=64)
    folder = next(p for p in root.iterdir() if p.is_dir())
    files = sorted(str(p) for p in folder.iterdir())
    out = tmp_path / "cli"
    assert cli_predict(folder, out, tiny_model) == 0
    cli = json.loads(next(out.glob("*/study.json")).read_text())
    with sync_playwright() as p:
        browser, page = _open(p, server)
        try:
            page.set_input_files("#file-input", files)
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            assert not page.is_hidden("#slice-group")
            assert page.get_attribute("#slice", "max") == "4"
            text = page.inner_text("#s-volume")
            assert f"{cli['tumour_voxels']:,} voxels" in text or f"{cli['tumour_voxels']} voxels" in text, text
            assert not page.is_hidden("#dl-study")
        finally:
            browser.close()


def test_viewer_controls(server, tmp_path):
    """Window/level, sequence, zoom, wheel, keyboard, colour bar, orientation, NIfTI download, 1280x720."""
    import nibabel as nib
    from playwright.sync_api import sync_playwright

    vol = np.zeros((48, 40, 6), np.int16)
    vol[8:40, 6:34, :] = 200 + np.arange(28)[None, :, None] * 20  # a ramp: window/level visibly changes it
    vol[20:30, 12:22, 2:5] = 900
    affine = np.diag([-0.9, 0.9, 2.5, 1.0])  # x flipped: left/right labels must follow the affine
    nii = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(nii))
    png = tmp_path / "slice.png"
    from PIL import Image

    Image.fromarray((np.linspace(0, 200, 64 * 64).reshape(64, 64)).astype(np.uint8)).save(png)
    with sync_playwright() as p:
        browser, page = _open(p, server, accept_downloads=True)
        try:
            page.set_input_files("#file-input", str(png))
            page.wait_for_selector("#s-area[data-official='1']", timeout=30000)
            assert page.get_attribute("#orientation", "data-known") == "0"
            assert page.is_visible(".o-unknown")
            page.set_input_files("#file-input", str(nii))
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            assert page.get_attribute("#orientation", "data-known") == "1"
            labels = {s: page.inner_text(f".o-{s}") for s in ("left", "right", "top", "bottom")}
            assert labels["right"] == "L" and labels["left"] == "R" and {labels["top"], labels["bottom"]} == {"A", "P"}
            # layout: both images and the threshold visible without scrolling at 1280x720
            for sel in ("#orig", "#ai", "#threshold"):
                box = page.locator(sel).bounding_box()
                assert box and box["y"] >= 0 and box["y"] + box["height"] <= 720, (sel, box)
            shot = lambda: page.evaluate("document.getElementById('orig').toDataURL()")  # noqa: E731
            before = shot()
            page.evaluate(
                "() => { const s = document.getElementById('window'); s.value = '20'; s.dispatchEvent(new Event('input')); }"
            )
            assert shot() != before, "window/level must change the displayed pixels"
            page.select_option("#sequence", "1")
            assert shot() != before
            # zoom is linked between the panels
            page.evaluate(
                "() => { const s = document.getElementById('zoom'); s.value = '2'; s.dispatchEvent(new Event('input')); }"
            )
            assert page.get_attribute("#orig", "data-zoom") == page.get_attribute("#ai", "data-zoom") == "2.00"
            # wheel scrolls slices; a focused slider keeps its own arrow keys
            s0 = page.inner_text("#slice-val")
            page.locator("#frame-orig").hover()
            page.mouse.wheel(0, 120)
            page.wait_for_function(f"document.getElementById('slice-val').textContent !== {s0!r}")
            # the readout is in patient coordinates (RAS mm from the affine) and follows the wheel
            r1 = page.inner_text("#readout")
            assert r1.startswith("RAS ") and "voxel" in r1, r1
            z1 = float(page.get_attribute("#readout", "data-ras").split(",")[2])
            page.mouse.wheel(0, 120)
            page.wait_for_function(f"document.getElementById('readout').dataset.ras.split(',')[2] !== '{z1:.2f}'")
            z2 = float(page.get_attribute("#readout", "data-ras").split(",")[2])
            assert abs(abs(z2 - z1) - 2.5) < 1e-6  # one slice = the affine's 2.5 mm
            assert page.get_attribute("#progress", "data-done") == "6"  # the study ran as a job with progress
            # Shift+drag measures in mm (0.9 mm voxels in-plane)
            box = page.locator("#frame-orig").bounding_box()
            p1 = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
            p2 = (box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6)
            ends = []
            for x, y in (p1, p2):
                page.mouse.move(x, y)
                vox = page.inner_text("#readout").split("voxel ")[1].split(" ·")[0]
                ends.append([int(v) for v in vox.split(", ")[:2]])
            page.mouse.move(*p1)
            page.keyboard.down("Shift")
            page.mouse.down()
            page.mouse.move(*p2, steps=4)
            page.mouse.up()
            page.keyboard.up("Shift")
            want = 0.9 * float(np.hypot(ends[1][0] - ends[0][0], ends[1][1] - ends[0][1]))
            assert abs(float(page.get_attribute("#readout", "data-distance")) - want) < 0.01, (ends, want)
            assert page.locator("#frame-ai svg.ruler").count() == 1
            s1 = page.inner_text("#slice-val")
            t0 = float(page.input_value("#threshold"))
            page.focus("#threshold")
            page.keyboard.press("ArrowRight")
            assert float(page.input_value("#threshold")) > t0 and page.inner_text("#slice-val") == s1
            assert page.get_attribute("#colorbar", "data-threshold") == f"{float(page.input_value('#threshold')):.2f}"
            # the NIfTI download opens in nibabel with the input's affine
            with page.expect_download() as dl:
                page.click("[data-testid=download-nifti]")
            assert dl.value.suggested_filename == "case_mask.nii.gz"
            out = nib.load(dl.value.path() if str(dl.value.path()).endswith(".gz") else _renamed(dl.value.path()))
            assert out.shape == vol.shape and np.allclose(out.affine, affine)
            shots = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
            page.screenshot(path=str(tmp_path / "viewer.png"))
            assert (tmp_path / "viewer.png").stat().st_size > 10_000 and shots.is_dir()
        finally:
            browser.close()


def _renamed(path) -> str:
    import shutil

    target = str(path) + ".nii.gz"
    shutil.copy(path, target)
    return target


def test_reference_mask_dice_equals_the_cli(server, tmp_path, tiny_model):
    """Load one's own reference mask: second contour, and the page's Dice is the CLI's for the same pair."""
    import json

    import nibabel as nib
    from playwright.sync_api import sync_playwright

    from .conftest import cli_predict

    vol = np.zeros((48, 40, 6), np.int16)
    vol[8:40, 6:34, :] = 200 + np.arange(28)[None, :, None] * 20
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    nii = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(nii))
    ref = np.zeros(vol.shape, np.uint8)
    ref[15:35, 10:30, 1:5] = 1
    ref_path = tmp_path / "case_ref.nii.gz"
    nib.save(nib.Nifti1Image(ref, affine), str(ref_path))
    out = tmp_path / "cli"
    assert cli_predict(nii, out, tiny_model, "--reference", str(ref_path)) == 0
    cli = json.loads((out / "comparison.json").read_text())
    with sync_playwright() as p:
        browser, page = _open(p, server)
        try:
            page.set_input_files("#file-input", str(nii))
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            page.set_input_files("[data-testid=reference-mask]", str(ref_path))
            page.wait_for_selector("#s-ref-row:not([hidden])", timeout=30000)
            assert abs(float(page.get_attribute("[data-testid=reference-dice]", "data-dice")) - cli["dice"]) < 1e-6
            assert "volume difference" in page.inner_text("[data-testid=reference-dice]")
        finally:
            browser.close()


def test_two_plain_niftis_chosen_together_are_two_studies(server, tmp_path):
    """As in the CLI: each is its own study (not two refused "images"); a picker switches between them."""
    import nibabel as nib
    from playwright.sync_api import sync_playwright

    from .conftest import smooth_noise

    paths = []
    for name, n in (("patient_a.nii.gz", 4), ("patient_b.nii.gz", 6)):
        vol = np.stack([smooth_noise((40, 40), z, 300, np.int16) for z in range(n)], 2)
        nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), str(tmp_path / name))
        paths.append(str(tmp_path / name))
    with sync_playwright() as p:
        browser, page = _open(p, server)
        page.set_input_files("#file-input", paths)
        page.wait_for_selector("[data-testid=study-pick]:not([hidden])", timeout=60000)
        assert page.eval_on_selector_all("[data-testid=study-pick] option", "os => os.map(o => o.textContent)") == [
            "patient_a.nii.gz",
            "patient_b.nii.gz",
        ]
        assert page.get_attribute("#slice", "max") == "3"
        page.select_option("[data-testid=study-pick]", "1")
        page.wait_for_function("document.getElementById('slice').max === '5'")
        assert not page.is_visible("#error")
        browser.close()


def test_three_planes_radiological_in_patient_space(server, tmp_path):
    """NiiVue (vendored) draws the study in three planes in headless Chromium (WebGL via SwiftShader),
    radiological by default; the convention toggle and the layout keys reach it; the readout is RAS mm."""
    import nibabel as nib
    from playwright.sync_api import sync_playwright

    vol = np.zeros((48, 40, 12), np.int16)
    vol[8:40, 6:34, :] = 300
    vol[30:38, 24:32, 3:9] = 900  # towards the patient's right (+x) and anterior (+y)
    nii = tmp_path / "case_flair.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 2.5, 1.0])), str(nii))
    with sync_playwright() as p:
        browser = launch(p, webgl=True)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(server)
        page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
        try:
            page.set_input_files("#file-input", str(nii))
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            assert page.get_attribute("#orientation", "data-convention") == "radiological"
            assert page.inner_text(".o-left") == "R" and page.inner_text(".o-top") == "A"
            page.select_option("[data-testid=layout]", "multi")
            page.wait_for_selector("#nv[data-loaded]", timeout=60000)
            assert page.is_hidden("#viewer") and page.is_visible("#planes")
            box = page.locator("#nv").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.6)
            page.wait_for_function("document.getElementById('readout').textContent.startsWith('RAS ')", timeout=10000)
            assert "probability" in page.inner_text("#readout")
            import io

            from PIL import Image

            shot = np.asarray(Image.open(io.BytesIO(page.locator("#nv").screenshot())).convert("L"))
            drawn = (shot > 100).mean() > 0.02  # the head (grey) and the crosshair on the dark background
            assert drawn, "the planes must be drawn (WebGL)"
            page.keyboard.press("r")
            assert page.get_attribute("#orientation", "data-convention") == "neurological"
            assert page.is_checked("[data-testid=neurological]")
            # sequences side by side, on the page's canvases, through the same turn
            page.select_option("[data-testid=layout]", "sequences")
            assert page.is_visible("[data-testid=seq-flair]") and page.is_visible("[data-testid=seq-post]")
            assert page.is_hidden("#planes")
            shots = [page.evaluate(f"document.getElementById('{c}').toDataURL()") for c in ("orig", "seq1", "seq2")]
            blank = page.evaluate(
                "() => { const c = document.createElement('canvas'); const o = document.getElementById('orig');"
                " c.width = o.width; c.height = o.height; return c.toDataURL(); }"
            )
            assert len(set(shots)) == 1 and shots[0] != blank  # drawn; a FLAIR-only volume fills every sequence
            assert page.eval_on_selector("#seq1", "c => c.style.transform") == page.eval_on_selector(
                "#orig", "c => c.style.transform"
            )
            page.keyboard.press("?")
            assert page.is_visible("#shortcuts")
            page.keyboard.press("Escape")
            assert page.is_hidden("#shortcuts")
            assert not errors, errors
        finally:
            browser.close()


def test_reference_dice_always_belongs_to_the_threshold_shown(server, tmp_path, tiny_model):
    """Viewer 3, item 1: with the reference the page offers (a case folder's _seg, chosen with its FLAIR), moving
    the threshold withdraws the old Dice at once ("updating") and shows the new one, which is the CLI's Dice at
    that threshold; at no moment does the row show a Dice computed at another threshold than the slider's."""
    import json

    import nibabel as nib
    from playwright.sync_api import sync_playwright

    from .conftest import cli_predict

    case = tmp_path / "Case_001"
    case.mkdir()
    vol = np.zeros((48, 40, 6), np.int16)
    vol[8:40, 6:34, :] = 200 + np.arange(28)[None, :, None] * 20
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), str(case / "Case_001_flair.nii.gz"))
    seg = np.zeros(vol.shape, np.uint8)
    seg[15:35, 10:30, 1:5] = 2
    nib.save(nib.Nifti1Image(seg, affine), str(case / "Case_001_seg.nii.gz"))
    with sync_playwright() as p:
        browser, page = _open(p, server)
        try:
            page.set_input_files(
                "#file-input", [str(case / "Case_001_flair.nii.gz"), str(case / "Case_001_seg.nii.gz")]
            )
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            page.wait_for_selector("#ref-offer:not([hidden])", timeout=30000)
            page.click("#ref-offer")
            page.wait_for_selector("[data-testid=reference-dice][data-stale='false']", timeout=30000)
            first = page.get_attribute("[data-testid=reference-dice]", "data-threshold")
            new = "0.30" if first != "0.30" else "0.70"
            page.evaluate(
                f"() => {{ const t = document.getElementById('threshold'); t.value = '{new}'; "
                "t.dispatchEvent(new Event('input')); }"
            )
            el = "[data-testid=reference-dice]"
            # at once: the old numbers are withdrawn, never shown beside the new threshold
            assert page.get_attribute(el, "data-stale") == "true" and page.get_attribute(el, "data-dice") == ""
            assert "updating" in page.inner_text(el)
            page.wait_for_selector(f"{el}[data-stale='false'][data-threshold='{new}']", timeout=30000)
            dice = float(page.get_attribute(el, "data-dice"))
            assert f"at threshold {new}" in page.inner_text(el)
        finally:
            browser.close()
    out = tmp_path / "cli"
    ref = case / "Case_001_seg.nii.gz"
    assert (
        cli_predict(case / "Case_001_flair.nii.gz", out, tiny_model, "--reference", str(ref), "--threshold", new) == 0
    )
    assert abs(json.loads((out / "comparison.json").read_text())["dice"] - dice) < 1e-6


def test_downloads_are_the_picture_on_screen(server, tmp_path, tiny_model):
    """Viewer 3, item 2: the page's Overlay PNG of a study slice is turned as the screen shows it, like the CLI's
    overlays/sliceNNNN_overlay.png (it correlates with the CLI's overlay of the slice, not with its flip), and is named
    after the study and the slice as numbered on screen."""
    import nibabel as nib
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from .conftest import cli_predict
    from .test_study_exports_and_progress import _head

    vol = np.ascontiguousarray(_head()[::-1, ::-1])  # stored LPS: the screen turns it
    aff = np.diag([1.0, 1.0, 3.0, 1.0]) @ np.array(
        [[-1, 0, 0, vol.shape[0] - 1], [0, -1, 0, vol.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    nii = tmp_path / "Zażółć.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(nii))
    with sync_playwright() as p:
        browser, page = _open(p, server, accept_downloads=True)
        try:
            page.set_input_files("#file-input", str(nii))
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            k = int(page.evaluate("() => document.getElementById('slice').value"))
            with page.expect_download() as dl:
                page.click("#dl-overlay")
            name = dl.value.suggested_filename
            got = np.asarray(Image.open(dl.value.path()).convert("RGB")).astype(float).mean(-1)
        finally:
            browser.close()
    assert name == f"Zażółć_slice{k + 1:04d}_overlay.png"
    out = tmp_path / "cli"
    assert cli_predict(nii, out, tiny_model) == 0
    cli = (
        np.asarray(Image.open(out / "Zażółć" / "overlays" / f"slice{k + 1:04d}_overlay.png").convert("RGB"))
        .astype(float)
        .mean(-1)
    )
    assert got.shape == cli.shape

    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert corr(got, cli) > 0.9 and corr(got, cli) > corr(got, cli[::-1]) + 0.2


def test_planes_open_where_you_were_with_a_hook_each_and_the_sagittal_anterior_left(server, tmp_path):
    """Viewer 3, items 3, 5 and 8: the plane layouts open at the slice the user was on (not the volume's
    middle), each drawn plane has its element (#plane-axial, #plane-coronal, #plane-sagittal), and the sagittal
    plane shows anterior on the left, as the docs and the ? help say."""
    import nibabel as nib
    from playwright.sync_api import sync_playwright

    vol = np.zeros((48, 40, 12), np.int16)
    vol[8:40, 6:34, :] = 300
    vol[30:38, 24:32, 3:9] = 900
    nii = tmp_path / "case_flair.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 2.5, 1.0])), str(nii))
    with sync_playwright() as p:
        browser = launch(p, webgl=True)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(server)
        page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
        try:
            page.set_input_files("#file-input", str(nii))
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            page.evaluate(
                "() => { const s = document.getElementById('slice'); s.value = '2'; s.dispatchEvent(new Event('input')); }"
            )
            page.select_option("[data-testid=layout]", "multi")
            page.wait_for_selector("#nv[data-loaded]", timeout=60000)
            assert page.get_attribute("#nv", "data-slice") == "2"
            for plane in ("axial", "coronal", "sagittal"):
                page.wait_for_selector(f"[data-testid=plane-{plane}]", state="attached", timeout=10000)
            # the crosshair starts on slice 2 (z = 2 x 2.5 mm), not in the middle of 12 slices
            page.mouse.move(5, 5)
            page.select_option("[data-testid=layout]", "sagittal")
            page.wait_for_function(
                "() => !document.getElementById('plane-sagittal').hidden && document.getElementById('plane-axial').hidden",
                timeout=10000,
            )
            box = page.locator("[data-testid=plane-sagittal]").bounding_box()
            ys = []
            for fx in (0.3, 0.7):
                page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * 0.5)
                page.wait_for_function("document.getElementById('readout').dataset.ras !== undefined", timeout=10000)
                ys.append(float(page.get_attribute("#readout", "data-ras").split(",")[1]))
            assert ys[0] > ys[1], f"anterior (larger y) must be on the left of the sagittal plane: {ys}"
        finally:
            browser.close()


def test_key_numbers_stay_in_view_at_1280x720(server, tmp_path):
    """Viewer 3, item 4: at 1280x720, with the side panel scrolled to its last control (zoom), the study volume
    is still on screen and not covered; a new study opens with the panel at the top; the footer is not cut."""
    import nibabel as nib
    from playwright.sync_api import sync_playwright

    vol = np.zeros((48, 40, 8), np.int16)
    vol[8:40, 6:34, :] = 300
    vol[30:38, 24:32, 2:6] = 900
    niis = []
    for k in range(2):
        niis.append(tmp_path / f"case{k}.nii.gz")
        nib.save(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 2.5, 1.0])), str(niis[-1]))

    def volume_visible(page) -> bool:
        return page.evaluate(
            "() => { const e = document.getElementById('s-volume'); const r = e.getBoundingClientRect();"
            " if (r.bottom > innerHeight || r.top < 0 || r.height === 0) return false;"
            " const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);"
            " return hit === e || e.contains(hit); }"
        )

    with sync_playwright() as p:
        browser, page = _open(p, server)
        try:
            page.set_input_files("#file-input", str(niis[0]))
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            assert page.input_value("[data-testid=sequence]") == "1"  # item 7: a study opens on FLAIR, in grey
            # issue 46.4-5: every control a reader adjusts fits 1280x720 beside the volume, without scrolling, and
            # the toolbar is one row
            for sel in ("#threshold", "#opacity", "#slice", "[data-testid=layout]", "#neuro", "#ruler",
                        "[data-testid=sequence]", "#window", "#level", "#wl-auto", "[data-testid=zoom]"):  # fmt: skip
                bb = page.locator(sel).bounding_box()
                assert bb and bb["y"] >= 0 and bb["y"] + bb["height"] <= 720, (sel, bb)
            assert volume_visible(page)
            assert page.evaluate("document.documentElement.scrollHeight") <= 720
            button = page.locator("label[for=file-input]").bounding_box()["height"]
            assert page.locator(".toolbar").bounding_box()["height"] < 1.5 * button, "the toolbar wraps"
            page.set_input_files("#file-input", str(niis[1]))
            page.wait_for_function(
                "() => document.querySelector('.side').scrollTop === 0 && document.getElementById('progress').hidden",
                timeout=60000,
            )
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            assert page.evaluate("document.querySelector('.side').scrollTop") == 0
            assert volume_visible(page)
            assert page.evaluate("document.querySelector('footer').getBoundingClientRect().bottom") <= 720
        finally:
            browser.close()


def test_compare_with_a_prior_study_three_linked_panels_and_the_numbers(server, tmp_path):
    """The page's follow-up view in real Chromium at 1280x720: three panels drawn by NiiVue (WebGL via
    SwiftShader) with one crosshair, the numbers of the comparison on screen and the legend's colours."""
    from playwright.sync_api import sync_playwright

    from .test_followup import _dicom_study

    early = sorted(str(f) for f in _dicom_study(tmp_path / "early", "P1", "20250101", 0).iterdir())
    late = sorted(str(f) for f in _dicom_study(tmp_path / "late", "P1", "20250402", 1).iterdir())
    with sync_playwright() as p:
        browser = launch(p, webgl=True)
        page = browser.new_page(viewport={"width": 1280, "height": 720}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        try:
            page.goto(server)
            page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
            page.click("[data-testid=followup-open]")
            page.set_input_files("[data-testid=fu-baseline]", early)
            page.set_input_files("[data-testid=fu-followup]", late)  # dated 91 days later
            page.click("[data-testid=fu-go]")
            page.wait_for_function(
                "document.getElementById('fu-result').dataset.ready === '1' || !document.getElementById('error').hidden",
                timeout=120000,
            )
            assert not errors and page.is_hidden("#error"), (errors, page.inner_text("#error-text"))
            import io

            from PIL import Image

            for name in ("baseline", "followup", "change"):
                panel = page.locator(f"[data-testid=fu-panel-{name}]")
                assert panel.is_visible()
                box = panel.bounding_box()
                assert box["y"] + box["height"] <= 720 + 1 and box["x"] + box["width"] <= 1280, (name, box)
                shot = np.asarray(Image.open(io.BytesIO(panel.screenshot())).convert("L"))
                assert (shot > 100).mean() > 0.02, f"the {name} panel must be drawn (WebGL)"
            text = page.inner_text("[data-testid=fu-numbers]")
            assert "Volume" in text and text.count("mL") == 2 and "Product" in text
            assert "91" in page.inner_text("[data-testid=fu-change]") and "mL / month" in page.inner_text("#fu-change")
            assert "suggestion" in page.inner_text("[data-testid=fu-rano]")
            for sel in ("[data-testid=fu-numbers]", "[data-testid=fu-rano]", "[data-testid=fu-legend]"):
                box = page.locator(sel).bounding_box()
                assert box and box["y"] + box["height"] <= 720, (sel, box)  # on screen at 1280x720
            legend = page.inner_text("[data-testid=fu-legend]")
            assert "new" in legend and "resolved" in legend
            # one crosshair: a click in the baseline panel moves the other two to the same point
            before = page.get_attribute("#fu-nv1", "data-mm")
            box = page.locator("#fu-nv0").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.35)
            page.wait_for_function(f"document.getElementById('fu-nv1').dataset.mm !== '{before}'", timeout=10000)
            marks = [page.get_attribute(f"#fu-nv{k}", "data-mm") for k in range(3)]
            assert marks[0] == marks[1] == marks[2], marks
            # issue 46.7: the download is named by the two studies, and the panel shows its own voxel-size box
            with page.expect_download() as dl:
                page.click("[data-testid=fu-download]")
            name = dl.value.suggested_filename
            assert name.startswith("followup_") and name.endswith(".zip") and name != "followup.zip", name
            assert page.locator("[data-testid=fu-spacing]").is_visible()
            # the numbers are final and Compare is free while the panels are (or were) drawn
            assert page.is_hidden("#fu-progress") and page.is_enabled("[data-testid=fu-go]")
        finally:
            browser.close()


def test_a_label_map_alone_says_it_is_not_an_mri_and_a_new_choice_clears_old_errors(server, tmp_path):
    """Issue 46.6: a _seg.nii.gz opened alone did nothing and said nothing, and the previous error stayed."""
    import nibabel as nib
    from playwright.sync_api import sync_playwright

    seg = np.zeros((32, 32, 8), np.uint8)
    seg[10:20, 10:20, 3:5] = 2
    f = tmp_path / "Case_seg.nii.gz"
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(f))
    img = (np.random.default_rng(0).random((128, 128, 3)) * 60).astype(np.uint8)
    img[40:80, 50:90] += 150
    tif = tmp_path / "TCGA_XX_0001_20000101_12.tif"
    tifffile.imwrite(tif, img)
    with sync_playwright() as p:
        browser, page = _open(p, server)
        try:
            page.set_input_files("#file-input", str(f))
            page.wait_for_function("!document.getElementById('error').hidden", timeout=10000)
            text = page.inner_text("#error-text")
            assert "Case_seg.nii.gz" in text and "not an MRI" in text
            page.set_input_files("#file-input", str(tif))
            page.wait_for_function("document.getElementById('ai').dataset.rendered !== undefined", timeout=60000)
            assert page.locator("#error").is_hidden()  # the old error is gone with the new choice
        finally:
            browser.close()


def test_the_panel_follows_the_plane_slice_and_every_view_shows_the_files_voxel(server, tmp_path):
    """Issue 46.1-3: a click in the three planes moved the crosshair to another slice but the side panel kept
    describing the old one; the 2D views and the planes each gave their own voxel index; the planes' readout
    stayed "Loading..." until the pointer moved. Now one slice, the file's own (i, j, k) as nibabel gives it."""
    import nibabel as nib
    from nibabel.affines import apply_affine
    from playwright.sync_api import sync_playwright

    vol = np.zeros((48, 40, 12), np.int16)
    vol[8:40, 6:34, :] = 300
    vol[30:38, 24:32, 3:9] = 900
    aff = np.array([[-0.9, 0, 0, 20.0], [0, -0.9, 0, 18.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
    nii = tmp_path / "case_flair.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(nii))
    inv = np.linalg.inv(aff)
    with sync_playwright() as p:
        browser, page = _open(p, server, webgl=True)
        try:
            page.set_input_files("#file-input", str(nii))
            page.wait_for_selector("#s-volume[data-official='1']", timeout=60000)
            box = page.locator("#frame-orig").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.55)
            ras = [float(x) for x in page.get_attribute("#readout", "data-ras").split(",")]
            want = np.rint(apply_affine(inv, ras)).astype(int).tolist()
            assert [int(v) for v in page.get_attribute("#readout", "data-voxel").split(",")] == want
            page.select_option("[data-testid=layout]", "multi")
            page.wait_for_selector("#nv[data-loaded]", timeout=60000)
            page.wait_for_function("document.getElementById('readout').textContent.startsWith('RAS ')", timeout=10000)
            before = page.inner_text("#slice-val")
            # click the sagittal/coronal tiles until the crosshair lands on another axial slice
            nv = page.locator("#nv").bounding_box()
            for fx, fy in ((0.75, 0.2), (0.75, 0.8), (0.25, 0.9), (0.25, 0.1)):
                page.mouse.click(nv["x"] + nv["width"] * fx, nv["y"] + nv["height"] * fy)
                if page.inner_text("#slice-val") != before:
                    break
            after = page.inner_text("#slice-val")
            assert after != before, "the panel must follow the crosshair's slice"
            ras = [float(x) for x in page.get_attribute("#readout", "data-ras").split(",")]
            vox = [int(v) for v in page.get_attribute("#readout", "data-voxel").split(",")]
            assert vox == np.rint(apply_affine(inv, ras)).astype(int).tolist()
            assert int(after.split(" / ")[0]) == int(page.evaluate("document.getElementById('slice').value")) + 1
        finally:
            browser.close()
