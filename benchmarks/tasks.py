"""Durable tasks: submit-to-success throughput and restart-to-resume after kill -9.

In one run, for a no-op handler, with the store on this disk (SQLite WAL,
``synchronous=FULL``: an fsync per commit):

* ``invoke``: ``Runtime.invoke`` of the same handler (no durability), the
  ceiling the task path is compared to;
* ``tasks``: ``rt.tasks.submit`` then ``rt.tasks.wait`` until *succeeded*
  (three durable transitions per task, group-committed), at concurrency 1
  and 16, for tasks bound to sessions (one warm instance each) and for
  sessionless tasks (a fresh sandbox per attempt, taken from a warm pool);
* ``sqlite floor``: the same three transitions per task written with raw
  ``sqlite3`` (one commit each, FULL), no work done.

Absolute rates move with the machine, so the goal is a ratio measured in one
run: the c=16 session tasks, the plain invokes and the sqlite floor are
measured in ``--rounds`` alternating rounds (floor, tasks, invoke, then the
reverse...), so that machine noise hits both sides; the goal is judged on
the median of the rounds' ratios (the floor is bound by fsync latency, the
tasks by CPU: a neighbour's burst moves one side of a single round), and the
ratio of the pooled rates is printed beside it.

Then the restart: a subprocess opens a runtime, queues 1,000 tasks behind a
long one and is killed with SIGKILL; the time from ``Runtime.open`` on the
same directory to the first queued task succeeding is the restart-to-resume.

Goals: durable session tasks at c=16 >= 0.3x the raw-sqlite floor (0.16x
before the store's one write path); restart-to-resume <= 1 s.

Run: ``python benchmarks/tasks.py [--n 2000] [--rounds 5] [--json PATH]`` (or ``functionai bench tasks``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

NOOP = "def handler(event, ctx):\n    return event\n"
HOLD = "import time\n\ndef handler(event, ctx):\n    if event == 'hold':\n        time.sleep(3600)\n    return event\n"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def _throughput(rt: Any, n: int, conc: int, session: bool, invoke: bool = False) -> dict[str, Any]:
    lat: list[float] = []
    todo = list(range(n))

    async def worker(k: int) -> None:
        sid = f"bench-{k}" if session else None
        while todo:
            i = todo.pop()
            t0 = time.perf_counter()
            if invoke:
                r = await rt.invoke("noop", i, session=sid)
                assert r.value == i
            else:
                t = await rt.tasks.submit("noop", i, session=sid)
                row = await rt.tasks.wait(t["id"], 60)
                assert row["state"] == "succeeded" and row["result"] == i, row
            lat.append((time.perf_counter() - t0) * 1000)

    # warm: one round per worker so sessions and templates exist
    await asyncio.gather(*(worker_once(rt, k, session, invoke) for k in range(conc)))
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conc)))
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "n": n, "concurrency": conc, "per_s": round(n / wall, 1), "wall_s": wall,
        "p50_ms": round(lat[len(lat) // 2], 3), "p95_ms": round(lat[int(len(lat) * 0.95)], 3), "lat_ms": lat,
    }


async def worker_once(rt: Any, k: int, session: bool, invoke: bool) -> None:
    sid = f"bench-{k}" if session else None
    if invoke:
        await rt.invoke("noop", -1, session=sid)
    else:
        await rt.tasks.wait((await rt.tasks.submit("noop", -1, session=sid))["id"], 60)


def sqlite_floor(path: str, n: int) -> dict[str, Any]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, state TEXT, result TEXT)")
    t0 = time.perf_counter()
    for i in range(n):
        tid = uuid.uuid4().hex
        db.execute("INSERT INTO t VALUES (?, 'queued', NULL)", (tid,))
        db.execute("UPDATE t SET state='running' WHERE id=?", (tid,))
        db.execute("UPDATE t SET state='succeeded', result=? WHERE id=?", (str(i), tid))
    wall = time.perf_counter() - t0
    db.close()
    return {"n": n, "concurrency": 1, "per_s": round(n / wall, 1), "wall_s": wall}


CHILD = r"""
import asyncio, sys
from jupyter_functionai import FunctionSpec, Runtime

async def main(state, n):
    rt = await Runtime.open(state)
    await rt.deploy(FunctionSpec.from_code("hold", sys.argv[3], tasks={"concurrency": 1}, memory="128Mi"))
    first = await rt.tasks.submit("hold", "hold")
    while (await rt.tasks.get(first["id"]))["state"] != "running":
        await asyncio.sleep(0.01)
    ids = [(await rt.tasks.submit("hold", i))["id"] for i in range(n)]
    print(ids[0], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def restart_to_resume(tmp: str, queued: int) -> dict[str, Any]:
    from jupyter_functionai import Runtime

    state = os.path.join(tmp, "restart")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, state, str(queued), HOLD], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    if not first.startswith("t-"):
        raise RuntimeError(f"the child did not queue its tasks (exit {proc.wait()})")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.perf_counter()
    rt = await Runtime.open(state)
    opened = time.perf_counter() - t0
    try:
        row = await rt.tasks.wait(first, 30)
        resumed = time.perf_counter() - t0
        assert row["state"] == "succeeded", row
        counts = (await rt.tasks.counts()).get("hold", {})
    finally:
        await rt.close()
    return {"queued": queued, "open_s": round(opened, 3), "first_resumed_s": round(resumed, 3), "counts_at_end": counts}


