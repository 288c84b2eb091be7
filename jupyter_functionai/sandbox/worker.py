"""The loop inside every instance.

An instance is forked from a template (or started fresh), isolates itself
(``sandbox_setup``), says ``ready``, is *bound* to one session (uid, working
directory, state), then serves calls until told to stop or its socket closes.

Messages (see ``protocol``), runtime -> instance::

    {"op": "bind", "session_id", "uid", "workdir", "state_json", "env", "prime", "warmup"}
                                         (or carried in the fork request's cfg["bind"])
    {"op": "attach", "session_id", "state_json"}   a pre-bound warm-pool instance meets its session
    {"op": "call", "id", "event", "attach"?, "task"?}  (attach may ride on the first call;
                                         task: {"id", "attempt", "resume_from_json"} for a durable task)
    {"op": "stop"}

instance -> runtime::

    {"op": "ready", "isolation"}            after sandbox setup
    {"op": "bound", "isolation", "bind_ms"}  after the session binding
    {"op": "progress", "id", "fraction", "message"}
    {"op": "chunk", "id", "data"}            one streamed item (generator handlers)
    {"op": "checkpoint", "id", "data_json"}  ``ctx.checkpoint(obj)`` of a task
    {"op": "result", "id", "value", "streamed", "state_json"?, "logs", "logs_dropped", "duration_ms"}
    {"op": "error", "id"?, "error": {"kind", "message", ...}, "logs", ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import io
import json
import logging
import os
import resource
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from . import disk as sdisk
from . import isolation as iso
from . import pages, seccomp
from .protocol import (
    HEADER,
    FrameError,
    decode_body,
    encode,
    recv_frame,
    recv_frame_bytes,
    send_frame,
)

SOCK_FD = 3
NETNS_FD = 4  # a network namespace made ahead by the template, until sandbox_setup joins it
DISK_FD = 5  # the session disk's ext4, mounted ahead (detached) by the runtime, until bind attaches it
MNTNS_FD = 6  # a mount namespace the template masked ahead, until sandbox_setup joins it
MNTNS_STATE_FD = 7  # the state directory, as seen in that namespace before its masks
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Capture:
    """Bounded capture of one call's output; beyond the cap bytes are counted."""

    __slots__ = ("buf", "cap", "dropped", "size")

    def __init__(self, cap: int) -> None:
        self.buf: list[str] = []
        self.size = 0
        self.cap = cap
        self.dropped = 0

    def write(self, s: str) -> None:
        n = len(s)
        room = self.cap - self.size
        if n <= room:
            self.buf.append(s)
            self.size += n
        else:
            if room > 0:
                self.buf.append(s[:room])
                self.size += room
            self.dropped += n - max(room, 0)

    def text(self) -> str:
        return "".join(self.buf)


class _Router(io.TextIOBase):
    """Installed as sys.stdout/sys.stderr: routes writes to the calling
    thread's capture (so concurrent calls do not mix their output)."""

    def __init__(self, local: threading.local) -> None:
        self._local = local

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        cap = getattr(self._local, "capture", None)
        if cap is not None:
            cap.write(s)
        return len(s)

    def flush(self) -> None:
        pass


def reap_orphans() -> int:
    """As PID 1 of its namespace, the worker inherits every orphan of the
    handler's processes (a double-forked daemon): reap those that exited, so
    zombies neither pile up across calls nor count against the pids limit.

    Only zombies nobody else will wait for: a child that a live
    ``subprocess.Popen`` (or a multiprocessing process) still owns is left to
    its owner, so its exit status is not stolen.  Runs between calls."""
    if os.getpid() != 1:
        return 0
    try:  # one system call in the common case: no child at all, or none has exited
        if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return 0
    except ChildProcessError:
        return 0
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == "1":
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and fields[1] == "1":
            zombies.append(int(entry))
    if not zombies:
        return 0
    owned = _owned_children()
    reaped = 0
    for pid in zombies:
        if pid in owned:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
        except ChildProcessError:
            pass
    return reaped


def _owned_children() -> set[int]:
    import gc

    out = set()
    for obj in gc.get_objects():
        pid = getattr(obj, "pid", None) if type(obj).__name__ in ("Popen", "Process") else None
        if isinstance(pid, int) and getattr(obj, "returncode", getattr(obj, "exitcode", None)) is None:
            out.add(pid)
    return out


class Session:
    """``ctx.session``: the session's id and its persisted ``state`` dict."""

    def __init__(self, id: str | None, state: dict[str, Any]) -> None:
        self.id = id
        self.state = state


