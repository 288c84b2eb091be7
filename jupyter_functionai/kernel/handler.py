"""The in-sandbox half of sandbox kernels.

This file is deployed, as code, as the function behind the
``functionai-sandbox`` kernel provisioner (``kernel-sandbox`` by default).
Each Jupyter kernel is one *session* of that function: the session's
instance (its namespaces, cgroup, uid, private ``/tmp`` and persistent
working directory) runs the kernel as its child process, so the kernel is
isolated like any instance and dies with it.

Operations (the event's ``op``), all short:

``start``   write the kernel's connection file and spawn it
            (``python -m ipykernel_launcher -f {connection_file}``), then wait
            until it has bound its sockets; returns its pid and start time
``poll``    ``{"running", "exit_code"}``
``signal``  send a signal to the kernel's process group (interrupt = SIGINT)
``stop``    SIGTERM, a grace period, then SIGKILL

The kernel talks ZMQ over ``ipc`` sockets in ``<workdir>/.kernel/`` (bound
relative to its working directory, so the path stays short); the host
connects to the same files through the session directory.

Standard library only: this module runs inside the sandbox, never next to
the control plane.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

KERNEL_DIR = ".kernel"
API_SOCKET = "api.sock"  # kernel/relay.py binds it
IP = KERNEL_DIR + "/k"  # relative to the kernel's working directory
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
CONNECTION_KEYS = {*PORTS, "transport", "ip", "key", "signature_scheme", "kernel_name", "curve_publickey", "curve_secretkey", "jupyter_session"}
MAX_STARTUP_S = 100.0
READY_EXTENSION = "jupyter_functionai.kernel.ready"  # writes $FUNCTIONAI_KERNEL_READY_FILE when initialised
LOG_TAIL = 3000

# The template imports this module before the instance binds (which clears the
# environment): keep the import path a kernel needs to find its packages.
_PYTHONPATH = os.environ.get("PYTHONPATH", "")
_PYTHON_NAMES = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
_PR_SET_PDEATHSIG = 1

_proc: subprocess.Popen[bytes] | None = None
_log_path: str | None = None


class KernelError(RuntimeError):
    """Why a kernel operation failed (the message reaches the provisioner)."""


def handler(event: Any, ctx: Any) -> Any:
    if not isinstance(event, dict) or event.get("op") not in _OPS:
        raise KernelError(f"expected an event {{'op': one of {sorted(_OPS)}, ...}}, got {event!r:.200}")
    return _OPS[event["op"]](event, ctx)


# -- operations ----------------------------------------------------------------------


def start(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    global _proc, _log_path
    workdir = ctx.workdir or os.getcwd()
    _stop_kernel(grace=0.0)  # a kernel this instance still runs (a restart after a crash)
    gpu = float(event.get("gpu") or 0.0)
    if gpu > 0 and not gpu_devices():
        raise KernelError(
            f"this kernel asks for a GPU share of {gpu:g}, but no GPU is visible in its sandbox "
            "(no /dev/nvidia* device): run it on a machine with an NVIDIA GPU and driver, "
            "or use the 'functionai-sandbox' kernel"
        )
    argv = event.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise KernelError(f"argv must be a non-empty list of strings, got {argv!r:.200}")
    conn = event.get("connection")
    if not isinstance(conn, dict) or any(not isinstance(conn.get(p), int) or conn[p] <= 0 for p in PORTS):
        raise KernelError(f"connection must give the five ipc ports {PORTS}, got {conn!r:.300}")
    timeout = min(float(event.get("startup_timeout") or 60.0), MAX_STARTUP_S)
    ready_file = None
    if argv[0] in _PYTHON_NAMES:
        argv = [sys.executable, *argv[1:]]
    if argv[0] == sys.executable and argv[1:3] == ["-m", "ipykernel_launcher"]:
        if importlib.util.find_spec("ipykernel") is None:
            raise KernelError(f"ipykernel is not installed for {sys.executable}: pip install ipykernel")
        if _find_spec(READY_EXTENSION):
            ready_file = os.path.join(workdir, KERNEL_DIR, "ready")
            argv = [*argv, f"--IPKernelApp.extra_extensions={READY_EXTENSION}"]

    kdir = os.path.join(workdir, KERNEL_DIR)
    os.makedirs(kdir, mode=0o700, exist_ok=True)
    for stale in [*glob.glob(os.path.join(kdir, "k-*")), os.path.join(kdir, "ready")]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    info = {k: v for k, v in conn.items() if k in CONNECTION_KEYS}
    info.update(transport="ipc", ip=IP)
    cfile = os.path.join(kdir, "connection.json")
    fd = os.open(cfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    argv = [a.replace("{connection_file}", cfile) for a in argv]

    env = _kernel_env(workdir, event.get("env") or {}, gpu)
    api = event.get("api")
    if isinstance(api, dict) and isinstance(api.get("key"), str):
        # the relay the host binds in this directory once the kernel is up
        # (kernel/relay.py): the kernel's magics reach its server through it
        env["FUNCTIONAI_URL"] = "unix:" + os.path.join(kdir, API_SOCKET)
        env["FUNCTIONAI_TOKEN"] = api["key"]
    if ready_file is not None:
        env["FUNCTIONAI_KERNEL_READY_FILE"] = ready_file
    _log_path = os.path.join(kdir, "kernel.log")
    t0 = time.monotonic()
    with open(_log_path, "ab") as log:
        log.write(f"--- starting {argv!r} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        try:
            _proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach its children too
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise KernelError(f"could not start the kernel {argv!r}: {exc}") from None
    # ready: its sockets are bound and (ipykernel) it has initialised its shell
    waits = [os.path.join(kdir, f"k-{info[p]}") for p in PORTS] + ([ready_file] if ready_file else [])
    deadline = t0 + timeout
    while not all(os.path.exists(w) for w in waits):
        code = _proc.poll()
        if code is not None:
            raise KernelError(f"the kernel exited with code {code} while starting; {_log_tail()}")
        if time.monotonic() > deadline:
            _stop_kernel(grace=0.0)
            raise KernelError(f"the kernel did not open its sockets within {timeout:g}s; {_log_tail()}")
        time.sleep(0.005)
    return {"pid": _proc.pid, "ready_ms": (time.monotonic() - t0) * 1000, "workdir": workdir, "python": argv[0]}


def poll(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    _reap_orphans()
    if _proc is None:
        return {"running": False, "exit_code": None, "known": False}
    code = _proc.poll()
    return {"running": code is None, "exit_code": code, "known": True, "pid": _proc.pid}


def send_signal(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    signum = event.get("signum")
    if not isinstance(signum, int) or isinstance(signum, bool) or signum not in {int(s) for s in signal.valid_signals()}:
        raise KernelError(f"not a signal number: {signum!r}")
    if _proc is None or _proc.poll() is not None:
        return {"sent": False}
    try:
        os.killpg(_proc.pid, signum)
    except ProcessLookupError:
        return {"sent": False}
    return {"sent": True}


def stop(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    grace = min(max(float(event.get("grace") or 5.0), 0.0), 30.0)
    return {"exit_code": _stop_kernel(grace)}


_OPS = {"start": start, "poll": poll, "signal": send_signal, "stop": stop}


# -- helpers -------------------------------------------------------------------------


def _find_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def gpu_devices() -> list[str]:
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def _kernel_env(workdir: str, extra: dict[str, Any], gpu: float) -> dict[str, str]:
    env = dict(os.environ)  # the instance's own, clean environment (PATH, LANG, HOME=workdir, ...)
    env.update(
        HOME=workdir,
        IPYTHONDIR=os.path.join(workdir, ".ipython"),
        JUPYTER_CONFIG_DIR=os.path.join(workdir, ".jupyter"),
        JUPYTER_DATA_DIR=os.path.join(workdir, ".local", "share", "jupyter"),
        JUPYTER_RUNTIME_DIR=os.path.join(workdir, ".local", "share", "jupyter", "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        # the kernel's parent is this instance: ipykernel exits if it goes away
        JPY_PARENT_PID=str(os.getpid()),
        FUNCTIONAI_KERNEL="1",
    )
    for key in ("FUNCTIONAI_URL", "FUNCTIONAI_TOKEN"):
        env.pop(key, None)  # only the relay's, set by start
    if _PYTHONPATH:
        env["PYTHONPATH"] = _PYTHONPATH
    if gpu > 0:
        # advisory: the process backend does not partition GPUs; frameworks that
        # read these cap their own share of device memory
        env["FUNCTIONAI_GPU_FRACTION"] = f"{gpu:g}"
        if gpu < 1:
            env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{gpu:g}")
    for k, v in extra.items():
        if isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v and not k.startswith("FUNCTIONAI_"):
            env[k] = v
    return env


def _die_with_parent() -> None:
    """In the kernel's child, before exec: SIGKILL when this instance dies
    (the PID namespace already does it; this also covers a sandbox without one).
    The signal follows the *thread* that forked: the function runs with
    concurrency 1, so calls run on the instance's main thread."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def _stop_kernel(grace: float) -> int | None:
    global _proc
    proc = _proc
    if proc is None:
        return None
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if sig == signal.SIGTERM and grace <= 0:
                continue
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    code = proc.poll()
    _reap_orphans()
    return code


def _log_tail() -> str:
    if _log_path is None:
        return "it wrote no log"
    try:
        with open(_log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"its log {_log_path} cannot be read ({exc})"
    return f"its log ({_log_path}) ends with:\n{text.rstrip()}"


def _reap_orphans() -> None:
    """This instance is the kernel's parent and, in its PID namespace, init:
    collect the exit status of orphans the kernel left (never the kernel's own)."""
    me = os.getpid()
    keep = _proc.pid if _proc is not None else None
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit() or int(entry) == keep:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            try:
                os.waitpid(int(entry), os.WNOHANG)
            except ChildProcessError:
                pass
