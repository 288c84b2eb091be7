"""``functionai-sandbox``: a jupyter_client kernel provisioner that runs each
kernel inside a functionai sandbox session.

A kernelspec selects it in its metadata::

    "metadata": {"kernel_provisioner": {"provisioner_name": "functionai-sandbox",
                                        "config": {"memory": "2Gi", "gpu": 0.25}}}

Each kernel is the session ``kernel-<kernel id>`` of a built-in function
(``kernel-sandbox``, deployed on first use from
:mod:`jupyter_functionai.kernel.handler`): the kernel process is a child of
the session's instance, so it is isolated like any instance (namespaces,
cgroup limits, its own uid, a private ``/tmp``, a masked filesystem, no
network by default), its working directory is the session's persistent
directory (its own filesystem, capped by ``disk``, 1 GiB by default), its start is recorded as a ColdStart and it is listed, and can be
closed, with the other sessions.

Lifecycle, as jupyter_client drives it:

* start: deploy the function if missing or outdated, open the session,
  point the KernelManager at ``ipc`` sockets in the session directory
  (through a short symlink: Unix socket paths are limited to ~107 bytes),
  then the ``start`` call spawns ``python -m ipykernel_launcher`` inside the
  sandbox and waits until its sockets are bound; the symlink then points at
  a descriptor of the kernel's socket directory, found from the host through
  the instance's mount namespace (the session's disk is mounted there only)
  without following any symlink the sandbox made;
* interrupt: SIGINT to the kernel's process group (``interrupt_mode`` signal);
* restart: the same session, so the working directory and its files persist;
* shutdown: the session is closed (the instance, the kernel and the
  directory go).

Configuration (``config`` in the kernelspec, or ``c.SandboxProvisioner.*``):
``function``, ``cpu``, ``memory``, ``disk``, ``gpu``, ``network``,
``startup_timeout``, ``max_pids``. Which runtime it talks to: see :mod:`.control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Float, Int, Unicode, Union

from ..errors import FunctionAIError, NotFound, SessionClosed
from ..sandbox.disk import open_in_session
from ..sandbox.isolation import proc_stat
from ..spec import MAX_LIFETIME_CAP_S, FunctionSpec
from . import handler as _handler
from .control import KernelControl, connect
from .relay import KernelRelay, new_key

__all__ = ["SandboxKernelError", "SandboxProvisioner", "handler_source"]

SESSION_PREFIX = "kernel-"
CALL_TIMEOUT_S = 150.0  # above the handler's longest operation (start: <= 100 s)
MAX_SOCKET_BASE = 80  # a socket path is <base>/fai-k-XXXXXXXX/w/k-NNNNN (Unix limit ~107)
KILLED = -int(signal.SIGKILL)


class SandboxKernelError(RuntimeError):
    """A sandbox kernel could not be started or managed; the message says why."""


def handler_source() -> str:
    """The code of the built-in kernel function (the in-sandbox half)."""
    return Path(_handler.__file__).read_text(encoding="utf-8")


class SandboxProvisioner(KernelProvisionerBase):
    """Runs the kernel inside a functionai sandbox session (see the module docstring)."""

    function = Unicode("kernel-sandbox", config=True, help="The built-in function whose sessions hold the kernels.")
    cpu = Float(1.0, config=True, help="CPU cores of each kernel's sandbox.")
    memory = Union([Unicode(), Int()], default_value="2Gi", config=True, help="Memory of each kernel's sandbox ('2Gi', '512Mi' or MiB).")
    disk = Union(
        [Unicode(), Int()], default_value="1Gi", config=True, help="Disk of each kernel's working directory ('1Gi', '512Mi' or MiB; 0: not capped)."
    )
    gpu = Float(0.0, config=True, help="GPU share of each kernel (a fraction, or whole GPUs); > 0 needs a visible NVIDIA GPU.")
    network = Unicode("none", config=True, help="Network policy of the sandbox: none | loopback | host.")
    startup_timeout = Float(60.0, config=True, help="Seconds the kernel may take to open its sockets (at most 100).")
    max_pids = Int(1024, config=True, help="Processes and threads allowed in each kernel's sandbox.")

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(self.class_trait_names()))
        if unknown:
            spec = kwargs.get("kernel_spec")
            where = f"kernelspec {getattr(spec, 'display_name', '?')!r}: " if spec is not None else ""
            raise SandboxKernelError(
                f"{where}unknown functionai-sandbox provisioner option(s) {', '.join(unknown)} "
                f"(metadata.kernel_provisioner.config takes: {', '.join(_OPTIONS)})"
            )
        super().__init__(**kwargs)
        self.spec = self._function_spec()
        self._control: KernelControl | None = None
        self._has_process = False
        self._session_open = False
        self._session_closed = False  # closed by someone else (the Sessions panel, the API)
        self._launched = False
        self.workdir: str | None = None
        self.link: str | None = None
        self.pid: int | None = None
        self.ready_ms: float | None = None
        self.host_process: tuple[int, str] | None = None
        self._argv: list[str] = []
        self._instance: dict[str, Any] | None = None  # the session's instance, as described at launch
        self._kdir_fd: int | None = None  # the kernel's socket directory, which the link points at
        self._relay: KernelRelay | None = None  # the kernel's way to its server (relay.py)

    # -- configuration ---------------------------------------------------------------

    def _function_spec(self) -> FunctionSpec:
        name = getattr(self.kernel_spec, "display_name", "?")
        if not 1.0 <= self.startup_timeout <= _handler.MAX_STARTUP_S:
            raise SandboxKernelError(
                f"kernelspec {name!r}: bad functionai-sandbox provisioner config: "
                f"startup_timeout must be between 1 and {_handler.MAX_STARTUP_S:g} seconds, got {self.startup_timeout:g}"
            )
        try:
            return FunctionSpec.from_code(
                self.function,
                handler_source(),
                cpu=self.cpu,
                memory=self.memory,
                gpu=self.gpu,
                network=self.network,
                timeout=CALL_TIMEOUT_S,
                # a kernel lives until it is shut down (or 24 h, the lifetime cap):
                # the reaper must not stop its instance for being idle
                idle_ttl=MAX_LIFETIME_CAP_S,
                max_lifetime=MAX_LIFETIME_CAP_S,
                limits={"max_pids": self.max_pids},
                disk=self.disk,
                description="Jupyter kernels in sandbox sessions (the functionai-sandbox kernel provisioner)",
            )
        except FunctionAIError as exc:
            raise SandboxKernelError(f"kernelspec {name!r}: bad functionai-sandbox provisioner config: {exc}") from None

    @property
    def session_id(self) -> str:
        return f"{SESSION_PREFIX}{self.kernel_id}"

    async def _ctl(self) -> KernelControl:
        if self._control is None:
            self._control = await connect(self.parent)
        return self._control

    # -- KernelProvisionerBase ---------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self._has_process

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if km is None:
            raise SandboxKernelError("the functionai-sandbox provisioner needs a KernelManager as its parent")
        if self._session_closed:
            await self._end_session()
            raise SandboxKernelError(
                f"the sandbox session {self.session_id} of this kernel was closed (from the Sessions panel "
                "or the API): it cannot be restarted; start a new kernel"
            )
        ctl = await self._ctl()
        try:
            await ctl.ensure_function(self.spec)
            desc = await ctl.open_session(self.spec.name, self.session_id)
        except SessionClosed:
            self._session_closed = True
            await self._end_session()
            raise SandboxKernelError(f"the sandbox session {self.session_id} of this kernel was closed: start a new kernel") from None
        except FunctionAIError as exc:
            raise SandboxKernelError(f"could not open a sandbox for the kernel on {ctl.where}: {exc}") from None
        self._session_open = True
        try:
            workdir = str(desc["workdir"])
            if not os.path.isdir(workdir):
                raise SandboxKernelError(
                    f"the sandbox session's directory {workdir} is not visible here: sandbox kernels need "
                    f"the functionai runtime ({ctl.where}) on the same machine as the kernel manager"
                )
            self.workdir = workdir
            if self.link is None or not os.path.islink(os.path.join(self.link, "w")):
                self.link = _make_link(os.path.join(workdir, _handler.KERNEL_DIR))
            # the kernel binds ipc sockets relative to its directory; we reach them through the link
            km.transport = "ipc"
            km.ip = os.path.join(self.link, "w", "k")
            extra_arguments = kwargs.pop("extra_arguments", [])
            env = kwargs.get("env") or {}
            km.write_connection_file(jupyter_session=env.get("JPY_SESSION_NAME", ""))
            self.connection_info = km.get_connection_info()
            self._argv = [*self.kernel_spec.argv, *extra_arguments]
            cmd = km.format_kernel_cmd(extra_arguments=extra_arguments)  # as the host would see it (logs)
        except BaseException:
            if not self._launched:
                await self._end_session()
            raise
        return await super().pre_launch(cmd=cmd, **kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        ctl = await self._ctl()
        env = kwargs.get("env") or {}
        kernel_env = {k: str(env[k]) for k in [*self.kernel_spec.env, "JPY_SESSION_NAME"] if k in env}
        conn = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.connection_info.items()}
        await self._close_relay()  # a restart: the old key dies with the old kernel
        address = await ctl.server_address()
        key = new_key() if address is not None else None
        event = {
            "op": "start",
            "connection": conn,
            "argv": self._argv,
            "env": kernel_env,
            "startup_timeout": self.startup_timeout,
            "gpu": self.gpu,
            "api": {"key": key} if key else None,
        }
        try:
            value = await ctl.call(self.spec.name, self.session_id, event)
        except BaseException as exc:
            if not self._launched:
                await self._end_session()
            if isinstance(exc, FunctionAIError):
                raise SandboxKernelError(f"the sandbox kernel (session {self.session_id} on {ctl.where}) could not start: {_reason(exc)}") from None
            raise
        self.pid = int(value["pid"])
        self.ready_ms = float(value.get("ready_ms") or 0.0)
        self._has_process = True
        self._launched = True
        try:
            desc = await ctl.describe_session(self.session_id)
        except FunctionAIError:
            desc = {}
        self._instance = desc.get("instance") or None
        try:
            await asyncio.to_thread(self._point_link)
        except OSError as exc:
            with contextlib.suppress(FunctionAIError):
                await self._call({"op": "signal", "signum": int(signal.SIGKILL)})
            await self._end_session()
            raise SandboxKernelError(f"the sandbox kernel's sockets (session {self.session_id}) cannot be reached from the host: {exc}") from None
        self.host_process = await asyncio.to_thread(self._find_host_process)
        if address is not None and key is not None and self._kdir_fd is not None:
            try:
                relay = KernelRelay(self._kdir_fd, *address, network=self.network, key=key)
                relay.start()
                self._relay = relay
            except OSError as exc:
                self.log.warning("functionai-sandbox: kernel %s gets no relay to its server (its magics cannot reach it): %s", self.kernel_id, exc)
        self.log.info(
            "functionai-sandbox: kernel %s runs in session %s (%s), ready in %.0f ms", self.kernel_id, self.session_id, self.workdir, self.ready_ms
        )
        return self.connection_info

    async def poll(self) -> int | None:
        if not self._has_process:
            return 0
        if self.host_process is not None and _running(*self.host_process):
            return None  # seen alive on this machine: no call needed
        try:
            value = await self._call({"op": "poll"})
        except (SessionClosed, NotFound):
            self._session_closed = True
            return KILLED
        except FunctionAIError as exc:
            from ..client import RequestTimeout

            if isinstance(exc, RequestTimeout):
                return None  # no answer yet: say nothing about the kernel
            self.log.warning("functionai-sandbox: kernel %s is unreachable: %s", self.kernel_id, exc)
            return KILLED
        if value.get("running"):
            return None
        code = value.get("exit_code")
        return int(code) if code is not None else KILLED  # None: the instance was replaced

    async def wait(self) -> int | None:
        code = await self.poll()
        while code is None:
            await asyncio.sleep(0.1)
            code = await self.poll()
        self._has_process = False
        return code

    async def send_signal(self, signum: int) -> None:
        if not self._has_process:
            return
        with contextlib.suppress(SessionClosed, NotFound):
            await self._call({"op": "signal", "signum": int(signum)})

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        if restart:
            return
        self._has_process = False
        await self._end_session()

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return max(recommended, self.startup_timeout)

    def resolve_path(self, path: str) -> str | None:
        """A path of the kernel (relative to its directory, or ``~/...``: its
        home is that directory) as a host path, only inside that directory
        and only where no part of it is a symlink (the sandbox makes them)."""
        if self.workdir is None:
            return None
        if path == "~" or path.startswith("~/"):
            path = path[2:]
        try:
            os.close(open_in_session(self.workdir, self._instance, path))
        except OSError:
            return None
        base = self.workdir
        if self._instance and (self._instance.get("isolation") or {}).get("disk"):
            base = f"/proc/{self._instance['pid']}/root{os.path.realpath(self.workdir)}"
        return os.path.normpath(os.path.join(base, path))

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            function=self.spec.name,
            session_id=self.session_id,
            workdir=self.workdir,
            link=self.link,
            pid=self.pid,
            host_process=list(self.host_process) if self.host_process else None,
            has_process=self._has_process,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.workdir = provisioner_info.get("workdir")
        self.link = provisioner_info.get("link")
        self.pid = provisioner_info.get("pid")
        host = provisioner_info.get("host_process")
        self.host_process = (int(host[0]), str(host[1])) if host else None
        self._has_process = bool(provisioner_info.get("has_process"))
        self._session_open = self._launched = True
        # the link pointed at a descriptor of the process that saved this: point
        # it again, from here (best effort: a kernel that is gone is seen by poll)
        if self.workdir and self.link and os.path.isdir(self.link):
            with contextlib.suppress(FunctionAIError, OSError):
                self._instance = (await (await self._ctl()).describe_session(self.session_id)).get("instance") or None
                await asyncio.to_thread(self._point_link)

    # -- helpers -----------------------------------------------------------------------

    def _point_link(self) -> None:
        """Point the link's ``w`` at a descriptor of the kernel's socket
        directory, opened from the host without following the sandbox's
        symlinks (the kernel's sockets are then reached in the instance's
        mount namespace, where the session's disk is mounted)."""
        assert self.workdir is not None and self.link is not None
        fd = open_in_session(self.workdir, self._instance, _handler.KERNEL_DIR, directory=True)
        old, self._kdir_fd = self._kdir_fd, fd
        tmp = os.path.join(self.link, "w.new")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(f"/proc/{os.getpid()}/fd/{fd}", tmp)
        os.replace(tmp, os.path.join(self.link, "w"))
        if old is not None:
            os.close(old)

    def _find_host_process(self) -> tuple[int, str] | None:
        """The kernel as this machine sees it: ``(pid, start time)`` of the child
        of the session's instance whose innermost pid is the one the sandbox
        reported. With it, ``poll`` needs no call while the kernel runs (the
        KernelRestarter polls every few seconds); None if it cannot be seen."""
        inst = self._instance or {}
        if not inst.get("pid") or self.pid is None:
            return None
        return _host_child(int(inst["pid"]), self.pid)

    async def _call(self, event: dict[str, Any]) -> Any:
        ctl = await self._ctl()
        return await ctl.call(self.spec.name, self.session_id, event)

    async def _close_relay(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            await relay.close()

    async def _end_session(self) -> None:
        """Close the session (kernel, instance and directory go) and drop the link."""
        await self._close_relay()
        if self._session_open and not self._session_closed:
            self._session_open = False
            try:
                await (await self._ctl()).close_session(self.session_id)
            except (SessionClosed, NotFound):
                pass
            except FunctionAIError as exc:
                self.log.warning("functionai-sandbox: closing session %s failed: %s", self.session_id, exc)
        if self.link is not None:
            shutil.rmtree(self.link, ignore_errors=True)
            self.link = None
        if self._kdir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._kdir_fd)
            self._kdir_fd = None


_OPTIONS = ("function", "cpu", "memory", "disk", "gpu", "network", "startup_timeout", "max_pids")


def _make_link(target: str) -> str:
    """A private directory with a short path holding ``w -> target``."""
    from jupyter_core.paths import jupyter_runtime_dir

    tried = []
    for base in (jupyter_runtime_dir(), tempfile.gettempdir(), "/tmp"):
        if len(base) > MAX_SOCKET_BASE:
            tried.append(f"{base} (path too long for Unix sockets)")
            continue
        try:
            os.makedirs(base, exist_ok=True)
            d = tempfile.mkdtemp(prefix="fai-k-", dir=base)
        except OSError as exc:
            tried.append(f"{base} ({exc})")
            continue
        os.symlink(target, os.path.join(d, "w"))
        return d
    raise SandboxKernelError("no directory with a short enough path for the kernel's sockets: " + "; ".join(tried))


def _running(pid: int, started: str) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X") and fields[19] == started


def _host_child(parent: int, inner_pid: int) -> tuple[int, str] | None:
    """The child of ``parent`` whose pid in its own PID namespace is ``inner_pid``."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = proc_stat(int(entry))
        if fields is None or int(fields[1]) != parent:
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [entry])
        except OSError:
            continue
        if nspid and int(nspid[-1]) == inner_pid:
            return int(entry), fields[19]
    return None


def _reason(exc: FunctionAIError) -> str:
    text = str(exc)
    prefix = "KernelError: "
    return text[len(prefix):] if text.startswith(prefix) else text
