"""The contract every backend passes unchanged (parametrised by ``backend_name``).

start, invoke, stream, stop, affinity, isolation, limits, crash reporting,
resume.  Real sandboxes, real processes; nothing mocked.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from jupyter_functionai import (
    BadPayload,
    FunctionTimeout,
    InstanceCrashed,
    InvalidArgument,
    OutOfMemory,
    PayloadTooLarge,
    Runtime,
    SessionClosed,
    UserError,
)

from .conftest import MEMORY_HOG, deploy, pid_alive, wait_for

ECHO = """
import os
COUNTER = {"n": 0}
def handler(event, ctx):
    COUNTER["n"] += 1
    ctx.session.state["calls"] = ctx.session.state.get("calls", 0) + 1
    return {"event": event, "mem": COUNTER["n"], "state": ctx.session.state["calls"],
            "session": ctx.session_id, "instance": ctx.instance_id, "uid": os.getuid(),
            "workdir": ctx.workdir, "cwd": os.getcwd()}
"""


# -- start / invoke -----------------------------------------------------------


@pytest.mark.asyncio
async def test_invoke_returns_value_and_records_a_cold_start(rt: Runtime):
    await deploy(rt, "echo", ECHO)
    r = await rt.invoke("echo", {"x": 1}, session="s1")
    assert r.value["event"] == {"x": 1}
    assert r.value["session"] == "s1"
    assert r.value["instance"] == r.instance_id
    assert r.cold_start is not None and r.cold_start.path == "template-fork"
    assert r.cold_start.spawn_ms > 0 and r.cold_start.first_call_ms > 0
    r2 = await rt.invoke("echo", {"x": 2}, session="s1")
    assert r2.cold_start is None  # same live instance
    cs = await rt.coldstarts("echo")
    assert [c["instance_id"] for c in cs] == [r.instance_id]
    inv = await rt.invocations("echo")
    assert len(inv) == 2 and {i["outcome"] for i in inv} == {"ok"}
    assert all(i["bytes_in"] > 0 and i["bytes_out"] > 0 for i in inv)


@pytest.mark.asyncio
async def test_call_without_session_is_ephemeral(rt: Runtime):
    await deploy(rt, "echo", ECHO)
    a = await rt.invoke("echo", {"x": 1})
    b = await rt.invoke("echo", {"x": 2})
    assert a.session_id is None and a.instance_id != b.instance_id
    assert a.value["mem"] == 1 and b.value["mem"] == 1  # nothing carried over
    assert a.value["uid"] != b.value["uid"] or os.geteuid() != 0


@pytest.mark.asyncio
async def test_async_handler_and_progress(rt: Runtime):
    await deploy(
        rt,
        "aio",
        """
        import asyncio
        async def handler(event, ctx):
            for i in range(3):
                ctx.progress((i + 1) / 3, f"step {i}")
                await asyncio.sleep(0)
            return {"done": True}
        """,
    )
    seen = []
    r = await rt.invoke("aio", {}, session="p", on_progress=lambda f, m: seen.append((round(f, 2), m)))
    assert r.value == {"done": True}
    assert seen == [(0.33, "step 0"), (0.67, "step 1"), (1.0, "step 2")]


# -- stream ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_generator_handlers_stream(rt: Runtime):
    await deploy(
        rt,
        "gen",
        """
        def handler(event, ctx):
            for i in range(event["n"]):
                yield {"i": i}
        """,
    )
    items = [x async for x in rt.stream("gen", {"n": 5}, session="g")]
    assert items == [{"i": i} for i in range(5)]
    r = await rt.invoke("gen", {"n": 3}, session="g")
    assert r.streamed and r.value == [{"i": 0}, {"i": 1}, {"i": 2}]


@pytest.mark.asyncio
async def test_async_generator_streams_and_plain_handler_streams_once(rt: Runtime):
    await deploy(
        rt,
        "agen",
        """
        async def handler(event, ctx):
            for w in event["words"]:
                yield w.upper()
        """,
    )
    assert [x async for x in rt.stream("agen", {"words": ["a", "b"]})] == ["A", "B"]
    await deploy(rt, "echo", ECHO)
    out = [x async for x in rt.stream("echo", 7)]
    assert len(out) == 1 and out[0]["event"] == 7


# -- stop ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_close_session_stops_its_instance_and_deletes_its_state(rt: Runtime):
    await deploy(rt, "echo", ECHO)
    r = await rt.invoke("echo", {}, session="bye")
    pid = rt.live_instances()[0].pid
    assert pid is not None and pid_alive(pid)
    workdir = r.value["workdir"]
    assert os.path.isdir(workdir)
    await rt.close_session("bye")
    await wait_for(lambda: not pid_alive(pid), what="instance process to exit")
    assert not os.path.exists(workdir)
    with pytest.raises(SessionClosed):
        await rt.invoke("echo", {}, session="bye")
    desc = await rt.describe_session("bye")
    assert desc["status"] == "closed" and desc["state"] == {}


# -- affinity ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_affinity_same_session_same_instance(rt: Runtime):
    await deploy(rt, "echo", ECHO)
    a = [await rt.invoke("echo", i, session="A") for i in range(3)]
    b = [await rt.invoke("echo", i, session="B") for i in range(2)]
    assert len({r.instance_id for r in a}) == 1
    assert len({r.instance_id for r in b}) == 1
    assert a[0].instance_id != b[0].instance_id
    assert [r.value["mem"] for r in a] == [1, 2, 3]  # in-memory state of one live process
    assert [r.value["mem"] for r in b] == [1, 2]  # never shared with A
    assert a[0].value["uid"] != b[0].value["uid"] or os.geteuid() != 0


@pytest.mark.asyncio
async def test_calls_on_one_session_are_serialized(rt: Runtime):
    await deploy(
        rt,
        "serial",
        """
        import time
        LIVE = {"now": 0, "max": 0}
        def handler(event, ctx):
            LIVE["now"] += 1
            LIVE["max"] = max(LIVE["max"], LIVE["now"])
            time.sleep(0.02)
            LIVE["now"] -= 1
            return LIVE["max"]
        """,
    )
    results = await asyncio.gather(*(rt.invoke("serial", i, session="one") for i in range(6)))
    assert max(r.value for r in results) == 1
    assert len({r.instance_id for r in results}) == 1


@pytest.mark.asyncio
async def test_concurrency_bound_is_respected(rt: Runtime):
    await deploy(
        rt,
        "par",
        """
        import threading, time
        LOCK = threading.Lock()
        LIVE = {"now": 0, "max": 0}
        def handler(event, ctx):
            with LOCK:
                LIVE["now"] += 1
                LIVE["max"] = max(LIVE["max"], LIVE["now"])
            time.sleep(0.1)
            with LOCK:
                LIVE["now"] -= 1
            return LIVE["max"]
        """,
        concurrency=3,
    )
    results = await asyncio.gather(*(rt.invoke("par", i, session="many") for i in range(9)))
    peak = max(r.value for r in results)
    assert 1 < peak <= 3


@pytest.mark.asyncio
async def test_bad_session_ids_are_refused(rt: Runtime):
    await deploy(rt, "echo", ECHO)
    for bad in ["", "../etc", "a b", "x" * 200, "-lead", 5]:
        with pytest.raises(InvalidArgument) as ei:
            await rt.invoke("echo", {}, session=bad)  # type: ignore[arg-type]
        assert "session id" in str(ei.value)
    assert await rt.sessions() == []


# -- limits -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_kills_instance_and_session_resumes(rt: Runtime):
    await deploy(
        rt,
        "slow",
        """
        def handler(event, ctx):
            if event == "loop":
                while True:
                    pass
            ctx.session.state["kept"] = event
            return ctx.session.state
        """,
        timeout=0.5,
    )
    await rt.invoke("slow", "before", session="t")
    pid = rt.live_instances()[0].pid
    with pytest.raises(FunctionTimeout):
        await rt.invoke("slow", "loop", session="t")
    await wait_for(lambda: not pid_alive(pid), what="timed-out instance to die")
    r = await rt.invoke("slow", "after", session="t")
    assert r.cold_start is not None  # resumed in a new instance
    inv = await rt.invocations("slow")
    assert "timeout" in [i["error_kind"] for i in inv]


@pytest.mark.asyncio
async def test_memory_limit_reports_out_of_memory(rt: Runtime):
    await deploy(rt, "hog", MEMORY_HOG, memory=64)
    with pytest.raises(OutOfMemory) as ei:
        await rt.invoke("hog", "hog", session="m")
    assert "memory" in str(ei.value)
    assert (await rt.invoke("hog", "fine", session="m")).value == "ok"


@pytest.mark.asyncio
async def test_fork_bomb_stays_inside(rt: Runtime):
    await deploy(
        rt,
        "bomb",
        """
        import os, time
        def handler(event, ctx):
            n = 0
            try:
                while n < 5000:
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(30)
                        os._exit(0)
                    n += 1
            except OSError as exc:
                return {"forked": n, "error": type(exc).__name__}
            return {"forked": n, "error": None}
        """,
    )
    await deploy(rt, "echo", ECHO)
    r = await rt.invoke("bomb", {}, session="bomb")
    assert r.value["error"] is not None and r.value["forked"] < 300
    assert (await rt.invoke("echo", 1, session="neighbour")).value["event"] == 1
    await rt.close_session("bomb")


@pytest.mark.asyncio
async def test_output_flood_is_capped(rt: Runtime):
    await deploy(
        rt,
        "loud",
        """
        import sys
        def handler(event, ctx):
            line = "x" * 1023 + "\\n"
            for _ in range(100 * 1024):  # 100 MiB
                sys.stdout.write(line)
            ctx.log.info("done")
            return "quiet now"
        """,
    )
    r = await rt.invoke("loud", {}, session="loud")
    assert r.value == "quiet now"
    assert r.logs_dropped >= 99 * 1024 * 1024
    assert len(r.logs) < 2 * 1024 * 1024
    assert "bytes of output dropped" in r.logs


@pytest.mark.asyncio
async def test_payload_limits_and_bad_payloads(rt: Runtime):
    await deploy(
        rt,
        "big",
        """
        def handler(event, ctx):
            if event == "huge":
                return "y" * (8 * 1024 * 1024)
            if event == "weird":
                return {1, 2}
            return len(str(event))
        """,
        limits={"max_payload_bytes": 1024 * 1024},
    )
    with pytest.raises(PayloadTooLarge):
        await rt.invoke("big", "z" * (2 * 1024 * 1024), session="p")
    with pytest.raises(BadPayload):
        await rt.invoke("big", {"s": {1, 2}}, session="p")
    with pytest.raises(PayloadTooLarge):
        await rt.invoke("big", "huge", session="p")
    with pytest.raises(BadPayload):
        await rt.invoke("big", "weird", session="p")
    assert (await rt.invoke("big", "ok", session="p")).value == 2


# -- crash reporting -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_user_exception_is_structured(rt: Runtime):
    await deploy(
        rt,
        "boom",
        """
        def helper(x):
            return 1 / x

        def handler(event, ctx):
            print("about to fail")
            return helper(event)
        """,
    )
    with pytest.raises(UserError) as ei:
        await rt.invoke("boom", 0, session="b")
    err = ei.value
    assert err.details["type"] == "ZeroDivisionError"
    assert "division by zero" in err.message
    tb = err.details["traceback"]
    assert "return 1 / x" in tb and "return helper(event)" in tb
    assert "jupyter_functionai" not in tb
    assert "about to fail" in err.details["logs"]
    assert (await rt.invoke("boom", 2, session="b")).value == 0.5  # same instance survives


@pytest.mark.parametrize("how, expect", [("exit", "exited with code 3"), ("segv", "SIGSEGV")])
@pytest.mark.asyncio
async def test_crash_is_reported_and_session_resumes(rt: Runtime, how, expect):
    await deploy(
        rt,
        "crash",
        """
        import ctypes, os
        def handler(event, ctx):
            if event == "exit":
                os._exit(3)
            if event == "segv":
                ctypes.string_at(0)  # a real invalid memory access
            ctx.session.state["v"] = event
            return ctx.session.state
        """,
    )
    await rt.invoke("crash", "keep", session="c")
    with pytest.raises(InstanceCrashed) as ei:
        await rt.invoke("crash", how, session="c")
    assert expect in str(ei.value)
    r = await rt.invoke("crash", "again", session="c")
    assert r.cold_start is not None


# -- resume -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_idle_instance_is_stopped_and_session_resumes_with_state_and_files(rt: Runtime):
    await deploy(
        rt,
        "notes",
        """
        import os
        def handler(event, ctx):
            path = os.path.join(ctx.workdir, "notes.txt")
            if event.get("add"):
                with open(path, "a") as f:
                    f.write(event["add"] + "\\n")
                ctx.session.state.setdefault("added", []).append(event["add"])
            with open(path) as f:
                return {"file": f.read().split(), "state": ctx.session.state, "pid_ns_pid": os.getpid()}
        """,
        idle_ttl=0.3,
    )
    first = await rt.invoke("notes", {"add": "one"}, session="n")
    inst = rt.live_instances()[0]
    await wait_for(lambda: not inst.alive, what="idle instance to stop")
    desc = await rt.describe_session("n")
    assert desc["status"] == "paused" and desc["instance"] is None
    second = await rt.invoke("notes", {"add": "two"}, session="n")
    assert second.instance_id != first.instance_id and second.cold_start is not None
    assert second.value["file"] == ["one", "two"]
    assert second.value["state"] == {"added": ["one", "two"]}


@pytest.mark.asyncio
async def test_session_survives_runtime_restart(tmp_path, backend_name):
    state = tmp_path / "state"
    async with Runtime.open(state, backend=backend_name) as rt1:
        await deploy(rt1, "echo", ECHO)
        await rt1.invoke("echo", {}, session="keep")
        await rt1.invoke("echo", {}, session="keep")
    async with Runtime.open(state, backend=backend_name) as rt2:
        r = await rt2.invoke("echo", {}, session="keep")
        assert r.value["state"] == 3 and r.value["mem"] == 1
        assert r.cold_start is not None
        assert (await rt2.describe_session("keep"))["calls"] == 3


@pytest.mark.asyncio
async def test_session_ends_at_max_lifetime(rt: Runtime):
    await deploy(rt, "echo", ECHO, max_lifetime=0.5, idle_ttl=0.5)
    await rt.invoke("echo", {}, session="short")
    await wait_for(lambda: not rt.live_instances(), what="session to expire")
    with pytest.raises(SessionClosed) as ei:
        await rt.invoke("echo", {}, session="short")
    assert "expired" in str(ei.value)


# -- warm pool ------------------------------------------------------------------------------------

POOLED = """
import os
PRIMED = {"n": 0}
def warm():
    PRIMED["n"] += 1
