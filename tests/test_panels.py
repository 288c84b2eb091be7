"""The widget panels, built in Python against a real ``functionai serve``
subprocess (real sessions, real sandboxes, real cold starts): what they show,
that they update themselves, and that their buttons really act.  The same
panels in a browser: ``ui/test_panels_ui.py``."""

from __future__ import annotations

import html
import os
import re
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_functionai.client import Client
from jupyter_functionai.panels import (
    PATH_COLOURS,
    ColdStartsPanel,
    Dashboard,
    FunctionsPanel,
    SessionsPanel,
    TasksPanel,
    UsagePanel,
    coldstart_chart,
    fmt_bytes,
    fmt_time,
    nice_ticks,
    panel,
)

from .conftest import pid_alive, plain
from .test_cli_server import Server, base_env, free_port, start_server, stop_server, wait_until

SVG = "{http://www.w3.org/2000/svg}"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
COUNTER = "def handler(event, ctx):\n    ctx.session.state['n'] = ctx.session.state.get('n', 0) + 1\n    return ctx.session.state['n']\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("panels")
    srv = start_server(root / "home", root / "data")
    try:
        yield srv
    finally:
        stop_server(srv)



# -- tasks ------------------------------------------------------------------------------------------

STEPPER = """
import time

def handler(event, ctx):
    if event == "fail":
        raise ValueError("nope")
    for i in range(100):
        ctx.progress((i + 1) / 100, f"step {i + 1}")
        time.sleep(0.1)
    return "done"
"""


def test_tasks_panel_counts_progress_cancel_and_retry(client: Client, panels: list[Any]) -> None:
    client.deploy("pan-tasks", STEPPER, timeout=30, tasks={"concurrency": 2, "backoff_s": 0.01, "max_backoff_s": 0.01})
    long = client.submit("pan-tasks", "go")
    bad = client.submit("pan-tasks", "fail", retries=0)
    assert client.wait_task(bad["id"], timeout=60)["state"] == "failed"
    p = TasksPanel(client, "pan-tasks", interval=0.2)
    panels.append(p)
    # the running task's progress bar moves by itself (the panel polls)
    wait_until(lambda: long["id"] in p._rows and 0.05 < p.row(long["id"]).bar.value < 1.0, 30, "the progress bar to move")
    assert plain(p.row(long["id"]).message.value).startswith("step ")
    counts = plain(p.counts.value)
    assert "pan-tasks" in counts and p.counts.value.count("fai-count-failed'") == 1
    assert re.search(r"class='fai-count-failed'[^>]*>1<", p.counts.value) and re.search(r"class='fai-count-running'[^>]*>1<", p.counts.value)
    row = p.row(long["id"])
    assert row.button.description == "Cancel" and plain(row.cells[2].value) == "running" and plain(row.cells[3].value) == "1/3"
    assert p.row(bad["id"]).button.description == "Retry" and "user_exception: ValueError: nope" in plain(p.row(bad["id"]).message.value)
    # Cancel really cancels the running task
    row.button.click()
    p.last_action.result(timeout=30)
    assert client.task(long["id"])["state"] == "cancelled"
    wait_until(lambda: plain(p.row(long["id"]).cells[2].value) == "cancelled" and p.row(long["id"]).button.description == "Retry", 10, "the row to show it")
    # Retry runs the failed task again (one more attempt)
    p.row(bad["id"]).button.click()
    p.last_action.result(timeout=30)
    again = client.wait_task(bad["id"], timeout=60)
    assert again["state"] == "failed" and again["attempts"] == 2
    wait_until(lambda: plain(p.row(bad["id"]).cells[3].value) == "2/2", 10, "the attempts to update")


