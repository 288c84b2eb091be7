"""Density: memory per idle isolated session, next to Jupyter kernels.

Opens N idle, fully isolated sessions of the numpy+pandas handler, forked
from the template (min_instances=0), in two states: ``after-call`` (each
session made by one call with a new session id, then idle) and ``opened``
(``Runtime.open_session``: sandbox started and bound, no call yet), and
reports per-session unique (USS) and resident (RSS) memory from
``/proc/PID/smaps_rollup`` (via ``Instance.stats()``), and the total
``sum(USS) + template RSS`` (the pages every session shares counted once).
For comparison, K Jupyter kernels that ran the same imports and one handler
call: ``total = sum(USS) + the largest kernel's shared part (RSS - USS)``.

Also printed, as a cross-check: the sum of PSS, and the median page-table
size per process (kernel memory that USS/RSS/PSS do not count).

Run: ``python benchmarks/density.py [--n 100 1000] [--kernels 10] [--json PATH]``
(or ``functionai bench density ...``).  Sessions are created incrementally in
one runtime: the measurement for each N is taken when N sessions are live.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

try:  # imported as ``benchmarks.density``
    from . import _common as common
except ImportError:  # run as a script, or loaded from the benchmarks directory
    import _common as common  # type: ignore[no-redef]

FN = "density"
MB = common.MB
GOAL_N = 1000
GOAL_USS_MB = 5.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _template_pid(rt: Any, live: list[Any]) -> int | None:
    """The template process the sessions were forked from: the parent of the
    instances (all must agree), else the backend's own record."""
    parents = {_ppid(i.pid) for i in live if i.pid}
    if len(parents) == 1 and None not in parents:
        return parents.pop()
    templates = getattr(rt.backend, "_templates", {}) or {}
    for (name, _version), t in templates.items():
        proc = getattr(t, "proc", None)
        if name == FN and proc is not None and proc.poll() is None:
            return int(proc.pid)
    return None


def _pte_p50(pids: Any) -> float | None:
    """Median page-table size (kB) of the processes: kernel memory per process
    that USS/RSS/PSS do not show."""
    vals = [common.proc_status(p).get("VmPTE") for p in pids if p]
    vals = [v for v in vals if v is not None]
    return round(common.percentile(vals, 50), 1) if vals else None


def _summary(kind: str, n: int, stats: list[dict[str, Any]], total: float, extra: dict[str, Any]) -> dict[str, Any]:
    uss = [s["uss"] / MB for s in stats]
    rss = [s["rss"] / MB for s in stats]
    pss = [s.get("pss", 0) / MB for s in stats]
    out = {
        "kind": kind,
        "n": n,
        "measured": len(stats),
        "uss_mb_p50": round(common.percentile(uss, 50), 3),
        "uss_mb_p95": round(common.percentile(uss, 95), 3),
        "uss_mb_max": round(max(uss), 3) if uss else None,
        "rss_mb_p50": round(common.percentile(rss, 50), 3),
        "pss_mb_sum": round(sum(pss), 1),
        "total_mb": round(total, 1),
        "total_mb_per_unit": round(total / n, 3) if n else None,
    }
    out.update(extra)
    return out


