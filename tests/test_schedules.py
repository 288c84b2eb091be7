"""Schedules on a real Runtime, driven by an injected clock: every fire is a
real papermill run in a real sandbox; no test sleeps for a cron time.

Times are chosen on a 5-minute cron so a "tick" at any instant knows
exactly which cron time has come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import pytest_asyncio
from nbformat.v4 import new_code_cell, new_notebook

from jupyter_functionai.errors import BadPayload, Conflict, InvalidArgument, NotFound
from jupyter_functionai.runs.manager import RunManager
from jupyter_functionai.runs.schedules import Scheduler, next_fire_times
from jupyter_functionai.runtime import Runtime

pytestmark = pytest.mark.asyncio

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC, a multiple of 300
EVERY_5 = "*/5 * * * *"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_notebook(path: Path, *sources: str, params: str = "x = 1\nsleep = 0") -> None:
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[cell, *(new_code_cell(s) for s in sources)], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    write_notebook(r / "job.ipynb", "import time\ntime.sleep(sleep)\nprint('x is', x)")
    return r


@pytest_asyncio.fixture
async def runs(tmp_path: Path, root: Path) -> AsyncIterator[RunManager]:
    async with Runtime.open(tmp_path / "state", reap_interval=0.05) as rt:
        yield RunManager(rt, str(root), warm_kernels=0)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 - 10)


@pytest.fixture
def sched(runs: RunManager, clock: Clock) -> Scheduler:
    return Scheduler(runs, clock=clock, grace_s=60)


async def settle(runs: RunManager, run_ids: list[str]) -> list[dict[str, Any]]:
    """Wait for runs to end; cancel the ones still going after the test looked."""
    out = []
    for rid in run_ids:
        run = await runs.get(rid)
        if run["state"] in ("queued", "running"):
            await runs.cancel(rid)
        out.append(await runs.wait(rid, 60))
    return out


async def test_fires_once_per_cron_time_with_its_parameters(sched: Scheduler, runs: RunManager, clock: Clock) -> None:
    s, created = await sched.create({"notebook": "job.ipynb", "cron": EVERY_5, "parameters": {"x": 42}, "tags": ["nightly"]})
    assert created and s["next_fire_at"] == T0 and s["next_fire_times"][:2] == ["2027-01-15T08:00:00+00:00", "2027-01-15T08:05:00+00:00"]
    assert await sched.tick() == pytest.approx(10)  # nothing yet; the loop would sleep until T0
    assert await sched.runs_of(s["id"]) == []
    clock.t = T0 + 0.3
    await sched.tick()
    await sched.tick()  # the same time again: nothing more
    clock.t = T0 + 200
    await sched.tick()  # still before the next time
    fired = await sched.runs_of(s["id"])
    assert len(fired) == 1 and fired[0]["scheduled_for"] == T0 and fired[0]["tags"] == ["nightly"] and fired[0]["schedule_id"] == s["id"]
    done = await runs.wait(fired[0]["id"], 60)
    assert done["state"] == "succeeded", done
    out = nbformat.read(Path(runs.root) / done["outputs"]["ipynb"], as_version=4)
    assert "x is 42" in "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    row = await sched.get(s["id"])
    assert row["fired"] == 1 and row["last_result"] == "fired" and row["last_run_id"] == done["id"]
    assert row["next_fire_at"] == T0 + 300 and row["last_fire_time"] == "2027-01-15T08:00:00+00:00"
    clock.t = T0 + 300.5
    await sched.tick()
    again = await sched.runs_of(s["id"])
    assert [r["scheduled_for"] for r in again] == [T0 + 300, T0]  # newest first
    await settle(runs, [r["id"] for r in again])


async def test_timezones_and_next_fire_times() -> None:
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer
    winter = next_fire_times("0 9 * * *", "Europe/Paris", T0)[0]
    assert winter == T0 + 3600 * 24  # 2027-01-16 08:00 UTC (09:00 Paris on the 15th came at 08:00, not after T0)
    summer = next_fire_times("0 9 * * *", "Europe/Paris", 1_813_000_000.0)[0]  # mid-June 2027
    assert (summer - 7 * 3600) % 86400 == 0


async def test_bad_schedules_are_refused_naming_the_field(sched: Scheduler, root: Path) -> None:
    (root / "broken.ipynb").write_text("{ not json")
    cases: list[tuple[Any, type[Exception], str]] = [
        ({"notebook": "job.ipynb", "cron": "61 * * * *"}, InvalidArgument, "cron"),
        ({"notebook": "job.ipynb", "cron": "* * *"}, InvalidArgument, "cron"),
        ({"notebook": "job.ipynb", "cron": 5}, InvalidArgument, "cron"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "timezone": "Mars/Olympus"}, InvalidArgument, "timezone"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "overlap": "sometimes"}, InvalidArgument, "overlap"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "catch_up": "all"}, InvalidArgument, "catch_up"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "enabled": "yes"}, InvalidArgument, "enabled"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "parameters": [1]}, BadPayload, "parameters"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "output_formats": ["pdf"]}, InvalidArgument, "output_formats"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "tags": "a"}, InvalidArgument, "tags"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "timeout": -1}, InvalidArgument, "timeout"),
        ({"notebook": "job.ipynb", "cron": EVERY_5, "colour": "red"}, InvalidArgument, "colour"),
        ({"notebook": "../outside.ipynb", "cron": EVERY_5}, InvalidArgument, "outside the root"),
        ({"notebook": "missing.ipynb", "cron": EVERY_5}, NotFound, "missing.ipynb"),
        ({"notebook": "broken.ipynb", "cron": EVERY_5}, InvalidArgument, "not a valid notebook"),
        ([1, 2], BadPayload, "JSON object"),
    ]
    for body, kind, needle in cases:
        with pytest.raises(kind) as info:
            await sched.create(body)
        err = info.value
        assert needle in str(err) or err.details.get("field") == needle, (body, err)
    assert await sched.list_schedules() == []  # nothing half-made
    with pytest.raises(NotFound):
        await sched.get("s-nope")


async def test_overlap_skip_queue_and_allow(sched: Scheduler, runs: RunManager, clock: Clock) -> None:
    made = {}
    for overlap in ("skip", "queue", "allow"):
        made[overlap], _ = await sched.create({"notebook": "job.ipynb", "cron": EVERY_5, "overlap": overlap, "parameters": {"sleep": 600}})
    clock.t = T0 + 1
    await sched.tick()
    first = {k: (await sched.runs_of(s["id"]))[0] for k, s in made.items()}
    for run in first.values():  # each schedule's first run is under way (queued or running) at the next time
        assert run["state"] in ("queued", "running")
    clock.t = T0 + 301
    await sched.tick()
    skip, queue, allow = [await sched.get(made[k]["id"]) for k in ("skip", "queue", "allow")]
    assert skip["skipped"] == 1 and skip["last_result"] == "skipped" and len(await sched.runs_of(skip["id"])) == 1
    assert queue["last_result"] == "queued" and queue["pending_at"] == T0 + 300 and len(await sched.runs_of(queue["id"])) == 1
    assert allow["fired"] == 2 and len(await sched.runs_of(allow["id"])) == 2
    # the queued time starts once the run before it has ended
    await runs.cancel(first["queue"]["id"])
    await sched.tick()
    queued = await sched.runs_of(queue["id"])
    assert len(queued) == 2 and queued[0]["scheduled_for"] == T0 + 300
    assert (await sched.get(queue["id"]))["pending_at"] is None
    await settle(runs, [r["id"] for s in made.values() for r in await sched.runs_of(s["id"])])


async def test_catch_up_after_downtime(sched: Scheduler, runs: RunManager, clock: Clock) -> None:
    none, _ = await sched.create({"notebook": "job.ipynb", "cron": EVERY_5, "catch_up": "none"})
    latest, _ = await sched.create({"notebook": "job.ipynb", "cron": EVERY_5, "catch_up": "latest"})
    clock.t = T0 + 3600 + 120  # down for an hour: 13 times passed (08:00 .. 09:00), the newest 2 min ago
    await sched.tick()
    n, late = await sched.get(none["id"]), await sched.get(latest["id"])
    assert await sched.runs_of(none["id"]) == [] and n["missed"] == 13 and n["last_result"] == "missed"
    caught = await sched.runs_of(latest["id"])
    assert [r["scheduled_for"] for r in caught] == [T0 + 3600] and late["missed"] == 12 and late["fired"] == 1
    await sched.tick()  # dealt with: nothing again
    assert len(await sched.runs_of(latest["id"])) == 1 and (await sched.get(none["id"]))["missed"] == 13
    # the next time, on time: both fire (the caught-up run has ended: no overlap to skip)
    assert (await runs.wait(caught[0]["id"], 60))["state"] == "succeeded"
    clock.t = T0 + 3900.2
    await sched.tick()
    assert len(await sched.runs_of(none["id"])) == 1 and len(await sched.runs_of(latest["id"])) == 2
    await settle(runs, [r["id"] for s in (none, latest) for r in await sched.runs_of(s["id"])])


async def test_two_schedulers_on_one_store_fire_a_time_once(runs: RunManager, clock: Clock) -> None:
    """What a restart (or a second server on the same data) meets: the claim
    on a cron time is one conditional write with the run's insert."""
    a, b = Scheduler(runs, clock=clock), Scheduler(runs, clock=clock)
    s, _ = await a.create({"notebook": "job.ipynb", "cron": EVERY_5, "overlap": "allow"})
    clock.t = T0 + 0.5
    await asyncio.gather(a.tick(), b.tick(), a.tick(), b.tick())
    fired = await a.runs_of(s["id"])
    assert len(fired) == 1 and (await a.get(s["id"]))["fired"] == 1
    await settle(runs, [r["id"] for r in fired])


