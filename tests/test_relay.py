"""A sandbox kernel's relay (``kernel/relay.py``) in front of a real Jupyter
server with the extension: a client in a directory too deep for a Unix
socket path still reaches it, server-sent events stream through it as they
come, and a client that hangs up ends the forward. The kernel-side tests
(the key, the policy, planted symlinks) are in test_kernel.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai.client import AsyncClient
from jupyter_functionai.kernel.relay import SOCKET_NAME, KernelRelay, refusal


def _relay(serverapp: Any, where: Path) -> KernelRelay:
    """A relay in ``where`` to ``serverapp`` (its HTTP server runs: the tests take jp_fetch)."""
    where.mkdir(parents=True)
    fd = os.open(where, os.O_PATH | os.O_DIRECTORY)
    try:
        relay = KernelRelay(fd, serverapp.connection_url, serverapp.identity_provider.token)
    finally:
        os.close(fd)
    relay.start()
    return relay


async def test_a_client_reaches_the_relay_from_a_directory_too_deep_for_a_socket_path(jp_serverapp: Any, jp_fetch: Any, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    relay = _relay(jp_serverapp, deep)
    try:
        path = deep / SOCKET_NAME
        assert len(os.fsencode(path)) > 108 and path.is_socket()
        health = await AsyncClient(f"unix:{path}", relay.key).health()
        assert health["status"] == "ok"
        assert (await AsyncClient(f"unix:{path}", relay.key).functions()) == []
    finally:
        await relay.close()
    assert not (deep / SOCKET_NAME).exists()


async def test_server_sent_events_stream_through_the_relay(jp_serverapp: Any, jp_fetch: Any, tmp_path: Path) -> None:
    relay = _relay(jp_serverapp, tmp_path / "k")
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "k" / SOCKET_NAME))
        writer.write(f"GET /functionai/api/events HTTP/1.1\r\nHost: relay\r\nAuthorization: token {relay.key}\r\n\r\n".encode())
        await writer.drain()
        seen = b""
        while b"event: hello" not in seen:  # the stream stays open: this arrives only if each event is flushed on
            chunk = await asyncio.wait_for(reader.read(4096), 30)
            assert chunk, seen
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200") and b"text/event-stream" in seen
        writer.close()
    finally:
        await relay.close()


def test_the_policy_lets_the_api_through_and_keeps_the_host_out() -> None:
    ok = [
        ("GET", "/functionai/api/functions"),
        ("GET", "/functionai/api/runs"),
        ("POST", "/functionai/invoke/echo"),
        ("POST", "/functionai/mcp/tools/mcp"),
        ("POST", "/functionai/api/sessions/s1/close"),
        ("POST", "/functionai/api/tasks/t1/cancel"),
        ("POST", "/functionai/api/runs/r1/cancel"),
        ("DELETE", "/functionai/api/functions/echo"),
    ]
    for method, path in ok:
        assert refusal(method, path, b"", "none") is None, (method, path)
    assert refusal("POST", "/functionai/api/mcp/servers", b'{"name": "s", "command": ["srv"]}', "none") is None
    assert refusal("PUT", "/functionai/api/mcp/servers/s/tools/t", b"{}", "none") is None
    spec = b'{"name": "n", "source": {"kind": "code", "code": "x"}, "network": "loopback"}'
    assert refusal("POST", "/functionai/api/functions", spec, "loopback") is None
    assert "network 'loopback'" in (refusal("POST", "/functionai/api/functions", spec, "none") or "")
    for method, path in [("GET", "/api/contents"), ("GET", "/functionai/../api/kernels"), ("GET", "/functionai//api"), ("GET", "/lab"), ("PUT", "/functionai/api/schedules/s1")]:
        assert refusal(method, path, b"", "host") is not None, (method, path)


async def test_a_relay_whose_server_is_gone_says_so(tmp_path: Path) -> None:
    from jupyter_functionai.errors import FunctionAIError

    from .test_cli_server import free_port

    where = tmp_path / "k"
    where.mkdir()
    fd = os.open(where, os.O_PATH | os.O_DIRECTORY)
    try:
        relay = KernelRelay(fd, f"http://127.0.0.1:{free_port()}/", "server-token")  # nothing listens there
    finally:
        os.close(fd)
    relay.start()
    try:
        with pytest.raises(FunctionAIError) as ei:
            await AsyncClient(f"unix:{where / SOCKET_NAME}", relay.key).health()
        assert ei.value.status == 502 and ei.value.kind == "no_server" and "could not reach the functionai server" in str(ei.value)
    finally:
        await relay.close()
