"""Durable tasks on a real Runtime: real sandboxes, a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai import Runtime
from jupyter_functionai.errors import (
    Conflict,
    InvalidArgument,
    InvalidSpec,
    NotFound,
    PayloadTooLarge,
)

from .conftest import deploy, wait_for

pytestmark = pytest.mark.asyncio

WORK = """
import os, time

def handler(event, ctx):
    kind = event.get("kind")
    if kind == "sleep":
        time.sleep(event["s"])
    if kind == "fail":
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    if kind == "flaky" and ctx.attempt < event["until"]:
        raise RuntimeError(f"flaky attempt {ctx.attempt}")
    if kind == "steps":
        done = (ctx.resume_from or {}).get("done", 0)
        resumed = done
        for i in range(done, event["n"]):
            ctx.checkpoint({"done": i + 1})
            ctx.progress((i + 1) / event["n"], f"step {i + 1}")
            if i + 1 == event.get("die_at") and ctx.attempt == 1:
                os._exit(3)
            if i + 1 == event.get("hang_at") and ctx.attempt == 1:
                time.sleep(3600)
        return {"resumed_from": resumed, "attempt": ctx.attempt, "task": ctx.task_id}
    if kind == "hog":
        blocks = []
        while True:
            blocks.append(bytearray(16 * 1024 * 1024))
    ctx.session.state["n"] = ctx.session.state.get("n", 0) + 1
    return {"echo": event.get("x"), "attempt": ctx.attempt, "task": ctx.task_id, "n": ctx.session.state["n"]}
