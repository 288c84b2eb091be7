"""Scaling on load (runtime/scaling.py), under real sessionless load on real
sandbox processes: the ceiling holds (never more than ``max_instances`` calls
at once, the rest queue), the warm pool grows with the load so that the next
burst is served warm, it shrinks back to ``min_instances`` after the cooldown,
a call that cannot get a place within its time limit is refused and never
started, and each change is a durable scale event served over HTTP and by
the CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai.errors import InvalidSpec, NoCapacity
from jupyter_functionai.runtime import Runtime
from jupyter_functionai.spec import FunctionSpec

from .conftest import wait_for

# returns when it started and ended (the sandbox's clock is the host's)
NAP = "import time\n\ndef handler(event, ctx):\n    t0 = time.time()\n    time.sleep(event['s'])\n    return [t0, time.time()]\n"


def most_at_once(spans: list[list[float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = top = 0
    for _, d in edges:
        now += d
        top = max(top, now)
    return top


def live_of(rt: Runtime, name: str) -> int:
    """The backend's live instances of ``name``: sessionless, pooled and busy ones."""
    return sum(1 for u in rt.backend.usage_samples() if u.function == name)


async def snapshot(rt: Runtime, name: str) -> dict[str, Any]:
    return (await rt.scaling(name))["functions"][name]


@pytest.mark.asyncio
async def test_a_burst_is_held_to_max_instances_and_grows_the_pool_for_the_next(rt: Runtime) -> None:
    await rt.deploy(FunctionSpec.from_code("burst", NAP, session=False, max_instances=3, cooldown=600))
    calls = [asyncio.ensure_future(rt.invoke("burst", {"s": 1.5})) for _ in range(7)]

    async def three_run_four_wait() -> bool:
        s = await snapshot(rt, "burst")
        return bool((s["in_flight"], s["queued"]) == (3, 4))

    await wait_for(three_run_four_wait, 30, "3 calls in flight and 4 queued")
    s = await snapshot(rt, "burst")
    # the pool may hold nothing ready while the ceiling is busy: ready + busy <= max_instances
    assert s["target"] == 3 and s["ready"] == 0, s
    results = await asyncio.gather(*calls)
    spans = [r.value for r in results]
    assert len(spans) == 7 and most_at_once(spans) <= 3, spans
    (up,) = (await rt.scaling("burst"))["events"]
    assert (up["reason"], up["from"], up["to"], up["function"]) == ("up", 0, 3, "burst"), up

    # the load is gone, the cooldown is long: the pool fills to the target it grew to
    await rt.pool.wait_full("burst", timeout=120)
    assert (await snapshot(rt, "burst"))["ready"] == 3
    again = await asyncio.gather(*(rt.invoke("burst", {"s": 0}) for _ in range(3)))
    assert [r.cold_start.path if r.cold_start else None for r in again] == ["warm-pool"] * 3


@pytest.mark.asyncio
async def test_reading_the_scaling_state_is_not_a_change(rt: Runtime) -> None:
    """The sidebar refetches on each change the events stream counts; reading
    the scaling state must not count as one, or each read would set off the
    next.  A read that hands over a scale event not yet stored is one."""
    await rt.deploy(FunctionSpec.from_code("calm", NAP, session=False, max_instances=2, cooldown=600))
    await rt.flush()
    writer = rt.store.writer
    changes = writer.changes
    for _ in range(3):
        await rt.scaling()
    assert writer.changes == changes
    await rt.invoke("calm", {"s": 0})
    (up,) = (await rt.scaling("calm"))["events"]  # the read stores the event it reports
    assert up["to"] == 1 and writer.changes > changes


