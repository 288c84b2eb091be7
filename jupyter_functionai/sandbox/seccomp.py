"""The default seccomp filter of a sandbox instance.

Installed as the *last* step of an instance's setup (``Worker.bind``, after
the uid drop and ``PR_SET_NO_NEW_PRIVS``), just before user code can run, as
bubblewrap does.  Everything is allowed except the calls a sandbox never needs
and that widen the kernel's attack surface or cross sessions (new user
namespaces, the kernel keyrings, bpf, perf events, ptrace, mounts, modules,
kexec, userfaultfd, ...); those fail with ``EPERM`` (``clone3`` with
``ENOSYS``, so libc falls back to ``clone``, whose flags the filter can read),
so user code gets a clear ``OSError`` rather than a kill.

The filter is built with libseccomp (through ``pyseccomp``), exported as a
BPF program, and that program is loaded with ``seccomp(2)``.  The default
program is built once when this module is imported: in the template, before
any fork, so an instance only makes one system call to install it.  A spec
that relaxes the filter (``seccomp_allow``) gets its program built in the
instance (libseccomp is already loaded there).

``pyseccomp`` must be imported before the uid drop (the interpreter's files
may be unreadable afterwards), which importing this module does.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from ..spec import SECCOMP_BLOCKED, SECCOMP_MODES

__all__ = ["SECCOMP_BLOCKED", "SECCOMP_MODES", "install", "program", "unavailable_reason"]

CLONE_NEWUSER = 0x10000000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# calls that get another errno than EPERM
_ERRNO = {"clone3": errno.ENOSYS}
# calls blocked only when their flags argument (arg 0) has CLONE_NEWUSER
_USERNS_FLAGS_ARG = {"unshare": 0, "clone": 0}

_libseccomp: Any = None
_import_error = ""
if sys.platform == "linux":
    try:
        _libseccomp = importlib.import_module("pyseccomp")
    except (ImportError, OSError, RuntimeError) as exc:  # RuntimeError: "Unable to find libseccomp"
        _import_error = f"pyseccomp/libseccomp unavailable: {type(exc).__name__}: {exc}"
else:  # pragma: no cover - Linux only
    _import_error = "seccomp is Linux-only"

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall  # looked up here (in the template), not in each instance
_prctl = _libc.prctl
_programs: dict[frozenset[str], _Program] = {}
_build_error = ""
_nr_seccomp = -1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Program:
    """A compiled filter: the BPF code and the ``sock_fprog`` pointing at it."""

    __slots__ = ("code", "fprog")

    def __init__(self, code: bytes) -> None:
        self.code = ctypes.create_string_buffer(code, len(code))
        self.fprog = _SockFprog(len(code) // 8, ctypes.cast(self.code, ctypes.c_void_p))

    def __len__(self) -> int:
        return len(self.code)


def _build(allow: frozenset[str]) -> bytes:
    """libseccomp's BPF program for the default filter less ``allow``."""
    lib = _libseccomp
    f = lib.SyscallFilter(lib.ALLOW)
    for name in SECCOMP_BLOCKED:
        if name in allow:
            continue
        action = lib.ERRNO(_ERRNO.get(name, errno.EPERM))
        try:
            if name in _USERNS_FLAGS_ARG:
                arg = lib.Arg(_USERNS_FLAGS_ARG[name], lib.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
                f.add_rule(action, name, arg)
            else:
                f.add_rule(action, name)
        except OSError as exc:
            # a call this architecture (or this libseccomp) does not know
            if exc.errno not in (errno.EINVAL, errno.EFAULT, errno.EDOM):
                raise
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb") as out:
            f.export_bpf(out)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
    return b"".join(chunks)


def program(allow: Iterable[str] = ()) -> _Program:
    """The compiled filter (cached) blocking ``SECCOMP_BLOCKED`` less ``allow``."""
    key = frozenset(allow)
    prog = _programs.get(key)
    if prog is None:
        if _libseccomp is None:
            raise OSError(errno.ENOSYS, _import_error)
        prog = _programs[key] = _Program(_build(key))
    return prog


def _prepare() -> None:
    global _build_error, _nr_seccomp
    if _libseccomp is None:
        return
    try:
        _nr_seccomp = int(_libseccomp.resolve_syscall(_libseccomp.system_arch(), "seccomp"))
        program()
    except (OSError, RuntimeError, ValueError) as exc:
        _build_error = f"building the seccomp filter with libseccomp failed: {exc}"


def unavailable_reason() -> str:
    """Why the filter cannot be installed here ("" when it can)."""
    return _import_error or _build_error


def load(prog: _Program) -> None:
    """Install ``prog`` on every thread of this process (needs no_new_privs or
    CAP_SYS_ADMIN)."""
    fprog = ctypes.byref(prog.fprog)
    if _nr_seccomp >= 0:
        rc = _syscall(_nr_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, fprog)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if rc > 0:
            raise OSError(errno.EBUSY, f"seccomp: thread {rc} could not be synchronised")
        if err != errno.ENOSYS:
            raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(err)}")
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def install(cfg: dict[str, Any], report: Any) -> None:
    """Install the instance's filter per ``cfg["seccomp"]`` (``{"mode", "allow"}``)
    and record the outcome on ``report`` (an ``IsolationReport``)."""
    conf = cfg.get("seccomp") or {}
    mode = conf.get("mode", "default")
    allow = sorted(conf.get("allow") or [])
    if mode == "off":
        report.seccomp = "off"
        return
    reason = unavailable_reason()
    if reason:
        report.missing["seccomp"] = reason
        return
    t0 = time.perf_counter()
    try:
        load(program(allow))
    except OSError as exc:
        report.missing["seccomp"] = f"loading the seccomp filter failed: {exc}"
        return
    report.timings["seccomp"] = round((time.perf_counter() - t0) * 1000, 3)
    report.seccomp = "relaxed" if allow else "default"
    report.seccomp_allowed = allow


_prepare()
