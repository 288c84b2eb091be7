"""The panels in tabs, and the ``panel()`` factory behind ``%fai panel``."""


from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient
from .base import _LivePanel
from .coldstarts import ColdStartsPanel
from .functions import FunctionsPanel
from .runs import RunsPanel
from .sessions import SessionsPanel
from .tasks import TasksPanel
from .tools import ToolsPanel
from .usage import UsagePanel


class Dashboard(widgets.Tab):
    """The panels in tabs; only the selected tab polls."""

    def __init__(self, panels: Sequence[_LivePanel], titles: Iterable[str]) -> None:
        super().__init__(children=list(panels), titles=tuple(titles), selected_index=0)
        self.panels = list(panels)
        self.add_class("fai-dashboard")
        self.observe(self._on_select, names="selected_index")
        self._on_select({"new": self.selected_index})

    def __repr__(self) -> str:
        return f"<functionai Dashboard: {', '.join(p.kind for p in self.panels)}>"

    def _on_select(self, change: dict[str, Any]) -> None:
        for i, p in enumerate(self.panels):
            p.active = i == change["new"]

    def close(self) -> None:
        for p in self.panels:
            p.close()
        super().close()


KINDS = {
    "sessions": "sessions",
    "session": "sessions",
    "coldstarts": "coldstarts",
    "coldstart": "coldstarts",
    "cold-starts": "coldstarts",
    "functions": "functions",
    "function": "functions",
    "versions": "functions",
    "tasks": "tasks",
    "task": "tasks",
    "tools": "tools",
    "tool": "tools",
    "mcp": "tools",
    "runs": "runs",
    "run": "runs",
    "schedules": "runs",
    "schedule": "runs",
    "usage": "usage",
    "all": "all",
}

_BY_KEY: dict[str, Any] = {}
_BY_KEY_LOCK = threading.Lock()


def _cell_id() -> str | None:
    """The id of the notebook cell being run (JupyterLab and Notebook 7 send it), if any."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        parent = kernel.get_parent("shell") if kernel is not None else None
        cell = ((parent or {}).get("metadata") or {}).get("cellId")
        return str(cell) if cell else None
    except Exception:
        return None


def panel(
    kind: str = "all",
    client: FunctionAIClient | None = None,
    *,
    function: str | None = None,
    session: str | None = None,
    interval: float | None = None,
    key: str | None = None,
) -> Any:
    """A live panel: ``"sessions"``, ``"coldstarts"``, ``"functions"``,
    ``"tasks"``, ``"tools"`` (hosted MCP servers; ``function`` then names the
    server), ``"runs"`` (notebook runs and schedules) or ``"all"`` (in tabs:
    the Runs and Tools tabs only when no ``function`` is given, as they are
    about notebooks and MCP servers, not one function), optionally for one
    ``function``.

    ``client`` defaults to the notebook's server (or the embedded runtime),
    as the magics find it. A panel made for the same ``key`` (by default the
    notebook cell being run, with the kind and function) replaces the previous
    one, which stops polling."""
    which = KINDS.get(kind.lower())
    if which is None:
        raise ValueError(f"unknown panel {kind!r}: use sessions, coldstarts, functions, tasks, tools, runs, usage or all")
    if client is None:
        from ..connect import connect

        client = connect()
    kw: dict[str, Any] = {} if interval is None else {"interval": interval}
    made: Any
    if which == "sessions":
        made = SessionsPanel(client, function, **kw)
    elif which == "coldstarts":
        made = ColdStartsPanel(client, function, **kw)
    elif which == "functions":
        made = FunctionsPanel(client, function, session=session, **kw)
    elif which == "tasks":
        made = TasksPanel(client, function, **kw)
    elif which == "tools":
        made = ToolsPanel(client, function, **kw)
    elif which == "runs":
        made = RunsPanel(client, **kw)
    elif which == "usage":
        made = UsagePanel(client, function, **kw)
    else:
        parts: list[_LivePanel] = [
            FunctionsPanel(client, function, session=session, active=True, **kw),
            SessionsPanel(client, function, active=False, **kw),
            ColdStartsPanel(client, function, active=False, **kw),
            TasksPanel(client, function, active=False, **kw),
            UsagePanel(client, function, active=False, **kw),
        ]
        titles = ["Function" if function else "Functions", "Sessions", "Cold starts", "Tasks", "Usage"]
        if function is None:
            parts.extend([RunsPanel(client, active=False, **kw), ToolsPanel(client, active=False, **kw)])
            titles.extend(["Runs", "Tools"])
        made = Dashboard(parts, titles)
    cell = _cell_id()
    if key is None and cell is not None:
        key = f"{cell}:{which}:{function or ''}"
    if key is not None:
        with _BY_KEY_LOCK:
            old = _BY_KEY.pop(key, None)
            _BY_KEY[key] = made
        if old is not None and old is not made:
            old.close()
    return made
