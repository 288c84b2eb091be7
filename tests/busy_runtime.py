"""A second runtime on the same host, kept busy: what the suite must hold
beside (no shared uids, ports or cgroups; no timing luck).

    python tests/busy_runtime.py [--sessions 6] [--seconds 3600]

Opens its own Runtime in a temp dir, deploys a function whose calls work a
little and keep state, and keeps that many sessions calling it (plus a warm
pool and a process-holding session) until the time is up or it is killed."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from jupyter_functionai import FunctionSpec, Runtime

CODE = '''
import hashlib, subprocess
def handler(event, ctx):
    n = ctx.session.state.get("n", 0) + 1
    ctx.session.state["n"] = n
    with open(f"{ctx.workdir}/log", "a") as f:
        f.write(hashlib.sha256(str(n).encode()).hexdigest() + "\\n")
    if n % 50 == 0:
        subprocess.run(["/bin/true"], check=True)
    return n
'''


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3600)
    args = ap.parse_args()
    deadline = time.monotonic() + args.seconds
    async with Runtime.open(tempfile.mkdtemp(prefix="fai-busy-")) as rt:
        await rt.deploy(FunctionSpec.from_code("busy", CODE, min_instances=2, memory="256Mi"))
        calls = 0

        async def session(i: int) -> None:
            nonlocal calls
            while time.monotonic() < deadline:
                await rt.invoke("busy", {}, session=f"busy-{i}")
                calls += 1

        async def report() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(30)
                print(f"busy runtime: {calls} calls, {len(rt.live_instances())} live instances", flush=True)

        await asyncio.gather(report(), *(session(i) for i in range(args.sessions)))


if __name__ == "__main__":
    asyncio.run(main())
