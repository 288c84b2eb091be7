"""The one place that turns domain errors into HTTP answers, the
authentication decorators every verb carries, and the request-body limit.

Authentication failures say what happened: a request with no credential, a
wrong token or login cookie, or an invalid/revoked key is answered ``401``
with ``WWW-Authenticate: Bearer realm="functionai"`` (RFC 6750; Jupyter's own
``Authorization: token T`` works as well) and ``{"error": {"kind":
"unauthorized", "message": ...}}``; a credential that is valid but not for
this route is ``403 forbidden``. A browser request authenticated by its login
cookie still needs the XSRF token (``403`` without it).

Request bodies are streamed (``@web.stream_request_body``): ``prepare`` runs
once the headers are in, so a ``Content-Length`` over the route's limit is
answered ``413 payload_too_large`` before the body is read (the connection is
then closed), and a chunked body is refused as soon as it passes the limit.

Request bodies are parsed in one place (:func:`parse_json_body`, used by
``BaseHandler.json_body``, the gateway and the MCP endpoint), which answers
``400 bad_payload`` naming the problem for what JSON (RFC 8259, I-JSON RFC
7493) does not carry or what we do not accept:

* ``NaN``, ``Infinity``, ``-Infinity`` and numbers that overflow a double
  (``1e999``): no JSON number is infinite;
* nesting deeper than :data:`~jupyter_functionai.sandbox.protocol.MAX_DEPTH`
  (128, the sandbox protocol's own limit: a deeper event could not reach a
  function anyway), so no body can make the parser recurse;
* a lone surrogate (``"\\ud800"``) in any string or key: it is no Unicode
  character, cannot be encoded to UTF-8 and so cannot be stored or sent on;
* a NUL character (``"\\u0000"``) in any string or key of a REST API body
  (names, paths, notes, specs, code: none may hold one, and a path with one
  fails every system call). Data passed on to a function is exempt: the
  event of an invocation or a task and an MCP message may hold NUL
  (handlers set ``body_allows_nul``).

Every JSON we write is written with ``allow_nan=False`` (:func:`dumps`).
"""

from __future__ import annotations

import functools
import hmac
import itertools
import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from jupyter_server import CallContext
from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..errors import BadPayload, FunctionAIError, NoCapacity, PayloadTooLarge
from ..mcp.manager import McpManager
from ..runtime import Runtime
from ..sandbox.protocol import MAX_DEPTH

STOCK_PROVIDERS = (IdentityProvider, PasswordIdentityProvider)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

MIB = 1 << 20
API_MAX_BODY_BYTES = 16 * MIB  # a REST API body (spec + code, a task's event...); settings["functionai_max_body_bytes"]
REFUSED_BODY_BYTES = MIB  # a body of a refused request that is still read (and dropped) before the 401
KEY_PREFIX = "fai_"
REALM = "functionai"


class Unauthorized(FunctionAIError):
    """No credential, or one that is not valid (``401`` + ``WWW-Authenticate``)."""

    kind = "unauthorized"
    status = 401

    def __init__(self, message: str, *, invalid: bool = True, **details: Any) -> None:
        super().__init__(message, **details)
        self.invalid = invalid  # a credential was sent (RFC 6750 error="invalid_token")

    def challenge(self) -> str:
        if not self.invalid:
            return f'Bearer realm="{REALM}"'
        why = self.message.replace("\\", "").replace('"', "'")
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{why}"'


class Forbidden(FunctionAIError):
    """A valid credential that does not open this route (a key for another function)."""

    kind = "forbidden"
    status = 403