@pytest.mark.asyncio
async def test_after_the_cooldown_the_pool_shrinks_back_to_min_instances(rt: Runtime) -> None:
    await rt.deploy(FunctionSpec.from_code("tide", NAP, session=False, min_instances=1, max_instances=4, cooldown=0.5))
    await rt.pool.wait_full("tide", timeout=60)
    await asyncio.gather(*(rt.invoke("tide", {"s": 0.5}) for _ in range(6)))

    async def shrunk() -> bool:
        events = (await rt.scaling("tide"))["events"]
        return bool(events) and events[-1]["reason"] == "down" and events[-1]["to"] == 1

    await wait_for(shrunk, 60, "a scale-down event back to min_instances")
    events = (await rt.scaling("tide"))["events"]
    ups = [e for e in events if e["reason"] == "up"]
    assert ups and ups[0]["from"] == 1 and max(e["to"] for e in ups) == 4, events
    # down in one step or several (the last calls may outlast a cooldown: 4 -> 2 -> 1),
    # never below min_instances nor below the load it saw, ending at min_instances
    downs = [e for e in events if e["reason"] == "down"]
    assert downs[0]["from"] == 4 and all(a["to"] == b["from"] for a, b in itertools.pairwise(downs)), events
    assert all(e["to"] >= max(1, e["in_flight"] + e["queued"]) for e in downs), events
    assert downs[-1]["to"] == 1, events
    # what the pool held beyond min_instances is drained and stopped
    await wait_for(lambda: live_of(rt, "tide") == 1, 60, "the drained instances to stop")
    assert (await snapshot(rt, "tide"))["target"] == 1


@pytest.mark.asyncio
async def test_a_call_that_cannot_get_a_place_in_time_is_refused_and_never_runs(rt: Runtime) -> None:
    await rt.deploy(FunctionSpec.from_code("one", NAP, session=False, max_instances=1))
    first = asyncio.ensure_future(rt.invoke("one", {"s": 2.0}))

    async def busy() -> bool:
        return bool((await snapshot(rt, "one"))["in_flight"] == 1)

    await wait_for(busy, 30, "the first call in flight")
    with pytest.raises(NoCapacity, match=r"already runs 1 sessionless calls \(max_instances\).*waited 0.3s") as err:
        await rt.invoke("one", {"s": 0}, timeout=0.3)
    assert err.value.status == 503
    s = await snapshot(rt, "one")
    assert (s["in_flight"], s["queued"]) == (1, 0), s  # the refused call left no trace in the queue
    assert len((await first).value) == 2
    # and the ceiling is free again
    assert len((await rt.invoke("one", {"s": 0})).value) == 2
    n_calls = sum(1 for r in await rt.invocations("one") if r["outcome"] == "ok")
    assert n_calls == 2


@pytest.mark.asyncio
async def test_queued_calls_run_in_arrival_order(rt: Runtime) -> None:
    await rt.deploy(FunctionSpec.from_code("fifo", "import time\n\ndef handler(event, ctx):\n    return [event, time.time()]\n", session=False, max_instances=1))
    calls = []
    for i in range(5):
        calls.append(asyncio.ensure_future(rt.invoke("fifo", i)))
        await asyncio.sleep(0)  # each reaches the gate before the next is made
    done = await asyncio.gather(*calls)
    order = [v for v, _ in sorted((r.value for r in done), key=lambda x: x[1])]
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
async def test_a_new_version_with_a_higher_ceiling_lets_queued_calls_in(rt: Runtime) -> None:
    await rt.deploy(FunctionSpec.from_code("lift", NAP, session=False, max_instances=1))
    # long enough to outlast the redeploy below on a busy machine
    first = asyncio.ensure_future(rt.invoke("lift", {"s": 10.0}))

    async def one_runs() -> bool:
        return bool((await snapshot(rt, "lift"))["in_flight"] == 1)

    await wait_for(one_runs, 30, "the first call in flight")
    second = asyncio.ensure_future(rt.invoke("lift", {"s": 0}))

    async def one_waits() -> bool:
        return bool((await snapshot(rt, "lift"))["queued"] == 1)

    await wait_for(one_waits, 30, "the second call queued")
    await rt.deploy(FunctionSpec.from_code("lift", NAP, session=False, max_instances=2))
    started_second, _ = (await second).value
    _, ended_first = (await first).value
    assert started_second < ended_first  # it ran beside the first, not after it