def handler(event, ctx):
    ctx.session.state["seen"] = ctx.session.state.get("seen", 0) + 1
    return {"primed": PRIMED["n"], "uid": os.getuid(), "session": ctx.session_id,
            "env_session": os.environ.get("FUNCTIONAI_SESSION_ID"), "seen": ctx.session.state["seen"],
            "workdir": ctx.workdir, "cwd": os.getcwd()}
"""


@pytest.mark.asyncio
async def test_new_sessions_are_served_from_the_warm_pool(rt: Runtime):
    await deploy(rt, "pooled", POOLED, min_instances=2, warmup="warm")
    await rt.pool.wait_full("pooled")
    ready = [i for i in rt.pool._slots["pooled"].ready]  # the pre-forked instances
    assert len(ready) == 2 and all(i.alive for i in ready)
    a = await rt.invoke("pooled", {}, session="pa")
    b = await rt.invoke("pooled", {}, session="pb")
    for r, sid in ((a, "pa"), (b, "pb")):
        assert r.cold_start is not None and r.cold_start.path == "warm-pool"
        assert r.value["session"] == sid and r.value["env_session"] == sid
        assert r.value["primed"] == 2  # the warmup ran in the template, then once more in this instance
        assert r.value["cwd"] == r.value["workdir"]
    assert {a.instance_id, b.instance_id} == {i.id for i in ready}
    assert a.value["uid"] != b.value["uid"] or os.geteuid() != 0
    # the session keeps its instance and its state; the pool refills behind it
    again = await rt.invoke("pooled", {}, session="pa")
    assert again.instance_id == a.instance_id and again.value["seen"] == 2
    await rt.pool.wait_full("pooled")
    assert rt.pool.sizes()["pooled"]["ready"] == 2
    # a pooled session resumes like any other, with its state and directory
    await rt.close_session("pb")
    assert not os.path.exists(b.value["workdir"])
    desc = await rt.describe_session("pa")
    assert desc["workdir"] == a.value["workdir"] and desc["state"] == {"seen": 2}


@pytest.mark.asyncio
async def test_pooled_instance_that_dies_is_replaced(rt: Runtime):
    await deploy(rt, "pooled", POOLED, min_instances=1)
    await rt.pool.wait_full("pooled")
    victim = rt.pool._slots["pooled"].ready[0]
    os.kill(victim.pid, 9)
    await wait_for(lambda: not victim.alive, what="pooled instance to be seen dead")
    r = await rt.invoke("pooled", {}, session="after")
    assert r.value["session"] == "after" and r.instance_id != victim.id
    await rt.pool.wait_full("pooled")
    assert rt.pool._slots["pooled"].ready[0].alive


@pytest.mark.asyncio
async def test_failing_warmup_refuses_the_deploy(rt: Runtime):
    with pytest.raises(UserError) as ei:
        await deploy(rt, "badwarm", "def warm():\n    raise RuntimeError('no')\ndef handler(e, ctx):\n    return 'served'\n", min_instances=1, warmup="warm")
    assert "RuntimeError: no" in str(ei.value) and "raise RuntimeError('no')" in ei.value.details["traceback"]
    with pytest.raises(UserError) as ei:
        await deploy(rt, "nowarm", "def handler(e, ctx):\n    return 1\n", warmup="missing")
    assert "'missing'" in str(ei.value)
    assert rt.functions() == []


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.asyncio
async def test_open_session_starts_the_sandbox_before_any_call(rt: Runtime, pooled: bool):
    await deploy(rt, "pooled", POOLED, min_instances=1 if pooled else 0)
    if pooled:
        await rt.pool.wait_full("pooled")
    desc = await rt.open_session("pooled", "early")
    inst = desc["instance"]
    assert desc["status"] == "live" and inst is not None and pid_alive(inst["pid"])
    assert inst["path"] == ("warm-pool" if pooled else "template-fork")
    assert desc["calls"] == 0
    r = await rt.invoke("pooled", {}, session="early")
    assert r.instance_id == inst["id"] and r.value["session"] == "early" and r.value["env_session"] == "early"
    assert r.cold_start is not None and r.cold_start.path == inst["path"]  # completed by the first call
    generated = await rt.open_session("pooled")
    assert generated["id"].startswith("s-") and generated["id"] != "early"
    with pytest.raises(InvalidArgument):
        await rt.open_session("pooled", "bad id")


@pytest.mark.asyncio
async def test_sys_exit_in_a_handler_is_a_user_error_and_the_instance_survives(rt: Runtime):
    await deploy(rt, "quit", "import sys\ndef handler(event, ctx):\n    if event == 'exit':\n        sys.exit(3)\n    return 'alive'\n")
    first = await rt.invoke("quit", "hello", session="q")
    with pytest.raises(UserError) as ei:
        await rt.invoke("quit", "exit", session="q")
    assert ei.value.details["type"] == "SystemExit"
    again = await rt.invoke("quit", "hello", session="q")
    assert again.value == "alive" and again.instance_id == first.instance_id
