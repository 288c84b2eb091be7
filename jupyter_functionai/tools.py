"""Use hosted MCP tools from Python and hand them to an agent loop.

    from jupyter_functionai import tools

    tools.call("notes", "remember", {"note": "milk"})     # one MCP session per server and process
    with tools.Toolbox("notes") as box:                    # or your own session
        box.list_tools()                                       # [{"name", "description", "input_schema"}]
        specs = box.openai_tools()                         # OpenAI tool-calling format
        reply = box.run_tool_call(message["tool_calls"][0])  # -> {"role": "tool", ...}

Calls go through the hosted endpoint (``/functionai/mcp/{server}/mcp``) with
the official ``mcp`` client (the ``[mcp]`` extra, 1.x or 2.x, through
:mod:`jupyter_functionai.mcp.client`), so they are authenticated, run in the MCP
session's sandbox (every call of one :class:`Toolbox` reaches the same
instance: affinity) and are counted like any client's. The blocking methods
work inside a Jupyter kernel: the MCP session lives on a thread of its own.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from .api import FunctionAIClient, as_server
from .client import NoServer
from .errors import FunctionAIError, SessionClosed

__all__ = ["ToolError", "Toolbox", "call", "openai_tools"]


class ToolError(FunctionAIError):
    """A tool answered with ``isError``: its message is the tool's text."""

    kind = "tool_error"
    status = 422


_STOP = object()


class Toolbox:
    """One MCP session on a hosted server (see the module docstring)."""

    def __init__(self, server: str, client: FunctionAIClient | None = None, *, timeout: float = 300.0) -> None:
        if client is None:
            from .connect import connect

            client = connect()
        url = getattr(client, "url", "")
        fai = as_server(client)
        if fai is None or not str(url).startswith(("http://", "https://", "unix:")):
            raise NoServer(f"MCP tools need a functionai server (this client is {url!r}): start one with `functionai serve` or run in JupyterLab")
        self.server = server
        self.url = fai.mcp_url(server)
        self._headers = fai.auth_headers()
        self.timeout = timeout
        self._queue: asyncio.Queue[Any] | None = None
        self._ready: Future[None] = Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"functionai-tools-{server}", daemon=True)
        self._thread.start()
        self._owner = asyncio.run_coroutine_threadsafe(self._own(), self._loop)
        try:
            self._ready.result(timeout=60)
        except BaseException:
            self.close()
            raise

    async def _own(self) -> None:
        """Open the MCP session and serve requests from the queue in this one
        task (the client's context managers must exit in the task they entered)."""
        from .mcp.client import open_session

        self._queue = asyncio.Queue()
        try:
            async with open_session(self.url, headers=self._headers, timeout=self.timeout) as session:
                self._ready.set_result(None)
                while True:
                    item = await self._queue.get()
                    if item is _STOP:
                        return
                    fn, fut = item
                    try:
                        fut.set_result(await fn(session))
                    except BaseException as exc:
                        fut.set_exception(exc)
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc if isinstance(exc, FunctionAIError) else NoServer(f"cannot open an MCP session on {self.url}: {exc}"))
            else:
                raise

    def _run(self, fn: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
        if self._queue is None or self._owner.done():
            raise SessionClosed(f"the MCP session on {self.url} is closed")
        fut: Future[Any] = Future()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (fn, fut))
        return fut.result(timeout=self.timeout + 30)

    # -- the API ----------------------------------------------------------------

    def list_tools(self) -> list[dict[str, Any]]:
        """The server's tools: name, description, input_schema."""

        async def go(session: Any) -> Any:
            return await session.list_tools()

        return [{"name": t["name"], "description": t.get("description") or "", "input_schema": t.get("inputSchema")} for t in self._run(go)]

    def call(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        """Call ``tool``: its structured content if it has one, else its text
        (parsed as JSON when it is JSON). Raises ToolError for an error result."""

        async def go(session: Any) -> Any:
            return await session.call_tool(tool, arguments or {})

        result = self._run(go)
        text = "\n".join(str(c.get("text", "")) for c in result.get("content") or [] if c.get("type") == "text")
        if result.get("isError"):
            raise ToolError(f"{self.server}/{tool}: {text or 'the tool failed'}", tool=tool, server=self.server)
        if result.get("structuredContent") is not None:
            sc = result["structuredContent"]
            return sc["result"] if isinstance(sc, dict) and set(sc) == {"result"} else sc
        try:
            return json.loads(text)
        except ValueError:
            return text

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI tool-calling format (``tools=`` of a chat completion)."""
        return [
            {"type": "function", "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"] or {"type": "object", "properties": {}}}}
            for t in self.list_tools()
        ]

    def run_tool_call(self, tool_call: dict[str, Any]) -> dict[str, Any]:
        """Run one ``tool_calls`` entry of a model's message; the ``tool``
        message to append to the conversation (errors are reported to the
        model as content, not raised)."""
        fn = tool_call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
            content = json.dumps(self.call(str(fn.get("name")), args), default=str)
        except (ToolError, ValueError) as exc:
            content = json.dumps({"error": str(exc)})
        return {"role": "tool", "tool_call_id": tool_call.get("id"), "content": content}

    def close(self) -> None:
        """End the MCP session (the server stops its sandbox)."""
        if self._queue is not None and not self._owner.done():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _STOP)
            try:
                self._owner.result(timeout=30)
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Toolbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Toolbox {self.server!r} at {self.url}>"


_BOXES: dict[str, Toolbox] = {}
_BOXES_LOCK = threading.Lock()


def _box(server: str) -> Toolbox:
    with _BOXES_LOCK:
        box = _BOXES.get(server)
        if box is None or box._owner.done():
            box = _BOXES[server] = Toolbox(server)
        return box


def call(server: str, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """Call a hosted tool (one MCP session per server and process, kept open)."""
    return _box(server).call(tool, arguments)


def openai_tools(server: str) -> list[dict[str, Any]]:
    """A hosted server's tools in the OpenAI tool-calling format."""
    return _box(server).openai_tools()
