"""HTTP clients of a running functionai server (``functionai serve``, or any
Jupyter Server with the extension enabled).

    from jupyter_functionai import Client

    fai = Client()                          # finds the server (see below)
    fai.deploy("echo", "def handler(event, ctx):\\n    return event\\n")
    r = fai.invoke("echo", {"x": 1}, session="alice")
    r.value, r.session_id, r.instance_id, r.cold_start

``AsyncClient`` has the same methods as coroutines.

**Finding the server**, the Jupyter way, in this order:

1. the ``url`` / ``token`` arguments;
2. the environment variables ``FUNCTIONAI_URL`` / ``FUNCTIONAI_TOKEN``;
3. the runtime files of running Jupyter servers
   (``jupyter_server.serverapp.list_running_servers()``): the one server
   whose ``/functionai/api/health`` answers is used.  With several such
   servers nothing is guessed: :class:`AmbiguousServer` lists them (URL, pid,
   root dir) and says how to pick one.

The ``functionai`` command and the notebook surfaces (``connect``) put one
more step between 2 and 3: ``FUNCTIONAI_PARENT_URL`` /
``FUNCTIONAI_PARENT_TOKEN``, the server that started this kernel or terminal
(see :func:`choose_server`).  ``client.source`` says which step chose the
server.

A URL given without a token takes the token of the running server with that
URL, if there is one.  When nothing is found, :class:`NoServer` says how to
start one.  The discovery happens at the first request, not in the
constructor.

**Authentication**: ``Authorization: token <T>`` (Jupyter's token); a
function-scoped key (``fai_...``) given as the token is sent as
``Authorization: Bearer fai_...`` instead (it opens that function's invoke
gateway only).  A 401/403 answer raises :class:`Unauthorized`.

**Errors**: a non-2xx answer raises the precise :class:`FunctionAIError`
subclass the server reported (``NotFound``, ``SessionClosed``, ``UserError``
whose ``details["traceback"]`` is the handler's traceback, ``FunctionTimeout``
...), rebuilt with :meth:`FunctionAIError.from_dict`; its ``status`` is the
HTTP status.  Errors of the client itself derive from :class:`ClientError`.

**Timeouts**: ``timeout=`` bounds the wait for the server's answer (default:
900 s for an invoke, whose function may run up to its own ``timeout_s``, 120 s
for the other routes); past it :class:`RequestTimeout` is raised (the call
may still be running on the server).

**One implementation**: every API method is written once, as a coroutine of
:class:`AsyncClient` (tornado's ``AsyncHTTPClient``, a connection per
request; tornado is imported at the first request).  :class:`Client` is
generated from it (``jupyter_functionai._sync``): each of its methods runs the
coroutine on one event loop per process, in a daemon thread, and blocks the
calling thread until it is done.  It works in any thread, including one whose
event loop is running (a kernel's), but it then blocks that loop for the
duration of the call: never call it from the thread of the event loop that runs
the *server itself* (that deadlocks until the timeout); use
:class:`AsyncClient` there, or ``await asyncio.to_thread(client.invoke, ...)``.
HTTP proxies (``HTTP_PROXY``) are not used.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._sync import Blocking, blocking, shared_portal
from .errors import FunctionAIError, InvalidArgument, InvalidSpec, SandboxForbidden
from .spec import FunctionSpec

__all__ = [
    "DEFAULT_TIMEOUT",
    "AmbiguousServer",
    "AsyncClient",
    "BadResponse",
    "Client",
    "ClientError",
    "InvokeResponse",
    "NoServer",
    "RequestTimeout",
    "ServerChoice",
    "Unauthorized",
    "choose_server",
]

TASK_FINAL_STATES = ("succeeded", "failed", "cancelled", "timed_out")
ENV_URL = "FUNCTIONAI_URL"
ENV_TOKEN = "FUNCTIONAI_TOKEN"
# set by the server extension in its own environment, so the kernels and
# terminals it starts know which server started them (see ``connect``)
PARENT_URL = "FUNCTIONAI_PARENT_URL"
PARENT_TOKEN = "FUNCTIONAI_PARENT_TOKEN"
API = "functionai/api"
SESSION_HEADER = "X-Functionai-Session-Id"
INSTANCE_HEADER = "X-Functionai-Instance-Id"
COLD_START_HEADER = "X-Functionai-Cold-Start"
# Client-side limits on a whole request, unless ``timeout=`` says otherwise: a
# call may run as long as its function's timeout_s (600 s by default); the
# other routes answer at once.
DEFAULT_TIMEOUT = 900.0
API_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 3.0
MCP_ADD_WAIT = 600.0
#: the call statistics the server adds to each tool of ``mcp_server(name)["tools"]``
TOOL_STATS = ("calls", "errors", "p50_ms", "p95_ms", "last_called_at", "last_error")
# ``unix:<path>``: the server is reached through a Unix socket at <path> (the
# relay of a sandbox kernel, see jupyter_functionai/kernel/relay.py)
UNIX_SCHEME = "unix:"
UNIX_HOST = "http://functionai.relay/"
HOW_TO_START = "start one with `functionai serve` or set FUNCTIONAI_URL and FUNCTIONAI_TOKEN"
HOW_TO_PICK = "pick one with --url URL --token TOKEN, or export FUNCTIONAI_URL=URL FUNCTIONAI_TOKEN=TOKEN"


# -- errors of the client itself -----------------------------------------------------------


class ClientError(FunctionAIError):
    """An error of the client (no server, rejected credentials, no valid answer)."""

    kind = "client_error"
    status = 0


class NoServer(ClientError, ConnectionError):
    """No functionai server was found, or the one named cannot be reached."""

    kind = "no_server"
    status = 503


class AmbiguousServer(NoServer):
    """Several running Jupyter servers have the functionai extension and none was named."""

    kind = "ambiguous_server"
    status = 409


class Unauthorized(ClientError, PermissionError):
    """The server answered 401 or 403: the token (or key) is missing, wrong or revoked."""

    kind = "unauthorized"
    status = 401


class RequestTimeout(ClientError, TimeoutError):
    """No answer within the client's timeout (the call may still be running)."""

    kind = "request_timeout"
    status = 504


