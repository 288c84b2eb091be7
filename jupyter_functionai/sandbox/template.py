"""The per-function-version template (zygote) process.

Started by the process backend as ``python -m jupyter_functionai.sandbox.template``
with a SOCK_SEQPACKET control socket on ``--control FD``.  It runs the
function module's top-level code once, freezes the heap (``gc.freeze``) and
then forks instances on request.  Each instance starts in a new PID namespace
with a *single* fork: the template calls ``unshare(CLONE_NEWPID)`` (which only
affects its future children), forks, then ``setns``es back to its own PID
namespace so the next fork gets a fresh one again.

Control messages (one JSON object per datagram; a ``fork`` carries the
instance's socket as SCM_RIGHTS)::

    runtime -> template  {"op": "fork", "cfg": {...}}        + [instance socket]
                         {"op": "exit"}
    template -> runtime  {"op": "ready", "pid", "import_ms", "pid_ns"}
                         {"op": "error", "error": {...}}     module failed to load
                         {"op": "forked", "iid", "pid"}
                         {"op": "exited", "pid", "status"}   an instance ended
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.util
import inspect
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from . import isolation as iso
from . import pages, worker

MAX_MSG = 1 << 20


def load_handler(spec: dict[str, Any]) -> tuple[ModuleType, Any]:
    """Import the function's module (running its top-level code) and return
    ``(module, handler)``."""
    if spec.get("code_path"):
        path = spec["code_path"]
        modname = "fai_" + "".join(c if c.isalnum() else "_" for c in spec.get("function", "fn"))
        mspec = importlib.util.spec_from_file_location(modname, path)
        if mspec is None or mspec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[modname] = module
        mspec.loader.exec_module(module)
    else:
        module = importlib.import_module(spec["module"])
    name = spec.get("handler", "handler")
    handler = getattr(module, name, None)
    if handler is None:
        raise LookupError(f"the module defines no {name!r} (the spec's handler)")
    if not callable(handler):
        raise TypeError(f"{name!r} is a {type(handler).__name__}, not a callable")
    return module, handler


def _send(ctl: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(ctl, [data], fds)
    else:
        ctl.send(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--control", type=int, required=True)
    ap.add_argument("--spec", required=True, help="JSON: function, version, code_path|module, handler")
    args = ap.parse_args(argv)
    spec = json.loads(args.spec)
    userns_error = ""
    if spec.get("userns") and sys.platform == "linux" and os.geteuid() != 0:
        userns_error = _enter_user_namespace(args.control)
    ctl = socket.socket(fileno=args.control)

    if spec.get("sys_path"):
        sys.path[:0] = [p for p in spec["sys_path"] if p not in sys.path]
    t0 = time.perf_counter()
    try:
        module, handler = load_handler(spec)
        if spec.get("warmup"):
            # Pre-initialise: lazy imports, caches and first-use state the
            # handler needs are built once here and shared by every fork.
            hook = getattr(module, spec["warmup"], None)
            if not callable(hook):
                raise LookupError(f"the module defines no callable {spec['warmup']!r} (the spec's warmup)")
            # the hook can tell it runs here, before any fork (where it must not
            # start processes or event loops the forks would share)
            os.environ["FUNCTIONAI_TEMPLATE"] = "1"
            try:
                res = hook()
                if inspect.iscoroutine(res):
                    asyncio.run(res)
            finally:
                os.environ.pop("FUNCTIONAI_TEMPLATE", None)
    except BaseException as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "jupyter_functionai" not in f.filename]
        tb = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
        tb += "".join(traceback.format_exception_only(type(exc), exc))
        _send(ctl, {"op": "error", "error": {
            "kind": "user_exception",
            "message": f"loading the function failed: {type(exc).__name__}: {exc}",
            "type": type(exc).__name__,
            "traceback": tb,
        }})
        return 1
    import_ms = (time.perf_counter() - t0) * 1000

    pid_ns_fd = -1
    pid_ns_error = ""
    if sys.platform == "linux" and os.geteuid() == 0:
        try:
            pid_ns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            iso.prctl(iso.PR_SET_CHILD_SUBREAPER, 1)
        except OSError as exc:
            pid_ns_error = str(exc)
    else:
        pid_ns_error = f"not root and no user namespace ({userns_error or 'not requested'}): PID namespaces need CAP_SYS_ADMIN"

    iso.last_capability()  # read once here, for every instance's bounding-set drop

    # Freeze what the imports allocated: children never copy those pages
    # because of a garbage collection.
    gc.collect()
    gc.freeze()

    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    os.set_blocking(rfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    _send(ctl, {"op": "ready", "pid": os.getpid(), "import_ms": import_ms, "pid_ns": pid_ns_fd >= 0, "pid_ns_error": pid_ns_error})

    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(rfd, selectors.EVENT_READ, "sig")
    instances: set[int] = set()
    want_standby = bool(spec.get("standby"))
    standby: _Standby | None = None
    probe: _PageProbe | None = None
    while True:
        # idle: fork the next instance's process and make its namespaces
        # ahead, unless something waits
        # (the pages a call writes are learned only where the spec has a
        # warmup hook: without one, those of a no-op call were measured to
        # save no time for what they cost; where they are, standbys wait for
        # them, so that every standby holds them)
        learning = bool(spec.get("warmup")) and _call_pages is None
        fork_ahead = want_standby and standby is None and not learning
        learn_ahead = want_standby and learning and probe is None
        net_ahead = _netns_wanted and not _netns_failed and len(_netns_pool) < NETNS_POOL
        mnt_ahead = _mntns_plan is not None and not _mntns_failed and len(_mntns_pool) < MNTNS_POOL
        ahead = fork_ahead or learn_ahead or net_ahead or mnt_ahead
        events = sel.select(timeout=0 if ahead else None if probe is None else max(0.0, probe.deadline - time.monotonic()))
        if probe is not None and not events and time.monotonic() >= probe.deadline:
            sel.unregister(probe.fd)
            _learned(probe.stop(f"the probe's call took over {PROBE_TIMEOUT_S:g} s"))
            probe = None
            continue
        if not events and ahead:
            if fork_ahead:
                try:
                    standby = _fork_standby(module, handler, pid_ns_fd)
                    instances.add(standby.pid)  # killed with the others if we go
                except OSError:
                    want_standby = False  # (no process to spare: instances are forked on request)
            elif learn_ahead:
                try:
                    probe = _PageProbe(module, handler, spec)
                    sel.register(probe.fd, selectors.EVENT_READ, "probe")
                except OSError as exc:
                    _learned(([], f"no page probe: {exc}"))
            elif mnt_ahead:
                _fill_mntns_pool()
            elif net_ahead:
                _fill_netns_pool()
            continue
        for key, _ in events:
            if key.data == "probe":
                assert probe is not None
                if probe.read():
                    sel.unregister(probe.fd)
                    _learned(probe.stop(""))
                    probe = None
                continue
            if key.data == "sig":
                try:
                    os.read(rfd, 4096)
                except BlockingIOError:
                    pass
                _reap(ctl, instances)
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctl, MAX_MSG, 4)
            except (ConnectionResetError, OSError):
                data, fds = b"", []
            if not data:
                # the runtime went away: take the instances down with us
                for pid in list(instances):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                return 0
            msg = json.loads(data)
            if msg.get("op") == "exit":
                return 0
            if msg.get("op") == "fork" and fds:
                cfg = msg["cfg"]
                cfg["pid_ns_error"] = pid_ns_error
                cfg["userns"] = _IN_USERNS
                cfg["userns_error"] = userns_error
                netns_fd = _take_netns(cfg)
                mntns = _take_mntns(cfg)
                disk_fd = fds[1] if len(fds) > 1 else -1  # the session disk, mounted ahead (detached)
                pid = -1
                if standby is not None:
                    pid, standby = standby.start(cfg, fds[0], netns_fd, disk_fd, mntns), None
                if pid < 0:  # none ready (or it is gone): fork now
                    pid = _fork_instance(fds[0], cfg, module, handler, pid_ns_fd, ctl, rfd, wfd, netns_fd, disk_fd, mntns)
                for fd in fds:
                    os.close(fd)
                for fd in (netns_fd, *mntns):
                    if fd >= 0:
                        os.close(fd)
                if pid > 0:
                    instances.add(pid)
                    pidfds: list[int] = []
                    if _IN_USERNS:
                        # our pids are those of our own PID namespace: a pidfd
                        # tells the runtime the pid it sees (fdinfo's Pid:)
                        try:
                            pidfds.append(os.pidfd_open(pid))
                        except OSError:
                            pass
                    _send(ctl, {"op": "forked", "iid": cfg["instance_id"], "pid": pid}, pidfds)
                    for pfd in pidfds:
                        os.close(pfd)


_IN_USERNS = False

# Network namespaces made ahead, while the template is idle: creating one is
# the slowest namespace to make (~1 ms, against ~0.3 ms for mount, IPC and UTS
# together), and an instance that is handed one only joins it.  Each is used
# by one instance, never shared.
NETNS_POOL = 2
_netns_pool: list[int] = []
_netns_wanted = False  # set by the first instance that wants a private network namespace
_netns_failed = ""  # why making one failed: the pool stops, instances unshare their own


def _yield_the_cpu() -> None:
    """A thread making namespaces ahead runs at a low priority (nice +10, this
    thread only): the instances just forked, and the runtime, go first."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
    except OSError:
        pass


