"""Linux isolation primitives for process sandboxes.

Everything here is best effort unless a layer is *required*: each step
records what it achieved in an :class:`IsolationReport`, and a step that
fails records why instead of raising.  The worker refuses to run when a
required layer is missing.

Python 3.10/3.11 have no ``os.unshare``/``os.setns``/``mount``; they are
called through libc with ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import random
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

MOUNT_ATTR_RDONLY = 0x1
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
SYS_MOUNT_SETATTR = 442  # the same number on every architecture
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc: Any = None


def libc() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(libc().setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(v: str | None) -> bytes | None:
        return v.encode() if v is not None else None

    _check(libc().mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


MNT_DETACH = 2


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(libc().umount2(target.encode(), flags), f"umount {target}")


def prctl(option: int, arg: int) -> None:
    _check(libc().prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def mount_flags_of(path: str) -> int:
    """The per-mount flags of the mount holding ``path`` that a remount must
    keep (in a user namespace the kernel refuses to clear inherited, locked
    nosuid/nodev/noexec/atime flags)."""
    f = os.statvfs(path).f_flag
    keep = 0
    for st_bit, ms_bit in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                           (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21)):
        if f & st_bit:
            keep |= ms_bit
    return keep


def make_root_private_readonly() -> None:
    """Make every mount of this (new) mount namespace private and read-only,
    submounts included (one ``mount_setattr(2)``, Linux 5.12+); older kernels
    get a private propagation and a read-only remount of ``/`` itself."""
    attr = ctypes.create_string_buffer(struct.pack("QQQQ", MOUNT_ATTR_RDONLY, 0, MS_PRIVATE, 0))
    if libc().syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, attr, ctypes.c_size_t(32)) == 0:
        return
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags_of("/"))


def enter_user_namespace() -> None:
    """Enter a new user namespace as its root, mapped to the caller's uid/gid
    (what ``unshare -Ur`` does): the process then may create mount, PID, IPC,
    UTS and network namespaces without being root on the host.  Must be called
    while the process is single-threaded."""
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


# keyctl(2) has no libc wrapper and a number per architecture
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "arm64": 219}
KEYCTL_JOIN_SESSION_KEYRING = 1

# what /proc shows of every key of the host user, other sessions' included
# (Docker masks the same files): bound over with /dev/null in each instance
PROC_KEY_FILES = ("/proc/keys", "/proc/key-users")


def join_new_session_keyring() -> None:
    """Give this process a new, empty, anonymous session keyring: keys it adds
    to ``@s`` are then seen by nothing else."""
    import platform

    nr = _SYS_KEYCTL.get(platform.machine())
    if nr is None:
        raise OSError(38, f"keyctl: unknown system call number on {platform.machine()}")
    if libc().syscall(nr, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(err)}")


def mount_own_sysfs() -> None:
    """Mount a sysfs of this process's network namespace on ``/sys``,
    read-only.  The host's shows the host's network devices (names, MAC
    addresses, counters) whatever namespace reads it, and its
    ``/sys/fs/cgroup`` every session's cgroup; this one shows the sandbox's
    loopback only, and no cgroup tree."""
    mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mask_proc_key_files() -> None:
    """Hide the host user's key list from a freshly mounted /proc."""
    for path in PROC_KEY_FILES:
        if os.path.exists(path):
            mount("/dev/null", path, None, MS_BIND)


_last_cap: int | None = None


def last_capability() -> int:
    """The highest capability number of this kernel (read once: templates
    read it before they fork, so instances do not)."""
    global _last_cap
    if _last_cap is None:
        try:
            _last_cap = int(_read("/proc/sys/kernel/cap_last_cap"))
        except (OSError, ValueError):
            _last_cap = 40
    return _last_cap


