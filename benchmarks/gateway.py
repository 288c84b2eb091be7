"""Gateway: warm, session-affine invocations over HTTP vs a bare tornado
handler vs in-process vs a kernel.

In one run, the same tiny handler (a JSON echo):

* ``in-process``: ``Runtime.invoke(..., session=...)`` on a warm session, from
  the benchmark's own event loop (concurrency 1, and 32 sessions at once);
* ``http``: ``POST /functionai/invoke/echo`` to a real Jupyter server with the
  extension (a subprocess), token-authenticated, keep-alive connections, one
  session per connection (concurrency 1 and 32);
* ``bare-tornado``: the ceiling of HTTP on this machine: a plain
  ``tornado.web.RequestHandler`` in its own process doing the same JSON echo
  (no auth, no sandbox), hit by the same client with the same requests;
* ``jupyter-kernel``: an ``execute`` round trip on a warm Jupyter kernel
  (what a kernel-backed tool call costs), concurrency 1.

Absolute rates move with the machine (the same gateway gave 1,491-1,897 req/s
on one machine and 844-1,035 on another), so the goals are ratios measured in
one run: the paths are measured in ``--rounds`` rounds whose order
alternates (in-process, gateway, bare tornado, then the reverse...) so that
machine noise hits both sides of a ratio; the throughput goal is judged on the
median of the rounds' ratios (the pooled ratio is printed beside it), the
latency goal on the p50s of all rounds' calls.  Goals:

* gateway throughput at c=32 >= 0.7x the bare tornado handler's;
* gateway p50 at c=1 adds <= 0.7 ms over in-process ``Runtime.invoke``.

Run: ``python benchmarks/gateway.py [--n 4000] [--rounds 5] [--json PATH]``
(or ``functionai bench gateway``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

HANDLER = "def handler(event, ctx):\n    return {'echo': event}\n"


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(lat_ms: list[float], wall_s: float) -> dict[str, Any]:
    return {
        "p50_ms": round(pct(lat_ms, 50), 4),
        "p95_ms": round(pct(lat_ms, 95), 4),
        "p99_ms": round(pct(lat_ms, 99), 4),
        "n": len(lat_ms),
        "rps": round(len(lat_ms) / wall_s, 1) if wall_s > 0 else None,
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- in-process ---------------------------------------------------------------------------


async def in_process(rt: Any, n: int, conc: int, tag: str) -> tuple[list[float], float]:
    """``n`` invokes from ``conc`` warm sessions at once: (latencies ms, wall s)."""
    sessions = [f"{tag}{i}" for i in range(conc)]
    for s in sessions:  # warm: every session has its live instance
        await rt.invoke("echo", 0, session=s)
    lat: list[float] = []

    async def worker(s: str, count: int) -> None:
        for i in range(count):
            t0 = time.perf_counter()
            r = await rt.invoke("echo", i, session=s)
            lat.append((time.perf_counter() - t0) * 1000)
            assert r.value == {"echo": i}

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s, n // conc) for s in sessions))
    return lat, time.perf_counter() - t0


# -- over HTTP ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Conn:
    """One keep-alive HTTP/1.1 connection (the client must not be the bottleneck)."""

    def __init__(self, port: int, token: str, session: str) -> None:
        self.port, self.token, self.session = port, token, session

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def invoke(self, event: Any) -> tuple[int, bytes, dict[str, str]]:
        body = json.dumps(event).encode()
        head = (
            f"POST /functionai/invoke/echo HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: token {self.token}\r\nX-Functionai-Session-Id: {self.session}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, data, headers

    def close(self) -> None:
        self.writer.close()


async def deploy_over_http(port: int, token: str) -> None:
    body = json.dumps({"name": "echo", "source": {"kind": "code", "code": HANDLER}}).encode()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        (
            f"POST /functionai/api/functions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: token {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    line = await r.readline()
    w.close()
    if b" 201 " not in line:
        raise RuntimeError(f"deploying over HTTP failed: {line!r}")


async def over_http(n: int, conc: int, port: int, token: str, tag: str, affinity: bool = True) -> tuple[list[float], float]:
    """``n`` POSTs over ``conc`` keep-alive connections at once (one session
    each): (latencies ms, wall s). ``affinity`` checks that every answer of a
    session came from the same instance (the gateway's header)."""
    conns = [Conn(port, token, f"{tag}-{i}") for i in range(conc)]
    for c in conns:
        await c.open()
        status, _, _ = await c.invoke(0)  # warm: the session's instance starts here
        assert status == 200, status
    lat: list[float] = []
    instance: dict[str, str] = {}

    async def worker(c: Conn, count: int) -> None:
        for i in range(count):
            t0 = time.perf_counter()
            status, data, headers = await c.invoke(i)
            lat.append((time.perf_counter() - t0) * 1000)
            if status != 200 or json.loads(data) != {"echo": i}:
                raise RuntimeError(f"bad answer {status} {data[:200]!r}")
            if affinity:
                prev = instance.setdefault(c.session, headers["x-functionai-instance-id"])
                if prev != headers["x-functionai-instance-id"]:
                    raise RuntimeError("session affinity broken")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c, n // conc) for c in conns))
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return lat, wall


#: The ceiling: a bare tornado handler doing the same JSON echo, in its own
#: process (as the Jupyter server is), no auth, no sandbox, no access log.
BARE_TORNADO = r"""
import asyncio, json, logging, sys
import tornado.web

class Echo(tornado.web.RequestHandler):
    def post(self):
        event = json.loads(self.request.body)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"echo": event}))

async def main():
    logging.getLogger("tornado.access").disabled = True
    tornado.web.Application([(r"/functionai/invoke/echo", Echo)]).listen(int(sys.argv[1]), "127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start_bare(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", BARE_TORNADO, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the bare tornado server did not start (exit {proc.wait()})")
    return proc


def start_server(root: str, port: int, token: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[k] = os.path.join(root, k.lower())
    args = [
        sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--ServerApp.open_browser=False",
        f"--IdentityProvider.token={token}", f"--FunctionAI.data_dir={os.path.join(root, 'server')}",
        "--ServerApp.jpserver_extensions=jupyter_functionai=True", "--ServerApp.log_level=WARN",
    ]
    if os.geteuid() == 0:
        args.append("--allow-root")
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "server.log"), "wb"))


async def wait_health(port: int, token: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"GET /functionai/api/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: token {token}\r\nConnection: close\r\n\r\n".encode())
            line = await r.readline()
            w.close()
            if b" 200 " in line:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the server did not answer /functionai/api/health")


# -- a Jupyter kernel execute round trip -----------------------------------------------------


def kernel_round_trip(n: int) -> dict[str, Any]:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.execute_interactive("def handler(e):\n    return {'echo': e}\n", timeout=30)
        lat: list[float] = []
        t0 = time.perf_counter()
        for i in range(n):
            t1 = time.perf_counter()
            reply = kc.execute_interactive(f"handler({i})", timeout=30, output_hook=lambda _m: None)
            lat.append((time.perf_counter() - t1) * 1000)
            assert reply["content"]["status"] == "ok"
        return summary(lat, time.perf_counter() - t0)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# -- main ----------------------------------------------------------------------------------------

#: The goals, as ratios measured in this run (absolute rates move with the machine).
GOAL_C32_FRACTION = 0.7  # gateway req/s at c=32 over the bare tornado handler's, at least
GOAL_ADDED_P50_MS = 0.7  # gateway p50 at c=1 minus in-process p50, at most


def cpu_s(pid: int | None) -> float:
    """CPU time (user + system) process ``pid`` has used, in seconds."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    n: int, rounds: int, root: str, port: int, token: str, bare_port: int, pids: dict[str, int] | None = None
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Every path, in ``rounds`` rounds whose order alternates: pooled
    summaries per path, and each path's req/s per round. ``pids`` (path ->
    the serving process) adds that process's CPU time per request to the
    path's summary (``server_cpu_ms``)."""
    from jupyter_functionai import FunctionSpec, Runtime

    per = max(64, n // rounds)
    lat: dict[str, list[float]] = {}
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    pids = pids or {}
    async with Runtime.open(os.path.join(root, "inproc")) as rt:
        await rt.deploy(FunctionSpec.from_code("echo", HANDLER))
        steps = {
            "in-process-c1": lambda: in_process(rt, per, 1, "one"),
            "http-c1": lambda: over_http(per, 1, port, token, "one"),
            "bare-tornado-c1": lambda: over_http(per, 1, bare_port, token, "one", affinity=False),
            "in-process-c32": lambda: in_process(rt, per, 32, "many"),
            "http-c32": lambda: over_http(per, 32, port, token, "many"),
            "bare-tornado-c32": lambda: over_http(per, 32, bare_port, token, "many", affinity=False),
        }
        names = list(steps)
        for r in range(rounds):
            log(f"[gateway] round {r + 1} of {rounds}")
            for name in names if r % 2 == 0 else names[::-1]:
                c0 = cpu_s(pids.get(name))
                ls, w = await steps[name]()
                cpu[name] = cpu.get(name, 0.0) + cpu_s(pids.get(name)) - c0
                lat.setdefault(name, []).extend(ls)
                wall[name] = wall.get(name, 0.0) + w
                per_round.setdefault(name, []).append(len(ls) / w)
    paths = {name: summary(lat[name], wall[name]) for name in steps}
    for name in pids:
        paths[name]["server_cpu_ms"] = round(cpu[name] * 1000 / len(lat[name]), 4)
    return paths, per_round


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="invocations per path, over all rounds (default 4000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds the paths are measured in, in alternating order (default 5)")
    ap.add_argument("--kernel-n", type=int, default=300, help="kernel round trips (default 300; 0 skips)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.n < 64:
        ap.error("--n must be >= 64")
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    root = tempfile.mkdtemp(prefix="fai-gateway-")
    os.chmod(root, 0o755)
    paths: dict[str, Any] = {}
    port, bare_port, token = free_port(), free_port(), secrets.token_hex(16)
    server = start_server(root, port, token)
    bare: subprocess.Popen[str] | None = None
    try:
        bare = start_bare(bare_port)
        asyncio.run(wait_health(port, token))
        asyncio.run(deploy_over_http(port, token))
        pids = {"http-c32": server.pid, "bare-tornado-c32": bare.pid}
        paths, per_round = asyncio.run(measure(args.n, args.rounds, root, port, token, bare_port, pids))
        if args.kernel_n:
            log("[gateway] jupyter kernel execute c=1")
            paths["jupyter-kernel-c1"] = kernel_round_trip(args.kernel_n)
    finally:
        for proc in (server, bare):
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    added = paths["http-c1"]["p50_ms"] - paths["in-process-c1"]["p50_ms"]
    round_fractions = [g / b for g, b in zip(per_round["http-c32"], per_round["bare-tornado-c32"], strict=True)]
    fraction = statistics.median(round_fractions)
    ratios: dict[str, Any] = {
        "http_c32_over_bare_tornado": round(fraction, 3),
        "http_c32_over_bare_tornado_per_round": [round(x, 3) for x in round_fractions],
        "http_c32_over_bare_tornado_pooled": round(paths["http-c32"]["rps"] / paths["bare-tornado-c32"]["rps"], 3),
        "http_added_p50_ms": round(added, 4),
        "http_over_inprocess_p50": round(paths["http-c1"]["p50_ms"] / paths["in-process-c1"]["p50_ms"], 2),
        "bare_tornado_added_p50_ms": round(paths["bare-tornado-c1"]["p50_ms"] - paths["in-process-c1"]["p50_ms"], 4),
        "http_over_bare_tornado_p50_c1": round(paths["http-c1"]["p50_ms"] / paths["bare-tornado-c1"]["p50_ms"], 2),
        "http_c32_rps": paths["http-c32"]["rps"],
        "bare_tornado_c32_rps": paths["bare-tornado-c32"]["rps"],
        # where the throughput goes: the serving process's CPU per request at c=32
        "http_c32_server_cpu_ms": paths["http-c32"].get("server_cpu_ms"),
        "bare_tornado_c32_server_cpu_ms": paths["bare-tornado-c32"].get("server_cpu_ms"),
    }
    if "jupyter-kernel-c1" in paths:
        ratios["kernel_over_http_p50"] = round(paths["jupyter-kernel-c1"]["p50_ms"] / paths["http-c1"]["p50_ms"], 2)
    print(f"\nWarm, session-affine invocations of a tiny handler ({args.rounds} alternating rounds, pooled)")
    print(f"| {'path':18} | {'n':>5} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | {'req/s':>8} |")
    print(f"|{'-' * 20}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for name, p in paths.items():
        print(f"| {name:18} | {p['n']:>5} | {p['p50_ms']:>7.3f} | {p['p95_ms']:>7.3f} | {p['p99_ms']:>7.3f} | {p['rps']:>8.0f} |")
    goals = {
        f"gateway req/s at c=32 over bare tornado >= {GOAL_C32_FRACTION}": (round(fraction, 3), fraction >= GOAL_C32_FRACTION),
        f"gateway p50 at c=1 minus in-process p50 <= {GOAL_ADDED_P50_MS} ms": (round(added, 4), added <= GOAL_ADDED_P50_MS),
    }
    print("\nGoals (ratios measured in this run):")
    for g, (v, ok) in goals.items():
        print(f"  {g:58} {'PASS' if ok else 'MISS'}  (measured {v})")
    print(
        f"  context: gateway {paths['http-c32']['rps']:.0f} req/s vs bare tornado {paths['bare-tornado-c32']['rps']:.0f} req/s at c=32 "
        f"(pooled {ratios['http_c32_over_bare_tornado_pooled']:.2f}x; per round {', '.join(f'{x:.2f}' for x in round_fractions)}); "
        f"p50 at c=1: in-process {paths['in-process-c1']['p50_ms']:.3f} ms, "
        f"bare tornado {paths['bare-tornado-c1']['p50_ms']:.3f} ms, gateway {paths['http-c1']['p50_ms']:.3f} ms"
    )
    for k, v in ratios.items():
        print(f"  {k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"paths": paths, "ratios": ratios, "goals": {g: {"value": v, "pass": ok} for g, (v, ok) in goals.items()}}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
