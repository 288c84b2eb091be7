"""The FunctionAI sidebar beside jupyter-scheduler's jobs list, in the same
run, in the same headless Chromium: the time from opening each list (its
Launcher tile) to its first rows with 1,000 entries, and, for the sidebar, the
time from a session's creation to its row.

    .venv/bin/python benchmarks/sidebar.py [--entries 1000] [--rounds 3]

The sidebar's 1,000 sessions are one real session's description repeated
under new ids (the browser's answer for ``sessions?status=live`` is replaced:
opening 1,000 sandboxes would measure the machine, not the list).
jupyter-scheduler's 1,000 jobs are rows written into its own database with
its own ORM, in a venv of its own (``pip install jupyter-scheduler``, made
once under the temp dir). Its list shows a page at a time and does not
update by itself (it has a Reload button): a job made after the list is open
never appears without a click, so it has no creation-to-row figure.

Prints medians and the ratio; asserts nothing (machines here are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

HERE = Path(__file__).resolve().parent
SCHEDULER = "jupyter-scheduler==2.12.1"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ECHO = "def handler(event, ctx):\n    return event\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 120.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"no answer from {url} within {timeout:.0f} s")


def jupyter_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "FUNCTIONAI_"))}
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    return env


def start(cmd: list[str], env: dict[str, str], cwd: Path, url: str) -> subprocess.Popen[bytes]:
    log = open(cwd / "server.log", "ab")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    wait_http(url)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def root_flag() -> list[str]:
    return ["--allow-root"] if os.geteuid() == 0 else []


def open_page(browser: Any, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(url)
    page.locator(".jp-Launcher").first.wait_for()
    return page


def time_until(page: Page, click: str, row: str) -> float:
    """ms from clicking ``click`` to ``row`` in the DOM (measured in the page; 120 s at most)."""
    page.locator(click).first.wait_for()
    ms = page.evaluate(
        """async ([click, row]) => {
            const t0 = performance.now();
            document.querySelector(click).click();
            while (!document.querySelector(row)) {
                if (performance.now() - t0 > 120000) { return null; }
                await new Promise(r => requestAnimationFrame(r));
            }
            return performance.now() - t0;
        }""",
        [click, row],
    )
    if ms is None:
        page.screenshot(path=str(Path(tempfile.gettempdir()) / "fai-bench-sidebar-timeout.png"))
        raise SystemExit(f"{row!r} did not appear within 120 s of clicking {click!r} (screenshot: {tempfile.gettempdir()}/fai-bench-sidebar-timeout.png)")
    return float(ms)


def sidebar(browser: Any, work: Path, entries: int, rounds: int) -> dict[str, list[float]]:
    from jupyter_functionai.client import Client

    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    home = work / "fai"
    home.mkdir()
    env = jupyter_env(home)
    proc = start(
        [sys.executable, "-m", "jupyter_functionai", "lab", "--no-browser", "--port", str(port), "--ip", "127.0.0.1", "--token", token, "--data-dir", str(home / "fai-data"), *root_flag()],
        env, home, f"{url}/api/status?token={token}",
    )
    out: dict[str, list[float]] = {"open": [], "render": [], "create": []}
    try:
        client = Client(url, token)
        client.deploy("bench-echo", ECHO)
        real = client.open_session("bench-echo", "bench-real")
        described = client.session(real["id"])
        many = [{**described, "id": f"bulk-{i:04d}", "created_at": described["created_at"] + entries - i} for i in range(entries)]
        for _ in range(rounds):
            page = open_page(browser, f"{url}/lab/workspaces/bench-{secrets.token_hex(3)}?reset&token={token}")
            page.route("**/functionai/api/sessions?status=live*", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(many)))
            out["open"].append(time_until(page, '.jp-LauncherCard[title^="Open the FunctionAI sidebar"]', '#functionai-sidebar [data-session-id="bulk-0000"]'))
            out["render"].append(float(page.evaluate("() => Math.max(...performance.getEntriesByName('functionai:render').map(e => e.duration))")))
            page.unroute("**/functionai/api/sessions?status=live*")
            sid = f"new-{secrets.token_hex(3)}"
            page.locator('#functionai-sidebar [data-session-id="bench-real"]').wait_for()
            client.open_session("bench-echo", sid)
            t0 = time.perf_counter()
            page.locator(f'#functionai-sidebar [data-session-id="{sid}"]').wait_for()
            out["create"].append((time.perf_counter() - t0) * 1000)
            client.close_session(sid)
            page.close()
    finally:
        stop(proc)
    return out


def scheduler_venv(base: Path) -> Path:
    venv = base / "fai-bench-jupyter-scheduler"
    py = venv / "bin" / "python"
    if not (venv / "bin" / "jupyter-lab").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", SCHEDULER, "jupyterlab"], check=True)
    return venv


SEED = """
import sys, time
from jupyter_scheduler.orm import Job, create_session, create_tables
url, n = sys.argv[1], int(sys.argv[2])
create_tables(url)
now = int(time.time() * 1000)
with create_session(url)() as db:
    for i in range(n):
        db.add(Job(runtime_environment_name="python3", input_filename="report.ipynb", name=f"bulk-job-{i:04d}",
                   output_formats=["ipynb"], parameters={}, tags=[], status="COMPLETED", create_time=now - i * 1000, update_time=now - i * 1000, start_time=now - i * 1000, end_time=now - i * 1000 + 500))
    db.commit()
