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

Then the restart: a subprocess opens a runtime, queues 1,000 tasks behind a
long one and is killed with SIGKILL; the time from ``Runtime.open`` on the
same directory to the first queued task succeeding is the restart-to-resume.

Goals (for the note): >= 500 tasks/s end to end; restart-to-resume <= 1 s.

Run: ``python benchmarks/tasks.py [--n 2000] [--json PATH]`` (or ``functionai bench tasks``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
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
    return {"n": n, "concurrency": conc, "per_s": round(n / wall, 1), "p50_ms": round(lat[len(lat) // 2], 3), "p95_ms": round(lat[int(len(lat) * 0.95)], 3)}


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
    return {"n": n, "concurrency": 1, "per_s": round(n / wall, 1)}


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


async def run(n: int, tmp: str) -> dict[str, Any]:
    from jupyter_functionai import FunctionSpec, Runtime

    out: dict[str, Any] = {"n": n}
    async with Runtime.open(os.path.join(tmp, "rt")) as rt:
        await rt.deploy(FunctionSpec.from_code("noop", NOOP, memory="128Mi", min_instances=16, tasks={"concurrency": 16}))
        for conc in (1, 16):
            log(f"invoke, sessions, c={conc}")
            out[f"invoke_session_c{conc}"] = await _throughput(rt, n, conc, True, invoke=True)
            log(f"tasks, sessions, c={conc}")
            out[f"tasks_session_c{conc}"] = await _throughput(rt, n, conc, True)
            m = max(100, n // 5)
            log(f"tasks, no session (a sandbox each), c={conc}")
            out[f"tasks_ephemeral_c{conc}"] = await _throughput(rt, m, conc, False)
    out["sqlite_floor"] = sqlite_floor(os.path.join(tmp, "floor.db"), n)
    log("restart after kill -9 with 1,000 queued")
    out["restart"] = await restart_to_resume(tmp, 1000)
    return out


def report(res: dict[str, Any]) -> None:
    print(f"{'path':<34} {'tasks/s':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for key, v in res.items():
        if isinstance(v, dict) and "per_s" in v:
            print(f"{key:<34} {v['per_s']:>9} {v.get('p50_ms', ''):>8} {v.get('p95_ms', ''):>8}")
    for c in (1, 16):
        t, i = res[f"tasks_session_c{c}"], res[f"invoke_session_c{c}"]
        print(f"c={c}: durable tasks at {t['per_s'] / i['per_s']:.2f}x the rate of plain invokes; {t['per_s'] / res['sqlite_floor']['per_s']:.2f}x the raw-sqlite floor")
    best = max(res["tasks_session_c16"]["per_s"], res["tasks_ephemeral_c16"]["per_s"])
    print(f"goal >= 500 tasks/s end to end: {'PASS' if best >= 500 else 'MISS'} ({best}/s at c=16)")
    r = res["restart"]
    print(f"restart after kill -9 with {r['queued']} queued: runtime open {r['open_s']} s, first resumed task done {r['first_resumed_s']} s "
          f"({'PASS' if r['first_resumed_s'] <= 1.0 else 'MISS'} vs the 1 s goal)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="tasks per throughput run (default 2000)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fai-bench-tasks-") as tmp:
        res = asyncio.run(run(args.n, tmp))
    report(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
