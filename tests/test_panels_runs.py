"""The Runs panel (notebook runs and their schedules), built in Python against
a real ``functionai serve`` with a root directory: what it shows, that it
updates itself, and that its buttons really act (run now, pause / resume,
cancel), with errors shown in its status line."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jupyter_functionai.client import Client
from jupyter_functionai.errors import NotFound
from jupyter_functionai.panels import KINDS, PATH_COLOURS, Dashboard, RunsPanel, output_links, panel

from .conftest import plain
from .test_cli_server import Server, start_server, stop_server, wait_until
from .test_runs import notebook


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs-root")


@pytest.fixture(scope="module")
def server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("panels-runs")
    notebook(root / "job.ipynb", "print('hi', x)")
    notebook(root / "sleepy.ipynb", "import time\ntime.sleep(60)")
    srv = start_server(home / "home", home / "data", args=(f"--ServerApp.root_dir={root}",))
    try:
        yield srv
    finally:
        stop_server(srv)



def hrefs(value: str) -> dict[str, str]:
    """format -> href of the output links in a cell."""
    links = re.findall(r'<a class="fai-run-link" data-format="([^"]+)" href="([^"]+)" target="_blank"', value)
    return {fmt: html.unescape(href) for fmt, href in links}


def cell(p: RunsPanel, run_id: str, index: int) -> str:
    return plain(p.run_row(run_id).cells[index].value) if run_id in p._run_rows else ""


def test_schedules_pause_resume_and_run_now(server: Server, client: Client, panels: list[Any]) -> None:
    sched = client.create_schedule("job.ipynb", "0 6 * * *", timezone="Europe/Paris", tags=["daily"], output_formats=["ipynb", "html"])
    adhoc = client.create_schedule("job.ipynb", None, name="ad hoc")
    p = RunsPanel(client, interval=0.2)
    panels.append(p)
    sid = sched["id"]
    row = p.schedule_row(sid)
    assert row.box in p.schedule_grid.children and "fai-schedule-row" in row.box._dom_classes
    assert "fai-panel-runs" in p._dom_classes
    cells = [plain(c.value) for c in row.cells]
    nxt = client.schedule(sid)["next_fire_times"][0]
    assert cells[0] == f"job {sid}" and cells[1] == "job.ipynb" and cells[2] == "0 6 * * * Europe/Paris"
    assert cells[3] == "enabled" and cells[4] == nxt and "T06:00:00" in nxt and nxt.endswith(("+01:00", "+02:00"))
    assert cells[5] == "-" and cells[6] == "-"
    assert row.run_button.description == "Run now" and row.toggle_button.description == "Pause"
    on_demand = [plain(c.value) for c in p.schedule_row(adhoc["id"]).cells]
    assert on_demand[0].startswith("ad hoc ") and on_demand[2] == "on demand" and on_demand[3] == "enabled" and on_demand[4] == "—"
    # Pause, then Resume: one toggle button
    row.toggle_button.click()
    assert p.last_action is not None
    p.last_action.result(timeout=30)
    assert client.schedule(sid)["enabled"] is False
    assert plain(row.cells[3].value) == "paused" and plain(row.cells[4].value) == "—" and row.toggle_button.description == "Resume"
    assert f"paused schedule job ({sid})" in p.status.value
    row.toggle_button.click()
    p.last_action.result(timeout=30)
    assert client.schedule(sid)["enabled"] is True
    assert plain(row.cells[3].value) == "enabled" and plain(row.cells[4].value) == nxt and row.toggle_button.description == "Pause"
    assert f"resumed schedule job ({sid})" in p.status.value
    # Run now: a run that shows in the runs list (newest first) and goes on to succeed, by itself
    row.run_button.click()
    run = p.last_action.result(timeout=30)
    rid = run["id"]
    assert f"started run {rid}" in p.status.value and client.schedule(sid)["last_run_id"] == rid
    assert rid in p._run_rows and p.shown_runs()[0]["id"] == rid and p.run_row(rid).box in p.run_grid.children
    assert plain(row.cells[6].value) == rid
    wait_until(lambda: cell(p, rid, 2) == "succeeded", 120, "the run to succeed in the panel")
    done = client.run(rid)
    assert done["state"] == "succeeded" and set(done["outputs"]) == {"ipynb", "html"}
    r = p.run_row(rid)
    assert "fai-run-row" in r.box._dom_classes and "fai-run-state" in r.cells[2]._dom_classes
    assert cell(p, rid, 0) == f"job {rid}" and cell(p, rid, 1) == "job.ipynb"  # named after its schedule
    assert r.bar.value == 1.0 and r.bar.bar_style == "success"
    assert re.fullmatch(r"\d+ s|\d+ min \d+ s", plain(r.duration.value))
    assert done["tags"] == ["daily"] and plain(r.tags.value) == "daily"  # the schedule's tags
    assert r.button.disabled and r.button.layout.visibility == "hidden"  # nothing to cancel
    cold = done["cold_start"]  # how its sandbox started, coloured by path; "warm kernel" when a kept-ready kernel ran it
    assert cold is not None and cold["path"] in PATH_COLOURS
    assert f'data-path="{cold["path"]}"' in r.coldstart.value and f"color:{PATH_COLOURS[cold['path']]}" in r.coldstart.value
    assert plain(r.coldstart.value) == ("warm kernel" if cold["warm_kernel"] else cold["path"])
    # the links point at its outputs: the notebook in JupyterLab, the HTML as a file
    links = hrefs(r.links.value)
    assert links == {"ipynb": f"{server.url}/lab/tree/{done['outputs']['ipynb']}", "html": f"{server.url}/files/{done['outputs']['html']}"}
    assert "1 succeeded" in plain(p.summary.value) and "2 schedules (2 enabled, 0 paused)" in plain(p.summary.value)


def test_cancel_a_running_run(client: Client, panels: list[Any]) -> None:
    run = client.start_run("sleepy.ipynb", {"x": 1}, tags=["slow", "<b>"])
    rid = run["id"]
    p = RunsPanel(client, interval=0.2)
    panels.append(p)
    wait_until(lambda: cell(p, rid, 2) == "running", 90, "the run to be running in the panel")
    r = p.run_row(rid)
    assert r.button.description == "Cancel" and not r.button.disabled and r.button.layout.visibility == "visible"
    assert "&lt;b&gt;" in r.tags.value and plain(r.tags.value) == "slow <b>"
    r.button.click()
    assert p.last_action is not None
    p.last_action.result(timeout=60)
    assert client.run(rid)["state"] == "cancelled"
    wait_until(lambda: cell(p, rid, 2) == "cancelled", 10, "the row to show it")
    assert r.button.disabled and r.button.layout.visibility == "hidden" and f"cancelled run {rid}" in p.status.value


def test_an_action_error_shows_in_the_status_line(client: Client, panels: list[Any]) -> None:
    doomed = client.create_schedule("job.ipynb", "0 6 * * *", name="doomed")
    kept = client.create_schedule("job.ipynb", "30 7 * * *", name="kept")
    p = RunsPanel(client, interval=60)  # no poll in between: the click refreshes it
    panels.append(p)
    row = p.schedule_row(doomed["id"])
    client.delete_schedule(doomed["id"])  # behind the panel's back
    row.run_button.click()
    assert p.last_action is not None
    with pytest.raises(NotFound):
        p.last_action.result(timeout=30)
    assert "failed: not_found" in p.status.value and p.error is None
    assert doomed["id"] not in p._schedule_rows  # refreshed: the row is gone
    # the panel is still usable
    p.schedule_row(kept["id"]).toggle_button.click()
    p.last_action.result(timeout=30)
    assert client.schedule(kept["id"])["enabled"] is False and "failed" not in p.status.value
    assert f"paused schedule kept ({kept['id']})" in p.status.value and plain(p.schedule_row(kept["id"]).cells[3].value) == "paused"


def test_the_factory_and_the_dashboard_tab(client: Client, panels: list[Any]) -> None:
    assert KINDS["runs"] == KINDS["schedules"] == "runs"
    one = panel("runs", client, interval=0.2, key="runs-1")
    panels.append(one)
    assert isinstance(one, RunsPanel) and one.data is not None
    d = panel("all", client, interval=0.2, key="runs-2")
    panels.append(d)
    assert isinstance(d, Dashboard) and "Runs" in d.titles
    index = d.titles.index("Runs")
    tab = d.panels[index]
    assert isinstance(tab, RunsPanel) and tab.data is None  # a hidden tab does not poll
    d.selected_index = index
    wait_until(lambda: tab.data is not None and bool(tab._schedule_rows), 10, "the Runs tab to load when shown")
    scoped = panel("all", client, function="nothing", interval=0.2, key="runs-3")  # about one function: no Runs tab
    panels.append(scoped)
    assert "Runs" not in scoped.titles
    # a client without runs (the embedded runtime) says so instead of failing
    bare = RunsPanel(SimpleNamespace(url="embedded:/x"), interval=60)
    panels.append(bare)
    assert "need a functionai server" in plain(bare.summary.value) and bare.error is None


def test_output_links_are_quoted_and_escaped() -> None:
    out = output_links("http://h:1", {"html": "r/a b&<c>.html", "ipynb": "r/x.ipynb"})
    assert hrefs(out) == {"ipynb": "http://h:1/lab/tree/r/x.ipynb", "html": "http://h:1/files/r/a%20b%26%3Cc%3E.html"}
    assert "<c>" not in out and out.index('data-format="ipynb"') < out.index('data-format="html"')
    assert output_links("http://h", {}) == "—"


def test_no_panel_thread_is_left_running() -> None:
    assert not [t.name for t in threading.enumerate() if t.name.startswith("functionai-panel-runs")]
