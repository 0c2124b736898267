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