class _MovesBetweenReads:
    """The real client, except that between the panel's read of the running
    tasks and its read of the queued ones, the queued task really starts."""

    def __init__(self, client: Client, blocker: str, queued: str) -> None:
        self.client, self.blocker, self.queued, self.armed = client, blocker, queued, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def tasks(self, function: str | None = None, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        if state == "queued" and self.armed:
            self.armed = False
            self.client.cancel_task(self.blocker)
            wait_until(lambda: self.client.task(self.queued)["state"] == "running", 30, "the queued task to start")
        return self.client.tasks(function, state=state, limit=limit)


def test_tasks_panel_keeps_a_task_that_starts_while_the_panel_reads(client: Client, panels: list[Any]) -> None:
    client.deploy("pan-move", STEPPER, timeout=30, tasks={"concurrency": 1})
    first = client.submit("pan-move", "go")
    wait_until(lambda: client.task(first["id"])["state"] == "running", 30, "the first task to run")
    second = client.submit("pan-move", "go")
    assert client.task(second["id"])["state"] == "queued"
    p = TasksPanel(_MovesBetweenReads(client, first["id"], second["id"]), "pan-move", live=False, active=False)  # type: ignore[arg-type]
    panels.append(p)
    assert p.refresh()
    # the second task was queued for the "running" read and running for the
    # "queued" one: it is still shown, as running, with a Cancel button
    assert plain(p.row(second["id"]).cells[2].value) == "running" and p.row(second["id"]).button.description == "Cancel"
    assert plain(p.row(first["id"]).cells[2].value) == "cancelled"
    client.cancel_task(second["id"])



# -- sessions ---------------------------------------------------------------------------------------


def test_sessions_panel_shows_the_affinity_map_and_updates_itself(client: Client, panels: list[Any]) -> None:
    client.deploy("pan-sess", COUNTER, timeout=30)
    client.open_session("pan-sess", "pan-a")
    client.invoke("pan-sess", None, session="pan-a")
    client.invoke("pan-sess", None, session="pan-a")
    p = SessionsPanel(client, "pan-sess", interval=0.2)
    panels.append(p)
    desc = client.session("pan-a")
    inst = desc["instance"]
    cells = [plain(c.value) for c in p.row("pan-a").cells]
    # session -> instance -> pid, isolation achieved, age, idle, calls, state size
    assert cells[0] == "pan-a" and cells[1] == "pan-sess v1" and cells[2] == "live"
    assert cells[3] == inst["id"] and cells[4] == str(inst["pid"]) and cells[5] == inst["path"]
    assert "cgroup" in cells[6] and (f"uid {inst['isolation']['uid']}" in cells[6] or inst["isolation"].get("uid") is None)
    assert re.fullmatch(r"\d+ s", cells[7]) and re.fullmatch(r"\d+ s", cells[8])
    assert cells[9] == "2" and cells[10] == fmt_bytes(desc["state_bytes"]) == "7 B"
    assert p.row("pan-a").button.description == "Close" and not p.row("pan-a").button.disabled
    assert p.row("pan-a").button in p.grid.children
    # a session opened after the panel was made shows up by itself (the panel polls)
    client.open_session("pan-sess", "pan-b")
    wait_until(lambda: "pan-b" in p._rows and p.row("pan-b").button in p.grid.children, 10, "the new session's row")
    client.invoke("pan-sess", None, session="pan-a")
    wait_until(lambda: plain(p.row("pan-a").cells[9].value) == "3", 10, "the call count to update")


def test_the_close_button_closes_the_session(client: Client, panels: list[Any]) -> None:
    client.deploy("pan-close", COUNTER, timeout=30)
    client.open_session("pan-close", "pan-c")
    pid = client.session("pan-c")["instance"]["pid"]
    p = SessionsPanel(client, "pan-close", interval=60)  # no poll in between: the click refreshes it
    panels.append(p)
    p.row("pan-c").button.click()
    assert p.last_action is not None
    p.last_action.result(timeout=30)
    assert client.session("pan-c")["status"] == "closed"
    wait_until(lambda: not pid_alive(pid), 10, "the sandbox to exit")  # gone, or a zombie
    assert "pan-c" not in p._rows and "closed session pan-c" in p.status.value
    assert plain(p.summary.value).startswith("no open sessions")
    p.include_ended.value = True  # ended sessions can be shown: greyed, nothing to close
    assert p.last_action is not None
    p.last_action.result(timeout=30)
    assert "1 closed" in plain(p.summary.value)
    assert plain(p.row("pan-c").cells[2].value) == "closed" and p.row("pan-c").button.disabled
    # a failing action is shown in the status line, not raised into the kernel
    fut = p.close_session("no-such-session")
    with pytest.raises(Exception, match="no-such-session"):
        fut.result(timeout=30)
    assert "failed: not_found" in p.status.value


def test_polling_errors_are_shown_and_back_off(panels: list[Any]) -> None:
    dead = Client(f"http://127.0.0.1:{free_port()}", "token")
    p = SessionsPanel(dead, interval=0.2)  # does not raise
    panels.append(p)
    assert "no_server" in p.status.value and p.data is None
    wait_until(lambda: p._failures >= 3, 10, "the poller to retry")
    assert "no_server" in p.status.value


# -- cold starts --------------------------------------------------------------------------------------


def test_coldstarts_panel_draws_a_bar_per_real_start_coloured_by_path(client: Client, panels: list[Any]) -> None:
    client.deploy("pan-fork", COUNTER, timeout=30)  # no warm pool: a template fork
    client.open_session("pan-fork", "pan-f1")
    client.invoke("pan-fork", None, session="pan-f1")
    client.deploy("pan-warm", COUNTER, timeout=30, min_instances=1)
    wait_until(lambda: (client.function("pan-warm")["pool"] or {}).get("ready") == 1, 30, "the warm pool")
    client.open_session("pan-warm", "pan-w1")
    client.invoke("pan-warm", None, session="pan-w1")
    p = ColdStartsPanel(client, interval=0.2)
    panels.append(p)
    starts = client.coldstarts()
    paths = {s["session_id"]: s["path"] for s in starts}
    assert paths["pan-f1"] == "template-fork" and paths["pan-w1"] == "warm-pool"
    svg = ET.fromstring(p.chart.value)
    bars = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "fai-bar"]
    assert [b.get("data-instance") for b in bars] == [s["instance_id"] for s in starts]  # newest first
    for bar, start in zip(bars, starts, strict=True):
        assert bar.get("data-path") == start["path"] and bar.get("data-session") == (start["session_id"] or "")
        segs = [r for r in bar.iter(f"{SVG}rect")]
        assert [r.get("data-segment") for r in segs] == ["spawn", "init", "first call"]
        assert {r.get("fill") for r in segs} == {PATH_COLOURS[start["path"]]}
        for r, key in zip(segs, ("spawn_ms", "init_ms", "first_call_ms"), strict=True):
            assert float(r.get("data-ms") or -1) == pytest.approx(start[key], abs=1e-3)
        assert (start["session_id"] or start["instance_id"]) in "".join(bar.itertext())
    # one histogram per path, counting that path's starts
    hist = ET.fromstring(f"<div>{p.histograms.value}</div>")
    counts = {h.get("data-path"): int(h.get("data-n") or 0) for h in hist.iter(f"{SVG}svg")}
    assert counts == {path: sum(1 for s in starts if s["path"] == path) for path in {s["path"] for s in starts}}
    # a new start appears without anything re-run
    client.invoke("pan-fork", None, session="pan-f2")
    wait_until(lambda: 'data-session="pan-f2"' in p.chart.value, 10, "the new start's bar")
    assert 'data-session="pan-f2"' in p.chart.value and f"{len(starts) + 1} start(s)" in plain(p.summary.value)


