"""JSON-RPC 2.0 and MCP wire constants and helpers (standard library only).

Which MCP revisions the hosted endpoint speaks: the session-based,
``initialize``-handshake revisions over streamable HTTP (2025-11-25, the
default, and 2025-06-18, 2025-03-26, 2024-11-05). A request at the stateless
2026-07-28 revision (``MCP-Protocol-Version: 2026-07-28``, e.g. the
``server/discover`` probe of the official client in ``mode="auto"``) is
answered with ``-32022`` naming those revisions, which makes a client fall
back to the handshake.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "HANDSHAKE_VERSIONS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_VERSION",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SERVER_ERROR",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "McpError",
    "error",
    "id_key",
    "kind_of",
    "negotiate",
    "notification",
    "result",
]

#: Revisions reachable through ``initialize``, newest first.
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_VERSION = HANDSHAKE_VERSIONS[0]
#: The version a request without ``MCP-Protocol-Version`` is assumed to use (spec).
DEFAULT_HEADER_VERSION = "2025-03-26"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # implementation-defined: the hosted server process failed
REQUEST_CANCELLED = -32800
UNSUPPORTED_PROTOCOL_VERSION = -32022


class McpError(Exception):
    """A JSON-RPC error answer, with the HTTP status it travels with."""

    def __init__(self, code: int, message: str, data: Any = None, *, http_status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.http_status = http_status

    def to_message(self, id: Any) -> dict[str, Any]:
        return error(id, self.code, self.message, self.data)


def result(id: Any, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": value}


def error(id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": err}


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def kind_of(msg: Any) -> str:
    """``request`` | ``notification`` | ``response``; raises McpError for anything else."""
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        raise McpError(INVALID_REQUEST, "not a JSON-RPC 2.0 message (an object with \"jsonrpc\": \"2.0\")", http_status=400)
    if "method" in msg:
        if not isinstance(msg["method"], str):
            raise McpError(INVALID_REQUEST, "method must be a string", http_status=400)
        params = msg.get("params")
        if params is not None and not isinstance(params, dict):
            raise McpError(INVALID_PARAMS, "params must be an object", http_status=400)
        if "id" not in msg:
            return "notification"
        if not _valid_id(msg["id"]):
            raise McpError(INVALID_REQUEST, "a request id must be a string or an integer", http_status=400)
        return "request"
    if "id" in msg and ("result" in msg or "error" in msg):
        return "response"
    raise McpError(INVALID_REQUEST, "a message needs a method (request, notification) or a result/error (response)", http_status=400)


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def id_key(value: Any) -> str:
    """A dict key for a request id that keeps ``1`` and ``"1"`` apart."""
    return json.dumps(value)


def negotiate(requested: Any) -> str:
    """The revision to answer an ``initialize`` with: the client's if we speak it, else our latest."""
    return requested if requested in HANDSHAKE_VERSIONS else LATEST_VERSION


def unsupported_version(requested: str) -> McpError:
    return McpError(
        UNSUPPORTED_PROTOCOL_VERSION,
        f"protocol version {requested!r} is not served here: this endpoint speaks the session-based revisions "
        f"{', '.join(HANDSHAKE_VERSIONS)} (start with initialize)",
        {"supported": list(HANDSHAKE_VERSIONS), "requested": requested},
        http_status=400,
    )