def _no_constant(name: str) -> Any:
    raise BadPayload(f"the request body holds {name}, which is not a JSON number (JSON has no NaN or Infinity)", problem="non_finite_number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise BadPayload(f"the number {shown} in the request body is out of range (it overflows a double)", problem="non_finite_number")
    return value


#: What a body needs a second look for: a surrogate or NUL escape (raw ones are
#: invalid UTF-8 / JSON already).
_ESCAPES = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_BAD_SURROGATE = re.compile("[\ud800-\udfff]")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = [0] * 256
for _c in b"[{":
    _STEP[_c] = 1
for _c in b"]}":
    _STEP[_c] = -1


def _depth(raw: bytes) -> int:
    """The deepest nesting of a valid UTF-8 JSON text, in C-speed steps
    (no walk of the parsed value)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _where(path: tuple[Any, ...]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if str(p).isidentifier() else f"[{json.dumps(str(p))}]" for p in path)


def _bad_text(text: str, path: tuple[Any, ...], what: str, allow_nul: bool) -> None:
    m = (_BAD_SURROGATE if allow_nul else _BAD_CHARS).search(text)
    if m is None:
        return
    where = _where(path)
    if m.group() == "\x00":
        raise BadPayload(
            f"the {what} at {where} holds a NUL character (\\u0000), which no name, path or text of this API may hold",
            problem="nul_character",
            at=where,
        )
    raise BadPayload(
        f"the {what} at {where} holds a lone surrogate (\\u{ord(m.group()):04x}), which is not a Unicode character: "
        "send the character itself or a pair of surrogates",
        problem="lone_surrogate",
        at=where,
    )


def check_json_value(value: Any, *, allow_nul: bool = False, strings: bool = True, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`BadPayload` for nesting deeper than ``limit``, a
    non-finite float, or (``strings``) a lone surrogate or (unless
    ``allow_nul``) a NUL in a string or key. One pass without paths; the
    place of a problem is looked for only once there is one."""
    bad = _BAD_SURROGATE if allow_nul else _BAD_CHARS
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            if depth >= limit:
                raise BadPayload(f"the request body is nested deeper than {limit} levels", problem="too_deep", limit=limit)
            if strings and any(bad.search(k) for k in v):
                break
            stack.extend((x, depth + 1) for x in v.values() if isinstance(x, (dict, list, str, float)))
        elif isinstance(v, list):
            if depth >= limit:
                raise BadPayload(f"the request body is nested deeper than {limit} levels", problem="too_deep", limit=limit)
            stack.extend((x, depth + 1) for x in v if isinstance(x, (dict, list, str, float)))
        elif isinstance(v, str):
            if strings and bad.search(v):
                break
        elif isinstance(v, float) and not math.isfinite(v):
            break
    else:
        return
    _locate(value, (), allow_nul)


def _locate(v: Any, path: tuple[Any, ...], allow_nul: bool) -> None:
    """Raise the BadPayload for the first bad string, key or number under ``v``."""
    if isinstance(v, str):
        _bad_text(v, path, "string", allow_nul)
    elif isinstance(v, float) and not math.isfinite(v):
        raise BadPayload(f"the number at {_where(path)} is not finite", problem="non_finite_number")
    elif isinstance(v, dict):
        for k, x in v.items():
            _bad_text(k, (*path, k), "key", allow_nul)
            _locate(x, (*path, k), allow_nul)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _locate(x, (*path, i), allow_nul)


def parse_json_body(body: bytes | str, *, allow_nul: bool = False) -> Any:
    """A request body as JSON, or :class:`BadPayload` saying what is wrong
    with it (see the module docstring); never RecursionError."""
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadPayload(f"the request body is nested too deeply (the limit is {MAX_DEPTH} levels)", problem="too_deep", limit=MAX_DEPTH) from None
    except BadPayload:
        raise
    except ValueError as exc:  # (UnicodeDecodeError too: not UTF-8)
        raise BadPayload(f"the request body is not valid JSON: {exc}", problem="not_json") from None
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    if b"\x00" in raw or _ESCAPES.search(raw) is not None:  # (a UTF-16/32 body has NUL bytes)
        check_json_value(value, allow_nul=allow_nul)
    elif raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(raw) > MAX_DEPTH:
        raise BadPayload(f"the request body is nested deeper than {MAX_DEPTH} levels", problem="too_deep", limit=MAX_DEPTH)
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` with ``allow_nan=False``: what we write is JSON. A
    non-finite float (none should reach here: bodies and instance results
    refuse them) is written as ``null`` rather than failing the answer."""
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False, **kw)


def error_answer(exc: BaseException | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``error`` object of an error answer for ``exc`` and the headers
    that go with it (the instance that failed, an authentication challenge).
    Anything but a domain error is an internal error: no message or
    traceback of it leaves the server."""
    headers: dict[str, str] = {}
    if not isinstance(exc, FunctionAIError):
        return {"kind": "internal", "message": "internal server error (see the server log)"}, headers
    if exc.details.get("instance_id"):
        headers["X-Functionai-Instance-Id"] = str(exc.details["instance_id"])
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = exc.challenge()
    return exc.to_dict(), headers


def jupyter_auth(method: F) -> F:
    """``@web.authenticated`` + ``@authorized`` (resource ``functionai``)."""
    wrapped = web.authenticated(authorized(resource="functionai")(method))
    wrapped._functionai_auth = "jupyter"  # type: ignore[attr-defined]
    return wrapped  # type: ignore[return-value]


@web.stream_request_body
class BaseHandler(APIHandler):
    auth_resource = "functionai"
    _body_limit = API_MAX_BODY_BYTES
    _body: bytes | None = None
    _chunks: list[bytes] | None = None
    _received = 0

    _refusal: FunctionAIError | None = None
    #: The body is data for a function (an event): NUL may be in its strings.
    body_allows_nul = False

    def __init_subclass__(cls, **kw: Any) -> None:
        """Every verb first raises a refusal that ``prepare`` held back."""
        super().__init_subclass__(**kw)
        for verb in ("get", "post", "put", "patch", "delete", "head"):
            fn = cls.__dict__.get(verb)
            if fn is None or getattr(fn, "_functionai_refusal", False):
                continue

            @functools.wraps(fn)
            async def checked(self: BaseHandler, *args: Any, __fn: Any = fn, **kwargs: Any) -> Any:
                if self._refusal is not None:
                    raise self._refusal
                return await __fn(self, *args, **kwargs)

            checked._functionai_refusal = True  # type: ignore[attr-defined]
            setattr(cls, verb, checked)

    async def prepare(self) -> None:  # type: ignore[override]
        """Runs once the headers are in (the body streams in after it).

        A refused credential on a small body is answered after the body has
        been read (and dropped): answering first would close the connection
        under a client still sending, which then sees a reset instead of the
        401.  A large one is answered at once."""
        try:
            await self.authenticate()
        except (Unauthorized, Forbidden) as exc:
            declared = self.request.headers.get("Content-Length", "").strip()
            if not declared.isdigit() or int(declared) == 0 or int(declared) > REFUSED_BODY_BYTES:
                raise
            self._refusal = exc
            self._body_limit = REFUSED_BODY_BYTES
            return
        await self.settings["functionai_stack"].ensure_started()
        self.limit_body(self.body_limit())

    async def authenticate(self) -> None:
        """Who sends this request (the lean token path, else Jupyter's)."""
        if not self._server_token_auth():
            await self._refuse_key_here()
            await super().prepare()

    # -- the request body ----------------------------------------------------------

    def body_limit(self) -> int:
        """The most bytes this request's body may have."""
        return int(self.settings.get("functionai_max_body_bytes", API_MAX_BODY_BYTES))

    def limit_body(self, limit: int) -> None:
        """Refuse a body over ``limit`` bytes from its Content-Length, before
        it is read; a chunked body is refused in ``data_received``."""
        self._body_limit = limit
        conn: Any = self.request.connection
        declared = self.request.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            if hasattr(conn, "set_max_body_size"):
                # let tornado start the read that closing the connection after
                # this answer cuts short, rather than add its own bare 400
                conn.set_max_body_size(int(declared))
            raise PayloadTooLarge(f"the request body is {int(declared)} bytes, over the limit of {limit} bytes", limit=limit)
        server_max = int(getattr(self.serverapp, "max_body_size", 0) or 0)
        if limit >= server_max and hasattr(conn, "set_max_body_size"):
            conn.set_max_body_size(limit + MIB)  # a function's limit above the server's own: ours decides

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._received += len(chunk)
        if self._received > self._body_limit:  # a chunked body passed the limit: answer now, read no more
            self._chunks = None
            exc = PayloadTooLarge(f"the request body is over the limit of {self._body_limit} bytes", limit=self._body_limit)
            self.log_exception(type(exc), exc, None)
            self.send_error(413, exc_info=(type(exc), exc, None))
            return
        if self._refusal is not None:
            return  # read and dropped: the verb answers with the refusal
        if self._chunks is None:
            self._chunks = []
        self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        """The request body, read in full before the verb runs."""
        if self._body is None:
            self._body = self.request.body = b"".join(self._chunks or ()) or self.request.body
            self._chunks = None
        return self._body

    # -- authentication ------------------------------------------------------------

    def _credential(self) -> tuple[str, str]:
        scheme, _, cred = self.request.headers.get("Authorization", "").partition(" ")
        return scheme.strip().lower(), cred.strip()

    async def _refuse_key_here(self) -> None:
        """A function key on a route that keys do not open: say so."""
        scheme, cred = self._credential()
        if scheme != "bearer" or not cred.startswith(KEY_PREFIX):
            return
        if not self.check_host():
            raise web.HTTPError(403)
        await self.settings["functionai_stack"].ensure_started()
        rt = self.settings["functionai_runtime"]
        scope = await rt.key_function(cred)
        if scope is None:
            raise Unauthorized("invalid or revoked function key")
        raise Forbidden(
            f"this key is for {scope!r}: a key opens only its function's gateway (functionai/invoke/<function>) "
            "or its MCP server's endpoint; this route needs Jupyter's token"
        )

    def unauthorized(self) -> Unauthorized:
        """Why Jupyter's authentication found no user in this request."""
        scheme, cred = self._credential()
        if self.request.headers.get("Authorization"):
            if scheme not in ("token", "bearer"):
                return Unauthorized(f"unsupported Authorization scheme {scheme!r}: send 'Authorization: Bearer <token>' (or 'token <token>')")
            if not cred:
                return Unauthorized(f"the Authorization header has the scheme {scheme!r} but no token")
            if cred.startswith(KEY_PREFIX):
                return Unauthorized("invalid or revoked function key")
            return Unauthorized("invalid token: it is not this server's token")
        if self.get_query_argument("token", None):
            return Unauthorized("invalid token (in ?token=): it is not this server's token")
        try:
            login_cookie = self.identity_provider.get_cookie_name(self)
        except Exception:  # a custom identity provider
            login_cookie = ""
        if login_cookie and self.get_cookie(login_cookie):
            return Unauthorized("the login cookie is invalid or expired: log in again")
        return Unauthorized(
            "no credential: send 'Authorization: Bearer <server token>' (or a function key for the gateway and MCP endpoints)",
            invalid=False,
        )

    def check_xsrf_cookie(self) -> None:
        """A request with no user is refused as unauthenticated (401) before
        XSRF is judged; a cookie-authenticated one still needs the XSRF token."""
        if getattr(self, "_jupyter_current_user", "unresolved") is None and self.request.method not in ("GET", "HEAD", "OPTIONS"):
            raise self.unauthorized()
        super().check_xsrf_cookie()

    def get_login_url(self) -> str:
        """``@web.authenticated`` on a GET with no user: 401, not a redirect or a bare 403."""
        if not self.current_user:
            raise self.unauthorized()
        return super().get_login_url()

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
        if type(ip) not in STOCK_PROVIDERS or not ip.token:
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
        self.set_cors_headers()  # (what Jupyter's prepare ends with)
        return True

    @property
    def runtime(self) -> Runtime:
        rt: Runtime = self.settings["functionai_runtime"]
        if not rt.started:
            raise NoCapacity("the functionai runtime is not running")
        return rt

    @property
    def mcp(self) -> McpManager:
        mgr: McpManager = self.settings["functionai_mcp"]
        return mgr

    def json_body(self) -> Any:
        body = self.body
        if not body:
            return None
        return parse_json_body(body, allow_nul=self.body_allows_nul)

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
        self.keep_headers(exc)
        if isinstance(exc, web.HTTPError) and not isinstance(exc, FunctionAIError):
            body = {"kind": "http", "message": exc.log_message or self._reason}
        else:
            body, headers = error_answer(exc)
            for name, value in headers.items():
                self.set_header(name, value)
        self.finish(dumps({"error": body}, default=str))

    def keep_headers(self, exc: Any) -> None:
        """Headers an error answer carries (``send_error`` cleared them)."""
        for name, value in getattr(self, "_keep_headers", {}).items():
            self.set_header(name, value)
        if isinstance(exc, Unauthorized):
            self.set_header("WWW-Authenticate", exc.challenge())

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(dumps(obj, default=str))


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

