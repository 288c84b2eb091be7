"""The JupyterLab extension's server side: the version handshake and the
server-sent events stream the sidebar refetches on (a real server, pytest-jupyter)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from jupyter_functionai._version import __version__

from .test_server import ECHO, api, deploy  # noqa: F401  (api is a fixture)


async def test_the_handshake_names_the_server_version(api):  # noqa: F811
    code, body = await api("functionai", "api", "version")
    assert code == 200 and body == {"version": __version__, "api": 1}


class Stream:
    """An events stream read as it comes: the parsed events, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.comments = 0
        self._buf = ""
        self.arrived = asyncio.Event()

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk.decode()
        while "\n\n" in self._buf:
            block, self._buf = self._buf.split("\n\n", 1)
            name, data = "message", None
            for line in block.splitlines():
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
            if data is not None:
                self.events.append((name, data))
        self.arrived.set()

    async def wait_for(self, name: str, count: int = 1, timeout: float = 30.0) -> list[Any]:
        async def until() -> list[Any]:
            while True:
                got = [d for n, d in self.events if n == name]
                if len(got) >= count:
                    return got
                self.arrived.clear()
                await self.arrived.wait()

        return await asyncio.wait_for(until(), timeout)


async def test_events_need_auth(api, jp_http_port, jp_base_url):  # noqa: F811  (api starts the server)
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}/functionai/api/events"
    r = await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=10)
    assert r.code == 401 and json.loads(r.body)["error"]["kind"] == "unauthorized"


async def test_a_change_is_pushed(api, jp_http_port, jp_base_url, jp_auth_header):  # noqa: F811
    await deploy(api, "echo", ECHO)
    stream = Stream()
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}/functionai/api/events"
    headers: dict[str, str] = {}

    def on_headers(line: str) -> None:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()

    req = HTTPRequest(url, headers=dict(jp_auth_header), streaming_callback=stream.feed, header_callback=on_headers, request_timeout=120)
    fetching = asyncio.ensure_future(AsyncHTTPClient().fetch(req))
    try:
        hello = await stream.wait_for("hello")
        assert hello == [{"version": __version__}]
        assert headers["content-type"].startswith("text/event-stream") and headers["cache-control"] == "no-cache"
        before = len([e for e in stream.events if e[0] == "changed"])
        # a session opened elsewhere: the stream says something changed, with no polling by the client
        code, _ = await api("functionai", "api", "functions", "echo", "sessions", method="POST", body={"session": "ev-1"})
        assert code == 201
        changed = await stream.wait_for("changed", before + 1)
        assert changed[-1]["instances"] >= 1 and changed[-1]["writes"] > 0
        # and its close too
        seen = len(changed)
        code, _ = await api("functionai", "api", "sessions", "ev-1", method="DELETE")
        assert code == 204
        await stream.wait_for("changed", seen + 1)
    finally:
        fetching.cancel()
        try:
            await fetching
        except (asyncio.CancelledError, HTTPClientError):
            pass
    # the server is fine after the client went away
    code, health = await api("functionai", "api", "health")
    assert code == 200 and health["status"] == "ok"


async def test_latency_per_function(api):  # noqa: F811
    """What the sidebar's p50 column reads: per function, calls, errors, p50 and
    p95 of the last invocations, without fetching their logs."""
    await deploy(api, "echo", ECHO)
    for event in (1, 2, "boom"):
        await api("functionai", "invoke", "echo", method="POST", body=json.dumps(event))
    code, rows = await api("functionai", "api", "latency")
    assert code == 200
    (echo,) = [r for r in rows if r["function"] == "echo"]
    assert echo["calls"] == 3 and echo["errors"] == 1, echo
    code, logged = await api("functionai", "api", "invocations")
    durations = sorted(r["duration_ms"] for r in logged if r["function"] == "echo")
    assert echo["p50_ms"] == durations[1] and echo["p95_ms"] == durations[2], (echo, durations)
