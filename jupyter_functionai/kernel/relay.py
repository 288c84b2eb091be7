"""The host half of a sandbox kernel's way back to its server.

A kernel in a sandbox has no network (by default) and must never hold the
server's token, yet its magics and panels talk to the server that started
it. Each running sandbox kernel therefore gets a *relay*:

* a Unix socket, ``api.sock``, bound by the host in the kernel's own socket
  directory (``<workdir>/.kernel/``, reached through the instance's mount
  namespace; a pathname socket works across network namespaces). Only that
  session's sandbox can see the directory;
* a *kernel key* (``faik-...``, random, per kernel start), which the kernel
  gets as ``FUNCTIONAI_TOKEN``, with ``FUNCTIONAI_URL=unix:<socket path>``.
  The relay answers 401 to anything else, and the key dies with the relay
  (kernel shutdown, restart or the end of its session);
* a policy (:func:`refusal`): the relay forwards only the functionai API
  (``/functionai/api``, ``/functionai/invoke``, ``/functionai/mcp``), never
  Jupyter's own routes (contents, kernels, terminals: the host), and it
  refuses, with 403 ``sandbox_forbidden``, what would let sandboxed code reach past
  its sandbox through the server: functions deployed with a wider network
  than the kernel's own, without the default seccomp filter or from a file
  on the server's machine; rollbacks (an older version may be less
  confined); notebook runs and schedules (they start kernels on the host);
  keys (credentials that outlive the kernel); hosting an MCP server with
  a wider network than the kernel's;
* the forward itself, to the server over HTTP with the server's token,
  which stays in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import os
import re
import secrets
import socket
import stat
import threading
import urllib.parse
from typing import Any

from tornado import httpclient, httpserver, web

from .handler import API_SOCKET

SOCKET_NAME = API_SOCKET
KEY_PREFIX = "faik-"
PREFIXES = ("/functionai/api/", "/functionai/invoke/", "/functionai/mcp/")
MAX_BODY = 64 * 1024 * 1024
FORWARD_TIMEOUT_S = (
    24 * 3600.0
)  # the server bounds each call (timeout_s, long-polls): not the relay
NETWORK_ORDER = {"none": 0, "loopback": 1, "host": 2}
# Request headers passed on (Authorization is replaced by the server's token).
PASS_HEADERS = (
    "Accept",
    "Content-Type",
    "Mcp-Session-Id",
    "Mcp-Protocol-Version",
    "Last-Event-ID",
    "X-Functionai-Session-Id",
)
_DROP_RESPONSE = {
    "content-length",
    "transfer-encoding",
    "connection",
    "set-cookie",
    "server",
    "date",
}

_DEPLOY = re.compile(r"^/functionai/api/functions/?$|^/functionai/api/functions/[^/]+/?$")
_ROLLBACK = re.compile(r"^/functionai/api/functions/[^/]+/rollback/?$")
_KEYS = re.compile(r"^/functionai/api/(keys(/.*)?|functions/[^/]+/keys/?)$")
_MCP_ADD = re.compile(r"^/functionai/api/mcp/servers/?$")
_RUN_CANCEL = re.compile(r"^/functionai/api/runs/[^/]+/cancel/?$")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def refusal(method: str, path: str, body: bytes, network: str) -> str | None:
    """Why a sandbox kernel may not make this request (None: it may).

    ``path`` is the request's path, still percent-encoded, without the query;
    ``network`` the kernel's own network policy."""
    decoded = urllib.parse.unquote(path)
    encoded_separator = any(e in path.lower() for e in ("%2f", "%5c", "%00"))
    if (
        encoded_separator
        or "\\" in decoded
        or "//" in decoded
        or any(seg in (".", "..") for seg in decoded.split("/"))
    ):
        return f"a sandbox kernel may not use the path {path[:200]!r}"
    if not decoded.startswith(PREFIXES):
        return f"a sandbox kernel reaches only the functionai API ({', '.join(p + '...' for p in PREFIXES)}), not {decoded[:200]}"
    if method in ("GET", "HEAD", "OPTIONS") or decoded.startswith(
        ("/functionai/invoke/", "/functionai/mcp/")
    ):
        return None
    if decoded.startswith("/functionai/api/runs") and not _RUN_CANCEL.match(decoded):
        return "notebook runs start kernels on the server's machine: start them from JupyterLab or `functionai run` on the host, not from a sandbox kernel"
    if decoded.startswith("/functionai/api/schedules"):
        return "schedules start notebook runs on the server's machine: change them from JupyterLab or `functionai schedule` on the host, not from a sandbox kernel"
    if _KEYS.match(decoded):
        return "keys are credentials that outlive this kernel: create and revoke them on the host, not from a sandbox kernel"
    if _MCP_ADD.match(decoded) and method == "POST":
        return _network_refusal(_json(body), network, "host an MCP server")
    if _ROLLBACK.match(decoded):
        return "a rollback may activate a version less confined than this kernel: roll back from the sidebar or `functionai rollback` on the host"
    if method in ("POST", "PUT", "PATCH") and _DEPLOY.match(decoded):
        return _deploy_refusal(body, network)
    return None


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return {}  # the server answers 400 for it
    return data if isinstance(data, dict) else {}


