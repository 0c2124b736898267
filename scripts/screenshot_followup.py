"""Screenshot of the page's follow-up view for the docs: start the server, compare two studies in Chromium.

python scripts/screenshot_followup.py BASELINE FOLLOWUP --out docs/screenshots/followup.png
    [--spacing ROW,COL,SLICE] [--interval DAYS] [--model M] [--viewport 1280x720]

BASELINE and FOLLOWUP: a study file, or a folder whose files are sent together (a DICOM series, slices).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests is a package


def _files(p: str) -> list[str]:
    q = Path(p)
    return sorted(str(f) for f in q.iterdir() if f.is_file()) if q.is_dir() else [str(q)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("baseline")
    ap.add_argument("followup")
    ap.add_argument("--out", default="docs/screenshots/followup.png")
    ap.add_argument("--spacing", default=None)
    ap.add_argument("--interval", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--viewport", default="1280x720")
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
        page.click("[data-testid=followup-open]")
        if a.spacing:
            page.fill("#spacing", a.spacing)
        page.set_input_files("[data-testid=fu-baseline]", _files(a.baseline))
        page.set_input_files("[data-testid=fu-followup]", _files(a.followup))
        if a.interval:
            page.fill("[data-testid=fu-interval]", a.interval)
        page.click("[data-testid=fu-go]")
        page.wait_for_selector("#fu-result[data-ready='1']", timeout=300000)
        time.sleep(1.5)
        page.screenshot(path=a.out)
        b.close()
    srv.should_exit = True
    print(a.out)


if __name__ == "__main__":
    main()
