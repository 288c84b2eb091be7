"""The in-sandbox half of a hosted stdio MCP server.

Deployed, as code, as the function behind the server (``mcp-<server>``).
Each MCP client session is one *session* of that function: its instance
(namespaces, cgroup, uid, private ``/tmp``, persistent working directory)
runs the server's command as its child, so every MCP session has its own
server process, isolated like any instance, that dies with it.

Operations (the event's ``op``), all short:

``start``  spawn ``argv`` with ``env`` (stdin/stdout are pipes, stderr goes to
           ``<workdir>/.mcp/stderr.log``), listen on the Unix socket
           ``<workdir>/.mcp/relay`` and relay newline-delimited JSON-RPC
           between one connection (the host) and the process, in two
           threads; returns the process id (the host finds the socket itself).
``poll``   ``{"running", "exit_code", "stderr"}`` (the tail of its stderr)
``stop``   SIGTERM to the process group, a grace period, then SIGKILL

When the process exits, the relay closes the connection: the host sees
end-of-file, polls for the exit code and the stderr tail, and ends that
MCP session only.

Standard library only: this module runs inside the sandbox, never next to
the control plane.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

RELAY_DIR = ".mcp"
SOCKET_NAME = "relay"
STDERR_TAIL = 2000
_PR_SET_PDEATHSIG = 1

_proc: subprocess.Popen[bytes] | None = None
_listener: socket.socket | None = None
_conn: socket.socket | None = None
_stderr_path: str | None = None
_lock = threading.Lock()
_early: list[bytes] = []  # output before the host connected


class StdioServerError(RuntimeError):
    """Why the server could not be started (the message reaches the MCP client)."""


def handler(event: Any, ctx: Any) -> Any:
    if not isinstance(event, dict) or event.get("op") not in _OPS:
        raise StdioServerError(f"expected an event {{'op': one of {sorted(_OPS)}, ...}}, got {event!r:.200}")
    return _OPS[event["op"]](event, ctx)


def start(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    global _proc, _listener, _stderr_path
    argv = event.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise StdioServerError(f"argv must be a non-empty list of strings, got {argv!r:.200}")
    if _proc is not None and _proc.poll() is None:
        raise StdioServerError("this session's MCP server is already running")
    workdir = ctx.workdir or os.getcwd()
    rdir = os.path.join(workdir, RELAY_DIR)
    os.makedirs(rdir, mode=0o700, exist_ok=True)
    sock_path = os.path.join(rdir, SOCKET_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    env = dict(os.environ)  # the instance's clean environment (PATH, LANG, HOME=workdir, ...)
    for k, v in (event.get("env") or {}).items():
        if isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v:
            env[k] = v
    _stderr_path = os.path.join(rdir, "stderr.log")
    with open(_stderr_path, "ab") as err:
        err.write(f"--- starting {argv!r} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        err.flush()
        try:
            _proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:
            raise StdioServerError(
                f"the command {argv[0]!r} was not found in the sandbox (give an absolute path, or a command on the sandbox's PATH "
                f"{env.get('PATH', '')!r}; paths under /tmp and the data dir are not visible there)"
            ) from None
        except OSError as exc:
            raise StdioServerError(f"the command {argv[0]!r} could not be started: {exc}") from None
    # bind relative to the socket's directory: a Unix socket path is limited to ~107 bytes
    cwd = os.getcwd()
    _listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(rdir)
        _listener.bind(SOCKET_NAME)
    finally:
        os.chdir(cwd)
    _listener.listen(4)
    proc = _proc
    threading.Thread(target=_accept_loop, args=(_listener, proc), daemon=True, name="mcp-accept").start()
    threading.Thread(target=_pump_out, args=(proc,), daemon=True, name="mcp-out").start()
    return {"pid": proc.pid, "argv": argv}  # where it listens is the host's to know (RELAY_DIR/SOCKET_NAME)


def poll(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    if _proc is None:
        return {"running": False, "exit_code": None, "known": False, "stderr": _stderr_tail()}
    code = _proc.poll()
    if code is None and event.get("wait"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = _proc.wait(min(float(event["wait"]), 5.0))
    return {"running": code is None, "exit_code": code, "known": True, "pid": _proc.pid, "stderr": _stderr_tail()}


def stop(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    proc = _proc
    if proc is None:
        return {"exit_code": None}
    grace = min(max(float(event.get("grace") or 2.0), 0.0), 30.0)
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    return {"exit_code": proc.poll()}


_OPS = {"start": start, "poll": poll, "stop": stop}


# -- the relay -------------------------------------------------------------------------


def _accept_loop(listener: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    """One host connection at a time; a new one replaces the old."""
    global _conn
    while proc.poll() is None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with _lock:  # what the process wrote before goes first, in order
            old, _conn = _conn, conn
            try:
                for chunk in _early:
                    conn.sendall(chunk)
                _early.clear()
            except OSError:
                _conn = None
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()
        if _conn is not conn:
            continue
        threading.Thread(target=_pump_in, args=(conn, proc), daemon=True, name="mcp-in").start()


def _pump_in(conn: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    """Host -> the process's stdin."""
    stdin = proc.stdin
    assert stdin is not None
    while True:
        try:
            data = conn.recv(65536)
        except OSError:
            return
        if not data:
            return
        try:
            stdin.write(data)
            stdin.flush()
        except (OSError, ValueError):  # the process is gone: _pump_out reports it
            return


def _pump_out(proc: subprocess.Popen[bytes]) -> None:
    """The process's stdout -> the host; at its end, close the connection."""
    global _conn
    stdout = proc.stdout
    assert stdout is not None
    while True:
        data = stdout.read1(65536)  # type: ignore[attr-defined]  # a BufferedReader
        if not data:
            break
        with _lock:
            conn = _conn
            if conn is None:
                _early.append(data)
                continue
        try:
            conn.sendall(data)
        except OSError:
            with _lock:
                if _conn is conn:
                    _conn = None
                _early.append(data)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)
    with _lock:
        conn, _conn = _conn, None
    if _listener is not None:
        with contextlib.suppress(OSError):
            _listener.close()
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            conn.close()


def _stderr_tail() -> str:
    if _stderr_path is None:
        return ""
    try:
        with open(_stderr_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - STDERR_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _die_with_parent() -> None:
    """In the server's child, before exec: SIGKILL when this instance dies."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