class BadResponse(ClientError):
    """The server's answer is not the JSON the API defines (e.g. the extension is not loaded)."""

    kind = "bad_response"
    status = 502


@dataclass
class InvokeResponse:
    """The answer of ``POST /functionai/invoke/{name}``."""

    value: Any
    session_id: str | None
    instance_id: str | None
    cold_start: str | None  # "<path>;ms=<n>" when the call started an instance
    status: int
    headers: dict[str, str] = field(default_factory=dict, repr=False)


# -- the request plumbing --------------------------------------------


@dataclass
class _Request:
    method: str
    path: str  # relative to the base URL, no leading "/"
    query: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    has_body: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    wait: float = 0.0  # the server may hold the answer this long (long-poll)

    def url(self, base: str) -> str:
        url = base.rstrip("/") + "/" + self.path
        q = {k: str(v) for k, v in self.query.items() if v is not None}
        return url + ("?" + urllib.parse.urlencode(q) if q else "")

    def data(self) -> bytes | None:
        if not self.has_body:
            return b"" if self.method in ("POST", "PUT", "PATCH") else None
        return json.dumps(self.body).encode()


_UNIX_DIRS: dict[str, int] = {}


def unix_address(path: str) -> str:
    """``path`` as a Unix socket address: one too long for ``sun_path``
    (~107 bytes) is reached through a descriptor of its directory
    (``/proc/self/fd/N/name``), kept open for the process."""
    if len(os.fsencode(path)) < 100:
        return path
    parent, name = os.path.split(path)
    fd = _UNIX_DIRS.get(parent)
    if fd is None:
        fd = _UNIX_DIRS[parent] = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{name}"


def split_unix_url(url: str) -> tuple[str, str | None]:
    """``unix:<socket>/functionai/...`` as (an HTTP URL for the path, the
    socket's address); any other URL as (itself, None)."""
    if not url.startswith(UNIX_SCHEME):
        return url, None
    at = url.find("/functionai/")
    sock, path = (url[len(UNIX_SCHEME):at], url[at:]) if at >= 0 else (url[len(UNIX_SCHEME):], "/")
    return UNIX_HOST.rstrip("/") + path, unix_address(sock)


