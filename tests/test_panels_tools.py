"""The Tools panel (hosted MCP servers) against a real ``functionai serve``
subprocess: tools published from Python functions and called with the
official ``mcp`` client; the panel shows the servers, their tools and input
schemas, the calls / errors / p50 the server counted, the live MCP sessions
with their sandbox session and instance; its End button ends a session and
its try-a-tool form really calls the tool through the hosted endpoint."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

import jupyter_functionai
from jupyter_functionai.client import Client
from jupyter_functionai.panels import (
    KINDS,
    Dashboard,
    ToolsPanel,
    fmt_ms,
    panel,
    params_summary,
    schema_skeleton,
    tool_result_html,
)

from .conftest import plain
from .test_cli_server import Server, start_server, stop_server, wait_until
from .test_mcp_server import bearer, mcp_client, raw_call, raw_session
from .test_mcp_stdio import COMMAND, text

# -- the tools, published by value ------------------------------------------------------------------


def add(a: int, b: int = 1) -> int:
    """Add two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def shout(text: str, times: int = 1) -> str:
    """Shout the text, ``times`` times."""
    return (text.upper() + "!") * times


def publish(client: Client, server: str) -> None:
    for fn in (add, shout):
        jupyter_functionai.tool(server, client=client, memory="256Mi", timeout=30)(fn)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("panels-tools")
    srv = start_server(root / "home", root / "data")
    try:
        publish(Client(srv.url, srv.token), "pt")
        yield srv
    finally:
        stop_server(srv)



def tool_rows(value: str) -> dict[str, dict[str, Any]]:
    """The tools table of a server block: tool -> {column: text, "params_title": the schema tooltip, ...}."""
    table = ET.fromstring(value)
    rows: dict[str, dict[str, Any]] = {}
    for tr in table.iter("tr"):
        if tr.get("class") != "fai-tool":
            continue
        cells = list(tr.iter("td"))
        rows[str(tr.get("data-tool"))] = {
            "name": "".join(cells[0].itertext()),
            "description": "".join(cells[1].itertext()),
            "params": "".join(cells[2].itertext()),
            "params_title": cells[2].get("title"),
            "calls": "".join(cells[3].itertext()),
            "errors": "".join(cells[4].itertext()),
            "last_error": cells[4].get("title"),
            "p50": "".join(cells[5].itertext()),
            "p95": "".join(cells[6].itertext()),
        }
    return rows


def schemas_shown(value: str) -> dict[str, Any]:
    return {str(pre.get("data-tool")): json.loads("".join(pre.itertext())) for pre in ET.fromstring(value).iter("pre")}


def outcome(p: ToolsPanel) -> str | None:
    m = re.search(r'data-outcome="([^"]+)"', p.result.value)
    return m.group(1) if m else None


