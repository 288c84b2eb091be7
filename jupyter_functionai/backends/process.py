"""Process backend: template (zygote) processes fork isolated instances.

Per function version one template process imports the function's module once
(:mod:`jupyter_functionai.sandbox.template`).  An instance is one fork of it
that isolates itself (namespaces, cgroup, per-session uid, private /tmp and a
masked filesystem view) before any session data reaches it.  When a template
cannot be made (it crashed while starting, or templates are switched off) an
instance is started ``fresh``: a new interpreter that loads the module and
forks exactly one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import (
    FunctionAIError,
    FunctionTimeout,
    GpuOutOfMemory,
    InstanceCrashed,
    InvalidSpec,
    OutOfMemory,
    UserError,
)
from ..gpu import GpuAllocator, Slice
from ..gpu.mps import MpsControl
from ..sandbox import disk as sdisk
from ..sandbox import isolation as iso
from ..sandbox import seccomp
from ..sandbox.protocol import FrameError, check_instance_frame, encode, read_frame
from ..spec import FunctionSpec
from .base import (
    SHARED_ENVS_DIR,
    Backend,
    Binding,
    CallOutcome,
    CheckpointCallback,
    ChunkCallback,
    FunctionVersion,
    Instance,
    ProgressCallback,
    UsageSample,
)

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READY_TIMEOUT = 60.0
#: How long an instance told to stop in order (its fuse2fs disk flushing) may
#: take before it is killed.
ORDERLY_STOP_S = 3.0
#: Stops that kill at once: the instance is running something (a call past
#: its time, a cancelled call), is not to be trusted with a grace period, or
#: its disk is thrown away with it (a sessionless call's).
ABRUPT_STOPS = frozenset({"timeout", "cancelled", "start failed", "bind failed", "no GPU capacity", "ephemeral call done"})
log = logging.getLogger(__name__)
TEMPLATE_TIMEOUT = 300.0


class _Template:
    """A running template process and its control socket."""

    def __init__(self, backend: ProcessBackend, fv: FunctionVersion, single_shot: bool = False) -> None:
        self.backend = backend
        self.fv = fv
        self.single_shot = single_shot
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl: socket.socket | None = None
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.forked: dict[str, asyncio.Future[int]] = {}
        self.import_ms = 0.0
        self.pid_ns = False
        self.closed = False
        self.retiring = False
        self.pids: set[int] = set()  # its instances not yet reaped
        #: a template in a user namespace is PID 1 of its own PID namespace:
        #: its pids -> the runtime's (from the pidfd that comes with ``forked``)
        self.host_pids: dict[int, int] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = self.fv.spec
        tspec = {
            "function": self.fv.name,
            "version": self.fv.version,
            "handler": spec.handler,
            "code_path": self.fv.code_path,
            "module": (spec.source.module or "").split(":")[0] if spec.source.kind == "module" else None,
            "sys_path": [self.fv.code_dir],
            "warmup": spec.warmup,
            "userns": self.backend.userns,
            "standby": not self.single_shot,  # keep one instance process forked ahead
        }
        env = sandbox_env(os.environ)
        env.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        env.update(dict(spec.env))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_PARENT, env.get("PYTHONPATH", "")) if p)
        log = open(os.path.join(self.backend.log_dir, f"template-{self.fv.name}-v{self.fv.version}.log"), "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter_functionai.sandbox.template", "--control", str(b.fileno()), "--spec", json.dumps(tspec)],
                pass_fds=(b.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.fv.code_dir,
                start_new_session=True,
            )
        finally:
            b.close()
            log.close()
        a.setblocking(False)
        self.ctl = a
        loop.add_reader(a.fileno(), self._on_readable)
        try:
            msg = await asyncio.wait_for(asyncio.shield(self.ready), TEMPLATE_TIMEOUT)
        except asyncio.TimeoutError:
            self.close()
            raise InstanceCrashed(f"the template of {self.fv.name} v{self.fv.version} did not start within {TEMPLATE_TIMEOUT:.0f}s") from None
        self.import_ms = float(msg.get("import_ms", 0.0))
        self.pid_ns = bool(msg.get("pid_ns"))

    def _on_readable(self) -> None:
        assert self.ctl is not None
        try:
            data, fds, _f, _a = socket.recv_fds(self.ctl, 1 << 20, 4)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        host_pid = None
        for fd in fds:
            if host_pid is None:
                host_pid = _pidfd_pid(fd)
            os.close(fd)
        if not data:
            self._lost()
            return
        msg = json.loads(data)
        op = msg.get("op")
        if op == "forked" and host_pid is not None:
            self.host_pids[int(msg["pid"])] = host_pid
            msg["pid"] = host_pid
        elif op == "exited" and self.host_pids:
            msg["pid"] = self.host_pids.pop(int(msg["pid"]), msg["pid"])
        if op == "ready":
            if not self.ready.done():
                self.ready.set_result(msg)
        elif op == "error":
            if not self.ready.done():
                self.ready.set_exception(FunctionAIError.from_dict(msg["error"]))
        elif op == "forked":
            fut = self.forked.pop(msg["iid"], None)
            if fut is not None and not fut.done():
                fut.set_result(int(msg["pid"]))
        elif op == "exited":
            self.backend._on_exit(int(msg["pid"]), int(msg["status"]))
            if self.single_shot:
                self.close()

    def _lost(self) -> None:
        if self.closed:
            return
        code = self.proc.poll() if self.proc else None
        err = InstanceCrashed(f"the template of {self.fv.name} v{self.fv.version} exited (status {code})")
        if not self.ready.done():
            self.ready.set_exception(err)
        for fut in self.forked.values():
            if not fut.done():
                fut.set_exception(err)
        self.forked.clear()
        self.close()

    async def fork(self, cfg: dict[str, Any], sock: socket.socket, disk_mount_fd: int | None = None) -> int:
        """Have the template fork an instance on ``sock``; ``disk_mount_fd``:
        the session disk's detached mount, which the instance attaches."""
        assert self.ctl is not None
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.forked[cfg["instance_id"]] = fut
        fds = [sock.fileno()] + ([disk_mount_fd] if disk_mount_fd is not None else [])
        try:
            socket.send_fds(self.ctl, [json.dumps({"op": "fork", "cfg": cfg}).encode()], fds)
        except OSError as exc:
            self.forked.pop(cfg["instance_id"], None)
            raise InstanceCrashed(f"the template of {self.fv.name} is gone: {exc}") from None
        return await asyncio.wait_for(fut, READY_TIMEOUT)

    @property
    def alive(self) -> bool:
        return not self.closed and self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pid in self.pids:  # a dead template cannot take its instances down
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.ctl is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.ctl.fileno())
            self.ctl.close()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGKILL)
            _reap_soon(self.proc)


