"""Hosted stdio MCP servers against a real ``functionai serve`` subprocess:
every MCP session gets its own server process in its own sandbox, messages
pass through (tools, progress, resources, prompts), a crash ends only its
own session, bad commands are clear errors, idle sessions expire; the
``functionai mcp`` CLI. The server is ``tests/mcp_stdio_fixture.py``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from jupyter_functionai.client import Client as FaiClient
from jupyter_functionai.errors import InvalidArgument, NotFound

from .test_cli_server import Server, cli, ok, start_server, stop_server, wait_until
from .test_mcp_server import ACCEPT, bearer, mcp_client, raw_call, raw_session

FIXTURE = str(Path(__file__).with_name("mcp_stdio_fixture.py"))
COMMAND = [sys.executable, FIXTURE]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mcp-stdio")
    srv = start_server(root / "home", root / "data")
    try:
        FaiClient(srv.url, srv.token).mcp_add("fx", COMMAND, env={"GREETING": "hi"}, secrets={"API_KEY": "s3cret"}, memory="256Mi")
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def fai(server: Server) -> FaiClient:
    return FaiClient(server.url, server.token)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    subs = getattr(exc, "exceptions", None)
    if not subs:
        return [exc]
    return [leaf for sub in subs for leaf in leaves(sub)]


def text(result: Any) -> str:
    return str(result.content[0].text)


@pytest.mark.asyncio
async def test_a_stdio_server_is_hosted_end_to_end(server: Server, fai: FaiClient) -> None:
    row = fai.mcp_server("fx")
    assert row["kind"] == "stdio" and row["path"] == "/functionai/mcp/fx/mcp"
    assert [t["name"] for t in row["tools"]] == ["put", "get", "whoami", "env", "slow", "crash", "roots", "announce", "disk"]  # learnt by the probe
    assert row["env"] == {"GREETING": "hi"} and row["secrets"] == ["API_KEY"] and "s3cret" not in json.dumps(row)
    async with mcp_client(fai.mcp_url("fx"), bearer(server)) as c:
        assert c.session.initialize_result is not None and c.session.initialize_result.server_info.name == "fixture"
        assert [t.name for t in (await c.list_tools()).tools][:2] == ["put", "get"]
        assert text(await c.call_tool("put", {"key": "k", "value": "v"})) == "ok"
        assert text(await c.call_tool("get", {"key": "k"})) == "v"
        assert text(await c.call_tool("env", {"name": "GREETING"})) == "hi"
        assert text(await c.call_tool("env", {"name": "API_KEY"})) == "s3cret"
        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))

        assert text(await c.call_tool("slow", {"steps": 3}, progress_callback=on_progress)) == "done after 3 steps"
        assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
        resources = (await c.session.list_resources()).resources
        assert [str(r.uri) for r in resources] == ["fixture://token"]
        token = json.loads(text(await c.call_tool("whoami", {})))["token"]
        contents = (await c.session.read_resource("fixture://token")).contents
        assert contents[0].text == token  # type: ignore[union-attr]
        assert [p.name for p in (await c.session.list_prompts()).prompts] == ["greet"]
        prompt = await c.session.get_prompt("greet", {"who": "bob"})
        assert prompt.messages[0].content.text == "hello bob"  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="Unknown tool: nope"):
            await c.call_tool("nope", {})
        # its working directory is a filesystem of its own, capped at the
        # default 1 GiB (the relay's socket is found on it from the host)
        disk = json.loads(text(await c.call_tool("disk", {})))
        assert 900 <= disk["size_mib"] <= 1024 and disk["cwd"].endswith("/work"), disk


@pytest.mark.asyncio
async def test_server_requests_notifications_and_cancellation_are_forwarded(server: Server, fai: FaiClient) -> None:
    heard: list[Any] = []
    list_changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        heard.append(message)
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            list_changed.set()

    async def list_roots(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async with mcp_client(fai.mcp_url("fx"), bearer(server), list_roots_callback=list_roots, message_handler=on_message) as c:
        # the server asks the client (on the stream of the call in flight) and gets the answer
        answer = json.loads(text(await c.call_tool("roots", {})))
        assert answer == {"roots": [{"uri": "file:///work/project", "name": "project"}]}
        # a notification outside of any request reaches the client (the GET stream)
        assert text(await c.call_tool("announce", {})) == "soon"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(list_changed.wait(), 10)
        assert list_changed.is_set(), heard
        # a cancelled call: the server is told, the session goes on
        token = json.loads(text(await c.call_tool("whoami", {})))["token"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.call_tool("slow", {"steps": 100, "delay": 0.1}), 0.5)
        await asyncio.to_thread(wait_until, lambda: not any(s["in_flight"] for s in fai.mcp_sessions("fx", "active")), 20, "the cancelled call to be dropped")
        assert json.loads(text(await c.call_tool("whoami", {})))["token"] == token


@pytest.mark.asyncio
async def test_twenty_sessions_each_get_their_own_process(server: Server, fai: FaiClient) -> None:
    url = fai.mcp_url("fx")

    async def one(i: int) -> dict[str, Any]:
        async with mcp_client(url, bearer(server)) as c:
            await c.call_tool("put", {"key": f"k{i}", "value": f"secret-{i}"})
            me = json.loads(text(await c.call_tool("whoami", {})))
            me["mine"] = text(await c.call_tool("get", {"key": f"k{i}"}))
            me["theirs"] = text(await c.call_tool("get", {"key": f"k{(i + 1) % 20}"}))
            return me

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert len({r["token"] for r in results}) == 20  # 20 different processes
    for i, r in enumerate(results):
        assert r["keys"] == [f"k{i}"] and r["mine"] == f"secret-{i}" and r["theirs"] == ""
    # each in its own sandbox session: 20 runtime sessions, 20 instances
    rows = [s for s in fai.mcp_sessions("fx") if s["client_info"].get("name") == "mcp"][:20]
    runtime = {s["runtime_session"] for s in rows}
    assert len(runtime) == 20


@pytest.mark.asyncio
async def test_a_crash_mid_call_ends_only_its_own_session(server: Server, fai: FaiClient) -> None:
    url = fai.mcp_url("fx")
    async with mcp_client(url, bearer(server)) as a, mcp_client(url, bearer(server)) as b:
        b_token = json.loads(text(await b.call_tool("whoami", {})))["token"]
        with pytest.raises(MCPError, match="exited with code 3") as crash:
            await asyncio.wait_for(a.call_tool("crash", {}), 30)  # an error, not a hang
        assert "crashing on purpose" in str(crash.value)
        with pytest.raises(MCPError, match="Session not found"):
            await a.call_tool("whoami", {})
        assert json.loads(text(await b.call_tool("whoami", {})))["token"] == b_token  # B is untouched
    async with mcp_client(url, bearer(server)) as again:  # a new session: a new process
        assert json.loads(text(await again.call_tool("whoami", {})))["token"] != b_token
    ended = [s for s in fai.mcp_sessions("fx", "closed") if s["close_reason"] == "the server process exited with code 3"]
    assert len(ended) == 1


def test_bad_commands_are_clear_errors(server: Server, fai: FaiClient, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="'no-such-mcp-server' was not found on the server's PATH"):
        fai.mcp_add("bad1", ["no-such-mcp-server"])
    with pytest.raises(InvalidArgument, match="does not exist or is not executable"):
        fai.mcp_add("bad2", ["/no/such/server"])
    with pytest.raises(InvalidArgument, match="no catalog server 'nope'"):
        fai.mcp_add("bad3", catalog="nope")
    # it exits at once: the probe says how, with its stderr, and nothing is added
    with pytest.raises(InvalidArgument, match=r"(?s)did not start.*exited with code 7.*refusing to start"):
        fai.mcp_add("bad4", COMMAND, env={"FIXTURE_FAIL_AT_START": "1"})
    # a command the sandbox cannot see (files under /tmp are masked there)
    hidden = tmp_path / "server.sh"
    hidden.write_text("#!/bin/sh\nexec cat\n")
    hidden.chmod(0o755)
    with pytest.raises(InvalidArgument, match="was not found in the sandbox"):
        fai.mcp_add("bad5", [str(hidden)])
    names = {s["name"] for s in fai.mcp_servers()}
    assert not names & {"bad1", "bad2", "bad3", "bad4", "bad5"}
    with pytest.raises(NotFound):
        fai.mcp_server("bad4")
    # not probed: the error comes at the first initialize, as an MCP error
    fai.mcp_add("late", COMMAND, env={"FIXTURE_FAIL_AT_START": "1"}, probe=False)

    async def first_use() -> list[BaseException]:
        try:
            async with mcp_client(fai.mcp_url("late"), bearer(server)):
                pass
        except Exception as exc:  # the client's task group wraps it
            return leaves(exc)
        return []

    errors = asyncio.run(first_use())
    assert any(isinstance(e, MCPError) and "exited with code 7" in str(e) and "refusing to start" in str(e) for e in errors), errors
    fai.mcp_remove("late")


@pytest.mark.asyncio
async def test_idle_sessions_expire_and_answer_404(server: Server, fai: FaiClient) -> None:
    await asyncio.to_thread(fai.mcp_add, "brief", COMMAND, idle_ttl=1, probe=False)
    url = fai.mcp_url("brief")
    async with httpx2.AsyncClient(headers={"Authorization": bearer(server)}, timeout=30) as http:
        sid = await raw_session(http, url)
        r = await raw_call(http, url, sid, "whoami", {})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")

        def expired() -> bool:
            return any(s["id"] == sid and s["status"] == "expired" for s in fai.mcp_sessions("brief"))

        await asyncio.to_thread(wait_until, expired, 15, "the idle session to expire")
        r = await raw_call(http, url, sid, "whoami", {})
        assert r.status_code == 404
        r = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**ACCEPT, "Mcp-Session-Id": sid})
        assert r.status_code == 404
    await asyncio.to_thread(fai.mcp_remove, "brief")


def test_the_mcp_cli(server: Server) -> None:
    p = ok(cli(server, "mcp", "add", "clifx", "--env", "GREETING=yo", "--secret", "API_KEY=k", "--idle-ttl", "60", "--", *COMMAND))
    assert "added MCP server clifx: " + server.url + "/functionai/mcp/clifx/mcp" in p.stdout
    assert "tools: put, get, whoami, env, slow, crash, roots, announce" in p.stdout
    p = ok(cli(server, "mcp", "ls"))
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("clifx"))
    assert "stdio" in line and "put, get" in line and f"{server.url}/functionai/mcp/clifx/mcp" in line
    rows = json.loads(ok(cli(server, "mcp", "ls", "--json")).stdout)
    row = next(r for r in rows if r["name"] == "clifx")
    assert row["env"] == {"GREETING": "yo"} and row["secrets"] == ["API_KEY"] and row["idle_ttl_s"] == 60
    bad = cli(server, "mcp", "add", "clibad", "--", "/no/such/server")
    assert bad.returncode == 2 and "does not exist or is not executable" in bad.stderr
    bad = cli(server, "mcp", "add", "clibad")
    assert bad.returncode == 2 and "give the server's command after --" in bad.stderr
    ok(cli(server, "mcp", "rm", "clifx"))
    assert "clifx" not in ok(cli(server, "mcp", "ls")).stdout
    assert cli(server, "mcp", "rm", "clifx").returncode != 0


@pytest.mark.asyncio
async def test_stdio_sessions_end_with_the_server(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "home", tmp_path / "data")
    try:
        fai = FaiClient(srv.url, srv.token)
        await asyncio.to_thread(fai.mcp_add, "fx", COMMAND, probe=False)
        async with httpx2.AsyncClient(headers={"Authorization": bearer(srv)}, timeout=30) as http:
            sid = await raw_session(http, fai.mcp_url("fx"))
    finally:
        stop_server(srv)  # also checks that no sandbox (nor server process) is left behind
    srv = start_server(tmp_path / "home", tmp_path / "data")
    try:
        fai = FaiClient(srv.url, srv.token)
        async with httpx2.AsyncClient(headers={"Authorization": bearer(srv)}, timeout=30) as http:
            r = await raw_call(http, fai.mcp_url("fx"), sid, "whoami", {})
            assert r.status_code == 404  # its process is gone: the client initialises again
            assert (await raw_session(http, fai.mcp_url("fx")))
        row = next(s for s in fai.mcp_sessions("fx") if s["id"] == sid)
        assert row["status"] == "closed" and row["close_reason"] in ("the server stopped", "the server restarted")
    finally:
        stop_server(srv)
