"""The default seccomp filter, tried from inside real sandboxes.

Each blocked call is made with a raw ``syscall(2)`` through ctypes (so libc
cannot answer it itself) and must fail with EPERM (clone3: ENOSYS, so libc
falls back to clone); normal work (threads, subprocesses, multiprocessing,
numpy) must go on working; a spec can relax the filter or switch it off.
"""

from __future__ import annotations

import os

import pytest

from jupyter_functionai import FunctionSpec, InvalidSpec, IsolationUnavailable, Runtime
from jupyter_functionai.sandbox import seccomp
from jupyter_functionai.spec import SECCOMP_BLOCKED

from .conftest import deploy

ROOT = os.geteuid() == 0
needs_seccomp = pytest.mark.skipif(bool(seccomp.unavailable_reason()), reason=seccomp.unavailable_reason() or "-")

PROBE = """
import ctypes, errno, os
import pyseccomp  # imported by the template before the fork: no file access needed

libc = ctypes.CDLL(None, use_errno=True)
ARCH = pyseccomp.system_arch()
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
KEY_SPEC_USER_KEYRING = -4

def sc(name, *args):
    nr = pyseccomp.resolve_syscall(ARCH, name)
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    rc = libc.syscall(nr, *args)
    if rc < 0:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return "ok"

def blocked(ctx):
    target = os.path.join(ctx.workdir, "mnt")
    os.makedirs(target, exist_ok=True)
    return {
        "unshare_userns": sc("unshare", CLONE_NEWUSER | CLONE_NEWNS),
        "add_key": sc("add_key", b"user", b"fai-test", b"secret", 6, KEY_SPEC_USER_KEYRING),
        "keyctl": sc("keyctl", 0, KEY_SPEC_USER_KEYRING, 1),  # KEYCTL_GET_KEYRING_ID, create
        "request_key": sc("request_key", b"user", b"fai-test", None, 0),
        "bpf": sc("bpf", 5, None, 0),  # BPF_PROG_LOAD
        "perf_event_open": sc("perf_event_open", None, 0, -1, -1, 0),
        "ptrace": sc("ptrace", 0, 0, 0, 0),  # PTRACE_TRACEME
        "mount": sc("mount", b"none", target.encode(), b"tmpfs", 0, None),
        "userfaultfd": sc("userfaultfd", 0),
        "init_module": sc("init_module", None, 0, b""),
        "finit_module": sc("finit_module", -1, b"", 0),
        "kexec_load": sc("kexec_load", 0, 0, None, 0),
        "setns": sc("setns", -1, 0),
        "fsopen": sc("fsopen", b"tmpfs", 0),
        "umount2": sc("umount2", b"/", 0),
        "io_uring_setup": sc("io_uring_setup", 1, None),
        "clone3": sc("clone3", None, 0),
    }

def normal(ctx):
    import multiprocessing, subprocess, threading
    import numpy as np
    out = []
    t = threading.Thread(target=lambda: out.append("thread"))
    t.start()
    t.join()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        squares = pool.map(abs, [-2, -3])
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    return {
        "thread": out,
        "subprocess": subprocess.run(["/bin/true"]).returncode,
        "pool": squares,
        "fork": os.waitstatus_to_exitcode(status),
        "numpy": float(np.linalg.norm(np.arange(4.0))),
        "unshare_uts": sc("unshare", 0x04000000),  # no CLONE_NEWUSER: the filter lets it through to the kernel
    }

def handler(event, ctx):
    op = event["op"]
    if op == "count":
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return ctx.state["n"]
    if op == "blocked":
        return blocked(ctx)
    if op == "normal":
        return normal(ctx)
    if op == "keyctl":
        return {"keyctl": sc("keyctl", 0, KEY_SPEC_USER_KEYRING, 1), "bpf": sc("bpf", 5, None, 0)}
    raise ValueError(op)
"""


async def isolation(rt: Runtime, session: str) -> dict:
    return (await rt.describe_session(session))["instance"]["isolation"]


@needs_seccomp
@pytest.mark.asyncio
async def test_default_filter_blocks_the_dangerous_calls_and_normal_work_goes_on(rt: Runtime):
    await deploy(rt, "sc", PROBE, timeout=60)
    assert (await rt.invoke("sc", {"op": "count"}, session="neighbour")).value == 1
    got = (await rt.invoke("sc", {"op": "blocked"}, session="attacker")).value
    expected = {name: "EPERM" for name in got}
    expected["clone3"] = "ENOSYS"
    assert got == expected
    normal = (await rt.invoke("sc", {"op": "normal"}, session="attacker")).value
    assert normal["thread"] == ["thread"] and normal["subprocess"] == 0 and normal["pool"] == [2, 3]
    assert normal["fork"] == 7 and normal["numpy"] == pytest.approx(14**0.5)
    if ROOT:  # after the uid drop the kernel refuses it for want of CAP_SYS_ADMIN, not the filter
        assert normal["unshare_uts"] == "EPERM"
    rep = await isolation(rt, "attacker")
    assert rep["seccomp"] == "default" and rep["seccomp_allowed"] == [] and "seccomp" not in rep["missing"]
    # the neighbour still answers, with its own state
    assert (await rt.invoke("sc", {"op": "count"}, session="neighbour")).value == 2
    assert (await rt.invoke("sc", {"op": "count"}, session="attacker")).value == 1