"""

FAST_RETRY = {"backoff_s": 0.01, "max_backoff_s": 0.05, "jitter": 0.0}


async def finished(rt: Runtime, task_id: str, timeout: float = 60) -> dict[str, Any]:
    row = await rt.tasks.wait(task_id, timeout)
    assert row["state"] in ("succeeded", "failed", "cancelled", "timed_out"), row
    return row


async def test_submit_runs_and_records_the_outcome(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", tasks=FAST_RETRY)
    t = await rt.tasks.submit("work", {"x": 7})
    assert t["state"] == "queued" and t["id"].startswith("t-") and t["attempts"] == 0
    done = await finished(rt, t["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 1 and done["progress"] == 1.0
    assert done["result"] == {"echo": 7, "attempt": 1, "task": t["id"], "n": 1}
    assert [a["outcome"] for a in done["attempt_history"]] == ["succeeded"]
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    listed = await rt.tasks.list_tasks(function="work", state="succeeded")
    assert [x["id"] for x in listed] == [t["id"]]


async def test_retries_with_backoff_then_succeeds_or_exhausts(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", tasks=FAST_RETRY)
    flaky = await rt.tasks.submit("work", {"kind": "flaky", "until": 3}, max_attempts=3)
    doomed = await rt.tasks.submit("work", {"kind": "fail"}, retries=1)
    ok, bad = await finished(rt, flaky["id"]), await finished(rt, doomed["id"])
    assert ok["state"] == "succeeded" and ok["attempts"] == 3 and ok["result"]["attempt"] == 3
    assert [a["outcome"] for a in ok["attempt_history"]] == ["failed", "failed", "succeeded"]
    assert bad["state"] == "failed" and bad["attempts"] == 2
    assert bad["error"]["kind"] == "user_exception" and "attempt 2 failed" in bad["error"]["message"]


async def test_error_kinds_not_in_retry_on_fail_at_once(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", tasks={**FAST_RETRY, "retry_on": ["timeout"]})
    t = await rt.tasks.submit("work", {"kind": "fail"}, retries=5)
    done = await finished(rt, t["id"])
    assert done["state"] == "failed" and done["attempts"] == 1


async def test_checkpoint_survives_a_crash_and_the_retry_resumes(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", tasks=FAST_RETRY)
    t = await rt.tasks.submit("work", {"kind": "steps", "n": 5, "die_at": 3})
    done = await finished(rt, t["id"])
    assert done["state"] == "succeeded", done
    assert done["result"] == {"resumed_from": 3, "attempt": 2, "task": t["id"]}
    assert [a["outcome"] for a in done["attempt_history"]] == ["failed", "succeeded"]
    assert done["attempt_history"][0]["error"]["kind"] == "instance_crashed"
    assert done["checkpoint"] == {"done": 5}


async def test_timeout_keeps_the_checkpoint_and_a_retry_continues(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", tasks=FAST_RETRY)
    once = await rt.tasks.submit("work", {"kind": "steps", "n": 4, "hang_at": 2}, timeout=2, retries=0)
    done = await finished(rt, once["id"])
    assert done["state"] == "timed_out" and done["error"]["kind"] == "timeout"
    assert done["checkpoint"] == {"done": 2} and done["progress"] == 0.5
    # a manual retry (resume) of the timed-out task goes on from its checkpoint
    resumed = await rt.tasks.retry(once["id"])
    assert resumed["state"] == "queued" and resumed["max_attempts"] == 2
    done = await finished(rt, once["id"])
    assert done["state"] == "succeeded" and done["result"]["resumed_from"] == 2 and done["attempts"] == 2
    assert [a["outcome"] for a in done["attempt_history"]] == ["timed_out", "succeeded"]
    with pytest.raises(Conflict, match="only a failed, cancelled or timed-out task"):
        await rt.tasks.retry(once["id"])
    again = await rt.tasks.submit("work", {"kind": "steps", "n": 4, "hang_at": 2}, timeout=2, retries=1)
    done = await finished(rt, again["id"])
    assert done["state"] == "succeeded" and done["result"]["resumed_from"] == 2 and done["attempts"] == 2


async def test_a_leaking_task_is_out_of_memory_and_the_server_lives(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="128Mi", tasks=FAST_RETRY)
    t = await rt.tasks.submit("work", {"kind": "hog"}, retries=0)
    done = await finished(rt, t["id"])
    assert done["state"] == "failed" and done["error"]["kind"] == "out_of_memory"
    after = await finished(rt, (await rt.tasks.submit("work", {"x": 1}))["id"])
    assert after["state"] == "succeeded"


async def test_cancel_queued_and_running(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", tasks={**FAST_RETRY, "concurrency": 1})
    running = await rt.tasks.submit("work", {"kind": "sleep", "s": 60})
    queued = await rt.tasks.submit("work", {"x": 2})

    async def is_running() -> bool:
        return (await rt.tasks.get(running["id"]))["state"] == "running"

    await wait_for(is_running, 30, "the first task to run")
    assert (await rt.tasks.get(queued["id"]))["state"] == "queued"  # FIFO, concurrency 1
    c = await rt.tasks.cancel(queued["id"])
    assert c["state"] == "cancelled" and c["attempts"] == 0
    c = await rt.tasks.cancel(running["id"])
    assert c["state"] == "cancelled" and c["attempts"] == 1
    assert [a["outcome"] for a in c["attempt_history"]] == ["cancelled"]
    # the running attempt's sandbox is gone
    await wait_for(lambda: not rt.live_instances(), 10, "the cancelled task's instance to stop")
    with pytest.raises(Conflict, match="already cancelled"):
        await rt.tasks.cancel(running["id"])
    after = await finished(rt, (await rt.tasks.submit("work", {"x": 3}))["id"])
    assert after["state"] == "succeeded"
    assert (await rt.tasks.get(running["id"]))["state"] == "cancelled"  # never overwritten


async def test_a_cancellation_lost_on_the_way_does_not_hold_the_slot(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11's asyncio.wait_for drops a cancellation that comes as its
    inner future completes (an instance start awaits a few). Here the first
    cancellation of the attempt's call is dropped the same way; the cancelled
    attempt must still end, free its concurrency slot and its sandbox, so the
    next task runs now, not after the 60 s call (seen: it stayed queued)."""
    await deploy(rt, "work", WORK, memory="256Mi", tasks={**FAST_RETRY, "concurrency": 1})
    real = rt.invoke
    dropped = 0

    async def drops_one_cancel(*args: Any, **kw: Any) -> Any:
        nonlocal dropped
        call = asyncio.ensure_future(real(*args, **kw))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            dropped += 1
            return await call  # carries on, as if the cancellation had never come

    monkeypatch.setattr(rt, "invoke", drops_one_cancel)
    running = await rt.tasks.submit("work", {"kind": "sleep", "s": 60})

    async def is_running() -> bool:
        return (await rt.tasks.get(running["id"]))["state"] == "running"

    await wait_for(is_running, 30, "the task to run")
    c = await rt.tasks.cancel(running["id"])
    assert c["state"] == "cancelled"
    after = await finished(rt, (await rt.tasks.submit("work", {"x": 3}))["id"], timeout=30)
    assert after["state"] == "succeeded" and dropped == 1
    assert (await rt.tasks.get(running["id"]))["state"] == "cancelled"