"""


def scheduler(browser: Any, work: Path, entries: int, rounds: int) -> dict[str, list[float]]:
    venv = scheduler_venv(Path(tempfile.gettempdir()))
    home = work / "js"
    home.mkdir()
    env = jupyter_env(home)
    db = f"sqlite:///{home / 'scheduler.sqlite'}"
    subprocess.run([str(venv / "bin" / "python"), "-c", SEED, db, str(entries)], check=True, env=env)
    (home / "report.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}))
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    proc = start(
        [str(venv / "bin" / "jupyter-lab"), "--no-browser", "--port", str(port), "--ip", "127.0.0.1", f"--IdentityProvider.token={token}", f"--SchedulerApp.db_url={db}", *root_flag()],
        env, home, f"{url}/api/status?token={token}",
    )
    out: dict[str, list[float]] = {"open": []}
    try:
        for _ in range(rounds):
            page = open_page(browser, f"{url}/lab/workspaces/bench-{secrets.token_hex(3)}?reset&token={token}")
            out["open"].append(time_until(page, '.jp-LauncherCard[title="Jobs"]', "tbody tr td"))
            text = page.locator("tbody").inner_text()
            assert "bulk-job-0000" in text, text[:300]
            page.close()
    finally:
        stop(proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    work = Path(tempfile.mkdtemp(prefix="fai-bench-sidebar-"))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=FLAGS) if chromium else pw.chromium.launch(args=FLAGS)
            ours = sidebar(browser, work, args.entries, args.rounds)
            theirs = scheduler(browser, work, args.entries, args.rounds)
            browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(f"{args.entries} entries, {args.rounds} rounds, medians (ms); goals: render ≤ 300, creation-to-row ≤ 500")
    print(f"{'':44} {'FunctionAI sidebar':>20} {'jupyter-scheduler':>20}")
    print(f"{'open the list (Launcher tile) to first rows':44} {med(ours['open']):20.0f} {med(theirs['open']):20.0f}")
    print(f"{'  of which the render (User Timing)':44} {med(ours['render']):20.1f} {'—':>20}")
    print(f"{'creation to its row':44} {med(ours['create']):20.0f} {'never (Reload button)':>20}")
    print(f"ratio, open to first rows: sidebar / jupyter-scheduler = {med(ours['open']) / med(theirs['open']):.2f}")


if __name__ == "__main__":
    main()
