"""The MCP tool service against a real ``functionai serve`` subprocess, driven
by the official ``mcp`` client (pinned ``mcp>=2.3,<3``; tested with 2.3.0)
over streamable HTTP: function-backed servers (tools published from Python
functions), the endpoint's session rules, authentication and keys, and a
session that survives a server restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypedDict

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

import jupyter_functionai
from jupyter_functionai.client import Client as FaiClient
from jupyter_functionai.errors import Conflict, InvalidArgument, NotFound, UserError
from jupyter_functionai.mcp.manager import LATENCY_WINDOW, ToolStats
from jupyter_functionai.mcp.schema import describe_function

from .test_cli_server import Server, start_server, stop_server, wait_until

# -- tools, published by value from this module -----------------------------------------------

SCALE = 10  # carried into the sandbox with the tool that uses it


def _scaled(x: int) -> int:
    return x * SCALE


class Stats(TypedDict):
    count: int
    total: int
    notes: list[str]


def add(a: int, b: int = 1) -> int:
    """Add two numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def scale(x: int) -> int:
    """Multiply by the notebook's SCALE."""
    return _scaled(x)


def remember(note: str, ctx: Any) -> Stats:
    """Keep a note in this MCP session.

    :param note: what to remember
    """
    notes = ctx.session.state.setdefault("notes", [])
    notes.append(note)
    return {"count": len(notes), "total": sum(len(n) for n in notes), "notes": notes}


def recall(ctx: Any) -> dict[str, Any]:
    """What this session remembered, and which sandbox instance answered."""
    return {"notes": ctx.session.state.get("notes", []), "instance": ctx.instance_id}


def fail(reason: str) -> str:
    """Always raises."""
    raise ValueError(f"refused: {reason}")


def work(steps: int, ctx: Any) -> str:
    """Report progress."""
    for i in range(steps):
        ctx.progress((i + 1) / steps, f"step {i + 1}")
    return "worked"


def nap(seconds: float) -> str:
    """Sleep (to be cancelled)."""
    import time

    time.sleep(seconds)
    return "rested"


TOOLS = (add, scale, remember, recall, fail, work, nap)


def publish(fai: FaiClient, server: str, fn: Any, **spec: Any) -> dict[str, Any]:
    return jupyter_functionai.tool(server, client=fai, **spec)(fn).describe()  # type: ignore[no-any-return]


# -- helpers --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mcp_client(url: str, auth: str | None, **kw: Any) -> AsyncIterator[Client]:
    """The official client over streamable HTTP with an Authorization header."""
    headers = {"Authorization": auth} if auth else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(streamable_http_client(url, http_client=http), **kw) as client,
    ):
        yield client


def bearer(server: Server) -> str:
    return f"Bearer {server.token}"


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def raw_session(http: httpx2.AsyncClient, url: str) -> str:
    r = await http.post(url, json=INIT, headers=ACCEPT)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    r = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**ACCEPT, "Mcp-Session-Id": sid})
    assert r.status_code == 202
    return sid