def test_usage_panel_shows_the_ledger_per_function_and_per_session(client: Client, panels: list[Any]) -> None:
    client.deploy("pan-use", COUNTER, timeout=30)
    client.invoke("pan-use", None, session="pan-u1")
    p = UsagePanel(client, interval=0.2)
    panels.append(p)
    wait_until(lambda: 'data-function="pan-use"' in p.table.value, 20, "the function's usage row")
    rows = {r["function"]: r for r in client.usage(by="function")}
    assert "pan-use" in rows and rows["pan-use"]["idle_s"] > 0
    svg = ET.fromstring(p.chart.value)
    assert [r.get("class") for r in svg.iter(f"{SVG}rect")] and all(r.get("class") == "fai-usage-bar" for r in svg.iter(f"{SVG}rect"))
    one = UsagePanel(client, "pan-use", interval=0.2)  # one function: a row per session
    panels.append(one)
    wait_until(lambda: "pan-u1" in one.table.value, 20, "the session's usage row")
    assert one.title == "functionai usage of pan-use, the last hour"


def test_coldstart_chart_scale_legend_and_the_fresh_path() -> None:
    rows = [
        {"instance_id": "i-1", "function": "f", "version": 1, "path": "fresh", "spawn_ms": 30.0, "init_ms": 60.0, "first_call_ms": 10.0, "session_id": None, "at": 1.0},
        {"instance_id": "i-2", "function": "f", "version": 1, "path": "warm-pool", "spawn_ms": 2.0, "init_ms": 1.0, "first_call_ms": 0.5, "session_id": "s", "at": 2.0},
    ]
    svg = ET.fromstring(coldstart_chart(rows, width=760))
    bars = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "fai-bar"]
    fresh = list(bars[0].iter(f"{SVG}rect"))
    assert {r.get("fill") for r in fresh} == {PATH_COLOURS["fresh"]}
    # widths are proportional to the ms on a 0..top axis (100 ms -> ticks 0, 20, ... 100)
    assert nice_ticks(100.0) == [0, 20, 40, 60, 80, 100]
    widths = [float(r.get("width") or 0) for r in fresh]
    assert widths[1] == pytest.approx(2 * widths[0]) and sum(widths) == pytest.approx(760 - 200 - 80)
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert {"warm-pool", "template-fork", "fresh", "spawn", "init", "first call", "ms", "0", "100"} <= set(texts)
    assert "i-1" in texts and "s" in texts  # labelled by session, else instance
    assert "no cold starts yet" in coldstart_chart([])