async def sessions_run(ns: Sequence[int], handler_path: str, root: str, state: str = "after-call", warmup_hook: bool = False) -> list[dict[str, Any]]:
    from jupyter_functionai import FunctionSpec, Runtime

    runs = []
    state_dir = tempfile.mkdtemp(prefix="density-", dir=root)
    async with Runtime.open(state_dir) as rt:
        extra: dict[str, Any] = {"warmup": "warmup"} if warmup_hook else {}
        await rt.deploy(FunctionSpec.from_file(FN, handler_path, min_instances=0, **extra))
        # one session opened and closed first: everything lazily set up is set up
        await rt.invoke(FN, {"x": 0}, session="warmup")
        await rt.close_session("warmup")
        created = 0
        create_ms: list[float] = []
        t_start = time.perf_counter()
        for target in sorted(set(ns)):
            while created < target:
                sid = f"s{created}"
                x = created % 50
                t0 = time.perf_counter()
                if state == "opened":
                    desc = await rt.open_session(FN, sid)
                    create_ms.append((time.perf_counter() - t0) * 1000)
                    if desc["status"] != "live" or desc["calls"] != 0:
                        raise RuntimeError(f"session {sid} was not opened idle: {desc['status']}, {desc['calls']} calls")
                else:
                    r = await rt.invoke(FN, {"x": x}, session=sid)
                    create_ms.append((time.perf_counter() - t0) * 1000)
                    if r.cold_start is None:
                        raise RuntimeError(f"session {sid} was not new (no cold start recorded)")
                    common.check_value("session", r.value, x)
                created += 1
                if created % 100 == 0:
                    el = time.perf_counter() - t_start
                    log(f"[density] {created} sessions live ({el:.1f} s, last 100: p50 {common.percentile(create_ms[-100:], 50):.1f} ms each)")
            await asyncio.sleep(1.0)  # let deferred writes and page faults settle
            live = rt.live_instances()
            if len(live) != target:
                log(f"[density] warning: {len(live)} live instances for {target} sessions")
            stats = [inst.stats() for inst in live]
            stats = [s for s in stats if s.get("rss")]
            tpid = _template_pid(rt, live)
            if tpid is None:
                raise RuntimeError("cannot find the template process the sessions were forked from")
            tmem = common.smaps_rollup(tpid) if tpid else {"rss": 0, "pss": 0, "uss": 0}
            total = sum(s["uss"] for s in stats) / MB + tmem["rss"] / MB
            cg = [s["cgroup_memory"] / MB for s in stats if s.get("cgroup_memory")]
            extra = {
                "template_pid": tpid,
                "template_rss_mb": round(tmem["rss"] / MB, 1),
                "template_pss_mb": round(tmem["pss"] / MB, 1),
                "cgroup_mb_p50": round(common.percentile(cg, 50), 3) if cg else None,
                "page_tables_kb_p50": _pte_p50(i.pid for i in live),
                "create_ms_p50": round(common.percentile(create_ms, 50), 2),
                "create_ms_p95": round(common.percentile(create_ms, 95), 2),
            }
            run = _summary("session", target, stats, total, extra)
            run["state"] = state
            run["warmup_hook"] = warmup_hook
            run["pss_mb_sum"] = round(run["pss_mb_sum"] + tmem["pss"] / MB, 1)
            runs.append(run)
            log(f"[density] measured N={target}: USS p50 {run['uss_mb_p50']:.2f} MB, total {run['total_mb']:.0f} MB")
        # closed one by one, so the sessions end (Runtime.close would only pause them)
        log(f"[density] closing {created} sessions")
        t0 = time.perf_counter()
        for i in range(created):
            await rt.close_session(f"s{i}")
            if i % 50 == 49:
                await asyncio.sleep(0.1)  # let exits be reported while closing goes on
        log(f"[density] closed {created} sessions in {time.perf_counter() - t0:.1f} s")
        await asyncio.sleep(2.0)  # the templates report the exits; only then are the cgroups removed
        t0 = time.perf_counter()
    log(f"[density] runtime closed in {time.perf_counter() - t0:.1f} s")
    shutil.rmtree(state_dir, ignore_errors=True)
    return runs


async def kernels_run(k: int) -> dict[str, Any]:
    from jupyter_client.manager import AsyncKernelManager

    kms: list[Any] = []
    kcs: list[Any] = []
    try:
        for i in range(k):
            km = AsyncKernelManager(kernel_name="python3")
            kms.append(km)
            await km.start_kernel(stderr=subprocess.DEVNULL)
            kc = km.client()
            kcs.append(kc)
            kc.start_channels()
            await kc.wait_for_ready(timeout=120)
            text = await common.kernel_execute(kc, common.KERNEL_SETUP, f"_json.dumps(handler({{'x': {i % 50}}}, None))")
            common.check_value("jupyter-kernel", json.loads(text), i % 50)
            log(f"[density] kernel {i + 1}/{k} ready")
        await asyncio.sleep(1.0)
        stats = []
        for km in kms:
            pid = common.kernel_pid(km)
            if pid is None:
                raise RuntimeError("cannot find a kernel's pid")
            stats.append(common.smaps_rollup(pid))
        pids = [common.kernel_pid(km) for km in kms]
        shared_once = max((s["rss"] - s["uss"]) for s in stats) / MB
        total = sum(s["uss"] for s in stats) / MB + shared_once
        return _summary(
            "jupyter-kernel",
            k,
            stats,
            total,
            {"shared_mb_counted_once": round(shared_once, 1), "page_tables_kb_p50": _pte_p50(pids)},
        )
    finally:
        for kc in kcs:
            kc.stop_channels()
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms), return_exceptions=True)