def test_scaling_fields_are_validated_and_old_specs_read_back_equal() -> None:
    with pytest.raises(InvalidSpec, match=r"max_instances: 1 is not valid: must not be below min_instances \(2\)"):
        FunctionSpec.from_code("x", NAP, min_instances=2, max_instances=1)
    with pytest.raises(InvalidSpec, match="target_concurrency"):
        FunctionSpec.from_code("x", NAP, target_concurrency=0)
    with pytest.raises(InvalidSpec, match="scale_cooldown_s"):
        FunctionSpec.from_code("x", NAP, cooldown=-1)
    plain = FunctionSpec.from_code("x", NAP)
    assert "max_instances" not in plain.to_dict()  # a spec stored before scaling existed is unchanged
    scaled = FunctionSpec.from_code("x", NAP, max_instances=5, target_concurrency=2, cooldown=30)
    assert FunctionSpec.from_dict(scaled.to_dict()) == scaled
    assert scaled.to_dict()["scale_cooldown_s"] == 30.0


@pytest.mark.asyncio
async def test_scale_events_outlive_the_runtime(tmp_path: Path) -> None:
    async with Runtime.open(tmp_path / "state") as rt:
        await rt.deploy(FunctionSpec.from_code("keep", NAP, session=False, max_instances=2))
        await asyncio.gather(*(rt.invoke("keep", {"s": 0.2}) for _ in range(2)))
        before = (await rt.scaling("keep"))["events"]
        assert before and before[0]["to"] == 2
    async with Runtime.open(tmp_path / "state") as rt:
        assert (await rt.scaling("keep"))["events"][: len(before)] == before


def test_scaling_over_http_the_cli_and_the_client(tmp_path: Path) -> None:
    from jupyter_functionai.client import Client
    from jupyter_functionai.errors import NotFound

    from .test_cli_server import start_server, stop_server

    srv = start_server(tmp_path / "home", tmp_path / "data")
    try:
        fai = Client(srv.url, srv.token)
        with pytest.raises(InvalidSpec) as bad:
            fai.deploy("bad", NAP, min_instances=3, max_instances=2)
        assert bad.value.status == 400
        fai.deploy("wave", NAP, session=False, max_instances=2, cooldown=600)
        for _ in range(2):
            fai.invoke("wave", {"s": 0})
        out = fai.scaling("wave")
        assert out["functions"]["wave"]["max_instances"] == 2 and out["events"][0]["reason"] == "up", out
        with pytest.raises(NotFound):
            fai.scaling("nope")
        env = srv.client_env()
        p = subprocess.run([sys.executable, "-m", "jupyter_functionai", "scaling", "--json"], capture_output=True, text=True, timeout=60, env=env)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["functions"]["wave"]["target"] >= 1
        p = subprocess.run([sys.executable, "-m", "jupyter_functionai", "scaling", "wave"], capture_output=True, text=True, timeout=60, env=env)
        assert p.returncode == 0, p.stderr
        assert "TARGET" in p.stdout and "wave" in p.stdout and "up" in p.stdout, p.stdout
        # the deploy command takes the fields too
        src = tmp_path / "nap.py"
        src.write_text(NAP)
        p = subprocess.run(
            [sys.executable, "-m", "jupyter_functionai", "deploy", str(src), "--name", "nap", "--max-instances", "3", "--target-concurrency", "2", "--cooldown", "5"],
            capture_output=True, text=True, timeout=120, env=env,
        )
        assert p.returncode == 0, p.stderr
        spec = fai.function("nap")["spec"]
        assert (spec["max_instances"], spec["target_concurrency"], spec["scale_cooldown_s"]) == (3, 2, 5.0), spec
        # the README's lines, as printed, from the checkout
        root = Path(__file__).resolve().parent.parent
        lines = [ln.split("#")[0].strip() for ln in (root / "README.md").read_text().splitlines() if ln.startswith((".venv/bin/functionai deploy examples/my_agent.py --name burst", ".venv/bin/functionai scaling"))]
        assert len(lines) == 2, lines
        outs = []
        for line in lines:
            p = subprocess.run([sys.executable, "-m", "jupyter_functionai", *shlex.split(line)[1:]], capture_output=True, text=True, timeout=120, env=env, cwd=root)
            assert p.returncode == 0, (line, p.stderr)
            outs.append(p.stdout)
        spec = fai.function("burst")["spec"]
        assert (spec["max_instances"], spec["scale_cooldown_s"]) == (8, 30.0), spec
        assert re.search(r"^burst +0 +8 +0 ", outs[1], re.M), outs[1]
    finally:
        stop_server(srv)