async def raw_call(http: httpx2.AsyncClient, url: str, sid: str, name: str, arguments: dict[str, Any], id: int = 2) -> httpx2.Response:
    msg = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    return await http.post(url, json=msg, headers={**ACCEPT, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mcp")
    srv = start_server(root / "home", root / "data")
    try:
        fai = FaiClient(srv.url, srv.token)
        for fn in TOOLS:
            publish(fai, "kit", fn, memory="256Mi", timeout=30)
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def fai(server: Server) -> FaiClient:
    return FaiClient(server.url, server.token)


# -- tools from Python functions -------------------------------------------------------------


def test_tool_descriptions_come_from_hints_and_docstrings(fai: FaiClient) -> None:
    info = describe_function(add)
    assert info["description"] == "Add two numbers."
    assert info["input_schema"]["properties"]["a"] == {"title": "A", "type": "integer", "description": "the first number"}
    assert info["input_schema"]["required"] == ["a"] and info["wrap_output"] is True
    assert describe_function(remember)["ctx_param"] == "ctx" and "ctx" not in describe_function(remember)["input_schema"]["properties"]
    with pytest.raises(TypeError, match="needs the MCP server's name"):
        jupyter_functionai.tool(add)
    bad = {**info, "code": "def add(a, b=1):\n    return a + b\n", "handler": "add", "name": "bad name"}
    with pytest.raises(InvalidArgument, match="tool name"):
        fai.mcp_publish_tool("kit", bad)
    with pytest.raises(UserError, match="ZeroDivisionError"):  # its module fails to load: refused, nothing changes
        fai.mcp_publish_tool("kit", {**info, "name": "broken", "code": "1 / 0\n", "handler": "add"})
    with pytest.raises(Conflict):  # a stdio server takes no tools
        fai.mcp_add("cmdsrv", ["/bin/cat"], probe=False)
        fai.mcp_publish_tool("cmdsrv", {**info, "code": "def add(a, b=1):\n    return a + b\n", "handler": "add"})
    fai.mcp_remove("cmdsrv")
    fai.deploy("mcp-taken", "def handler(event, ctx):\n    return 1\n")  # not an MCP server's function
    with pytest.raises(Conflict, match="'mcp-taken' exists and is not an MCP server's"):
        fai.mcp_publish_tool("taken", {**info, "code": "def add(a, b=1):\n    return a + b\n", "handler": "add"})
    names = [t["name"] for t in fai.mcp_server("kit")["tools"]]
    assert names == sorted(f.__name__ for f in TOOLS)


@pytest.mark.asyncio
async def test_initialize_list_and_call_with_the_official_client(server: Server, fai: FaiClient) -> None:
    async with mcp_client(fai.mcp_url("kit"), bearer(server)) as c:
        init = c.session.initialize_result
        assert init is not None and init.protocol_version == "2025-11-25" and init.server_info.name == "kit"
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) == {f.__name__ for f in TOOLS}
        assert tools["add"].description == "Add two numbers."
        assert tools["add"].input_schema["properties"]["b"]["default"] == 1
        assert tools["add"].output_schema == {"properties": {"result": {"title": "Result", "type": "integer"}}, "required": ["result"], "title": "addOutput", "type": "object"}
        assert tools["remember"].input_schema["properties"]["note"]["description"] == "what to remember"
        assert set(tools["remember"].output_schema["properties"]) == {"count", "total", "notes"}

        r = await c.call_tool("add", {"a": 2, "b": 3})
        assert not r.is_error and r.structured_content == {"result": 5} and r.content[0].text == "5"
        r = await c.call_tool("scale", {"x": 4})  # SCALE and _scaled were carried
        assert r.structured_content == {"result": 40}
        r = await c.call_tool("remember", {"note": "milk"})
        assert r.structured_content == {"count": 1, "total": 4, "notes": ["milk"]}
        # the handler raises: a tool error with its message and traceback
        r = await c.call_tool("fail", {"reason": "no"})
        assert r.is_error and "ValueError: refused: no" in r.content[0].text and 'File "<tool fail>"' in r.content[0].text
        # arguments that violate the schema: a tool error naming the problem
        r = await c.call_tool("add", {"a": "two"})
        assert r.is_error and "'two' is not of type 'integer'" in r.content[0].text
        r = await c.call_tool("add", {"b": 1})
        assert r.is_error and "'a' is a required property" in r.content[0].text
        # an unknown tool: a protocol error
        with pytest.raises(MCPError, match="Unknown tool: 'nope'"):
            await c.call_tool("nope", {})
        # progress notifications reach the caller
        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))

        r = await c.call_tool("work", {"steps": 3}, progress_callback=on_progress)
        assert r.structured_content == {"result": "worked"}
        assert [s[2] for s in seen] == ["step 1", "step 2", "step 3"] and seen[-1][0] == pytest.approx(1.0)
        # resources and prompts: a function-backed server has none
        assert (await c.session.list_resources()).resources == []
        assert (await c.session.list_prompts()).prompts == []


@pytest.mark.asyncio
async def test_calls_of_one_session_share_an_instance_and_sessions_never_do(server: Server, fai: FaiClient) -> None:
    url = fai.mcp_url("kit")
    async with mcp_client(url, bearer(server)) as a, mcp_client(url, bearer(server)) as b:
        await a.call_tool("remember", {"note": "a1"})
        await b.call_tool("remember", {"note": "b1"})
        await a.call_tool("remember", {"note": "a2"})
        ra = (await a.call_tool("recall", {})).structured_content
        rb = (await b.call_tool("recall", {})).structured_content
        ra2 = (await a.call_tool("recall", {})).structured_content
    assert ra is not None and rb is not None and ra2 is not None
    assert ra["notes"] == ["a1", "a2"] and rb["notes"] == ["b1"]
    assert ra["instance"] == ra2["instance"] != rb["instance"]


