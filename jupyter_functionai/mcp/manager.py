"""The MCP tool service of one :class:`~jupyter_functionai.runtime.Runtime`
(``rt.mcp``): hosted MCP servers, their tools and MCP sessions.

Two kinds of hosted server, both behind one endpoint per server
(``/functionai/mcp/{server}/mcp``, see ``server/mcp.py``):

* **function-backed** (``kind="functions"``): notebook functions published as
  tools (``@jupyter_functionai.tool``, ``%%tool``). The server is one sandbox
  function, ``mcp-<server>``, whose module holds every tool
  (:mod:`.tool_module`). An MCP session is one session of that function, so
  the tool calls of one MCP session reach one instance (affinity) and share
  its ``ctx.session.state``; other MCP sessions never reach it. The MCP
  session lives in the store: it survives a restart of the Jupyter server
  (its sandbox session resumes with its state).
* **stdio** (``kind="stdio"``): a third-party MCP server command. Each MCP
  session starts the command in its own sandbox session (the function
  ``mcp-<server>`` runs :mod:`.stdio_handler`, a relay) and messages pass
  through untouched (:mod:`.bridge`). A server that exits ends its own
  session only: its requests in flight fail with an MCP error and the session
  id then answers 404, so the client initialises a new session, with a new
  process. A stdio session ends after ``idle_ttl_s`` without requests and
  when the Jupyter server stops.

Each ``tools/call`` is counted per (server, tool), in memory (from this
process's start; not persisted): calls, errors (an ``isError`` result or a
JSON-RPC error, a cancelled call included), and the durations of the last
:data:`LATENCY_WINDOW` calls (request in to answer out, as the endpoint sees
it) for p50/p95. :meth:`McpManager.describe` adds them to each tool.

Everything here is asyncio and the store; nothing imports tornado.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import Conflict, FunctionAIError, InvalidArgument, NotFound, SessionClosed, UserError
from ..sandbox.disk import open_in_session
from ..spec import MAX_LIFETIME_CAP_S, FunctionSpec
from . import catalog as _catalog
from . import stdio_handler, tool_module
from .bridge import StdioBridge
from .protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LATEST_VERSION,
    METHOD_NOT_FOUND,
    REQUEST_CANCELLED,
    SERVER_ERROR,
    McpError,
    error,
    id_key,
    negotiate,
    notification,
    result,
)

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

log = logging.getLogger("jupyter_functionai.mcp")

__all__ = ["KEY_SCOPE_PREFIX", "LATENCY_WINDOW", "McpManager", "McpSession", "ToolStats", "endpoint_path"]

SERVER_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,58}")
TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FUNCTION_PREFIX = "mcp-"
KEY_SCOPE_PREFIX = "mcp:"  # a key for the MCP server S has the scope "mcp:S"
ACTIVE, CLOSED, EXPIRED = "active", "closed", "expired"
STDIO_IDLE_TTL_S = 600.0
STDIO_CALL_TIMEOUT_S = 120.0  # the relay's own operations (start, poll, stop)
INIT_TIMEOUT_S = 60.0
OUTBOX_MAX = 256
REAP_INTERVAL_S = 1.0
LATENCY_WINDOW = 1000  # the durations kept per tool, for p50/p95
MAX_TRACKED_TOOLS = 256  # per server: calls to further (unknown) names are not counted
_SPEC_KEYS = frozenset(
    {"cpu", "gpu", "memory", "memory_mb", "disk", "disk_mb", "timeout", "timeout_s", "idle_ttl", "idle_ttl_s", "max_lifetime", "max_lifetime_s",
     "min_instances", "max_instances", "target_concurrency", "cooldown", "scale_cooldown_s", "network", "env", "limits", "concurrency", "isolation_required", "description"}
)

Notify = Callable[[dict[str, Any]], Awaitable[None]]


#: The principal of the runtime sessions behind MCP sessions: only this service
#: reaches them (the MCP session's own principal is checked here); a function
#: key for the server's function gets 404 for them on the gateway.
RUNTIME_PRINCIPAL = "mcp"


def endpoint_path(server: str) -> str:
    """The endpoint of ``server``, relative to the Jupyter server's base URL."""
    return f"/functionai/mcp/{server}/mcp"


def session_not_found() -> McpError:
    return McpError(INVALID_REQUEST, "Session not found: it ended or never existed; initialize a new session", http_status=404)


@dataclass
class _InFlight:
    id: Any
    progress_token: Any
    notify: Notify | None
    task: asyncio.Task[dict[str, Any]] | None = None


@dataclass
class McpSession:
    """One MCP client session (its ``Mcp-Session-Id`` is ``id``)."""

    id: str
    server: str
    kind: str
    function: str
    runtime_session: str
    protocol_version: str
    created_at: float
    last_used: float
    idle_ttl: float
    principal: str = ""  # who opened it (a key, a Jupyter user): nobody else may use it
    client_info: dict[str, Any] = field(default_factory=dict)
    status: str = ACTIVE
    close_reason: str | None = None
    inflight: dict[str, _InFlight] = field(default_factory=dict)
    listener: asyncio.Queue[dict[str, Any] | None] | None = None
    outbox: list[dict[str, Any]] = field(default_factory=list)
    bridge: StdioBridge | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "server": self.server,
            "kind": self.kind,
            "function": self.function,
            "runtime_session": self.runtime_session,
            "protocol_version": self.protocol_version,
            "status": self.status,
            "created_at": self.created_at,
            "last_used_at": self.last_used,
            "client_info": self.client_info,
            "principal": self.principal,
            "in_flight": len(self.inflight),
            "listening": self.listener is not None,
        }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


