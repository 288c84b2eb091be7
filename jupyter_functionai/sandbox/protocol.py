"""The one wire format between the runtime and an instance.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON (one object).  The same framing is used from blocking code (the worker
inside a sandbox) and from asyncio (the runtime).  Frames larger than
``MAX_FRAME`` are refused on both sides, so a misbehaving instance cannot make
the runtime allocate without bound.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # 1 GiB hard ceiling; per-function limits are far lower


class FrameError(Exception):
    """The peer sent something that is not a valid frame."""


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def encode(obj: Any) -> bytes:
    body = dumps(obj)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(body)
    except ValueError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    except RecursionError:
        raise FrameError("frame is nested too deeply") from None
    if not isinstance(msg, dict):
        raise FrameError("frame is not a JSON object")
    return msg


# -- what an instance may send (the runtime trusts none of it) ---------------

#: Nesting allowed in any value an instance sends (events and results included).
MAX_DEPTH = 128
#: Error kinds a worker may report; anything else is a forged frame.
INSTANCE_ERROR_KINDS = frozenset(
    {"user_exception", "bad_payload", "payload_too_large", "out_of_memory", "instance_crashed", "error"}
)
_MAX_ID = 128
#: The points of a traced call a worker reports (``time.perf_counter``:
#: CLOCK_MONOTONIC, one clock for every process on the host): the frame read,
#: decoded, attached to its session, the handler started and ended, the
#: answer about to be sent.
TRACE_POINTS = frozenset({"received", "decoded", "attached", "handler_start", "handler_end", "sending"})
_MAX_TEXT = 1 << 16


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            if d >= limit:
                return False
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            if d >= limit:
                return False
            stack.extend((x, d + 1) for x in v)
        elif isinstance(v, float) and not math.isfinite(v):
            return False
    return True


def _text(msg: dict[str, Any], key: str, *, required: bool = False, limit: int = _MAX_TEXT) -> None:
    v = msg.get(key)
    if v is None and not required:
        return
    if not isinstance(v, str) or len(v) > limit:
        raise FrameError(f"{key!r} must be a string of at most {limit} characters")


def _number(msg: dict[str, Any], key: str, lo: float = 0.0, hi: float = math.inf) -> None:
    v = msg.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise FrameError(f"{key!r} must be a number in [{lo:g}, {hi:g}]")


def _json_text(msg: dict[str, Any], key: str, *, obj: bool, limit: int) -> None:
    v = msg.get(key)
    if v is None:
        return
    if not isinstance(v, str):
        raise FrameError(f"{key!r} must be JSON text")
    if len(v) > limit or (len(v) * 4 > limit and len(v.encode()) > limit):
        raise FrameError(f"{key!r} is over the limit of {limit} bytes")
    try:
        decoded = json.loads(v)
    except (ValueError, RecursionError):
        raise FrameError(f"{key!r} is not valid JSON") from None
    if obj and not isinstance(decoded, dict):
        raise FrameError(f"{key!r} must be a JSON object")
    if not _depth_ok(decoded):
        raise FrameError(f"{key!r} is nested deeper than {MAX_DEPTH} or holds a non-finite number")


def check_instance_frame(msg: dict[str, Any], *, max_state_bytes: int) -> dict[str, Any]:
    """Validate one frame that an instance sent, before anything acts on it:
    a known op, fields of the right types and sizes, JSON that parses (the
    session state must be a JSON object), bounded nesting, finite numbers.
    Raises :class:`FrameError` naming the first problem; the runtime then ends
    that instance (its session keeps its last persisted state)."""
    op = msg.get("op")
    if op in ("ready", "bound"):
        if not isinstance(msg.get("isolation", {}), dict) or not _depth_ok(msg.get("isolation", {}), 8):
            raise FrameError("'isolation' must be a small JSON object")
        _number(msg, "bind_ms")
        return msg
    if op == "error" and msg.get("id") is None:  # a setup error, before any call
        pass
    else:
        cid = msg.get("id")
        if not isinstance(cid, str) or not 0 < len(cid) <= _MAX_ID:
            raise FrameError(f"{op!r} frame needs a call id (a string of 1-{_MAX_ID} characters)")
    if op == "progress":
        _number(msg, "fraction", 0.0, 1.0)
        _text(msg, "message")
    elif op == "checkpoint":
        _json_text(msg, "data_json", obj=False, limit=max(max_state_bytes, 1 << 20))
    elif op == "chunk":
        if not _depth_ok(msg.get("data")):
            raise FrameError(f"'data' is nested deeper than {MAX_DEPTH} or holds a non-finite number")
    elif op in ("result", "error"):
        _json_text(msg, "state_json", obj=True, limit=max_state_bytes)
        _text(msg, "logs", limit=1 << 26)
        _number(msg, "logs_dropped")
        _number(msg, "duration_ms")
        trace = msg.get("trace")
        if trace is not None and (
            not isinstance(trace, dict)
            or not set(trace) <= TRACE_POINTS
            or not all(isinstance(v, float) and math.isfinite(v) for v in trace.values())
        ):
            raise FrameError(f"'trace' must map some of {sorted(TRACE_POINTS)} to finite numbers")
        if op == "result":
            if not isinstance(msg.get("streamed", False), bool):
                raise FrameError("'streamed' must be a boolean")
            if not _depth_ok(msg.get("value")):
                raise FrameError(f"'value' is nested deeper than {MAX_DEPTH} or holds a non-finite number")
        else:
            err = msg.get("error")
            if not isinstance(err, dict) or err.get("kind") not in INSTANCE_ERROR_KINDS:
                raise FrameError(f"'error' must be an object whose kind is one of {sorted(INSTANCE_ERROR_KINDS)}")
            for key in ("message", "type", "traceback"):
                _text(err, key, limit=1 << 20)
            if not _depth_ok(err, 8):
                raise FrameError("'error' is nested too deeply")
    else:
        raise FrameError(f"unknown op {op!r}")
    return msg


# -- blocking side (worker) -------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


def recv_frame_bytes(sock: socket.socket, limit: int = MAX_FRAME) -> bytes | None:
    """Read one frame's body, undecoded; ``None`` at a clean end of stream."""
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > limit:
        raise FrameError(f"frame of {size} bytes exceeds the limit of {limit}")
    body = _recv_exact(sock, size)
    if body is None:
        raise FrameError("stream ended inside a frame")
    return body


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> dict[str, Any] | None:
    """Read one frame; ``None`` at a clean end of stream."""
    body = recv_frame_bytes(sock, limit)
    return None if body is None else decode_body(body)


def send_frame(sock: socket.socket, obj: Any) -> None:
    sock.sendall(encode(obj))


# -- asyncio side (runtime) -------------------------------------------------


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> dict[str, Any] | None:
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("stream ended inside a frame header") from None
    (size,) = HEADER.unpack(head)
    if size > limit:
        raise FrameError(f"frame of {size} bytes exceeds the limit of {limit}")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise FrameError("stream ended inside a frame") from None
    return decode_body(body)
