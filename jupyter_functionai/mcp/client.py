"""The one adapter to the ``mcp`` package's *client* API.

jupyter-functionai serves MCP with its own implementation (:mod:`.manager`,
:mod:`.protocol`); only the notebook-side clients (:mod:`jupyter_functionai.tools`,
the panels' try-a-tool form) use the official SDK, and only through this
module, so a change of the SDK's API touches one file. ``mcp`` is the optional
extra ``jupyter-functionai[mcp]``; both lines of the SDK work:

* mcp 2.x: ``mcp.Client`` over ``streamable_http_client(url, http_client=httpx2.AsyncClient)``;
* mcp 1.x: ``mcp.ClientSession`` over ``streamable_http_client(url, http_client=httpx.AsyncClient)``
  (1.24+) or ``streamablehttp_client(url, headers=..., timeout=...)`` (older 1.x).

Results are handed back as the wire sends them (plain JSON dicts with the
protocol's camelCase names: ``inputSchema``, ``structuredContent``,
``isError``), whatever the SDK's own models call those fields.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import ModuleType
from typing import Any

from ..errors import FunctionAIError

__all__ = ["INSTALL_HINT", "McpCallError", "McpClientSession", "McpUnavailable", "mcp_version", "open_session"]

INSTALL_HINT = "pip install 'jupyter-functionai[mcp]'"


class McpUnavailable(FunctionAIError, ImportError):
    """The ``mcp`` package (the optional ``[mcp]`` extra) is not installed or unusable."""

    kind = "mcp_unavailable"
    status = 501


class McpCallError(FunctionAIError):
    """The server answered a request with a JSON-RPC error (``code``, ``message``)."""

    kind = "mcp_error"
    status = 502

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, code=code)
        self.code = code


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise McpUnavailable(f"the MCP client needs the mcp package ({exc}): {INSTALL_HINT}") from None


def mcp_version() -> str | None:
    """The installed ``mcp`` distribution's version, or None when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcp")
    except PackageNotFoundError:
        return None


def _error_types(mcp_exceptions: ModuleType) -> tuple[type[BaseException], ...]:
    # mcp 2.x: MCPError (with .code/.message); mcp 1.x: McpError (with .error.code/.error.message)
    found = tuple(t for t in (getattr(mcp_exceptions, n, None) for n in ("MCPError", "McpError")) if isinstance(t, type))
    return found or (RuntimeError,)


def _wire(model: Any) -> dict[str, Any]:
    """A result model of either SDK as its JSON-RPC form."""
    out: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return out


class McpClientSession:
    """An initialized MCP session, whichever SDK opened it."""

    def __init__(self, session: Any, errors: tuple[type[BaseException], ...]) -> None:
        self._session = session
        self._errors = errors

    def _translate(self, exc: BaseException) -> McpCallError:
        err = getattr(exc, "error", None)
        code = getattr(err, "code", getattr(exc, "code", -32603))
        message = getattr(err, "message", getattr(exc, "message", str(exc)))
        return McpCallError(int(code), str(message))

    async def list_tools(self) -> list[dict[str, Any]]:
        """The server's tools as the wire lists them (``name``, ``description``, ``inputSchema``, ...)."""
        try:
            listed = await self._session.list_tools()
        except self._errors as exc:
            raise self._translate(exc) from None
        return [_wire(t) for t in listed.tools]

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a tool: the result as the wire sends it (``content``, ``structuredContent``,
        ``isError``). A JSON-RPC error answer raises :class:`McpCallError`."""
        try:
            result = await self._session.call_tool(name, arguments or {})
        except self._errors as exc:
            raise self._translate(exc) from None
        return _wire(result)


@asynccontextmanager
async def open_session(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 300.0,
    client_name: str | None = None,
    client_version: str | None = None,
) -> AsyncIterator[McpClientSession]:
    """An MCP session on the streamable-HTTP endpoint ``url`` (ended on exit).

    ``timeout`` bounds one request's answer; connecting is bounded at 30 s.
    ``client_name``/``client_version`` set the ``clientInfo`` the server sees
    (the SDK's default when None). Raises :class:`McpUnavailable` without the
    ``mcp`` package."""
    mcp = _import("mcp")
    transport_mod = _import("mcp.client.streamable_http")
    errors = _error_types(_import("mcp.shared.exceptions"))
    extra: dict[str, Any] = {}
    if client_name is not None:
        implementation = _import("mcp.types").Implementation
        extra["client_info"] = implementation(name=client_name, version=client_version or "0")
    from ..client import split_unix_url

    url, uds = split_unix_url(url)  # a sandbox kernel's relay (kernel/relay.py)
    async with AsyncExitStack() as stack:
        if hasattr(mcp, "Client"):  # mcp 2.x
            httpx2 = _import("httpx2")
            via = {"transport": httpx2.AsyncHTTPTransport(uds=uds)} if uds else {}
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30, read=timeout), **via))
            session = await stack.enter_async_context(mcp.Client(transport_mod.streamable_http_client(url, http_client=http), **extra))
        else:  # mcp 1.x
            if hasattr(transport_mod, "streamable_http_client"):  # 1.24+ (streamablehttp_client is deprecated there)
                httpx = _import("httpx")
                via = {"transport": httpx.AsyncHTTPTransport(uds=uds)} if uds else {}
                http = await stack.enter_async_context(
                    httpx.AsyncClient(headers=headers or {}, timeout=httpx.Timeout(30, read=timeout), follow_redirects=True, **via)
                )
                transport = transport_mod.streamable_http_client(url, http_client=http)
            elif uds:
                raise McpUnavailable("this mcp version (< 1.24) cannot reach a server through a Unix socket: pip install 'mcp>=1.24'")
            else:
                transport = transport_mod.streamablehttp_client(url, headers=headers or {}, timeout=30, sse_read_timeout=timeout)
            streams = await stack.enter_async_context(transport)
            session = await stack.enter_async_context(mcp.ClientSession(streams[0], streams[1], **extra))
            await session.initialize()
        yield McpClientSession(session, errors)