#: durable session tasks at c=16 over the raw-sqlite floor, measured in one run
GOAL_FLOOR_FRACTION = 0.3


async def run(n: int, rounds: int, tmp: str) -> dict[str, Any]:
    from jupyter_functionai import FunctionSpec, Runtime

    out: dict[str, Any] = {"n": n, "rounds": rounds}
    per = max(16, n // rounds)
    async with Runtime.open(os.path.join(tmp, "rt")) as rt:
        await rt.deploy(FunctionSpec.from_code("noop", NOOP, memory="128Mi", min_instances=16, tasks={"concurrency": 16}))
        log("invoke, sessions, c=1")
        out["invoke_session_c1"] = await _throughput(rt, n, 1, True, invoke=True)
        log("tasks, sessions, c=1")
        out["tasks_session_c1"] = await _throughput(rt, n, 1, True)
        m = max(100, n // 5)
        log("tasks, no session (a sandbox each), c=1")
        out["tasks_ephemeral_c1"] = await _throughput(rt, m, 1, False)
        # the goal's two sides (and the invoke ceiling), alternating
        steps: dict[str, Any] = {
            "sqlite_floor": lambda r: asyncio.to_thread(sqlite_floor, os.path.join(tmp, f"floor-{r}.db"), per),
            "tasks_session_c16": lambda r: _throughput(rt, per, 16, True),
            "invoke_session_c16": lambda r: _throughput(rt, per, 16, True, invoke=True),
        }
        names = list(steps)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
        for r in range(rounds):
            log(f"round {r + 1} of {rounds}: sqlite floor / tasks, sessions, c=16 / invoke, sessions, c=16")
            for name in names if r % 2 == 0 else names[::-1]:
                runs[name].append(await steps[name](r))
        for name, rs in runs.items():
            out[name] = _pool(rs)
        out["per_round"] = pr = {name: [x["per_s"] for x in rs] for name, rs in runs.items()}
        per_round = [t / f for t, f in zip(pr["tasks_session_c16"], pr["sqlite_floor"], strict=True)]
        out["ratios"] = {
            "tasks_c16_over_floor": round(statistics.median(per_round), 3),
            "tasks_c16_over_floor_per_round": [round(x, 3) for x in per_round],
            "tasks_c16_over_floor_pooled": round(out["tasks_session_c16"]["per_s"] / out["sqlite_floor"]["per_s"], 3),
        }
        log("tasks, no session (a sandbox each), c=16")
        out["tasks_ephemeral_c16"] = await _throughput(rt, m, 16, False)
    for v in out.values():
        if isinstance(v, dict):
            v.pop("lat_ms", None)
    log("restart after kill -9 with 1,000 queued")
    out["restart"] = await restart_to_resume(tmp, 1000)
    return out


def _pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one path as one: the rate over their summed wall time,
    the latency percentiles over all their tasks."""
    n = sum(r["n"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    out: dict[str, Any] = {"n": n, "concurrency": runs[0]["concurrency"], "per_s": round(n / wall, 1), "wall_s": round(wall, 3)}
    lat = sorted(x for r in runs for x in r.get("lat_ms", ()))
    if lat:
        out["p50_ms"], out["p95_ms"] = round(lat[len(lat) // 2], 3), round(lat[int(len(lat) * 0.95)], 3)
    return out


def report(res: dict[str, Any]) -> None:
    print(f"{'path':<34} {'tasks/s':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for key, v in res.items():
        if isinstance(v, dict) and "per_s" in v:
            print(f"{key:<34} {v['per_s']:>9} {v.get('p50_ms', ''):>8} {v.get('p95_ms', ''):>8}")
    floor = res["sqlite_floor"]["per_s"]
    for c in (1, 16):
        t, i = res[f"tasks_session_c{c}"], res[f"invoke_session_c{c}"]
        print(f"c={c}: durable tasks at {t['per_s'] / i['per_s']:.2f}x the rate of plain invokes; {t['per_s'] / floor:.2f}x the raw-sqlite floor")
    ratios = res["ratios"]
    fraction = ratios["tasks_c16_over_floor"]
    rounds = ", ".join(f"{x:.2f}" for x in ratios["tasks_c16_over_floor_per_round"])
    print(f"goal: durable session tasks at c=16 >= {GOAL_FLOOR_FRACTION}x the raw-sqlite floor: {'PASS' if fraction >= GOAL_FLOOR_FRACTION else 'MISS'} "
          f"(measured {fraction:.2f}x, the median of {res['rounds']} alternating rounds: {rounds}; pooled {ratios['tasks_c16_over_floor_pooled']:.2f}x = "
          f"{res['tasks_session_c16']['per_s']}/s vs {floor}/s)")
    r = res["restart"]
    print(f"restart after kill -9 with {r['queued']} queued: runtime open {r['open_s']} s, first resumed task done {r['first_resumed_s']} s "
          f"({'PASS' if r['first_resumed_s'] <= 1.0 else 'MISS'} vs the 1 s goal)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="tasks per throughput run (default 2000)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of the c=16 ratio's two sides (default 5)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    if args.n < 16 or args.rounds < 1:
        ap.error("--n must be >= 16 and --rounds >= 1")
    with tempfile.TemporaryDirectory(prefix="fai-bench-tasks-") as tmp:
        res = asyncio.run(run(args.n, args.rounds, tmp))
    report(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
