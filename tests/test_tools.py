"""``jupyter_functionai.tools``: hosted MCP tools from Python and in an agent
loop (OpenAI tool-calling format), through a real ``functionai serve``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jupyter_functionai
from jupyter_functionai import tools
from jupyter_functionai.client import Client, NoServer
from jupyter_functionai.tools import Toolbox, ToolError

from .test_cli_server import Server, start_server, stop_server


def tally(item: str, ctx: Any) -> dict[str, Any]:
    """Count an item in this session.

    Args:
        item: what to count
    """
    seen = ctx.session.state.setdefault("seen", [])
    seen.append(item)
    return {"count": len(seen), "items": seen}


def divide(a: float, b: float) -> float:
    """Divide a by b.

    Args:
        a: the dividend
        b: the divisor
    """
    return a / b


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("tools")
    srv = start_server(root / "home", root / "data")
    try:
        fai = Client(srv.url, srv.token)
        for fn in (tally, divide):
            jupyter_functionai.tool("box", client=fai)(fn)
        yield srv
    finally:
        stop_server(srv)


def test_a_toolbox_is_one_mcp_session(server: Server) -> None:
    fai = Client(server.url, server.token)
    with Toolbox("box", fai) as a, Toolbox("box", fai) as b:
        listed = {t["name"]: t for t in a.list_tools()}
        assert set(listed) == {"tally", "divide"}
        assert listed["divide"]["input_schema"]["properties"]["b"]["type"] == "number"
        assert listed["divide"]["input_schema"]["properties"]["b"]["description"] == "the divisor"
        assert a.call("divide", {"a": 1, "b": 4}) == 0.25
        # affinity: one Toolbox, one sandbox session; another Toolbox sees none of it
        assert a.call("tally", {"item": "x"})["count"] == 1
        assert a.call("tally", {"item": "y"}) == {"count": 2, "items": ["x", "y"]}
        assert b.call("tally", {"item": "z"}) == {"count": 1, "items": ["z"]}
        with pytest.raises(ToolError, match="division by zero"):
            a.call("divide", {"a": 1, "b": 0})
        with pytest.raises(ToolError):
            a.call("divide", {"a": "one"})  # violates the schema
        assert a.call("tally", {"item": "w"})["count"] == 3  # the session lives on after errors
        sessions = [s for s in fai.mcp_sessions("box") if s.get("status") == "active"]
        assert len(sessions) >= 2


def test_openai_tool_calling_loop(server: Server) -> None:
    """An agent loop in the OpenAI format: the (scripted) model asks for tool
    calls; the toolbox runs them in its sandbox session and answers as
    ``tool`` messages."""
    fai = Client(server.url, server.token)
    with Toolbox("box", fai) as box:
        specs = box.openai_tools()
        by_name = {s["function"]["name"]: s for s in specs}
        assert set(by_name) == {"tally", "divide"} and all(s["type"] == "function" for s in specs)
        assert by_name["tally"]["function"]["parameters"]["required"] == ["item"]
        assert "ctx" not in by_name["tally"]["function"]["parameters"]["properties"]

        def scripted_model(messages: list[dict[str, Any]]) -> dict[str, Any]:
            """Deterministic stand-in for a model: one tool call per user turn, then an answer."""
            if messages[-1]["role"] == "tool":
                return {"role": "assistant", "content": f"done: {messages[-1]['content']}"}
            text = messages[-1]["content"]
            name, args = ("divide", {"a": 10, "b": 4}) if "divide" in text else ("tally", {"item": text})
            return {"role": "assistant", "content": None, "tool_calls": [{"id": f"call-{len(messages)}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}

        messages: list[dict[str, Any]] = []
        for user in ("apples", "pears", "divide please"):
            messages.append({"role": "user", "content": user})
            while True:
                reply = scripted_model(messages)
                messages.append(reply)
                if not reply.get("tool_calls"):
                    break
                messages.extend(box.run_tool_call(c) for c in reply["tool_calls"])
        tool_msgs = [m for m in messages if m["role"] == "tool"]
        assert [json.loads(m["content"]) for m in tool_msgs] == [{"count": 1, "items": ["apples"]}, {"count": 2, "items": ["apples", "pears"]}, 2.5]
        assert tool_msgs[0]["tool_call_id"] == messages[1]["tool_calls"][0]["id"]
        bad = box.run_tool_call({"id": "c", "function": {"name": "divide", "arguments": '{"a": 1, "b": 0}'}})
        assert "division by zero" in json.loads(bad["content"])["error"]  # reported to the model, not raised


def test_module_level_call_keeps_one_session(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNCTIONAI_URL", server.url)
    monkeypatch.setenv("FUNCTIONAI_TOKEN", server.token)
    monkeypatch.delenv("FUNCTIONAI_PARENT_URL", raising=False)
    try:
        assert tools.call("box", "tally", {"item": "a"})["count"] == 1
        assert tools.call("box", "tally", {"item": "b"})["count"] == 2
        assert {s["function"]["name"] for s in tools.openai_tools("box")} == {"tally", "divide"}
    finally:
        for box in list(tools._BOXES.values()):
            box.close()
        tools._BOXES.clear()


def test_without_a_server_it_says_so(tmp_path: Path) -> None:
    closed = Client("http://127.0.0.1:9", "t")
    with pytest.raises(NoServer, match="cannot open an MCP session"):
        Toolbox("box", closed)