# -- functions -------------------------------------------------------------------------------------------


def test_functions_panel_versions_source_rollback_and_a_working_curl(server: Server, client: Client, panels: list[Any]) -> None:
    client.deploy("pan-fn", "def handler(event, ctx):\n    return '<b>v1 & co</b>'\n", timeout=30)
    client.deploy("pan-fn", "def handler(event, ctx):\n    return {'v': 2, 'got': event}\n", timeout=30)
    client.open_session("pan-fn", "pan-fn-s")
    p = FunctionsPanel(client, "pan-fn", interval=0.2)
    panels.append(p)
    versions = {v["version"]: v for v in client.versions("pan-fn")}
    assert p.version_select.options == (
        (f"v2 — {fmt_time(versions[2]['created_at'])} (active)", 2),
        (f"v1 — {fmt_time(versions[1]['created_at'])}", 1),
    )
    assert p.version_select.value == 2 and p.rollback_button.disabled
    assert f"deployed {fmt_time(versions[2]['created_at'])}" in plain(p.info.value) and "(active)" in plain(p.info.value)
    assert plain(p.source.value).endswith("return {'v': 2, 'got': event}\n")
    # the endpoint and a curl example with the session header; the token stays a placeholder
    endpoint = f"{server.url}/functionai/invoke/pan-fn"
    assert endpoint in plain(p.endpoint.value) and "session pan-fn-s" in plain(p.endpoint.value)
    curl = plain(re.search(r'<pre class="fai-curl"[^>]*>(.*?)</pre>', p.endpoint.value, re.S).group(1))  # type: ignore[union-attr]
    assert "-H 'X-Functionai-Session-Id: pan-fn-s'" in curl and '-H "Authorization: token $FUNCTIONAI_TOKEN"' in curl
    assert server.token not in p.endpoint.value
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60, env={**os.environ, "FUNCTIONAI_TOKEN": server.token})
    assert out.returncode == 0 and out.stdout.strip() == '{"v": 2, "got": {"hello": "world"}}', out
    assert client.session("pan-fn-s")["calls"] == 1
    # an older version: its source (escaped), and Rollback makes it active
    p.version_select.value = 1
    assert "&lt;b&gt;v1 &amp; co&lt;/b&gt;" in p.source.value and "<b>v1" not in p.source.value
    assert p.rollback_button.description == "Roll back to v1" and not p.rollback_button.disabled
    p.rollback_button.click()
    assert p.last_action is not None
    p.last_action.result(timeout=30)
    assert client.function("pan-fn")["version"] == 1
    assert p.version_select.value == 1 and p.version_select.options[1][0].endswith("(active)") and p.rollback_button.disabled
    assert "pan-fn: version 1 is now active" in p.status.value
    assert client.invoke("pan-fn", None).value == "<b>v1 & co</b>"
    # a new deploy shows up by itself, and the panel follows the active version
    client.deploy("pan-fn", "def handler(event, ctx):\n    return 3\n", timeout=30)
    # the select follows first, the source once it is fetched
    wait_until(lambda: p.version_select.value == 3 and plain(p.source.value).endswith("return 3\n"), 10, "v3 and its source in the panel")


