"""SessionRouter: session affinity, isolation and persistence.

* Affinity: every call carrying a session id reaches that session's live
  instance.
* Isolation: an instance is bound to one session at most and is never
  reused for another; each session has its own uid and working directory.
* Persistence: the session's ``state`` (JSON) is written to the store after
  each call that changed it, and its working directory lives on disk, so
  after the idle TTL (instance stopped), a timeout or a crash the next call
  resumes it in a new instance.
* Calls on one session are serialized (``concurrency`` 1) or bounded by the
  spec's ``concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Instance
from ..errors import Conflict, InvalidArgument

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")

LIVE = "live"  # bound to a running instance
PAUSED = "paused"  # resumable: no instance, state and workdir kept
CLOSED = "closed"
EXPIRED = "expired"
ENDED = (CLOSED, EXPIRED)


def check_session_id(session_id: Any) -> str:
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        shown = repr(session_id)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise InvalidArgument(
            f"session id {shown} is not valid: use 1-128 characters from A-Z a-z 0-9 . _ : @ -, starting with a letter or digit"
        )
    return session_id


@dataclass
class LiveSession:
    id: str
    function: str
    uid: int | None
    workdir: str
    created_at: float
    expires_at: float
    idle_ttl: float
    state_json: str = "{}"
    calls: int = 0
    last_used: float = field(default_factory=time.time)
    instance: Instance | None = None
    status: str = PAUSED
    busy: int = 0
    ended: str | None = None
    cold_pending: bool = False  # opened without a call: the first call completes its ColdStart
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def root(self) -> str:
        return os.path.dirname(self.workdir)


class UidAllocator:
    """Per-session uids from ``[base, base + span)``; never two live sessions on one uid."""

    def __init__(self, base: int, span: int, in_use: set[int]) -> None:
        self.base, self.span = base, span
        self.in_use = set(in_use)
        self.next = base

    def allocate(self) -> int:
        for _ in range(self.span):
            uid = self.next
            self.next = self.base + (self.next - self.base + 1) % self.span
            if uid not in self.in_use:
                self.in_use.add(uid)
                return uid
        raise Conflict(f"no free session uid in [{self.base}, {self.base + self.span})")

    def release(self, uid: int | None) -> None:
        if uid is not None:
            self.in_use.discard(uid)


def make_workdir(root: str, uid: int | None) -> str:
    """``root/work`` owned by the session uid, mode 0700 (nobody else can enter)."""
    work = os.path.join(root, "work")
    os.makedirs(work, mode=0o700, exist_ok=True)
    if uid is not None and os.geteuid() == 0:
        os.chown(root, uid, uid)
        os.chown(work, uid, uid)
    os.chmod(root, 0o700)
    os.chmod(work, 0o700)
    return work


def remove_tree(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path, ignore_errors=True)
