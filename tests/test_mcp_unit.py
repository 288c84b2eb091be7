"""The MCP tool service's pure parts: the wire helpers, docstring parsing,
the tool module's dispatch, the store tables. No server, no sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai.errors import Conflict, NotFound
from jupyter_functionai.mcp import protocol, tool_module
from jupyter_functionai.mcp.schema import parse_docstring
from jupyter_functionai.store import Store


def test_message_kinds_and_version_negotiation() -> None:
    assert protocol.kind_of({"jsonrpc": "2.0", "id": 1, "method": "ping"}) == "request"
    assert protocol.kind_of({"jsonrpc": "2.0", "method": "notifications/initialized"}) == "notification"
    assert protocol.kind_of({"jsonrpc": "2.0", "id": "a", "result": {}}) == "response"
    for bad in ({"id": 1, "method": "x"}, {"jsonrpc": "2.0", "id": 1.5, "method": "x"}, {"jsonrpc": "2.0", "id": True, "method": "x"},
                {"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}, {"jsonrpc": "2.0"}, [], "x"):
        with pytest.raises(protocol.McpError) as e:
            protocol.kind_of(bad)
        assert e.value.http_status == 400
    assert protocol.negotiate("2025-06-18") == "2025-06-18"
    assert protocol.negotiate("2026-07-28") == protocol.negotiate("1.0") == "2025-11-25"
    assert protocol.id_key(1) != protocol.id_key("1")
    err = protocol.unsupported_version("2026-07-28")
    assert err.code == -32022 and err.data["requested"] == "2026-07-28" and "2025-11-25" in err.data["supported"]


@pytest.mark.parametrize(
    "doc, summary, params",
    [
        (None, "", {}),
        ("One line.", "One line.", {}),
        ("Sum.\n\n    Args:\n        a (int): first\n        b: second,\n            continued\n\n    Returns:\n        the sum\n", "Sum.", {"a": "first", "b": "second, continued"}),
        ("Sum.\n\n:param a: first\n:param int b: second\n:returns: the sum\n", "Sum.", {"a": "first", "b": "second"}),
        ("Sum.\n\nParameters\n----------\na : int\n    first\nb : int\n    second\n", "Sum.", {"a": "first", "b": "second"}),
        ("Two\nlines.\n\nMore text.", "Two\nlines.\n\nMore text.", {}),
    ],
)
def test_docstrings_give_descriptions(doc: str | None, summary: str, params: dict[str, str]) -> None:
    assert parse_docstring(doc) == (summary, params)


def _module(tools: list[tuple[str, str, str, str | None]]) -> dict[str, Any]:
    """The generated server module, loaded here as its template would."""
    source = Path(tool_module.__file__).read_text()
    lines = [source] + [f"_register({n!r}, {c!r}, {h!r}, {x!r})" for n, c, h, x in tools]
    ns: dict[str, Any] = {"__name__": "srv"}
    exec(compile("\n".join(lines), "srv.py", "exec"), ns)
    return ns


class _Ctx:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}


def test_the_tool_module_dispatches_and_converts() -> None:
    code = (
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class P:\n    x: int\n    y: int\n"
        "def mk(x: int, y: int = 2) -> P:\n    return P(x, y)\n"
    )
    ns = _module([("make", code, "mk", None), ("who", "def w(ctx):\n    return ctx.state\n", "w", "ctx"),
                  ("aw", "async def a(n: int) -> int:\n    return n * 2\n", "a", None)])
    handler = ns["handler"]
    assert handler({"tool": "make", "arguments": {"x": "3"}}, None) == {"x": 3, "y": 2}  # coerced, dataclass -> dict
    ctx = _Ctx()
    ctx.state["k"] = 1
    assert handler({"tool": "who", "arguments": {}}, ctx) == {"k": 1}
    coro = handler({"tool": "aw", "arguments": {"n": 4}}, None)
    import asyncio

    assert asyncio.run(coro) == 8
    with pytest.raises(LookupError, match="tool 'nope' is not in this version"):
        handler({"tool": "nope"}, None)
    with pytest.raises(Exception, match="validation error"):
        handler({"tool": "make", "arguments": {"x": "not a number"}}, None)
    with pytest.raises(TypeError, match="generator"):
        _module([("gen", "def g():\n    yield 1\n", "g", None)])
    with pytest.raises(NameError, match="no callable 'missing'"):
        _module([("m", "x = 1\n", "missing", None)])


def test_the_store_keeps_servers_tools_and_sessions(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as st:
        st.create_mcp_server("a", "stdio", "mcp-a", {"command": ["x"]}, {"TOKEN": "t"})
        with pytest.raises(Conflict):
            st.create_mcp_server("a", "stdio", "mcp-a", {}, {})
        assert st.get_mcp_server("a")["secrets"] == {"TOKEN": "t"}
        st.update_mcp_server("a", {"command": ["y"]})
        assert st.get_mcp_server("a")["config"] == {"command": ["y"]}
        tool = {"name": "t", "description": "d", "input_schema": {"type": "object"}, "output_schema": None, "code": "c", "handler": "h"}
        st.put_mcp_tool("a", tool)
        st.put_mcp_tool("a", {**tool, "description": "d2", "wrap_output": True})
        rows = st.list_mcp_tools("a")
        assert len(rows) == 1 and rows[0]["description"] == "d2" and rows[0]["wrap_output"] is True and rows[0]["input_schema"] == {"type": "object"}
        st.create_mcp_session({"id": "s1", "server": "a", "kind": "stdio", "runtime_session": "mcp-x", "protocol_version": "2025-11-25",
                               "client_info": {"name": "c"}, "principal": "key:k1", "status": "active", "created_at": 1.0, "last_used_at": 1.0})
        st.touch_mcp_sessions({"s1": 5.0})
        st.update_mcp_session("s1", status="closed", close_reason="bye")
        row = st.get_mcp_session("s1")
        assert (row["last_used_at"], row["status"], row["client_info"]) == (5.0, "closed", {"name": "c"})
        assert [r["id"] for r in st.list_mcp_sessions("a", "closed")] == ["s1"]
        st.delete_mcp_server("a")
        assert st.list_mcp_tools("a") == [] and st.list_mcp_servers() == []
        with pytest.raises(NotFound):
            st.get_mcp_server("a")
        with pytest.raises(NotFound):
            st.get_mcp_session("nope")
        key = st.create_key("mcp:a")
        assert st.check_key(key) == "mcp:a"
    json.dumps(row)  # rows are plain JSON