@pytest.mark.asyncio
async def test_twenty_sessions_at_once_are_isolated(server: Server, fai: FaiClient) -> None:
    url = fai.mcp_url("kit")

    async def one(i: int) -> dict[str, Any]:
        async with mcp_client(url, bearer(server)) as c:
            await c.call_tool("remember", {"note": f"secret-{i}"})
            await c.call_tool("remember", {"note": f"more-{i}"})
            r = await c.call_tool("recall", {})
            assert r.structured_content is not None
            return dict(r.structured_content)

    results = await asyncio.gather(*(one(i) for i in range(20)))
    for i, r in enumerate(results):
        assert r["notes"] == [f"secret-{i}", f"more-{i}"]
    assert len({r["instance"] for r in results}) == 20


@pytest.mark.asyncio
async def test_cancelling_a_call_stops_it_and_the_session_goes_on(server: Server, fai: FaiClient) -> None:
    async with mcp_client(fai.mcp_url("kit"), bearer(server)) as c:
        await c.call_tool("remember", {"note": "before"})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.call_tool("nap", {"seconds": 60}), 1.5)

        def idle() -> bool:
            rows = [s for s in fai.mcp_sessions("kit", "active") if s.get("in_flight")]
            return not rows

        await asyncio.to_thread(wait_until, idle, 20, "the cancelled call to end on the server")
        r = await c.call_tool("recall", {})  # resumed in a new instance, state kept
        assert r.structured_content is not None and r.structured_content["notes"] == ["before"]