def _network_refusal(data: dict[str, Any], network: str, what: str) -> str | None:
    wanted = data.get("network") or "none"
    if not isinstance(wanted, str) or NETWORK_ORDER.get(wanted, 3) > NETWORK_ORDER.get(network, 0):
        return f"a sandbox kernel with network {network!r} may not {what} with network {wanted!r}"
    return None


def _deploy_refusal(body: bytes, network: str) -> str | None:
    data = _json(body)
    wider = _network_refusal(data, network, "deploy a function")
    if wider is not None:
        return wider
    if data.get("seccomp", "default") != "default" or data.get("seccomp_allow"):
        return "a sandbox kernel may not deploy a function without the default seccomp filter"
    source = data.get("source")
    if isinstance(source, dict) and source.get("kind") == "file":
        return "a sandbox kernel may not deploy from a file path (it would be read on the server's machine): send the code"
    return None


class _RelayHandler(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def initialize(self, relay: KernelRelay) -> None:
        self.relay = relay
        self._started = False
        self._gone = False
        self._client: httpclient.AsyncHTTPClient | None = None

    def on_connection_close(self) -> None:
        # the kernel hung up (an event stream it stopped reading): stop the forward
        self._gone = True
        if self._client is not None:
            self._client.close()

    def check_xsrf_cookie(self) -> None:  # no cookies here: the kernel key is a header
        return

    def _deny(self, status: int, kind: str, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"kind": kind, "message": message}}))

    async def _forward(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not hmac.compare_digest(
            given.strip().encode(), self.relay.key.encode()
        ):
            return self._deny(
                401,
                "unauthorized",
                "this kernel's relay needs its kernel key (FUNCTIONAI_TOKEN of the kernel)",
            )
        why = refusal(
            self.request.method or "GET", self.request.path, self.request.body, self.relay.network
        )
        if why is not None:
            return self._deny(403, "sandbox_forbidden", why)
        url = self.relay.target_url.rstrip("/") + self.request.uri
        headers = {k: self.request.headers[k] for k in PASS_HEADERS if k in self.request.headers}
        headers["Authorization"] = f"token {self.relay.target_token}"
        method = self.request.method or "GET"
        body = self.request.body if method in ("POST", "PUT", "PATCH") else None
        if method in ("POST", "PUT", "PATCH") and body is None:
            body = b""
        req = httpclient.HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body,
            allow_nonstandard_methods=True,
            follow_redirects=False,
            request_timeout=FORWARD_TIMEOUT_S,
            connect_timeout=10.0,
            header_callback=self._header_line,
            streaming_callback=self._chunk,
        )
        client = self._client = httpclient.AsyncHTTPClient(
            force_instance=True, max_body_size=MAX_BODY * 4
        )
        try:
            resp = await client.fetch(req, raise_error=False)
        except Exception as exc:  # the server went away, a timeout, or the kernel hung up
            if self._gone:
                return
            if not self._started:
                return self._deny(
                    502, "no_server", f"the relay could not reach the functionai server: {exc}"
                )
            return
        finally:
            client.close()
        if resp.code == 599 and not self._started:  # no HTTP answer at all (refused, reset, timed out)
            if not self._gone:
                self._deny(502, "no_server", f"the relay could not reach the functionai server: {resp.error}")
            return
        if not self._started:
            self.set_status(resp.code, resp.reason)
        if not self._finished and not self._gone:
            self.finish()

    def _header_line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            with contextlib.suppress(ValueError, IndexError):
                self.set_status(int(parts[1]), parts[2] if len(parts) > 2 else None)
            return
        name, _, value = line.partition(":")
        if name.strip().lower() not in _DROP_RESPONSE:
            self.set_header(name.strip(), value.strip())

    def _chunk(self, data: bytes) -> None:
        self._started = True
        if self._gone:
            return
        self.write(data)
        self.flush()  # server-sent events and long answers arrive as they come

    get = head = post = put = patch = delete = options = _forward