_T = TypeVar("_T")


def _in_own_thread(name: str, make: Callable[[], _T]) -> _T | str:
    """``make()`` in a short-lived thread of its own at a low priority (a
    thread's namespaces are its own: the template's stay as they are, which a
    template in a user namespace could not return to with setns); its result,
    or why it failed (``OSError``)."""
    out: list[_T | str] = []

    def run() -> None:
        _yield_the_cpu()
        try:
            out.append(make())
        except OSError as exc:
            out.append(str(exc))

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    return out[0] if out else "the thread making it ended without a result"


def _make_netns() -> int:
    iso.unshare(iso.CLONE_NEWNET)
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY)


def _fill_netns_pool() -> None:
    """Make one more network namespace, in a thread of its own."""
    global _netns_failed
    made = _in_own_thread("fai-netns", _make_netns)
    if isinstance(made, int):
        _netns_pool.append(made)
    else:
        _netns_failed = made


def _take_netns(cfg: dict[str, Any]) -> int:
    """A network namespace made ahead for an instance that wants a private one
    (-1: none ready, or none wanted); the first such instance starts the pool."""
    global _netns_wanted
    if not cfg.get("isolate", True) or cfg.get("network", "none") == "host" or _netns_failed:
        return -1
    _netns_wanted = True
    return _netns_pool.pop(0) if _netns_pool else -1