def print_report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for r in runs:
        rows.append(
            [
                r["kind"] + (f" ({r['state']})" if r.get("state") else ""),
                r["n"],
                r["uss_mb_p50"],
                r["uss_mb_p95"],
                r["rss_mb_p50"],
                r["total_mb"],
                r["total_mb_per_unit"],
                r["pss_mb_sum"],
                r.get("page_tables_kb_p50") if r.get("page_tables_kb_p50") is not None else math.nan,
                r.get("create_ms_p50", math.nan),
            ]
        )
    print()
    print("Idle sessions vs Jupyter kernels (MB = MiB)")
    print(
        common.table(
            ["kind", "N", "USS p50", "USS p95", "RSS p50", "total", "total / unit", "sum PSS", "page tables kB p50", "create ms p50"],
            rows,
        )
    )
    print("total: sessions = sum(USS) + template RSS once; kernels = sum(USS) + one kernel's shared part (RSS - USS)")
    sess = [r for r in runs if r["kind"] == "session"]
    for r in sess:
        print(f"session N={r['n']}: template RSS {r['template_rss_mb']} MB, cgroup memory p50 {r['cgroup_mb_p50']} MB, create p95 {r['create_ms_p95']} ms")
    kern = next((r for r in runs if r["kind"] == "jupyter-kernel"), None)
    goal: dict[str, Any] = {"goal": f"{GOAL_N:,} idle isolated sessions at <= {GOAL_USS_MB:g} MB USS each", "by_state": {}}
    print()
    for st in sorted({r.get("state", "after-call") for r in sess}):
        big = next((r for r in sess if r.get("state", "after-call") == st and r["n"] >= GOAL_N), None)
        if big is None:
            g: dict[str, Any] = {"status": "NOT RUN", "detail": f"no run with N >= {GOAL_N}"}
        else:
            ok = big["measured"] >= GOAL_N and big["uss_mb_p50"] <= GOAL_USS_MB
            g = {"status": common.verdict(ok), "n": big["n"], "measured": big["measured"], "uss_mb_p50": big["uss_mb_p50"]}
        goal["by_state"][st] = g
        line = f"Goal: {goal['goal']}, sessions {st}: {g['status']}"
        if big is not None:
            line += f" (N={big['n']}, {big['measured']} measured, USS p50 {big['uss_mb_p50']:.2f} MB)"
        print(line)
    statuses = [g["status"] for g in goal["by_state"].values()]
    goal["status"] = "PASS" if statuses and all(x == "PASS" for x in statuses) else ("MISS" if "MISS" in statuses else "NOT RUN")
    if kern and sess:
        # like for like: the kernels also ran the imports and one handler call
        s = next((r for r in reversed(sess) if r.get("state") == "after-call"), sess[-1])
        goal["kernel_over_session_uss_p50"] = round(kern["uss_mb_p50"] / s["uss_mb_p50"], 1)
        goal["kernel_over_session_total_per_unit"] = round(kern["total_mb_per_unit"] / s["total_mb_per_unit"], 1)
    if "kernel_over_session_uss_p50" in goal:
        print(
            f"A Jupyter kernel holds {goal['kernel_over_session_uss_p50']}x the unique memory of a session "
            f"({goal['kernel_over_session_total_per_unit']}x counting shared pages once)"
        )
    return goal


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="density", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="numbers of idle sessions to measure (default 100 1000)")
    ap.add_argument("--kernels", type=int, default=10, help="number of Jupyter kernels (default 10; 0 skips them)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument(
        "--state",
        choices=["after-call", "opened", "both"],
        default="both",
        help="idle sessions made by one call each, opened without a call, or both (default)",
    )
    ap.add_argument(
        "--warmup-hook",
        action="store_true",
        help="deploy with the spec's warmup hook (one handler call in the template before it forks; "
        "each standby then holds its own copies of the pages that call writes)",
    )
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.n) or args.kernels < 0:
        ap.error("--n values must be >= 1 and --kernels >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix="fai-density-")
    os.chmod(root, 0o755)
    started = time.time()
    load0 = common.loadavg()
    runs: list[dict[str, Any]] = []
    try:
        handler_path = common.write_handler(root)
        log(f"[density] sessions: N={sorted(set(args.n))}")
        for st in (["after-call", "opened"] if args.state == "both" else [args.state]):
            runs += asyncio.run(sessions_run(args.n, handler_path, root, st, args.warmup_hook))
        if args.kernels:
            log(f"[density] jupyter kernels: {args.kernels}")
            with common.jupyter_sandbox_env(os.path.join(root, "jupyter")):
                runs.append(asyncio.run(kernels_run(args.kernels)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    goal = print_report(runs)
    print(f"({time.time() - started:.0f} s, load average {load0} -> {common.loadavg()})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": runs, "goal": goal}, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
