"""``%%tool`` and ``@jupyter_functionai.tool`` in a real IPython kernel
(nbclient) against a real ``functionai serve``; the published tools are then
called with the official ``mcp`` client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_functionai.client import Client

from .test_cli_server import Server, base_env, start_server, stop_server
from .test_magics import errors, text
from .test_mcp_server import bearer, mcp_client

CELLS: dict[str, str] = {
    "load": "%load_ext jupyter_functionai",
    "defs": "import math\nUNIT = 'cm'\n\ndef fmt(x):\n    return f'{x:.1f} {UNIT}'",
    "magic": (
        "%%tool geo --name circumference\n"
        "def circ(r: float) -> str:\n"
        "    '''The circumference of a circle.\n\n"
        "    Args:\n"
        "        r: its radius\n"
        "    '''\n"
        "    return fmt(2 * math.pi * r)"
    ),
    "local": "print('local', circ(1.0))",
    "deco": (
        "import jupyter_functionai as fai\n"
        "@fai.tool('geo')\n"
        "def area(r: float, ctx) -> dict[str, object]:\n"
        "    '''The area of a circle; counts the calls of this session.'''\n"
        "    ctx.session.state['calls'] = ctx.session.state.get('calls', 0) + 1\n"
        "    return {'area': fmt(math.pi * r * r), 'calls': ctx.session.state['calls']}\n"
        "print(area, area.url.endswith('/functionai/mcp/geo/mcp'))"
    ),
    "two_fns": "%%tool geo\ndef a(x: int) -> int:\n    return x\n\ndef b(x: int) -> int:\n    return x",
    "deco_noname": "@fai.tool\ndef nope(x: int) -> int:\n    return x",
    "leaky": "fh = open('data.txt', 'w')",
    "leaky_tool": "%%tool geo\ndef leak(x: int) -> str:\n    return fh.name",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("mcp-magics")
    srv = start_server(root / "home", root / "data")
    try:
        work = root / "nb"
        work.mkdir()
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith(("FUNCTIONAI_", "JUPYTER_"))]:
                mp.delenv(key)
            env = base_env(root / "kernel")
            for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
                mp.setenv(var, env[var])
            mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
            mp.setenv("FUNCTIONAI_URL", srv.url)
            mp.setenv("FUNCTIONAI_TOKEN", srv.token)
            nb = nbformat.v4.new_notebook()
            nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS.values()]
            NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True, resources={"metadata": {"path": str(work)}}).execute()
        yield srv, dict(zip(CELLS, nb.cells, strict=True))
    finally:
        stop_server(srv)


@pytest.mark.asyncio
async def test_tool_magic_and_decorator_publish_callable_tools(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    for name in ("load", "defs", "magic", "local", "deco"):
        assert not errors(cells[name]), (name, text(cells[name]))
    out = text(cells["magic"])
    assert f"published tool circumference on MCP server geo: {srv.url}/functionai/mcp/geo/mcp" in out
    assert "(carried from the notebook: UNIT, fmt, math)" in out, out
    assert text(cells["local"]).strip() == "local 6.3 cm"  # still the local function
    assert "<ToolHandle 'area' on MCP server 'geo'" in text(cells["deco"]) and "True" in text(cells["deco"])
    with Client(srv.url, srv.token) as fai:
        tools = {t["name"]: t for t in fai.mcp_server("geo")["tools"]}
    assert set(tools) == {"circumference", "area"}
    assert tools["circumference"]["description"] == "The circumference of a circle."
    assert tools["circumference"]["inputSchema"]["properties"]["r"]["description"] == "its radius"
    async with mcp_client(f"{srv.url}/functionai/mcp/geo/mcp", bearer(srv)) as c:
        r = await c.call_tool("circumference", {"r": 2})
        assert r.structured_content == {"result": "12.6 cm"}
        assert (await c.call_tool("area", {"r": 1})).structured_content == {"area": "3.1 cm", "calls": 1}
        assert (await c.call_tool("area", {"r": 2})).structured_content == {"area": "12.6 cm", "calls": 2}


def test_tool_magic_refusals_are_clear(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    # (IPython shows a UsageError as a message, not as an error output)
    assert "UsageError: the cell must define exactly one public function" in text(cells["two_fns"])
    assert errors(cells["deco_noname"]) == ["TypeError"] and "needs the MCP server's name" in text(cells["deco_noname"])
    assert "UsageError: cannot carry these notebook variables" in text(cells["leaky_tool"]) and "fh (_io.TextIOWrapper)" in text(cells["leaky_tool"])
    with Client(srv.url, srv.token) as fai:
        assert {t["name"] for t in fai.mcp_server("geo")["tools"]} == {"circumference", "area"}  # nothing else published
