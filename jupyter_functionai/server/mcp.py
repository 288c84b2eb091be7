"""HTTP for the MCP tool service: the hosted endpoints and the REST API.

``/functionai/mcp/{server}/mcp`` speaks MCP over streamable HTTP, the
session-based revisions (2025-11-25 and earlier, see ``mcp/protocol.py``):

* ``POST`` one JSON-RPC message. ``initialize`` (no ``Mcp-Session-Id``)
  starts a session and answers with its id in ``Mcp-Session-Id``; every other
  message carries that header. A request is answered with one JSON object,
  or with server-sent events when notifications may come before the answer
  (progress, a stdio server's own messages); a notification or a response
  gets 202. No session header: 400. An unknown, ended or expired session:
  404 (the client initialises again). A request at the stateless 2026-07-28
  revision: 400 with ``-32022`` naming the revisions served here.
* ``GET`` (``Accept: text/event-stream``) the session's stream of messages
  sent outside of requests (``notifications/tools/list_changed``, a stdio
  server's notifications and requests).
* ``DELETE`` ends the session.

A session is bound to whoever opened it (a key, or Jupyter's own
authentication): with other credentials its id answers 404, as for an
unknown one. The runtime session behind it (its tools' sandbox, of the
function ``mcp-<server>``) is bound to the MCP service: a function key for
that function gets 404 for it on the gateway.

Origin (the transport's DNS-rebinding defence): a request whose ``Origin``
header is not allowed is ``403`` (a JSON-RPC error, ``kind: forbidden``)
before anything else, whatever its credential. Allowed: no ``Origin``
(non-browser clients), the server's own origin (``Origin`` host equal to
``Host``), and what Jupyter's ``allow_origin`` / ``allow_origin_pat`` allow
(Jupyter's own ``check_origin``, without its exemption of token requests).

Authentication: Jupyter's (``Authorization: token T`` or ``Bearer T``, the
browser's cookie with XSRF), or a key scoped to this MCP server
(``Authorization: Bearer fai_...``, made with ``{"function": "mcp:<server>"}``
on ``POST /functionai/api/keys``).  No credential, a wrong token or an
invalid/revoked key: ``401`` with ``WWW-Authenticate: Bearer realm="functionai"``
(what MCP clients look for to start their authorization); a key for another
server: ``403``.  The body is a JSON-RPC error whose ``error`` also carries
``kind`` (``unauthorized``, ``forbidden``, ``payload_too_large``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import BadPayload, FunctionAIError
from ..mcp.manager import KEY_SCOPE_PREFIX
from ..mcp.protocol import (
    HANDSHAKE_VERSIONS,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    McpError,
    error,
    kind_of,
    unsupported_version,
)
from .base import (
    KEY_PREFIX,
    BaseHandler,
    Forbidden,
    Unauthorized,
    dumps,
    jupyter_auth,
    parse_json_body,
)

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
KEEPALIVE_S = 15.0


def _dumps_message(msg: dict[str, Any]) -> str:
    """A JSON-RPC message as UTF-8-safe JSON text (a lone surrogate, e.g. in a
    stdio server's output, is written escaped; a non-finite number as null)."""
    text = dumps(msg, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return dumps(msg)
    return text


def key_or_jupyter(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A verb that accepts Jupyter's authentication or a key scoped to this MCP server."""
    as_user = web.authenticated(authorized(resource="functionai")(method))

    @functools.wraps(method)
    async def verb(self: McpEndpointHandler, server: str) -> None:
        if self._key_scope is not None:
            if self._key_scope != KEY_SCOPE_PREFIX + server:
                raise Forbidden(f"this key is for {self._key_scope!r}, not the MCP server {server!r}")
            await method(self, server)
        else:
            await as_user(self, server)  # type: ignore[misc]

    verb._functionai_auth = "jupyter-or-function-key"  # type: ignore[attr-defined]
    return verb


class McpEndpointHandler(BaseHandler):
    _key_scope: str | None = None
    _key_id = ""
    _queue: asyncio.Queue[dict[str, Any] | None] | None = None

    def skip_check_origin(self) -> bool:
        """The Origin check applies to every request here, token ones too (only
        a CORS preflight skips it)."""
        return self.request.method == "OPTIONS"

    async def authenticate(self) -> None:
        if not self.check_origin():
            raise Forbidden(
                f"the Origin {self.request.headers.get('Origin', '')[:200]!r} is not allowed to use this MCP endpoint "
                "(allowed: no Origin, this server's own, and Jupyter's allow_origin / allow_origin_pat)"
            )
        scheme, cred = self._credential()
        if scheme == "bearer" and cred.startswith(KEY_PREFIX):
            if not self.check_host():
                raise web.HTTPError(403)
            await self.settings["functionai_stack"].ensure_started()
            scope = await self.settings["functionai_runtime"].key_function(cred)
            if scope is None:
                raise Unauthorized("invalid or revoked key")
            server = self.path_kwargs.get("server", "")
            if scope != KEY_SCOPE_PREFIX + server:
                raise Forbidden(f"this key is for {scope!r}, not the MCP server {server!r}")
            self._key_scope = scope
            self._key_id = cred.split("_", 2)[1]
            return
        await super().authenticate()

    @property
    def principal(self) -> str:
        """Who sends this request: a session is usable only by whoever opened it.
        Jupyter's authentication (token, login) is one principal: it owns the
        whole server anyway, and its token user's name changes at each start."""
        return f"key:{self._key_id}" if self._key_scope is not None else "jupyter"

    # -- answers -------------------------------------------------------------------

    def _answer(self, status: int, msg: dict[str, Any] | None) -> None:
        self.set_status(status)
        if msg is None:
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(_dumps_message(msg))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], McpError):
            status_code = exc_info[1].http_status
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, McpError):
            self.log.info("%s %s -> %s: %s", self.request.method, self.request.path, value.http_status, value.message)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors are JSON-RPC error objects (``id`` null), never HTML or tracebacks."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, McpError):
            body = exc.to_message(None)
        elif isinstance(exc, FunctionAIError):  # (authentication, body size): ``error.kind`` as on every other route
            data = {k: v for k, v in exc.to_dict().items() if k != "message"}
            body = error(None, INVALID_REQUEST if status_code < 500 else INTERNAL_ERROR, exc.message, data)
            body["error"]["kind"] = exc.kind
        elif isinstance(exc, web.HTTPError):
            body = error(None, INVALID_REQUEST if status_code < 500 else INTERNAL_ERROR, exc.log_message or self._reason)
        else:
            body = error(None, INTERNAL_ERROR, "internal server error (see the server log)")
        self.keep_headers(exc)
        self.set_header("Content-Type", "application/json")
        self.finish(dumps(body, default=str))

    async def _sse(self, msg: dict[str, Any] | None, comment: str | None = None) -> None:
        if comment is not None:
            self.write(f": {comment}\n\n")
        if msg is not None:
            self.write("event: message\ndata: " + _dumps_message(msg) + "\n\n")
        await self.flush()

    def _start_sse(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache, no-transform")
        self.set_header("X-Accel-Buffering", "no")

    def _accepts_sse(self) -> bool:
        accept = self.request.headers.get("Accept", "")
        return "text/event-stream" in accept or "*/*" in accept

    # -- verbs ----------------------------------------------------------------------

    @key_or_jupyter
    async def post(self, server: str) -> None:
        mgr = self.mcp
        try:
            body = parse_json_body(self.body or b"null", allow_nul=True)
        except BadPayload as exc:
            self._answer(400, error(None, PARSE_ERROR, f"Parse error: {exc.message}", {"kind": exc.kind, **exc.details}))
            return
        if isinstance(body, list):
            self._answer(400, error(None, INVALID_REQUEST, "JSON-RPC batches are not supported (removed in MCP 2025-06-18): send one message per POST"))
            return
        mid = body.get("id") if isinstance(body, dict) else None
        try:
            kind = kind_of(body)
            version = self.request.headers.get(VERSION_HEADER)
            if version is not None and version not in HANDSHAKE_VERSIONS:
                raise unsupported_version(version)
            sid = self.request.headers.get(SESSION_HEADER)
            if kind == "request" and body["method"] == "initialize":
                sess, answer = await mgr.initialize(server, body, self.principal)
                if sess is not None:
                    self.set_header(SESSION_HEADER, sess.id)
                self._answer(200, answer)
                return
            if not sid:
                raise McpError(INVALID_REQUEST, f"Bad Request: no {SESSION_HEADER} header (send initialize first)", http_status=400)
            sess = await mgr.session(server, sid, self.principal)
            if kind == "notification":
                await mgr.client_notification(sess, body)
                self._answer(202, None)
                return
            if kind == "response":
                await mgr.client_response(sess, body)
                self._answer(202, None)
                return
            if not (mgr.wants_stream(sess, body) and self._accepts_sse()):
                self._answer(200, await mgr.request(sess, body, None))
                return
        except McpError as exc:
            self._answer(exc.http_status, exc.to_message(mid))
            return
        except FunctionAIError as exc:  # e.g. an unknown server
            self._answer(exc.status, error(mid, INVALID_REQUEST, exc.message, {"kind": exc.kind}))
            return
        self._start_sse()
        gone = False

        async def notify(msg: dict[str, Any]) -> None:
            nonlocal gone
            if gone:
                return
            try:
                await self._sse(msg)
            except StreamClosedError:
                gone = True

        answer = await mgr.request(sess, body, notify)
        try:
            await self._sse(answer)
            self.finish()
        except StreamClosedError:
            pass

    @key_or_jupyter
    async def get(self, server: str) -> None:
        mgr = self.mcp
        if "text/event-stream" not in self.request.headers.get("Accept", ""):
            self._answer(406, error(None, INVALID_REQUEST, "Not Acceptable: the GET stream needs Accept: text/event-stream"))
            return
        sid = self.request.headers.get(SESSION_HEADER)
        try:
            if not sid:
                raise McpError(INVALID_REQUEST, f"Bad Request: no {SESSION_HEADER} header", http_status=400)
            sess = await mgr.session(server, sid, self.principal)
        except McpError as exc:
            self._answer(exc.http_status, exc.to_message(None))
            return
        q = self._queue = mgr.listen(sess)
        self._start_sse()
        try:
            await self._sse(None, "stream open")
            while True:
                try:
                    msg = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    await self._sse(None, "keepalive")
                    continue
                if msg is None:
                    break
                await self._sse(msg)
            self.finish()
        except StreamClosedError:
            pass
        finally:
            mgr.unlisten(sess, q)

    def on_connection_close(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
        super().on_connection_close()

    @key_or_jupyter
    async def delete(self, server: str) -> None:
        sid = self.request.headers.get(SESSION_HEADER)
        try:
            if not sid:
                raise McpError(INVALID_REQUEST, f"Bad Request: no {SESSION_HEADER} header", http_status=400)
            await self.mcp.terminate(server, sid, self.principal)
        except McpError as exc:
            self._answer(exc.http_status, exc.to_message(None))
            return
        self._answer(204, None)


# -- the REST API -------------------------------------------------------------------------


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadPayload(f"the body must be {what} (a JSON object)")
    return body


class McpServersHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await self.mcp.servers())

    @jupyter_auth
    async def post(self) -> None:
        """Host a stdio server ({"name", "command": [...] | "catalog": NAME, "env",
        "secrets", "idle_ttl_s", "network", "memory", "probe"}), or create an
        empty function-backed one ({"name", "kind": "functions", "spec"})."""
        body = _object(self.json_body(), "CreateMcpServer")
        allowed = {"name", "kind", "command", "catalog", "env", "secrets", "idle_ttl_s", "network", "memory", "probe", "spec", "description"}
        unknown = set(body) - allowed
        if unknown:
            raise BadPayload(f"unknown field(s): {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")
        mgr = self.mcp
        name = body.get("name")
        if not isinstance(name, str):
            raise BadPayload('the body needs "name" (a string)')
        kind = body.get("kind", "stdio")
        if kind == "functions":
            row = await mgr.create_function_server(name, body.get("spec"), str(body.get("description") or ""))
        elif kind == "stdio":
            network = body.get("network", "none")
            if network not in ("none", "loopback", "host"):
                raise BadPayload("network must be none, loopback or host")
            row = await mgr.add_stdio(
                name,
                body.get("command"),
                catalog=body.get("catalog"),
                env=body.get("env"),
                secrets_env=body.get("secrets"),
                idle_ttl_s=body.get("idle_ttl_s"),
                network=network,
                memory=body.get("memory"),
                probe=bool(body.get("probe", True)),
            )
        else:
            raise BadPayload("kind must be 'stdio' (a command) or 'functions' (notebook tools)")
        self.write_json(row, status=201)


class McpServerHandler(BaseHandler):
    @jupyter_auth
    async def get(self, server: str) -> None:
        """The server, each tool with its call statistics (calls, errors, p50_ms, p95_ms, ...)."""
        self.write_json(await self.mcp.describe(server))

    @jupyter_auth
    async def delete(self, server: str) -> None:
        await self.mcp.remove(server)
        self.set_status(204)
        self.finish()


class McpToolHandler(BaseHandler):
    @jupyter_auth
    async def put(self, server: str, tool: str) -> None:
        """Publish (create or replace) a tool of a function-backed server."""
        body = _object(self.json_body(), "PublishTool")
        spec = body.pop("spec", None)
        if body.get("name", tool) != tool:
            raise BadPayload(f"the body names the tool {body.get('name')!r}, the path {tool!r}")
        body["name"] = tool
        self.write_json(await self.mcp.publish_tool(server, body, spec))

    @jupyter_auth
    async def delete(self, server: str, tool: str) -> None:
        self.write_json(await self.mcp.remove_tool(server, tool))


class McpSessionsHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await self.mcp.sessions(self.get_query_argument("server", None), self.get_query_argument("status", None)))


class McpSessionHandler(BaseHandler):
    @jupyter_auth
    async def delete(self, session_id: str) -> None:
        """End an MCP session, whoever opened it (its client's next request gets 404)."""
        await self.mcp.end_session(session_id)
        self.set_status(204)
        self.finish()
