"""Screenshot of the app for the README: start the server, open files in Chromium, save a PNG.

python scripts/screenshot.py IMAGE [IMAGE ...] --out docs/screenshots/app.png [--model M]
    [--mode heatmap|contour|mask] [--sequence -1|0|1|2] [--window W --level L] [--zoom Z]
    [--viewport 1280x720] [--threshold T] [--layout side|multi|axial|coronal|sagittal] [--reference]

--layout multi shows the study in three planes (NiiVue, WebGL via SwiftShader); --reference compares
with the study's own _seg/_mask files when they are among IMAGE (offered by the page).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests is a package


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", default="docs/screenshots/app.png")
    ap.add_argument("--model", default=None)
    ap.add_argument("--mode", default="heatmap")
    ap.add_argument("--sequence", default="-1", help="-1 composite, 0 pre-contrast, 1 FLAIR, 2 post-contrast")
    ap.add_argument("--window", type=float, default=None)
    ap.add_argument("--level", type=float, default=None)
    ap.add_argument("--zoom", type=float, default=1.0)
    ap.add_argument("--viewport", default="1280x720")
    ap.add_argument("--layout", default="side")
    ap.add_argument("--reference", action="store_true")
    a = ap.parse_args()
    vw, vh = (int(x) for x in a.viewport.split("x"))
    from playwright.sync_api import sync_playwright

    from tests.chromium import launch, serve_app

    url, srv = serve_app(a.model)
    with sync_playwright() as p:
        b = launch(p, webgl=True)
        page = b.new_page(viewport={"width": vw, "height": vh})
        page.goto(url)
        page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
        page.set_input_files("#file-input", a.images)
        page.wait_for_selector("#s-area[data-official='1']", timeout=120000)
        page.check(f"input[name=mode][value={a.mode}]")
        page.select_option("#sequence", a.sequence)

        def slide(el: str, v: float) -> None:
            page.evaluate(
                f"() => {{ const s = document.getElementById('{el}'); s.value = '{v}'; "
                "s.dispatchEvent(new Event('input')); }"
            )

        if a.window is not None:
            slide("window", a.window)
        if a.level is not None:
            slide("level", a.level)
        if a.zoom != 1.0:
            slide("zoom", a.zoom)
        if a.reference:
            page.click("#ref-offer")
            page.wait_for_selector("#s-ref-row:not([hidden])", timeout=60000)
        if a.layout != "side":
            page.select_option("#layout", a.layout)
            page.wait_for_selector("#nv[data-loaded]", timeout=60000)
            box = page.locator("#nv").bounding_box()
            time.sleep(1.0)
            page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.7)
        else:
            page.locator("#frame-orig").hover()
        time.sleep(0.8)
        page.screenshot(path=a.out)
        b.close()
    srv.should_exit = True
    print(a.out)


if __name__ == "__main__":
    main()