def test_functions_panel_lists_every_function(client: Client, panels: list[Any]) -> None:
    client.deploy("pan-list-a", COUNTER, timeout=30)
    client.deploy("pan-list-b", "def handler(event, ctx):\n    return 'b'\n", timeout=30)
    p = FunctionsPanel(client, interval=0.2)
    panels.append(p)
    assert {"pan-list-a", "pan-list-b"} <= set(p.function_select.options)
    p.function_select.value = "pan-list-b"
    wait_until(lambda: "return 'b'" in plain(p.source.value), 10, "the other function's source")
    assert "pan-list-b" in plain(p.info.value)


def test_functions_panel_shows_scaling_and_the_scale_events(client: Client, panels: list[Any]) -> None:
    nap = "import time\n\ndef handler(event, ctx):\n    time.sleep(event)\n    return 'ok'\n"
    client.deploy("pan-scale", nap, session=False, max_instances=2, target_concurrency=1, cooldown=600, timeout=30)
    calls = [threading.Thread(target=client.invoke, args=("pan-scale", 0.3)) for _ in range(3)]
    for t in calls:
        t.start()
    for t in calls:
        t.join(60)
    p = FunctionsPanel(client, "pan-scale", interval=0.2)
    panels.append(p)
    wait_until(lambda: "scale events" in plain(p.info.value), 10, "the scale events in the panel")
    text = plain(p.info.value)
    assert "max instances 2 (scales at 1 per instance, cooldown 10 min 0 s)" in text, text
    assert re.search(r"up 0 → 2 \(in flight 2, queued \d\)", text), text
    assert "load: 0 in flight, 0 queued" in text, text


# -- the factory, tabs, the embedded runtime ----------------------------------------------------------------


def test_panel_factory_tabs_and_replacement(client: Client, panels: list[Any]) -> None:
    client.deploy("pan-tabs", COUNTER, timeout=30)
    client.open_session("pan-tabs", "pan-t")
    d = panel("all", client, function="pan-tabs", interval=0.2)
    panels.append(d)
    assert isinstance(d, Dashboard) and d.titles == ("Function", "Sessions", "Cold starts", "Tasks", "Usage")
    fn, sess, cold, tasks, _usage = d.panels
    assert fn.active and not sess.active and not cold.active and not tasks.active
    assert isinstance(tasks, TasksPanel) and tasks.data is None
    assert fn.data is not None and sess.data is None  # a hidden tab does not poll
    d.selected_index = 1
    wait_until(lambda: "pan-t" in sess._rows, 10, "the sessions tab to load when shown")
    assert not fn.active
    with pytest.raises(ValueError, match="unknown panel"):
        panel("nope", client)
    first = panel("sessions", client, key="k")
    second = panel("sessions", client, key="k")
    panels.append(second)
    assert isinstance(first, SessionsPanel) and first.closed and not second.closed
    wait_until(lambda: not first._thread.is_alive(), 10, "the replaced panel's thread to stop")
    assert isinstance(panel("coldstarts", client, key="k2"), ColdStartsPanel)
    panels.append(panel("coldstarts", client, key="k2"))


def test_panels_work_on_the_embedded_runtime(tmp_path: Path, panels: list[Any]) -> None:
    from jupyter_functionai.embedded import EmbeddedClient

    emb = EmbeddedClient(str(tmp_path / "emb"))
    try:
        emb.deploy("emb-fn", COUNTER, timeout=30)
        emb.open_session("emb-fn", "emb-s")
        emb.invoke("emb-fn", None, session="emb-s")
        s, c, f = SessionsPanel(emb, interval=0.2), ColdStartsPanel(emb, interval=0.2), FunctionsPanel(emb, "emb-fn", interval=0.2)
        panels.extend([s, c, f])
        assert plain(s.row("emb-s").cells[2].value) == "live" and plain(s.row("emb-s").cells[9].value) == "1"
        assert 'data-session="emb-s"' in c.chart.value
        assert "embedded runtime in this kernel" in plain(f.endpoint.value) and "emb-fn v1" in plain(f.info.value)
        s.row("emb-s").button.click()
        assert s.last_action is not None
        s.last_action.result(timeout=30)
        assert emb.session("emb-s")["status"] == "closed"
    finally:
        for p in panels:
            p.close()
        emb.close()


