"""MCP: a tool call through the hosted endpoint vs a bare ``MCPServer``.

In one run, the same tool (``echo(x: int) -> int``) called with the official
``mcp`` client over streamable HTTP on loopback, one MCP session each,
calls interleaved in rounds so both see the same machine:

* ``bare``: ``mcp.server.mcpserver.MCPServer`` serving the tool in a process
  of its own (``run_streamable_http_async``): no auth, no sandbox;
* ``hosted``: the tool published with ``jupyter_functionai.tool`` on a
  ``functionai serve`` subprocess: token auth, the call runs in the MCP
  session's sandbox instance.

Then the first call of a new MCP session on a hosted stdio server (a small
``MCPServer`` over stdio): ``initialize`` + ``tools/call``, where the server
starts a sandbox and the stdio process in it.

Goal (for the note): hosted/bare <= 1.2 at p50.

Run: ``python benchmarks/mcp.py [--n 500] [--json PATH]`` (or ``functionai bench mcp``).
"""

from __future__ import annotations

import os as _os
import sys as _sys

# run as a script, this file's folder comes first on sys.path, and this
# file's name would hide the ``mcp`` package: look there last
_here = _os.path.dirname(_os.path.abspath(__file__))
_sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _here] + [_here]

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from typing import Any


def echo(x: int) -> int:
    """Return x.

    Args:
        x: a number
    """
    return x


BARE = textwrap.dedent(
    """
    import asyncio, sys
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("bare")

    @app.tool()
    def echo(x: int) -> int:
        \"\"\"Return x.\"\"\"
        return x

    asyncio.run(app.run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[1]), json_response=True))
    """
)

STDIO = textwrap.dedent(
    """
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("stdio-bench")

    @app.tool()
    def echo(x: int) -> int:
        \"\"\"Return x.\"\"\"
        return x

    app.run()
    """
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def summary(lat: list[float]) -> dict[str, Any]:
    return {"n": len(lat), "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3), "mean_ms": round(sum(lat) / len(lat), 3)}


async def measure(urls: dict[str, tuple[str, dict[str, str]]], n: int, rounds: int = 10) -> dict[str, list[float]]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    lat: dict[str, list[float]] = {k: [] for k in urls}
    async with (
        httpx2.AsyncClient(headers=urls["bare"][1], timeout=60) as hb,
        httpx2.AsyncClient(headers=urls["hosted"][1], timeout=60) as hh,
        Client(streamable_http_client(urls["bare"][0], http_client=hb)) as bare,
        Client(streamable_http_client(urls["hosted"][0], http_client=hh)) as hosted,
    ):
        clients = {"bare": bare, "hosted": hosted}
        for c in clients.values():  # warm: the hosted session's sandbox starts here
            for i in range(20):
                r = await c.call_tool("echo", {"x": i})
                assert not r.is_error, r
        per = max(1, n // rounds)
        for _ in range(rounds):
            for name, c in clients.items():
                for i in range(per):
                    t0 = time.perf_counter()
                    r = await c.call_tool("echo", {"x": i})
                    lat[name].append((time.perf_counter() - t0) * 1000)
                    assert not r.is_error and r.structured_content == {"result": i}, r
    return lat


async def first_calls(url: str, headers: dict[str, str], n: int) -> list[float]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    out = []
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        for i in range(n):
            t0 = time.perf_counter()
            async with Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
                r = await c.call_tool("echo", {"x": i})
                out.append((time.perf_counter() - t0) * 1000)
                assert not r.is_error, r
    return out


def run(n: int, sessions: int) -> dict[str, Any]:
    from jupyter_functionai import tool
    from jupyter_functionai.client import Client as Fai

    tmp = tempfile.mkdtemp(prefix="fai-bench-mcp-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNCTIONAI_", "JUPYTER_"))}
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime")):
        os.makedirs(os.path.join(tmp, sub))
        env[var] = os.path.join(tmp, sub)
    port, bare_port, token = free_port(), free_port(), secrets.token_hex(16)
    procs = []
    try:
        log("starting functionai serve and a bare MCPServer")
        srv = subprocess.Popen(
            [sys.executable, "-m", "jupyter_functionai", "serve", "--port", str(port), "--ip", "127.0.0.1", "--token", token, "--data-dir", os.path.join(tmp, "fai")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp,
        )
        procs.append(srv)
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(bare)
        wait_port(port, srv, "functionai serve")
        wait_port(bare_port, bare, "the bare MCPServer")
        fai = Fai(f"http://127.0.0.1:{port}", token)
        deadline = time.monotonic() + 60
        while True:
            try:
                fai.health()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        tool("bench", client=fai)(echo)
        fai.mcp_add("stdio-bench", [sys.executable, "-c", STDIO])  # no file: /tmp is hidden in the sandbox
        auth = {"Authorization": f"token {token}"}
        urls = {"bare": (f"http://127.0.0.1:{bare_port}/mcp", {}), "hosted": (fai.mcp_url("bench"), auth)}
        log(f"{n} calls each, interleaved")
        lat = asyncio.run(measure(urls, n))
        log(f"first call of {sessions} new MCP sessions on a hosted stdio server")
        first = asyncio.run(first_calls(fai.mcp_url("stdio-bench"), auth, sessions))
        fn_first = asyncio.run(first_calls(fai.mcp_url("bench"), auth, sessions))
        return {
            "bare": summary(lat["bare"]),
            "hosted": summary(lat["hosted"]),
            "stdio_first_call": summary(first),
            "function_first_call": summary(fn_first),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def report(res: dict[str, Any]) -> None:
    print(f"{'path':<44} {'p50 ms':>8} {'p99 ms':>8} {'n':>6}")
    labels = {
        "bare": "bare MCPServer (streamable HTTP)",
        "hosted": "hosted function tool (auth + sandbox)",
        "function_first_call": "new session, function tool: init + 1st call",
        "stdio_first_call": "new session, stdio server: init + 1st call",
    }
    for key, label in labels.items():
        v = res[key]
        print(f"{label:<44} {v['p50_ms']:>8} {v['p99_ms']:>8} {v['n']:>6}")
    ratio = res["hosted"]["p50_ms"] / res["bare"]["p50_ms"]
    res["hosted_over_bare_p50"] = round(ratio, 3)
    print(f"hosted/bare at p50: {ratio:.2f}x (goal <= 1.2: {'PASS' if ratio <= 1.2 else 'MISS'}); "
          f"at p99: {res['hosted']['p99_ms'] / res['bare']['p99_ms']:.2f}x")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="tool calls per path (default 500)")
    ap.add_argument("--sessions", type=int, default=10, help="new MCP sessions for the first-call figure (default 10)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    res = run(args.n, args.sessions)
    report(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