# -- what the panel shows -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tools_panel_shows_tools_schemas_counts_p50_and_live_sessions(server: Server, client: Client, panels: list[Any]) -> None:
    await asyncio.to_thread(publish, client, "pt-count")
    url = client.mcp_url("pt-count")
    took: list[float] = []
    async with mcp_client(url, bearer(server)) as c:
        listed = {t.name: t for t in (await c.list_tools()).tools}
        for i in range(3):
            t0 = time.perf_counter()
            assert (await c.call_tool("add", {"a": i, "b": 2})).structured_content == {"result": i + 2}
            took.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        assert (await c.call_tool("add", {"a": "x"})).is_error  # the schema refuses it: a tool error
        took.append((time.perf_counter() - t0) * 1000)
        assert (await c.call_tool("shout", {"text": "hi"})).structured_content == {"result": "HI!"}

        p = await asyncio.to_thread(ToolsPanel, client, "pt-count", interval=0.2)
        panels.append(p)
        stats = client.mcp_tool_stats("pt-count")
        block = p.block("pt-count")
        # the server: kind, its endpoint URL, one live session
        head = plain(block.header.value)
        assert "pt-count · function-backed · " + url in head and "1 live session(s)" in head
        assert p.server_select.layout.display == "none" and p.title == "functionai MCP server pt-count"
        # its tools: description, parameters, calls / errors / p50 / p95 as the server counted them
        rows = tool_rows(block.tools.value)
        assert list(rows) == ["add", "shout"]
        add_row = rows["add"]
        assert add_row["description"] == "Add two numbers." and add_row["params"] == "a: integer, b: integer = 1"
        assert json.loads(add_row["params_title"]) == listed["add"].input_schema  # the full schema as the tooltip
        assert add_row["calls"] == "4" == str(stats["add"]["calls"]) and add_row["errors"] == "1"
        assert "'x' is not of type 'integer'" in add_row["last_error"]
        assert add_row["p50"] == fmt_ms(stats["add"]["p50_ms"]) and add_row["p95"] == fmt_ms(stats["add"]["p95_ms"])
        assert 0 < stats["add"]["p50_ms"] <= sorted(took)[1]  # each call took the server less than the client waited
        assert rows["shout"]["calls"] == "1" and rows["shout"]["errors"] == "0" and rows["shout"]["params"] == "text: string, times: integer = 1"
        assert schemas_shown(block.schemas.value) == {name: t.input_schema for name, t in listed.items()}
        # the live MCP session: its sandbox session and instance
        (active,) = client.mcp_sessions("pt-count", "active")
        rt = client.session(active["runtime_session"])
        cells = [plain(c.value) for c in p.row(active["id"]).cells]
        assert cells[0] == active["id"][:12] + "…" and cells[1] == "pt-count" and cells[3] == "jupyter"
        assert cells[2].startswith(active["client_info"]["name"])
        assert cells[4] == active["runtime_session"] and cells[5] == rt["instance"]["id"] and cells[6] == str(rt["instance"]["pid"])
        assert cells[7] == "live" and cells[8] == "0"
        assert p.row(active["id"]).button in p.grid.children and p.row(active["id"]).button.description == "End"
        # the panel polls: a new call shows up by itself
        await c.call_tool("shout", {"text": "again", "times": 2})
        await asyncio.to_thread(wait_until, lambda: tool_rows(p.block("pt-count").tools.value)["shout"]["calls"] == "2", 10, "the count to update")
    # the client ended its session: its row goes
    await asyncio.to_thread(wait_until, lambda: not p._rows and "none" in plain(p.sessions_title.value), 10, "the session row to go")
    assert "0 live session(s)" in plain(p.block("pt-count").header.value)


def test_try_a_tool_calls_it_through_the_endpoint_and_shows_the_answer(client: Client, panels: list[Any]) -> None:
    p = ToolsPanel(client, "pt", interval=60)  # no poll in between: each call refreshes it
    panels.append(p)
    assert p.tool_select.options == (("add", ("pt", "add")), ("shout", ("pt", "shout")))
    assert p.tool_select.value == ("pt", "add") and json.loads(p.arguments.value) == {"a": 0, "b": 1}  # a skeleton from the schema
    p.choose_tool("pt", "shout")
    assert json.loads(p.arguments.value) == {"text": "", "times": 1}
    before = client.mcp_tool_stats("pt")
    # a real call: the structured content and the text are shown, and counted
    p.arguments.value = '{"text": "hey", "times": 2}'
    p.call_button.click()
    assert p.last_action is not None
    out = p.last_action.result(timeout=60)
    assert out["isError"] is False and out["structuredContent"] == {"result": "HEY!HEY!"} and out["ms"] > 0
    assert outcome(p) == "ok" and '{\n  "result": "HEY!HEY!"\n}' in plain(p.result.value) and "pt / shout: ok in" in plain(p.result.value)
    assert "called pt / shout" in p.status.value and p.call_button.description == "Call" and not p.call_button.disabled
    assert tool_rows(p.block("pt").tools.value)["shout"]["calls"] == str(before["shout"]["calls"] + 1)
    # arguments the schema refuses: the tool's error result, counted as an error
    p.choose_tool("pt", "add")
    p.arguments.value = '{"a": "x"}'
    p.call_button.click()
    out = p.last_action.result(timeout=60)
    assert out["isError"] is True and outcome(p) == "tool-error"
    assert "isError" in plain(p.result.value) and "'x' is not of type 'integer'" in plain(p.result.value)
    row = tool_rows(p.block("pt").tools.value)["add"]
    assert row["calls"] == str(before["add"]["calls"] + 1) and row["errors"] == str(before["add"]["errors"] + 1)
    # text that is not a JSON object: nothing is called, the form says why
    for bad in ("{nope", "[1, 2]"):
        p.arguments.value = bad
        fut = p.call_tool()
        with pytest.raises(ValueError):
            fut.result(timeout=30)
        assert outcome(p) == "invalid" and "not a JSON object" in plain(p.result.value) and "failed: " in p.status.value
    assert client.mcp_tool_stats("pt")["add"]["calls"] == before["add"]["calls"] + 1
    # each call had an MCP session of its own, ended after it
    mine = [s for s in client.mcp_sessions("pt") if s["client_info"].get("name") == "functionai-panel"]
    assert len(mine) == 2 and {s["status"] for s in mine} == {"closed"} and {s["close_reason"] for s in mine} == {"terminated by the client"}


