"""Cold start of a new session, end to end, on eleven paths.

Measured: the time from the caller asking for a *new* session's first call
until that call's result is back at the caller (``time.perf_counter``), for a
function whose module imports numpy and pandas at top level and whose handler
does a small pandas computation.

Paths::

    warm-pool            new session served by a pre-forked, isolated pool instance
    warm-pool-nometer    the same with the usage meter off (what metering costs: (a) minus this)
    template-fork        new session forked from the template, full isolation (min_instances=0)
    template-fork-nometer  the same with the usage meter off
    template-fork-noiso  the same fork with isolation switched off (isolate=False)
    template-fork-noseccomp  the same fork, full isolation but the spec's ``seccomp: "off"``
                         (what the default seccomp filter costs: (b) minus this)
    template-fork-warmup the same fork, full isolation, with the spec's ``warmup`` hook: the
                         template pre-initialised by one handler call, and each standby
                         holding its own copies of the pages that call writes
    template-fork-nodisk the same fork, full isolation but the spec's ``disk: 0`` (what
                         the session's own disk image costs: (b) minus this)
    fresh                a new interpreter per instance (use_templates=False)
    jupyter-kernel       a fresh Jupyter kernel per session (start + ready + run the
                         same imports and handler + result back)
    fork-floor           this process (imports held) forks; the child runs the handler
                         and writes the JSON result to a pipe; nothing cheaper can serve
                         a new session from a forked process

With ``--profile``, every runtime sample is a traced call (``Runtime.invoke(...,
trace=...)``: ``time.perf_counter`` at each step, in the runtime and in the
instance, one monotonic clock for every process of the host) and a table per
path gives the phases of the time, from the caller's request to the result back
at the caller: they follow each other, so their means add up to the mean
end to end (see :data:`PHASES`).

Run: ``python benchmarks/coldstart.py [--n 30] [--profile] [--json PATH]`` (or
``functionai bench coldstart ...``).  Every answer is checked against the
expected value, and every runtime sample's ``cold_start.path`` is checked: a
mismatch aborts the run.  Goal checks are printed as PASS/MISS and do not
change the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

try:  # imported as ``benchmarks.coldstart``
    from . import _common as common
except ImportError:  # run as a script, or loaded from the benchmarks directory
    import _common as common  # type: ignore[no-redef]

PATHS = (
    "warm-pool",
    "warm-pool-nometer",
    "template-fork",
    "template-fork-nometer",
    "template-fork-warmup",
    "template-fork-noiso",
    "template-fork-noseccomp",
    "template-fork-nodisk",
    "fresh",
    "jupyter-kernel",
    "fork-floor",
)
RUNTIME_PATHS = PATHS[:9]
LETTER = {
    "warm-pool": "a",
    "template-fork": "b",
    "template-fork-noiso": "c",
    "fresh": "d",
    "jupyter-kernel": "e",
    "fork-floor": "f",
    "template-fork-noseccomp": "g",
    "template-fork-nodisk": "h",
    "template-fork-warmup": "i",
    "warm-pool-nometer": "j",
    "template-fork-nometer": "k",
}
FN = "bench"


#: The phases of a traced call, each from the trace point before it (the
#: caller's ``t0`` for the first) to its own: (name, trace point, what it is).
PHASES = (
    ("session", "session", "find or open the session (in memory)"),
    ("claim", "claimed", "its instance: the warm pool's, or a fork from the template and its bind"),
    ("session record", "recorded", "the new session's and instance's store rows queued (written behind)"),
    ("frame encode", "encoded", "the call frame built and JSON-encoded"),
    ("write", "written", "the frame written to the instance's socket"),
    ("to worker", "w_received", "until the instance has read it (wake-up, read)"),
    ("worker decode", "w_decoded", "the instance decodes the frame"),
    ("attach", "w_attached", "a warm-pool instance takes on its session"),
    ("call setup", "w_handler_start", "the handler's context"),
    ("handler", "w_handler_end", "the handler itself"),
    ("result", "w_sending", "result checked and encoded, session state compared"),
    ("back + decode", "decoded", "the answer sent, read by the runtime, decoded and validated"),
    ("resolve", "resumed", "the waiting call resumes"),
    ("store write", "stored", "a changed session state committed (WAL, synchronous=NORMAL)"),
    ("finish", "finished", "bookkeeping queued, the result built"),
    ("return", "end", "back at the caller (no HTTP)"),
)


@dataclass
class Samples:
    name: str
    ms: list[float] = field(default_factory=list)
    split: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    isolation: dict[str, Any] | None = None
    phases: dict[str, list[float]] = field(default_factory=dict)
    #: how many timed samples had each thing made ahead (the isolation
    #: report's ``ahead``: "process", "pages", "disk", ...)
    ahead: dict[str, int] = field(default_factory=dict)

    def add_trace(self, t0: float, trace: dict[str, float]) -> None:
        """One traced sample's phases (ms); a point missing from the trace
        (no attach on a fork) makes a phase of 0 ms."""
        prev = t0
        for name, point, _ in PHASES:
            at = trace.get(point, prev)
            self.phases.setdefault(name, []).append((at - prev) * 1000)
            prev = at

    def add_split(self, **parts: float) -> None:
        for k, v in parts.items():
            self.split.setdefault(k, []).append(v)

    def merge(self, other: Samples) -> None:
        """Add another round's samples of the same path."""
        self.ms.extend(other.ms)
        for k, v in other.split.items():
            self.split.setdefault(k, []).extend(v)
        for k, v in other.phases.items():
            self.phases.setdefault(k, []).extend(v)
        self.notes.extend(n for n in other.notes if n not in self.notes)
        for k, c in other.ahead.items():
            self.ahead[k] = self.ahead.get(k, 0) + c
        if self.isolation is None:
            self.isolation = other.isolation

    @property
    def p50(self) -> float:
        return common.percentile(self.ms, 50)

    @property
    def p95(self) -> float:
        return common.percentile(self.ms, 95)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- runtime paths (a-d) ------------------------------------------------------------


