"""Shared fixtures: a real Runtime over a real store and real sandbox processes."""

from __future__ import annotations

import asyncio
import gc
import html
import os
import re
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from jupyter_functionai import FunctionSpec, Runtime

BACKENDS = ["process"]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def jp_server_config(tmp_path):
    """pytest-jupyter: a real Jupyter server with the extension, its own data dir."""
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_functionai": True}},
        "FunctionAI": {"data_dir": str(tmp_path / "fai"), "reap_interval": 0.05},
    }


#: A step of the server's event loop that takes more CPU than this, or more
#: wall time than ``SLOW_CALLBACK_WALL_S``, fails the test: blocking work
#: (SQLite, files, subprocess waits, slow imports, big parses) belongs in
#: threads.  CPU time is what a step costs whatever the machine's load (a
#: busy host stretches wall time: asyncio debug mode alone makes a request's
#: step take 0.1-0.2 s here, and 1.1 s was seen under load); wall time
#: catches blocking waits (sleeps, locks, disk), generously.
SLOW_CALLBACK_CPU_S = 0.5
SLOW_CALLBACK_WALL_S = 5.0


@pytest.fixture
def jp_serverapp(jp_serverapp: Any, jp_asyncio_loop: Any) -> Iterator[Any]:
    """The server runs with asyncio debug on; a slow step of its loop fails the test."""
    slow: list[str] = []
    loop_thread = threading.get_ident()
    original = asyncio.events.Handle._run
    # Garbage collections of this (test) process land in whichever step
    # allocates: late in the suite the heap holds everything pytest kept, and
    # a full collection took 0.17-0.56 s of CPU in a step that did ~3 ms of
    # work.  That is not the server blocking its loop: it is left out.
    in_gc = {"total": 0.0, "since": 0.0}

    def count_gc(phase: str, _info: dict[str, Any]) -> None:
        if threading.get_ident() != loop_thread:
            return
        if phase == "start":
            in_gc["since"] = time.thread_time()
        else:
            in_gc["total"] += time.thread_time() - in_gc["since"]

    def timed(self: asyncio.Handle) -> None:
        if threading.get_ident() != loop_thread:
            return original(self)
        w0, c0, g0 = time.perf_counter(), time.thread_time(), in_gc["total"]
        try:
            return original(self)
        finally:
            gc_s = in_gc["total"] - g0
            wall, cpu = time.perf_counter() - w0 - gc_s, time.thread_time() - c0 - gc_s
            if cpu > SLOW_CALLBACK_CPU_S or wall > SLOW_CALLBACK_WALL_S:
                slow.append(f"{self!r}"[:400] + f" took {wall:.3f} s ({cpu:.3f} s of CPU), garbage collection left out")

    gc.callbacks.append(count_gc)
    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
    jp_asyncio_loop.set_debug(True)
    jp_asyncio_loop.slow_callback_duration = SLOW_CALLBACK_WALL_S  # its own warnings: only the worst
    try:
        yield jp_serverapp
    finally:
        jp_asyncio_loop.set_debug(False)
        asyncio.events.Handle._run = original  # type: ignore[method-assign]
        gc.callbacks.remove(count_gc)
    if slow:
        pytest.fail("the server's event loop was blocked:\n" + "\n".join(slow[:10]))


@pytest_asyncio.fixture
async def rt(tmp_path, backend_name) -> AsyncIterator[Runtime]:
    async with Runtime.open(tmp_path / "state", backend=backend_name, reap_interval=0.05) as runtime:
        yield runtime


MEMORY_HOG = """
def handler(event, ctx):
    if event == "hog":
        blocks = []
        while True:
            blocks.append(bytearray(16 * 1024 * 1024))
    return "ok"
"""


def code(text: str) -> str:
    return textwrap.dedent(text).lstrip()


async def deploy(rt: Runtime, name: str, source: str, **kw) -> dict:
    return await rt.deploy(FunctionSpec.from_code(name, code(source), **kw))


async def wait_for(cond: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        res = cond()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


# -- the widget panels' tests (a module-scoped ``server`` fixture of the module gives ``client``) --


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    from jupyter_functionai.client import Client

    return Client(server.url, server.token)


@pytest.fixture
def panels() -> Iterator[list[Any]]:
    """Panels a test made: closed after it, and their threads must be gone."""
    from .test_cli_server import wait_until

    made: list[Any] = []
    yield made
    for p in made:
        p.close()
    threads = [t for p in made for t in ([p._thread] if hasattr(p, "_thread") else [q._thread for q in p.panels])]
    wait_until(lambda: not any(t.is_alive() for t in threads), 10, "the panels' threads to stop")


def plain(value: str) -> str:
    """A panel's HTML as the text it shows."""
    return html.unescape(re.sub(r"<[^>]+>", "", value))
