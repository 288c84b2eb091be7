"""``POST /functionai/invoke/{function}``: JSON in, JSON out, session affinity.

The session comes from the ``X-Functionai-Session-Id`` header, the
function's session cookie or ``?session=``, in that order; a session-ful
function called with none gets a new id (returned in the header and the
cookie).  The cookie is per function: named ``functionai_session_<function>``
and scoped to ``<base_url>functionai/invoke/<function>``, so a browser calling
two functions keeps one session for each.  The cookie of earlier releases
(``functionai_session``, path ``<base_url>``) is still read when the
function's own is absent; that call moves it to the function's cookie and
clears it.  Responses carry ``X-Functionai-Session-Id``,
``X-Functionai-Instance-Id`` and, when the call started an instance,
``X-Functionai-Cold-Start: <path>;ms=<n>``.  Generator handlers stream as
server-sent events when the client accepts ``text/event-stream``.

Authentication: Jupyter's own (token, cookie + XSRF), or a function-scoped key
``Authorization: Bearer fai_...`` valid for this function only.  A key request
carries no cookie credential, so it needs no XSRF token (like Jupyter's token
authentication); the Host check still applies.  No credential, a wrong token
or an invalid/revoked key: ``401`` with ``WWW-Authenticate``; a key for another
function: ``403``.  Both before the body is read; so is a ``Content-Length``
over the function's ``limits.max_payload_bytes`` (``413``).

Sessions are bound to the principal that opened them: a key (by its key id)
or the server's owner (Jupyter's token or login). A key reaches only the
sessions it opened: any other session id (another key's, the owner's, the
session behind an MCP session) is ``404 not_found``, as a closed one is;
an id nobody used yet opens a new session bound to the key. The owner owns
the whole server: with Jupyter's authentication every session of the
function is reachable (as in the REST API, which lists them all).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import tornado
from jupyter_server._tz import utcnow
from jupyter_server.auth.authorizer import AllowAllAuthorizer
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import csp_report_uri
from jupyter_server.base.handlers import log as jupyter_log
from jupyter_server.prometheus.metrics import HTTP_REQUEST_DURATION_SECONDS
from jupyter_server.utils import url_path_join
from tornado import httputil, web
from tornado.iostream import StreamClosedError
from tornado.routing import PathMatches, Router, Rule

from ..errors import FunctionAIError
from ..runtime.sessions import SESSION_ID_RE, check_session_id
from .base import (
    KEY_PREFIX,
    STOCK_PROVIDERS,
    BaseHandler,
    Forbidden,
    Unauthorized,
    dumps,
    error_answer,
    parse_json_body,
)

SESSION_HEADER = "X-Functionai-Session-Id"
SESSION_COOKIE = "functionai_session"  # + "_<function>"; the bare name is the legacy, server-wide cookie

__all__ = ["KEY_PREFIX", "SESSION_COOKIE", "SESSION_HEADER", "InvokeHandler", "LeanInvokeRoute", "session_cookie"]


def session_cookie(function: str) -> str:
    """The name of ``function``'s session cookie (function names are cookie-safe)."""
    return f"{SESSION_COOKIE}_{function}"


