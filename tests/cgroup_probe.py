"""Run by tests/test_cgroup_delegation.py as a normal user alone in a cgroup
delegated to it: what the runtime made of it, as one JSON line."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from jupyter_functionai import FunctionSpec, Runtime
from jupyter_functionai.errors import FunctionAIError

HOG = """
def handler(event, ctx):
    if event == "hog":
        blocks = []
        while True:
            blocks.append(bytearray(16 * 1024 * 1024))
    return "ok"
"""

BOMB = """
import os, time
def handler(event, ctx):
    if event != "go":
        return None
    n = 0
    try:
        while n < 500:
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
    except OSError as exc:
        return {"forked": n, "error": type(exc).__name__}
    return {"forked": n, "error": None}
"""

STATE = """
def handler(event, ctx):
    if event is not None:
        ctx.session.state["v"] = event
    return ctx.session.state.get("v")
"""


async def main(data: str) -> dict:
    out: dict = {}
    async with Runtime.open(data) as rt:
        cg = rt.backend.cgroups  # type: ignore[attr-defined]
        out.update(version=cg.version, reason=cg.reason, delegated=cg.delegated)

        async def call(fn, ev, sid):
            try:
                return (await rt.invoke(fn, ev, session=sid)).value
            except FunctionAIError as exc:
                return {"raised": type(exc).__name__, "message": str(exc)}

        await rt.deploy(FunctionSpec.from_code("hog", HOG, memory=64))
        await rt.deploy(FunctionSpec.from_code("state", STATE))
        await rt.deploy(FunctionSpec.from_code("bomb", BOMB, limits={"max_pids": 48}))
        await call("state", "B-STATE", "b")
        out["fine"] = await call("hog", "fine", "h")
        inst = (await rt.describe_session("h"))["instance"]
        out["isolation"] = inst["isolation"]
        name = next(i.cgroup for i in rt.live_instances() if i.id == inst["id"])
        if cg.version == 1:
            with open(os.path.join(cg.bases["memory"], name, "memory.limit_in_bytes")) as f:
                out["limit_bytes"] = int(f.read())
        elif cg.version == 2:
            with open(os.path.join(cg.bases[""], name, "memory.max")) as f:
                out["limit_bytes"] = int(f.read())
        out["hog"] = await call("hog", "hog", "h")
        out["hog_again"] = await call("hog", "fine", "h")
        out["neighbour"] = await call("state", None, "b")
        await call("bomb", None, "p")
        binst = (await rt.describe_session("p"))["instance"]
        bname = next(i.cgroup for i in rt.live_instances() if i.id == binst["id"])
        pids_dir = cg.bases["pids"] if cg.version == 1 else cg.bases[""]
        with open(os.path.join(pids_dir, bname, "pids.max")) as f:
            out["pids_max"] = f.read().strip()
        out["bomb"] = await call("bomb", "go", "p")
        with open(os.path.join(pids_dir, bname, "pids.current")) as f:
            out["pids_current"] = f.read().strip()
    out["after_close"] = sorted({n for b in cg.bases.values() for n in os.listdir(b) if os.path.isdir(os.path.join(b, n))})
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
