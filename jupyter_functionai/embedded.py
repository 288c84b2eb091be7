"""A Runtime inside the current process (a notebook kernel), behind the
client interface the magics and handles use
(:class:`~jupyter_functionai.api.FunctionAIClient`).

When no functionai server can be found, ``%%function`` and
``@function(...)`` fall back to this: the Runtime runs on its own event loop in
a background thread (so the kernel's own loop is never blocked by it), with
its data under ``$FUNCTIONAI_DATA_DIR/embedded`` or
``<jupyter data dir>/functionai-embedded`` (never the directory a server may
be using).  It stops when the process exits.

As for the HTTP client, the methods are written once, as coroutines
(:class:`AsyncEmbeddedClient`, over the Runtime), and :class:`EmbeddedClient`
is their blocking twin (``jupyter_functionai._sync``), run on the Runtime's loop.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from typing import TYPE_CHECKING, Any

from ._sync import Blocking, Portal, blocking
from .client import InvokeResponse, _spec
from .runtime import InvokeResult, Runtime

_SHARED: EmbeddedClient | None = None
_SHARED_LOCK = threading.Lock()


def shared_client() -> EmbeddedClient:
    """The one embedded runtime of this process (created on first use), so
    that everything in a process that falls back to it shares one store."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or not _SHARED._portal.alive():
            _SHARED = EmbeddedClient()
        return _SHARED


def default_embedded_dir() -> str:
    from jupyter_core.paths import jupyter_data_dir

    base = os.environ.get("FUNCTIONAI_DATA_DIR")
    return os.path.join(base, "embedded") if base else os.path.join(jupyter_data_dir(), "functionai-embedded")


async def _open(data_dir: str) -> Runtime:
    return await Runtime.open(data_dir)


class AsyncEmbeddedClient:
    """The client methods of the notebook surfaces, as coroutines over a Runtime
    (run them on the Runtime's loop)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def deploy(self, name: str, code: str | None = None, *, file: str | os.PathLike[str] | None = None, handler: str = "handler", **spec_fields: Any) -> dict[str, Any]:
        return await self.runtime.deploy(_spec(name, code, file, handler, spec_fields))

    async def invoke(self, name: str, event: Any = None, *, session: str | None = None) -> InvokeResponse:
        r: InvokeResult = await self.runtime.invoke(name, event, session=session)
        return InvokeResponse(
            value=r.value,
            session_id=r.session_id,
            instance_id=r.instance_id,
            cold_start=r.cold_start.header() if r.cold_start else None,
            status=200,
        )

    async def functions(self) -> list[dict[str, Any]]:
        return self.runtime.functions()

    async def versions(self, name: str) -> list[dict[str, Any]]:
        return self.runtime.versions(name)

    async def rollback(self, name: str, version: int) -> dict[str, Any]:
        return await self.runtime.rollback(name, version)

    async def open_session(self, name: str, session: str | None = None) -> dict[str, Any]:
        return await self.runtime.open_session(name, session)

    async def session(self, id: str) -> dict[str, Any]:
        return await self.runtime.describe_session(id)

    async def close_session(self, id: str) -> None:
        await self.runtime.close_session(id)

    async def sessions(self, function: str | None = None, *, status: str | None = None) -> list[dict[str, Any]]:
        return await self.runtime.sessions(function, status)

    async def coldstarts(self, function: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return await self.runtime.coldstarts(function, 500 if limit is None else limit)

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
        return await self.runtime.usage(function, session, since, until, step, by or "session")

    async def gpus(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.runtime.gpus)

    async def scaling(self, function: str | None = None, *, since: float | None = None, limit: int | None = None) -> dict[str, Any]:
        return await self.runtime.scaling(function, since, 200 if limit is None else limit)

    async def submit(self, name: str, event: Any = None, *, session: str | None = None, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        return await self.runtime.tasks.submit(name, event, session=session, timeout=timeout, retries=retries)

    async def task(self, id: str, *, wait: float = 0.0) -> dict[str, Any]:
        return await (self.runtime.tasks.wait(id, wait) if wait else self.runtime.tasks.get(id))

    async def wait_task(self, id: str, timeout: float | None = None) -> dict[str, Any]:
        return await self.runtime.tasks.wait(id, timeout)

    async def tasks(self, function: str | None = None, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return await self.runtime.tasks.list_tasks(function, state, limit=limit or 100)

    async def task_counts(self) -> dict[str, dict[str, int]]:
        return await self.runtime.tasks.counts()

    async def cancel_task(self, id: str) -> dict[str, Any]:
        return await self.runtime.tasks.cancel(id)

    async def retry_task(self, id: str) -> dict[str, Any]:
        return await self.runtime.tasks.retry(id)


class EmbeddedClient(Blocking, twin=AsyncEmbeddedClient):
    """The blocking twin of :class:`AsyncEmbeddedClient`, whose Runtime runs on
    a loop of its own in a daemon thread."""

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = os.path.abspath(data_dir or default_embedded_dir())
        self.source = ""  # how ``client.connect`` chose it
        self._own_portal = Portal("functionai-embedded")
        self.runtime: Runtime = self._own_portal.run(_open(self.data_dir))
        self._impl = AsyncEmbeddedClient(self.runtime)
        atexit.register(self.close)

    @property
    def _portal(self) -> Portal:
        return self._own_portal

    @property
    def url(self) -> str:
        return f"embedded:{self.data_dir}"

    def close(self) -> None:
        """Close the Runtime and stop its loop (again: nothing)."""
        if not self._own_portal.alive():
            return
        try:
            self._own_portal.run(self.runtime.close())
        finally:
            self._own_portal.close()

    deploy = blocking(AsyncEmbeddedClient.deploy)
    invoke = blocking(AsyncEmbeddedClient.invoke)
    functions = blocking(AsyncEmbeddedClient.functions)
    versions = blocking(AsyncEmbeddedClient.versions)
    rollback = blocking(AsyncEmbeddedClient.rollback)
    open_session = blocking(AsyncEmbeddedClient.open_session)
    session = blocking(AsyncEmbeddedClient.session)
    close_session = blocking(AsyncEmbeddedClient.close_session)
    sessions = blocking(AsyncEmbeddedClient.sessions)
    coldstarts = blocking(AsyncEmbeddedClient.coldstarts)
    gpus = blocking(AsyncEmbeddedClient.gpus)
    scaling = blocking(AsyncEmbeddedClient.scaling)
    usage = blocking(AsyncEmbeddedClient.usage)
    submit = blocking(AsyncEmbeddedClient.submit)
    task = blocking(AsyncEmbeddedClient.task)
    wait_task = blocking(AsyncEmbeddedClient.wait_task)
    tasks = blocking(AsyncEmbeddedClient.tasks)
    task_counts = blocking(AsyncEmbeddedClient.task_counts)
    cancel_task = blocking(AsyncEmbeddedClient.cancel_task)
    retry_task = blocking(AsyncEmbeddedClient.retry_task)


if TYPE_CHECKING:  # mypy: the embedded runtime is a client of the notebook surfaces (jupyter_functionai.api)
    from .api import FunctionAIClient

    _embedded_is_a_client: type[FunctionAIClient] = EmbeddedClient
