"""``POST /functionai/invoke/{function}``: JSON in, JSON out, session affinity.

The session comes from the ``X-Functionai-Session-Id`` header, the
``functionai_session`` cookie or ``?session=``, in that order; a session-ful
function called with none gets a new id (returned in the header and the
cookie).  Responses carry ``X-Functionai-Session-Id``,
``X-Functionai-Instance-Id`` and, when the call started an instance,
``X-Functionai-Cold-Start: <path>;ms=<n>``.  Generator handlers stream as
server-sent events when the client accepts ``text/event-stream``.

Authentication: Jupyter's own (token, cookie + XSRF), or a function-scoped key
``Authorization: Bearer fai_...`` valid for this function only.  A key request
carries no cookie credential, so it needs no XSRF token (like Jupyter's token
authentication); the Host check still applies.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable
from typing import Any, cast

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import FunctionAIError
from ..runtime.sessions import check_session_id
from .base import BaseHandler

SESSION_HEADER = "X-Functionai-Session-Id"
SESSION_COOKIE = "functionai_session"
KEY_PREFIX = "fai_"


class InvokeHandler(BaseHandler):
    _key_function: str | None = None

    async def prepare(self) -> None:  # type: ignore[override]
        auth = self.request.headers.get("Authorization", "")
        scheme, _, cred = auth.partition(" ")
        cred = cred.strip()
        if scheme.lower() == "bearer" and cred.startswith(KEY_PREFIX):
            if not self.check_host():
                raise web.HTTPError(403)
            await self.settings["functionai_runtime"].ensure_started()
            function = await self.settings["functionai_runtime"].key_function(cred)
            if function is None:
                raise web.HTTPError(401, "invalid or revoked function key")
            self._key_function = function
            return
        await super().prepare()

    async def post(self, name: str) -> None:
        if self._key_function is not None:
            if self._key_function != name:
                raise web.HTTPError(403, f"this key is for function {self._key_function!r}, not {name!r}")
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
        session = (
            self.request.headers.get(SESSION_HEADER)
            or self.get_cookie(SESSION_COOKIE)
            or self.get_query_argument("session", None)
        )
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
            if assigned:  # the client did not name one: keep it for the next call
                self.set_cookie(SESSION_COOKIE, session, path=self.base_url, httponly=True, samesite="Strict")
        if "text/event-stream" in self.request.headers.get("Accept", ""):
            await self._stream(name, event, session)
            return
        result = await rt.invoke(name, event, session=session)
        self.set_header("X-Functionai-Instance-Id", result.instance_id)
        if result.cold_start is not None:
            self.set_header("X-Functionai-Cold-Start", result.cold_start.header())
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result.value))

    async def _stream(self, name: str, event: Any, session: str | None) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        try:
            async for item in self.runtime.stream(name, event, session=session):
                self.write(f"data: {json.dumps(item)}\n\n")
                await self.flush()
            self.write("event: end\ndata: {}\n\n")
        except FunctionAIError as exc:
            self.write(f"event: error\ndata: {json.dumps({'error': exc.to_dict()})}\n\n")
        except StreamClosedError:
            return
        self.finish()