class Context:
    """The second argument of every handler."""

    def __init__(self, worker: Worker, call_id: str, task: dict[str, Any] | None = None) -> None:
        self._worker = worker
        self.call_id = call_id
        task = task or {}
        #: the durable task this call runs (None for a plain invoke), and which
        #: attempt this is (1, 2, ...): keys for idempotent side effects
        self.task_id: str | None = task.get("id")
        self.attempt: int = int(task.get("attempt", 1))
        resume = task.get("resume_from_json")
        #: the last ``checkpoint`` of an earlier attempt of this task, else None
        self.resume_from: Any = json.loads(resume) if resume else None
        self.session_id = worker.session.id
        self.session = worker.session
        self.workdir = worker.workdir
        self.instance_id = worker.instance_id
        self.function = worker.function
        self.version = worker.version
        self.log = worker.logger

    @property
    def state(self) -> dict[str, Any]:
        return self.session.state

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0..1) to the caller while the call runs."""
        f = float(fraction)
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"progress fraction must be within [0, 1], got {fraction!r}")
        self._worker.send({"op": "progress", "id": self.call_id, "fraction": f, "message": str(message)})

    def checkpoint(self, obj: Any) -> None:
        """Persist ``obj`` (JSON) for this task: a retried or resumed attempt
        gets it back as ``ctx.resume_from``. The runtime stores it before it
        reads anything else this call sends. Outside a task it does nothing
        but check that ``obj`` is JSON."""
        try:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"a checkpoint must be JSON-serialisable: {exc}") from None
        if len(text) > self._worker.max_state:
            raise ValueError(f"a checkpoint is {len(text)} bytes, over the limit of {self._worker.max_state}")
        if self.task_id is not None:
            self._worker.send({"op": "checkpoint", "id": self.call_id, "data_json": text})


class Worker:
    def __init__(self, sock: socket.socket, cfg: dict[str, Any], module: ModuleType | None, handler: Callable[..., Any] | None) -> None:
        self.sock = sock
        self.cfg = cfg
        self.module = module
        self.handler = handler
        self.instance_id: str = cfg["instance_id"]
        self.function: str = cfg.get("function", "")
        self.version: int = cfg.get("version", 0)
        self.max_output = int(cfg.get("max_output_bytes", 1 << 20))
        self.max_result = int(cfg.get("max_result_bytes", 6 << 20))
        self.max_state = int(cfg.get("max_state_bytes", 16 << 20))
        self.max_payload = int(cfg.get("max_payload_bytes", 6 << 20))
        self.concurrency = int(cfg.get("concurrency", 1))
        self.session = Session(None, {})
        self.workdir: str | None = None
        self._state_json = "{}"
        self._calls = 0  # calls in flight (concurrency > 1)
        self._calls_lock = threading.Lock()
        self._wlock = threading.Lock()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self.logger = logging.getLogger(f"functionai.{self.function}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        handler_ = logging.StreamHandler(_Router(self._local))
        handler_.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.logger.handlers[:] = [handler_]

    def send(self, msg: dict[str, Any]) -> None:
        with self._wlock:
            send_frame(self.sock, msg)

    # -- binding ----------------------------------------------------------

    def bind(self, msg: dict[str, Any], report: iso.IsolationReport) -> None:
        t0 = t_last = time.perf_counter()

        def mark(step: str) -> None:  # ms per bind step, next to sandbox_setup's
            nonlocal t_last
            now = time.perf_counter()
            report.timings[step] = round((now - t_last) * 1000, 3) + report.timings.get(step, 0.0)
            t_last = now

        workdir = msg.get("workdir")
        uid = msg.get("uid")
        if not self.cfg.get("isolate", True):
            uid = None
        elif _STATE_FD is not None and workdir:
            try:
                _bind_workdir(workdir, msg.get("disk"), uid, report)
            except OSError as exc:
                report.missing["tmp"] = f"binding the working directory failed: {exc}"
            if self.cfg.get("mps"):
                try:
                    _bind_mps(self.cfg["mps"])
                except OSError as exc:
                    report.missing["mps"] = f"binding the card's MPS directories failed: {exc}"
            os.chdir(workdir)
        _close_state_fd()
        _close_premounted()  # attached by now, or not to be: unattached, the mount goes
        mark("workdir")
        if self.cfg.get("isolate", True) and _MASK_PLAN:
            try:  # the masks' tmpfs read-only, now that the workdir is in
                iso.seal_masks(_MASK_PLAN)
            except OSError as exc:
                report.missing["tmp"] = f"sealing the filesystem masks failed: {exc}"
        mark("seal")
        if self.cfg.get("isolate", True) and self.cfg.get("userns"):
            _session_user_namespace(self.cfg, report)
            mark("session_userns")
        caps_error = ""
        if self.cfg.get("isolate", True) and os.geteuid() == 0:
            try:  # needs CAP_SETPCAP: before the uid drop
                iso.drop_bounding_set()
            except OSError as exc:
                caps_error = str(exc)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": workdir or "/",
            "TMPDIR": "/tmp",
            "FUNCTIONAI_SESSION_ID": msg.get("session_id") or "",
            "FUNCTIONAI_INSTANCE_ID": self.instance_id,
            "FUNCTIONAI_FUNCTION": self.function,
        }
        env.update(self.cfg.get("env", {}))
        env.update(msg.get("env", {}))
        os.environ.clear()
        os.environ.update(env)
        if uid is not None and os.geteuid() == 0:
            try:
                if self.cfg.get("max_pids"):
                    iso.set_rlimit(resource.RLIMIT_NPROC, int(self.cfg["max_pids"]))
                    report.rlimits.append("nproc")
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                report.uid = uid
            except OSError as exc:
                report.missing["uid"] = f"setuid({uid}) failed: {exc}"
        elif uid is None:
            report.missing.setdefault("uid", "no per-session uid assigned")
        else:
            report.missing.setdefault("uid", "not root: cannot switch uid")
        if self.cfg.get("isolate", True):
            try:
                iso.prctl(iso.PR_SET_NO_NEW_PRIVS, 1)
                report.no_new_privs = True
            except OSError:
                pass
            # no capability left before any user code runs: in a user namespace
            # CAP_SYS_ADMIN would let the handler unmount its masks
            try:
                iso.clear_capabilities()
            except OSError as exc:
                caps_error = caps_error or str(exc)
            if not caps_error and iso.effective_capabilities() == 0:
                report.caps_dropped = True
            else:
                report.missing["caps"] = f"dropping capabilities failed: {caps_error or 'CapEff is not 0'}"
            mark("uid_caps")
            # last: nothing below needs a blocked call (mounts are done, the uid dropped)
            seccomp.install(self.cfg, report)
            t_last = time.perf_counter()
        report.reseeded = iso.reseed_random_sources([self.module] if self.module else [])
        mark("reseed")
        self.session = Session(msg.get("session_id"), json.loads(msg.get("state_json") or "{}"))
        self._state_json = msg.get("state_json") or "{}"
        self.workdir = workdir
        missing = set(self.cfg.get("required", [])) - report.achieved()
        if missing:
            raise _SetupError(
                "isolation_unavailable",
                "required isolation layer(s) not achieved: "
                + ", ".join(f"{m} ({report.missing.get(m, 'unavailable')})" for m in sorted(missing)),
            )
        if msg.get("prime"):
            self._prime(msg.get("warmup"))
        self.send({"op": "bound", "isolation": report.to_dict(), "bind_ms": (time.perf_counter() - t0) * 1000})

    def _prime(self, warmup: str | None) -> None:
        """Prime a warm-pool instance: drive one synthetic call through the real
        call path (framing, context, capture, JSON, state) with the module's
        warmup hook as the handler, so the first real call touches pages this
        process already owns instead of copy-on-write faulting them in."""
        fn: Callable[..., Any] = lambda event, ctx: None
        if warmup:
            hook = getattr(self.module, warmup, None)
            if not callable(hook):
                raise _SetupError("user_exception", f"the spec's warmup {warmup!r} is not a callable of the module")

            def fn(event: Any, ctx: Context) -> Any:
                res = hook()
                if inspect.iscoroutine(res):
                    self._loop().run_until_complete(res)

        sent: list[dict[str, Any]] = []
        frame = recv_frame_from_bytes(encode({"op": "call", "id": "prime", "event": {"prime": True}}))
        saved = (self.session, self._state_json)
        self.run_call(frame, handler=fn, send=sent.append)
        self.session, self._state_json = saved
        if sent and sent[0].get("op") == "error":
            err = sent[0]["error"]
            raise _SetupError("user_exception", f"warmup {warmup!r} failed: {err.get('message')}")

    def attach(self, info: dict[str, Any]) -> None:
        """A pre-bound instance takes on its session (first call of a warm-pool hit)."""
        self.session = Session(info.get("session_id"), json.loads(info.get("state_json") or "{}"))
        self._state_json = info.get("state_json") or "{}"
        os.environ["FUNCTIONAI_SESSION_ID"] = info.get("session_id") or ""

    # -- calls ------------------------------------------------------------

    def serve(self) -> None:
        while True:
            try:
                raw = recv_frame_bytes(self.sock, limit=self.max_payload + 65536)
                received = time.perf_counter()
                msg = None if raw is None else decode_body(raw)
            except FrameError as exc:
                self.send({"op": "error", "error": {"kind": "bad_payload", "message": str(exc)}})
                return
            if msg is None or msg.get("op") == "stop":
                return
            if msg.get("op") == "attach":
                self.attach(msg)
                continue
            if msg.get("op") == "call":
                if msg.get("trace") is True:  # a profiled call: when each step happened
                    msg["trace"] = {"received": received, "decoded": time.perf_counter()}
                if "attach" in msg:
                    self.attach(msg["attach"])
                if isinstance(msg.get("trace"), dict):
                    msg["trace"]["attached"] = time.perf_counter()
                if self.concurrency > 1:
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="fai-call")
                    with self._calls_lock:
                        self._calls += 1
                    self._pool.submit(self._run_then_reap, msg)
                else:
                    self.run_call(msg)
                    reap_orphans()

    def _run_then_reap(self, msg: dict[str, Any]) -> None:
        try:
            self.run_call(msg)
        finally:
            with self._calls_lock:
                self._calls -= 1
                if self._calls == 0:
                    reap_orphans()

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
        return loop

    def run_call(
        self,
        msg: dict[str, Any],
        handler: Callable[..., Any] | None = None,
        send: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        cid = msg["id"]
        handler = handler or self.handler
        cap = _Capture(self.max_output)
        self._local.capture = cap
        t0 = time.perf_counter()
        streamed = False
        trace = msg.get("trace") if isinstance(msg.get("trace"), dict) else None
        try:
            ctx = Context(self, cid, msg.get("task"))
            assert handler is not None
            if trace is not None:
                trace["handler_start"] = time.perf_counter()
            value = handler(msg.get("event"), ctx)
            if inspect.iscoroutine(value):
                value = self._loop().run_until_complete(value)
            if inspect.isgenerator(value) or inspect.isasyncgen(value):
                streamed = True
                self._stream(cid, value)
                value = None
            if trace is not None:
                trace["handler_end"] = time.perf_counter()
            body = {"op": "result", "id": cid, "value": value, "streamed": streamed}
            try:
                encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise _SetupError("bad_payload", f"the handler returned a value that is not JSON-serialisable: {exc}") from None
            if len(encoded) > self.max_result:
                raise _SetupError(
                    "payload_too_large",
                    f"result is {len(encoded)} bytes, over the limit of {self.max_result}",
                )
            self._attach_state(body)
        except _SetupError as exc:
            body = {"op": "error", "id": cid, "error": {"kind": exc.kind, "message": exc.message}}
        except MemoryError:
            body = {"op": "error", "id": cid, "error": {"kind": "out_of_memory", "message": "the handler ran out of memory (MemoryError)"}}
        except BaseException as exc:
            body = {"op": "error", "id": cid, "error": _user_error(exc)}
            try:
                self._attach_state(body)
            except _SetupError:
                pass
        finally:
            self._local.capture = None
        body["logs"] = cap.text()
        body["logs_dropped"] = cap.dropped
        body["duration_ms"] = (time.perf_counter() - t0) * 1000
        if trace is not None:
            trace["sending"] = time.perf_counter()
            body["trace"] = trace
        if send is not None:
            send(body)
            return
        self.send(body)

    def _stream(self, cid: str, gen: Any) -> None:
        if inspect.isasyncgen(gen):
            loop = self._loop()
            while True:
                try:
                    item = loop.run_until_complete(gen.__anext__())
                except StopAsyncIteration:
                    break
                self._send_chunk(cid, item)
        else:
            for item in gen:
                self._send_chunk(cid, item)

    def _send_chunk(self, cid: str, item: Any) -> None:
        try:
            encoded = json.dumps(item, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _SetupError("bad_payload", f"a streamed item is not JSON-serialisable: {exc}") from None
        if len(encoded) > self.max_result:
            raise _SetupError("payload_too_large", f"a streamed item is {len(encoded)} bytes, over the limit of {self.max_result}")
        self.send({"op": "chunk", "id": cid, "data": item})

    def _roll_back_state(self) -> None:
        """A refused state is not kept: the session goes on from the last one
        the runtime accepted (else every later call would be refused too)."""
        self.session.state = json.loads(self._state_json)

    def _attach_state(self, body: dict[str, Any]) -> None:
        try:
            text = json.dumps(self.session.state, separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            self._roll_back_state()
            raise _SetupError("bad_payload", f"session.state is not JSON-serialisable: {exc}; it was rolled back to the last saved state") from None
        if len(text) > self.max_state:
            self._roll_back_state()
            raise _SetupError(
                "payload_too_large",
                f"session.state is {len(text)} bytes, over the limit of {self.max_state}; it was rolled back to the last saved state",
            )
        if text != self._state_json:
            self._state_json = text
            body["state_json"] = text


_STATE_FD: int | None = None
_PREMOUNTED_FD: int | None = None  # DISK_FD while it holds the session disk's detached mount
_MASK_PLAN: list[tuple[str, list[str]]] = []


def recv_frame_from_bytes(data: bytes) -> dict[str, Any]:
    (size,) = HEADER.unpack(data[: HEADER.size])
    return decode_body(data[HEADER.size : HEADER.size + size])


def _close_state_fd() -> None:
    global _STATE_FD
    if _STATE_FD is not None:
        os.close(_STATE_FD)
        _STATE_FD = None


_DISK_DAEMON_USED = False
_KEY_CALLS = frozenset({"keyctl", "add_key", "request_key"})


def _session_user_namespace(cfg: dict[str, Any], report: iso.IsolationReport) -> None:
    """Not root: every session runs as the same host uid, so give it a user
    namespace of its own, nested in the template's.  The kernel keeps a user
    keyring per user namespace and counts RLIMIT_NPROC per user namespace and
    uid (Linux 5.14+), so this is what makes ``@u`` and the process limit per
    session.  Done at bind, after the working directory is mounted: mounts need
    the template namespace's capabilities, which the new namespace lacks."""
    try:
        iso.enter_user_namespace()
    except OSError as exc:
        report.missing["session_user"] = f"a user namespace of the session's own failed: {exc}"
        return
    report.namespaces["user"] = True
    # the session keyring is inherited from the template (shared by every
    # instance): a fresh one is needed only where the filter lets keyctl through
    conf = cfg.get("seccomp") or {}
    if conf.get("mode") == "off" or _KEY_CALLS & set(conf.get("allow") or []):
        try:
            iso.join_new_session_keyring()
        except OSError as exc:
            report.missing["keyring"] = f"a session keyring of the session's own failed: {exc}"
    if cfg.get("max_pids"):
        try:  # counted in the new namespace only: this session's processes
            iso.set_rlimit(resource.RLIMIT_NPROC, int(cfg["max_pids"]))
            report.rlimits.append("nproc")
        except (OSError, ValueError) as exc:
            report.missing["rlimits"] = f"RLIMIT_NPROC: {exc}"