async def _quiesce(rt: Any) -> None:
    """Let the runtime's deferred store writes land before a timed sample
    (``coldstarts`` flushes them)."""
    await rt.coldstarts(FN, limit=1)


def _isolation_summary(iso: dict[str, Any]) -> dict[str, Any]:
    return {
        "namespaces": sorted(k for k, v in (iso.get("namespaces") or {}).items() if v),
        "cgroup": iso.get("cgroup"),
        "uid": iso.get("uid"),
        "private_tmp": iso.get("private_tmp"),
        "seccomp": iso.get("seccomp"),
        "disk": iso.get("disk"),
        "disk_mb": iso.get("disk_mb"),
        "missing": iso.get("missing") or {},
    }


def _cold_path(name: str) -> str:
    """The ``cold_start.path`` a runtime path's samples must take."""
    for variant in ("-noiso", "-noseccomp", "-nodisk", "-warmup", "-nometer"):
        name = name.removesuffix(variant)
    return name


async def runtime_path(
    name: str,
    handler_path: str,
    state_root: str,
    n: int,
    warmup: int,
    gap_s: float,
    pool_warmup: bool = False,
    profile: bool = False,
) -> Samples:
    from jupyter_functionai import FunctionSpec, Runtime

    pooled = name.startswith("warm-pool")
    kw = {
        "warm-pool": {"use_templates": True, "isolate": True},
        "warm-pool-nometer": {"use_templates": True, "isolate": True, "metering": False},
        "template-fork": {"use_templates": True, "isolate": True},
        "template-fork-nometer": {"use_templates": True, "isolate": True, "metering": False},
        "template-fork-noiso": {"use_templates": True, "isolate": False},
        "template-fork-noseccomp": {"use_templates": True, "isolate": True},
        "template-fork-nodisk": {"use_templates": True, "isolate": True},
        "template-fork-warmup": {"use_templates": True, "isolate": True},
        "fresh": {"use_templates": False, "isolate": True},
    }[name]
    out = Samples(name)
    state_dir = tempfile.mkdtemp(prefix=f"{name}-", dir=state_root)
    async with Runtime.open(state_dir, **kw) as rt:
        extra: dict[str, Any] = {"warmup": "warmup"} if pooled and pool_warmup else {}
        if name == "template-fork-noseccomp":
            extra["seccomp"] = "off"
        if name == "template-fork-nodisk":
            extra["disk"] = 0
        if name == "template-fork-warmup":
            extra["warmup"] = "warmup"
        await rt.deploy(FunctionSpec.from_file(FN, handler_path, min_instances=2 if pooled else 0, **extra))
        for i in range(warmup + n):
            timed = i >= warmup
            sid = f"{name}-{i}"
            x = i % 50
            await _quiesce(rt)
            if pooled:
                await rt.pool.wait_full(FN)
                ready = rt.pool.sizes()[FN]["ready"]
                if not ready:
                    raise RuntimeError(f"warm-pool: the pool is empty before sample {i}: {rt.pool.sizes()}")
            if gap_s:
                await asyncio.sleep(gap_s)
            trace: dict[str, float] | None = {} if profile else None
            t0 = time.perf_counter()
            r = await rt.invoke(FN, {"x": x}, session=sid, trace=trace)
            t1 = time.perf_counter()
            dt = (t1 - t0) * 1000
            cs = r.cold_start
            if cs is None or cs.path != _cold_path(name):
                raise RuntimeError(
                    f"{name}: sample {i} took path {cs.path if cs else None!r}, not {name!r} "
                    f"(pool: {rt.pool.sizes()}): the measurement would be wrong"
                )
            common.check_value(name, r.value, x)
            inst = next((j for j in rt.live_instances() if j.id == r.instance_id), None)
            if inst is not None:
                if out.isolation is None:
                    out.isolation = _isolation_summary(inst.isolation)
                if timed:
                    for k in inst.isolation.get("ahead") or []:
                        out.ahead[k] = out.ahead.get(k, 0) + 1
            await rt.close_session(sid)
            if timed:
                out.ms.append(dt)
                if trace is not None:
                    trace["end"] = t1
                    out.add_trace(t0, trace)
                if pooled:
                    # the pool instance was spawned and pre-bound (init) before the
                    # session existed: only its first call is on the critical path
                    out.add_split(init_before_session=cs.init_ms, first_call=cs.first_call_ms, other=dt - cs.first_call_ms)
                else:
                    out.add_split(
                        spawn=cs.spawn_ms,
                        init=cs.init_ms,
                        first_call=cs.first_call_ms,
                        other=dt - cs.total_ms,
                    )
        # let the template report the last instance's exit before closing: the
        # runtime removes an instance's cgroup only on that report
        await asyncio.sleep(0.3)
    shutil.rmtree(state_dir, ignore_errors=True)
    return out