class InvokeHandler(BaseHandler):
    _key_function: str | None = None
    _key_id = ""
    body_allows_nul = True  # the event is the function's data

    async def authenticate(self) -> None:
        scheme, cred = self._credential()
        if scheme == "bearer" and cred.startswith(KEY_PREFIX):
            if not self.check_host():
                raise web.HTTPError(403)
            await self.settings["functionai_stack"].ensure_started()
            function = await self.settings["functionai_runtime"].key_function(cred)
            if function is None:
                raise Unauthorized("invalid or revoked function key")
            name = self.path_kwargs.get("name", "")
            if function != name:
                raise Forbidden(f"this key is for function {function!r}, not {name!r}")
            self._key_function = function
            self._key_id = cred.split("_", 2)[1]
            return
        await super().authenticate()

    @property
    def principal(self) -> str | None:
        """Who calls: ``key:<key id>``, or None for the owner (Jupyter's authentication)."""
        return f"key:{self._key_id}" if self._key_function is not None else None

    def body_limit(self) -> int:
        """The function's payload limit (the API's default for an unknown one: its 404 comes later)."""
        sid = self.request.headers.get(SESSION_HEADER)
        if sid and SESSION_ID_RE.match(sid):  # echoed on an early 413 too
            self._keep_headers = {SESSION_HEADER: sid}
        try:
            fv = self.settings["functionai_runtime"].function(self.path_kwargs.get("name", ""))
        except FunctionAIError:
            return super().body_limit()
        return int(fv.spec.limits.max_payload_bytes)

    async def post(self, name: str) -> None:
        if self._key_function is not None:
            if self._key_function != name:  # (authenticate refused it already)
                raise Forbidden(f"this key is for function {self._key_function!r}, not {name!r}")
            await self._invoke(name)
        else:
            await cast("Awaitable[None]", self._invoke_as_user(name))  # Jupyter's authn + authz

    @web.authenticated
    @authorized(resource="functionai")
    async def _invoke_as_user(self, name: str) -> None:
        await self._invoke(name)

    post._functionai_auth = "jupyter-or-function-key"  # type: ignore[attr-defined]

    async def _invoke(self, name: str) -> None:
        rt = self.runtime
        fv = rt.function(name)  # 404 for an unknown function, before the session is touched
        cookie = session_cookie(name)
        legacy = self.get_cookie(SESSION_COOKIE)  # the server-wide cookie of earlier releases
        session = self.request.headers.get(SESSION_HEADER) or self.get_cookie(cookie)
        moved = False
        if not session and legacy and fv.spec.session.enabled:
            # this function's if nobody else's: moved to its own cookie; else not sent here
            try:
                moved = await rt.tasks.session_owner(check_session_id(legacy)) in (None, name)
            except FunctionAIError:  # a malformed old cookie: ignored
                moved = False
            session = legacy if moved else None
        session = session or self.get_query_argument("session", None)
        assigned = session is None and fv.spec.session.enabled
        if assigned:
            session = f"s-{uuid.uuid4().hex[:20]}"
        if not fv.spec.session.enabled:
            session = None
        if session is not None:
            check_session_id(session)  # 400 before it reaches a header or a cookie
        event = self.json_body()
        if session is not None:
            self.set_header(SESSION_HEADER, session)
            self._keep_headers = {SESSION_HEADER: session}  # on error answers too
            if assigned or moved:  # the client named none (or in the old cookie): keep it for this function's next call
                self.set_cookie(cookie, session, path=f"{self.base_url}functionai/invoke/{name}", httponly=True, samesite="Strict")
        if moved:
            self.clear_cookie(SESSION_COOKIE, path=self.base_url)
        if "text/event-stream" in self.request.headers.get("Accept", ""):
            if session is not None:  # another's session is a 404, not an error event of a 200 stream
                await rt.check_session(session, self.principal)
            await self._stream(name, event, session)
            return
        result = await rt.invoke(name, event, session=session, principal=self.principal)
        self.set_header("X-Functionai-Instance-Id", result.instance_id)
        if result.cold_start is not None:
            self.set_header("X-Functionai-Cold-Start", result.cold_start.header())
        self.set_header("Content-Type", "application/json")
        self.finish(dumps(result.value))

    async def _stream(self, name: str, event: Any, session: str | None) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        try:
            async for item in self.runtime.stream(name, event, session=session, principal=self.principal):
                self.write(f"data: {dumps(item)}\n\n")
                await self.flush()
            self.write("event: end\ndata: {}\n\n")
        except FunctionAIError as exc:
            self.write(f"event: error\ndata: {dumps({'error': exc.to_dict()}, default=str)}\n\n")
        except StreamClosedError:
            return
        self.finish()


# -- the lean route -------------------------------------------------------------------------


