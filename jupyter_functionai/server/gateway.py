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

import uuid
from collections.abc import Awaitable
from typing import Any, cast

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import FunctionAIError
from ..runtime.sessions import SESSION_ID_RE, check_session_id
from .base import KEY_PREFIX, BaseHandler, Forbidden, Unauthorized, dumps

SESSION_HEADER = "X-Functionai-Session-Id"
SESSION_COOKIE = "functionai_session"  # + "_<function>"; the bare name is the legacy, server-wide cookie

__all__ = ["KEY_PREFIX", "SESSION_COOKIE", "SESSION_HEADER", "InvokeHandler", "session_cookie"]


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