class KernelRelay:
    """One kernel's relay (see the module docstring): ``start`` binds the
    socket in the directory ``dir_fd``, ``close`` removes it."""

    def __init__(
        self,
        dir_fd: int,
        target_url: str,
        target_token: str,
        network: str = "none",
        key: str | None = None,
    ) -> None:
        self.dir_fd = os.dup(dir_fd)  # its own: the provisioner may replace its descriptor
        self.target_url = target_url
        self.target_token = target_token
        self.network = network
        self.key = key or new_key()
        self._server: httpserver.HTTPServer | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        """Bind and serve, on the relays' own event loop (a daemon thread):
        the caller's loop may run only while it is called (a blocking
        KernelManager's), and a server's loop is kept free of this work."""
        sock = _bind_in(self.dir_fd, SOCKET_NAME)
        try:
            asyncio.run_coroutine_threadsafe(self._serve(sock), _relay_loop()).result(30)
        except BaseException:
            sock.close()
            raise

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application([(r".*", _RelayHandler, {"relay": self})])
        server = httpserver.HTTPServer(app, max_body_size=MAX_BODY, idle_connection_timeout=3600, xheaders=False)
        server.add_socket(sock)
        self._server, self._sock = server, sock

    async def close(self) -> None:
        if self._server is not None:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._stop(), _relay_loop()))
        if self.dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.dir_fd)
            self.dir_fd = -1

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(server.close_all_connections(), 2.0)
            with contextlib.suppress(OSError):
                st = os.stat(SOCKET_NAME, dir_fd=self.dir_fd, follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode):
                    os.unlink(SOCKET_NAME, dir_fd=self.dir_fd)


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _relay_loop() -> asyncio.AbstractEventLoop:
    """The event loop every relay of this process runs on (started on first use)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="functionai-kernel-relays", daemon=True).start()
            _LOOP = loop
        return _LOOP


def _bind_in(dir_fd: int, name: str) -> socket.socket:
    """A listening Unix socket ``name`` in the directory ``dir_fd``, which a
    sandbox owns: nothing it placed there is followed (no symlink is ever
    resolved by chmod), and the socket is made connectable by the sandbox's
    uid (0666: the directory itself is private to that sandbox)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, f"{name} in the kernel's directory is a directory")
        os.unlink(name, dir_fd=dir_fd)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"/proc/self/fd/{dir_fd}/{name}")  # bind never follows a final symlink
        path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            if not stat.S_ISSOCK(os.fstat(path_fd).st_mode):
                raise OSError(
                    errno.EEXIST, f"{name} in the kernel's directory was replaced while binding"
                )
            os.chmod(f"/proc/self/fd/{path_fd}", 0o666)  # this inode, never a link's target
        finally:
            os.close(path_fd)
        sock.setblocking(False)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock
