"""Session routing (the role DESIGN.md calls SessionRouter, played by the Runtime with these parts): affinity, isolation and persistence.

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
import fcntl
import os
import re
import secrets
import shutil
import signal
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
    principal: str | None = None  # who opened it (None: the owner); see Runtime.invoke
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def root(self) -> str:
        return os.path.dirname(self.workdir)


#: Where uid leases live: one file per uid, shared by every runtime on the host.
LEASE_DIR = "/run/functionai/uids"
#: A released uid is not handed out again for this long (its keys and any
#: straggling process of the last owner must be gone first).
UID_QUARANTINE_S = 30.0


class UidAllocator:
    """Per-session uids from ``[base, base + span)``, leased host-wide.

    A uid is held through a lease file under ``LEASE_DIR`` locked with
    ``flock`` for as long as this process uses it, so no two live sandboxes
    on the host share a uid, whichever runtime (or data dir) they belong to;
    a runtime that dies drops its locks with its file descriptors.  Taking a
    lease kills whatever still runs as that uid (a dead runtime's leftovers)
    and skips uids released less than ``UID_QUARANTINE_S`` ago.  Candidates
    start at a random place, so runtimes starting together do not contend.
    Without root there are no per-session uids and nothing is leased."""

    def __init__(self, base: int, span: int, in_use: set[int], *, lease_dir: str = LEASE_DIR, quarantine_s: float = UID_QUARANTINE_S) -> None:
        self.base, self.span = base, span
        self.in_use: set[int] = set()
        self.lease_dir = lease_dir
        self.quarantine_s = quarantine_s
        self._leases: dict[int, int] = {}  # uid -> the fd holding its lock
        self._dir_ready = False
        self.next = base + secrets.randbelow(span)
        for uid in in_use:
            self.claim(uid)

    def allocate(self) -> int:
        for _ in range(self.span):
            uid = self.next
            self.next = self.base + (self.next - self.base + 1) % self.span
            if uid not in self.in_use and self._lease(uid):
                self.in_use.add(uid)
                return uid
        raise Conflict(f"no free session uid in [{self.base}, {self.base + self.span})")

    def claim(self, uid: int) -> bool:
        """Hold ``uid`` again (a paused session's, at restart); False when
        another runtime holds it now (the session then moves to a new uid)."""
        if uid in self.in_use:
            return True
        if not self._lease(uid, quarantine=False):
            return False
        self.in_use.add(uid)
        return True

    def release(self, uid: int | None) -> None:
        if uid is None:
            return
        self.in_use.discard(uid)
        fd = self._leases.pop(uid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"released {time.time():.3f}\n".encode(), 0)
            os.close(fd)  # drops the lock

    def close(self) -> None:
        """Drop every lease (the runtime stops; paused sessions re-claim at start)."""
        for fd in self._leases.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._leases.clear()

    def _lease(self, uid: int, *, quarantine: bool = True) -> bool:
        if os.geteuid() != 0:
            return True  # no per-session uids without root: nothing to coordinate
        if not self._dir_ready:
            os.makedirs(self.lease_dir, mode=0o700, exist_ok=True)
            self._dir_ready = True
        fd = os.open(os.path.join(self.lease_dir, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # another live runtime holds it
        try:
            last = os.pread(fd, 128, 0).decode(errors="replace").split()
            if quarantine and len(last) == 2 and last[0] == "released":
                with contextlib.suppress(ValueError):
                    if time.time() - float(last[1]) < self.quarantine_s:
                        os.close(fd)
                        return False
            if len(last) == 2 and last[0] == "held":  # its holder died holding it
                kill_uid(uid)  # whatever it left running as this uid
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"held {os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._leases[uid] = fd
        return True


def kill_uid(uid: int) -> int:
    """SIGKILL every process whose real or effective uid is ``uid``."""
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                line = next((x for x in f if x.startswith("Uid:")), "")
        except OSError:
            continue
        ids = line.split()[1:3]
        if str(uid) in ids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
    return killed


def chown_tree(root: str, uid: int) -> None:
    """Give a session's directory tree to a new uid (its old one was taken)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(dirpath, name), uid, uid)
    os.chown(root, uid, uid)


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