def _bind_workdir(workdir: str, disk: dict[str, Any] | None, uid: int | None, report: iso.IsolationReport) -> None:
    """Expose the session's working directory (read-write) inside the masked
    state directory; everything else there stays hidden.  With a disk image
    (``disk``), the image's filesystem is mounted there instead, so the
    session's writes are capped at its size."""
    assert _STATE_FD is not None
    state_dir = os.readlink(f"/proc/self/fd/{_STATE_FD}")
    rel = os.path.relpath(workdir, state_dir)
    if rel.startswith(".."):
        raise OSError(f"working directory {workdir} is outside the state directory")
    os.makedirs(workdir, exist_ok=True)
    if disk and disk.get("image"):
        try:
            t0 = time.perf_counter()
            if _mount_disk(workdir, disk, uid):
                report.ahead.append("disk")
            report.timings["disk"] = round((time.perf_counter() - t0) * 1000, 3)
            report.disk_mb = int(disk["mb"])
            report.disk = disk["mech"]
            return
        except OSError as exc:
            report.missing["disk"] = f"mounting the session's disk image failed: {exc}"
    elif disk and disk.get("error"):
        report.missing["disk"] = disk["error"]
    fd = os.open(rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=_STATE_FD)
    try:
        iso.mount(f"/proc/self/fd/{fd}", workdir, None, iso.MS_BIND)
        iso.mount(None, workdir, None, iso.MS_REMOUNT | iso.MS_BIND | iso.MS_NOSUID | iso.MS_NODEV | iso.mount_flags_of(workdir))
    finally:
        os.close(fd)


