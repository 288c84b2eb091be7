"""One client implementation: the blocking ``Client`` and ``EmbeddedClient``
are generated from their async twins (``jupyter_functionai._sync``) and are
what the notebook surfaces take (``jupyter_functionai.api``)."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai._sync import Blocking, Portal, blocking, public_coroutines
from jupyter_functionai.api import SERVER_METHODS, FunctionAIClient, ServerClient, as_server
from jupyter_functionai.client import AsyncClient, Client, NoServer
from jupyter_functionai.embedded import AsyncEmbeddedClient, EmbeddedClient


def _own_methods(cls: type) -> dict[str, Any]:
    return {n: v for n, v in vars(cls).items() if isinstance(v, blocking)}


@pytest.mark.parametrize(("sync", "twin"), [(Client, AsyncClient), (EmbeddedClient, AsyncEmbeddedClient)])
def test_blocking_methods_are_exactly_the_async_ones(sync: type, twin: type) -> None:
    made = _own_methods(sync)
    wanted = public_coroutines(twin)
    assert set(made) == set(wanted) and wanted
    for name, desc in made.items():
        assert desc.fn is wanted[name]  # generated from the coroutine, not written again
        assert inspect.signature(getattr(sync, name)) == inspect.signature(wanted[name])
        assert getattr(sync, name).__doc__ == wanted[name].__doc__
        assert not inspect.iscoroutinefunction(getattr(sync, name))
    # no other public method of the blocking class has a body of its own
    others = {n for n, v in vars(sync).items() if not n.startswith("_") and callable(v) and not isinstance(v, type) and n not in made}
    assert others <= {"close"}, others


def test_a_blocking_class_missing_a_twin_fails_when_defined() -> None:
    class Twin:
        async def one(self) -> int:
            return 1

        async def two(self, x: int, *, y: int = 0) -> int:
            return x + y

    with pytest.raises(TypeError, match=r"missing \['two'\]"):

        class Partial(Blocking, twin=Twin):
            one = blocking(Twin.one)

    with pytest.raises((TypeError, RuntimeError)) as misnamed:  # Python 3.11 wraps __set_name__'s error in a RuntimeError

        class Misnamed(Blocking, twin=Twin):
            one = blocking(Twin.two)  # type: ignore[assignment]
            two = blocking(Twin.two)

    assert "the names differ" in f"{misnamed.value} {misnamed.value.__cause__}"


def test_blocking_calls_run_on_the_portal_from_a_thread_with_a_running_loop() -> None:
    class Twin:
        async def where(self, x: int) -> tuple[int, str]:
            await asyncio.sleep(0)
            return x, threading.current_thread().name

        async def boom(self) -> None:
            raise KeyError("no")

    portal = Portal("functionai-test-portal")

    class Sync(Blocking, twin=Twin):
        def __init__(self) -> None:
            self._impl = Twin()

        @property
        def _portal(self) -> Portal:
            return portal

        where = blocking(Twin.where)
        boom = blocking(Twin.boom)

    async def in_a_running_loop() -> tuple[int, str]:  # like a kernel's loop: it blocks this thread only
        return Sync().where(3)

    try:
        assert asyncio.run(in_a_running_loop()) == (3, "functionai-test-portal")
        with pytest.raises(KeyError):
            Sync().boom()

        async def on_the_portal_itself() -> None:
            Sync().where(1)

        with pytest.raises(RuntimeError, match="deadlock"):
            portal.run(on_the_portal_itself())
    finally:
        portal.close()
    with pytest.raises(RuntimeError, match="closed"):
        Sync().where(1)


def test_client_and_embedded_client_are_what_the_notebook_surfaces_take(tmp_path: Path) -> None:
    client = Client("http://127.0.0.1:9/", "t")  # no request is made
    assert isinstance(client, FunctionAIClient) and isinstance(client, ServerClient)
    assert as_server(client) is client
    embedded = EmbeddedClient(str(tmp_path / "embedded"))
    try:
        assert isinstance(embedded, FunctionAIClient) and not isinstance(embedded, ServerClient)
        assert as_server(embedded) is None
        missing = [n for n in SERVER_METHODS if hasattr(embedded, n)]
        assert missing == []
        embedded.deploy("echo", "def handler(event, ctx):\n    return event\n")
        assert embedded.invoke("echo", {"x": 1}, session="s").value == {"x": 1}
        assert [f["name"] for f in embedded.functions()] == ["echo"]
    finally:
        embedded.close()
    assert not embedded._portal.alive()
    embedded.close()  # again: nothing


def test_a_client_error_keeps_its_type_through_the_portal() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NoServer, match="Connection refused"):
        Client(f"http://127.0.0.1:{port}/", "t").health()


def test_mypy_checks_the_protocols(tmp_path: Path) -> None:
    """mypy rejects a client that lacks a method (or gets its types wrong)."""
    mypy = Path(sys.executable).with_name("mypy")
    if not mypy.exists():
        pytest.skip("mypy is not installed")
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        from jupyter_functionai.api import FunctionAIClient, ServerClient
        from jupyter_functionai.client import Client
        from jupyter_functionai.embedded import EmbeddedClient

        ok1: type[ServerClient] = Client
        ok2: type[FunctionAIClient] = EmbeddedClient
        bad: type[ServerClient] = EmbeddedClient
        Client().invoke("f", 1, session=2)
        n: int = Client().functions()
    """))
    p = subprocess.run([str(mypy), "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(probe)], capture_output=True, text=True, timeout=300)
    lines = [line for line in p.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in lines] == ["8", "9", "10"], p.stdout