# Mount namespaces made ahead the same way, with the filesystem masks of the
# function version's instances already in place (``/`` private and read-only,
# a tmpfs on each mask, the kept paths bound back): that is most of an
# instance's setup (~1.7 ms), and what is left for it is a fresh /proc (which
# must be mounted from inside its PID namespace) and its working directory.
# Each comes with an O_PATH descriptor on the state directory, opened in that
# namespace before the masks hid it (the instance binds its working directory
# from it).  The masks are those of the first instance asked for; an instance
# whose masks differ gets none and makes its own.
MNTNS_POOL = 2
_mntns_pool: list[tuple[int, int]] = []  # (namespace, state directory)
_mntns_plan: tuple[str, list[tuple[str, list[str]]], int] | None = None  # state dir, masks, /tmp MiB
_mntns_failed = ""


def _mask_plan_of(cfg: dict[str, Any]) -> tuple[str, list[tuple[str, list[str]]], int] | None:
    if not cfg.get("isolate", True) or not cfg.get("masks") or not cfg.get("state_dir"):
        return None
    return str(cfg["state_dir"]), [(str(m), [str(k) for k in keeps]) for m, keeps in cfg["masks"]], int(cfg.get("tmp_mb", 64))


def _fill_mntns_pool() -> None:
    """Make one more masked mount namespace, in a thread of its own (a thread
    may unshare its mount namespace: it gets a filesystem context of its own)."""
    global _mntns_failed
    assert _mntns_plan is not None
    state_dir, plan, tmp_mb = _mntns_plan

    def make() -> tuple[int, int]:
        iso.unshare(iso.CLONE_NEWNS)
        state_fd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            iso.make_root_private_readonly()
            iso.apply_masks(plan, tmp_size_mb=tmp_mb)
            return os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC), state_fd
        except OSError:
            os.close(state_fd)
            raise

    made = _in_own_thread("fai-mntns", make)
    if isinstance(made, tuple):
        _mntns_pool.append(made)
    else:
        _mntns_failed = made


