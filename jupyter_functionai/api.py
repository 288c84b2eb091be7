"""The client interface of the notebook surfaces (magics, panels, tools,
sandbox kernels), as typing Protocols.

* :class:`FunctionAIClient`: functions, sessions, durable tasks, cold starts.
  Both :class:`~jupyter_functionai.client.Client` (a functionai server over
  HTTP) and :class:`~jupyter_functionai.embedded.EmbeddedClient` (a Runtime
  in this process) are one.
* :class:`ServerClient`: adds what only a server offers (hosted MCP servers,
  notebook runs and schedules); only ``Client`` is one.  :func:`as_server`
  says whether a client is.

mypy checks the two implementations against these (the assertions at the
end of ``client.py`` and ``embedded.py``); the blocking methods themselves are
generated from the async implementations (``jupyter_functionai._sync``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    from .client import InvokeResponse

__all__ = ["FunctionAIClient", "ServerClient", "as_server"]


@runtime_checkable
class FunctionAIClient(Protocol):
    """The blocking client every notebook surface takes."""

    source: str  # how ``connect`` chose it, for messages

    @property
    def url(self) -> str: ...

    def close(self) -> None: ...

    def deploy(self, name: str, code: str | None = None, *, handler: str = "handler", **spec_fields: Any) -> dict[str, Any]: ...

    def functions(self) -> list[dict[str, Any]]: ...

    def versions(self, name: str) -> list[dict[str, Any]]: ...

    def rollback(self, name: str, version: int) -> dict[str, Any]: ...

    def invoke(self, name: str, event: Any = None, *, session: str | None = None) -> InvokeResponse: ...

    def open_session(self, name: str, session: str | None = None) -> dict[str, Any]: ...

    def session(self, id: str) -> dict[str, Any]: ...

    def close_session(self, id: str) -> None: ...

    def sessions(self, function: str | None = None, *, status: str | None = None) -> list[dict[str, Any]]: ...

    def coldstarts(self, function: str | None = None, limit: int | None = None) -> list[dict[str, Any]]: ...

    def gpus(self) -> dict[str, Any]: ...

    def scaling(self, function: str | None = None, *, since: float | None = None, limit: int | None = None) -> dict[str, Any]: ...

    def usage(
        self,
        function: str | None = None,
        session: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        step: float | None = None,
        by: str | None = None,
    ) -> list[dict[str, Any]]: ...

    def submit(self, name: str, event: Any = None, *, session: str | None = None, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]: ...

    def task(self, id: str, *, wait: float = 0.0) -> dict[str, Any]: ...

    def wait_task(self, id: str, timeout: float | None = None) -> dict[str, Any]: ...

    def tasks(self, function: str | None = None, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]: ...

    def task_counts(self) -> dict[str, dict[str, int]]: ...

    def cancel_task(self, id: str) -> dict[str, Any]: ...

    def retry_task(self, id: str) -> dict[str, Any]: ...


@runtime_checkable
class ServerClient(FunctionAIClient, Protocol):
    """A client of a functionai server: MCP hosting, notebook runs and schedules too."""

    def auth_headers(self) -> dict[str, str]: ...

    def function(self, name: str) -> dict[str, Any]: ...

    def mcp_url(self, name: str) -> str: ...

    def mcp_servers(self) -> list[dict[str, Any]]: ...

    def mcp_server(self, name: str) -> dict[str, Any]: ...

    def mcp_add(self, name: str, command: list[str] | None = None, *, catalog: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]: ...

    def mcp_publish_tool(self, server: str, tool: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]: ...

    def mcp_remove_tool(self, server: str, tool: str) -> dict[str, Any]: ...

    def mcp_sessions(self, server: str | None = None, status: str | None = None) -> list[dict[str, Any]]: ...

    def mcp_end_session(self, id: str) -> None: ...

    def start_run(
        self, notebook: str, parameters: dict[str, Any] | None = None, *, timeout: float | None = None,
        output_formats: list[str] | None = None, kernel: str | None = None, tags: list[str] | None = None,
    ) -> dict[str, Any]: ...

    def wait_run(self, id: str, timeout: float | None = None) -> dict[str, Any]: ...

    def runs(self, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]: ...

    def cancel_run(self, id: str) -> dict[str, Any]: ...

    def schedules(self) -> list[dict[str, Any]]: ...

    def run_schedule_now(self, id: str) -> dict[str, Any]: ...

    def pause_schedule(self, id: str) -> dict[str, Any]: ...

    def resume_schedule(self, id: str) -> dict[str, Any]: ...


#: the methods a client needs to be a :class:`ServerClient`
SERVER_METHODS = tuple(n for n, v in vars(ServerClient).items() if not n.startswith("_") and callable(v))


def as_server(client: FunctionAIClient) -> ServerClient | None:
    """``client`` if it talks to a functionai server (it has the methods of
    :class:`ServerClient`), else None (the embedded runtime).  Unlike
    ``isinstance(client, ServerClient)`` on Python 3.11, it never reads
    ``client.url`` (which may look for the server)."""
    ok = all(callable(getattr(client, n, None)) for n in SERVER_METHODS)
    return cast("ServerClient", client) if ok else None
