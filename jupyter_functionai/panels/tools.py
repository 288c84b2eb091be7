"""The Tools panel: hosted MCP servers, their tools and schemas, MCP sessions, a try-a-tool form."""


from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient, as_server
from .base import _describe_error, _LivePanel, open_sessions
from .formatting import STATUS_COLOURS, _esc, fmt_duration, fmt_ms
from .runs import _server

# -- MCP tools ---------------------------------------------------------------------------------------

MCP_SESSION_COLUMNS = ("MCP session", "server", "client", "opened by", "runtime session", "instance", "pid", "sandbox", "in flight", "age", "idle", "")
MCP_SESSION_GRID = "repeat(11, max-content) 84px"
TOOL_COLUMNS = ("tool", "description", "parameters", "calls", "errors", "p50", "p95")
KIND_LABELS = {"functions": "function-backed", "stdio": "stdio"}
ALL_SERVERS = ""
PANEL_CLIENT = "functionai-panel"  # the clientInfo name of the try-a-tool form's MCP sessions


def schema_type(prop: Any, depth: int = 0) -> str:
    """A short type of a JSON-schema property: ``integer``, ``string|null``, ``array[number]``, ``Point``."""
    if not isinstance(prop, dict) or depth > 4:
        return "any"
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "const" in prop:
        return json.dumps(prop["const"])
    if isinstance(prop.get("enum"), list):
        return "|".join(json.dumps(v) for v in prop["enum"][:6]) + ("|…" if len(prop["enum"]) > 6 else "")
    for key in ("anyOf", "oneOf"):
        if isinstance(prop.get(key), list):
            return "|".join(schema_type(p, depth + 1) for p in prop[key])
    typ = prop.get("type")
    if isinstance(typ, list):
        return "|".join(str(t) for t in typ)
    if typ == "array":
        return f"array[{schema_type(prop.get('items'), depth + 1)}]" if isinstance(prop.get("items"), dict) else "array"
    return str(typ) if typ else "any"


def params_summary(schema: Any) -> str:
    """``a: integer, b: integer = 1, note?: string``: each parameter of a tool's input
    schema with its type; ``?`` marks an optional one without a default."""
    if not isinstance(schema, dict):
        return ""
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    parts = []
    for name, prop in props.items():
        part = f"{name}{'' if name in required or (isinstance(prop, dict) and 'default' in prop) else '?'}: {schema_type(prop)}"
        if isinstance(prop, dict) and "default" in prop:
            part += f" = {json.dumps(prop['default'])}"
        parts.append(part)
    return ", ".join(parts) or "(none)"


def schema_skeleton(schema: Any) -> dict[str, Any]:
    """Arguments to start from: each parameter's default, else a value of its type."""
    if not isinstance(schema, dict):
        return {}
    value = _skeleton_value(schema, schema, 0)
    return value if isinstance(value, dict) else {}


_EMPTY_OF: dict[str, Any] = {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "null": None}