def drop_bounding_set() -> None:
    """Drop every capability from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last_capability() + 1):
        ret = libc().prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
        if ret != 0 and ctypes.get_errno() != 22:  # EINVAL: not a capability on this kernel
            _check(ret, f"PR_CAPBSET_DROP {cap}")


def clear_capabilities() -> None:
    """Empty the effective, permitted, inheritable and ambient sets."""
    with contextlib.suppress(OSError):
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    hdr = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(libc().capset(hdr, data), "capset")


def effective_capabilities() -> int:
    """The effective capability set of this process (capget: what
    /proc/self/status shows as CapEff, without making that whole file);
    -1 if unknown."""
    hdr = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc().capget(hdr, data) != 0:
        return -1
    return int(data[0]) | (int(data[3]) << 32)  # two __user_cap_data_struct: effective is the first word of each


def close_fds_except(keep: Iterable[int]) -> None:
    """Close every inherited descriptor except ``keep`` (and 0-2)."""
    keep_set = sorted({k for k in keep if k > 2})
    lo = 3
    for k in [*keep_set, None]:
        hi = (k - 1) if k is not None else None
        if hi is None:
            try:
                _check(libc().syscall(436, lo, ctypes.c_uint(0xFFFFFFFF), 0), "close_range")
            except OSError:
                os.closerange(lo, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        elif hi >= lo:
            os.closerange(lo, hi + 1)
        if k is not None:
            lo = k + 1


def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


# -- cgroups ---------------------------------------------------------------

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "pids")


REQUIRED_CONTROLLERS = ("memory", "pids")  # cpu is used where it is there too
SERVER_LEAF = "functionai-server"  # v2, delegated: where the server itself moves


@dataclass
class CgroupManager:
    """Creates one cgroup per instance.

    As root: under ``<root>/functionai``, v2 where the unified hierarchy has
    the controllers, else v1 with one directory per controller.

    As a normal user: under the cgroup this process runs in, where it has been
    delegated (its directory is the user's, as systemd makes it for
    ``systemd-run --user --scope -p Delegate=yes`` or a unit with
    ``Delegate=yes``).  Where it is not, and a systemd user manager answers on
    the bus, the server asks it for a delegated scope of its own (a transient
    ``functionai-<pid>.scope``) first.  On v2 the server then moves itself
    into a leaf (``functionai-server``: a cgroup with processes cannot
    enable controllers for its children) and makes the instances' cgroups
    beside it.

    ``version`` is ``None`` when none of that is possible; ``reason`` says why
    (then rlimits are the fallback).
    """

    root: str = CGROUP_ROOT
    prefix: str = "functionai"
    version: int | None = None
    reason: str = ""
    #: False: no cgroups at all (configuration), nothing is probed or made
    enabled: bool = True
    #: whether to act as root; None: as this process is
    as_root: bool | None = None
    #: the membership file read for the delegated case (a test points it elsewhere)
    proc_cgroup: str = "/proc/self/cgroup"
    #: whether a systemd user manager may be asked for a delegated scope
    ask_systemd: bool = True
    #: a normal user's delegated cgroup, as ``/proc/self/cgroup`` names it ("" as root)
    delegated: str = ""
    #: controller -> the directory the instances' cgroups are made in (v2: one, under "")
    bases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.as_root is None:
            self.as_root = os.geteuid() == 0
        self.version, self.reason = self._detect()

    def _detect(self) -> tuple[int | None, str]:
        if not self.enabled:
            return None, "cgroups disabled by configuration"
        if sys.platform != "linux":
            return None, "not Linux"
        if not self.as_root:
            return self._detect_delegated()
        v2 = os.path.join(self.root, "cgroup.controllers")
        if os.path.exists(v2):
            try:
                have = _read(v2).split()
                if {"memory", "cpu", "pids"} <= set(have):
                    base = os.path.join(self.root, self.prefix)
                    os.makedirs(base, exist_ok=True)
                    with open(os.path.join(self.root, "cgroup.subtree_control"), "w") as f:
                        f.write("+memory +cpu +pids")
                    with open(os.path.join(base, "cgroup.subtree_control"), "w") as f:
                        f.write("+memory +cpu +pids")
                    self.bases = {"": base}
                    return 2, ""
                return None, f"cgroup v2 lacks controllers (has {' '.join(have)})"
            except OSError as exc:
                return None, f"cgroup v2 not writable: {exc}"
        try:
            for c in V1_CONTROLLERS:
                os.makedirs(os.path.join(self.root, c, self.prefix), exist_ok=True)
            self.bases = {c: os.path.join(self.root, c, self.prefix) for c in V1_CONTROLLERS}
            return 1, ""
        except OSError as exc:
            return None, f"cgroup v1 not writable: {exc}"

    # -- a normal user: a delegated cgroup ---------------------------------------------

    def _own(self) -> dict[str, str]:
        """This process's cgroups: controller -> path (v2's unified one under "")."""
        out: dict[str, str] = {}
        try:
            text = _read(self.proc_cgroup)
        except OSError:
            return out
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                out[""] = parts[2]
            for c in parts[1].split(","):
                if c:
                    out[c] = parts[2]
        return out

    def _detect_delegated(self) -> tuple[int | None, str]:
        own = self._own()
        if all(c in own for c in REQUIRED_CONTROLLERS):  # v1 (or hybrid: v1 holds them)
            return self._delegated_v1(own)
        if "" in own and os.path.exists(os.path.join(self.root, "cgroup.controllers")):
            version, reason = self._delegated_v2(own[""])
            if version is None and self.ask_systemd and self._ask_systemd_for_scope():
                return self._delegated_v2(self._own().get("", own[""]))
            return version, reason
        return None, "not root, and no cgroup hierarchy with the memory and pids controllers was found"

    def _delegated_v1(self, own: dict[str, str]) -> tuple[int | None, str]:
        bases: dict[str, str] = {}
        for c in V1_CONTROLLERS:
            d = os.path.join(self.root, c, own.get(c, "").lstrip("/"))
            if c in own and os.access(d, os.W_OK) and os.access(os.path.join(d, "tasks"), os.W_OK):
                bases[c] = os.path.join(d, self.prefix)
            elif c in REQUIRED_CONTROLLERS:
                return None, (
                    f"not root, and this process's {c} cgroup ({own.get(c)}) is not delegated to this user: "
                    "start the server in a cgroup the user owns"
                )
        try:
            for b in bases.values():
                os.makedirs(b, exist_ok=True)
        except OSError as exc:
            return None, f"the delegated cgroup is not usable: {exc}"
        self.bases = bases
        self.delegated = own["memory"]
        return 1, ""

    def _delegated_v2(self, path: str) -> tuple[int | None, str]:
        d = os.path.join(self.root, path.lstrip("/"))
        if os.path.basename(d) == SERVER_LEAF:  # this process moved itself there before (a second manager)
            d = os.path.dirname(d)
        try:
            have = set(_read(os.path.join(d, "cgroup.controllers")).split())
        except OSError as exc:
            return None, f"not root, and this process's cgroup {path} cannot be read: {exc}"
        missing = [c for c in REQUIRED_CONTROLLERS if c not in have]
        if missing:
            return None, (
                f"not root, and this process's cgroup {path} is not delegated with the {' and '.join(missing)} controller(s) "
                "(start the server with: systemd-run --user --scope -p Delegate=yes ...)"
            )
        for fname in ("", "cgroup.procs", "cgroup.subtree_control"):
            if not os.access(os.path.join(d, fname), os.W_OK):
                return None, (
                    f"not root, and this process's cgroup {path} is not delegated to this user "
                    "(start the server with: systemd-run --user --scope -p Delegate=yes ...)"
                )
        want = [c for c in ("memory", "pids", "cpu") if c in have]
        leaf = os.path.join(d, SERVER_LEAF)
        try:
            others = [p for p in _read(os.path.join(d, "cgroup.procs")).split() if int(p) != os.getpid()]
            if others:
                return None, (
                    f"not root, and the delegated cgroup {path} holds other processes ({len(others)}), so it cannot "
                    "enable controllers for the sandboxes: start the server alone in it "
                    "(systemd-run --user --scope -p Delegate=yes ...)"
                )
            os.makedirs(leaf, exist_ok=True)
            with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                f.write("0")  # this whole process
            ctl = " ".join(f"+{c}" for c in want)
            with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
                f.write(ctl)
            base = os.path.join(d, self.prefix)
            os.makedirs(base, exist_ok=True)
            with open(os.path.join(base, "cgroup.subtree_control"), "w") as f:
                f.write(ctl)
        except (OSError, ValueError) as exc:
            return None, f"the delegated cgroup {path} is not usable: {exc}"
        self.bases = {"": base}
        self.delegated = os.path.relpath(d, self.root)
        return 2, ""

    def _ask_systemd_for_scope(self) -> bool:
        """Ask the user's systemd manager to move this process into a transient
        scope of its own with ``Delegate=yes``; True once it is there."""
        busctl = shutil.which("busctl")
        if not busctl or not os.environ.get("XDG_RUNTIME_DIR"):
            return False
        before = self._own().get("")
        unit = f"functionai-{os.getpid()}.scope"
        argv = [
            busctl, "--user", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
            "StartTransientUnit", "ssa(sv)a(sa(sv))", unit, "fail", "2", "PIDs", "au", "1", str(os.getpid()), "Delegate", "b", "true", "0",
        ]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return False
        if done.returncode != 0:
            return False
        deadline = time.monotonic() + 5.0  # the job moves the process a moment later
        while time.monotonic() < deadline:
            now = self._own().get("")
            if now and now != before and now.endswith("/" + unit):
                return True
            time.sleep(0.01)
        return False

    # -- the instances' cgroups --------------------------------------------------------

    def create(self, name: str, *, cpu: float, memory_mb: int, pids: int) -> list[str]:
        """Make the cgroup(s) with limits; returns the files the instance writes
        ``0`` to (from its only thread) to join them."""
        mem = str(memory_mb * 1024 * 1024)
        if self.version == 2:
            d = os.path.join(self.bases[""], name)
            os.makedirs(d, exist_ok=True)
            _write(d, "memory.max", mem)
            _write(d, "memory.swap.max", "0", optional=True)
            _write(d, "cpu.max", f"{max(1000, int(cpu * 100000))} 100000", optional=not self.as_root)
            _write(d, "pids.max", str(pids))
            return [os.path.join(d, "cgroup.procs")]
        if self.version == 1:
            out = []
            for base in self.bases.values():
                d = os.path.join(base, name)
                os.makedirs(d, exist_ok=True)
                # "tasks", not "cgroup.procs": the instance writes "0" (itself)
                # while still single-threaded, which moves the whole process
                # without the kernel's global threadgroup lock (an RCU grace
                # period, 6-20 ms, on every cgroup.procs write after a pause).
                out.append(os.path.join(d, "tasks"))
            m = os.path.join(self.bases["memory"], name)
            _write(m, "memory.limit_in_bytes", mem)
            _write(m, "memory.memsw.limit_in_bytes", mem, optional=True)
            if "cpu" in self.bases:
                cdir = os.path.join(self.bases["cpu"], name)
                _write(cdir, "cpu.cfs_period_us", "100000")
                _write(cdir, "cpu.cfs_quota_us", str(max(1000, int(cpu * 100000))))
            _write(os.path.join(self.bases["pids"], name), "pids.max", str(pids))
            return out
        return []

    def oom_killed(self, name: str) -> bool:
        if self.version == 2:
            path = os.path.join(self.bases[""], name, "memory.events")
        elif self.version == 1:
            path = os.path.join(self.bases["memory"], name, "memory.oom_control")
        else:
            return False
        try:
            for line in _read(path).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill" and int(v) > 0:
                    return True
        except OSError:
            pass
        return False

    def cpu_usage_usec(self, name: str) -> int | None:
        """CPU time of everything in the cgroup ``name`` so far (µs), or None."""
        try:
            if self.version == 2:
                for line in _read(os.path.join(self.bases[""], name, "cpu.stat")).splitlines():
                    k, _, v = line.partition(" ")
                    if k == "usage_usec":
                        return int(v)
            elif self.version == 1:
                base = self.bases.get("cpuacct") or self.bases.get("cpu")
                if base:
                    return int(_read(os.path.join(base, name, "cpuacct.usage"))) // 1000
        except (OSError, ValueError):
            pass
        return None

    def memory_usage(self, name: str) -> int | None:
        if self.version == 2:
            path = os.path.join(self.bases[""], name, "memory.current")
        elif self.version == 1:
            path = os.path.join(self.bases["memory"], name, "memory.usage_in_bytes")
        else:
            return None
        try:
            return int(_read(path))
        except (OSError, ValueError):
            return None

    def sweep(self, older_than_s: float = 60.0, own: str | None = None) -> int:
        """Remove instance cgroups left by runtimes that died.

        Those named ``<own>-...`` belong to this data directory: an earlier
        run of it left them (a kill -9), so whatever still runs in them is
        killed and they go, however young.  Any other empty one older than
        ``older_than_s`` goes too (a cgroup with processes cannot be removed,
        so another runtime's live ones are safe; young ones are skipped in case
        another runtime is about to use them)."""
        bases = self._bases()
        now = time.time()
        mine: list[str] = []
        removed = 0
        for base in bases:
            try:
                entries = list(os.scandir(base))
            except OSError:
                continue
            for e in entries:
                if not e.is_dir(follow_symlinks=False):
                    continue
                if own is not None and e.name.startswith(own + "-"):
                    mine.append(e.path)
                    continue
                if not e.name.startswith(("i-", "r")):
                    continue
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime < older_than_s:
                        continue
                    os.rmdir(e.path)
                    removed += 1
                except OSError:
                    pass
        for path in mine:
            with contextlib.suppress(OSError):
                for pid in _read(os.path.join(path, "cgroup.procs")).split():
                    with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while mine:
            left = []
            for path in mine:
                try:
                    os.rmdir(path)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(path)
            mine = left
            if not mine or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # killed processes leave their cgroup asynchronously
        return removed

    def _bases(self) -> list[str]:
        return list(self.bases.values()) if self.version else []

    def names(self, own: str) -> set[str]:
        """The cgroups of this data directory that exist now."""
        out: set[str] = set()
        for base in self._bases():
            with contextlib.suppress(OSError):
                out.update(e.name for e in os.scandir(base) if e.name.startswith(own + "-"))
        return out

    def remove(self, name: str) -> bool:
        """Remove the instance's cgroup(s); False while processes remain."""
        if not self.version:
            return True
        dirs = [os.path.join(b, name) for b in self.bases.values()]
        ok = True
        for d in dirs:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        return ok


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(d: str, fname: str, value: str, optional: bool = False) -> None:
    try:
        with open(os.path.join(d, fname), "w") as f:
            f.write(value)
    except OSError:
        if not optional:
            raise