class _UnixResolver:
    """A tornado resolver that sends every connection to one Unix socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def resolve(self, host: str, port: int, family: Any = None) -> list[tuple[int, Any]]:
        import socket

        return [(socket.AF_UNIX, unix_address(self.path))]

    def close(self) -> None:
        pass


@dataclass
class _Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def _fields(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _quote(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


def _auth_headers(token: str | None) -> dict[str, str]:
    if not token:
        return {}
    if token.startswith("fai_"):
        return {"Authorization": f"Bearer {token}"}
    return {"Authorization": f"token {token}"}


def _normalise_url(url: str) -> str:
    url = url.strip()
    if url.startswith(UNIX_SCHEME):
        return url  # a Unix socket (a sandbox kernel's relay): kept as given
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/") + "/"


def _same_server(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(_normalise_url(a)), urllib.parse.urlsplit(_normalise_url(b))

    def host(h: str | None) -> str:
        h = (h or "").lower()
        return "127.0.0.1" if h in ("localhost", "::1", "0.0.0.0", "") else h

    return (pa.scheme, host(pa.hostname), pa.port, pa.path) == (pb.scheme, host(pb.hostname), pb.port, pb.path)


def _running_servers() -> list[dict[str, Any]]:
    """Running Jupyter servers from their runtime files, newest first."""
    try:
        from jupyter_core.paths import jupyter_runtime_dir
        from jupyter_server.serverapp import list_running_servers
    except ImportError:  # pragma: no cover - jupyter_server is a dependency
        return []
    runtime_dir = jupyter_runtime_dir()
    found = []
    for info in list_running_servers(runtime_dir):
        if not isinstance(info, dict) or not info.get("url"):
            continue
        try:
            mtime = os.path.getmtime(os.path.join(runtime_dir, f"jpserver-{info.get('pid')}.json"))
        except OSError:
            mtime = 0.0
        found.append((mtime, info))
    found.sort(key=lambda item: item[0], reverse=True)
    return [info for _, info in found]


def _server_line(info: dict[str, Any]) -> str:
    return f"{_normalise_url(str(info['url']))}  pid {info.get('pid', '?')}  root {info.get('root_dir') or info.get('notebook_dir') or '?'}"


def _ambiguous(found: list[dict[str, Any]]) -> AmbiguousServer:
    lines = "\n".join(f"  {_server_line(info)}" for info in found)
    return AmbiguousServer(f"{len(found)} running Jupyter servers have the functionai extension; {HOW_TO_PICK}:\n{lines}")


def _only_server(found: list[dict[str, Any]], tried: list[str]) -> tuple[str, str, str]:
    """URL, token and source of the one running functionai server in ``found``."""
    if len(found) > 1:
        raise _ambiguous(found)
    if not found:
        where = f" (tried {', '.join(tried)})" if tried else ""
        raise NoServer(f"no running functionai server found{where}: {HOW_TO_START}")
    info = found[0]
    return _normalise_url(str(info["url"])), str(info.get("token") or ""), f"the only running Jupyter server with functionai (pid {info.get('pid', '?')}, root {info.get('root_dir') or '?'})"


@dataclass(frozen=True)
class ServerChoice:
    """The server a command talks to, and why (``source``: ``"--url"``,
    ``"FUNCTIONAI_URL"``, ``"FUNCTIONAI_PARENT_URL ..."`` or ``"the only
    running Jupyter server ..."``)."""

    url: str
    token: str
    source: str

    def describe(self) -> str:
        return f"{self.url} (chosen by {self.source})"


def choose_server(url: str | None = None, token: str | None = None, *, url_source: str = "the url argument", parent: bool = True) -> ServerChoice:
    """The server of the ``functionai`` command and the notebook surfaces, in
    this order: ``url`` (and ``token``); ``FUNCTIONAI_URL`` (and
    ``FUNCTIONAI_TOKEN``); with ``parent``, ``FUNCTIONAI_PARENT_URL`` (and
    ``FUNCTIONAI_PARENT_TOKEN``: the server that started this kernel or
    terminal exports them); else the one running Jupyter server whose
    functionai API answers.  Several such servers raise
    :class:`AmbiguousServer`, none :class:`NoServer`.  Blocking (it may probe
    the running servers): in a coroutine, run it in a thread."""
    explicit = url or os.environ.get(ENV_URL) or None
    if explicit:
        tok = token if token is not None else os.environ.get(ENV_TOKEN)
        base = _normalise_url(explicit)
        if tok is None:
            tok = next((str(s.get("token") or "") for s in _running_servers() if _same_server(s["url"], base)), "")
        return ServerChoice(base, tok, url_source if url else ENV_URL)
    parent_url = os.environ.get(PARENT_URL) if parent else None
    if parent_url:
        return ServerChoice(_normalise_url(parent_url), os.environ.get(PARENT_TOKEN, "") if token is None else token, f"{PARENT_URL}, the Jupyter server that started this process")
    found_url, found_token, source = shared_portal().run(AsyncClient()._discover())
    return ServerChoice(found_url, found_token if token is None else token, source)


def _error_from(resp: _Response, url: str) -> FunctionAIError:
    """The exception for a non-2xx answer."""
    data: Any = None
    try:
        data = json.loads(resp.body) if resp.body else None
    except ValueError:
        data = None
    err_body = data.get("error") if isinstance(data, dict) else None
    if resp.status == 403 and isinstance(err_body, dict) and err_body.get("kind") == SandboxForbidden.kind:
        return SandboxForbidden(str(err_body.get("message") or SandboxForbidden.kind))
    if resp.status in (401, 403):
        why = err_body.get("message") if isinstance(err_body, dict) else None
        reason = why if why and why not in ("Forbidden", "Unauthorized") else ""
        msg = (
            f"unauthorized: the server at {url} rejected the credentials (HTTP {resp.status}"
            + (f": {reason}" if reason else "")
            + "); check --token / FUNCTIONAI_TOKEN"
        )
        unauthorized = Unauthorized(msg, http_status=resp.status)
        unauthorized.status = resp.status
        return unauthorized
    if isinstance(err_body, dict) and isinstance(err_body.get("kind"), str):
        err = FunctionAIError.from_dict(err_body)
        if err.kind != err_body["kind"]:
            err.kind = err_body["kind"]  # a kind this client has no class for ("http", "internal")
        err.status = resp.status
        return err
    text = resp.body[:200].decode("utf-8", "replace").strip()
    hint = " (is the jupyter_functionai extension enabled on that server?)" if resp.status == 404 else ""
    err = BadResponse(f"HTTP {resp.status} {resp.reason} from {url}{hint}" + (f": {text}" if text and not hint else ""), http_status=resp.status)
    err.status = resp.status
    return err


def _decode(resp: _Response, url: str) -> Any:
    if not resp.body:
        return None
    try:
        return json.loads(resp.body)
    except ValueError:
        raise BadResponse(f"the answer of {url} is not JSON (HTTP {resp.status})") from None


def _invoke_response(resp: _Response, url: str) -> InvokeResponse:
    return InvokeResponse(
        value=_decode(resp, url),
        session_id=resp.headers.get(SESSION_HEADER),
        instance_id=resp.headers.get(INSTANCE_HEADER),
        cold_start=resp.headers.get(COLD_START_HEADER),
        status=resp.status,
        headers=dict(resp.headers),
    )


def _spec(name: str, code: str | None, file: str | os.PathLike[str] | None, handler: str, spec_fields: dict[str, Any]) -> FunctionSpec:
    """The spec of a deploy from ``code`` or the ``file``'s text (exactly one)."""
    if (code is None) == (file is None):
        raise InvalidArgument("deploy needs the function's code or a file (exactly one of them)")
    if file is not None:
        path = os.fspath(file)
        try:
            with open(path, encoding="utf-8") as fh:
                code = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidSpec("source.path", path, f"cannot be read: {exc}") from exc
    assert code is not None
    return FunctionSpec.from_code(name, code, handler=handler, **spec_fields)


def _mcp_add_body(
    name: str,
    command: list[str] | None,
    catalog: str | None,
    env: dict[str, str] | None,
    secrets: dict[str, str] | None,
    idle_ttl: float | None,
    network: str | None,
    memory: str | int | None,
    probe: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "probe": probe}
    if command is not None:
        body["command"] = list(command)
    for key, value in (("catalog", catalog), ("env", env), ("secrets", secrets), ("idle_ttl_s", idle_ttl), ("network", network), ("memory", memory)):
        if value is not None:
            body[key] = value
    return body


def _json_body(method: str, path: str, body: Any, **kw: Any) -> _Request:
    return _Request(method, path, body=body, has_body=True, headers={"Content-Type": "application/json"}, **kw)


def _health() -> _Request:
    return _Request("GET", f"{API}/health")


# -- the client: one implementation, async -------------------------------------------------------


class AsyncClient:
    """The coroutine client; :class:`Client` is its blocking twin.  See the
    module docstring."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float | None = None) -> None:
        """``timeout``: seconds to wait for the server's answer (default: 900 for
        an invoke, 120 for the other routes)."""
        self._url_arg = url
        self._token_arg = token
        self.timeout = timeout
        self._url: str | None = None
        self.source = ""  # how ``connect`` chose this server
        self._token: str | None = None

    def _where(self) -> str | None:
        return self._url or self._url_arg or os.environ.get(ENV_URL)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._where()!r})"

    def _explicit(self) -> tuple[str, str | None] | None:
        """The URL and token given as arguments or by the environment (None: discover)."""
        url = self._url_arg or os.environ.get(ENV_URL) or None
        token = self._token_arg if self._token_arg is not None else os.environ.get(ENV_TOKEN)
        if url is None:
            return None
        url = _normalise_url(url)
        if token is None:
            token = next((str(s.get("token") or "") for s in _running_servers() if _same_server(s["url"], url)), "")
        return url, token

    def _timeout(self, req: _Request) -> float:
        if self.timeout is not None:
            return self.timeout + req.wait
        return DEFAULT_TIMEOUT if req.path.startswith("functionai/invoke/") else API_TIMEOUT + req.wait

    # -- moving bytes -----------------------------------------------------------------------

    async def _send(self, base: str, token: str | None, req: _Request, timeout: float) -> _Response:
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

        url = req.url(base)
        http_kw: dict[str, Any] = {}
        if base.startswith(UNIX_SCHEME):
            http_kw["resolver"] = _UnixResolver(base[len(UNIX_SCHEME):])
            url = req.url(UNIX_HOST)
        r = HTTPRequest(
            url,
            method=req.method,
            headers={"Accept": "application/json", **_auth_headers(token), **req.headers},
            body=req.data(),
            request_timeout=timeout,
            connect_timeout=min(CONNECT_TIMEOUT, timeout),
            allow_nonstandard_methods=True,
            follow_redirects=False,
        )
        # an HTTP client of its own per request (a connection per request anyway):
        # no queue shared with other callers on this loop, whose long-polls would hold it
        http = AsyncHTTPClient(force_instance=True, **http_kw)
        try:
            resp = await http.fetch(r, raise_error=False)
        except HTTPClientError as exc:  # 599: timeout or a closed connection
            if "timeout" in str(exc).lower():
                raise RequestTimeout(f"no answer from {url} within {timeout:g} s") from None
            raise NoServer(f"no running functionai server found at {base} ({exc}): {HOW_TO_START}") from None
        except TimeoutError:
            raise RequestTimeout(f"no answer from {url} within {timeout:g} s") from None
        except OSError as exc:
            raise NoServer(f"no running functionai server found at {base} ({exc}): {HOW_TO_START}") from None
        finally:
            http.close()
        return _Response(resp.code, resp.reason or "", {k: v for k, v in resp.headers.get_all()}, resp.body or b"")

    async def _discover(self) -> tuple[str, str, str]:
        """The one running Jupyter server whose functionai API answers."""
        tried, found = [], []
        for info in _running_servers():
            url, token = _normalise_url(info["url"]), str(info.get("token") or "")
            tried.append(url)
            try:
                resp = await self._send(url, token, _health(), PROBE_TIMEOUT)
            except ClientError:
                continue
            if resp.status == 200:
                found.append(info)
        return _only_server(found, tried)

    async def _resolve(self) -> tuple[str, str | None]:
        if self._url is not None:
            return self._url, self._token
        explicit = self._explicit()
        if explicit is not None:
            self._url, self._token = explicit
            return explicit
        self._url, self._token, _ = await self._discover()
        return self._url, self._token

    async def _call(self, req: _Request) -> _Response:
        base, token = await self._resolve()
        resp = await self._send(base, token, req, self._timeout(req))
        if not 200 <= resp.status < 300:
            raise _error_from(resp, req.url(base))
        return resp

    async def _json(self, req: _Request) -> Any:
        resp = await self._call(req)
        return _decode(resp, req.url((await self._resolve())[0]))

    async def get_url(self) -> str:
        """The server's base URL (found on first use)."""
        return (await self._resolve())[0]

    async def close(self) -> None:
        """Nothing to release (a connection per request)."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- API --------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self._json(_health())

    async def deploy(self, name: str, code: str | None = None, *, file: str | os.PathLike[str] | None = None, handler: str = "handler", **spec_fields: Any) -> dict[str, Any]:
        """Deploy a new version from ``code`` or the ``file``'s text; the spec is
        validated here first (a bad one raises InvalidSpec before any request)."""
        body = _spec(name, code, file, handler, spec_fields).to_dict()
        return await self._json(_Request("POST", f"{API}/functions", body=body, has_body=True))

    async def functions(self) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/functions"))

    async def function(self, name: str) -> dict[str, Any]:
        return await self._json(_Request("GET", f"{API}/functions/{_quote(name)}"))

    async def versions(self, name: str) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/functions/{_quote(name)}/versions"))

    async def rollback(self, name: str, version: int) -> dict[str, Any]:
        return await self._json(_Request("POST", f"{API}/functions/{_quote(name)}/rollback", body={"version": version}, has_body=True))

    async def delete(self, name: str) -> None:
        await self._call(_Request("DELETE", f"{API}/functions/{_quote(name)}"))

    async def invoke(self, name: str, event: Any = None, *, session: str | None = None) -> InvokeResponse:
        """Call the function (``POST /functionai/invoke/{name}``), in ``session``
        (new when None); the answer carries the session and instance ids."""
        headers = {"Content-Type": "application/json"}
        if session is not None:
            headers[SESSION_HEADER] = session
        req = _Request("POST", f"functionai/invoke/{_quote(name)}", body=event, has_body=True, headers=headers)
        resp = await self._call(req)
        return _invoke_response(resp, req.url((await self._resolve())[0]))

    async def sessions(self, function: str | None = None, *, status: str | None = None) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/sessions", query={"function": function, "status": status}))

    async def session(self, id: str) -> dict[str, Any]:
        return await self._json(_Request("GET", f"{API}/sessions/{_quote(id)}"))

    async def open_session(self, name: str, session: str | None = None) -> dict[str, Any]:
        body = {} if session is None else {"session": session}
        return await self._json(_Request("POST", f"{API}/functions/{_quote(name)}/sessions", body=body, has_body=True))

    async def close_session(self, id: str) -> None:
        await self._call(_Request("DELETE", f"{API}/sessions/{_quote(id)}"))

    async def instances(self) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/instances"))

    async def coldstarts(self, function: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/coldstarts", query={"function": function, "limit": limit}))

    async def usage(
        self,
        function: str | None = None,
        session: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        step: float | None = None,
        by: str | None = None,
    ) -> list[dict[str, Any]]:
        """The usage ledger: per function and session (and per ``step``
        seconds, a multiple of 60): ``cpu_s``, ``mem_gib_s``, ``gpu_s``,
        ``gpu_mem_gib_s``, ``active_s``, ``idle_s``."""
        return await self._json(_Request("GET", f"{API}/usage", query={"function": function, "session": session, "since": since, "until": until, "step": step, "by": by}))

    async def gpus(self) -> dict[str, Any]:
        """The server's GPUs: devices, memory, MIG instances and the slice each
        instance holds; ``available`` false and ``reason`` where there are none."""
        return await self._json(_Request("GET", f"{API}/gpus"))

    async def scaling(self, function: str | None = None, *, since: float | None = None, limit: int | None = None) -> dict[str, Any]:
        """Scaling on load: ``functions`` (per function with a warm pool or a
        ceiling: ``min_instances``, ``max_instances``, ``target``, ``ready``,
        ``in_flight``, ``queued``) and ``events`` (the scale events, oldest first)."""
        return await self._json(_Request("GET", f"{API}/scaling", query={"function": function, "since": since, "limit": limit}))

    async def invocations(self, function: str | None = None, session: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/invocations", query={"function": function, "session": session, "limit": limit}))

    async def create_key(self, function: str, note: str = "") -> dict[str, Any]:
        return await self._json(_Request("POST", f"{API}/keys", body={"function": function, "note": note}, has_body=True))

    async def keys(self, function: str | None = None) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/keys", query={"function": function}))

    async def revoke_key(self, id: str) -> None:
        await self._call(_Request("DELETE", f"{API}/keys/{_quote(id)}"))

    # -- durable tasks ----------------------------------------------------------------------

    async def submit(self, name: str, event: Any = None, *, session: str | None = None, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        """Enqueue a durable task; returns it (``state`` "queued") at once."""
        query = {"session": session, "timeout": timeout, "retries": retries}
        return await self._json(_json_body("POST", f"{API}/functions/{_quote(name)}/tasks", event, query=query))

    async def task(self, id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """The task; with ``wait`` the server holds the answer up to that many
        seconds (≤ 300) for it to finish."""
        return await self._json(_Request("GET", f"{API}/tasks/{_quote(id)}", query={"wait": wait or None}, wait=wait))

    async def wait_task(self, id: str, timeout: float | None = None, poll: float = 60.0) -> dict[str, Any]:
        """Long-poll until the task is finished (or ``timeout`` s passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            row = await self.task(id, wait=left)
            if row["state"] in TASK_FINAL_STATES or (deadline is not None and time.monotonic() >= deadline):
                return row

    async def tasks(self, function: str | None = None, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/tasks", query={"function": function, "state": state, "limit": limit}))

    async def task_counts(self) -> dict[str, dict[str, int]]:
        return await self._json(_Request("GET", f"{API}/tasks/counts"))

    async def cancel_task(self, id: str) -> dict[str, Any]:
        return await self._json(_Request("POST", f"{API}/tasks/{_quote(id)}/cancel"))

    async def retry_task(self, id: str) -> dict[str, Any]:
        """Run a failed / cancelled / timed-out task again from its last checkpoint."""
        return await self._json(_Request("POST", f"{API}/tasks/{_quote(id)}/retry"))

    # -- notebook runs and schedules ----------------------------------------------------------

    async def start_run(
        self, notebook: str, parameters: dict[str, Any] | None = None, *, timeout: float | None = None, retries: int | None = None,
        output_formats: list[str] | None = None, kernel: str | None = None, name: str | None = None, tags: list[str] | None = None,
        idempotency_token: str | None = None,
    ) -> dict[str, Any]:
        """Run ``notebook`` (a path under the server's root) with papermill in a
        sandbox, as a durable task; returns the run (``state`` "queued") at once.
        The same ``idempotency_token`` gives back the run first made with it."""
        body = _fields(notebook=notebook, parameters=parameters, timeout=timeout, retries=retries, output_formats=output_formats,
                       kernel=kernel, name=name, tags=tags, idempotency_token=idempotency_token)
        return await self._json(_json_body("POST", f"{API}/runs", body))

    async def run(self, id: str, *, wait: float = 0.0) -> dict[str, Any]:
        return await self._json(_Request("GET", f"{API}/runs/{_quote(id)}", query={"wait": wait or None}, wait=wait))

    async def wait_run(self, id: str, timeout: float | None = None, poll: float = 60.0) -> dict[str, Any]:
        """Long-poll until the run is finished (or ``timeout`` s passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            row = await self.run(id, wait=left)
            if row["state"] in TASK_FINAL_STATES or (deadline is not None and time.monotonic() >= deadline):
                return row

    async def runs(self, state: str | None = None, limit: int | None = None, *, tag: str | None = None, schedule: str | None = None) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/runs", query={"state": state, "limit": limit, "tag": tag, "schedule": schedule}))

    async def cancel_run(self, id: str) -> dict[str, Any]:
        return await self._json(_Request("POST", f"{API}/runs/{_quote(id)}/cancel"))

    async def delete_run(self, id: str) -> None:
        """Delete a finished run and its outputs."""
        await self._call(_Request("DELETE", f"{API}/runs/{_quote(id)}"))

    async def run_output(self, id: str, fmt: str = "ipynb") -> bytes:
        """The bytes of a run's output (``ipynb`` or ``html``)."""
        return (await self._call(_Request("GET", f"{API}/runs/{_quote(id)}/outputs/{_quote(fmt)}"))).body

    async def create_schedule(self, notebook: str, cron: str | None, **fields: Any) -> dict[str, Any]:
        """A schedule (job definition): ``timezone``, ``parameters``, ``enabled``,
        ``overlap`` (skip | queue | allow), ``catch_up`` (none | latest),
        ``output_formats``, ``kernel``, ``name``, ``tags``, ``timeout``,
        ``retries``, ``idempotency_token``. ``cron=None``: run on demand only."""
        return await self._json(_json_body("POST", f"{API}/schedules", {"notebook": notebook, "cron": cron, **_fields(**fields)}))

    async def schedules(self) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/schedules"))

    async def schedule(self, id: str) -> dict[str, Any]:
        return await self._json(_Request("GET", f"{API}/schedules/{_quote(id)}"))

    async def update_schedule(self, id: str, **fields: Any) -> dict[str, Any]:
        return await self._json(_json_body("PATCH", f"{API}/schedules/{_quote(id)}", fields))

    async def delete_schedule(self, id: str) -> None:
        await self._call(_Request("DELETE", f"{API}/schedules/{_quote(id)}"))

    async def _schedule_action(self, id: str, action: str) -> dict[str, Any]:
        return await self._json(_Request("POST", f"{API}/schedules/{_quote(id)}/{action}"))

    async def pause_schedule(self, id: str) -> dict[str, Any]:
        return await self._schedule_action(id, "pause")

    async def resume_schedule(self, id: str) -> dict[str, Any]:
        return await self._schedule_action(id, "resume")

    async def run_schedule_now(self, id: str) -> dict[str, Any]:
        """Start a run of the schedule now; returns the run."""
        return await self._schedule_action(id, "run")

    async def schedule_runs(self, id: str, limit: int | None = None) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/schedules/{_quote(id)}/runs", query={"limit": limit}))

    async def openapi(self) -> dict[str, Any]:
        return await self._json(_Request("GET", f"{API}/openapi.json"))

    # -- MCP tool service ---------------------------------------------------------------

    async def mcp_servers(self) -> list[dict[str, Any]]:
        """Hosted MCP servers: kind, endpoint ``path`` (under the base URL), tools, sessions."""
        return await self._json(_Request("GET", f"{API}/mcp/servers"))

    async def mcp_server(self, name: str) -> dict[str, Any]:
        """One hosted MCP server; each of its ``tools`` carries its call
        statistics (``calls``, ``errors``, ``p50_ms``, ``p95_ms``, ...: :data:`TOOL_STATS`)."""
        return await self._json(_Request("GET", f"{API}/mcp/servers/{_quote(name)}"))

    async def mcp_url(self, name: str) -> str:
        """The streamable-HTTP endpoint of the MCP server ``name``."""
        return (await self.get_url()).rstrip("/") + f"/functionai/mcp/{_quote(name)}/mcp"

    async def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header this client sends: what an MCP client
        pointed at :meth:`mcp_url` needs too."""
        return _auth_headers((await self._resolve())[1])

    async def mcp_add(
        self,
        name: str,
        command: list[str] | None = None,
        *,
        catalog: str | None = None,
        env: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        idle_ttl: float | None = None,
        network: str | None = None,
        memory: str | int | None = None,
        probe: bool = True,
    ) -> dict[str, Any]:
        """Host a stdio MCP server: ``command`` (its argv) or ``catalog`` (e.g.
        ``"time"``); each MCP session gets its own process in its own sandbox."""
        body = _mcp_add_body(name, command, catalog, env, secrets, idle_ttl, network, memory, probe)
        # a catalog server may be installed (pip) and every server is probed: allow time
        return await self._json(_Request("POST", f"{API}/mcp/servers", body=body, has_body=True, wait=MCP_ADD_WAIT))

    async def mcp_remove(self, name: str) -> None:
        await self._call(_Request("DELETE", f"{API}/mcp/servers/{_quote(name)}"))

    async def mcp_publish_tool(self, server: str, tool: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish a tool (see ``jupyter_functionai.tool``) on a function-backed server."""
        body = {**tool, "spec": spec} if spec else dict(tool)
        return await self._json(_Request("PUT", f"{API}/mcp/servers/{_quote(server)}/tools/{_quote(tool['name'])}", body=body, has_body=True))

    async def mcp_remove_tool(self, server: str, tool: str) -> dict[str, Any]:
        return await self._json(_Request("DELETE", f"{API}/mcp/servers/{_quote(server)}/tools/{_quote(tool)}"))

    async def mcp_sessions(self, server: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return await self._json(_Request("GET", f"{API}/mcp/sessions", query={"server": server, "status": status}))

    async def mcp_end_session(self, id: str) -> None:
        """End an MCP session, whoever opened it: its client's next request gets 404."""
        await self._call(_Request("DELETE", f"{API}/mcp/sessions/{_quote(id)}"))

    async def mcp_tool_stats(self, server: str) -> dict[str, dict[str, Any]]:
        """Each tool's calls since the server started: ``calls``, ``errors``
        (isError results and JSON-RPC errors), ``p50_ms``, ``p95_ms`` (last
        1,000 calls), ``last_called_at``, ``last_error``."""
        return {t["name"]: {k: t.get(k) for k in TOOL_STATS} for t in (await self.mcp_server(server))["tools"]}


# -- the blocking client: generated from AsyncClient ---------------------------------------------


class Client(Blocking, twin=AsyncClient):
    """The blocking twin of :class:`AsyncClient`: the same methods, each
    running the async one on this process's client loop (a daemon thread)
    and returning its result.  See the module docstring."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float | None = None) -> None:
        """``timeout``: seconds to wait for the server's answer (default: 900 for
        an invoke, 120 for the other routes)."""
        self._impl = AsyncClient(url, token, timeout)
        self.source = ""  # how ``connect`` chose this server

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._impl._where()!r})"

    @property
    def timeout(self) -> float | None:
        return self._impl.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._impl.timeout = value

    @property
    def url(self) -> str:
        """The server's base URL (found on first use)."""
        return self.get_url()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    get_url = blocking(AsyncClient.get_url)
    close = blocking(AsyncClient.close)
    health = blocking(AsyncClient.health)
    deploy = blocking(AsyncClient.deploy)
    functions = blocking(AsyncClient.functions)
    function = blocking(AsyncClient.function)
    versions = blocking(AsyncClient.versions)
    rollback = blocking(AsyncClient.rollback)
    delete = blocking(AsyncClient.delete)
    invoke = blocking(AsyncClient.invoke)
    sessions = blocking(AsyncClient.sessions)
    session = blocking(AsyncClient.session)
    open_session = blocking(AsyncClient.open_session)
    close_session = blocking(AsyncClient.close_session)
    instances = blocking(AsyncClient.instances)
    coldstarts = blocking(AsyncClient.coldstarts)
    gpus = blocking(AsyncClient.gpus)
    scaling = blocking(AsyncClient.scaling)
    usage = blocking(AsyncClient.usage)
    invocations = blocking(AsyncClient.invocations)
    create_key = blocking(AsyncClient.create_key)
    keys = blocking(AsyncClient.keys)
    revoke_key = blocking(AsyncClient.revoke_key)
    submit = blocking(AsyncClient.submit)
    task = blocking(AsyncClient.task)
    wait_task = blocking(AsyncClient.wait_task)
    tasks = blocking(AsyncClient.tasks)
    task_counts = blocking(AsyncClient.task_counts)
    cancel_task = blocking(AsyncClient.cancel_task)
    retry_task = blocking(AsyncClient.retry_task)
    start_run = blocking(AsyncClient.start_run)
    run = blocking(AsyncClient.run)
    wait_run = blocking(AsyncClient.wait_run)
    runs = blocking(AsyncClient.runs)
    cancel_run = blocking(AsyncClient.cancel_run)
    delete_run = blocking(AsyncClient.delete_run)
    run_output = blocking(AsyncClient.run_output)
    create_schedule = blocking(AsyncClient.create_schedule)
    schedules = blocking(AsyncClient.schedules)
    schedule = blocking(AsyncClient.schedule)
    update_schedule = blocking(AsyncClient.update_schedule)
    delete_schedule = blocking(AsyncClient.delete_schedule)
    pause_schedule = blocking(AsyncClient.pause_schedule)
    resume_schedule = blocking(AsyncClient.resume_schedule)
    run_schedule_now = blocking(AsyncClient.run_schedule_now)
    schedule_runs = blocking(AsyncClient.schedule_runs)
    openapi = blocking(AsyncClient.openapi)
    mcp_servers = blocking(AsyncClient.mcp_servers)
    mcp_server = blocking(AsyncClient.mcp_server)
    mcp_url = blocking(AsyncClient.mcp_url)
    auth_headers = blocking(AsyncClient.auth_headers)
    mcp_add = blocking(AsyncClient.mcp_add)
    mcp_remove = blocking(AsyncClient.mcp_remove)
    mcp_publish_tool = blocking(AsyncClient.mcp_publish_tool)
    mcp_remove_tool = blocking(AsyncClient.mcp_remove_tool)
    mcp_sessions = blocking(AsyncClient.mcp_sessions)
    mcp_end_session = blocking(AsyncClient.mcp_end_session)
    mcp_tool_stats = blocking(AsyncClient.mcp_tool_stats)


if TYPE_CHECKING:  # mypy: Client is what the notebook surfaces take (jupyter_functionai.api)
    from .api import ServerClient

    _client_is_a_server_client: type[ServerClient] = Client