@pytest.mark.asyncio
async def test_the_end_button_ends_a_session_a_key_opened(server: Server, client: Client, panels: list[Any]) -> None:
    key = client.create_key("mcp:pt", "agent")
    url = client.mcp_url("pt")
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key['key']}"}, timeout=30) as agent:
        sid = await raw_session(agent, url)
        assert (await raw_call(agent, url, sid, "add", {"a": 1})).status_code == 200
        p = await asyncio.to_thread(ToolsPanel, client, "pt", interval=60)
        panels.append(p)
        assert plain(p.row(sid).cells[3].value) == f"key:{key['id']}"
        p.row(sid).button.click()
        assert p.last_action is not None
        await asyncio.to_thread(p.last_action.result, 30)
        assert sid not in p._rows and f"ended MCP session {sid}" in p.status.value
        assert (await raw_call(agent, url, sid, "add", {"a": 1})).status_code == 404  # the agent must initialize again
    assert next(s for s in client.mcp_sessions("pt") if s["id"] == sid)["close_reason"] == "ended by the server's owner"
    client.revoke_key(key["id"])


@pytest.mark.asyncio
async def test_all_servers_a_stdio_one_the_selector_and_the_factory(server: Server, client: Client, panels: list[Any]) -> None:
    await asyncio.to_thread(client.mcp_add, "pt-fx", COMMAND, memory="256Mi")  # probed: its tools are known
    async with mcp_client(client.mcp_url("pt-fx"), bearer(server)) as c:  # a call through the relay is counted too
        assert text(await c.call_tool("put", {"key": "k", "value": "v"})) == "ok"
    p = await asyncio.to_thread(ToolsPanel, client, interval=0.2)
    panels.append(p)
    names = [name for _, name in p.server_select.options]
    assert names[0] == "" and {"pt", "pt-fx"} <= set(names) and p.server_select.value == ""
    assert {"pt", "pt-fx"} <= set(p._blocks)
    fx = p.block("pt-fx")
    cmd = " ".join(client.mcp_server("pt-fx")["command"])
    shown = cmd if len(cmd) <= 60 else "…" + cmd[-59:]  # a long command is shown by its end (the checkout's path decides)
    assert 'data-kind="stdio"' in fx.header.value and plain(fx.header.value).endswith(f"command {shown}") and shown.endswith("/tests/mcp_stdio_fixture.py")
    assert f'title="{html.escape(" ".join(client.mcp_server("pt-fx")["command"]))}"' in fx.header.value  # the whole command
    rows = tool_rows(fx.tools.value)
    assert rows["put"]["calls"] == "1" and rows["put"]["params"] == "key: string, value: string" and rows["get"]["calls"] == "0" and rows["get"]["p50"] == "—"
    assert ("pt-fx / put", ("pt-fx", "put")) in p.tool_select.options and ("pt / add", ("pt", "add")) in p.tool_select.options
    # one server chosen: its block and its tools only
    p.server_select.value = "pt-fx"
    assert list(p.servers_box.children) == [p.block("pt-fx").box] and "pt" not in p._blocks
    assert {v[0] for _, v in p.tool_select.options} == {"pt-fx"}
    # try a stdio tool from the form
    p.choose_tool("pt-fx", "get")
    assert json.loads(p.arguments.value) == {"key": ""}
    p.arguments.value = '{"key": "nothing"}'
    out = await asyncio.to_thread(p.call_tool().result, 60)
    assert out["isError"] is False and outcome(p) == "ok"
    assert tool_rows(p.block("pt-fx").tools.value)["get"]["calls"] == "1"
    # the factory and %fai panel's kinds
    assert KINDS["tools"] == KINDS["mcp"] == "tools"
    one = await asyncio.to_thread(panel, "mcp", client, function="pt", interval=0.2, key="t1")
    panels.append(one)
    assert isinstance(one, ToolsPanel) and one.fixed_server == "pt" and list(one._blocks) == ["pt"]
    d = await asyncio.to_thread(panel, "all", client, interval=0.2, key="t2")
    panels.append(d)
    assert isinstance(d, Dashboard) and d.titles == ("Functions", "Sessions", "Cold starts", "Tasks", "Usage", "Runs", "Tools")
    tools_tab = d.panels[-1]
    assert isinstance(tools_tab, ToolsPanel) and tools_tab.data is None  # a hidden tab does not poll
    d.selected_index = 6
    await asyncio.to_thread(wait_until, lambda: "pt-fx" in tools_tab._blocks, 10, "the Tools tab to load when shown")
    scoped = await asyncio.to_thread(panel, "all", client, function="pt-fx", interval=0.2, key="t3")  # about one function: no Tools tab
    panels.append(scoped)
    assert "Tools" not in scoped.titles