# -- call statistics per tool -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_tool_calls_are_counted_with_their_errors_and_latency(server: Server, fai: FaiClient) -> None:
    before = fai.mcp_tool_stats("kit")
    assert set(before) == {f.__name__ for f in TOOLS}
    assert set(before["add"]) == {"calls", "errors", "p50_ms", "p95_ms", "last_called_at", "last_error"}
    took: list[float] = []
    async with mcp_client(fai.mcp_url("kit"), bearer(server)) as c:
        for i in range(6):
            t0 = time.perf_counter()
            assert (await c.call_tool("add", {"a": i})).structured_content == {"result": i + 1}
            took.append((time.perf_counter() - t0) * 1000)
        assert (await c.call_tool("add", {"a": "two"})).is_error  # an isError result (the schema)
        assert (await c.call_tool("fail", {"reason": "counted"})).is_error  # an isError result (it raised)
        with pytest.raises(MCPError, match="Unknown tool"):  # a name that is no tool: shown nowhere
            await c.call_tool("nope", {})
    async with httpx2.AsyncClient(headers={"Authorization": bearer(server)}, timeout=30) as http:
        sid = await raw_session(http, fai.mcp_url("kit"))
        msg = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "add", "arguments": [1]}}
        r = await http.post(fai.mcp_url("kit"), json=msg, headers={**ACCEPT, "Mcp-Session-Id": sid})
        assert r.json()["error"]["code"] == -32602  # a JSON-RPC error: counted as an error of add
        await http.delete(fai.mcp_url("kit"), headers={"Mcp-Session-Id": sid})
    after = fai.mcp_tool_stats("kit")
    assert after["add"]["calls"] - before["add"]["calls"] == 8
    assert after["add"]["errors"] - before["add"]["errors"] == 2
    assert after["add"]["last_error"] == "JSON-RPC error -32602: params.arguments must be an object"
    assert after["fail"]["calls"] - before["fail"]["calls"] == 1 and after["fail"]["errors"] - before["fail"]["errors"] == 1
    assert after["fail"]["last_error"] == "ValueError: refused: counted"  # the message, not the traceback
    assert after["nap"] == before["nap"] and "nope" not in after
    # the latency as the endpoint sees it: each call's is under what the client waited
    p50, p95 = after["add"]["p50_ms"], after["add"]["p95_ms"]
    assert 0 < p50 <= p95 and (before["add"]["calls"] or p50 <= sorted(took)[len(took) // 2])
    assert after["add"]["last_called_at"] > time.time() - 120
    listed = next(s for s in fai.mcp_servers() if s["name"] == "kit")  # the list carries them too
    assert {t["name"]: t["calls"] for t in listed["tools"]} == {name: st["calls"] for name, st in after.items()}


def test_tool_stats_keep_a_bounded_window() -> None:
    st = ToolStats()
    for i in range(LATENCY_WINDOW + 500):
        st.record(float(i), None if i % 10 else "boom")
    d = st.describe()
    assert d["calls"] == LATENCY_WINDOW + 500 and d["errors"] == (LATENCY_WINDOW + 500) // 10 and d["last_error"] == "boom"
    assert len(st.durations_ms) == LATENCY_WINDOW
    assert d["p50_ms"] == 500 + LATENCY_WINDOW / 2 - 1 and d["p95_ms"] == 500 + LATENCY_WINDOW * 0.95 - 1  # over the last 1,000 only
    assert ToolStats().describe() == {"calls": 0, "errors": 0, "p50_ms": None, "p95_ms": None, "last_called_at": None, "last_error": None}


@pytest.mark.asyncio
async def test_the_rest_api_ends_any_mcp_session(server: Server, fai: FaiClient) -> None:
    key = fai.create_key("mcp:kit", "ended")
    url = fai.mcp_url("kit")
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key['key']}"}, timeout=30) as keyed:
        sid = await raw_session(keyed, url)
        assert (await raw_call(keyed, url, sid, "add", {"a": 1})).json()["result"]["structuredContent"] == {"result": 2}
        row = next(s for s in fai.mcp_sessions("kit", "active") if s["id"] == sid)
        assert row["principal"] == f"key:{key['id']}"
        fai.mcp_end_session(sid)  # Jupyter's credentials end a session a key opened
        assert (await raw_call(keyed, url, sid, "add", {"a": 1})).status_code == 404
    ended = next(s for s in fai.mcp_sessions("kit") if s["id"] == sid)
    assert ended["status"] == "closed" and ended["close_reason"] == "ended by the server's owner"
    assert fai.session(row["runtime_session"])["status"] == "closed"
    fai.mcp_end_session(sid)  # again: nothing to do
    with pytest.raises(NotFound):
        fai.mcp_end_session("0" * 32)
    fai.revoke_key(key["id"])


# -- the endpoint's session rules (raw HTTP) --------------------------------------------------


@pytest.mark.asyncio
async def test_session_rules_follow_the_spec(server: Server, fai: FaiClient) -> None:
    url = fai.mcp_url("kit")
    async with httpx2.AsyncClient(headers={"Authorization": bearer(server)}, timeout=30) as http:
        # the 2026-07-28 probe: a -32022 naming the handshake revisions (clients fall back)
        probe = {"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {}}
        r = await http.post(url, json=probe, headers={**ACCEPT, "MCP-Protocol-Version": "2026-07-28"})
        assert r.status_code == 400 and r.json()["error"]["code"] == -32022
        assert "2025-11-25" in r.json()["error"]["data"]["supported"]
        sid = await raw_session(http, url)
        # no session header / an unknown one / a bad version header / malformed bodies
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, headers=ACCEPT)
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600
        for method in ("POST", "GET", "DELETE"):
            r = await http.request(method, url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"} if method == "POST" else None,
                                   headers={"Accept": "application/json, text/event-stream", "Mcp-Session-Id": "0" * 32})
            assert r.status_code == 404, (method, r.text)
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, headers={**ACCEPT, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "1999-01-01"})
        assert r.status_code == 400
        r = await http.post(url, content=b"{nope", headers={**ACCEPT, "Mcp-Session-Id": sid})
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700
        r = await http.post(url, json=[{"jsonrpc": "2.0", "id": 1, "method": "ping"}], headers={**ACCEPT, "Mcp-Session-Id": sid})
        assert r.status_code == 400
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 6, "method": "no/such"}, headers={**ACCEPT, "Mcp-Session-Id": sid})
        assert r.status_code == 200 and r.json()["error"]["code"] == -32601
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 7, "method": "ping"}, headers={**ACCEPT, "Mcp-Session-Id": sid})
        assert r.json() == {"jsonrpc": "2.0", "id": 7, "result": {}}
        # an unknown server
        r = await http.post(fai.mcp_url("nosuch"), json=INIT, headers=ACCEPT)
        assert r.status_code == 404 and "nosuch" in r.json()["error"]["message"]
        # the GET stream: a tool published meanwhile is announced
        async with http.stream("GET", url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid}) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith(": stream open")
            await asyncio.to_thread(publish, fai, "kit", add)
            data = None
            while data is None:
                line = await asyncio.wait_for(anext(lines), 30)
                if line.startswith("data: "):
                    data = json.loads(line[6:])
            assert data == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
        r = await http.get(url, headers={"Accept": "application/json", "Mcp-Session-Id": sid})
        assert r.status_code == 406
        # DELETE ends it: 404 afterwards
        r = await http.delete(url, headers={"Mcp-Session-Id": sid})
        assert r.status_code == 204
        r = await raw_call(http, url, sid, "add", {"a": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == -32600
    rows = {s["id"]: s for s in fai.mcp_sessions("kit")}
    assert rows[sid]["status"] == "closed" and rows[sid]["close_reason"] == "terminated by the client"


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unauthenticated_and_wrongly_scoped_requests_are_refused(server: Server, fai: FaiClient) -> None:
    url = fai.mcp_url("kit")
    publish(fai, "other", add)
    own = fai.create_key("mcp:kit", "ci")
    other = fai.create_key("mcp:other")
    fai.deploy("plain", "def handler(event, ctx):\n    return event\n")
    fn_key = fai.create_key("plain")
    assert own["function"] == "mcp:kit" and own["key"].startswith("fai_")
    with pytest.raises(NotFound):
        fai.create_key("mcp:nosuch")
    async with httpx2.AsyncClient(timeout=30) as http:
        # no or a wrong credential: 401 with the challenge MCP clients start their auth flow from;
        # a valid key for something else: 403
        for auth, status, kind in (
            (None, 401, "unauthorized"),
            ("token wrong", 401, "unauthorized"),
            ("Bearer wrong", 401, "unauthorized"),
            (f"Bearer {own['key'][:-3]}xyz", 401, "unauthorized"),
            (f"Bearer {other['key']}", 403, "forbidden"),
            (f"Bearer {fn_key['key']}", 403, "forbidden"),
        ):
            headers = {**ACCEPT, **({"Authorization": auth} if auth else {})}
            r = await http.post(url, json=INIT, headers=headers)
            assert r.status_code == status, (auth, r.status_code, r.text)
            assert r.json()["error"]["kind"] == kind and r.json()["jsonrpc"] == "2.0", r.text
            assert r.headers.get("www-authenticate", "").startswith('Bearer realm="functionai"') == (status == 401), r.headers
            assert "mcp-session-id" not in r.headers
        # the right key works through the official client, and opens nothing else
        async with mcp_client(url, f"Bearer {own['key']}") as c:
            assert (await c.call_tool("add", {"a": 1})).structured_content == {"result": 2}
        # a session belongs to whoever opened it: other credentials see no such session
        keyed = httpx2.AsyncClient(headers={"Authorization": f"Bearer {own['key']}"}, timeout=30)
        async with keyed:
            sid = await raw_session(keyed, url)
            assert (await raw_call(http, url, sid, "add", {"a": 1})).status_code == 401  # no credentials
            theirs = await http.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"},
                                     headers={**ACCEPT, "Mcp-Session-Id": sid, "Authorization": bearer(server)})
            assert theirs.status_code == 404
            assert (await raw_call(keyed, url, sid, "add", {"a": 1})).json()["result"]["structuredContent"] == {"result": 2}
        for where, method in ((f"{server.url}/functionai/api/mcp/servers", "GET"), (f"{server.url}/functionai/invoke/mcp-kit", "POST"), (fai.mcp_url("other"), "POST")):
            r = await http.request(method, where, json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {own['key']}"})
            assert r.status_code == 403, (where, r.status_code)
        # the server token as a Bearer works too (what MCP clients send)
        async with mcp_client(url, f"Bearer {server.token}") as c:
            assert (await c.call_tool("add", {"a": 2})).structured_content == {"result": 3}
        fai.revoke_key(own["id"])
        r = await http.post(url, json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {own['key']}"})
        assert r.status_code == 401


# -- a restart ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_function_backed_session_survives_a_server_restart(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "home", tmp_path / "data")
    try:
        fai = FaiClient(srv.url, srv.token)
        publish(fai, "notes", remember)
        publish(fai, "notes", recall)
        url = fai.mcp_url("notes")
        async with httpx2.AsyncClient(headers={"Authorization": bearer(srv)}, timeout=30) as http:
            sid = await raw_session(http, url)
            r = await raw_call(http, url, sid, "remember", {"note": "survive"})
            assert r.json()["result"]["structuredContent"]["notes"] == ["survive"]
            first = (await raw_call(http, url, sid, "recall", {})).json()["result"]["structuredContent"]["instance"]
    finally:
        stop_server(srv)
    srv = start_server(tmp_path / "home", tmp_path / "data")  # same data dir, new process
    try:
        fai = FaiClient(srv.url, srv.token)
        url = fai.mcp_url("notes")
        async with httpx2.AsyncClient(headers={"Authorization": bearer(srv)}, timeout=30) as http:
            r = await raw_call(http, url, sid, "remember", {"note": "again"})
            assert r.status_code == 200, r.text
            assert r.json()["result"]["structuredContent"]["notes"] == ["survive", "again"]
            after = (await raw_call(http, url, sid, "recall", {})).json()["result"]["structuredContent"]["instance"]
            assert after != first  # a new instance resumed the session's state
            r = await http.delete(url, headers={"Mcp-Session-Id": sid})
            assert r.status_code == 204
            assert (await raw_call(http, url, sid, "recall", {})).status_code == 404
    finally:
        stop_server(srv)