async def test_pause_resume_update_run_now_and_delete(sched: Scheduler, runs: RunManager, clock: Clock) -> None:
    s, _ = await sched.create({"notebook": "job.ipynb", "cron": EVERY_5, "catch_up": "latest"})
    paused = await sched.pause(s["id"])
    assert paused["enabled"] is False and paused["next_fire_at"] is None
    clock.t = T0 + 10
    await sched.tick()
    assert await sched.runs_of(s["id"]) == []
    resumed = await sched.resume(s["id"])  # from now on: the paused time is not caught up
    assert resumed["enabled"] is True and resumed["next_fire_at"] == T0 + 300
    await sched.tick()
    assert await sched.runs_of(s["id"]) == []
    now = await sched.run_now(s["id"])
    assert now["schedule_id"] == s["id"] and now["scheduled_for"] is None
    changed = await sched.update(s["id"], {"cron": "0 * * * *", "parameters": {"x": 7}, "name": "hourly"})
    assert changed["cron"] == "0 * * * *" and changed["name"] == "hourly" and changed["next_fire_at"] == T0 + 3600
    with pytest.raises(InvalidArgument):
        await sched.update(s["id"], {"cron": "not cron"})
    assert (await sched.get(s["id"]))["cron"] == "0 * * * *"  # a refused change changes nothing
    await sched.delete(s["id"])
    with pytest.raises(NotFound):
        await sched.get(s["id"])
    kept = await runs.get(now["id"])  # its runs stay
    assert kept["schedule_id"] == s["id"]
    await settle(runs, [now["id"]])
    # an on-demand definition (no cron) never fires by itself
    d, _ = await sched.create({"notebook": "job.ipynb", "cron": None})
    clock.t = T0 + 86400
    await sched.tick()
    assert d["next_fire_at"] is None and await sched.runs_of(d["id"]) == []


