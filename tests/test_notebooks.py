"""Every notebook in ``notebooks/`` runs top to bottom in a real kernel
against a real ``functionai serve``, and says what it claims."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_functionai.client import Client

from .test_cli_server import REPO, Server, base_env, start_server, stop_server
from .test_magics import text

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("notebooks")
    srv = start_server(root / "home", root / "data")
    try:
        yield srv
    finally:
        stop_server(srv)


def execute(path: Path, srv: Server, work: Path) -> Any:
    nb = nbformat.read(path, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith(("FUNCTIONAI_", "JUPYTER_", "OPENAI_"))]:
            mp.delenv(key)
        env = base_env(work / "kernel")
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            mp.setenv(var, env[var])
        mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
        mp.setenv("FUNCTIONAI_URL", srv.url)
        mp.setenv("FUNCTIONAI_TOKEN", srv.token)
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    return nb


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == ["mcp_tools.ipynb", "quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, server: Server, tmp_path: Path) -> None:
    nb = execute(path, server, tmp_path)  # raises CellExecutionError on any error
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert "UsageError" not in text(cell) and "Traceback" not in text(cell), (cell.source, text(cell))
    if path.stem == "quickstart":
        check_quickstart(nb, server)
    if path.stem == "mcp_tools":
        check_mcp_tools(nb, server)


def check_quickstart(nb: Any, srv: Server) -> None:
    out = "\n".join(text(c) for c in nb.cells if c.cell_type == "code")
    assert "policy: scripted (deterministic rules; set OPENAI_BASE_URL to use a model)" in out
    assert f"deployed agent version 1 to FUNCTIONAI_URL ({srv.url}/)" in out
    assert "(carried from the notebook: " in out and "TOOLS" in out and "step" in out
    assert "affinity and isolation: OK (policy: scripted)" in out
    assert "alice: noted -> the launch code is 4217" in out
    assert "bob:   cannot read" in out and "4217" not in out.split("bob:", 1)[1].split("\n", 1)[0]
    assert "['closed', 'closed']" in out
    assert "task True 1024 succeeded" in out
    panels = [c for c in nb.cells if c.cell_type == "code" and ("panel" in c.source)]
    assert len(panels) == 3
    for cell in panels:
        assert any(WIDGET in o.get("data", {}) for o in cell.outputs), (cell.source, cell.outputs)
    with Client(srv.url, srv.token) as client:
        sessions = client.sessions(function="agent")
        assert len(sessions) == 2 and {s["status"] for s in sessions} == {"closed"}
        assert any(c["function"] == "agent" for c in client.coldstarts())


def check_mcp_tools(nb: Any, srv: Server) -> None:
    out = "\n".join(text(c) for c in nb.cells if c.cell_type == "code")
    assert "alice: {'items': 3, 'total': 1.5} bob: {'items': 0, 'total': 0}" in out
    assert "policy: scripted | answer: [scripted] 4 items, total 3.0" in out
    assert "tool calls: ['add_to_cart', 'checkout']" in out
    assert f"{srv.url}/functionai/mcp/shop/mcp" in out
    panel = nb.cells[-1]
    assert any(WIDGET in o.get("data", {}) for o in panel.outputs), panel.outputs
    with Client(srv.url, srv.token) as client:
        shop = client.mcp_server("shop")
        assert {t["name"] for t in shop["tools"]} == {"add_to_cart", "checkout"}