class LeanInvokeRoute(Router):
    """The gateway's hot path: the routing rule in front of every other one
    for ``POST <base_url>functionai/invoke/<function>``.

    A request it can answer exactly as :class:`InvokeHandler` would, from its
    headers alone, it answers without a ``RequestHandler``: the server's token
    in ``Authorization`` (``token``/``Bearer``, compared in constant time)
    with Jupyter's stock identity provider and authorizer, a Host already
    found good, the session in ``X-Functionai-Session-Id`` (or a function
    without sessions), a loaded function, a ``Content-Length`` within the
    function's payload limit, no query string, no event stream, no content
    encoding, no ``allow_origin_pat`` to match, a started runtime.  Everything
    else (a key, a cookie, a wrong token, a new session, an unknown function,
    an oversized body, SSE, a custom authenticator...) goes to
    :class:`InvokeHandler` unchanged, so every refusal and every browser path
    keeps its one implementation.

    What it skips is what only the handler's generality costs: a handler
    object per call with its default headers, matching the ~40 routes of a
    JupyterLab server, and the access-log line of a success (written only
    when the log is at DEBUG). What it keeps: the same answer (body, status,
    the handler's headers: security, CORS, session, instance, cold start), the
    same error objects, Jupyter's API-activity time and its request-duration
    metric.  ``served`` and ``passed`` count the two ways.
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = app.settings
        self.served = 0
        self.passed = 0
        self._date = (0, "")
        self._static: list[tuple[str, str]] | None = None
        self._metrics: dict[int, Any] = {}
        self._debug: tuple[logging.Logger | None, float, bool] = (None, 0.0, False)
        self._calls: set[asyncio.Task[None]] = set()

    @classmethod
    def install(cls, app: web.Application) -> LeanInvokeRoute:
        """Put the rule first in ``app``'s router (the full route stays where it is)."""
        route = cls(app)
        pattern = url_path_join(app.settings.get("base_url", "/"), r"/functionai/invoke/(?P<name>[^/]+)$")
        app.default_router.rules.insert(0, Rule(PathMatches(pattern), route))
        app.settings["functionai_lean_route"] = route
        return route

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs: Any) -> httputil.HTTPMessageDelegate | None:
        path_kwargs = kwargs.get("path_kwargs") or {}
        call = self._lean(request, path_kwargs)
        if call is not None:
            self.served += 1
            return call
        self.passed += 1
        return self.app.get_handler_delegate(request, InvokeHandler, path_args=kwargs.get("path_args"), path_kwargs=path_kwargs)

    def _lean(self, request: httputil.HTTPServerRequest, path_kwargs: dict[str, Any]) -> _LeanCall | None:
        """A lean call for ``request``, or None when the handler must answer it."""
        headers = request.headers
        if request.method != "POST" or request.query:
            return None
        settings = self.settings
        ip = settings.get("identity_provider")
        if ip is None or type(ip) not in STOCK_PROVIDERS or not ip.token or type(settings.get("authorizer")) is not AllowAllAuthorizer:
            return None
        if settings.get("allow_origin_pat") and not settings.get("allow_origin"):  # (the handler matches the Origin)
            return None
        scheme, _, cred = headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer") or not hmac.compare_digest(cred.strip().encode(), ip.token.encode()):
            return None
        if not settings.get("functionai_host_ok", {}).get(request.host):  # (the handler checks a Host not seen yet)
            return None
        if "Content-Encoding" in headers or "Transfer-Encoding" in headers or "text/event-stream" in headers.get("Accept", ""):
            return None
        rt = settings["functionai_runtime"]
        if not rt.started:
            return None
        raw = path_kwargs.get("name")
        try:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            return None
        fv = rt.active_function(name)
        if fv is None:
            return None
        session = headers.get(SESSION_HEADER)
        if fv.spec.session.enabled:
            if not session or not SESSION_ID_RE.match(session):
                return None
        else:
            session = None
        declared = headers.get("Content-Length", "0").strip()
        if not declared.isdigit() or int(declared) > int(fv.spec.limits.max_payload_bytes):
            return None
        return _LeanCall(self, request, name, session)

    # -- answers -----------------------------------------------------------------------

    def headers(self, request: httputil.HTTPServerRequest, cors: bool = True) -> httputil.HTTPHeaders:
        """What the handler's answers carry: tornado's own headers, Jupyter's
        security headers (its ``headers`` setting included) and, unless it is
        an error answer (Jupyter's are sent without), CORS for a
        token-authenticated request."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, httputil.format_timestamp(now))
        if self._static is None:
            self._static = self._static_headers()
        h = httputil.HTTPHeaders()
        for name, value in self._static:
            h[name] = value
        h["Date"] = self._date[1]
        if not cors:
            return h
        settings = self.settings
        if settings.get("allow_origin"):
            h["Access-Control-Allow-Origin"] = settings["allow_origin"]
        elif "Access-Control-Allow-Origin" not in settings.get("headers", {}):  # Jupyter: a token request may come from anywhere
            h["Access-Control-Allow-Origin"] = request.headers.get("Origin", "")
        if settings.get("allow_credentials"):
            h["Access-Control-Allow-Credentials"] = "true"
        return h

    def _static_headers(self) -> list[tuple[str, str]]:
        settings = self.settings
        user = settings.get("headers", {})
        out = {"Server": f"TornadoServer/{tornado.version}", "Content-Type": "application/json", "X-Content-Type-Options": "nosniff", **user}
        csp = user.get("Content-Security-Policy")
        if csp is None:
            report = settings.get("csp_report_uri", url_path_join(settings.get("base_url", "/"), csp_report_uri))
            csp = f"frame-ancestors 'self'; report-uri {report}"
        out["Content-Security-Policy"] = f"{csp}; default-src 'none'"
        out["Content-Type"] = "application/json"
        return list(out.items())

    def answered(self, request: httputil.HTTPServerRequest, status: int) -> None:
        """Jupyter's bookkeeping of an API request: its activity time, its
        duration metric, the access log (a success at DEBUG only)."""
        self.settings["api_last_activity"] = utcnow()
        seconds = request.request_time()
        metric = self._metrics.get(status)
        if metric is None:
            metric = self._metrics[status] = HTTP_REQUEST_DURATION_SECONDS.labels(
                method="POST", handler=f"{InvokeHandler.__module__}.InvokeHandler", status_code=status
            )
        metric.observe(seconds)
        logger = jupyter_log()
        level = logging.DEBUG if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        if level == logging.DEBUG and not self._debug_written(logger):
            return
        if logger.isEnabledFor(level):
            logger.log(level, "%d %s %s (token@%s) %.2fms", status, request.method, request.path, request.remote_ip, seconds * 1000)

    def _debug_written(self, logger: logging.Logger) -> bool:
        """Whether a DEBUG record of ``logger`` reaches a handler that writes
        it (looked up at most once a second). Jupyter's loggers are usually
        enabled for DEBUG while every handler drops it: making the record of
        each success only to drop it cost ~4 % of the gateway's time."""
        now = time.monotonic()
        if self._debug[0] is logger and now - self._debug[1] < 1.0:
            return self._debug[2]
        written = logger.isEnabledFor(logging.DEBUG) and any(h.level <= logging.DEBUG for lg in _chain(logger) for h in lg.handlers)
        self._debug = (logger, now, written)
        return written


