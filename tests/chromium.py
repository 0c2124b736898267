"""Headless Chromium as the browser tests and the screenshot scripts start it: Debian's chromium (what
.ci/run installs), no network chatter, and software WebGL where the three-plane viewer (NiiVue) needs it."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
_QUIET = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_SOFTWARE_WEBGL = ["--enable-unsafe-swiftshader", "--use-angle=swiftshader"]


def launch(playwright, webgl: bool = False):
    """A headless browser; ``webgl``: SwiftShader's WebGL for NiiVue, else no GPU at all."""
    args = [*_QUIET, "--no-first-run", *(_SOFTWARE_WEBGL if webgl else ["--disable-gpu"])]
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)


def serve_app(model=None):
    """The app on a free loopback port in a thread, for the screenshot scripts: (its URL, the uvicorn server;
    set ``should_exit`` to stop it)."""
    import socket
    import threading
    import time

    import uvicorn

    from tumorseg.app.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(model=model), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}/", srv
