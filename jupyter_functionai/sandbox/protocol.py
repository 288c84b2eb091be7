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
    if not isinstance(msg, dict):
        raise FrameError("frame is not a JSON object")
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


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> dict[str, Any] | None:
    """Read one frame; ``None`` at a clean end of stream."""
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > limit:
        raise FrameError(f"frame of {size} bytes exceeds the limit of {limit}")
    body = _recv_exact(sock, size)
    if body is None:
        raise FrameError("stream ended inside a frame")
    return decode_body(body)


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