def _take_mntns(cfg: dict[str, Any]) -> tuple[int, int]:
    """A masked mount namespace made ahead for this instance, and the state
    directory's descriptor that goes with it; (-1, -1) if none is ready, or
    the instance's masks are not those the pool makes.  The first instance
    with masks sets what the pool makes."""
    global _mntns_plan
    want = _mask_plan_of(cfg)
    if want is None or _mntns_failed:
        return -1, -1
    if _mntns_plan is None:
        _mntns_plan = want
    if want != _mntns_plan:
        return -1, -1
    return _mntns_pool.pop(0) if _mntns_pool else (-1, -1)


def _enter_user_namespace(control_fd: int) -> str:
    """Not root: become root of a new (unprivileged) user namespace and PID 1
    of a new PID namespace owned by it, so that every instance can get a PID
    namespace of its own exactly as on the root path (``setns`` back to the
    host's PID namespace is refused inside a user namespace, to our own is not).

    The process the runtime started stays behind as a thin parent that waits
    for the real template and exits with its status; the template dies with
    it (PDEATHSIG), and everything in its PID namespace with the template.
    Returns '' or why the user namespace could not be made."""
    global _IN_USERNS
    try:
        iso.enter_user_namespace()
        iso.unshare(iso.CLONE_NEWPID)
    except OSError as exc:
        return str(exc)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _IN_USERNS = True
        iso.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 0 and not os.path.exists(f"/proc/{parent}"):  # pragma: no cover - parent already gone
            os._exit(1)
        return ""
    os.close(control_fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _f: os.kill(pid, signal.SIGKILL))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:  # pragma: no cover - retried by Python already
            continue
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


# The template's pages a call writes (see :mod:`.pages`): None until the
# probe has answered; then what each standby writes ahead (empty: nothing,
# and the template's log says why where learning them failed).
PROBE_TIMEOUT_S = 30.0
PROBE_MAX_BYTES = 4 << 20
_call_pages: pages.Ranges | None = None


def _learned(result: tuple[pages.Ranges, str]) -> None:
    global _call_pages
    _call_pages, why = result
    n = sum(hi - lo for lo, hi in _call_pages) // pages.PAGE
    print(f"functionai template: {why or f'a call writes {n} of its pages: each standby takes its own copies ahead'}", file=sys.stderr, flush=True)