@dataclass
class ToolStats:
    """The calls of one tool of one server (see the module docstring)."""

    calls: int = 0
    errors: int = 0
    durations_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    last_called_at: float | None = None
    last_error: str | None = None

    def record(self, ms: float, failure: str | None) -> None:
        self.calls += 1
        self.durations_ms.append(ms)
        self.last_called_at = time.time()
        if failure is not None:
            self.errors += 1
            self.last_error = failure[:500]

    def describe(self) -> dict[str, Any]:
        window = list(self.durations_ms)
        return {
            "calls": self.calls,
            "errors": self.errors,
            "p50_ms": round(percentile(window, 50), 3) if window else None,
            "p95_ms": round(percentile(window, 95), 3) if window else None,
            "last_called_at": self.last_called_at,
            "last_error": self.last_error,
        }


def _failure(answer: dict[str, Any] | None) -> str | None:
    """Why a tools/call answer is an error (None if it is not)."""
    if answer is None:
        return "the request did not complete"
    if "error" in answer:
        err = answer["error"] if isinstance(answer["error"], dict) else {}
        return f"JSON-RPC error {err.get('code')}: {err.get('message', '')}"
    res = answer.get("result")
    if isinstance(res, dict) and res.get("isError"):
        texts = [c.get("text", "") for c in res.get("content") or [] if isinstance(c, dict) and c.get("type") == "text"]
        return "\n".join(texts).strip().split("\n\n")[0] or "isError"
    return None


