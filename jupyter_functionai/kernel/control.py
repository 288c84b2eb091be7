"""How the kernel provisioner reaches a functionai runtime.

One small interface (:class:`KernelControl`) with two implementations:

* :class:`RuntimeControl`: the Runtime of the Jupyter server the provisioner
  runs in (the extension's ``functionai_runtime`` setting), awaited on the
  server's own event loop: no HTTP, no token;
* :class:`ClientControl`: a blocking client, run in a worker thread: the
  server that started this process (``FUNCTIONAI_PARENT_URL`` /
  ``FUNCTIONAI_PARENT_TOKEN``), else the usual discovery of
  :class:`~jupyter_functionai.client.Client` (``FUNCTIONAI_URL`` /
  ``FUNCTIONAI_TOKEN``, the running Jupyter servers), else the embedded
  runtime of this process (:func:`jupyter_functionai.embedded.shared_client`).

:func:`connect` picks one, in that order.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import Any, TypeVar

from ..api import FunctionAIClient
from ..errors import NotFound
from ..spec import FunctionSpec

T = TypeVar("T")

ENV_PARENT_URL = "FUNCTIONAI_PARENT_URL"
ENV_PARENT_TOKEN = "FUNCTIONAI_PARENT_TOKEN"
RUNTIME_SETTING = "functionai_runtime"


class KernelControl(ABC):
    """The runtime operations a sandbox kernel needs."""

    where: str  # for messages: which runtime this is

    @abstractmethod
    async def ensure_function(self, spec: FunctionSpec) -> None:
        """Deploy ``spec`` unless its active version is exactly this spec."""

    @abstractmethod
    async def open_session(self, function: str, session: str) -> dict[str, Any]:
        """Create or resume ``session`` and start its sandbox; its description."""

    @abstractmethod
    async def call(self, function: str, session: str, event: dict[str, Any]) -> Any:
        """Invoke ``function`` in ``session``; the handler's value."""

    @abstractmethod
    async def close_session(self, session: str) -> None:
        """End ``session`` (its instance stops, its directory goes)."""

    @abstractmethod
    async def describe_session(self, session: str) -> dict[str, Any]:
        """The runtime's description of ``session``."""

    async def server_address(self) -> tuple[str, str] | None:
        """The HTTP URL and token of the server behind this runtime, which a
        kernel's relay forwards to (None: there is none, an embedded runtime)."""
        return None


class RuntimeControl(KernelControl):
    """A Runtime on the current event loop (the server's own)."""

    _deploy_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()

    def __init__(self, runtime: Any, address: tuple[str, str] | None = None) -> None:
        self.runtime = runtime
        self.address = address
        self.where = f"the Jupyter server's runtime ({runtime.state_dir})"

    async def server_address(self) -> tuple[str, str] | None:
        return self.address

    async def ensure_function(self, spec: FunctionSpec) -> None:
        rt = self.runtime
        await rt.ensure_started()
        lock = self._deploy_locks.setdefault(rt, asyncio.Lock())
        async with lock:
            try:
                current = rt.function(spec.name).spec.to_dict()
            except NotFound:
                current = None
            if current != spec.to_dict():
                await _shielded(rt.deploy(spec))

    async def open_session(self, function: str, session: str) -> dict[str, Any]:
        return await _shielded(self.runtime.open_session(function, session))

    async def call(self, function: str, session: str, event: dict[str, Any]) -> Any:
        # shielded: a cancelled caller (a KernelManager's wait_for) must not
        # cancel the call, which would stop the instance and the kernel with it
        result = await _shielded(self.runtime.invoke(function, event, session=session))
        return result.value

    async def close_session(self, session: str) -> None:
        await _shielded(self.runtime.close_session(session, reason="kernel shut down"))

    async def describe_session(self, session: str) -> dict[str, Any]:
        return await _shielded(self.runtime.describe_session(session))