_T = TypeVar("_T")


def _lower_this_threads_priority() -> None:
    """The stock thread yields the CPUs to the event loop and the instances
    (nice +10, this thread only: Linux applies a TID's nice to that thread)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))


def _close_stock_entry(entry: tuple[int, str, int]) -> None:
    lfd, _dev, mfd = entry
    for fd in (mfd, lfd):  # the mount first: then nothing holds the device
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _pidfd_pid(fd: int) -> int | None:
    """The pid (as this process sees it) of the process a pidfd refers to."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        pass
    return None


def _reap_soon(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a killed process off the event loop (it may take a moment to die)."""

    def reap() -> None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=30)

    try:
        asyncio.get_running_loop().run_in_executor(None, reap)
    except RuntimeError:  # no loop running (interpreter exit): wait here
        reap()


class _Pending:
    __slots__ = ("fut", "on_checkpoint", "on_chunk", "on_progress", "trace")

    def __init__(
        self,
        fut: asyncio.Future[dict[str, Any]],
        on_progress: ProgressCallback | None,
        on_chunk: ChunkCallback | None,
        on_checkpoint: CheckpointCallback | None = None,
        trace: dict[str, float] | None = None,
    ) -> None:
        self.trace = trace
        self.on_checkpoint = on_checkpoint
        self.fut = fut
        self.on_progress = on_progress
        self.on_chunk = on_chunk


#: What of the server's environment a template (and so every sandbox forked
#: from it) starts with: an allowlist, so that no server secret (tokens, cloud
#: keys, anything the user exported) is ever in a sandbox's memory, stack or
#: /proc; a function gets more only through its spec's ``env``.
SANDBOX_ENV_NAMES = frozenset(
    {
        "PATH", "LANG", "LANGUAGE", "TZ", "TERM", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
        "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
        # older OpenBLAS builds compute wrong results on some processors without these
        "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    }
)
SANDBOX_ENV_PREFIXES = ("LC_",)


def cgroup_tag(state_dir: str) -> str:
    """The prefix of the cgroups of the runtime of ``state_dir``."""
    return "r" + hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:10]


def sandbox_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the server's environment a sandbox may see (see ``SANDBOX_ENV_NAMES``)."""
    return {k: v for k, v in environ.items() if k in SANDBOX_ENV_NAMES or k.startswith(SANDBOX_ENV_PREFIXES)}


class ProcessInstance(Instance):
    backend = "process"

    def __init__(self, owner: ProcessBackend, fv: FunctionVersion, iid: str, path: str, cgroup: str | None) -> None:
        self.owner = owner
        self.fv = fv
        self.id = iid
        self.path = path
        self.pid: int | None = None
        self.isolation: dict[str, Any] = {}
        self.gpu_slice: Slice | None = None  # held on a card while it lives (gpu/allocator.py)
        self.gpu_over: tuple[int, int] | None = None  # (used, slice) MiB when the GPU watchdog ended it
        self.spawn_ms = 0.0
        self.init_ms = 0.0
        self.bound_session: str | None = None
        self.binding: Binding | None = None
        self.cgroup = cgroup
        self._disk_loop_fd: int | None = None
        self._disk_mount_fd: int | None = None  # the session disk's detached mount, until bound
        self.template: _Template | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._control: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # ready / bound / error
        self._pending: dict[str, _Pending] = {}
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._stop_reason: str | None = None
        self.oom_killed = False
        self._dead = False
        self._fault: str | None = None  # why the runtime ended it over what it sent
        self._reader_task: asyncio.Task[None] | None = None

    # -- plumbing -----------------------------------------------------------

    async def _open(self, sock: socket.socket) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(), name=f"fai-instance-{self.id}")

    async def _read_loop(self) -> None:
        """Every frame is checked before anything acts on it; a bad frame, or a
        callback that fails on one, ends this instance (its calls get
        ``instance_crashed`` saying why) and nothing else."""
        assert self.reader is not None
        limits = self.fv.spec.limits
        frame_limit = max(limits.max_result_bytes, limits.max_state_bytes) + (1 << 16)
        try:
            while True:
                msg = await read_frame(self.reader, limit=frame_limit)
                if msg is None:
                    break
                check_instance_frame(msg, max_state_bytes=limits.max_state_bytes)
                await self._dispatch(msg)
        except (FrameError, ConnectionError, OSError) as exc:
            self._fault = f"the instance sent an invalid frame: {exc}" if isinstance(exc, FrameError) else None
            self.owner.log_event(f"instance {self.id}: bad stream: {exc}")
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a callback failed (e.g. the store refused a checkpoint)
            self._fault = f"the runtime could not handle what the instance sent: {type(exc).__name__}: {exc}"
            self.owner.log_event(f"instance {self.id}: {self._fault}")
        await self._died()

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        cid = msg.get("id")
        if op in ("ready", "bound"):
            self._control.put_nowait(msg)
        elif op == "progress" and cid in self._pending:
            cb = self._pending[cid].on_progress
            if cb is not None:
                with contextlib.suppress(Exception):
                    res = cb(float(msg.get("fraction", 0.0)), str(msg.get("message", "")))
                    if asyncio.iscoroutine(res):
                        await res
        elif op == "checkpoint" and cid in self._pending:
            cb3 = self._pending[cid].on_checkpoint
            if cb3 is not None:  # awaited: stored before the result is read
                await cb3(str(msg.get("data_json", "null")))
        elif op == "chunk" and cid in self._pending:
            cb2 = self._pending[cid].on_chunk
            if cb2 is not None:
                await cb2(msg.get("data"))
        elif op in ("result", "error") and cid is not None:
            p = self._pending.pop(cid, None)
            if p is not None and not p.fut.done():
                if p.trace is not None:
                    p.trace["decoded"] = time.perf_counter()
                    p.trace.update({f"w_{k}": v for k, v in (msg.get("trace") or {}).items()})
                p.fut.set_result(msg)
        elif op == "error":
            self._control.put_nowait(msg)

    async def _died(self) -> None:
        if self._dead:
            return
        self._dead = True
        if self.gpu_slice is not None:
            self.owner.gpus.release(self.id)
        if self._fault is not None:
            self._kill()  # it is still running: what it sent ended it
        elif self._stop_reason is None and self.pid is not None:
            # ended on its own: wait (briefly) for the exit status to classify it
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), 2.0)
        err = self._death_error()
        futs = [p.fut for p in self._pending.values()]
        self._pending.clear()
        self._control.put_nowait({"op": "dead"})
        for fut in futs:
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # a waiter (if any) still gets it; nobody waiting is fine too
        if self.writer is not None:
            self.writer.close()
        if self._stop_reason is None:
            self._stop_reason = err.kind
            self.owner._notify_exit(self, err.kind)
        self._kill()

    def set_isolation(self, iso: dict[str, Any]) -> None:
        """What the sandbox reported it achieved, and the GPU slice it holds."""
        self.isolation = {**iso, "gpu": self.gpu_slice.describe()} if self.gpu_slice is not None else iso

    def _death_error(self) -> FunctionAIError:
        if self.gpu_over is not None:
            used, held = self.gpu_over
            return GpuOutOfMemory(
                f"the instance used {used} MiB of GPU memory, more than its slice of {held} MiB, and was stopped"
                if held
                else f"the instance used {used} MiB of GPU memory on a card it holds no slice of, and was stopped",
                instance_id=self.id,
                used_mib=used,
                slice_mib=held,
            )
        if self._stop_reason == "timeout":
            return FunctionTimeout(f"the call exceeded the timeout of {self.fv.spec.timeout_s:g}s; the instance was stopped")
        if self._stop_reason is not None:
            return InstanceCrashed(f"the instance was stopped ({self._stop_reason})", instance_id=self.id)
        if self.oom_killed or (self.cgroup and self.owner.cgroups.oom_killed(self.cgroup)):
            return OutOfMemory(
                f"the instance exceeded its memory limit of {self.fv.spec.resources.memory_mb} MiB and was killed",
                instance_id=self.id,
            )
        if self._fault is not None:
            return InstanceCrashed(self._fault, instance_id=self.id)
        if self._exit.done():
            st = self._exit.result()
            if os.WIFSIGNALED(st):
                sig = os.WTERMSIG(st)
                try:
                    name = signal.Signals(sig).name
                except ValueError:
                    name = str(sig)
                return InstanceCrashed(f"the instance was killed by {name}", instance_id=self.id, signal=sig)
            return InstanceCrashed(f"the instance exited with code {os.WEXITSTATUS(st)}", instance_id=self.id, exit_code=os.WEXITSTATUS(st))
        return InstanceCrashed("the instance closed its connection", instance_id=self.id)

    def _kill(self) -> None:
        if self.pid is not None and not self._exit.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)

    async def _send(self, msg: dict[str, Any], trace: dict[str, float] | None = None) -> None:
        if self._dead or self.writer is None:
            raise self._death_error()
        data = encode(msg)
        if trace is not None:
            trace["encoded"] = time.perf_counter()
        self.writer.write(data)
        await self.writer.drain()
        if trace is not None:
            trace["written"] = time.perf_counter()

    async def _await_control(self, what: str) -> dict[str, Any]:
        """The next control message (``ready`` / ``bound``); raises the
        instance's own error, or why it died."""
        try:
            msg = await asyncio.wait_for(self._control.get(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            await self.stop(f"{what} timed out")
            raise InstanceCrashed(f"the instance did not become {what} within {READY_TIMEOUT:.0f}s") from None
        if msg["op"] == "error":
            raise FunctionAIError.from_dict(msg.get("error", {}))
        if msg["op"] == "dead":
            self._control.put_nowait(msg)  # every later waiter learns it too
            raise self._death_error()
        return msg

    # -- Instance API ----------------------------------------------------------

    def _bind_message(self, binding: Binding, disk: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "op": "bind",
            "session_id": binding.session_id,
            "uid": binding.uid,
            "workdir": binding.workdir,
            "state_json": binding.state_json,
            "env": binding.env,
            "prime": binding.warmup,
            "warmup": self.fv.spec.warmup if binding.warmup else None,
            "disk": disk,
        }

    async def bind(self, binding: Binding) -> None:
        t0 = time.perf_counter()
        disk = await self.owner.session_disk(self.fv.spec, binding)
        if disk is not None:
            self._disk_loop_fd = disk.pop("_loop_fd", None)
            mfd = disk.pop("_mount_fd", None)
            if mfd is not None:  # a bind over the stream carries no descriptor: it mounts the device
                os.close(mfd)
        await self._send(self._bind_message(binding, disk))
        await self._bound(binding)
        self.init_ms += (time.perf_counter() - t0) * 1000

    def _release_disk_loop(self) -> None:
        """The loop device attached ahead for this instance's image: once the
        instance has mounted it (or failed to), our hold on it goes."""
        for fd in (self._disk_mount_fd, self._disk_loop_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._disk_mount_fd = self._disk_loop_fd = None

    async def _bound(self, binding: Binding) -> None:
        try:
            msg = await self._await_control("bound")
        finally:
            self._release_disk_loop()
        self.set_isolation(msg.get("isolation", self.isolation))
        self.bound_session = binding.session_id
        self.binding = binding

    async def call(
        self,
        call_id: str,
        event: Any,
        *,
        timeout: float,
        on_progress: ProgressCallback | None = None,
        on_chunk: ChunkCallback | None = None,
        attach: tuple[str | None, str] | None = None,
        task: dict[str, Any] | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        trace: dict[str, float] | None = None,
    ) -> CallOutcome:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = _Pending(fut, on_progress, on_chunk, on_checkpoint, trace)
        msg: dict[str, Any] = {"op": "call", "id": call_id, "event": event}
        if task is not None:
            msg["task"] = task
        if trace is not None:
            msg["trace"] = True
        if attach is not None:
            msg["attach"] = {"session_id": attach[0], "state_json": attach[1]}
            self.bound_session = attach[0]
        # the timeout is a timer on the loop, not wait_for + shield: two
        # futures and a task step less per call
        expired = False

        def expire() -> None:
            nonlocal expired
            if not fut.done():
                expired = True
                fut.cancel()

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            await self._send(msg, trace)
            msg = await fut
        except asyncio.CancelledError:
            self._pending.pop(call_id, None)
            if expired:
                await self.stop("timeout")
                raise FunctionTimeout(f"the call exceeded the timeout of {timeout:g}s; the instance was stopped") from None
            await self.stop("cancelled")
            raise
        finally:
            timer.cancel()
        out = CallOutcome(
            logs=msg.get("logs", ""),
            logs_dropped=int(msg.get("logs_dropped", 0)),
            duration_ms=float(msg.get("duration_ms", 0.0)),
            state_json=msg.get("state_json"),
        )
        if msg["op"] == "error":
            out.error = msg.get("error") or {"kind": "error", "message": "unknown error"}
        else:
            out.value = msg.get("value")
            out.streamed = bool(msg.get("streamed"))
        return out

    async def attach(self, session_id: str | None, state_json: str) -> None:
        await self._send({"op": "attach", "session_id": session_id, "state_json": state_json})
        self.bound_session = session_id

    async def stop(self, reason: str = "stopped") -> None:
        self._release_disk_loop()
        if self._stop_reason is None:
            self._stop_reason = reason
            if reason not in ABRUPT_STOPS and self._fault is None and self.gpu_over is None:
                await self._stop_in_order()
        self._kill()
        if self.writer is not None:
            self.writer.close()
        if self._reader_task is not None and not self._reader_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._reader_task), 5.0)
        await self._died()

    async def _stop_in_order(self) -> None:
        """A session disk served by fuse2fs (a normal user's cap) lives in a
        user-space file system whose cache dies with the instance: a file
        written just before a pause may not be in the image yet (the kernel
        hands fuse2fs a closed file's release asynchronously). So such an
        instance is first told to stop, which makes fuse2fs unmount and flush
        the image; it is killed if it has not exited within
        :data:`ORDERLY_STOP_S`. (A kernel-mounted image, root's, is flushed
        by the kernel whatever ends the instance.)"""
        if self.owner.disk_mechanism != "fuse2fs" or not self.fv.spec.resources.disk_mb:
            return
        if self._dead or self.writer is None or self.pid is None or self._exit.done():
            return
        with contextlib.suppress(Exception):
            self.writer.write(encode({"op": "stop"}))
            await asyncio.wait_for(asyncio.shield(self._exit), ORDERLY_STOP_S)

    @property
    def alive(self) -> bool:
        return not self._dead

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": self.pid, "alive": self.alive}
        if self.pid is not None:
            out.update(smaps_rollup(self.pid))
        if self.cgroup:
            out["cgroup_memory"] = self.owner.cgroups.memory_usage(self.cgroup)
        return out


def smaps_rollup(pid: int) -> dict[str, int]:
    """rss / pss / uss of one process, in bytes (0s when unreadable)."""
    vals: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    vals[parts[0][:-1]] = int(parts[1]) * 1024
    except OSError:
        return {"rss": 0, "pss": 0, "uss": 0}
    return {
        "rss": vals.get("Rss", 0),
        "pss": vals.get("Pss", 0),
        "uss": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0),
    }