class McpManager:
    """See the module docstring."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.store = runtime.store
        self._sessions: dict[str, McpSession] = {}
        self._servers: dict[str, dict[str, Any]] = {}  # cache of store rows
        self._tools: dict[str, dict[str, dict[str, Any]]] = {}  # server -> tool -> row (+ validator)
        self._locks: dict[str, asyncio.Lock] = {}
        self._touched: dict[str, float] = {}
        self._stats: dict[str, dict[str, ToolStats]] = {}  # server -> tool -> its calls
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(_catalog.envs_dir(self.rt.state_dir), mode=0o755, exist_ok=True)
        # a stdio session's server process died with the runtime that held it
        rows = await asyncio.to_thread(self.store.list_mcp_sessions, None, ACTIVE, None)
        now = time.time()
        for r in rows:
            if r["kind"] == "stdio":
                await self._write(self.store.update_mcp_session, r["id"], status=CLOSED, closed_at=now, close_reason="the server restarted")
                self._spawn(self._close_runtime_session(r["runtime_session"], "MCP session ended: the server restarted"))
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop(), name="fai-mcp-reaper")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.wait({self._reaper}, timeout=5)
        for sess in list(self._sessions.values()):
            if sess.listener is not None:
                sess.listener.put_nowait(None)
            if sess.kind == "stdio":
                await self._end(sess, CLOSED, "the server stopped")
        for t in list(self._background):
            t.cancel()
        await self._flush_touched()

    def _write(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Awaitable[Any]:
        """A store write through the store's one write path (returns once committed)."""
        return self.store.writer.write(fn, *args, **kw)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _lock(self, server: str) -> asyncio.Lock:
        return self._locks.setdefault(server, asyncio.Lock())

    # -- the registry ------------------------------------------------------------------

    async def _server(self, name: str) -> dict[str, Any]:
        row = self._servers.get(name)
        if row is None:
            row = await asyncio.to_thread(self.store.get_mcp_server, name)
            self._servers[name] = row
        return row

    async def _server_tools(self, server: str) -> dict[str, dict[str, Any]]:
        tools = self._tools.get(server)
        if tools is None:
            rows = await asyncio.to_thread(self.store.list_mcp_tools, server)
            tools = self._tools[server] = {r["name"]: r for r in rows}
        return tools

    def _public_tools(self, row: dict[str, Any], tools: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        if row["kind"] == "stdio":
            return list(row["config"].get("tools") or [])
        out = []
        for t in tools.values():
            d: dict[str, Any] = {"name": t["name"], "description": t["description"], "inputSchema": t["input_schema"]}
            if t["output_schema"] is not None:
                d["outputSchema"] = t["output_schema"]
            out.append(d)
        return out

    async def describe(self, name: str) -> dict[str, Any]:
        row = await self._server(name)
        tools = await self._server_tools(name) if row["kind"] == "functions" else {}
        cfg = row["config"]
        live = [s for s in self._sessions.values() if s.server == name and s.status == ACTIVE]
        stats = self._stats.get(name, {})
        idle = ToolStats().describe()
        listed = [{**t, **(stats[t["name"]].describe() if t.get("name") in stats else idle)} for t in self._public_tools(row, tools)]
        return {
            "name": name,
            "kind": row["kind"],
            "function": row["function"],
            "path": endpoint_path(name),
            "tools": listed,
            "command": cfg.get("command"),
            "catalog": cfg.get("catalog"),
            "env": cfg.get("env") or {},
            "secrets": sorted(row["secrets"]),
            "idle_ttl_s": cfg.get("idle_ttl_s"),
            "network": cfg.get("network"),
            "spec": cfg.get("spec") or {},
            "live_sessions": len(live),
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    async def servers(self) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self.store.list_mcp_servers)
        for r in rows:
            self._servers[r["name"]] = r
        return [await self.describe(r["name"]) for r in rows]

    async def _check_function_free(self, server: str) -> None:
        """A new server's backing function must not replace a function deployed otherwise."""
        try:
            await asyncio.to_thread(self.store.get_function, FUNCTION_PREFIX + server)
        except NotFound:
            return
        raise Conflict(f"a function named {FUNCTION_PREFIX + server!r} exists and is not an MCP server's: pick another server name")

    def _check_name(self, name: Any) -> str:
        if not isinstance(name, str) or not SERVER_NAME_RE.fullmatch(name):
            raise InvalidArgument(f"MCP server name {name!r} is not valid: 1-59 characters from A-Z a-z 0-9 _ -, starting with a letter")
        return name

    async def create_function_server(self, name: str, spec: dict[str, Any] | None = None, description: str = "") -> dict[str, Any]:
        """An empty function-backed server (publishing a tool creates one too)."""
        self._check_name(name)
        spec = _check_spec(spec or {})
        async with self._lock(name):
            with contextlib.suppress(NotFound):
                await self._server(name)
                raise Conflict(f"MCP server {name!r} already exists", name=name)
            await self._check_function_free(name)
            await self._deploy_tools(name, {}, spec, description)
            await self._write(self.store.create_mcp_server, name, "functions", FUNCTION_PREFIX + name, {"spec": spec, "description": description}, {})
            self._servers.pop(name, None)
        return await self.describe(name)

    async def publish_tool(self, server: str, tool: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create or replace the tool ``tool["name"]`` of the function-backed
        server ``server`` (created if missing) and deploy the server's new
        version; its live sessions take it at their next call."""
        self._check_name(server)
        tool = _check_tool(tool)
        extra = _check_spec(spec or {})
        async with self._lock(server):
            try:
                row: dict[str, Any] | None = await self._server(server)
            except NotFound:
                row = None
            if row is not None and row["kind"] != "functions":
                raise Conflict(f"MCP server {server!r} hosts a command ({row['kind']}): tools are published to function-backed servers only")
            if row is None:
                await self._check_function_free(server)
            cfg: dict[str, Any] = dict(row["config"]) if row else {"spec": {}, "description": ""}
            merged = {**(cfg.get("spec") or {}), **extra}
            tools = dict(await self._server_tools(server)) if row else {}
            tools[tool["name"]] = tool
            await self._deploy_tools(server, tools, merged, cfg.get("description") or "")
            if row is None:
                await self._write(self.store.create_mcp_server, server, "functions", FUNCTION_PREFIX + server, {"spec": merged, "description": ""}, {})
            elif merged != cfg.get("spec"):
                cfg["spec"] = merged
                await self._write(self.store.update_mcp_server, server, cfg)
            await self._write(self.store.put_mcp_tool, server, tool)
            self._servers.pop(server, None)
            self._tools.pop(server, None)
        await self._tools_changed(server)
        return await self.describe(server)

    async def remove_tool(self, server: str, name: str) -> dict[str, Any]:
        async with self._lock(server):
            row = await self._server(server)
            tools = dict(await self._server_tools(server))
            if row["kind"] != "functions" or name not in tools:
                raise NotFound(f"MCP server {server!r} has no tool {name!r}", server=server, tool=name)
            del tools[name]
            await self._deploy_tools(server, tools, row["config"].get("spec") or {}, row["config"].get("description") or "")
            await self._write(self.store.delete_mcp_tool, server, name)
            self._tools.pop(server, None)
            self._stats.get(server, {}).pop(name, None)
        await self._tools_changed(server)
        return await self.describe(server)

    async def _deploy_tools(self, server: str, tools: dict[str, dict[str, Any]], spec: dict[str, Any], description: str) -> None:
        source = Path(tool_module.__file__).read_text(encoding="utf-8")
        lines = [source.rstrip("\n"), "", "", "# -- the tools of this server (generated) --"]
        for t in sorted(tools.values(), key=lambda t: t["name"]):
            lines.append(f"_register({t['name']!r}, {t['code']!r}, {t['handler']!r}, {t.get('ctx_param')!r})")
        fields = dict(spec)
        fields.setdefault("description", description or f"MCP server {server!r}: tools {', '.join(sorted(tools)) or '(none)'}")
        fspec = FunctionSpec.from_code(FUNCTION_PREFIX + server, "\n".join(lines) + "\n", **fields)
        await self.rt.deploy(fspec)  # a tool whose code fails to load is refused here (422, its traceback)

    async def _tools_changed(self, server: str) -> None:
        """Live sessions take the new version at their next call (state kept), and
        clients listening on the session's GET stream are told."""
        for sess in list(self._sessions.values()):
            if sess.server == server and sess.status == ACTIVE:
                with contextlib.suppress(FunctionAIError):
                    await self.rt.pause_session(sess.runtime_session, "the MCP server's tools changed")
                await self._deliver(sess, notification("notifications/tools/list_changed"))

    async def add_stdio(
        self,
        name: str,
        command: list[str] | None = None,
        *,
        catalog: str | None = None,
        env: dict[str, str] | None = None,
        secrets_env: dict[str, str] | None = None,
        idle_ttl_s: float | None = None,
        network: str = "none",
        memory: str | int | None = None,
        probe: bool = True,
    ) -> dict[str, Any]:
        """Host a stdio MCP server: ``command`` (argv), or the catalog entry
        ``catalog`` (installed on demand; ``command`` then adds arguments). With
        ``probe`` one session is started now, to check that the command runs
        and speaks MCP, and to learn its tools."""
        self._check_name(name)
        env = _check_env(env or {}, "env")
        secrets_env = _check_env(secrets_env or {}, "secrets")
        if command is not None and (not isinstance(command, list) or not all(isinstance(a, str) and a for a in command)):
            raise InvalidArgument("command must be a list of non-empty strings (the server's argv)")
        if idle_ttl_s is not None and (isinstance(idle_ttl_s, bool) or not isinstance(idle_ttl_s, (int, float)) or not 1 <= idle_ttl_s <= MAX_LIFETIME_CAP_S):
            raise InvalidArgument(f"idle_ttl_s must be a number of seconds in [1, {MAX_LIFETIME_CAP_S:g}], not {idle_ttl_s!r}")
        with contextlib.suppress(NotFound):
            await self._server(name)
            raise Conflict(f"MCP server {name!r} already exists (remove it first)", name=name)
        if catalog is not None:
            entry = _catalog.CATALOG.get(catalog) if isinstance(catalog, str) else None
            if entry is None:
                raise InvalidArgument(f"no catalog server {catalog!r} (the catalog has: {', '.join(sorted(_catalog.CATALOG))})")
            argv = [await _catalog.ensure_env(self.rt.state_dir, entry), *entry.args, *(command or [])]
        else:
            if not command:
                raise InvalidArgument("give the server's command (an argv) or a catalog name")
            argv = [_resolve_command(command[0]), *command[1:]]
        config: dict[str, Any] = {
            "command": argv,
            "catalog": catalog,
            "env": env,
            "idle_ttl_s": float(idle_ttl_s if idle_ttl_s is not None else STDIO_IDLE_TTL_S),
            "network": network,
            "memory": memory,
            "tools": [],
        }
        async with self._lock(name):
            await self._check_function_free(name)
            spec = self._stdio_spec(name, config)
            await self.rt.deploy(spec)
            try:
                await self._write(self.store.create_mcp_server, name, "stdio", FUNCTION_PREFIX + name, config, secrets_env)
            except BaseException:
                with contextlib.suppress(FunctionAIError):
                    await self.rt.delete(FUNCTION_PREFIX + name)
                raise
            self._servers.pop(name, None)
        if probe:
            try:
                await self._probe(name)
            except BaseException:
                with contextlib.suppress(FunctionAIError):
                    await self.remove(name)
                raise
        return await self.describe(name)

    def _stdio_spec(self, name: str, config: dict[str, Any]) -> FunctionSpec:
        fields: dict[str, Any] = {
            "timeout": STDIO_CALL_TIMEOUT_S,
            # the MCP layer ends idle sessions itself (the relay's calls are rare:
            # the runtime must not pause an instance whose process is in use)
            "idle_ttl": MAX_LIFETIME_CAP_S,
            "max_lifetime": MAX_LIFETIME_CAP_S,
            "network": config.get("network") or "none",
            "description": f"hosted stdio MCP server {name!r}: {' '.join(config['command'])[:200]}",
        }
        if config.get("memory") is not None:
            fields["memory"] = config["memory"]
        return FunctionSpec.from_code(FUNCTION_PREFIX + name, Path(stdio_handler.__file__).read_text(encoding="utf-8"), **fields)

    async def _probe(self, name: str) -> None:
        init = {
            "jsonrpc": "2.0",
            "id": "functionai-probe",
            "method": "initialize",
            "params": {"protocolVersion": LATEST_VERSION, "capabilities": {}, "clientInfo": {"name": "functionai-probe", "version": __version__}},
        }
        sess, resp = await self.initialize(name, init)
        if sess is None:
            err = resp.get("error") or {}
            raise InvalidArgument(f"the MCP server {name!r} did not start: {err.get('message', resp)}")
        try:
            await self.client_notification(sess, notification("notifications/initialized"))
            listed = await self.request(sess, {"jsonrpc": "2.0", "id": "functionai-probe-tools", "method": "tools/list"}, None)
            if "error" in listed:
                raise InvalidArgument(f"the MCP server {name!r} answered tools/list with an error: {listed['error'].get('message')}")
        finally:
            await self._end(sess, CLOSED, "probe done")

    async def _remember_tools(self, server: str, listed: dict[str, Any]) -> None:
        """Keep a stdio server's tool list (for ``mcp ls``) when a session lists them."""
        tools = listed.get("tools")
        if not isinstance(tools, list) or listed.get("nextCursor"):
            return
        row = await self._server(server)
        if row["config"].get("tools") == tools:
            return
        cfg = {**row["config"], "tools": tools}
        with contextlib.suppress(NotFound):
            await self._write(self.store.update_mcp_server, server, cfg)
        self._servers.pop(server, None)

    async def remove(self, name: str) -> None:
        """End the server's sessions, delete its function and its registry rows."""
        row = await self._server(name)
        async with self._lock(name):
            for sess in [s for s in self._sessions.values() if s.server == name]:
                await self._end(sess, CLOSED, "the MCP server was removed")
            for r in await asyncio.to_thread(self.store.list_mcp_sessions, name, ACTIVE, None):
                await self._write(self.store.update_mcp_session, r["id"], status=CLOSED, closed_at=time.time(), close_reason="the MCP server was removed")
            with contextlib.suppress(NotFound):
                await self.rt.delete(row["function"])
            await self._write(self.store.delete_mcp_server, name)
            self._servers.pop(name, None)
            self._tools.pop(name, None)
            self._stats.pop(name, None)

    async def create_key(self, server: str, note: str = "") -> dict[str, Any]:
        """A key valid for this MCP server's endpoint only (scope ``mcp:<server>``)."""
        await self._server(server)
        scope = KEY_SCOPE_PREFIX + server
        key = await self._write(self.store.create_key, scope, note)
        return {"key": key, "id": key.split("_", 2)[1], "function": scope, "note": note}

    async def sessions(self, server: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        await self._flush_touched()
        rows = await asyncio.to_thread(self.store.list_mcp_sessions, server, status)
        out = []
        for r in rows:
            live = self._sessions.get(r["id"])
            out.append(live.describe() if live is not None else {**r, "in_flight": 0, "listening": False})
        return out

    # -- sessions --------------------------------------------------------------------

    async def initialize(self, server: str, msg: dict[str, Any], principal: str = "") -> tuple[McpSession | None, dict[str, Any]]:
        """Start a session with an ``initialize`` request: (the session, the
        response); (None, an error response) when it could not start.
        ``principal`` names who asks (a key, a user): only they may use it."""
        mid = msg.get("id")
        row = await self._server(server)
        params = msg.get("params") or {}
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            return None, error(mid, INVALID_PARAMS, "initialize needs params.protocolVersion (a string)")
        now = time.time()
        raw_info = params.get("clientInfo")
        info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
        cfg = row["config"]
        sess = McpSession(
            id=secrets.token_hex(16),
            server=server,
            kind=row["kind"],
            function=row["function"],
            runtime_session=FUNCTION_PREFIX + secrets.token_hex(10),
            protocol_version=negotiate(requested),
            created_at=now,
            last_used=now,
            idle_ttl=float(cfg.get("idle_ttl_s") or (STDIO_IDLE_TTL_S if row["kind"] == "stdio" else MAX_LIFETIME_CAP_S)),
            principal=principal,
            client_info={k: info[k] for k in ("name", "version", "title") if isinstance(info.get(k), str)},
        )
        if sess.kind == "functions":
            answer = result(
                mid,
                {
                    "protocolVersion": sess.protocol_version,
                    "capabilities": {"tools": {"listChanged": True}},
                    "serverInfo": {"name": server, "title": f"functionai MCP server {server}", "version": __version__},
                    **({"instructions": cfg["description"]} if cfg.get("description") else {}),
                },
            )
        else:
            self._sessions[sess.id] = sess
            try:
                await self._start_stdio(sess, row)
                assert sess.bridge is not None
                answer = await sess.bridge.request(msg, timeout=INIT_TIMEOUT_S)
            except (McpError, FunctionAIError, asyncio.TimeoutError) as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    err = McpError(SERVER_ERROR, f"the MCP server {server!r} did not answer initialize within {INIT_TIMEOUT_S:g} s")
                elif isinstance(exc, McpError):
                    err = exc
                else:
                    err = McpError(SERVER_ERROR, f"the MCP server {server!r} could not be started: {_message(exc)}")
                await self._end(sess, CLOSED, "initialize failed")
                return None, err.to_message(mid)
            if "error" in answer:
                await self._end(sess, CLOSED, "initialize failed")
                return None, answer
            version = (answer.get("result") or {}).get("protocolVersion")
            if isinstance(version, str):
                sess.protocol_version = version
        await self._write(
            self.store.create_mcp_session,
            {
                "id": sess.id,
                "server": server,
                "kind": sess.kind,
                "runtime_session": sess.runtime_session,
                "protocol_version": sess.protocol_version,
                "client_info": sess.client_info,
                "principal": principal,
                "status": ACTIVE,
                "created_at": now,
                "last_used_at": now,
            },
        )
        self._sessions[sess.id] = sess
        return sess, answer

    async def session(self, server: str, session_id: str, principal: str = "") -> McpSession:
        """The active session ``session_id`` of ``server`` opened by ``principal``;
        McpError 404 otherwise (another's session is not revealed). A
        function-backed session is loaded from the store after a restart."""
        sess = self._sessions.get(session_id)
        if sess is None:
            if len(session_id) > 64:
                raise session_not_found()
            try:
                row = await asyncio.to_thread(self.store.get_mcp_session, session_id)
            except NotFound:
                raise session_not_found() from None
            if row["status"] != ACTIVE or row["kind"] != "functions" or row["server"] != server:
                raise session_not_found()
            try:
                srv = await self._server(server)
            except NotFound:
                raise session_not_found() from None
            ttl = float(srv["config"].get("idle_ttl_s") or MAX_LIFETIME_CAP_S)
            if time.time() - row["last_used_at"] > ttl:
                await self._write(self.store.update_mcp_session, session_id, status=EXPIRED, closed_at=time.time(), close_reason="idle")
                raise session_not_found()
            sess = self._sessions.setdefault(
                session_id,
                McpSession(
                    id=row["id"], server=row["server"], kind=row["kind"], function=srv["function"], runtime_session=row["runtime_session"],
                    protocol_version=row["protocol_version"], created_at=row["created_at"], last_used=row["last_used_at"], idle_ttl=ttl,
                    principal=row["principal"], client_info=row["client_info"] or {},
                ),
            )
        if sess.server != server or sess.status != ACTIVE or sess.principal != principal:
            raise session_not_found()
        return sess

    def wants_stream(self, sess: McpSession, msg: dict[str, Any]) -> bool:
        """Answer this request as server-sent events (notifications may come first)?"""
        return sess.kind == "stdio" or _progress_token(msg) is not None

    async def request(self, sess: McpSession, msg: dict[str, Any], notify: Notify | None) -> dict[str, Any]:
        """A client request of an initialised session; its response message
        (errors included). ``notify`` sends a message on the request's stream.
        A ``tools/call`` is counted (see :meth:`tool_stats`)."""
        params = msg.get("params")
        tool = params.get("name") if msg.get("method") == "tools/call" and isinstance(params, dict) else None
        if not isinstance(tool, str):
            return await self._request(sess, msg, notify)
        started = time.perf_counter()
        answer: dict[str, Any] | None = None
        try:
            answer = await self._request(sess, msg, notify)
            return answer
        finally:
            self._record(sess.server, tool, (time.perf_counter() - started) * 1000.0, _failure(answer))

    def _record(self, server: str, tool: str, ms: float, failure: str | None) -> None:
        per_server = self._stats.setdefault(server, {})
        stats = per_server.get(tool)
        if stats is None:
            if len(per_server) >= MAX_TRACKED_TOOLS or len(tool) > 128:
                return
            stats = per_server[tool] = ToolStats()
        stats.record(ms, failure)

    def tool_stats(self, server: str) -> dict[str, dict[str, Any]]:
        """The calls of each tool of ``server`` since this process started:
        ``calls``, ``errors``, ``p50_ms``, ``p95_ms`` (over the last
        :data:`LATENCY_WINDOW` calls), ``last_called_at``, ``last_error``."""
        return {name: st.describe() for name, st in sorted(self._stats.get(server, {}).items())}

    async def _request(self, sess: McpSession, msg: dict[str, Any], notify: Notify | None) -> dict[str, Any]:
        self._touch(sess)
        mid = msg["id"]
        key = id_key(mid)
        flight = _InFlight(mid, _progress_token(msg), notify)
        sess.inflight[key] = flight
        try:
            if sess.kind == "stdio":
                if sess.bridge is None:
                    return error(mid, SERVER_ERROR, "this session's MCP server is not running")
                try:
                    answer = await sess.bridge.request(msg)
                except McpError as exc:
                    return exc.to_message(mid)
                if msg.get("method") == "tools/list" and "result" in answer:
                    self._spawn(self._remember_tools(sess.server, answer["result"]))
                return answer
            task = flight.task = asyncio.ensure_future(self._dispatch(sess, msg, notify, flight.progress_token))
            await asyncio.wait({task})
            if task.cancelled():
                return error(mid, REQUEST_CANCELLED, "the request was cancelled")
            failure = task.exception()
            if isinstance(failure, McpError):
                return failure.to_message(mid)
            if failure is not None:
                log.error("MCP request %s of session %s failed", msg.get("method"), sess.id, exc_info=failure)
                return error(mid, INTERNAL_ERROR, "internal error (see the server log)")
            return result(mid, task.result())
        finally:
            if sess.inflight.get(key) is flight:
                del sess.inflight[key]
            self._touch(sess)

    async def client_notification(self, sess: McpSession, msg: dict[str, Any]) -> None:
        self._touch(sess)
        method = msg.get("method")
        params = msg.get("params") or {}
        if method == "notifications/cancelled":
            key = id_key(params.get("requestId"))
            flight = sess.inflight.get(key)
            if sess.kind == "stdio" and sess.bridge is not None:
                with contextlib.suppress(McpError):
                    await sess.bridge.send(msg)
                sess.bridge.fail(key, McpError(REQUEST_CANCELLED, "the request was cancelled"))
            elif flight is not None and flight.task is not None:
                flight.task.cancel()  # the call's sandbox is stopped; the session resumes at its next call
            return
        if sess.kind == "stdio" and sess.bridge is not None:
            with contextlib.suppress(McpError):
                await sess.bridge.send(msg)

    async def client_response(self, sess: McpSession, msg: dict[str, Any]) -> None:
        """The client's answer to a request the server sent it."""
        self._touch(sess)
        if sess.kind == "stdio" and sess.bridge is not None:
            with contextlib.suppress(McpError):
                await sess.bridge.send(msg)

    def listen(self, sess: McpSession) -> asyncio.Queue[dict[str, Any] | None]:
        """The queue of a GET stream: what the server sends outside of requests.
        One stream per session: a new one replaces the old."""
        if sess.listener is not None:
            sess.listener.put_nowait(None)
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for m in sess.outbox:
            q.put_nowait(m)
        sess.outbox.clear()
        sess.listener = q
        if self._closed or sess.status != ACTIVE:
            q.put_nowait(None)
        return q

    def unlisten(self, sess: McpSession, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        if sess.listener is q:
            sess.listener = None

    async def end_session(self, session_id: str, reason: str = "ended by the server's owner") -> dict[str, Any]:
        """End any MCP session (the REST API: the Jupyter user owns the server,
        whoever opened the session); its client's next request gets 404.
        Ending an ended session changes nothing. NotFound for an unknown id."""
        sess = self._sessions.get(session_id)
        if sess is None:
            row = await asyncio.to_thread(self.store.get_mcp_session, session_id)
            if row["status"] == ACTIVE:
                try:  # a function-backed session not used since a restart: load it, then end it
                    sess = await self.session(row["server"], session_id, row["principal"])
                except McpError:  # it expired meanwhile (now recorded) or its server is gone
                    sess = None
        if sess is not None:
            await self._end(sess, CLOSED, reason)
        return await asyncio.to_thread(self.store.get_mcp_session, session_id)

    async def terminate(self, server: str, session_id: str, principal: str = "") -> None:
        """DELETE: the client ends its session."""
        sess = await self.session(server, session_id, principal)
        await self._end(sess, CLOSED, "terminated by the client")

    async def _end(self, sess: McpSession, status: str, reason: str) -> None:
        if sess.status != ACTIVE:
            return
        sess.status, sess.close_reason = status, reason
        if sess.listener is not None:
            sess.listener.put_nowait(None)
        for flight in list(sess.inflight.values()):
            if flight.task is not None:
                flight.task.cancel()
        if sess.bridge is not None:
            await sess.bridge.close()
        await self._close_runtime_session(sess.runtime_session, f"MCP session {reason}")
        self._touched.pop(sess.id, None)
        await self._write(self.store.update_mcp_session, sess.id, status=status, closed_at=time.time(), close_reason=reason)
        self._sessions.pop(sess.id, None)

    async def _close_runtime_session(self, runtime_session: str, reason: str) -> None:
        with contextlib.suppress(FunctionAIError):
            await self.rt.close_session(runtime_session, reason=reason)

    def _touch(self, sess: McpSession) -> None:
        sess.last_used = time.time()
        self._touched[sess.id] = sess.last_used  # written by the reaper, once a second

    async def _flush_touched(self) -> None:
        touched, self._touched = self._touched, {}
        if touched:
            await self._write(self.store.touch_mcp_sessions, touched)

    async def _reap_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self._flush_touched()
                now = time.time()
                for sess in list(self._sessions.values()):
                    if sess.status == ACTIVE and not sess.inflight and now - sess.last_used > sess.idle_ttl:
                        await self._end(sess, EXPIRED, "idle")
            except Exception:
                log.exception("the MCP session reaper failed")

    async def _deliver(self, sess: McpSession, msg: dict[str, Any]) -> None:
        """A message from the server outside of a response: the GET stream if one
        is open, else the stream of the latest request in flight, else kept for
        the next GET stream."""
        if sess.listener is not None:
            sess.listener.put_nowait(msg)
            return
        for flight in reversed(list(sess.inflight.values())):
            if flight.notify is not None:
                await flight.notify(msg)
                return
        if msg.get("method") == "notifications/tools/list_changed" and msg in sess.outbox:
            return
        sess.outbox.append(msg)
        del sess.outbox[:-OUTBOX_MAX]

    # -- function-backed servers ------------------------------------------------------

    async def _dispatch(self, sess: McpSession, msg: dict[str, Any], notify: Notify | None, token: Any) -> dict[str, Any]:
        method = msg["method"]
        params = msg.get("params") or {}
        if method == "ping":
            return {}
        if method == "tools/list":
            row = await self._server(sess.server)
            return {"tools": self._public_tools(row, await self._server_tools(sess.server))}
        if method == "tools/call":
            return await self._call_tool(sess, params, notify, token)
        if method == "initialize":
            raise McpError(INVALID_REQUEST, "this session is already initialised")
        if method == "logging/setLevel":
            return {}
        if method in ("resources/list", "resources/templates/list", "prompts/list"):
            key = {"resources/list": "resources", "resources/templates/list": "resourceTemplates", "prompts/list": "prompts"}[method]
            return {key: []}
        raise McpError(METHOD_NOT_FOUND, f"Method not found: {method!r} (a function-backed server has tools only)")

    async def _call_tool(self, sess: McpSession, params: dict[str, Any], notify: Notify | None, token: Any) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            raise McpError(INVALID_PARAMS, "tools/call needs params.name (a string)")
        tools = await self._server_tools(sess.server)
        tool = tools.get(name)
        if tool is None:
            raise McpError(INVALID_PARAMS, f"Unknown tool: {name!r} (server {sess.server!r} has: {', '.join(sorted(tools)) or 'no tools'})")
        args = params.get("arguments")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise McpError(INVALID_PARAMS, "params.arguments must be an object")
        problems = _validate(tool, args)
        if problems:
            # a tool execution error (MCP 2025-11-25): the model sees what to fix
            return _tool_error(f"Invalid arguments for tool {name!r}: " + "; ".join(problems))
        on_progress = None
        if token is not None and notify is not None:
            send = notify

            async def on_progress(fraction: float, message: str) -> None:
                p: dict[str, Any] = {"progressToken": token, "progress": fraction, "total": 1.0}
                if message:
                    p["message"] = message
                with contextlib.suppress(Exception):
                    await send(notification("notifications/progress", p))

        try:
            r = await self.rt.invoke(sess.function, {"tool": name, "arguments": args}, session=sess.runtime_session, on_progress=on_progress, principal=RUNTIME_PRINCIPAL)
        except SessionClosed:
            self._spawn(self._end(sess, CLOSED, "its sandbox session was closed"))
            raise McpError(INVALID_REQUEST, "this MCP session has ended (its sandbox session was closed): initialize a new session") from None
        except UserError as exc:
            tb = exc.details.get("traceback")
            return _tool_error(exc.message, str(tb) if tb else None)
        except FunctionAIError as exc:
            return _tool_error(f"the tool call failed ({exc.kind}): {exc.message}")
        return _tool_result(r.value, tool)

    # -- stdio servers ----------------------------------------------------------------

    async def _start_stdio(self, sess: McpSession, row: dict[str, Any]) -> None:
        cfg = row["config"]
        env = {**(cfg.get("env") or {}), **row["secrets"]}
        try:
            await self.rt.invoke(sess.function, {"op": "start", "argv": cfg["command"], "env": env}, session=sess.runtime_session, principal=RUNTIME_PRINCIPAL)
        except UserError as exc:
            raise McpError(SERVER_ERROR, f"the MCP server {sess.server!r} could not be started: {_message(exc)}") from None
        # where the relay listens is the host's to know, not the sandbox's to
        # say: its directory, reached without following the sandbox's
        # symlinks (through the instance's mount namespace: a capped disk is
        # mounted there only)
        try:
            desc = await self.rt.describe_session(sess.runtime_session)
            fd = await asyncio.to_thread(
                open_in_session, str(desc["workdir"]), desc.get("instance"), f"{stdio_handler.RELAY_DIR}/{stdio_handler.SOCKET_NAME}"
            )
            try:
                sess.bridge = await StdioBridge.connect(fd, partial(self._from_server, sess), partial(self._bridge_closed, sess))
            finally:
                os.close(fd)
        except (OSError, NotFound, SessionClosed) as exc:
            raise McpError(SERVER_ERROR, f"cannot reach the MCP server {sess.server!r} in its sandbox: {exc}") from None

    async def _from_server(self, sess: McpSession, msg: dict[str, Any]) -> None:
        if msg.get("method") == "notifications/progress":
            token = (msg.get("params") or {}).get("progressToken")
            for flight in sess.inflight.values():
                if flight.progress_token is not None and flight.progress_token == token and flight.notify is not None:
                    await flight.notify(msg)
                    return
        await self._deliver(sess, msg)

    async def _bridge_closed(self, sess: McpSession) -> McpError:
        """The relay closed the connection: why, as the error of the requests in flight."""
        if sess.status != ACTIVE:
            return McpError(SERVER_ERROR, f"this MCP session has ended ({sess.close_reason})")
        code: Any = None
        stderr = ""
        with contextlib.suppress(Exception):
            desc = await self.rt.describe_session(sess.runtime_session)
            if desc.get("instance") is not None:
                out = await self.rt.invoke(sess.function, {"op": "poll", "wait": 2.0}, session=sess.runtime_session, timeout=15, principal=RUNTIME_PRINCIPAL)
                code, stderr = out.value.get("exit_code"), str(out.value.get("stderr") or "")
        how = f"exited with code {code}" if code is not None else "stopped"
        lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("--- starting ")][-8:]
        tail = ("; its stderr ends with:\n" + "\n".join(lines)) if lines else ""
        self._spawn(self._end(sess, CLOSED, f"the server process {how}"))
        return McpError(
            SERVER_ERROR,
            f"the MCP server {sess.server!r} {how}: this MCP session has ended (initialize a new session){tail}",
            {"exit_code": code},
        )


# -- helpers ---------------------------------------------------------------------------


def _message(exc: FunctionAIError) -> str:
    msg = exc.message
    for prefix in ("StdioServerError: ",):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _progress_token(msg: dict[str, Any]) -> Any:
    meta = (msg.get("params") or {}).get("_meta")
    return meta.get("progressToken") if isinstance(meta, dict) else None


def _resolve_command(cmd: str) -> str:
    if os.sep in cmd:
        path = os.path.abspath(cmd)
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise InvalidArgument(f"the command {cmd!r} does not exist or is not executable")
        return path
    found = shutil.which(cmd)
    if found is None:
        raise InvalidArgument(f"the command {cmd!r} was not found on the server's PATH")
    return os.path.abspath(found)


def _check_env(env: Any, what: str) -> dict[str, str]:
    if not isinstance(env, dict):
        raise InvalidArgument(f"{what} must be an object of strings")
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_RE.fullmatch(k) or not isinstance(v, str) or "\0" in v:
            raise InvalidArgument(f"{what}: {k!r} is not a valid NAME=value pair")
    return dict(env)


def _check_spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InvalidArgument("spec must be an object of FunctionSpec keywords")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise InvalidArgument(f"unknown spec field(s) for an MCP server: {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_SPEC_KEYS))})")
    try:
        json.dumps(spec)
    except (TypeError, ValueError):
        raise InvalidArgument("spec must be JSON") from None
    return dict(spec)


def _check_tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise InvalidArgument("a tool is an object: name, code, handler, input_schema, ...")
    name = tool.get("name")
    if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"tool name {name!r} is not valid: 1-128 characters from A-Z a-z 0-9 _ . -")
    code, handler = tool.get("code"), tool.get("handler")
    if not isinstance(code, str) or not code.strip():
        raise InvalidArgument(f"tool {name!r}: code must be the Python source defining the tool")
    if not isinstance(handler, str) or not _IDENT_RE.fullmatch(handler):
        raise InvalidArgument(f"tool {name!r}: handler must be the name of the tool's function in its code")
    ctx_param = tool.get("ctx_param")
    if ctx_param is not None and (not isinstance(ctx_param, str) or not _IDENT_RE.fullmatch(ctx_param)):
        raise InvalidArgument(f"tool {name!r}: ctx_param must be a parameter name or null")
    description = tool.get("description") or ""
    if not isinstance(description, str):
        raise InvalidArgument(f"tool {name!r}: description must be a string")
    schemas: dict[str, dict[str, Any] | None] = {}
    for key in ("input_schema", "output_schema"):
        schema = tool.get(key)
        if schema is None and key == "output_schema":
            schemas[key] = None
            continue
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise InvalidArgument(f"tool {name!r}: {key} must be a JSON schema of type object")
        _check_schema(name, key, schema)
        schemas[key] = schema
    return {
        "name": name,
        "description": description,
        "code": code,
        "handler": handler,
        "ctx_param": ctx_param,
        "wrap_output": bool(tool.get("wrap_output")),
        **schemas,
    }


def _check_schema(tool: str, key: str, schema: dict[str, Any]) -> None:
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidArgument(f"tool {tool!r}: {key} is not a valid JSON schema: {exc.message}") from None


def _validate(tool: dict[str, Any], args: dict[str, Any]) -> list[str]:
    validator = tool.get("_validator")
    if validator is None:
        import jsonschema

        schema = tool["input_schema"]
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator = tool["_validator"] = cls(schema)
    problems = []
    for err in sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path)
        problems.append(f"{where}: {err.message}" if where else err.message)
    return problems[:10]


def _tool_result(value: Any, tool: dict[str, Any]) -> dict[str, Any]:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)
    out: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    if tool.get("output_schema") is not None:
        structured = {"result": value} if tool.get("wrap_output") else value
        if isinstance(structured, dict):
            out["structuredContent"] = structured
    return out


def _tool_error(message: str, traceback: str | None = None) -> dict[str, Any]:
    text = message + (f"\n\n{traceback.rstrip()}" if traceback else "")
    return {"content": [{"type": "text", "text": text}], "isError": True}