async def test_idempotency_tokens_tags_delete_and_outputs(sched: Scheduler, runs: RunManager, root: Path) -> None:
    one = await runs.start("job.ipynb", {"x": 1}, idempotency_token="nightly-2027-01-15", tags=["a", "b"], output_formats=["html"])
    two = await runs.start("job.ipynb", {"x": 2}, idempotency_token="nightly-2027-01-15")
    assert one is not None and two is not None and two["id"] == one["id"] and two["parameters"] == {"x": 1}
    s1, c1 = await sched.create({"notebook": "job.ipynb", "cron": EVERY_5, "idempotency_token": "def-1"})
    s2, c2 = await sched.create({"notebook": "job.ipynb", "cron": "0 0 * * *", "idempotency_token": "def-1"})
    assert c1 and not c2 and s2["id"] == s1["id"] and s2["cron"] == EVERY_5
    with pytest.raises(InvalidArgument):
        await runs.start("job.ipynb", idempotency_token="has spaces")
    with pytest.raises(Conflict):  # a queued or running run is stopped before it is deleted
        await runs.delete(one["id"])
    done = await runs.wait(one["id"], 60)
    assert done["state"] == "succeeded" and set(done["outputs"]) == {"ipynb", "html"}
    assert [r["id"] for r in await runs.list_runs(tag="a")] == [one["id"]] and await runs.list_runs(tag="c") == []
    html = await runs.output_path(one["id"], "html")
    assert Path(html).read_text().startswith("<!DOCTYPE html>")
    await runs.delete(one["id"])
    assert not Path(html).exists() and not (root / "functionai-runs" / one["id"]).exists()
    with pytest.raises(NotFound):
        await runs.get(one["id"])