async def test_fifo_and_concurrency_limit(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", tasks={**FAST_RETRY, "concurrency": 2})
    ids = [(await rt.tasks.submit("work", {"kind": "sleep", "s": 0.3}))["id"] for _ in range(6)]
    peak = 0

    async def all_done() -> bool:
        nonlocal peak
        rows = await rt.tasks.list_tasks(function="work", limit=100)
        peak = max(peak, sum(r["state"] == "running" for r in rows))
        return all(r["state"] == "succeeded" for r in rows)

    await wait_for(all_done, 60, "all tasks")
    assert peak <= 2
    starts = [(await rt.tasks.get(i))["started_at"] for i in ids]
    assert starts == sorted(starts)  # in submit order


async def test_session_bound_tasks_run_in_that_session_in_order(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", tasks={**FAST_RETRY, "concurrency": 4})
    ids = [(await rt.tasks.submit("work", {"x": i}, session="alice"))["id"] for i in range(4)]
    rows = [await finished(rt, i) for i in ids]
    assert [r["result"]["n"] for r in rows] == [1, 2, 3, 4]  # one session's state, in order
    assert (await rt.describe_session("alice"))["calls"] == 4


async def test_destinations_on_success_and_failure(rt: Runtime) -> None:
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        await deploy(rt, "sink", "def handler(event, ctx):\n    return event['state']\n", memory="128Mi")
        url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        await deploy(rt, "work", WORK, memory="256Mi", tasks={**FAST_RETRY, "on_success": "sink", "on_failure": url})
        ok = await finished(rt, (await rt.tasks.submit("work", {"x": 1}))["id"])
        bad = await finished(rt, (await rt.tasks.submit("work", {"kind": "fail"}, retries=0))["id"])

        async def sink_ran() -> bool:
            return any(r["state"] == "succeeded" for r in await rt.tasks.list_tasks(function="sink"))

        await wait_for(sink_ran, 30, "the on_success destination task")
        sink = (await rt.tasks.list_tasks(function="sink"))[0]
        full = await rt.tasks.get(sink["id"])
        assert full["event"]["task_id"] == ok["id"] and full["event"]["result"]["echo"] == 1 and full["result"] == "succeeded"
        await wait_for(lambda: bool(got), 30, "the on_failure webhook")
        assert got[0]["task_id"] == bad["id"] and got[0]["state"] == "failed" and got[0]["error"]["kind"] == "user_exception"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_bad_input_is_refused_clearly(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi")
    with pytest.raises(NotFound):
        await rt.tasks.submit("nope", {})
    with pytest.raises(InvalidArgument, match="timeout"):
        await rt.tasks.submit("work", {}, timeout=-1)
    with pytest.raises(InvalidArgument, match="timeout"):
        await rt.tasks.submit("work", {}, timeout=86400 * 2)
    with pytest.raises(InvalidArgument, match="retries"):
        await rt.tasks.submit("work", {}, retries=-2)
    with pytest.raises(InvalidArgument, match="JSON"):
        await rt.tasks.submit("work", {"x": object()})
    with pytest.raises(PayloadTooLarge):
        await rt.tasks.submit("work", "x" * (7 << 20))
    with pytest.raises(NotFound, match="task ids look like"):
        await rt.tasks.get("../etc")
    with pytest.raises(InvalidSpec, match="retry_on"):
        await deploy(rt, "bad", WORK, tasks={"retry_on": ["sometimes"]})
    with pytest.raises(InvalidSpec, match="max_backoff_s"):
        await deploy(rt, "bad", WORK, tasks={"backoff_s": 10, "max_backoff_s": 1})
    with pytest.raises(InvalidSpec, match="on_success"):
        await deploy(rt, "bad", WORK, tasks={"on_success": "not a name!"})
    assert await rt.tasks.list_tasks() == []  # nothing was queued by bad input


async def test_restart_reclaims_running_tasks_after_their_lease(tmp_path: Path) -> None:
    """A runtime that vanishes mid-task (no close: as after kill -9) leaves a
    running task under its lease; the next runtime retries it from its
    checkpoint once the lease expires, and runs the queued ones."""
    state = tmp_path / "state"
    first = await Runtime.open(state, reap_interval=0.05, task_lease_s=1.0)
    await deploy(first, "work", WORK, memory="256Mi", tasks={**FAST_RETRY, "concurrency": 1})
    long = await first.tasks.submit("work", {"kind": "steps", "n": 3, "hang_at": 2})
    later = await first.tasks.submit("work", {"x": 5})

    async def checkpointed() -> bool:
        return (await first.tasks.get(long["id"]))["checkpoint"] == {"done": 2}

    await wait_for(checkpointed, 30, "the first checkpoint")
    # simulate the crash: stop the dispatcher and the sandboxes without any bookkeeping
    for t in first.tasks._loops:
        t.cancel()
    first.tasks._closed = True
    for inst in first.live_instances():
        await inst.stop("crash")
    second = await Runtime.open(state, reap_interval=0.05, task_lease_s=1.0)
    try:
        a, b = await finished(second, long["id"]), await finished(second, later["id"])
        assert a["state"] == "succeeded" and a["result"] == {"resumed_from": 2, "attempt": 2, "task": long["id"]}
        assert [x["outcome"] for x in a["attempt_history"]] == ["lost", "succeeded"]
        assert b["state"] == "succeeded"
    finally:
        await second.close()
        await asyncio.wait_for(first.close(), 30)


async def test_a_busy_session_is_not_paused_for_idleness_then_is(rt: Runtime) -> None:
    """A call longer than the idle TTL keeps its session live (busy); once
    idle, the instance is paused to disk and the session resumes on demand."""
    await deploy(rt, "work", WORK, memory="256Mi", idle_ttl=0.3, tasks=FAST_RETRY)
    t = await rt.tasks.submit("work", {"kind": "sleep", "s": 1.5, "x": 1}, session="long")

    async def running() -> bool:
        # the task's attempt has started and its call has reached the session's instance
        # (an attempt is "running" from before its instance is up)
        if (await rt.tasks.get(t["id"]))["state"] != "running":
            return False
        try:
            desc = await rt.describe_session("long")
        except NotFound:  # not opened yet
            return False
        return desc["status"] == "live" and desc["busy"] is True

    await wait_for(running, 30, "the task's call to run in its session")
    # while the call runs, well past the idle TTL (the reaper runs every 0.05 s), it stays live and busy
    until = time.monotonic() + 0.8
    while time.monotonic() < until:
        desc = await rt.describe_session("long")
        assert desc["status"] == "live" and desc["busy"] is True, desc
        await asyncio.sleep(0.05)
    done = await finished(rt, t["id"])
    assert done["state"] == "succeeded" and done["result"]["n"] == 1

    async def paused() -> bool:
        return (await rt.describe_session("long"))["status"] == "paused"

    await wait_for(paused, 10, "the idle session to be paused")
    again = await finished(rt, (await rt.tasks.submit("work", {"x": 2}, session="long"))["id"])
    assert again["result"]["n"] == 2  # resumed with its state


async def test_max_lifetime_ends_even_a_busy_session(rt: Runtime) -> None:
    await deploy(rt, "work", WORK, memory="256Mi", max_lifetime=1.5, tasks=FAST_RETRY)
    t = await rt.tasks.submit("work", {"kind": "sleep", "s": 60}, session="runaway")
    done = await finished(rt, t["id"], timeout=30)
    assert done["state"] == "failed", done
    desc = await rt.describe_session("runaway")
    assert desc["status"] in ("closed", "expired") and "lifetime" in (desc.get("close_reason") or "")


async def test_finished_tasks_are_pruned_after_their_retention(rt: Runtime) -> None:
    await deploy(rt, "brief", WORK, memory="256Mi", tasks={**FAST_RETRY, "retention_s": 0.5})
    await deploy(rt, "kept", WORK, memory="256Mi", tasks=FAST_RETRY)
    a = await finished(rt, (await rt.tasks.submit("brief", {"x": 1}))["id"])
    b = await finished(rt, (await rt.tasks.submit("kept", {"x": 1}))["id"])
    assert await rt.tasks.prune() == 0  # both younger than their retention
    assert await rt.tasks.prune(now=time.time() + 0.6) == 1  # as of a moment past "brief"'s retention
    with pytest.raises(NotFound):
        await rt.tasks.get(a["id"])
    assert (await rt.tasks.get(b["id"]))["state"] == "succeeded"