class ClientControl(KernelControl):
    """A blocking client (:class:`~jupyter_functionai.client.Client` or
    :class:`~jupyter_functionai.embedded.EmbeddedClient`), off the event loop."""

    _deploy_lock = threading.Lock()

    def __init__(self, client: FunctionAIClient, where: str) -> None:
        self.client = client
        self.where = where

    async def ensure_function(self, spec: FunctionSpec) -> None:
        def run() -> None:
            with self._deploy_lock:
                try:
                    versions = self.client.versions(spec.name)
                except NotFound:
                    versions = []
                active = next((v for v in versions if v.get("active")), None)
                if active is None or active.get("spec") != spec.to_dict():
                    self.client.deploy(spec.name, spec.load_text(), **deploy_fields(spec))

        await asyncio.to_thread(run)

    async def open_session(self, function: str, session: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.client.open_session, function, session)

    async def call(self, function: str, session: str, event: dict[str, Any]) -> Any:
        resp = await asyncio.to_thread(self.client.invoke, function, event, session=session)
        return resp.value

    async def close_session(self, session: str) -> None:
        await asyncio.to_thread(self.client.close_session, session)

    async def describe_session(self, session: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.client.session, session)

    async def server_address(self) -> tuple[str, str] | None:
        from ..client import Client

        if not isinstance(self.client, Client):
            return None  # an embedded runtime: no server to relay to
        client = self.client
        url = await asyncio.to_thread(lambda: client.url)  # found on first use
        token = client._impl._token or ""
        return (url, token) if not url.startswith("unix:") else None


def deploy_fields(spec: FunctionSpec) -> dict[str, Any]:
    """``spec`` as the keywords of ``Client.deploy(name, code, **fields)``
    (which rebuilds exactly ``spec`` with ``FunctionSpec.from_code``)."""
    d = spec.to_dict()
    for key in ("name", "source"):
        d.pop(key)
    d["isolation_required"] = frozenset(d["isolation_required"])
    return d


async def connect(km: Any) -> KernelControl:
    """The runtime for the kernels of ``km`` (a KernelManager): see the module docstring."""
    rt = server_runtime(km)
    if rt is not None:
        return RuntimeControl(rt, _own_address(km))
    from ..client import Client, NoServer

    parent = os.environ.get(ENV_PARENT_URL)
    if parent:
        return ClientControl(Client(parent, os.environ.get(ENV_PARENT_TOKEN)), f"the functionai server at {parent}")
    client = Client()
    try:
        url = await asyncio.to_thread(lambda: client.url)
        return ClientControl(client, f"the functionai server at {url}")
    except NoServer:
        pass
    from ..embedded import shared_client

    embedded = await asyncio.to_thread(shared_client)
    return ClientControl(embedded, f"an embedded runtime in this process ({embedded.data_dir})")


def server_runtime(obj: Any) -> Any:
    """The functionai Runtime of the Jupyter server that owns ``obj`` (a
    KernelManager: its parents are the server's MultiKernelManager, then the
    ServerApp), or None outside such a server."""
    return server_setting(obj, RUNTIME_SETTING)


def _own_address(obj: Any) -> tuple[str, str] | None:
    """The URL and token of the Jupyter server that owns ``obj`` (its
    ServerApp is a parent), where it serves HTTP; else None."""
    seen = 0
    while obj is not None and seen < 10:
        url = getattr(obj, "connection_url", None)
        provider = getattr(obj, "identity_provider", None)
        if isinstance(url, str) and provider is not None:
            if not url.startswith(("http://", "https://")):
                return None  # a server on a Unix socket: not relayed
            return url, str(getattr(provider, "token", "") or "")
        obj = getattr(obj, "parent", None)
        seen += 1
    return None


def server_setting(obj: Any, key: str) -> Any:
    """The web app setting ``key`` of the Jupyter server that owns ``obj``, or None."""
    seen = 0
    while obj is not None and seen < 10:
        web_app = getattr(obj, "web_app", None)
        settings = getattr(web_app, "settings", None)
        if isinstance(settings, dict) and settings.get(key) is not None:
            return settings[key]
        obj = getattr(obj, "parent", None)
        seen += 1
    return None


async def _shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` so that cancelling the caller does not cancel it."""
    task = asyncio.ensure_future(aw)
    task.add_done_callback(_consume)
    return await asyncio.shield(task)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