WARMUP = """
def warmup():
    if not os.environ.get("FUNCTIONAI_TEMPLATE"):  # in the instance, not the template's pre-fork run
        assert sc("keyctl", 0, KEY_SPEC_USER_KEYRING, 1) == "EPERM"
"""


@needs_seccomp
@pytest.mark.asyncio
async def test_warm_pool_instances_are_filtered_too(rt: Runtime):
    """A pre-forked instance is bound (and primed) before its session exists:
    the filter is in from that point, for the warmup hook as for the calls."""
    await deploy(rt, "pooled", PROBE + WARMUP, min_instances=1, warmup="warmup")
    await rt.pool.wait_full("pooled")
    r = await rt.invoke("pooled", {"op": "keyctl"}, session="p")
    assert r.cold_start is not None and r.cold_start.path == "warm-pool"
    assert r.value == {"keyctl": "EPERM", "bpf": "EPERM"}
    assert (await isolation(rt, "p"))["seccomp"] == "default"


@needs_seccomp
@pytest.mark.asyncio
async def test_a_spec_can_allow_calls_or_switch_the_filter_off(rt: Runtime):
    await deploy(rt, "relaxed", PROBE, seccomp_allow=["keyctl"])
    got = (await rt.invoke("relaxed", {"op": "keyctl"}, session="r")).value
    assert got == {"keyctl": "ok", "bpf": "EPERM"}  # bpf stays blocked
    rep = await isolation(rt, "r")
    assert rep["seccomp"] == "relaxed" and rep["seccomp_allowed"] == ["keyctl"]

    await deploy(rt, "unfiltered", PROBE, seccomp="off")
    got = (await rt.invoke("unfiltered", {"op": "keyctl"}, session="o")).value
    assert got["keyctl"] == "ok"
    rep = await isolation(rt, "o")
    assert rep["seccomp"] == "off" and "seccomp" not in rep["missing"]


@needs_seccomp
@pytest.mark.asyncio
async def test_seccomp_can_be_required(rt: Runtime):
    await deploy(rt, "strict", "def handler(e, ctx):\n    return 1\n", isolation_required={"seccomp"})
    assert (await rt.invoke("strict", {}, session="s")).value == 1
    assert (await isolation(rt, "s"))["seccomp"] == "default"


@pytest.mark.asyncio
async def test_required_seccomp_is_refused_where_it_cannot_be_installed(rt: Runtime, monkeypatch):
    monkeypatch.setattr(seccomp, "_import_error", "pyseccomp/libseccomp unavailable: simulated")
    with pytest.raises(IsolationUnavailable) as ei:
        await deploy(rt, "strict", "def handler(e, ctx):\n    return 1\n", isolation_required={"seccomp"})
    assert "seccomp: pyseccomp/libseccomp unavailable: simulated" in str(ei.value)
    assert rt.functions() == []


def test_filter_program_is_built_by_libseccomp():
    if seccomp.unavailable_reason():
        pytest.skip(seccomp.unavailable_reason())
    default = seccomp.program()
    assert len(default) % 8 == 0 and len(default) > 8
    assert seccomp.program() is default  # built once (in the template, before any fork)
    assert len(seccomp.program(["keyctl"])) < len(default)


@pytest.mark.parametrize(
    ("kw", "field", "text"),
    [
        ({"seccomp": "strict"}, "seccomp", "must be one of default, off"),
        ({"seccomp": 1}, "seccomp", "expected a string"),
        ({"seccomp_allow": "ptrace"}, "seccomp_allow", "expected a set"),
        ({"seccomp_allow": ["read"]}, "seccomp_allow", "not a call the default filter blocks"),
        ({"seccomp": "off", "seccomp_allow": ["ptrace"]}, "seccomp_allow", "has no effect"),
        ({"seccomp": "off", "isolation_required": ["seccomp"]}, "seccomp", "isolation_required lists 'seccomp'"),
    ],
)
def test_spec_fields_are_validated(kw, field, text):
    with pytest.raises(InvalidSpec) as ei:
        FunctionSpec.from_code("f", "def handler(e, c):\n    return 1\n", **kw)
    assert ei.value.field == field
    assert text in str(ei.value)


def test_spec_round_trip():
    spec = FunctionSpec.from_code("f", "def handler(e, c):\n    return 1\n", seccomp_allow=["ptrace", "keyctl"])
    assert spec.seccomp == "default" and spec.seccomp_allow == frozenset({"ptrace", "keyctl"})
    data = spec.to_dict()
    assert data["seccomp"] == "default" and data["seccomp_allow"] == ["keyctl", "ptrace"]
    assert FunctionSpec.from_dict(data) == spec
    with pytest.raises(InvalidSpec) as ei:
        FunctionSpec.from_dict({**data, "seccomp_allow": "ptrace"})
    assert ei.value.field == "seccomp_allow"
    assert set(SECCOMP_BLOCKED) >= {
        "unshare", "clone", "clone3", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
        "ptrace", "mount", "kexec_load", "kexec_file_load", "init_module", "finit_module", "userfaultfd",
    }
