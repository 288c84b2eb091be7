"""The widget panels in a real browser: headless Chromium (Playwright) driving a
real JupyterLab (``functionai lab``) and Notebook 7 on the same server.

A notebook made through the contents API deploys a function with
``%%function``, opens a session and shows every panel; the browser runs it,
each panel must show that session, and the Close button of the Sessions panel
must really close it (checked through the REST API, and in the panels of both
frontends, which update themselves).

Drives a system Chromium (``apt-get install -y chromium``, as ``.ci/run``
does) when there is one; otherwise Playwright's own, installed on first use
with ``python -m playwright install chromium``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from jupyter_functionai.client import Client

from ..test_cli_server import Server, wait_until
from .browser import api, open_notebook, put_notebook, running_lab

FUNCTION = "ui-echo"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_lab(tmp_path_factory.mktemp("lab")) as srv:
        yield srv


def run_all(page: Page) -> None:
    """Run the first cell alone (Shift+Enter) and wait for it: the kernel answers;
    then Run > Run All Cells through the menu (the same command in Lab and Notebook 7)."""
    first = page.locator(".jp-Notebook .jp-Cell").first
    prompt = first.locator(".jp-InputPrompt")
    # a key pressed while the page is still settling (focus taken back by the
    # notebook panel as it activates) can be lost: press again until the cell
    # is queued ("[*]") or has run; a second %load_ext is harmless
    for _ in range(4):
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            text = dialog.first.inner_text()
            if "Select Kernel" not in text:
                raise AssertionError(f"a JupyterLab dialog is open over the notebook: {text[:500]!r}")
            # on a loaded machine Lab can ask which kernel to use although the
            # notebook's session exists (CI met it): answer as a user would, with
            # its proposal (a Python 3 kernel), and wait for that kernel
            dialog.first.locator("button.jp-mod-accept").click()
            expect(dialog).to_have_count(0)
            expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_have_count(1)
        first.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            expect(prompt).not_to_have_text(re.compile(r"^\[ \]"), timeout=10_000)
            break
        except AssertionError:
            continue
    expect(prompt).to_have_text(re.compile(r"\[\d+\]"))
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()


def cell(page: Page, i: int) -> Locator:
    return page.locator(".jp-Notebook .jp-Cell").nth(i)


def test_panels_in_jupyterlab_and_notebook_7(lab: Server, browser: Browser) -> None:
    sid = f"ui-{secrets.token_hex(4)}"
    cells = [
        "%load_ext jupyter_functionai",
        f"%%function {FUNCTION}\ndef handler(event, ctx):\n    ctx.session.state['n'] = ctx.session.state.get('n', 0) + 1\n    return ctx.session.state['n']",
        f"s = ui_echo.session({sid!r})\nprint('called', s.invoke({{}}), 'in', s.id)",
        f"%fai panel sessions {FUNCTION}",
        f"%fai panel coldstarts {FUNCTION}",
        f"%fai panel functions {FUNCTION}",
        "ui_echo.panel()",
    ]
    put_notebook(lab, "panels.ipynb", cells)
    put_notebook(lab, "nb7.ipynb", ["%load_ext jupyter_functionai", f"%fai panel sessions {FUNCTION}"])
    client = Client(lab.url, lab.token)

    page = open_notebook(browser, f"{lab.url}/lab/tree/panels.ipynb?token={lab.token}", len(cells))
    run_all(page)
    expect(cell(page, 2).locator(".jp-OutputArea-output")).to_contain_text(f"called 1 in {sid}")
    # each panel shows the session the notebook opened
    sessions = cell(page, 3).locator(".fai-panel-sessions")
    expect(sessions.locator(".fai-session-id", has_text=sid)).to_be_visible()
    expect(sessions.locator(".fai-status-live")).to_have_count(1)
    expect(cell(page, 4).locator(f'.fai-panel-coldstarts g.fai-bar[data-session="{sid}"] rect.fai-seg')).to_have_count(3)
    expect(cell(page, 5).locator(".fai-panel-functions .fai-curl")).to_contain_text(f"X-Functionai-Session-Id: {sid}")
    expect(cell(page, 5).locator(".fai-panel-functions .fai-curl")).to_contain_text(f"{lab.url}/functionai/invoke/{FUNCTION}")
    expect(cell(page, 6).locator(".fai-dashboard .fai-curl-session")).to_have_text(sid)
    # the %%function cell's own panel was made before the session: it shows it by updating itself
    expect(cell(page, 1).locator(".fai-dashboard .fai-curl-session")).to_have_text(sid)
    assert client.session(sid)["status"] == "live"

    # the same server in Notebook 7: another kernel, the same session in its panel
    nb7 = open_notebook(browser, f"{lab.url}/notebooks/nb7.ipynb?token={lab.token}", 2)
    run_all(nb7)
    nb7_row = cell(nb7, 1).locator(".fai-panel-sessions .fai-session-id", has_text=sid)
    expect(nb7_row).to_be_visible()

    # Close, in JupyterLab's Sessions panel: the session really ends
    page.bring_to_front()
    sessions.locator(f'button[title="close session {sid}"]').click()
    wait_until(lambda: client.session(sid)["status"] == "closed", 30, f"session {sid} to be closed")
    expect(sessions.locator(".fai-session-id", has_text=sid)).to_have_count(0)
    expect(sessions.locator(".fai-status")).to_contain_text(f"closed session {sid}")
    expect(nb7_row).to_have_count(0)  # Notebook 7's panel saw it too, by polling
    assert client.session(sid)["instance"] is None
    for p in (page, nb7):
        p.close()



def test_runs_panel_in_jupyterlab(lab: Server, browser: Browser) -> None:
    """The Runs panel in a real JupyterLab: a schedule shows with its next fire
    time; Run now starts a run that the panel follows to the end, and its
    output link opens the executed notebook in Lab (a non-hidden folder)."""
    nb = {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "source": "x = 1", "outputs": [], "execution_count": None},
            {"cell_type": "code", "id": "w", "metadata": {}, "source": "print('ui run', x)", "outputs": [], "execution_count": None},
        ],
    }
    api(lab, "PUT", "api/contents/job.ipynb", {"type": "notebook", "format": "json", "content": nb})
    client = Client(lab.url, lab.token)
    sched = client.create_schedule("job.ipynb", "0 6 * * *", timezone="Europe/Paris", name="ui-morning", parameters={"x": 7}, output_formats=["ipynb", "html"])
    put_notebook(lab, "runs.ipynb", ["%load_ext jupyter_functionai", "%fai panel runs"])
    # a workspace of its own: the default one would reopen the other test's notebooks beside it
    page = open_notebook(browser, f"{lab.url}/lab/workspaces/runs-ui/tree/runs.ipynb?token={lab.token}", 2)
    run_all(page)
    panel_ = cell(page, 1).locator(".fai-panel-runs")
    row = panel_.locator(f".fai-row-{sched['id']}")
    expect(row).to_be_visible()
    expect(row.locator(".fai-schedule-name")).to_contain_text("ui-morning")
    expect(row.locator(".fai-schedule-next")).to_contain_text(sched["next_fire_times"][0][:16])
    row.locator(".fai-schedule-run-now").click()
    wait_until(lambda: len(client.schedule_runs(sched["id"])) == 1, 30, "Run now to start a run")
    run_id = client.schedule_runs(sched["id"])[0]["id"]
    run_row = panel_.locator(f".fai-run-row.fai-row-{run_id}")
    expect(run_row.locator(".fai-run-state")).to_contain_text("succeeded")
    link = run_row.locator('a.fai-run-link[data-format="ipynb"]')
    href = link.get_attribute("href")
    assert href is not None and href.startswith(f"{lab.url}/lab/tree/functionai-runs/{run_id}/"), href
    opened = browser.new_page()
    opened.goto(f"{href.replace('/lab/tree/', '/lab/workspaces/runs-out/tree/')}?token={lab.token}")  # the link's path, in a workspace of its own
    expect(opened.locator(".jp-Notebook .jp-Cell")).to_have_count(3)  # the injected-parameters cell too
    expect(opened.locator(".jp-OutputArea-output").last).to_contain_text("ui run 7")
    for p in (page, opened):
        p.close()