def _chain(logger: logging.Logger) -> list[logging.Logger]:
    """``logger`` and the ancestors its records propagate to."""
    out: list[logging.Logger] = []
    lg: logging.Logger | None = logger
    while lg is not None:
        out.append(lg)
        lg = lg.parent if lg.propagate else None
    return out


class _LeanCall(httputil.HTTPMessageDelegate):
    """One call on the lean route: the body is read, the invocation runs, the answer is written."""

    def __init__(self, route: LeanInvokeRoute, request: httputil.HTTPServerRequest, name: str, session: str | None) -> None:
        self.route, self.request, self.name, self.session = route, request, name, session
        self._chunks: list[bytes] = []
        self._closed = False

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def on_connection_close(self) -> None:
        self._closed = True

    def finish(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run())
        self.route._calls.add(task)  # (a reference until it is done)
        task.add_done_callback(self.route._calls.discard)

    async def _run(self) -> None:
        route, request = self.route, self.request
        try:
            body = b"".join(self._chunks)
            event = parse_json_body(body, allow_nul=True) if body else None
            result = await route.settings["functionai_runtime"].invoke(self.name, event, session=self.session)
            h = route.headers(request)
            h["X-Functionai-Instance-Id"] = result.instance_id
            if result.cold_start is not None:
                h["X-Functionai-Cold-Start"] = result.cold_start.header()
            status, out = 200, dumps(result.value)
        except Exception as exc:
            if isinstance(exc, FunctionAIError):
                status = exc.status
                jupyter_log().info("%s %s -> %s %s: %s", request.method, request.path, exc.status, exc.kind, exc.message)
            else:
                status = 500
                jupyter_log().error("Uncaught exception %s %s", request.method, request.path, exc_info=exc)
            h = route.headers(request, cors=False)
            err, extra = error_answer(exc)
            for k, v in extra.items():
                h[k] = v
            out = dumps({"error": err}, default=str)
        if self.session is not None:
            h[SESSION_HEADER] = self.session
        data = out.encode()
        h["Content-Length"] = str(len(data))
        conn = request.connection
        if not self._closed and conn is not None:
            try:
                conn.write_headers(httputil.ResponseStartLine("", status, httputil.responses.get(status, "Unknown")), h, data)
                conn.finish()
            except StreamClosedError:
                pass
        route.answered(request, status)
