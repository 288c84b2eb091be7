"""Runtime-level behaviour: versions, rollback, delete, recovery after crashes,
the rlimits fallback, and the cgroup v2 layout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from jupyter_functionai import InvalidSpec, NotFound, OutOfMemory, Runtime
from jupyter_functionai.backends.process import ProcessBackend
from jupyter_functionai.sandbox.isolation import CgroupManager

from .conftest import MEMORY_HOG, deploy, pid_alive, wait_for

VERSIONED = "VERSION = {v}\ndef handler(event, ctx):\n    return VERSION\n"


@pytest.mark.asyncio
async def test_versions_rollback_and_delete(rt: Runtime):
    await deploy(rt, "v", VERSIONED.format(v=1))
    assert (await rt.invoke("v", {}, session="old")).value == 1
    await deploy(rt, "v", VERSIONED.format(v=2))
    assert [r["version"] for r in rt.versions("v")] == [1, 2]
    assert (await rt.invoke("v", {}, session="new")).value == 2
    assert (await rt.invoke("v", {}, session="old")).value == 1  # a live session keeps its instance
    assert (await rt.invoke("v", {})).value == 2
    await rt.rollback("v", 1)
    assert (await rt.invoke("v", {}, session="newer")).value == 1
    assert [r["active"] for r in rt.versions("v")] == [True, False]
    with pytest.raises(NotFound):
        await rt.rollback("v", 9)
    await rt.delete("v")
    with pytest.raises(NotFound):
        await rt.invoke("v", {}, session="new")
    assert rt.functions() == []
    assert rt.live_instances() == []


@pytest.mark.asyncio
async def test_unknown_function_and_bad_spec(rt: Runtime):
    with pytest.raises(NotFound) as ei:
        await rt.invoke("nope", {})
    assert "nope" in str(ei.value)
    with pytest.raises(InvalidSpec) as ei2:
        await rt.deploy({"name": "bad name!", "source": {"kind": "code", "code": "x=1"}})
    assert ei2.value.field == "name"
    with pytest.raises(InvalidSpec) as ei3:
        await rt.deploy({"name": "ok", "source": {"kind": "code", "code": "def handler(e, c):\n  return 1"}, "timeout_s": -1})
    assert ei3.value.field == "timeout_s" and "-1" in str(ei3.value)


@pytest.mark.asyncio
async def test_instance_killed_behind_the_runtimes_back_is_replaced(rt: Runtime):
    await deploy(
        rt,
        "st",
        "def handler(event, ctx):\n    ctx.session.state['n'] = ctx.session.state.get('n', 0) + 1\n    return ctx.session.state['n']\n",
    )
    assert (await rt.invoke("st", {}, session="k")).value == 1
    inst = rt.live_instances()[0]
    os.kill(inst.pid, signal.SIGKILL)
    await wait_for(lambda: not inst.alive, what="the runtime to notice the dead instance")
    r = await rt.invoke("st", {}, session="k")
    assert r.value == 2 and r.instance_id != inst.id and r.cold_start is not None
    desc = await rt.describe_session("k")
    assert desc["calls"] == 2


@pytest.mark.asyncio
async def test_rlimits_are_the_fallback_without_cgroups(tmp_path):
    backend = ProcessBackend(str(tmp_path / "s"), cgroups=False)
    async with Runtime.open(tmp_path / "s", backend=backend) as rt:
        await deploy(rt, "hog", MEMORY_HOG, memory=256)
        with pytest.raises(OutOfMemory):
            await rt.invoke("hog", "hog", session="h")
        assert (await rt.invoke("hog", "fine", session="h")).value == "ok"
        iso = (await rt.describe_session("h"))["instance"]["isolation"]
        assert iso["cgroup"] is None and "as" in iso["rlimits"]
        assert "cgroups disabled" in iso["missing"]["cgroup"]


RUNNER = """
import asyncio, os, sys
from jupyter_functionai import FunctionSpec, Runtime
CODE = "def handler(event, ctx):\\n    ctx.session.state['seen'] = ctx.session.state.get('seen', []) + [event]\\n    return ctx.session.state['seen']\\n"
async def main():
    rt = await Runtime.open(sys.argv[1])
    await rt.deploy(FunctionSpec.from_code("mem", CODE))
    await rt.invoke("mem", "a", session="durable")
    await rt.invoke("mem", "b", session="durable")  # answered: so its state is committed (no flush needed)
    print(os.getpid(), rt.live_instances()[0].pid, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_runtime_killed_with_sigkill_recovers_sessions(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(state)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "runner died"
        _runtime_pid, instance_pid = map(int, line.split())
        proc.kill()
        proc.wait(timeout=10)
        # the runtime's death takes its sandboxes with it (the template sees its socket close)
        await wait_for(lambda: not pid_alive(instance_pid), what="orphaned instance to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    async with Runtime.open(state) as rt:
        desc = await rt.describe_session("durable")
        assert desc["status"] == "paused" and desc["state"] == {"seen": ["a", "b"]}
        insts = rt.store.list_instances()
        assert insts and all(i["status"] != "running" for i in insts)
        r = await rt.invoke("mem", "c", session="durable")
        assert r.value == ["a", "b", "c"]


def test_cgroup_v2_layout(tmp_path):
    """cgroup v2 cannot exist on this (v1) machine: check the files the manager
    writes against a directory laid out like a v2 hierarchy."""
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "functionai").mkdir()
    (root / "functionai" / "cgroup.subtree_control").write_text("")
    if os.geteuid() != 0:
        pytest.skip("the manager only uses cgroups as root")
    mgr = CgroupManager(root=str(root))
    assert mgr.version == 2
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    d = root / "functionai" / "i-1"
    d.mkdir()  # a real cgroupfs creates the interface files on mkdir; emulate that
    for f in ("memory.max", "memory.swap.max", "cpu.max", "pids.max", "cgroup.procs", "memory.events"):
        (d / f).write_text("")
    procs = mgr.create("i-1", cpu=0.5, memory_mb=128, pids=64)
    assert procs == [str(d / "cgroup.procs")]
    assert (d / "memory.max").read_text() == str(128 * 1024 * 1024)
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "pids.max").read_text() == "64"
    assert not mgr.oom_killed("i-1")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert mgr.oom_killed("i-1")


def test_isolation_report_is_json(tmp_path):
    from jupyter_functionai.sandbox.isolation import IsolationReport

    rep = IsolationReport(namespaces={"pid": True}, cgroup="v1", uid=200001)
    assert json.loads(json.dumps(rep.to_dict()))["uid"] == 200001
    assert rep.achieved() == {"pid", "cgroup", "uid"}


def test_public_api_is_curated():
    import jupyter_functionai as fai

    assert "Runtime" in fai.__all__ and "FunctionSpec" in fai.__all__
    assert all(hasattr(fai, n) for n in fai.__all__)


def test_every_error_kind_round_trips_through_its_dict():
    from jupyter_functionai import errors

    for kind, klass in errors._BY_KIND.items():
        err = errors.FunctionAIError.from_dict({"kind": kind, "message": "m", "extra": 1})
        assert type(err) is klass and err.message == "m" and err.details == {"extra": 1}
        assert err.to_dict() == {"kind": kind, "message": "m", "extra": 1}
    unknown = errors.FunctionAIError.from_dict({"kind": "weird", "message": "x"})
    assert type(unknown) is errors.FunctionAIError


@pytest.mark.asyncio
async def test_closing_the_runtime_leaves_no_cgroups(tmp_path):
    async with Runtime.open(tmp_path / "s") as rt:
        await deploy(rt, "echo", "def handler(e, ctx):\n    return 1\n", min_instances=2)
        for i in range(3):
            await rt.invoke("echo", {}, session=f"c{i}")
        await rt.pool.wait_full("echo")
        cg = rt.backend.cgroups  # type: ignore[attr-defined]
        ids = [i.id for i in rt.live_instances()] + [i.id for i in rt.pool._slots["echo"].ready]
        assert len(ids) == 5
    if not cg.version:
        pytest.skip(f"no writable cgroups here ({cg.reason}); nothing to leak")
    left = [
        p
        for iid in ids
        for p in ([f"{cg.root}/{cg.prefix}/{iid}"] if cg.version == 2 else [f"{cg.root}/{c}/{cg.prefix}/{iid}" for c in ("memory", "cpu", "pids")])
        if os.path.exists(p)
    ]
    assert left == []


#: A traced call's points, each caused by the one before it (the runtime's
#: "written" is left out: the instance may read the frame before the runtime's
#: write returns).
CAUSAL = ("start", "session", "claimed", "recorded", "encoded", "w_received", "w_decoded", "w_attached", "w_handler_start", "w_handler_end", "w_sending", "decoded", "resumed", "stored", "finished")


async def test_a_traced_call_reports_each_step_in_causal_order(rt: Runtime):
    """``invoke(..., trace={})`` (what ``coldstart.py --profile`` adds up):
    every step of a warm-pool hit, a fork and a call on a live instance, on
    one clock across the runtime and the sandbox; a call not traced carries
    no trace, and tracing changes no answer."""
    await deploy(rt, "pooled", "def handler(event, ctx):\n    ctx.session.state['n'] = event\n    return event * 2\n", min_instances=1)
    await deploy(rt, "forked", "def handler(event, ctx):\n    return event * 3\n")
    await rt.pool.wait_full("pooled")
    cases = [("pooled", "hit", "warm-pool"), ("forked", "fork", "template-fork"), ("forked", "fork", None)]
    for fn, sid, path in cases:
        trace: dict[str, float] = {}
        r = await rt.invoke(fn, 7, session=sid, trace=trace)
        assert r.value == 7 * (2 if fn == "pooled" else 3)
        assert (r.cold_start.path if r.cold_start else None) == path
        missing = [p for p in CAUSAL if p not in trace]
        assert not missing, (fn, path, missing)
        times = [trace[p] for p in CAUSAL]
        assert times == sorted(times), (fn, path, sorted(CAUSAL, key=trace.__getitem__))
        assert trace["encoded"] <= trace["written"]
    untraced = await rt.invoke("forked", 1, session="fork")
    assert untraced.value == 3