# -- shown by the magics, in a real kernel ----------------------------------------------------------------


def test_magics_display_the_panels_in_a_kernel(server: Server, client: Client, tmp_path: Path) -> None:
    cells = {
        "load": "%load_ext jupyter_functionai",
        "deploy": "%%function pan-nb\ndef handler(event, ctx):\n    return event\n",
        "session": "s = pan_nb.session('pan-nb-s'); s.invoke(1)",
        "sessions": "%fai panel sessions pan-nb",
        "coldstarts": "%fai panel coldstarts pan-nb",
        "functions": "%fai panel functions pan-nb",
        "all": "%fai panel",
        "tools": "%fai panel tools",
        "handle": "pan_nb.panel('sessions')",
        "bad": "%fai panel bogus pan-nb",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith(("FUNCTIONAI_", "JUPYTER_"))]:
            mp.delenv(key)
        env = base_env(tmp_path / "kernel")
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            mp.setenv(var, env[var])
        mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
        mp.setenv("FUNCTIONAI_URL", server.url)
        mp.setenv("FUNCTIONAI_TOKEN", server.token)
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(src) for src in cells.values()]
        (tmp_path / "nb").mkdir()
        NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True, resources={"metadata": {"path": str(tmp_path / "nb")}}).execute()
    out = dict(zip(cells, nb.cells, strict=True))

    def views(cell: Any) -> list[str]:
        return [o["data"][WIDGET_VIEW]["model_id"] for o in cell.outputs if o["output_type"] in ("display_data", "execute_result") and WIDGET_VIEW in o["data"]]

    def errors(cell: Any) -> list[str]:
        return [f"{o['ename']}: {o['evalue']}" for o in cell.outputs if o["output_type"] == "error"]

    assert not errors(out["session"]), errors(out["session"])
    for name in ("deploy", "sessions", "coldstarts", "functions", "all", "tools", "handle"):
        assert not errors(out[name]), (name, errors(out[name]))
        assert len(views(out[name])) == 1, (name, out[name].outputs)
    assert "deployed pan-nb version 1" in "".join(o.get("text", "") for o in out["deploy"].outputs)
    bad = "".join(o.get("text", "") for o in out["bad"].outputs)
    assert "UsageError: unknown panel 'bogus'" in bad and not views(out["bad"]), out["bad"].outputs
    # the widgets' state as the kernel sent it: the panels show the notebook's session
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]

    def texts(model_id: str) -> str:
        """All HTML values below a widget."""
        model = state[model_id]["state"]
        found = [model.get("value", "")] if isinstance(model.get("value"), str) else []
        for child in model.get("children", []):
            found.append(texts(child.removeprefix("IPY_MODEL_")))
        return "\n".join(found)

    assert "pan-nb-s" in texts(views(out["sessions"])[0])
    assert 'data-session="pan-nb-s"' in texts(views(out["coldstarts"])[0])
    assert "X-Functionai-Session-Id: pan-nb-s" in html.unescape(texts(views(out["functions"])[0]))
    assert "pan-nb-s" in texts(views(out["handle"])[0])
    assert "no MCP servers yet" in texts(views(out["tools"])[0])
    assert state[views(out["all"])[0]]["state"]["titles"] == ["Functions", "Sessions", "Cold starts", "Tasks", "Usage", "Runs", "Tools"]
    assert state[views(out["deploy"])[0]]["model_name"] == "TabModel"
    assert client.session("pan-nb-s")["status"] == "live"


def test_no_panel_thread_is_left_running() -> None:
    assert not [t.name for t in threading.enumerate() if t.name.startswith("functionai-panel-")]