# -- Jupyter kernel path (e) --------------------------------------------------------------


async def kernel_path(n: int, warmup: int) -> Samples:
    from jupyter_client.manager import AsyncKernelManager

    out = Samples("jupyter-kernel")
    for i in range(warmup + n):
        x = i % 50
        km = AsyncKernelManager(kernel_name="python3")
        kc = None
        try:
            t0 = time.perf_counter()
            # the kernel's stderr only carries its TCP-without-encryption warning here
            await km.start_kernel(stderr=subprocess.DEVNULL)
            t1 = time.perf_counter()
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=120)
            t2 = time.perf_counter()
            text = await common.kernel_execute(kc, common.KERNEL_SETUP, f"_json.dumps(handler({{'x': {x}}}, None))")
            t3 = time.perf_counter()
        finally:
            if kc is not None:
                kc.stop_channels()
            await km.shutdown_kernel(now=True)
        common.check_value("jupyter-kernel", json.loads(text), x)
        if i >= warmup:
            out.ms.append((t3 - t0) * 1000)
            out.add_split(start=(t1 - t0) * 1000, ready=(t2 - t1) * 1000, execute=(t3 - t2) * 1000)
    return out


# -- fork floor (f) ---------------------------------------------------------------------------


def _fork_once(handler: Any, x: int) -> tuple[float, Any]:
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: run the handler, result over the pipe, exit
        code = 1
        try:
            os.close(r)
            data = json.dumps(handler({"x": x}, None), separators=(",", ":")).encode() + b"\n"
            while data:
                data = data[os.write(w, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(r, 65536)
        if not chunk:
            break
        buf += chunk
    dt = (time.perf_counter() - t0) * 1000
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not buf:
        raise RuntimeError(f"fork-floor: the child failed (wait status {status})")
    return dt, json.loads(buf)


def _note(out: Samples, text: str) -> None:
    if text not in out.notes:  # the same parent, round after round
        out.notes.append(text)


def fork_floor(out: Samples, handler: Any, n: int, warmup: int, label: str) -> None:
    # like the runtime's template: freeze the heap so children do not copy it on a collection
    gc.collect()
    gc.freeze()
    st = common.proc_status()
    _note(
        out,
        f"fork-floor ({label}): parent RSS {st.get('VmRSS', 0) / 1024:.0f} MiB, "
        f"page tables {st.get('VmPTE', 0)} kB, {st.get('Threads', 0)} thread(s)"
    )
    try:
        for i in range(warmup + n):
            x = i % 50
            dt, val = _fork_once(handler, x)
            common.check_value("fork-floor", val, x)
            if i >= warmup:
                out.ms.append(dt)
                out.add_split(**{f"fork+call ({label})": dt})
    finally:
        gc.unfreeze()


# -- report --------------------------------------------------------------------------------------


def _num(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def build_report(results: dict[str, Samples], meta: dict[str, Any]) -> dict[str, Any]:
    base = results.get("template-fork")
    paths: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for name in PATHS:
        s = results.get(name)
        if s is None:
            continue
        paths[name] = {
            "p50_ms": _num(s.p50),
            "p95_ms": _num(s.p95),
            "n": len(s.ms),
            "mean_ms": _num(common.mean(s.ms)),
            "min_ms": _num(min(s.ms)) if s.ms else None,
            "max_ms": _num(max(s.ms)) if s.ms else None,
            "split_mean_ms": {k: _num(common.mean(v)) for k, v in s.split.items()},
        }
        if s.phases:
            paths[name]["phases"] = {k: {"mean_ms": _num(common.mean(v)), "p50_ms": _num(common.percentile(v, 50))} for k, v in s.phases.items()}
        if s.isolation is not None:
            paths[name]["isolation"] = s.isolation
        if s.ahead:
            paths[name]["ahead"] = dict(s.ahead)
        if s.notes:
            paths[name]["notes"] = s.notes
        if base is not None and base.ms:
            ratios[f"{name}/template-fork"] = {"p50": _num(s.p50 / base.p50), "p95": _num(s.p95 / base.p95)}
    goals = {}
    f, a, e = results.get("fork-floor"), results.get("warm-pool"), results.get("jupyter-kernel")
    if base is not None and f is not None:
        goals["(b) p50 <= 2x (f) p50"] = {"value": _num(base.p50 / f.p50), "target": 2.0, "pass": base.p50 <= 2 * f.p50}
        goals["(b) p95 <= 3x (f) p95"] = {"value": _num(base.p95 / f.p95), "target": 3.0, "pass": base.p95 <= 3 * f.p95}
    if base is not None and e is not None:
        goals["(e)/(b) p50 >= 80"] = {"value": _num(e.p50 / base.p50), "target": 80.0, "pass": e.p50 / base.p50 >= 80}
    if a is not None:
        goals["(a) p50 <= 1 ms"] = {"value": _num(a.p50), "target": 1.0, "pass": a.p50 <= 1.0}
    for on, off in (("warm-pool", "warm-pool-nometer"), ("template-fork", "template-fork-nometer")):
        s_on, s_off = results.get(on), results.get(off)
        if s_on is not None and s_off is not None and s_on.ms and s_off.ms:
            over = s_on.p50 / s_off.p50 - 1
            goals[f"metering costs {on} p50 <= 2%"] = {"value": _num(over * 100), "target": 2.0, "pass": over <= 0.02}
    return {"paths": paths, "ratios": ratios, "goals": goals, "meta": meta}


def print_report(results: dict[str, Samples], report: dict[str, Any]) -> None:
    rows = []
    base = results.get("template-fork")
    for name in PATHS:
        s = results.get(name)
        if s is None:
            continue
        r50 = s.p50 / base.p50 if base else math.nan
        r95 = s.p95 / base.p95 if base else math.nan
        split = ", ".join(f"{k} {common.mean(v):.2f}" for k, v in s.split.items() if not k.startswith("fork+call"))
        rows.append(
            [
                f"({LETTER[name]}) {name}",
                len(s.ms),
                s.p50,
                s.p95,
                common.mean(s.ms),
                min(s.ms),
                max(s.ms),
                "-" if math.isnan(r50) else f"{r50:.2f}x",
                "-" if math.isnan(r95) else f"{r95:.2f}x",
                split or "-",
            ]
        )
    print()
    print("New session: time until its first result is back at the caller (ms)")
    print(common.table(["path", "n", "p50", "p95", "mean", "min", "max", "p50 / (b)", "p95 / (b)", "mean split (ms)"], rows))
    f = results.get("fork-floor")
    if f is not None:
        parts = {k: v for k, v in f.split.items()}
        print("fork-floor runs: " + "; ".join(f"{k}: n={len(v)} p50 {common.percentile(v, 50):.2f} ms" for k, v in parts.items()))
        for note in f.notes:
            print(note)
    for name, s in results.items():
        if s.isolation is not None:
            iso = s.isolation
            made = ", ".join(f"{k} {c}/{len(s.ms)}" for k, c in s.ahead.items()) or "-"
            print(f"isolation of {name}: namespaces={','.join(iso['namespaces']) or 'none'} cgroup={iso['cgroup']} uid={iso['uid']} private_tmp={iso['private_tmp']} seccomp={iso.get('seccomp')} disk={iso.get('disk')}:{iso.get('disk_mb')}; made ahead: {made}")
    for s in results.values():
        if s.phases:
            print_phases(s)
    print()
    print("Goals (informational):")
    for goal, g in report["goals"].items():
        print(f"  {goal:<24} {common.verdict(g['pass'])}  (value {g['value']}, target {g['target']})")


def print_phases(s: Samples) -> None:
    """Where a path's time goes: its phases' means add up to its mean."""
    total = common.mean(s.ms)
    rows = []
    for name, _, what in PHASES:
        v = s.phases.get(name, [])
        m = common.mean(v)
        rows.append([name, m, common.percentile(v, 50), f"{m / total:.0%}" if total else "-", what])
    summed = sum(common.mean(v) for v in s.phases.values())
    rows.append(["sum of the phases", summed, "-", f"{summed / total:.0%}" if total else "-", f"end to end: mean {total:.3f} ms, p50 {s.p50:.3f} ms"])
    print()
    print(f"Phases of ({LETTER[s.name]}) {s.name} (ms; traced calls, n={len(s.ms)}; the means add up to the mean end to end)")
    print(common.table(["phase", "mean", "p50", "share", "what"], rows))


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="coldstart", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30, help="timed samples per path (default 30)")
    ap.add_argument("--kernel-n", type=int, default=None, help="timed samples for jupyter-kernel (default: --n)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed samples before each path (default 3)")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="split each path's samples over this many rounds, in alternating order, with fork-floor samples "
        "before and after each round, so that machine noise drifting during the run hits every path alike (default 3)",
    )
    ap.add_argument("--gap-ms", type=float, default=0.0, help="idle pause before each runtime sample (default 0)")
    ap.add_argument(
        "--pool-warmup",
        choices=("auto", "on", "off"),
        default="auto",
        help="deploy the warm-pool function with the spec's warmup hook (priming each pooled instance "
        "with one handler call); auto: on when this runtime's FunctionSpec has the field (default)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="trace every runtime sample and print where each path's time goes, phase by phase (the means add up to the end to end)",
    )
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    if args.n < 1 or (args.kernel_n is not None and args.kernel_n < 1) or args.warmup < 0 or args.rounds < 1:
        ap.error("--n, --kernel-n and --rounds must be >= 1, --warmup >= 0")
    chosen = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in chosen if p not in PATHS]
    if bad or not chosen:
        ap.error(f"unknown path(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(PATHS)}")
    args.paths = chosen
    return args


