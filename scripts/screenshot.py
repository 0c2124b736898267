"""Screenshot of the app for the README: start the server, open a slice in Chromium, save a PNG.

python scripts/screenshot.py IMAGE [IMAGE ...] --out docs/screenshots/app.png [--model M]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", default="docs/screenshots/app.png")
    ap.add_argument("--model", default=None)
    ap.add_argument("--mode", default="heatmap")
    a = ap.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright

    from tumorseg.app.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(model=a.model), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.1)
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = b.new_page(viewport={"width": 1200, "height": 980})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('model-info').textContent.includes('model')")
        page.set_input_files("#file-input", a.images)
        page.wait_for_function("document.getElementById('ai').dataset.rendered !== undefined", timeout=120000)
        page.check(f"input[name=mode][value={a.mode}]")
        time.sleep(0.5)
        page.screenshot(path=a.out, full_page=True)
        b.close()
    srv.should_exit = True
    print(a.out)


if __name__ == "__main__":
    main()
