"""The composition root: the one place that builds the store, the runtime
(with its task queue) and the services over it (hosted MCP, notebook runs,
the scheduler), handing each service only what it needs.

The Jupyter server extension (``server/app.py``) builds its stack here, and
so can a script::

    async with Stack.open("~/.functionai", root_dir="notebooks") as stack:
        await stack.runtime.invoke(...)
        await stack.mcp.publish_tool(...)
        await stack.runs.start("daily.ipynb")

The runtime builds no service and imports none: arrows point one way
(services -> runtime -> backends).  ``Runtime.open`` stays the way to get a
runtime alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from .backends import backend_class
from .backends.base import Backend
from .mcp.manager import McpManager
from .runs.manager import RunManager
from .runs.schedules import Scheduler
from .runtime import Runtime
from .store import Store

__all__ = ["Stack"]

class Stack:
    """Store, runtime and services, built and stopped together, in order."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        store_url: str | None = None,
        backend: str | type[Backend] = "process",
        root_dir: str | os.PathLike[str] | None = None,
        reap_interval: float = 1.0,
        use_templates: bool = True,
        task_lease_s: float = 15.0,
        warm_kernels: int = 0,
        schedule_grace_s: float = 60.0,
        prices: Mapping[str, Any] | None = None,
    ) -> None:
        state_dir = os.path.realpath(os.path.expanduser(os.fspath(data_dir)))
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.store = Store(store_url) if store_url else Store.open(os.path.join(state_dir, "functionai.db"))
        try:
            engine = backend_class(backend)(state_dir, use_templates=use_templates)  # type: ignore[call-arg]
            self.runtime = Runtime(state_dir, store=self.store, backend=engine, reap_interval=reap_interval, task_lease_s=task_lease_s, prices=prices)
        except BaseException:
            self.store.close()
            raise
        self.mcp = McpManager(self.runtime)
        root = os.fspath(root_dir) if root_dir is not None else os.getcwd()
        self.runs = RunManager(self.runtime, root, warm_kernels=warm_kernels)
        self.scheduler = Scheduler(self.runs, grace_s=schedule_grace_s)
        self._start: asyncio.Future[None] | None = None
        self._closed = False

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], **kw: Any) -> _StackOpener:
        """``async with Stack.open(path, ...) as stack``: started, and closed on exit."""
        return _StackOpener(cls, data_dir, kw)

    @property
    def started(self) -> bool:
        return self._start is not None and self._start.done() and not self._start.cancelled() and self._start.exception() is None and not self._closed

    async def ensure_started(self) -> None:
        """Start the runtime, then the services (once, however many ask)."""
        if self._start is None:
            self._start = asyncio.ensure_future(self._start_all())
        await asyncio.shield(self._start)

    async def _start_all(self) -> None:
        await self.runtime.ensure_started()
        await self.mcp.start()

    async def start_schedules(self) -> None:
        """Deploy the notebook-run function (warming its kernels) and start
        firing schedules: the server does this once it has advertised itself."""
        await self.ensure_started()
        await self.runs.prepare()
        self.scheduler.start()

    async def close(self) -> None:
        """Stop the services first (they use the runtime), then the runtime,
        then the store."""
        if self._closed:
            return
        self._closed = True
        await self.scheduler.close()
        await self.mcp.close()
        await self.runtime.close()
        self.store.close()


class _StackOpener:
    def __init__(self, cls: type[Stack], data_dir: str | os.PathLike[str], kw: dict[str, Any]) -> None:
        self.cls, self.data_dir, self.kw = cls, data_dir, kw
        self.stack: Stack | None = None

    async def __aenter__(self) -> Stack:
        stack = self.cls(self.data_dir, **self.kw)
        try:
            await stack.ensure_started()
        except BaseException:
            await stack.close()
            raise
        self.stack = stack
        return stack

    async def __aexit__(self, *exc: object) -> None:
        if self.stack is not None:
            await self.stack.close()
