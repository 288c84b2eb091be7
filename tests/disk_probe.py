"""Run by tests/test_disk.py, as root or as a normal user: sessions of a
function with a 32 MiB disk fill it from inside their sandboxes; what each
one saw and what the host holds afterwards is printed as one JSON line."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from jupyter_functionai import FunctionSpec, Runtime
from jupyter_functionai.errors import FunctionAIError

CODE = r'''
import errno, os

def handler(ev, ctx):
    op = ev["op"]
    if op == "fill":
        n = 0
        try:
            with open(ev.get("name", "big"), "wb") as f:
                while n < ev["mib"] << 20:
                    f.write(b"x" * (1 << 20))
                    n += 1 << 20
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            return {"errno": exc.errno, "written_mib": n >> 20}
        return {"errno": None, "written_mib": n >> 20}
    if op == "files":  # many small files: the inode side of the cap
        made = 0
        try:
            os.makedirs("many", exist_ok=True)
            for i in range(ev["n"]):
                with open(f"many/{i}", "wb") as f:
                    f.write(b"y" * 4096)
                made += 1
        except OSError as exc:
            return {"errno": exc.errno, "made": made}
        return {"errno": None, "made": made}
    if op == "write":
        with open(ev["name"], "w") as f:
            f.write(ev["text"])
        return "ok"
    if op == "read":
        with open(ev["name"]) as f:
            return f.read()
    if op == "rm":
        import shutil
        for name in ev["names"]:
            shutil.rmtree(name) if os.path.isdir(name) else os.unlink(name)
        return "ok"
    if op == "plant":  # what the host must reach, and the symlinks it must not follow
        import socket, threading
        os.makedirs("real", exist_ok=True)
        with open("real/f.txt", "w") as f:
            f.write("B-REAL")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind("real/s")
        listener.listen(1)

        def serve():
            conn, _ = listener.accept()
            conn.sendall(b"from-the-sandbox")
            conn.close()

        threading.Thread(target=serve, daemon=True).start()
        os.symlink("/etc", "abs")
        os.symlink("..", "up")
        os.symlink("real/s", "sock-ln")
        os.symlink("/etc/hostname", "file-ln")
        return "ok"
    if op == "crash":
        with open(ev["name"], "w") as f:
            f.write("before the crash")
        os._exit(9)
    st = os.statvfs(".")
    return {"size_mib": st.f_blocks * st.f_frsize >> 20, "ls": sorted(os.listdir(".")), "cwd": os.getcwd()}
'''


def reach(data: str, desc: dict) -> dict:
    """What the host reaches in session b's directory, as the MCP relay and
    the kernel provisioner reach their sockets: a file and a socket yes, the
    sandbox's symlinks and ``..`` never."""
    import socket

    from jupyter_functionai.sandbox.disk import open_in_session

    def attempt(rel: str, directory: bool = False):
        try:
            fd = open_in_session(desc["workdir"], desc["instance"], rel, directory=directory)
        except OSError as exc:
            return {"errno": exc.errno}
        try:
            if rel.endswith(".txt"):
                with open(f"/proc/self/fd/{fd}") as f:
                    return {"read": f.read()}
            if rel.endswith("/s"):
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(30)
                    s.connect(f"/proc/self/fd/{fd}")
                    return {"received": s.recv(100).decode()}
            return {"opened": True}
        finally:
            os.close(fd)

    return {
        "file": attempt("real/f.txt"),
        "socket": attempt("real/s"),
        "dir": attempt("real", directory=True),
        "abs": attempt("abs/hostname"),
        "abs_dir": attempt("abs", directory=True),
        "up": attempt("up/b/work/real/f.txt"),
        "dotdot": attempt("../a/work"),
        "sock_ln": attempt("sock-ln"),
        "file_ln": attempt("file-ln"),
        "missing": attempt("real/nothing.txt"),
    }


def clean(image: str) -> bool:
    """Whether the image was unmounted cleanly (ext4's valid-fs flag)."""
    from jupyter_functionai.sandbox.disk import is_clean

    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return is_clean(fd)
    finally:
        os.close(fd)


async def main(data: str) -> dict:
    out: dict = {}
    async with Runtime.open(data) as rt:
        await rt.deploy(FunctionSpec.from_code("capped", CODE, disk="32M", timeout=120))
        await rt.deploy(FunctionSpec.from_code("plain", CODE, disk=0, timeout=120))

        async def call(fn, ev, sid):
            try:
                return (await rt.invoke(fn, ev, session=sid)).value
            except FunctionAIError as exc:
                return {"raised": type(exc).__name__, "message": str(exc)}

        out["caps"] = rt.backend.capabilities(rt.function("capped").spec).get("disk")
        out["a_stat"] = await call("capped", {"op": "stat"}, "a")
        out["a_isolation"] = (await rt.describe_session("a"))["instance"]["isolation"]
        out["b_write"] = await call("capped", {"op": "write", "name": "b.txt", "text": "B-FILE"}, "b")
        out["a_fill"] = await call("capped", {"op": "fill", "mib": 200}, "a")
        out["a_more"] = await call("capped", {"op": "fill", "mib": 4, "name": "more"}, "a")
        out["b_after"] = await call("capped", {"op": "read", "name": "b.txt"}, "b")
        out["b_fill"] = await call("capped", {"op": "fill", "mib": 8, "name": "b-big"}, "b")
        out["b_plant"] = await call("capped", {"op": "plant"}, "b")
        out["host_reach"] = reach(data, await rt.describe_session("b"))
        image = os.path.join(data, "sessions", "a", "disk.img")
        if os.path.exists(image):
            st = os.stat(image)
            out["host_image"] = {"size": st.st_size, "allocated": st.st_blocks * 512, "mode": oct(st.st_mode & 0o777), "uid": st.st_uid}
        else:
            out["host_image"] = None
        out["host_workdir"] = sorted(os.listdir(os.path.join(data, "sessions", "a", "work")))
        out["a_rm"] = await call("capped", {"op": "rm", "names": ["big", "more"]}, "a")
        out["a_again"] = await call("capped", {"op": "fill", "mib": 4, "name": "again"}, "a")
        out["a_files"] = await call("capped", {"op": "files", "n": 200000}, "a")
        out["a_rm_files"] = await call("capped", {"op": "rm", "names": ["many", "again"]}, "a")
        out["a_keep"] = await call("capped", {"op": "write", "name": "keep.txt", "text": "A-KEEP"}, "a")
        out["paused"] = await rt.pause_session("a")
        out["a_clean_after_pause"] = clean(image) if os.path.exists(image) else None
        out["a_resumed"] = await call("capped", {"op": "read", "name": "keep.txt"}, "a")
        out["a_resumed_stat"] = await call("capped", {"op": "stat"}, "a")
        out["a_crash"] = await call("capped", {"op": "crash", "name": "crash.txt"}, "a")
        out["a_after_crash"] = await call("capped", {"op": "read", "name": "keep.txt"}, "a")
        out["a_write_after_crash"] = await call("capped", {"op": "write", "name": "post.txt", "text": "ok"}, "a")
        out["plain_stat"] = await call("plain", {"op": "stat"}, "p")
        out["plain_isolation"] = (await rt.describe_session("p"))["instance"]["isolation"]
        await rt.close_session("a")
        out["a_dir_after_close"] = os.path.exists(os.path.join(data, "sessions", "a"))
        try:
            await rt.deploy(FunctionSpec.from_code("strict", CODE, disk="16M", isolation_required=["disk"]))
            out["strict"] = await call("strict", {"op": "stat"}, "s")
        except FunctionAIError as exc:
            out["strict"] = {"refused": str(exc)}
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
