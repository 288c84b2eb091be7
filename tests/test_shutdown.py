"""Stopping the server: SIGTERM ends it promptly and cleanly with sessions,
sandbox kernels and MCP sessions open; a restart after ``kill -9`` leaves no
cgroups and no session or warm-pool directories of the killed run behind
(paused sessions keep theirs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from jupyter_functionai.backends.process import cgroup_tag
from jupyter_functionai.sandbox.isolation import CgroupManager

from .test_cli_server import COUNTER, Server, cli, ok, start_server, stop_server

TOOL = {
    "name": "add",
    "code": "def add(a: int, b: int) -> int:\n    return a + b\n",
    "handler": "add",
    "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
}


def http(server: Server, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method, headers={"Authorization": f"token {server.token}", "Content-Type": "application/json", **(headers or {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=60) as resp:
        raw = resp.read()
        return resp.status, dict(resp.headers), (json.loads(raw) if raw and resp.headers.get("Content-Type", "").startswith("application/json") else raw)


def open_everything(server: Server, tmp_path: Path) -> dict[str, Any]:
    """A session-ful function with two live sessions, a sandbox kernel, an MCP session."""
    src = tmp_path / "counter.py"
    src.write_text(COUNTER)
    ok(cli(server, "deploy", str(src), "--min-instances", "1"))
    for sid in ("s-one", "s-two"):
        ok(cli(server, "invoke", "counter", "--session", sid))
    status, _, kernel = http(server, "POST", "/api/kernels", {"name": "functionai-sandbox"})
    assert status == 201, kernel
    status, _, _ = http(server, "PUT", "/functionai/api/mcp/servers/kit/tools/add", TOOL)
    assert status == 200
    status, hdrs, _ = http(
        server, "POST", "/functionai/mcp/kit/mcp",
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"Accept": "application/json, text/event-stream"},
    )
    assert status == 200 and {k.lower(): v for k, v in hdrs.items()}.get("mcp-session-id")
    return {"kernel": kernel["id"]}


def test_sigterm_ends_the_server_with_everything_open(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", tmp_path / "data")
    try:
        open_everything(server, tmp_path)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            rc = server.proc.wait(timeout=10)  # the promise: within 10 s
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server was still running 10 s after SIGTERM:\n{server.log}") from None
        assert rc == 0, server.log
        log = server.log
        assert "Traceback" not in log, log
        assert "shutting down 1 sandbox kernel" in log, log
        print(f"SIGTERM to exit: {time.monotonic() - t0:.2f} s")
    finally:
        stop_server(server)


def test_restart_after_kill_9_leaves_nothing_of_the_killed_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(tmp_path / "home", data)
    open_everything(server, tmp_path)
    sessions = json.loads(ok(cli(server, "sessions", "--json")).stdout)
    kept = {os.path.basename(os.path.dirname(s["workdir"])) for s in sessions}
    assert len([s for s in sessions if s["function"] == "counter"]) == 2
    before = set(os.listdir(data / "sessions"))
    assert before - kept, "warm-pool instances have directories of their own"
    cg, tag = CgroupManager(), cgroup_tag(str(data))
    killed = cg.names(tag)  # its instances', its stock's and those its templates hold for their standbys
    if cg.version:
        assert killed, "instances run in cgroups named after their data dir"
    server.proc.kill()
    server.proc.wait()
    again = start_server(tmp_path / "home2", data)
    try:
        now = set(os.listdir(data / "sessions"))
        assert kept <= now, "sessions (paused by the kill) keep their directories"
        assert not (before - kept) & now, f"directories of the killed run remain: {sorted((before - kept) & now)}"
        if cg.version:  # (the new run makes its own, under the same tag)
            old = killed & cg.names(tag)
            assert not old, f"cgroups of the killed run remain: {sorted(old)}"
        # the session goes on from its persisted state
        assert json.loads(ok(cli(again, "invoke", "counter", "--session", "s-one")).stdout) == 2
    finally:
        stop_server(again)