class ProcessBackend(Backend):
    """Sandboxes as forked processes. ``use_templates=False`` forces the fresh path."""

    name = "process"

    def __init__(self, state_dir: str, *, use_templates: bool = True, cgroups: bool = True, isolate: bool = True, gpus: GpuAllocator | None = None) -> None:
        self.isolate = isolate
        #: where GPU instances are placed (gpu/): the machine's NVML, or "no GPU found";
        #: MPS holds slices where it is installed and instances share one uid (gpu/mps.py)
        self.gpus = gpus if gpus is not None else GpuAllocator.from_machine(
            MpsControl.from_machine(
                os.path.join(os.path.realpath(state_dir), "mps"),
                [sys.executable, "-m", "jupyter_functionai.sandbox.mps_launch"],
                shared_uid=os.geteuid() != 0 or not isolate,
            )
        )
        self._gpu_watch: asyncio.Task[None] | None = None
        self.state_dir = os.path.realpath(state_dir)
        self.log_dir = os.path.join(self.state_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.use_templates = use_templates
        self.cgroups = iso.CgroupManager(enabled=cgroups)
        self.namespaces = iso.probe_namespaces()
        #: not root: templates enter an unprivileged user namespace (where the
        #: kernel allows one) and instances create their namespaces inside it
        self.userns = bool(isolate and sys.platform == "linux" and os.geteuid() != 0 and not self.namespaces.get("user"))
        if isolate and sys.platform == "linux" and os.geteuid() != 0 and self.namespaces.get("user"):
            log.warning(
                "functionai: sandboxes will NOT be isolated (no namespaces, they run as you and can read your files): %s",
                self.namespaces["user"],
            )
        #: how each session's working directory gets its own capped filesystem
        #: (sandbox/disk.py): "loop" as root, "fuse2fs" in a user namespace
        self.disk_mechanism: str | None = None
        self.disk_reason = "isolation switched off by configuration"
        self.disk_tools: dict[str, str] = {}
        if isolate and sys.platform == "linux":
            self.disk_mechanism, self.disk_reason, self.disk_tools = sdisk.mechanism(root=os.geteuid() == 0, userns=self.userns)
        elif isolate:
            self.disk_reason = "not Linux"
        self._disk_refills: dict[int, asyncio.Task[None]] = {}
        self._refill_timers: set[asyncio.TimerHandle] = set()
        # blank image -> (fd, loop device, mount) attached ahead, and its ext4
        # mounted detached (fsmount) where the kernel can: -1 where not
        self._stock_loops: dict[str, tuple[int, str, int]] = {}
        self._premount_error = ""  # why the stock's disks are not mounted ahead
        # refills run in threads: the stock's loop devices are shared with them
        self._stock_lock = threading.Lock()
        self._closing = False
        self._templates: dict[tuple[str, int], _Template] = {}
        self._starting: dict[tuple[str, int], asyncio.Task[_Template]] = {}
        self._by_pid: dict[int, ProcessInstance] = {}
        self._instances: dict[str, ProcessInstance] = {}
        self._pending_cgroups: set[str] = set()  # to be removed (an instance of theirs exited)
        self._cgroups_live: set[str] = set()  # created by this backend, not yet removed
        self._cg_stock: dict[tuple[float, int, int], list[tuple[str, list[str]]]] = {}  # made ahead, per limits
        self._cg_refills: dict[tuple[float, int, int], asyncio.Task[None]] = {}
        self._cg_remover: asyncio.Task[None] | None = None
        self._stock_executor: ThreadPoolExecutor | None = None  # see _in_stock_thread
        self._retiring: set[_Template] = set()
        # cgroups are named after this data directory, so that a restart finds
        # and removes what a killed earlier run of it left, whatever its age
        self.cgroup_tag = cgroup_tag(self.state_dir)
        self.cgroups.sweep(own=self.cgroup_tag)
        self._keep_paths = _python_paths()
        self._plans: dict[tuple[str, int], list[tuple[str, list[str]]]] = {}
        self._events: list[str] = []
        self._seq = 0

    def log_event(self, text: str) -> None:
        self._events.append(text)
        del self._events[:-200]

    # -- capabilities --------------------------------------------------------

    def check_placement(self, spec: FunctionSpec) -> None:
        res = spec.resources
        if not res.wants_gpu or (not self.gpus.available and not res.gpu_memory_mb):
            return  # without NVML a gpu share stays advisory (FUNCTIONAI_GPU_FRACTION)
        why = self.gpus.never_fits(res.gpu, memory_mib=res.gpu_memory_mb)
        if why is not None:
            field = "resources.gpu_memory_mb" if res.gpu_memory_mb else "resources.gpu"
            raise InvalidSpec(field, res.gpu_memory_mb or res.gpu, why)

    def capabilities(self, spec: FunctionSpec) -> dict[str, str]:
        caps = dict(self.namespaces)
        caps["tmp"] = caps.get("mount", "")
        caps["cgroup"] = "" if self.cgroups.version else (self.cgroups.reason or "cgroups unavailable")
        caps["rlimits"] = "" if sys.platform == "linux" else "not Linux"
        caps["user"] = self.namespaces.get("user", "unknown")
        caps["seccomp"] = "isolation switched off by configuration" if not self.isolate else seccomp.unavailable_reason()
        caps["disk"] = self.disk_reason if self.disk_mechanism is None else ""
        if spec.network == "host":
            caps["net"] = "the spec's network policy is 'host'"
        return caps

    # -- disks -----------------------------------------------------------------

    async def session_disk(self, spec: FunctionSpec, binding: Binding) -> dict[str, Any] | None:
        """What the instance mounts on the session's working directory: its
        disk image (made now if the session is new), or why there is none."""
        if not self.isolate or not binding.workdir:
            return None
        if self.disk_mechanism is None:
            return {"error": self.disk_reason}
        size_mb = spec.resources.disk_mb
        if not size_mb:
            return {"error": "switched off by the spec (resources.disk_mb is 0)"}
        # a new session takes a prepared image: a rename, a few metadata calls
        # on the state directory (as making its working directory is), done
        # here; a copy, a wait or anything that reads data goes to a thread
        out = self._new_session_disk(size_mb, binding.workdir)
        if out is None:
            out = await asyncio.to_thread(self._session_disk, size_mb, binding.workdir)
        if "busy" in out:
            raise InstanceCrashed(out["busy"])
        if out.pop("took_stock", False) and size_mb not in self._disk_refills:
            # a moment later: the session that took the image starts first, and
            # a burst of new sessions is served from the stock meanwhile
            handle = asyncio.get_running_loop().call_later(DISK_REFILL_DELAY_S, self._start_refill, size_mb)
            self._refill_timers.add(handle)
        return out

    def _start_refill(self, size_mb: int) -> None:
        self._refill_timers = {h for h in self._refill_timers if not h.cancelled() and h.when() > asyncio.get_running_loop().time()}
        if size_mb not in self._disk_refills and not self._closing:
            self._disk_refills[size_mb] = asyncio.get_running_loop().create_task(self._refill_disks(size_mb))

    def _new_session_disk(self, size_mb: int, workdir: str) -> dict[str, Any] | None:
        image = os.path.join(os.path.dirname(workdir), sdisk.IMAGE_NAME)
        try:
            if os.path.lexists(image) or os.listdir(workdir):
                return None
            taken, loop = self._take_blank_disk(size_mb, image)
        except OSError:
            return None
        if not taken:
            return None
        return self._disk_message(image, size_mb, took=True, loop=loop)

    def _disk_message(self, image: str, size_mb: int, *, took: bool, loop: tuple[int, str, int] | None) -> dict[str, Any]:
        return {
            "image": os.path.relpath(image, self.state_dir),
            "mb": size_mb,
            "mech": self.disk_mechanism,
            **{k: v for k, v in self.disk_tools.items() if k in ("fuse2fs", "e2fsck")},
            "took_stock": took,
            **({"loop_dev": loop[1], "_loop_fd": loop[0]} if loop else {}),
            **({"_mount_fd": loop[2]} if loop and loop[2] >= 0 else {}),
        }

    def _session_disk(self, size_mb: int, workdir: str) -> dict[str, Any]:
        image = os.path.join(os.path.dirname(workdir), sdisk.IMAGE_NAME)
        took = False
        loop: tuple[int, str, int] | None = None
        try:
            st = os.stat(image)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                if os.listdir(workdir):  # a session from before disk caps: its files stay where they are
                    return {"error": "this session's files predate disk caps: its working directory is not capped"}
            took = True
            try:
                taken, loop = self._take_blank_disk(size_mb, image)
                if not taken:
                    sdisk.sparse_copy(self._golden_disk(size_mb), image)
            except OSError as exc:
                return {"error": f"making the session's disk image failed: {exc}"}
            st = os.stat(image)
        else:
            # a resumed session: its last instance's mount must be gone first
            # (the kernel unmounts it as that instance's namespaces go)
            if self.disk_mechanism == "loop" and not sdisk.wait_released(image):
                return {"busy": "the session's disk image is still mounted by its previous instance after 30 s"}
        return self._disk_message(image, st.st_size // (1024 * 1024), took=took, loop=loop)

    # One blank image per size is made with mkfs (the "golden" one); a
    # session's image is a sparse copy of it, and a few copies are made ahead
    # so that not even the copy is on a new session's critical path.  Each
    # copy is used once, by one session.
    DISK_STOCK = 3

    def _golden_disk(self, size_mb: int) -> str:
        d = self._stock_dir(size_mb)
        golden = os.path.join(d, "golden")
        if not os.path.exists(golden):
            os.makedirs(d, mode=0o700, exist_ok=True)
            sdisk.make_image(golden, size_mb, self.disk_tools["mkfs"], journal=self.disk_mechanism == "loop")
        return golden

    def _stock_dir(self, size_mb: int) -> str:
        # per mechanism: root's images have a journal, fuse2fs's do not
        return os.path.join(self.state_dir, DISK_STOCK_DIR, f"{self.disk_mechanism}-{size_mb}")

    def _take_blank_disk(self, size_mb: int, dest: str) -> tuple[bool, tuple[int, str, int] | None]:
        """Move a blank image of the stock to ``dest``; with the loop device
        it is attached to and its detached mount, if any (the caller closes
        those descriptors)."""
        d = self._stock_dir(size_mb)
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".img"))
        except FileNotFoundError:
            return False, None
        for n in names:
            src = os.path.join(d, n)
            try:
                os.rename(src, dest)
            except FileNotFoundError:  # pragma: no cover - taken meanwhile
                continue
            with self._stock_lock:
                return True, self._stock_loops.pop(src, None)
        return False, None

    def _make_blank_disks(self, size_mb: int) -> None:
        golden = self._golden_disk(size_mb)
        d = os.path.dirname(golden)
        for n in os.listdir(d):  # a killed earlier run's half-made copies
            if n.endswith((".new", ".tmp")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(d, n))
        while not self._closing and sum(n.endswith(".img") for n in os.listdir(d)) < self.DISK_STOCK:
            new = os.path.join(d, f"{time.time_ns():x}-{os.urandom(4).hex()}.new")
            sdisk.sparse_copy(golden, new)
            final = new[:-4] + ".img"
            if self.disk_mechanism == "loop":
                # attached ahead too (registered before the image can be taken):
                # the instance then only mounts the device
                fd = os.open(new, os.O_RDWR | os.O_CLOEXEC)
                try:
                    lfd, dev = sdisk.attach_loop(fd)
                except OSError as exc:
                    self.log_event(f"attaching a blank disk image to a loop device failed: {exc}")
                else:
                    entry = (lfd, dev, self._premount(dev))
                    with self._stock_lock:
                        if self._closing:  # the backend closed meanwhile: autoclear detaches it
                            _close_stock_entry(entry)
                        else:
                            self._stock_loops[final] = entry
                finally:
                    os.close(fd)
            os.rename(new, final)

    def _premount(self, dev: str) -> int:
        """Mount the blank image's ext4 ahead too, detached: an instance that
        is handed the mount attaches it (~0.1 ms) instead of mounting the
        device (~2 ms: the superblock, the journal).  -1 where the kernel has
        no fsmount (Linux < 5.2) or refuses it: the instance mounts instead."""
        if self._premount_error:
            return -1
        try:
            return sdisk.premount_ext4(dev)
        except OSError as exc:
            self._premount_error = str(exc)
            self.log_event(f"mounting blank disk images ahead failed ({exc}); instances mount them")
            return -1

    async def _refill_disks(self, size_mb: int) -> None:
        try:
            await self._in_stock_thread(self._make_blank_disks, size_mb)
        except OSError as exc:
            self.log_event(f"making blank {size_mb} MiB disk images failed: {exc}")
        finally:
            self._disk_refills.pop(size_mb, None)

    # -- templates -----------------------------------------------------------

    async def prepare(self, fv: FunctionVersion) -> None:
        self._refill_cgroups_soon(self._cgroup_key(fv.spec))
        if self.disk_mechanism and self.isolate:
            size_mb = fv.spec.resources.disk_mb
            if size_mb and size_mb not in self._disk_refills and not self._closing:
                self._disk_refills[size_mb] = asyncio.get_running_loop().create_task(self._refill_disks(size_mb))
        if self.use_templates:
            await self._template(fv)

    async def _template(self, fv: FunctionVersion) -> _Template:
        key = (fv.name, fv.version)
        t = self._templates.get(key)
        if t is not None and t.alive:
            return t
        task = self._starting.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._start_template(fv))
            self._starting[key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._starting.pop(key, None)

    async def _start_template(self, fv: FunctionVersion) -> _Template:
        t = _Template(self, fv)
        await t.start()
        self._templates[(fv.name, fv.version)] = t
        return t

    async def retire(self, fv: FunctionVersion) -> None:
        """No new instances of ``fv``; its template goes once its last instance
        has been reaped (so exits are still reported and cgroups removed)."""
        t = self._templates.pop((fv.name, fv.version), None)
        if t is None:
            return
        if t.pids:
            t.retiring = True
            self._retiring.add(t)
        else:
            t.close()

    # -- instances -------------------------------------------------------------

    async def start(self, fv: FunctionVersion, binding: Binding | None = None) -> Instance:
        t0 = time.perf_counter()
        self._seq += 1
        iid = f"i-{os.getpid():x}{int(time.time() * 1000) & 0xFFFFFFF:07x}{self._seq:05x}"
        path = "template-fork"
        template: _Template | None = None
        if self.use_templates:
            try:
                template = await self._template(fv)
            except UserError:
                raise
            except FunctionAIError as exc:
                self.log_event(f"template for {fv.name} v{fv.version} unavailable ({exc}); starting fresh")
                template = None
        if template is None:
            path = "fresh"
            template = _Template(self, fv, single_shot=True)
            await template.start()
        spec = fv.spec
        cg_procs: list[str] = []
        cg_err = self.cgroups.reason
        cg_name = f"{self.cgroup_tag}-{iid}"
        if self.cgroups.version and self.isolate:
            try:
                cg_name, cg_procs = self._take_cgroup(spec, cg_name)
            except OSError as exc:
                cg_err = f"creating the cgroup failed: {exc}"
        inst = ProcessInstance(self, fv, iid, path, cg_name if cg_procs else None)
        inst.template = template
        if spec.resources.wants_gpu and self.gpus.available:
            try:  # pinned to its card (or MIG instance) before it exists; released in _died
                if self.gpus.mps is not None and self.gpus.mps.usable:  # may start the card's MPS daemon: off the loop
                    inst.gpu_slice = await asyncio.to_thread(self.gpus.allocate, iid, spec.resources.gpu, memory_mib=spec.resources.gpu_memory_mb, function=fv.name)
                else:
                    inst.gpu_slice = self.gpus.allocate(iid, spec.resources.gpu, memory_mib=spec.resources.gpu_memory_mb, function=fv.name)
            except BaseException:
                await inst.stop("no GPU capacity")
                self._cleanup_cgroup(cg_name)
                raise
        cfg = {
            "instance_id": iid,
            "isolate": self.isolate,
            "function": fv.name,
            "version": fv.version,
            "network": spec.network,
            "required": sorted(spec.isolation_required),
            "seccomp": {"mode": spec.seccomp, "allow": sorted(spec.seccomp_allow)},
            "cgroup_procs": cg_procs,
            "cgroup_version": self.cgroups.version,
            "cgroup_error": cg_err,
            "memory_mb": spec.resources.memory_mb,
            "max_pids": spec.limits.max_pids,
            "max_output_bytes": spec.limits.max_output_bytes,
            "max_result_bytes": spec.limits.max_result_bytes,
            "max_state_bytes": spec.limits.max_state_bytes,
            "max_payload_bytes": spec.limits.max_payload_bytes,
            "concurrency": spec.concurrency,
            # the slice's pinning and MPS limits win over the spec's env (code in the
            # sandbox can still change its own: the NVML watchdog is what holds then)
            "env": {**_gpu_env(spec.resources.gpu), **spec.env, **(inst.gpu_slice.env() if inst.gpu_slice else {})},
            # an MPS client: its card's pipe directory, and the card's shm as its /dev/shm
            "mps": {"pipe": inst.gpu_slice.mps_dirs.pipe, "shm": inst.gpu_slice.mps_dirs.shm} if inst.gpu_slice and inst.gpu_slice.mps_dirs else None,
            "tmp_mb": min(spec.resources.memory_mb, 1024),
            "state_dir": self.state_dir,
            "masks": self.mask_plan(fv),
        }
        if binding is not None:  # bind straight after setup: no ready -> bind round trip
            disk = await self.session_disk(spec, binding)
            if disk is not None:
                inst._disk_loop_fd = disk.pop("_loop_fd", None)
                inst._disk_mount_fd = disk.pop("_mount_fd", None)
                if inst._disk_mount_fd is not None:
                    disk["premounted"] = True  # handed over with the fork request
            cfg["bind"] = inst._bind_message(binding, disk)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await inst._open(ours)
            pid = await template.fork(cfg, theirs, inst._disk_mount_fd)
        except BaseException:
            theirs.close()
            await inst.stop("start failed")
            self._cleanup_cgroup(cg_name)
            raise
        theirs.close()
        inst.pid = pid
        template.pids.add(pid)
        self._by_pid[pid] = inst
        self._instances[iid] = inst
        msg = await inst._await_control("ready")
        inst.set_isolation(msg.get("isolation", {}))
        if self.gpus.available:
            self._watch_gpus()  # every instance: one without a slice may use no GPU memory at all
        elapsed = (time.perf_counter() - t0) * 1000
        if binding is not None:
            t1 = time.perf_counter()
            try:
                await inst._bound(binding)
            except BaseException:
                await inst.stop("bind failed")
                raise
            inst.init_ms += (time.perf_counter() - t1) * 1000
        if path == "fresh":
            inst.init_ms = template.import_ms
            inst.spawn_ms = max(0.0, elapsed - template.import_ms)
        else:
            inst.spawn_ms = elapsed
        return inst

    def _on_exit(self, pid: int, status: int) -> None:
        inst = self._by_pid.pop(pid, None)
        if inst is None:
            return
        if inst.cgroup:
            # read the OOM verdict before the cgroup (and its counters) goes away
            inst.oom_killed = self.cgroups.oom_killed(inst.cgroup)
            self._cleanup_cgroup(inst.cgroup)
        if not inst._exit.done():
            inst._exit.set_result(status)
        self._instances.pop(inst.id, None)
        t = inst.template
        if t is not None:
            t.pids.discard(pid)
            if t.retiring and not t.pids:
                self._retiring.discard(t)
                t.close()

    # -- cgroups ------------------------------------------------------------
    # A few cgroups per set of limits are made ahead, in a thread: an instance
    # takes one (used by it alone, removed when it exits, never handed to
    # another), and the stock is refilled behind it.  Removal runs in a
    # thread too: an rmdir of a memory cgroup can take milliseconds.
    CGROUP_STOCK = 2

    @staticmethod
    def _cgroup_key(spec: FunctionSpec) -> tuple[float, int, int]:
        return (spec.resources.cpu, spec.resources.memory_mb, spec.limits.max_pids)

    def _take_cgroup(self, spec: FunctionSpec, fallback_name: str) -> tuple[str, list[str]]:
        """A cgroup with ``spec``'s limits for one new instance: from the stock,
        else made now (named ``fallback_name``); the stock refills behind."""
        key = self._cgroup_key(spec)
        stock = self._cg_stock.get(key)
        self._refill_cgroups_soon(key)
        if stock:
            return stock.pop(0)
        self._cgroups_live.add(fallback_name)
        return fallback_name, self.cgroups.create(fallback_name, cpu=key[0], memory_mb=key[1], pids=key[2])

    def _refill_cgroups_soon(self, key: tuple[float, int, int]) -> None:
        if key not in self._cg_refills and not self._closing and self.cgroups.version and self.isolate:
            self._cg_refills[key] = asyncio.get_running_loop().create_task(self._refill_cgroups(key))

    async def _refill_cgroups(self, key: tuple[float, int, int]) -> None:
        try:
            while not self._closing and len(self._cg_stock.get(key, ())) < self.CGROUP_STOCK:
                name = f"{self.cgroup_tag}-c{os.urandom(6).hex()}"
                self._cgroups_live.add(name)  # from now on close() removes it, made or half made
                try:
                    procs = await self._in_stock_thread(lambda n=name: self.cgroups.create(n, cpu=key[0], memory_mb=key[1], pids=key[2]))
                except OSError as exc:
                    self.log_event(f"making a cgroup ahead failed ({exc}); instances make their own")
                    self._cleanup_cgroup(name)
                    return
                if self._closing:
                    return
                self._cg_stock.setdefault(key, []).append((name, procs))
        finally:
            self._cg_refills.pop(key, None)

    def _cleanup_cgroup(self, name: str) -> None:
        """Remove an instance's cgroup (in a thread, off the event loop); one
        that still holds processes (a PID namespace emptying) is retried on
        the next exit, and at close."""
        if not self.cgroups.version:
            return
        self._pending_cgroups.add(name)
        if self._closing:
            return  # close() removes what is pending, itself
        if self._cg_remover is None or self._cg_remover.done():
            self._cg_remover = asyncio.get_running_loop().create_task(self._remove_pending_cgroups())

    async def _in_stock_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` in the backend's one stock thread: what is made ahead
        (disk images, loop devices, mounts, cgroups) and what is removed behind
        (cgroups) is made there, at a low priority, off the event loop."""
        if self._stock_executor is None:
            self._stock_executor = ThreadPoolExecutor(1, thread_name_prefix="fai-stock", initializer=_lower_this_threads_priority)
        return await asyncio.get_running_loop().run_in_executor(self._stock_executor, fn, *args)

    def _remove_cgroups(self, names: list[str]) -> list[str]:
        return [n for n in names if self.cgroups.remove(n)]

    async def _remove_pending_cgroups(self) -> None:
        while self._pending_cgroups:
            names = sorted(self._pending_cgroups)
            removed = await self._in_stock_thread(self._remove_cgroups, names)
            for n in removed:
                self._pending_cgroups.discard(n)
                self._cgroups_live.discard(n)
            if len(removed) < len(names) and not set(self._pending_cgroups) - set(names):
                return  # what is left still has processes: retried later

    def mask_plan(self, fv: FunctionVersion) -> list[tuple[str, list[str]]]:
        """The filesystem view of every instance of ``fv`` (session-independent)."""
        plan = self._plans.get((fv.name, fv.version))
        if plan is None:
            keep = [*self._keep_paths, fv.code_dir, os.path.join(self.state_dir, SHARED_ENVS_DIR)]
            always = ["/tmp", "/dev/shm", "/var/tmp", self.state_dir, *_private_dirs()]
            plan = self._plans[(fv.name, fv.version)] = iso.plan_masks(keep, always)
        return plan

    # -- metering --------------------------------------------------------------

    def usage_samples(self) -> list[UsageSample]:
        out = []
        for inst in list(self._instances.values()):
            if not inst.alive or inst.pid is None:
                continue
            cpu = self.cgroups.cpu_usage_usec(inst.cgroup) if inst.cgroup else None
            mem = self.cgroups.memory_usage(inst.cgroup) if inst.cgroup else None
            if cpu is None:
                cpu = iso.process_cpu_usec(inst.pid)
            if mem is None:
                mem = iso.process_rss(inst.pid)
            cards, gmem = 0.0, 0
            sl = inst.gpu_slice
            if sl is not None:
                gmem = sl.memory_mib
                cards = sl.share
            out.append(UsageSample(inst.id, inst.fv.name, inst.bound_session, cpu, mem, cards, gmem, bool(inst._pending)))
        return out

    # -- the GPU watchdog ----------------------------------------------------

    def _watch_gpus(self) -> None:
        """Start the watchdog, once: every GPU_WATCH_S it asks NVML what each
        process uses and ends an instance whose processes use more than its
        slice (GpuOutOfMemory to its caller), well within a second."""
        if self._gpu_watch is None or self._gpu_watch.done():
            self._gpu_watch = asyncio.get_running_loop().create_task(self._gpu_watchdog())

    async def _gpu_watchdog(self) -> None:
        while not self._closing:
            await asyncio.sleep(GPU_WATCH_S)
            if not self._instances:
                continue
            try:
                over = await asyncio.to_thread(self.gpus.over_slice, self._instance_of_pid)
            except Exception as exc:  # NVML went away: say so, keep watching
                self.log_event(f"GPU watchdog: NVML failed: {exc}")
                continue
            for iid, used, held in over:
                inst = self._instances.get(iid)
                if inst is not None and inst.alive and inst.gpu_over is None:
                    inst.gpu_over = (used, held)
                    self.log_event(f"instance {iid}: {used} MiB of GPU memory over its {held} MiB on a card: stopped")
                    inst._kill()

    def _instance_of_pid(self, pid: int) -> str | None:
        """The instance whose process is ``pid`` or one of its ancestors."""
        for _ in range(32):
            inst = self._by_pid.get(pid)
            if inst is not None:
                return inst.id
            fields = iso.proc_stat(pid)
            if fields is None or int(fields[1]) <= 1:
                return None
            pid = int(fields[1])
        return None

    async def close(self) -> None:
        self._closing = True
        if self._gpu_watch is not None:
            self._gpu_watch.cancel()
        for timer in self._refill_timers:
            timer.cancel()
        # a refill's thread cannot be cancelled: it stops after the image it is
        # making, and its loop devices must be released after it
        refills = [*self._disk_refills.values(), *self._cg_refills.values()]
        if self._cg_remover is not None:
            refills.append(self._cg_remover)
        if refills:
            await asyncio.wait(refills, timeout=30.0)
        with self._stock_lock:
            for entry in self._stock_loops.values():  # autoclear: the devices detach
                _close_stock_entry(entry)
            self._stock_loops.clear()
        live = list(self._instances.values())
        for inst in live:
            await inst.stop("backend closed")
        # the templates reap what was killed and report it (which removes the
        # cgroups): wait for that before the templates go
        exits = [i._exit for i in live if not i._exit.done()]
        if exits:
            await asyncio.wait(exits, timeout=3.0)
        for t in [*self._templates.values(), *self._retiring]:
            t.close()
        self._templates.clear()
        self._retiring.clear()
        for task in self._starting.values():
            task.cancel()
        if self._cg_remover is not None and not self._cg_remover.done():
            await asyncio.wait([self._cg_remover], timeout=5.0)
        if self._stock_executor is not None:
            self._stock_executor.shutdown(wait=False)  # what it ran is awaited above
        # whatever is left (a PID namespace still emptying, a template that died
        # first): retry for a few seconds, never leave a cgroup behind silently
        self._pending_cgroups |= self._cgroups_live
        for _ in range(150):
            for n in list(self._pending_cgroups):
                if self.cgroups.remove(n):
                    self._pending_cgroups.discard(n)
                    self._cgroups_live.discard(n)
            if not self._pending_cgroups:
                break
            await asyncio.sleep(0.02)
        if self._pending_cgroups:
            self.log_event(f"{len(self._pending_cgroups)} cgroup(s) could not be removed: {sorted(self._pending_cgroups)[:5]}")
        for err in await asyncio.to_thread(self.gpus.close):  # the MPS daemons, once their clients are gone
            self.log_event(f"MPS: {err}")


DISK_REFILL_DELAY_S = 0.1  # after a session took a blank disk image, before more are made
DISK_STOCK_DIR = "disks"  # blank session disk images, made ahead: <state>/disks/<mechanism>-<MiB>/*.img


def _private_dirs() -> list[str]:
    """The server user's own directories no sandbox may see: the home (and so
    ~/.ssh, ~/.aws, shell profiles), the Jupyter runtime directory (the
    server's ``jpserver-*.json`` with its token) and the Jupyter data directory.
    The Python environment and a function's code are bound back read-only
    when they live inside one of them."""
    out = []
    home = os.path.expanduser("~")
    if home not in ("", "/") and os.path.isabs(home):
        out.append(home)
    try:
        from jupyter_core.paths import jupyter_data_dir, jupyter_runtime_dir

        out += [jupyter_runtime_dir(), jupyter_data_dir()]
    except Exception:  # jupyter_core missing or unusable: the home covers the defaults
        pass
    top = {"/", "/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/dev", "/sys", "/run", "/var"}
    return [p for p in out if os.path.realpath(p) not in top]


def _python_paths() -> list[str]:
    """Paths a sandbox needs to keep importing after its uid drop."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, _PKG_PARENT}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            paths.add(sysconfig.get_paths()[key])
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    return sorted(p for p in paths if os.path.exists(p))


GPU_WATCH_S = 0.25  # the GPU watchdog's period: an instance over its slice is ended within a second


def _gpu_env(gpu: float) -> dict[str, str]:
    """What an instance with a GPU share is told of it. The process backend does
    not partition a GPU: the share is advisory, for the framework to apply
    (``torch.cuda.set_per_process_memory_fraction``; JAX reads
    ``XLA_PYTHON_CLIENT_MEM_FRACTION`` itself)."""
    if gpu <= 0:
        return {}
    env = {"FUNCTIONAI_GPU_FRACTION": f"{gpu:g}"}
    if gpu < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{gpu:g}"
    return env