def _skeleton_value(prop: Any, root: dict[str, Any], depth: int) -> Any:
    if not isinstance(prop, dict) or depth > 6:
        return None
    if "default" in prop:
        return prop["default"]
    if "const" in prop:
        return prop["const"]
    if isinstance(prop.get("enum"), list) and prop["enum"]:
        return prop["enum"][0]
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return _skeleton_value(target, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = [p for p in prop.get(key) or [] if isinstance(p, dict) and p.get("type") != "null"]
        if options:
            return _skeleton_value(options[0], root, depth + 1)
    typ = prop.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or (typ is None and "properties" in prop):
        return {k: _skeleton_value(v, root, depth + 1) for k, v in (prop.get("properties") or {}).items()}
    return _EMPTY_OF.get(str(typ))


def tool_result_html(result: dict[str, Any] | None) -> str:
    """A tool call's answer: ok / isError / a JSON-RPC error, its structured content and its text."""
    if not result:
        return ""
    where = f"{_esc(result.get('server', ''))} / {_esc(result.get('tool', ''))}"
    took = f" in {fmt_ms(float(result['ms']))}" if isinstance(result.get("ms"), (int, float)) else ""
    pre = 'style="margin:4px 0;padding:6px;max-height:320px;overflow:auto;background:var(--jp-layout-color2, #f5f5f5)"'
    if result.get("local_error"):
        return f'<div class="fai-tool-result" data-outcome="invalid"><span style="color:#c62828;font-weight:bold">not called</span>: {_esc(result["local_error"])}</div>'
    if "error" in result:
        err = result["error"] or {}
        return (
            f'<div class="fai-tool-result" data-outcome="protocol-error">{where}: <span style="color:#c62828;font-weight:bold">JSON-RPC error '
            f'{_esc(err.get("code"))}</span>{took}<pre class="fai-tool-error" {pre}>{_esc(err.get("message", ""))}</pre></div>'
        )
    is_error = bool(result.get("isError"))
    badge = '<span style="color:#c62828;font-weight:bold">isError</span>' if is_error else '<span style="color:#2e7d32;font-weight:bold">ok</span>'
    out = [f'<div class="fai-tool-result" data-outcome="{"tool-error" if is_error else "ok"}">{where}: {badge}{took}']
    if result.get("structuredContent") is not None:
        out.append(f'<div style="opacity:.7">structured content</div><pre class="fai-tool-structured" {pre}>{_esc(json.dumps(result["structuredContent"], indent=2, ensure_ascii=False))}</pre>')
    for item in result.get("content") or []:
        if item.get("type") == "text":
            out.append(f'<div style="opacity:.7">text</div><pre class="fai-tool-text" {pre}>{_esc(item.get("text", ""))}</pre>')
        else:
            out.append(f'<div style="opacity:.7">{_esc(item.get("type"))} content</div><pre class="fai-tool-content" {pre}>{_esc(json.dumps(item, ensure_ascii=False)[:2000])}</pre>')
    out.append("</div>")
    return "".join(out)


def _call_tool_once(url: str, headers: dict[str, str], tool: str, arguments: dict[str, Any], *, timeout: float = 300.0) -> dict[str, Any]:
    """Call ``tool`` on the MCP endpoint ``url`` with the official ``mcp`` client,
    in an MCP session of its own (ended after): the result as MCP sends it
    (``content``, ``structuredContent``, ``isError``) or ``{"error": {code,
    message}}`` for a JSON-RPC error, with ``ms`` (the call, not the handshake).
    Blocking: run it on a thread with no event loop (a panel's)."""

    async def go() -> dict[str, Any]:
        from .._version import __version__
        from ..mcp.client import McpCallError, open_session

        async with open_session(url, headers=headers, timeout=timeout, client_name=PANEL_CLIENT, client_version=__version__) as session:
            started = time.perf_counter()
            try:
                out = await session.call_tool(tool, arguments)
            except McpCallError as exc:
                return {"error": {"code": exc.code, "message": exc.message}, "ms": (time.perf_counter() - started) * 1000}
            out["ms"] = (time.perf_counter() - started) * 1000
            return out

    try:
        return asyncio.run(go())
    except BaseException as exc:
        inner: BaseException = exc
        while isinstance(getattr(inner, "exceptions", None), tuple) and inner.exceptions:  # type: ignore[attr-defined]
            inner = inner.exceptions[0]  # type: ignore[attr-defined]
        if inner is exc:
            raise
        raise inner from exc


class _ServerBlock:
    """One hosted server: what it is, its tools with their calls, their schemas."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.header = widgets.HTML()
        self.header.add_class("fai-mcp-server")
        self.tools = widgets.HTML(layout=widgets.Layout(overflow="auto"))
        self.tools.add_class("fai-mcp-tools")
        self.schemas = widgets.HTML()
        self.schemas.add_class("fai-mcp-schemas")
        self.box = widgets.VBox([self.header, self.tools, self.schemas], layout=widgets.Layout(margin="0 0 8px 0"))

    def update(self, srv: dict[str, Any], url: str | None) -> None:
        kind = str(srv.get("kind", ""))
        facts = [
            f'<b class="fai-mcp-name">{_esc(self.name)}</b>',
            f'<span class="fai-mcp-kind" data-kind="{_esc(kind)}">{_esc(KIND_LABELS.get(kind, kind))}</span>',
            f'<code class="fai-mcp-url">{_esc(url or srv.get("path", ""))}</code>',
            f'<span class="fai-mcp-live">{_esc(srv.get("live_sessions", 0))}</span> live session(s)',
        ]
        if kind == "stdio" and srv.get("command"):
            cmd = " ".join(str(a) for a in srv["command"])
            facts.append(f'<span title="{_esc(cmd)}">command <code>{_esc(cmd if len(cmd) <= 60 else "…" + cmd[-59:])}</code></span>')
        self.header.value = " · ".join(facts)
        tools = list(srv.get("tools") or [])
        if not tools:
            self.tools.value = '<span style="opacity:.7">no tools' + (" known yet (listed by a session)" if kind == "stdio" else "") + "</span>"
            self.schemas.value = ""
            return
        head = "".join(f'<th style="text-align:left;padding:0 8px">{_esc(c)}</th>' for c in TOOL_COLUMNS)
        rows = [f'<table class="fai-tool-table"><tr>{head}</tr>']
        for t in tools:
            desc = str(t.get("description") or "")
            first = desc.strip().splitlines()[0] if desc.strip() else ""
            schema = json.dumps(t.get("inputSchema") or {}, indent=2, sort_keys=True)
            errors = int(t.get("errors") or 0)
            err_style = "color:#c62828;font-weight:bold" if errors else ""
            p50, p95 = t.get("p50_ms"), t.get("p95_ms")
            rows.append(
                f'<tr class="fai-tool" data-tool="{_esc(t.get("name"))}">'
                f'<td style="padding:0 8px"><code>{_esc(t.get("name"))}</code></td>'
                f'<td style="padding:0 8px" title="{_esc(desc)}">{_esc(first[:80])}</td>'
                f'<td class="fai-tool-params" style="padding:0 8px" title="{_esc(schema)}"><code>{_esc(params_summary(t.get("inputSchema")))}</code></td>'
                f'<td class="fai-tool-calls" style="padding:0 8px;text-align:right">{_esc(t.get("calls", 0))}</td>'
                f'<td class="fai-tool-errors" style="padding:0 8px;text-align:right;{err_style}" title="{_esc(t.get("last_error") or "")}">{errors}</td>'
                f'<td class="fai-tool-p50" style="padding:0 8px;text-align:right">{_esc(fmt_ms(float(p50)) if p50 is not None else "—")}</td>'
                f'<td class="fai-tool-p95" style="padding:0 8px;text-align:right">{_esc(fmt_ms(float(p95)) if p95 is not None else "—")}</td></tr>'
            )
        rows.append("</table>")
        self.tools.value = "".join(rows)
        schemas = "".join(
            f'<div><code>{_esc(t.get("name"))}</code><pre class="fai-tool-schema" data-tool="{_esc(t.get("name"))}" '
            f'style="margin:2px 0 6px 0;padding:6px;background:var(--jp-layout-color2, #f5f5f5)">'
            f"{_esc(json.dumps(t.get('inputSchema') or {}, indent=2, sort_keys=True))}</pre></div>"
            for t in tools
        )
        self.schemas.value = f"<details><summary>input schemas ({len(tools)})</summary>{schemas}</details>"

    def close(self) -> None:
        for w in (self.header, self.tools, self.schemas, self.box):
            w.close()


class _McpSessionRow:
    def __init__(self, panel: ToolsPanel, sid: str) -> None:
        self.id = sid
        self.cells = [widgets.HTML(layout=widgets.Layout(overflow="hidden")) for _ in MCP_SESSION_COLUMNS[:-1]]
        self.cells[0].add_class("fai-mcp-session-id")
        self.button = widgets.Button(description="End", icon="times", button_style="danger", tooltip=f"end MCP session {sid}", layout=widgets.Layout(width="80px"))
        self.button.add_class("fai-mcp-end")
        self.button.on_click(lambda _b: panel.end_session(sid))

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.button]

    def update(self, s: dict[str, Any], rs: dict[str, Any] | None, ending: bool) -> None:
        info = s.get("client_info") or {}
        inst = (rs or {}).get("instance") or {}
        sandbox = str((rs or {}).get("status") or "not started")
        now = time.time()
        values = [
            f'<code style="white-space:nowrap" title="{_esc(s.get("id"))}">{_esc(str(s.get("id", ""))[:12])}…</code>',
            _esc(s.get("server", "")),
            _esc(" ".join(str(info[k]) for k in ("name", "version") if info.get(k)) or "—"),
            _esc(s.get("principal") or "—"),
            f'<code style="white-space:nowrap">{_esc(s.get("runtime_session", ""))}</code>',
            f"<code style='white-space:nowrap'>{_esc(inst.get('id') or (rs or {}).get('instance_id') or '—')}</code>",
            _esc(inst.get("pid") if inst.get("pid") is not None else "—"),
            f'<span style="color:{STATUS_COLOURS.get(sandbox, "inherit")}">{_esc(sandbox)}</span>',
            _esc(s.get("in_flight", 0)),
            _esc(fmt_duration(now - float(s["created_at"])) if s.get("created_at") else "—"),
            _esc(fmt_duration(now - float(s["last_used_at"])) if s.get("last_used_at") else "—"),
        ]
        for cell, value in zip(self.cells, values, strict=True):
            cell.value = value
        self.button.disabled = ending
        self.button.description = "ending…" if ending else "End"

    def close(self) -> None:
        for w in self.widgets:
            w.close()


class ToolsPanel(_LivePanel):
    """Hosted MCP servers: kind, endpoint, tools with their parameters and
    input schemas, calls / errors / p50 / p95 per tool; the live MCP sessions
    with their sandbox session and instance (an End button each); and a form
    to try a tool: it calls the tool through the hosted endpoint with the
    official ``mcp`` client (an MCP session of its own, ended after the call)
    on the panel's thread and shows the answer."""

    kind = "tools"
    title = "functionai MCP tools"

    def __init__(self, client: FunctionAIClient, server: str | None = None, *, interval: float = 2.0, call_timeout: float = 300.0, **kw: Any) -> None:
        self.fixed_server = server
        self.call_timeout = call_timeout
        self.last_result: dict[str, Any] | None = None
        self._updating = False
        self._blocks: dict[str, _ServerBlock] = {}
        self._block_order: list[str] = []
        self._rows: dict[str, _McpSessionRow] = {}
        self._row_order: list[str] = []
        self._ending: set[str] = set()
        self._tool_keys: list[tuple[str, str]] = []
        self._calling = False
        self.server_select = widgets.Dropdown(description="server", options=[("all servers", ALL_SERVERS)], value=ALL_SERVERS, layout=widgets.Layout(width="280px"))
        self.server_select.add_class("fai-mcp-server-select")
        if server:
            self.server_select.options = [(server, server)]
            self.server_select.value = server
            self.server_select.layout.display = "none"
            self.title = f"functionai MCP server {server}"
        self.summary = widgets.HTML()
        self.servers_box = widgets.VBox()
        self.sessions_title = widgets.HTML("<b>live MCP sessions</b>")
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns=MCP_SESSION_GRID, grid_gap="2px 10px", align_items="center", overflow="auto"))
        self.grid.add_class("fai-mcp-sessions-grid")
        self._header = [widgets.HTML(f"<b>{_esc(c)}</b>") for c in MCP_SESSION_COLUMNS]
        self.try_title = widgets.HTML("<b>try a tool</b> <span style='opacity:.7'>(through the hosted endpoint, in an MCP session of its own)</span>")
        self.tool_select = widgets.Dropdown(description="tool", options=[], layout=widgets.Layout(width="360px"))
        self.tool_select.add_class("fai-try-tool")
        self.arguments = widgets.Textarea(placeholder="arguments (a JSON object)", layout=widgets.Layout(width="100%", height="110px"))
        self.arguments.add_class("fai-try-arguments")
        self.call_button = widgets.Button(description="Call", icon="play", button_style="primary", disabled=True, layout=widgets.Layout(width="120px"))
        self.call_button.add_class("fai-try-call")
        self.result = widgets.HTML()
        self.result.add_class("fai-try-result")
        # host a stdio MCP server (what `functionai mcp add` does)
        self.add_title = widgets.HTML("<b>host a stdio MCP server</b> <span style='opacity:.7'>(each MCP session gets its own process in its own sandbox)</span>")
        self.add_name = widgets.Text(placeholder="name", layout=widgets.Layout(width="160px"))
        self.add_catalog = widgets.Dropdown(options=[("command:", ""), ("catalog: time", "time"), ("catalog: git", "git")], value="", layout=widgets.Layout(width="150px"))
        self.add_command = widgets.Text(placeholder="command and arguments, e.g. python -m my_server", layout=widgets.Layout(width="100%"))
        self.add_env = widgets.Textarea(placeholder="environment, one KEY=VALUE per line (optional)", layout=widgets.Layout(width="100%", height="48px"))
        self.add_button = widgets.Button(description="Add", icon="plus", layout=widgets.Layout(width="100px"))
        for w, cls in ((self.add_name, "fai-add-name"), (self.add_catalog, "fai-add-catalog"), (self.add_command, "fai-add-command"), (self.add_env, "fai-add-env"), (self.add_button, "fai-add-button")):
            w.add_class(cls)
        super().__init__(client, interval=interval, **kw)
        for w in (self.server_select, self.summary, self.servers_box, self.sessions_title, self.grid, *self._header,
                  self.try_title, self.tool_select, self.arguments, self.call_button, self.result,
                  self.add_title, self.add_name, self.add_catalog, self.add_command, self.add_env, self.add_button):
            self._own(w)
        self.add_button.on_click(lambda _b: self.add_server())
        self.server_select.observe(self._on_server, names="value")
        self.tool_select.observe(self._on_tool, names="value")
        self.call_button.on_click(lambda _b: self.call_tool())

    def _controls(self) -> list[Any]:
        return [self.server_select]

    def _body(self) -> list[Any]:
        row = self._own(widgets.HBox([self.tool_select, self.call_button], layout=widgets.Layout(align_items="center")))
        body = [self.summary, self.servers_box, self.sessions_title, self.grid, self.try_title, row, self.arguments, self.result]
        if not self.fixed_server:
            add = self._own(widgets.HBox([self.add_name, self.add_catalog, self.add_command, self.add_button], layout=widgets.Layout(align_items="center")))
            body += [self.add_title, add, self.add_env]
        return body

    def add_server(self) -> Future[Any]:
        """The Add button: host a stdio MCP server (a command, or a catalog
        package) on the panel's thread; the outcome shows in the status line."""
        import shlex

        name = self.add_name.value.strip()
        catalog = self.add_catalog.value or None
        try:
            command = None if catalog else shlex.split(self.add_command.value)
            env = {}
            for line in self.add_env.value.splitlines():
                if line.strip():
                    key, eq, value = line.partition("=")
                    if not eq or not key.strip():
                        raise ValueError(f"environment lines are KEY=VALUE, not {line.strip()!r}")
                    env[key.strip()] = value
        except ValueError as exc:
            fut: Future[Any] = Future()
            fut.set_exception(exc)
            with self._lock:
                self._show_status(f"not added: {exc}")
            self.last_action = fut
            return fut
        if not name or (not catalog and not command):
            fut = Future()
            fut.set_exception(ValueError("a name and a command (or a catalog package) are needed"))
            with self._lock:
                self._show_status("not added: a name and a command (or a catalog package) are needed")
            self.last_action = fut
            return fut
        self.add_button.disabled = True

        def act() -> Any:
            try:
                return _server(self.client).mcp_add(name, command, catalog=catalog, env=env or None)
            finally:
                self.add_button.disabled = False

        return self._submit(act, f"added MCP server {name}")

    # -- data --------------------------------------------------------------------------------

    def _fetch(self) -> dict[str, Any]:
        server = as_server(self.client)
        if server is None:
            raise RuntimeError("MCP servers are hosted by a functionai server (functionai serve, or Jupyter with the extension), not by this client")
        servers = [server.mcp_server(self.fixed_server)] if self.fixed_server else list(server.mcp_servers())
        sessions = list(server.mcp_sessions(self.fixed_server, "active"))
        functions = {str(s["name"]): str(s.get("function") or "") for s in servers}
        runtime: dict[str, dict[str, Any]] = {}
        for fn in sorted({functions[str(s.get("server"))] for s in sessions if functions.get(str(s.get("server")))}):
            for r in open_sessions(self.client, fn):
                runtime[str(r["id"])] = r
        urls = {name: server.mcp_url(name) for name in functions}
        return {"servers": servers, "sessions": sessions, "runtime": runtime, "urls": urls}

    @property
    def server(self) -> str | None:
        """The server shown (None: all of them)."""
        return self.fixed_server or (self.server_select.value or None)

    def shown_servers(self) -> list[dict[str, Any]]:
        servers = list((self.data or {}).get("servers") or [])
        return [s for s in servers if self.server is None or s.get("name") == self.server]

    def shown_sessions(self) -> list[dict[str, Any]]:
        """The active MCP sessions shown, newest first."""
        rows = [s for s in (self.data or {}).get("sessions") or [] if self.server is None or s.get("server") == self.server]
        return sorted(rows, key=lambda s: -float(s.get("created_at") or 0))

    def block(self, server: str) -> _ServerBlock:
        return self._blocks[server]

    def row(self, session_id: str) -> _McpSessionRow:
        return self._rows[session_id]

    # -- rendering -----------------------------------------------------------------------------

    def _render(self) -> None:
        data = self.data or {}
        all_servers = list(data.get("servers") or [])
        names = [str(s["name"]) for s in all_servers]
        self._updating = True
        try:
            if not self.fixed_server:
                options = [("all servers", ALL_SERVERS), *((n, n) for n in names)]
                if list(self.server_select.options) != options:
                    keep = self.server_select.value
                    self.server_select.options = options
                    self.server_select.value = keep if keep in names else ALL_SERVERS
        finally:
            self._updating = False
        servers = self.shown_servers()
        sessions = self.shown_sessions()
        n_tools = sum(len(s.get("tools") or []) for s in servers)
        self.summary.value = (
            f"{len(servers)} server(s) · {n_tools} tool(s) · {len(sessions)} live MCP session(s)"
            if all_servers
            else "no MCP servers yet: publish a tool (<code>@jupyter_functionai.tool(\"SERVER\")</code>, <code>%%tool</code>) or <code>functionai mcp add</code>"
        )
        shown = [str(s["name"]) for s in servers]
        for name in [k for k in self._blocks if k not in shown]:
            self._blocks.pop(name).close()
        for srv in servers:
            name = str(srv["name"])
            if name not in self._blocks:
                self._blocks[name] = _ServerBlock(name)
            self._blocks[name].update(srv, (data.get("urls") or {}).get(name))
        if shown != self._block_order:
            self._block_order = shown
            self.servers_box.children = [self._blocks[n].box for n in shown]
        self._render_sessions(sessions, data.get("runtime") or {})
        self._render_tools(servers)

    def _render_sessions(self, sessions: list[dict[str, Any]], runtime: dict[str, dict[str, Any]]) -> None:
        ids = [str(s["id"]) for s in sessions]
        for sid in [k for k in self._rows if k not in ids]:
            self._rows.pop(sid).close()
            self._ending.discard(sid)
        for s in sessions:
            sid = str(s["id"])
            if sid not in self._rows:
                self._rows[sid] = _McpSessionRow(self, sid)
            self._rows[sid].update(s, runtime.get(str(s.get("runtime_session"))), sid in self._ending)
        self.sessions_title.value = "<b>live MCP sessions</b>" + ("" if sessions else " <span style='opacity:.7'>none</span>")
        if ids != self._row_order:
            self._row_order = ids
            self.grid.children = [*self._header, *(w for sid in ids for w in self._rows[sid].widgets)] if ids else []

    def _render_tools(self, servers: list[dict[str, Any]]) -> None:
        keys = [(str(s["name"]), str(t["name"])) for s in servers for t in s.get("tools") or [] if t.get("name")]
        if keys == self._tool_keys:
            return
        self._tool_keys = keys
        options = [(tool if self.fixed_server else f"{srv} / {tool}", (srv, tool)) for srv, tool in keys]
        current = self.tool_select.value
        self._updating = True
        try:
            self.tool_select.options = options
            self.tool_select.value = current if current in keys else (keys[0] if keys else None)
        finally:
            self._updating = False
        if self.tool_select.value != current:
            self._fill_arguments()
        if not self._calling:
            self.call_button.disabled = not keys

    def _schema_of(self, server: str, tool: str) -> dict[str, Any]:
        for s in (self.data or {}).get("servers") or []:
            if s.get("name") == server:
                for t in s.get("tools") or []:
                    if t.get("name") == tool:
                        return dict(t.get("inputSchema") or {})
        return {}

    def _fill_arguments(self) -> None:
        choice = self.tool_select.value
        self.arguments.value = json.dumps(schema_skeleton(self._schema_of(*choice)), indent=2) if choice else ""

    def _on_server(self, change: dict[str, Any]) -> None:
        if not self._updating:
            self.rerender()

    def _on_tool(self, change: dict[str, Any]) -> None:
        if not self._updating:
            with self._lock:
                self._fill_arguments()

    # -- actions ---------------------------------------------------------------------------------

    def choose_tool(self, server: str, tool: str) -> None:
        """Pick ``tool`` of ``server`` in the form (its arguments skeleton fills the text area)."""
        self.tool_select.value = (server, tool)

    def call_tool(self) -> Future[Any]:
        """What the Call button does: call the chosen tool with the text area's
        arguments through the hosted endpoint (on the panel's thread), show the
        answer, then refresh (the call is counted). The future's result is the
        answer (``isError`` and JSON-RPC errors included); it fails if the
        arguments are not a JSON object or the endpoint cannot be reached."""
        choice = self.tool_select.value
        text = self.arguments.value
        if not choice:
            fut: Future[Any] = Future()
            fut.set_exception(ValueError("no tool chosen"))
            return fut
        server, tool = choice
        with self._lock:
            self._calling = True
            self.call_button.disabled = True
            self.call_button.description = "calling…"

        def run() -> dict[str, Any]:
            try:
                try:
                    args = json.loads(text) if text.strip() else {}
                    if not isinstance(args, dict):
                        raise ValueError("the arguments must be a JSON object")
                except ValueError as exc:
                    self._show_result({"server": server, "tool": tool, "local_error": f"the arguments are not a JSON object: {exc}"})
                    raise
                url, headers = _server(self.client).mcp_url(server), _server(self.client).auth_headers()
                try:
                    out = _call_tool_once(url, headers, tool, args, timeout=self.call_timeout)
                except Exception as exc:
                    self._show_result({"server": server, "tool": tool, "local_error": f"the call failed: {_describe_error(exc)}"})
                    raise
                out.update(server=server, tool=tool)
                self._show_result(out)
                return out
            finally:
                with self._lock:
                    self._calling = False
                    self.call_button.disabled = not self._tool_keys
                    self.call_button.description = "Call"

        return self._submit(run, f"called {server} / {tool}")

    def _show_result(self, result: dict[str, Any]) -> None:
        with self._lock:
            self.last_result = result
            self.result.value = tool_result_html(result)

    def end_session(self, session_id: str) -> Future[Any]:
        """What a session's End button does: end the MCP session (on the panel's thread), then refresh."""
        with self._lock:
            self._ending.add(session_id)
            if session_id in self._rows:
                self._rows[session_id].button.disabled = True
                self._rows[session_id].button.description = "ending…"

        def act() -> None:
            try:
                _server(self.client).mcp_end_session(session_id)
            finally:
                self._ending.discard(session_id)

        return self._submit(act, f"ended MCP session {session_id}")

    def _close_rows(self) -> None:
        for r in self._rows.values():
            r.close()
        self._rows.clear()
        for b in self._blocks.values():
            b.close()
        self._blocks.clear()
