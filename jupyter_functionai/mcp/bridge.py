"""The host half of a hosted stdio MCP server: newline-delimited JSON-RPC
over the Unix socket that the in-sandbox relay (:mod:`.stdio_handler`)
listens on.

Requests sent through :meth:`StdioBridge.request` wait for the response
with the same id; everything else the server sends (notifications, its own
requests) goes to ``on_message``. When the connection ends (the process
exited, the sandbox stopped), every waiting request fails with the error
that ``on_close`` returns, so a crash is an answer, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from .protocol import SERVER_ERROR, McpError, id_key

log = logging.getLogger("jupyter_functionai.mcp")

MAX_LINE = 64 * 1024 * 1024  # one JSON-RPC message


class StdioBridge:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_message: Callable[[dict[str, Any]], Awaitable[None]],
        on_close: Callable[[], Awaitable[McpError]],
    ) -> None:
        self.reader, self.writer = reader, writer
        self.on_message, self.on_close = on_message, on_close
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.closed = False
        self.close_error: McpError | None = None
        self._send_lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._read_loop(), name="fai-mcp-bridge")
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(
        cls,
        socket_fd: int,
        on_message: Callable[[dict[str, Any]], Awaitable[None]],
        on_close: Callable[[], Awaitable[McpError]],
    ) -> StdioBridge:
        """Connect to the relay's socket, given as an ``O_PATH`` descriptor
        (found without following the sandbox's symlinks, and free of the
        ~107-byte limit of a Unix socket address); the caller closes it."""
        if not stat.S_ISSOCK(os.fstat(socket_fd).st_mode):
            raise OSError(88, "the relay's socket is not a socket")
        reader, writer = await asyncio.open_unix_connection(f"/proc/self/fd/{socket_fd}", limit=MAX_LINE)
        return cls(reader, writer, on_message, on_close)

    async def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            raise self.close_error or McpError(SERVER_ERROR, "the MCP server's connection is closed")
        data = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        async with self._send_lock:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise McpError(SERVER_ERROR, f"the MCP server's connection broke: {exc}") from None

    async def request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send a request; its response (result or error message)."""
        key = id_key(msg["id"])
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[key] = fut
        try:
            await self.send(msg)
            return await asyncio.wait_for(asyncio.shield(fut), timeout) if timeout else await fut
        finally:
            if self.pending.get(key) is fut:
                del self.pending[key]

    def fail(self, key: str, err: McpError) -> None:
        fut = self.pending.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_exception(err)

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    line = await self.reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    log.warning("an MCP server sent a message over %d bytes: closing its session", MAX_LINE)
                    break
                except (ConnectionError, OSError):
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.info("an MCP server wrote a line that is not JSON: %.200r", line)
                    continue
                if not isinstance(msg, dict):
                    continue
                if "method" not in msg and "id" in msg:  # a response
                    fut = self.pending.pop(id_key(msg["id"]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    continue
                try:
                    await self.on_message(msg)
                except Exception:
                    log.exception("routing a message of an MCP server failed")
        finally:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()
            try:
                err = await self.on_close()
            except Exception as exc:  # never leave a request waiting
                err = McpError(SERVER_ERROR, f"the MCP server's connection ended ({exc})")
            self.close_error = err
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self.pending.clear()
            if not self.done.done():
                self.done.set_result(None)

    async def close(self) -> None:
        """Close the connection (the relay keeps the process until its session stops)."""
        if not self.closed:
            self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.done), 10)