def _pool_warmup(choice: str) -> bool:
    import dataclasses

    from jupyter_functionai import FunctionSpec

    supported = "warmup" in {f.name for f in dataclasses.fields(FunctionSpec)}
    if choice == "on" and not supported:
        raise SystemExit("coldstart: --pool-warmup on: this runtime's FunctionSpec has no 'warmup' field")
    return supported if choice == "auto" else choice == "on"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n, kn, warmup = args.n, args.kernel_n or args.n, args.warmup
    gap_s = args.gap_ms / 1000
    pool_warmup = _pool_warmup(args.pool_warmup)
    results: dict[str, Samples] = {}
    root = tempfile.mkdtemp(prefix="fai-coldstart-")
    os.chmod(root, 0o755)
    started = time.time()
    load0 = common.loadavg()
    try:
        handler_path = common.write_handler(root)
        module = common.load_module(handler_path)
        names = [m for m in RUNTIME_PATHS if m in args.paths]
        for name in names:
            results[name] = Samples(name)
        if "fork-floor" in args.paths:
            results["fork-floor"] = Samples("fork-floor")
        rounds = min(args.rounds, n)
        sizes = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
        for r, size in enumerate(sizes):
            # alternating order: a path measured early in one round is measured
            # late in the next, and the floor brackets every round
            if "fork-floor" in args.paths:
                log(f"[coldstart] round {r + 1}/{rounds}: fork-floor, n={size}")
                fork_floor(results["fork-floor"], module.handler, size, warmup, "before" if r % 2 == 0 else "after")
            for name in names if r % 2 == 0 else names[::-1]:
                log(f"[coldstart] round {r + 1}/{rounds}: {name}, n={size}")
                results[name].merge(asyncio.run(runtime_path(name, handler_path, root, size, warmup, gap_s, pool_warmup, args.profile)))
            if "fork-floor" in args.paths:
                log(f"[coldstart] round {r + 1}/{rounds}: fork-floor, n={size}")
                fork_floor(results["fork-floor"], module.handler, size, warmup, "after" if r % 2 == 0 else "before")
        if "jupyter-kernel" in args.paths:
            log(f"[coldstart] jupyter-kernel, n={kn}")
            with common.jupyter_sandbox_env(os.path.join(root, "jupyter")):
                results["jupyter-kernel"] = asyncio.run(kernel_path(kn, warmup))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta = {
        "n": n,
        "kernel_n": kn,
        "warmup": warmup,
        "gap_ms": args.gap_ms,
        "profile": args.profile,
        "pool_warmup_hook": pool_warmup,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "euid": os.geteuid(),
        "elapsed_s": round(time.time() - started, 1),
        "loadavg_start": load0,
        "loadavg_end": common.loadavg(),
        "definition": "perf_counter from the caller's request for a new session until its first result is back at the caller",
        "rounds": min(args.rounds, n),
        "fork-floor": "2n samples: before and after each round's runtime paths (all used); timing stops when the result line is read, "
        "the child is reaped afterwards",
    }
    report = build_report(results, meta)
    print(f"samples: n={n} per path in {meta['rounds']} round(s) of alternating order, jupyter-kernel n={kn}, "
          f"fork-floor n={len(results['fork-floor'].ms) if 'fork-floor' in results else 0} (before and after each round; "
          f"warm-up {warmup} untimed per path and round), {meta['elapsed_s']} s, load average {load0} -> {meta['loadavg_end']}")
    print(f"warm-pool: min_instances=2, pool refilled before each sample, spec warmup hook {'on' if pool_warmup else 'off'}")
    print("split: mean of the runtime's ColdStart parts; 'other' = end-to-end minus those parts (the warm-pool's spawn "
          "happened before the session existed and is left out)")
    print_report(results, report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2, allow_nan=False)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