# -- capability probe -----------------------------------------------------


_USERNS_SYSCTLS = (
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "sysctl kernel.unprivileged_userns_clone=0 (set it to 1)"),
    ("/proc/sys/user/max_user_namespaces", "0", "sysctl user.max_user_namespaces=0 (set it above 0)"),
    (
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        "1",
        "sysctl kernel.apparmor_restrict_unprivileged_userns=1 (set it to 0, or give the Python interpreter an AppArmor profile allowing userns)",
    ),
)
_userns_reason: str | None = None


def unprivileged_userns_unavailable() -> str:
    """'' when this (non-root) process may create a user namespace, else why
    not, naming the sysctl that would allow it.  Probed once per process: a
    forked child tries ``unshare(CLONE_NEWUSER)``."""
    global _userns_reason
    if _userns_reason is not None:
        return _userns_reason
    if sys.platform != "linux":
        _userns_reason = "not Linux"
        return _userns_reason
    lib = libc()  # loaded before the fork: the child only calls into it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only unshares
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ok = lib.unshare(CLONE_NEWUSER) == 0
        os._exit(0 if ok else min(ctypes.get_errno(), 255) or 1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        _userns_reason = ""
        return ""
    for path, bad, why in _USERNS_SYSCTLS:
        with contextlib.suppress(OSError):
            if _read(path).strip() == bad:
                _userns_reason = f"unprivileged user namespaces are disabled: {why}"
                return _userns_reason
    err = os.strerror(code) if code > 0 else f"status {status}"
    _userns_reason = (
        f"unshare(CLONE_NEWUSER) failed ({err}): unprivileged user namespaces are refused "
        "(a container's seccomp profile, or sysctl user.max_user_namespaces / kernel.unprivileged_userns_clone)"
    )
    return _userns_reason


def probe_namespaces() -> dict[str, str]:
    """Which namespace layers this process may create: layer -> '' or reason.

    Root creates them directly; a normal user through an unprivileged user
    namespace (layer ``user``) when the kernel allows one."""
    out: dict[str, str] = {}
    if sys.platform != "linux":
        return {k: "not Linux" for k in ("mount", "pid", "ipc", "uts", "net", "uid", "user")}
    if os.geteuid() == 0:
        out = dict.fromkeys(("mount", "pid", "ipc", "uts", "net", "uid"), "")
        out["user"] = "not used: sessions get their own uid instead of a user namespace"
        return out
    reason = unprivileged_userns_unavailable()
    for k in ("mount", "pid", "ipc", "uts", "net"):
        out[k] = f"not root and {reason}" if reason else ""
    out["user"] = reason
    out["uid"] = "not root: sessions run as the server's user (inside a user namespace, without capabilities)"
    return out


# -- filesystem view -------------------------------------------------------


def _others_can_traverse(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return bool(st.st_mode & stat.S_IXOTH)


def plan_masks(keep: Iterable[str], always: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Plan tmpfs masks: which directories to hide and which paths to re-expose.

    ``always`` are directories hidden in every sandbox (``/tmp``, the state
    root).  Ancestors of a ``keep`` path that a per-session uid could not
    traverse (e.g. ``/root`` holding a pyenv Python) are masked too, so the
    kept path stays reachable after the uid drop.  Returns ``(mask, keeps)``
    pairs, outermost first; ``keeps`` includes deeper mask points.
    """
    keep_paths = sorted({os.path.realpath(k) for k in keep if k and os.path.exists(k)})
    masks = {os.path.realpath(a) for a in always if os.path.isdir(a)}
    for k in keep_paths:
        parts = k.split(os.sep)
        for i in range(2, len(parts)):
            anc = os.sep.join(parts[:i])
            if not _others_can_traverse(anc):
                masks.add(anc)
                break
    ordered = sorted(masks, key=lambda p: (p.count(os.sep), p))
    plan = []
    for m in ordered:
        inner = [p for p in [*keep_paths, *ordered] if p != m and p.startswith(m + os.sep)]
        # drop paths covered by another kept path or by a deeper mask under m
        def covered(p: str, pool: list[str]) -> bool:
            return any(q != p and p.startswith(q + os.sep) for q in pool)

        direct = [p for p in inner if not covered(p, inner)]
        plan.append((m, direct))
    return plan


def apply_masks(plan: list[tuple[str, list[str]]], writable: Iterable[str] = (), tmp_size_mb: int = 64) -> None:
    """Mount a private tmpfs on each mask and bind the kept paths back (read-only
    unless listed in ``writable``).  Must run inside a private mount namespace."""
    rw = {os.path.realpath(w) for w in writable}
    for m, keeps in plan:
        fds = []
        for k in keeps:
            try:
                fds.append((k, os.open(k, os.O_PATH)))
            except OSError:
                continue
        shared = m in ("/tmp", "/dev/shm", "/var/tmp")
        size = f"{tmp_size_mb}m" if shared else "4m"
        mode = "1777" if shared else "0755"
        mount("tmpfs", m, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode},size={size}")
        for k, fd in fds:
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.makedirs(k, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(k), exist_ok=True)
                    open(k, "a").close()
                mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
                # a bind inherits the (read-only) root's flags: set them explicitly
                flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | mount_flags_of(k)
                if k not in rw:
                    flags |= MS_RDONLY
                mount(None, k, None, flags)
            finally:
                os.close(fd)


def seal_masks(plan: list[tuple[str, list[str]]]) -> None:
    """Make the tmpfs masks (not /tmp, /dev/shm, /var/tmp) read-only, once
    everything that goes inside them is mounted: a sandbox cannot write there
    even as root of its user namespace."""
    for m, _keeps in plan:
        if m not in ("/tmp", "/dev/shm", "/var/tmp"):
            mount(None, m, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


# -- random sources --------------------------------------------------------


def reseed_random_sources(extra_modules: Iterable[Any] = ()) -> list[str]:
    """Give the process fresh randomness after a fork from a template.

    Re-seeds the ``random`` module, ``numpy.random``'s global state when numpy
    is imported, and every ``random.Random`` / numpy ``RandomState`` /
    ``Generator`` found at module level of ``extra_modules`` (the function's
    own module).  ``secrets``/``os.urandom`` read the kernel and need nothing.
    """
    done = ["random"]
    random.seed(os.urandom(32))
    np: Any = sys.modules.get("numpy")
    np_types: tuple[type, ...] = ()
    if np is not None:
        try:
            np.random.seed(int.from_bytes(os.urandom(4), "little"))
            np_types = (np.random.RandomState, np.random.Generator)
            done.append("numpy.random")
        except Exception:  # pragma: no cover - exotic numpy builds
            pass
    for mod in extra_modules:
        for name, val in list(vars(mod).items()):
            if isinstance(val, random.Random) and val is not getattr(random, "_inst", None):
                val.seed(os.urandom(32))
                done.append(f"{mod.__name__}.{name}")
            elif np_types and isinstance(val, np_types):
                val = typing.cast(Any, val)
                seed = int.from_bytes(os.urandom(8), "little")
                if isinstance(val, np.random.Generator):
                    val.bit_generator.state = type(val.bit_generator)(seed).state
                else:
                    val.seed(seed & 0xFFFFFFFF)
                done.append(f"{mod.__name__}.{name}")
    return done


def set_rlimit(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY and value > hard:
        value = hard
    resource.setrlimit(which, (value, value))


@dataclass
class IsolationReport:
    """What one instance actually achieved."""

    namespaces: dict[str, bool] = field(default_factory=dict)
    cgroup: str | None = None  # "v1" | "v2" | None
    rlimits: list[str] = field(default_factory=list)
    uid: int | None = None
    network: str = "host"
    private_tmp: bool = False
    fs_masked: list[str] = field(default_factory=list)
    #: /sys is a sysfs of the sandbox's network namespace (not the host's)
    own_sysfs: bool = False
    fds_closed: bool = False
    reseeded: list[str] = field(default_factory=list)
    no_new_privs: bool = False
    user_namespace: bool = False  # runs in an unprivileged user namespace (not root on the host)
    caps_dropped: bool = False  # no capabilities left (CapEff 0, empty bounding set) when user code runs
    seccomp: str | None = None  # "default" | "relaxed" (seccomp_allowed let through) | "off" | None: not installed
    seccomp_allowed: list[str] = field(default_factory=list)
    disk: str | None = None  # "loop" | "fuse2fs": the working directory is a filesystem of its own
    disk_mb: int | None = None  # its size: writes past it get ENOSPC
    missing: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # ms per setup step
    #: what was made before the instance was asked for and handed to it, used
    #: by it alone: "process" (forked ahead by the template, PID namespace and
    #: all), "net" / "mount" (namespaces the template made while idle, the
    #: mount one with its masks in place), "disk" (its disk, mounted ahead),
    #: "pages" (its own copies of the template's pages a call writes, taken
    #: while it waited: see ``sandbox.pages``)
    ahead: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespaces": dict(self.namespaces),
            "cgroup": self.cgroup,
            "rlimits": list(self.rlimits),
            "uid": self.uid,
            "network": self.network,
            "private_tmp": self.private_tmp,
            "fs_masked": list(self.fs_masked),
            "own_sysfs": self.own_sysfs,
            "fds_closed": self.fds_closed,
            "reseeded": list(self.reseeded),
            "no_new_privs": self.no_new_privs,
            "user_namespace": self.user_namespace,
            "caps_dropped": self.caps_dropped,
            "seccomp": self.seccomp,
            "seccomp_allowed": list(self.seccomp_allowed),
            "disk": self.disk,
            "disk_mb": self.disk_mb,
            "missing": dict(self.missing),
            "timings": dict(self.timings),
            "ahead": list(self.ahead),
        }

    def achieved(self) -> set[str]:
        out = {k for k, v in self.namespaces.items() if v}
        if self.cgroup:
            out.add("cgroup")
        if self.rlimits:
            out.add("rlimits")
        if self.uid is not None:
            out.add("uid")
        if self.private_tmp:
            out.add("tmp")
        if self.seccomp in ("default", "relaxed"):
            out.add("seccomp")
        if self.user_namespace:
            out.add("user")
        if self.disk:
            out.add("disk")
        return out


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state, ppid, ..., start time at
    index 19), or None when the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_cpu_usec(pid: int) -> int | None:
    """CPU time of ``pid`` and its reaped children so far (µs), or None."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks * 1_000_000 // _TICK


def process_rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 when unreadable)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0
