"""Agent memory: a small tool an AI agent calls inside its own session.

Each session keeps a list of notes in ``ctx.session.state`` (persisted by the
runtime after every call) and appends each note to ``notes.txt`` in its
private working directory.  Every call returns what the session knows, plus a
few facts about the sandbox it runs in (uid, pid, hostname, network
interfaces), so the isolation between sessions can be seen from the outside.

Events (all keys optional)::

    {"note": "text to remember"}
    {"peek": "/path/of/another/session's/file"}   try to read it (should fail)

Plain Python: only the standard library.
"""

from __future__ import annotations

import os
import socket
from typing import Any

NOTES_FILE = "notes.txt"


def _try_read(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return {"path": path, "readable": True, "content": f.read()}
    except OSError as exc:
        return {"path": path, "readable": False, "error": f"{type(exc).__name__}: {exc.strerror}"}


def handler(event: Any, ctx: Any) -> dict[str, Any]:
    event = event if isinstance(event, dict) else {}
    notes = ctx.session.state.setdefault("notes", [])
    path = os.path.join(ctx.workdir, NOTES_FILE)
    note = event.get("note")
    if note:
        note = str(note)
        notes.append(note)
        with open(path, "a") as f:
            f.write(note + "\n")
    try:
        with open(path) as f:
            file_lines = f.read().splitlines()
    except FileNotFoundError:
        file_lines = []
    return {
        "session": ctx.session_id,
        "notes": list(notes),
        "file": path,
        "file_lines": file_lines,
        "uid": os.getuid(),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "network": sorted(name for _, name in socket.if_nameindex()),
        "peek": _try_read(str(event["peek"])) if event.get("peek") else None,
    }
