"""The one place that turns domain errors into HTTP answers, and the
authentication decorators every verb carries."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from jupyter_server import CallContext
from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..errors import FunctionAIError, NoCapacity
from ..runtime import Runtime

_STOCK_PROVIDERS = (IdentityProvider, PasswordIdentityProvider)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def jupyter_auth(method: F) -> F:
    """``@web.authenticated`` + ``@authorized`` (resource ``functionai``)."""
    wrapped = web.authenticated(authorized(resource="functionai")(method))
    wrapped._functionai_auth = "jupyter"  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]


class BaseHandler(APIHandler):
    auth_resource = "functionai"

    async def prepare(self) -> None:  # type: ignore[override]
        if not self._server_token_auth():
            await super().prepare()
        await self.settings["functionai_runtime"].ensure_started()

    def _server_token_auth(self) -> bool:
        """The hot path for ``Authorization: token <server token>`` (or
        ``Bearer <server token>``, which Jupyter accepts too).

        The same decision Jupyter's own identity providers make (constant-time
        comparison with the server token, then the Host check), without what
        only browsers need: no login cookie is minted and no anonymous user is
        generated per request; one stable token user serves them all.  Any
        other credential, and any custom identity provider (JupyterHub,
        ...), takes Jupyter's full path.
        """
        ip = self.identity_provider
        if type(ip) not in _STOCK_PROVIDERS or not ip.token:
            return False
        scheme, _, cred = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer") or not hmac.compare_digest(cred.strip().encode(), ip.token.encode()):
            return False
        hosts: dict[str, bool] = self.settings.setdefault("functionai_host_ok", {})
        ok = hosts.get(self.request.host)
        if ok is None:
            ok = hosts[self.request.host] = self.check_host()
        if not ok:
            raise web.HTTPError(403)
        user = self.settings.get("functionai_token_user")
        if user is None:
            user = self.settings["functionai_token_user"] = ip.generate_anonymous_user(self)
        CallContext.set(CallContext.JUPYTER_HANDLER, self)
        self.current_user = self._jupyter_current_user = user
        self._token_authenticated = True
        return True

    @property
    def runtime(self) -> Runtime:
        rt: Runtime = self.settings["functionai_runtime"]
        if not rt.started:
            raise NoCapacity("the functionai runtime is not running")
        return rt

    def json_body(self) -> Any:
        if not self.request.body:
            return None
        try:
            return json.loads(self.request.body)
        except ValueError as exc:
            from ..errors import BadPayload

            raise BadPayload(f"the request body is not valid JSON: {exc}") from None

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """A domain error is an answer, not a crash: one line, no traceback."""
        if isinstance(value, FunctionAIError):
            self.log.info("%s %s -> %s %s: %s", self.request.method, self.request.path, value.status, value.kind, value.message)
            return
        super().log_exception(typ, value, tb)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], FunctionAIError):
            status_code = exc_info[1].status
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors are ``{"error": {"kind", "message", ...}}``; a 500 carries no traceback."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_header("Content-Type", "application/json")
        for name, value in getattr(self, "_keep_headers", {}).items():  # send_error cleared them
            self.set_header(name, value)
        if isinstance(exc, FunctionAIError):
            body = exc.to_dict()
            if exc.details.get("instance_id"):
                self.set_header("X-Functionai-Instance-Id", str(exc.details["instance_id"]))
        elif isinstance(exc, web.HTTPError):
            body = {"kind": "http", "message": exc.log_message or self._reason}
        else:
            body = {"kind": "internal", "message": "internal server error (see the server log)"}
        self.finish(json.dumps({"error": body}))

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj, default=str))


def query_int(handler: BaseHandler, name: str, default: int, lo: int = 1, hi: int = 10_000) -> int:
    raw = handler.get_query_argument(name, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        from ..errors import InvalidArgument

        raise InvalidArgument(f"query parameter {name}={raw!r} must be an integer in [{lo}, {hi}]")
    return value

