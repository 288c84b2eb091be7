"""Real third-party MCP servers from PyPI, hosted by name from the catalog
(installed on demand into their own virtual environments under the data dir,
from the package index this machine's pip uses), driven end to end by the
official ``mcp`` client."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_functionai.client import Client as FaiClient

from .test_cli_server import Server, cli, ok, start_server, stop_server
from .test_mcp_server import bearer, mcp_client

REPO = Path(__file__).resolve().parent.parent  # visible (read-only) inside sandboxes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mcp-catalog")
    srv = start_server(root / "home", root / "data")
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.mark.asyncio
async def test_mcp_server_time_from_pypi(server: Server) -> None:
    p = ok(cli(server, "mcp", "add", "clock", "--catalog", "time", timeout=300))
    assert "tools: get_current_time, convert_time" in p.stdout
    fai = FaiClient(server.url, server.token)
    row = fai.mcp_server("clock")
    env = Path(row["command"][0]).parent.parent
    assert row["catalog"] == "time" and env == server.data_dir / "envs" / "mcp-server-time"
    assert (env / "pyvenv.cfg").exists()  # its own virtual environment
    async with mcp_client(fai.mcp_url("clock"), bearer(server)) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert {"get_current_time", "convert_time"} <= set(tools)
        assert tools["get_current_time"].input_schema["required"] == ["timezone"]
        r = await c.call_tool("get_current_time", {"timezone": "Europe/Paris"})
        assert not r.is_error and r.structured_content is not None
        assert r.structured_content["timezone"] == "Europe/Paris" and "T" in r.structured_content["datetime"]
        r = await c.call_tool("convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})
        assert not r.is_error and r.structured_content is not None
        assert r.structured_content["target"]["datetime"].endswith("21:00:00+09:00")
        r = await c.call_tool("get_current_time", {})  # the server's own validation error, passed through
        assert r.is_error and "timezone" in r.content[0].text
    # a second server of the same package reuses the environment (no install)
    ok(cli(server, "mcp", "add", "clock2", "--catalog", "time"))
    assert json.loads(ok(cli(server, "mcp", "ls", "--json")).stdout)[1]["command"][0] == row["command"][0]


@pytest.mark.asyncio
async def test_mcp_server_git_from_pypi(server: Server) -> None:
    # the sandbox runs as its own uid, not the repository's owner: trust it
    # through the server's environment (git reads config from GIT_CONFIG_*)
    trust = ["--env", "GIT_CONFIG_COUNT=1", "--env", "GIT_CONFIG_KEY_0=safe.directory", "--env", "GIT_CONFIG_VALUE_0=*"]
    ok(cli(server, "mcp", "add", "repo", "--catalog", "git", *trust, "--", "--repository", str(REPO), timeout=300))
    fai = FaiClient(server.url, server.token)
    async with mcp_client(fai.mcp_url("repo"), bearer(server)) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"git_status", "git_log", "git_show"} <= names
        r = await c.call_tool("git_log", {"repo_path": str(REPO), "max_count": 1})
        assert not r.is_error, r.content
        assert "Commit" in r.content[0].text or "commit" in r.content[0].text
    assert os.path.isdir(server.data_dir / "envs" / "mcp-server-git")
