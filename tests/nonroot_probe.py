"""Run by tests/test_isolation_nonroot.py as a *normal user* (not collected).

Opens a real Runtime in the data directory given on the command line, deploys
a probe handler, lets session A plant a file and state, has session B attack
the server's and the user's files from inside its sandbox, then checks A
still answers with its own file and state. Prints one JSON object.

argv[1]: a JSON object {"data": dir, "port": int, "targets": {name: path},
"starts": int, "required": [...]}
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from jupyter_functionai import FunctionSpec, Runtime

PROBE = r'''
import ctypes, ctypes.util, errno, json, os, socket

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}

def _libc(ret):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return "done"

def _write(path):
    with open(path, "w") as f:
        f.write("B was here")
    return "written"

def handler(event, ctx):
    op = event["op"]
    if op == "plant":
        with open(os.path.join(ctx.workdir, "secret.txt"), "w") as f:
            f.write("A-SECRET")
        ctx.state["mine"] = "A-STATE"
        return {"workdir": ctx.workdir}
    if op == "mine":
        return {"file": open(os.path.join(ctx.workdir, "secret.txt")).read(), "state": ctx.state.get("mine")}
    if op == "noop":
        return os.getpid()
    if op == "attack":
        t = event["targets"]
        out = {}
        for name, path in t.items():
            out["read:" + name] = attempt(lambda p=path: open(p, "rb").read(200).decode(errors="replace"))
            out["list:" + name] = attempt(lambda p=path: sorted(os.listdir(os.path.dirname(p))))
        def conn():
            s = socket.create_connection(("127.0.0.1", event["port"]), timeout=2)
            data = s.recv(64)
            s.close()
            return data.decode()
        out["connect"] = attempt(conn)
        out["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        out["cmdlines"] = {}
        for p in out["procs"]:
            try:
                out["cmdlines"][p] = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError as exc:
                out["cmdlines"][p] = str(exc)
        out["sys_net"] = sorted(os.listdir("/sys/class/net"))
        out["sys_cgroup"] = attempt(lambda: sorted(os.listdir("/sys/fs/cgroup")))
        out["capeff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
        out["capbnd"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapBnd")][0]
        out["uid"] = os.getuid()
        out["umount"] = {m: attempt(lambda m=m: _libc(libc.umount2(m.encode(), 2))) for m in event["masks"]}
        out["mount_tmpfs"] = attempt(lambda: _libc(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)))
        out["unshare_user"] = attempt(lambda: _libc(libc.unshare(0x10000000)))
        out["write"] = {p: attempt(lambda p=p: _write(p)) for p in event["write"]}
        out["write_tmp"] = attempt(lambda: _write("/tmp/b-ok"))
        out["write_workdir"] = attempt(lambda: _write(os.path.join(ctx.workdir, "b-ok")))
        out["other_workdir"] = attempt(lambda: open(os.path.join(event["a_workdir"], "secret.txt")).read())
        out["other_workdir_list"] = attempt(lambda: os.listdir(os.path.dirname(event["a_workdir"])))
        return out
    raise ValueError(op)
'''


WARMED = """
table = {}


def warmup():
    table.update((i, str(i)) for i in range(1000))


def handler(event, ctx):
    return len(table)
"""


async def main(cfg: dict) -> dict:
    out: dict = {}
    async with Runtime.open(cfg["data"]) as rt:
        await rt.deploy(FunctionSpec.from_code("probe", PROBE, network="none", isolation_required=cfg.get("required", [])))
        a = await rt.invoke("probe", {"op": "plant"}, session="sess-a")
        out["a_workdir"] = a.value["workdir"]
        desc = await rt.describe_session("sess-a")
        out["isolation"] = desc["instance"]["isolation"]
        out["a_pid"] = desc["instance"]["pid"]
        masks = [m for m, _ in rt.backend.mask_plan(rt.function("probe"))]  # type: ignore[attr-defined]
        out["masks"] = masks
        event = {
            "op": "attack",
            "targets": cfg["targets"],
            "port": cfg["port"],
            "masks": masks,
            "write": cfg.get("write", []),
            "a_workdir": out["a_workdir"],
        }
        b = await rt.invoke("probe", event, session="sess-b")
        out["attack"] = b.value
        out["a_after"] = (await rt.invoke("probe", {"op": "mine"}, session="sess-a")).value
        starts, ahead = [], []
        for i in range(int(cfg.get("starts", 0))):
            t0 = time.perf_counter()
            await rt.invoke("probe", {"op": "noop"}, session=f"cold-{i}")
            starts.append((time.perf_counter() - t0) * 1000)
            ahead.append((await rt.describe_session(f"cold-{i}"))["instance"]["isolation"]["ahead"])
            await rt.close_session(f"cold-{i}")
        out["starts_ms"] = starts
        # a function with a warmup hook: its standbys take their own copies of
        # the pages a call writes (sandbox/pages.py), learned as this user
        await rt.deploy(FunctionSpec.from_code("warmed", WARMED, warmup="warmup"))
        await rt.invoke("warmed", None, session="w-first")
        log = os.path.join(rt.backend.log_dir, "template-warmed-v1.log")  # type: ignore[attr-defined]
        for _ in range(1200):  # standbys are forked once the template has learned the pages
            with open(log) as f:
                out["warmed_log"] = f.read()
            if "functionai template:" in out["warmed_log"]:
                break
            await asyncio.sleep(0.05)
        for i in range(4):
            await rt.invoke("warmed", None, session=f"w-{i}")
            ahead.append((await rt.describe_session(f"w-{i}"))["instance"]["isolation"]["ahead"])
        out["starts_ahead"] = ahead
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