def _bind_mps(mps: dict[str, str]) -> None:
    """An MPS client instance (gpu/mps.py): its card's pipe directory where the
    environment says (inside the masked state directory), and its card's shm
    directory as ``/dev/shm``, where the card's MPS server shares memory with
    its clients. Nothing else of the state directory or of the host's
    ``/dev/shm`` comes with them."""
    assert _STATE_FD is not None
    state_dir = os.readlink(f"/proc/self/fd/{_STATE_FD}")
    for path, target in ((mps["pipe"], mps["pipe"]), (mps["shm"], "/dev/shm")):
        rel = os.path.relpath(path, state_dir)
        if rel.startswith(".."):
            raise OSError(f"{path} is outside the state directory")
        fd = os.open(rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=_STATE_FD)
        try:
            os.makedirs(target, exist_ok=True)
            iso.mount(f"/proc/self/fd/{fd}", target, None, iso.MS_BIND)
            iso.mount(None, target, None, iso.MS_REMOUNT | iso.MS_BIND | iso.MS_NOSUID | iso.MS_NODEV | iso.mount_flags_of(target))
        finally:
            os.close(fd)


def _open_image_rw(image: str, scratch: str) -> int:
    """Open the image read-write although every mount here is read-only: bind
    it, writable, onto a scratch file of the state directory's mask (tmpfs,
    not yet sealed), open it, and take the bind away again."""
    opath = os.open(image, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=_STATE_FD)
    try:
        os.close(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        iso.mount(f"/proc/self/fd/{opath}", scratch, None, iso.MS_BIND)
        try:
            iso.mount(None, scratch, None, iso.MS_REMOUNT | iso.MS_BIND | iso.MS_NOSUID | iso.MS_NODEV | iso.mount_flags_of(scratch))
            return os.open(scratch, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        finally:
            iso.umount(scratch)
            os.unlink(scratch)
    finally:
        os.close(opath)


def _own_disk(workdir: str, uid: int | None) -> None:
    """Root: the session's uid owns its disk's root directory; a session that
    moved to a new uid (its old one was taken while it was paused) gets every
    file of its disk (the host's chown of its directory stops at the image)."""
    if uid is None:
        return
    if os.lstat(workdir).st_uid not in (uid, 0):
        for dirpath, dirnames, filenames in os.walk(workdir):
            for name in (*dirnames, *filenames):
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(os.path.join(dirpath, name), uid, uid)
    os.chown(workdir, uid, uid)
    os.chmod(workdir, 0o700)


def _close_premounted() -> None:
    global _PREMOUNTED_FD
    fd, _PREMOUNTED_FD = _PREMOUNTED_FD, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _with_session_loop(image: str, dev: str, flags: int, use: Callable[[int], bool]) -> bool:
    """``use(loop_fd)`` once ``dev`` is checked to be a loop device backed
    by this session's image (in the state directory); False, and ``use`` not
    called, if it is not, or if anything fails."""
    if not (dev.startswith("/dev/loop") and dev[9:].isdigit()):
        return False
    try:
        st = os.stat(image, dir_fd=_STATE_FD, follow_symlinks=False)
        lfd = os.open(dev, flags | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return sdisk.backed_by(lfd, st) and use(lfd)
    except OSError:
        return False
    finally:
        os.close(lfd)


def _attach_premounted(workdir: str, image: str, dev: str) -> bool:
    """The runtime mounted the session's (fresh) image ahead, detached, and
    handed the mount over with the fork request: attach it on the working
    directory, once it is checked to be the filesystem of the loop device
    backed by this session's image.  False (nothing attached) if not."""
    fd = _PREMOUNTED_FD
    if fd is None:
        return False

    def attach(lfd: int) -> bool:
        rdev = os.fstat(lfd).st_rdev
        if sdisk.premounted_device(fd) != (os.major(rdev), os.minor(rdev)):
            return False
        sdisk.attach_premounted(fd, workdir)
        return True

    try:
        return _with_session_loop(image, dev, os.O_RDONLY, attach)
    finally:
        _close_premounted()


def _mount_prepared_loop(workdir: str, image: str, dev: str) -> bool:
    """The backend attached the session's (fresh) image to a loop device
    ahead of time: mount that device, once it is checked to be backed by this
    session's image.  False (nothing done) if it is not usable."""

    def mount(_lfd: int) -> bool:
        sdisk.mount_ext4(dev, workdir)
        return True

    return _with_session_loop(image, dev, os.O_RDWR, mount)


def _mount_disk(workdir: str, disk: dict[str, Any], uid: int | None) -> bool:
    """Mount the session's disk on ``workdir``; True if it was mounted ahead
    (and only attached here)."""
    image = str(disk["image"])
    if os.path.isabs(image) or image.startswith(".."):
        raise OSError(f"disk image {image!r} is outside the state directory")
    if disk["mech"] == "loop" and disk.get("loop_dev"):
        dev = str(disk["loop_dev"])
        if disk.get("premounted") and _attach_premounted(workdir, image, dev):
            _own_disk(workdir, uid)
            return True
        if _mount_prepared_loop(workdir, image, dev):
            _own_disk(workdir, uid)
            return False
    fd = _open_image_rw(image, os.path.join(os.path.dirname(workdir), ".fai-disk"))
    try:
        if disk["mech"] == "loop":
            sdisk.mount_loop(fd, workdir)
            _own_disk(workdir, uid)
        elif disk["mech"] == "fuse2fs":
            global _DISK_DAEMON_USED
            _DISK_DAEMON_USED = True
            sdisk.mount_fuse2fs(fd, workdir, str(disk["fuse2fs"]), disk.get("e2fsck"))
        else:
            raise OSError(f"unknown disk mechanism {disk['mech']!r}")
    finally:
        os.close(fd)
    return False


class _SetupError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _user_error(exc: BaseException) -> dict[str, Any]:
    tb = exc.__traceback__
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(_PKG_DIR)]
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    return {
        "kind": "user_exception",
        "message": f"{type(exc).__name__}: {exc}",
        "type": type(exc).__name__,
        "traceback": text,
    }


def sandbox_setup(cfg: dict[str, Any], pid_ns: bool) -> iso.IsolationReport:
    """Isolate the current (freshly forked, root) process; record what worked."""
    report = iso.IsolationReport(network=cfg.get("network", "none"))
    t_last = time.perf_counter()

    def mark(step: str) -> None:
        nonlocal t_last
        now = time.perf_counter()
        report.timings[step] = round((now - t_last) * 1000, 3)
        t_last = now

    # first: the mounts below make /sys/fs/cgroup read-only
    procs = cfg.get("cgroup_procs") or []
    if procs:
        try:
            for p in procs:
                with open(p, "w") as f:
                    f.write("0")
            report.cgroup = f"v{cfg.get('cgroup_version')}"
        except OSError as exc:
            report.missing["cgroup"] = f"joining the cgroup failed: {exc}"
    else:
        report.missing["cgroup"] = cfg.get("cgroup_error") or "cgroups unavailable"
    mark("cgroup")
    report.namespaces["pid"] = pid_ns
    if not pid_ns:
        report.missing["pid"] = cfg.get("pid_ns_error", "no pid namespace")
    report.user_namespace = bool(cfg.get("userns"))
    if cfg.get("userns_error"):
        report.missing["user"] = f"entering a user namespace failed: {cfg['userns_error']}"
    try:
        os.setsid()
    except OSError:
        pass
    want = {"mount": iso.CLONE_NEWNS, "ipc": iso.CLONE_NEWIPC, "uts": iso.CLONE_NEWUTS}
    if cfg.get("network", "none") != "host":
        want["net"] = iso.CLONE_NEWNET
    masked_ahead = False
    mnt_ahead = cfg.pop("mntns_fds", None)
    if mnt_ahead is not None:
        ns_fd, state_fd = mnt_ahead
        try:  # joined, not made: the template made it, masks and all
            iso.setns(ns_fd, iso.CLONE_NEWNS)
            del want["mount"]
            report.namespaces["mount"] = True
            report.ahead.append("mount")
            masked_ahead = True
        except OSError:
            os.close(state_fd)  # made below instead
        finally:
            os.close(ns_fd)
    made_ahead = cfg.pop("netns_fd", None)
    if made_ahead is not None:
        try:
            if "net" in want:  # joined, not made: the template made it ahead
                iso.setns(made_ahead, iso.CLONE_NEWNET)
                del want["net"]
                report.namespaces["net"] = True
                report.ahead.append("net")
        except OSError:
            pass  # made below instead
        finally:
            os.close(made_ahead)
    flags = 0
    for v in want.values():
        flags |= v
    try:
        iso.unshare(flags)
        report.namespaces.update(dict.fromkeys(want, True))
    except OSError:
        for k, v in want.items():
            try:
                iso.unshare(v)
                report.namespaces[k] = True
            except OSError as exc:
                report.namespaces[k] = False
                report.missing[k] = str(exc)
    if cfg.get("network", "none") == "host":
        report.namespaces["net"] = False
    mark("unshare")
    if report.namespaces.get("mount"):
        try:
            # every mount private and read-only, submounts included
            if not masked_ahead:
                iso.make_root_private_readonly()
        except OSError as exc:
            report.missing["mount"] = f"mount setup failed: {exc}"
        if pid_ns and "mount" not in report.missing:
            try:
                iso.mount("proc", "/proc", "proc", iso.MS_NOSUID | iso.MS_NODEV | iso.MS_NOEXEC)
            except OSError as exc:  # the host's /proc would show every process
                report.namespaces["pid"] = False
                report.missing["pid"] = f"mounting a fresh /proc failed: {exc}"
            else:
                try:
                    iso.mask_proc_key_files()
                except OSError as exc:
                    report.missing["keyring"] = f"masking /proc/keys failed: {exc}"
        if report.namespaces.get("net") and "mount" not in report.missing:
            try:
                iso.mount_own_sysfs()
                report.own_sysfs = True
            except OSError as exc:  # the host's /sys shows the host's network devices
                report.missing["sysfs"] = f"mounting the sandbox's own /sys failed: {exc}"
    if report.namespaces.get("mount") and "mount" not in report.missing and cfg.get("masks"):
        # Hide /tmp, /dev/shm, the state directory (other sessions, the store)
        # and unreadable ancestors of the Python installation; keep an O_PATH
        # handle on the state directory so ``bind`` can expose this session's
        # working directory (and nothing else) later.
        global _STATE_FD, _MASK_PLAN
        try:
            plan = [(m, list(k)) for m, k in cfg["masks"]]
            if masked_ahead:
                _STATE_FD = MNTNS_STATE_FD
            else:
                _STATE_FD = os.open(cfg["state_dir"], os.O_PATH | os.O_DIRECTORY)
                iso.apply_masks(plan, tmp_size_mb=int(cfg.get("tmp_mb", 64)))
            _MASK_PLAN = plan
            report.fs_masked = [m for m, _ in plan]
            report.private_tmp = any(m == "/tmp" for m, _ in plan)
        except OSError as exc:
            report.missing["tmp"] = f"filesystem masks failed: {exc}"
            _close_state_fd()
    elif "mount" in report.missing or not report.namespaces.get("mount"):
        report.missing.setdefault("tmp", "no mount namespace")
    mark("mounts")
    if report.namespaces.get("uts"):
        try:
            socket.sethostname(f"fai-{cfg['instance_id'][-8:]}")
        except OSError:
            pass
    if report.namespaces.get("net") and cfg.get("network") == "loopback":
        try:
            iso.loopback_up()
        except OSError as exc:
            report.missing["net"] = f"could not bring lo up: {exc}"
    mark("uts_net")
    try:
        iso.set_rlimit(resource.RLIMIT_CORE, 0)
        report.rlimits.append("core")
        if not report.cgroup:
            mem = int(cfg.get("memory_mb", 512)) * 1024 * 1024
            iso.set_rlimit(resource.RLIMIT_AS, mem)
            report.rlimits.append("as")
    except (OSError, ValueError) as exc:
        report.missing["rlimits"] = str(exc)
    return report


NOBODY = 65534


def _in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the host's
    (whose map is the whole range: ``0 0 4294967295``)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def probe_call_pages(module: ModuleType | None, handler: Callable[..., Any] | None, function: str, warmup: str | None, out_fd: int) -> None:
    """Entry point of the template's page probe (see :mod:`.pages`): a
    throwaway fork of the template, never an instance, that drives one call
    through the real call path (the spec's ``warmup`` hook as the handler)
    and writes ``{"ranges": [[start, end], ...]}`` (the
    template's pages that call wrote) or ``{"error": ...}`` as JSON to
    ``out_fd``.  Never returns.

    It runs confined, like no instance but more than the template: no
    network (a namespace of its own), no new privileges, and as root the
    uid ``nobody`` (kept dumpable, so that its own pagemap stays its own
    to read)."""
    code = 0
    try:
        iso.close_fds_except([out_fd])
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        with contextlib.suppress(OSError):
            iso.unshare(iso.CLONE_NEWNET)
        iso.prctl(iso.PR_SET_NO_NEW_PRIVS, 1)
        if os.geteuid() == 0 and not _in_user_namespace():  # (in one, it is a normal user outside already)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            iso.prctl(iso.PR_SET_DUMPABLE, 1)
        ours, _theirs = socket.socketpair()
        probe = Worker(ours, {"instance_id": "probe", "function": function}, module, handler)
        regions = pages.private_writable_regions()
        before = pages.page_flags(regions)
        before = pages.page_flags(regions)  # (this pass's own bookkeeping reuses the first's memory)
        try:
            probe._prime(warmup)
        except _SetupError as exc:
            out: dict[str, Any] = {"error": exc.message}
        else:
            out = {"ranges": pages.written(before, pages.page_flags(regions))}
        data = json.dumps(out).encode()
        while data:
            data = data[os.write(out_fd, data):]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def child_main(
    sock_fd: int,
    cfg: dict[str, Any],
    module: ModuleType | None,
    handler: Callable[..., Any] | None,
    pid_ns: bool,
    netns_fd: int = -1,
    disk_fd: int = -1,
    mntns: tuple[int, int] = (-1, -1),
) -> None:
    """Entry point of a forked instance; never returns.  ``netns_fd``: a new
    network namespace the template made ahead, for this instance only;
    ``disk_fd``: its session disk, mounted ahead and detached; ``mntns``: a
    mount namespace with its masks in place, and the state directory's
    descriptor from that namespace."""
    global _PREMOUNTED_FD
    code = 0
    try:
        keep = [SOCK_FD]
        # out of the way of the dup2s below
        if netns_fd >= 0:
            netns_fd = fcntl.fcntl(netns_fd, fcntl.F_DUPFD, 10)
        if disk_fd >= 0:
            disk_fd = fcntl.fcntl(disk_fd, fcntl.F_DUPFD, 10)
        if min(mntns) >= 0:
            mntns = (fcntl.fcntl(mntns[0], fcntl.F_DUPFD, 10), fcntl.fcntl(mntns[1], fcntl.F_DUPFD, 10))
        if sock_fd != SOCK_FD:
            os.dup2(sock_fd, SOCK_FD)
        if netns_fd >= 0:
            os.dup2(netns_fd, NETNS_FD)
            keep.append(NETNS_FD)
            cfg["netns_fd"] = NETNS_FD
        if disk_fd >= 0:
            os.dup2(disk_fd, DISK_FD)
            keep.append(DISK_FD)
            _PREMOUNTED_FD = DISK_FD
        if min(mntns) >= 0:
            os.dup2(mntns[0], MNTNS_FD)
            os.dup2(mntns[1], MNTNS_STATE_FD)
            keep += [MNTNS_FD, MNTNS_STATE_FD]
            cfg["mntns_fds"] = (MNTNS_FD, MNTNS_STATE_FD)
        iso.close_fds_except(keep)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        if devnull > 2:
            os.close(devnull)
        sock = socket.socket(fileno=SOCK_FD)
        sock.setblocking(True)
        if cfg.get("isolate", True):
            report = sandbox_setup(cfg, pid_ns)
        else:
            report = iso.IsolationReport(network="host")
            report.missing["all"] = "isolation switched off by configuration"
        if cfg.pop("forked_ahead", False):
            report.ahead.insert(0, "process")  # the template's standby: forked before it was asked for
        if cfg.pop("pages_ahead", 0):
            report.ahead.append("pages")  # and its own copies of the pages a call writes, taken then
        report.fds_closed = True
        worker = Worker(sock, cfg, module, handler)
        router = _Router(worker._local)
        sys.stdout = sys.stderr = router
        missing = (set(cfg.get("required", [])) - {"uid", "tmp", "seccomp", "disk"}) - report.achieved()
        if missing:
            raise _SetupError(
                "isolation_unavailable",
                "required isolation layer(s) not achieved: "
                + ", ".join(f"{m} ({report.missing.get(m, 'unavailable')})" for m in sorted(missing)),
            )
        worker.send({"op": "ready", "isolation": report.to_dict()})
        msg = cfg.pop("bind", None) or recv_frame(sock)
        if msg is None or msg.get("op") == "stop":
            os._exit(0)
        if msg.get("op") != "bind":
            raise _SetupError("bad_payload", f"expected bind, got {msg.get('op')!r}")
        worker.bind(msg, report)
        worker.serve()
    except _SetupError as exc:
        try:
            send_frame(socket.socket(fileno=os.dup(SOCK_FD)), {"op": "error", "error": {"kind": exc.kind, "message": exc.message}})
        except OSError:
            pass
        code = 3
    except BaseException as exc:
        try:
            err = {"kind": "instance_crashed", "message": f"sandbox setup failed: {type(exc).__name__}: {exc}"}
            send_frame(socket.socket(fileno=os.dup(SOCK_FD)), {"op": "error", "error": err})
        except OSError:
            pass
        code = 4
    finally:
        if _DISK_DAEMON_USED:
            sdisk.stop_daemon()  # fuse2fs flushes the image as it unmounts
        os._exit(code)