class _PageProbe:
    """The page probe, running: a throwaway fork of the template (never an
    instance: see :func:`worker.probe_call_pages`) and the pipe it answers on."""

    def __init__(self, module: ModuleType, handler: Any, spec: dict[str, Any]) -> None:
        rfd, wfd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                iso.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL)
                worker.probe_call_pages(module, handler, str(spec.get("function", "")), spec.get("warmup"), wfd)
            finally:
                os._exit(1)
        os.close(wfd)
        os.set_blocking(rfd, False)
        self.pid, self.fd = pid, rfd
        self.deadline = time.monotonic() + PROBE_TIMEOUT_S
        self.data = bytearray()

    def read(self) -> bool:
        """Read what is there; True once it has all been sent (or too much)."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return False
        self.data += chunk
        return not chunk or len(self.data) > PROBE_MAX_BYTES

    def stop(self, why: str) -> tuple[pages.Ranges, str]:
        """End it; the ranges it reported, checked (or none, and why)."""
        os.close(self.fd)
        try:
            os.kill(self.pid, signal.SIGKILL)  # (gone already when it answered; reaped with the instances)
        except OSError:
            pass
        if why:
            return [], why
        try:
            msg = json.loads(bytes(self.data))
            if not isinstance(msg, dict) or "error" in msg:
                return [], f"the probe's call failed: {msg.get('error') if isinstance(msg, dict) else msg!r}"
            return pages.check_ranges(msg.get("ranges"), pages.private_writable_regions()), ""
        except ValueError as exc:
            return [], f"the probe's answer was refused: {exc}"


class _Standby:
    """A process forked ahead (Android's zygote keeps such a pool of
    "unspecialised" processes): a fork of the template, PID 1 of a new PID
    namespace, with nothing of the template open but one socket, blocked on
    it.  The next instance asked for starts in it (:meth:`start` sends the
    request there), so the fork itself, several milliseconds for a template
    holding large imports, is not on that instance's critical path.  It
    becomes one instance, is never shared, and dies with the template."""

    def __init__(self, pid: int, sock: socket.socket, pid_ns: bool) -> None:
        self.pid, self.sock, self.pid_ns = pid, sock, pid_ns

    def start(self, cfg: dict[str, Any], sock_fd: int, netns_fd: int, disk_fd: int, mntns: tuple[int, int]) -> int:
        """Hand the request to the standby; its pid, or -1 if it is gone."""
        fds = [sock_fd]
        layout: dict[str, int] = {}
        for key, fd in (("netns", netns_fd), ("disk", disk_fd), ("mntns", mntns[0]), ("mntns_state", mntns[1])):
            if fd >= 0:
                layout[key] = len(fds)
                fds.append(fd)
        try:
            socket.send_fds(self.sock, [json.dumps({"cfg": {**cfg, "forked_ahead": True}, "fds": layout}).encode()], fds)
        except OSError:
            return -1
        finally:
            self.sock.close()
        return self.pid


def _fork_standby(module: ModuleType, handler: Any, pid_ns_fd: int) -> _Standby:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid_ns = False
    if pid_ns_fd >= 0:
        try:
            iso.unshare(iso.CLONE_NEWPID)
            pid_ns = True
        except OSError:
            pass
    try:
        pid = os.fork()
    except OSError:
        if pid_ns:
            iso.setns(pid_ns_fd, iso.CLONE_NEWPID)
        ours.close()
        theirs.close()
        raise
    if pid == 0:  # the standby (never returns: an exception here must not reach the template's loop)
        code = 5
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            iso.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL)  # the template's end is ours
            iso.close_fds_except([theirs.fileno()])  # not the template's control socket: its EOF tells the runtime
            # its own copies of the pages a call writes, made now while nobody waits
            written, _why = pages.populate_write(_call_pages or [])
            data, fds, _flags, _addr = socket.recv_fds(theirs, MAX_MSG, 8)
            if data:
                msg = json.loads(data)
                layout = msg["fds"]

                def fd_of(key: str) -> int:
                    return fds[layout[key]] if key in layout else -1

                theirs.close()
                cfg = msg["cfg"]
                cfg["pages_ahead"] = written
                worker.child_main(fds[0], cfg, module, handler, pid_ns, fd_of("netns"), fd_of("disk"), (fd_of("mntns"), fd_of("mntns_state")))
            code = 0  # the template went without using it
        finally:
            os._exit(code)
    if pid_ns:  # back to our own PID namespace for the next fork's children
        iso.setns(pid_ns_fd, iso.CLONE_NEWPID)
    theirs.close()
    return _Standby(pid, ours, pid_ns)


def _fork_instance(
    sock_fd: int,
    cfg: dict[str, Any],
    module: ModuleType,
    handler: Any,
    pid_ns_fd: int,
    ctl: socket.socket,
    rfd: int,
    wfd: int,
    netns_fd: int = -1,
    disk_fd: int = -1,
    mntns: tuple[int, int] = (-1, -1),
) -> int:
    pid_ns = False
    if pid_ns_fd >= 0:
        try:
            iso.unshare(iso.CLONE_NEWPID)
            pid_ns = True
        except OSError as exc:
            cfg["pid_ns_error"] = str(exc)
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        worker.child_main(sock_fd, cfg, module, handler, pid_ns, netns_fd, disk_fd, mntns)
        os._exit(5)  # pragma: no cover - child_main never returns
    if pid_ns:
        iso.setns(pid_ns_fd, iso.CLONE_NEWPID)
    return pid


def _reap(ctl: socket.socket, instances: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in instances:
            instances.discard(pid)
            try:
                _send(ctl, {"op": "exited", "pid": pid, "status": status})
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