def test_schema_helpers_and_the_result_view() -> None:
    schema = {
        "type": "object",
        "properties": {
            "q": {"type": "string"},
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "mode": {"enum": ["fast", "slow"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "at": {"$ref": "#/$defs/Point"},
            "flag": {"type": "boolean"},
        },
        "required": ["q", "at"],
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number", "default": 1.5}}}},
    }
    assert params_summary(schema) == 'q: string, n: integer|null = null, mode?: "fast"|"slow", tags?: array[string], at: Point, flag?: boolean'
    assert schema_skeleton(schema) == {"q": "", "n": None, "mode": "fast", "tags": [], "at": {"x": 0, "y": 1.5}, "flag": False}
    assert params_summary({"type": "object", "properties": {}}) == "(none)" and schema_skeleton({}) == {}
    ok = tool_result_html({"server": "s", "tool": "t", "ms": 3.2, "isError": False, "content": [{"type": "text", "text": "<b>hi</b>"}], "structuredContent": {"a": 1}})
    assert 'data-outcome="ok"' in ok and "&lt;b&gt;hi&lt;/b&gt;" in ok and "<b>hi" not in ok and "3.20 ms" in ok
    err = tool_result_html({"server": "s", "tool": "t", "error": {"code": -32602, "message": "Unknown tool: 't'"}})
    assert 'data-outcome="protocol-error"' in err and "JSON-RPC error -32602" in plain(err) and "Unknown tool: 't'" in plain(err)
    assert tool_result_html(None) == ""


def test_on_the_embedded_runtime_the_panel_says_mcp_needs_a_server(tmp_path: Path, panels: list[Any]) -> None:
    from jupyter_functionai.embedded import EmbeddedClient

    emb = EmbeddedClient(str(tmp_path / "emb"))
    try:
        p = ToolsPanel(emb, interval=0.2)  # does not raise
        panels.append(p)
        assert "MCP servers are hosted by a functionai server" in p.status.value and p.data is None
    finally:
        for p in panels:
            p.close()
        emb.close()


def test_the_add_form_hosts_a_stdio_server(client: Client, panels: list[Any]) -> None:
    p = ToolsPanel(client, interval=60)
    panels.append(p)
    import shlex

    p.add_name.value = "pt-added"
    p.add_command.value = shlex.join(COMMAND)
    p.add_env.value = "GREETING=hello\n"
    p.add_button.click()
    added = p.last_action.result(timeout=60)
    assert added["name"] == "pt-added" and added["command"] == COMMAND
    info = client.mcp_server("pt-added")
    assert info["kind"] == "stdio" and info["env"] == {"GREETING": "hello"} and "put" in {t["name"] for t in info["tools"]}
    assert "pt-added" in p._blocks  # the panel refreshed after the action
    assert "added MCP server pt-added" in plain(p.status.value)
    # bad input: a clear message, nothing added
    p.add_name.value = "pt-bad"
    p.add_command.value = "/no/such/command --flag"
    p.add_env.value = ""
    p.add_button.click()
    with pytest.raises(Exception, match="no/such/command"):
        p.last_action.result(timeout=60)
    assert "pt-bad" not in {s["name"] for s in client.mcp_servers()}
    assert "failed" in plain(p.status.value) and "/no/such/command" in plain(p.status.value)
    p.add_env.value = "not a pair"
    p.add_button.click()
    with pytest.raises(ValueError, match="KEY=VALUE"):
        p.last_action.result(timeout=5)
    client.mcp_remove("pt-added")
