"""A Runtime inside the current process (a notebook kernel), behind the
synchronous client interface the magics and handles use.

When no functionai server can be found, ``%%function`` and
``@function(...)`` fall back to this: the Runtime runs on its own event loop in
a background thread (so the kernel's own loop is never blocked by it), with
its data under ``$FUNCTIONAI_DATA_DIR/embedded`` or
``<jupyter data dir>/functionai-embedded`` (never the directory a server may
be using).  It stops when the process exits.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

from .client import InvokeResponse
from .runtime import InvokeResult, Runtime
from .spec import FunctionSpec

T = TypeVar("T")


_SHARED: EmbeddedClient | None = None
_SHARED_LOCK = threading.Lock()


def shared_client() -> EmbeddedClient:
    """The one embedded runtime of this process (created on first use), so
    that everything in a process that falls back to it shares one store."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or not _SHARED._thread.is_alive():
            _SHARED = EmbeddedClient()
        return _SHARED


def default_embedded_dir() -> str:
    from jupyter_core.paths import jupyter_data_dir

    base = os.environ.get("FUNCTIONAI_DATA_DIR")
    return os.path.join(base, "embedded") if base else os.path.join(jupyter_data_dir(), "functionai-embedded")


class EmbeddedClient:
    """The subset of :class:`~jupyter_functionai.client.Client` the notebook
    surfaces use, served by an in-process Runtime."""

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = os.path.abspath(data_dir or default_embedded_dir())
        self.source = ""  # how ``client.connect`` chose it
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="functionai-embedded", daemon=True)
        self._thread.start()
        self.runtime: Runtime = self._run(Runtime.open(self.data_dir))
        atexit.register(self.close)

    @property
    def url(self) -> str:
        return f"embedded:{self.data_dir}"

    def _run(self, awaitable: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        try:
            self._run(self.runtime.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # -- the Client methods the magics and handles call --------------------------------------

    def deploy(self, name: str, code: str | None = None, *, handler: str = "handler", **spec: Any) -> dict[str, Any]:
        return self._run(self.runtime.deploy(FunctionSpec.from_code(name, code or "", handler=handler, **spec)))

    def invoke(self, name: str, event: Any = None, *, session: str | None = None) -> InvokeResponse:
        r: InvokeResult = self._run(self.runtime.invoke(name, event, session=session))
        return InvokeResponse(
            value=r.value,
            session_id=r.session_id,
            instance_id=r.instance_id,
            cold_start=r.cold_start.header() if r.cold_start else None,
            status=200,
        )

    def functions(self) -> list[dict[str, Any]]:
        return self.runtime.functions()

    def versions(self, name: str) -> list[dict[str, Any]]:
        return self.runtime.versions(name)

    def rollback(self, name: str, version: int) -> dict[str, Any]:
        return self._run(self.runtime.rollback(name, version))

    def open_session(self, name: str, session: str | None = None) -> dict[str, Any]:
        return self._run(self.runtime.open_session(name, session))

    def session(self, id: str) -> dict[str, Any]:
        return self._run(self.runtime.describe_session(id))

    def close_session(self, id: str) -> None:
        self._run(self.runtime.close_session(id))

    def sessions(self, function: str | None = None, *, status: str | None = None) -> list[dict[str, Any]]:
        return self._run(self.runtime.sessions(function, status))

    def submit(self, name: str, event: Any = None, *, session: str | None = None, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        return self._run(self.runtime.tasks.submit(name, event, session=session, timeout=timeout, retries=retries))

    def task(self, id: str, *, wait: float = 0.0) -> dict[str, Any]:
        return self._run(self.runtime.tasks.wait(id, wait) if wait else self.runtime.tasks.get(id))

    def wait_task(self, id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self.runtime.tasks.wait(id, timeout))

    def tasks(self, function: str | None = None, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return self._run(self.runtime.tasks.list_tasks(function, state, limit=limit or 100))

    def task_counts(self) -> dict[str, dict[str, int]]:
        return self._run(self.runtime.tasks.counts())

    def cancel_task(self, id: str) -> dict[str, Any]:
        return self._run(self.runtime.tasks.cancel(id))

    def retry_task(self, id: str) -> dict[str, Any]:
        return self._run(self.runtime.tasks.retry(id))

    def coldstarts(self, function: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        return self._run(self.runtime.coldstarts(function, limit))
