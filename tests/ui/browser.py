"""What the browser tests share: the Chromium they drive (a system one, else
Playwright's), the ``browser`` fixture (in ``conftest.py``), and helpers that
put notebooks on a server and open them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect, sync_playwright

from ..test_cli_server import Server, start_server, stop_server

SYSTEM_CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


def api(server: Server, method: str, path: str, body: Any) -> Any:
    req = urllib.request.Request(
        f"{server.url}/{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def put_notebook(server: Server, path: str, cells: list[str]) -> None:
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
        "cells": [
            {"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
            for i, src in enumerate(cells)
        ],
    }
    api(server, "PUT", f"api/contents/{path}", {"type": "notebook", "format": "json", "content": nb})
    # its kernel, started by the server now: the page connects to it (a kernel the
    # page had to start itself could end in a "Select Kernel" dialog on a slow machine)
    api(server, "POST", "api/sessions", {"path": path, "name": path, "type": "notebook", "kernel": {"name": "python3"}})


def launch() -> Iterator[Browser]:
    """A headless Chromium, closed after (the body of the ``browser`` fixture)."""
    # function-scoped, so that it starts after (and stops before) pytest-jupyter's
    # autouse event-loop fixture: Playwright's sync API runs a loop of its own
    expect.set_options(timeout=TIMEOUT_MS)  # expect()'s own default is 5 s
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=_chromium(pw), args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def _chromium(pw: Any) -> str:
    """A system Chromium (as root: apt-installed now if missing), else
    Playwright's (downloaded now if missing)."""
    for name in SYSTEM_CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        # the README's test command sets itself up: as root, Debian's Chromium
        # (Playwright's own download needs a host not every network reaches)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900, env=env)
        found = shutil.which("chromium")
        if found:
            return found
    bundled = pw.chromium.executable_path
    if not os.path.exists(bundled):
        p = subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], capture_output=True, text=True, timeout=600)
        if p.returncode != 0 or not os.path.exists(bundled):
            raise RuntimeError(
                "no Chromium for the browser tests: install one (`apt-get install -y chromium`) or let Playwright download its own "
                f"(`python -m playwright install chromium`, which failed here: {p.stderr.strip()[-300:]})"
            )
    return str(bundled)


def open_notebook(browser: Browser, url: str, ncells: int) -> Page:
    page = browser.new_page(viewport={"width": 1600, "height": 1400})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(ncells)
    # connected to its kernel (running cells before would ask which kernel to start)
    expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_have_count(1)
    return page


@contextlib.contextmanager
def running_lab(root: Path) -> Iterator[Server]:
    """``functionai lab`` under ``root``, set for tests: every cell in the DOM
    (no virtualised notebook), in Lab and Notebook 7, and no toast ("get
    Jupyter news?") over what the tests click."""
    srv = start_server(root / "home", root / "data", command="lab")
    try:
        api(srv, "PUT", "lab/api/settings/@jupyterlab/notebook-extension:tracker", {"raw": json.dumps({"windowingMode": "none"})})
        api(srv, "PUT", "lab/api/settings/@jupyterlab/apputils-extension:notification", {"raw": json.dumps({"fetchNews": "false", "doNotDisturbMode": True})})
        yield srv
    finally:
        stop_server(srv)