async def test_kernel_choice_per_run(runs: RunManager) -> None:
    ok = await runs.start("job.ipynb", {"x": 3}, kernel="python3")
    bad = await runs.start("job.ipynb", kernel="no-such-kernel")
    assert ok is not None and bad is not None
    assert (await runs.wait(ok["id"], 60))["state"] == "succeeded"
    failed = await runs.wait(bad["id"], 60)
    assert failed["state"] == "failed" and failed["kernel"] == "no-such-kernel", failed
    assert "no-such-kernel" in failed["error"]["message"], failed["error"]
    with pytest.raises(InvalidArgument):
        await runs.start("job.ipynb", kernel="../../bin/sh")


async def test_a_schedule_whose_notebook_went_away_records_an_error_and_the_others_fire(sched: Scheduler, runs: RunManager, root: Path, clock: Clock) -> None:
    write_notebook(root / "temp.ipynb", "print(x)")
    gone, _ = await sched.create({"notebook": "temp.ipynb", "cron": EVERY_5})
    fine, _ = await sched.create({"notebook": "job.ipynb", "cron": EVERY_5})
    (root / "temp.ipynb").unlink()
    clock.t = T0 + 0.5
    await sched.tick()
    broken = await sched.get(gone["id"])
    assert broken["last_result"] == "error" and broken["last_fire_at"] == T0 and await sched.runs_of(gone["id"]) == []
    assert broken["last_error"].startswith("not_found:") and "temp.ipynb" in broken["last_error"]
    await sched.tick()  # dealt with: not retried on every tick
    assert (await sched.get(gone["id"]))["last_fire_at"] == T0
    fired = await sched.runs_of(fine["id"])
    assert len(fired) == 1
    await settle(runs, [fired[0]["id"]])


async def test_a_queued_time_whose_notebook_went_away_is_dropped_with_an_error(sched: Scheduler, runs: RunManager, root: Path, clock: Clock) -> None:
    write_notebook(root / "queued.ipynb", "import time\ntime.sleep(sleep)")
    s, _ = await sched.create({"notebook": "queued.ipynb", "cron": EVERY_5, "overlap": "queue", "parameters": {"sleep": 600}})
    clock.t = T0 + 1
    await sched.tick()
    clock.t = T0 + 301
    await sched.tick()
    first = (await sched.runs_of(s["id"]))[0]
    assert (await sched.get(s["id"]))["pending_at"] == T0 + 300
    (root / "queued.ipynb").unlink()
    await runs.cancel(first["id"])
    await sched.tick()  # the pending time cannot start: an error, and it is not tried again
    row = await sched.get(s["id"])
    assert row["pending_at"] is None and row["last_result"] == "error" and "queued.ipynb" in row["last_error"]
    assert len(await sched.runs_of(s["id"])) == 1
    await settle(runs, [first["id"]])
