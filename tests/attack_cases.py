"""Attacks on a sandbox, run from inside one (used by tests/test_attacks.py; not collected).

One handler source (``HANDLER``) serves every session: the neighbours plant a
file, /tmp and /dev/shm entries and state, and later report them back; the
attacker runs one attack per call and returns what happened (an errno name, a
count, whether a read succeeded).  ``run_all`` opens two real Runtimes (two
data dirs on one host, as two servers of one user would have), plants the
world, and runs every case of ``CASES``: after each one it records what the
neighbours answer and what the host looks like.  It runs in-process (as
whoever runs the tests) or as a script (``python attack_cases.py CFG``, how
the tests run it as a normal user through ``runuser``), printing one JSON
object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import socket
import sys
import threading
from typing import Any

DISK_MB = 64  # every attack function's disk (resources.disk_mb)

HANDLER = r'''
import ctypes, ctypes.util, errno, json, os, platform, re, signal, socket, stat, subprocess, sys, time

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
NR = {
    "x86_64": {"add_key": 248, "request_key": 249, "keyctl": 250, "init_module": 175, "finit_module": 313,
               "delete_module": 176, "reboot": 169, "unshare": 272},
    "aarch64": {"add_key": 217, "request_key": 218, "keyctl": 219, "init_module": 105, "finit_module": 273,
                "delete_module": 106, "reboot": 142, "unshare": 97},
}[platform.machine()]
KEY_SPEC_SESSION, KEY_SPEC_USER, KEY_SPEC_USER_SESSION = -3, -4, -5
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_SEARCH, KEYCTL_READ = 1, 10, 11
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000


def errname(exc):
    e = getattr(exc, "errno", None)
    return errno.errorcode.get(e, type(exc).__name__) if e else type(exc).__name__


def attempt(fn, *a):
    """{"ok": True, "value": ...} or {"ok": False, "error": "EACCES"} (an errno name or exception type)."""
    try:
        return {"ok": True, "value": fn(*a)}
    except BaseException as exc:  # noqa: BLE001 - the attacker reports everything
        return {"ok": False, "error": errname(exc), "detail": str(exc)[:200]}


def sc(name, *args):
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    rc = libc.syscall(NR[name], *args)
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


def lc(rc):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return "done"


def read(path, n=200):
    with open(path, "rb") as f:
        return f.read(n).decode(errors="replace")


def write(path, text="attacker was here"):
    with open(path, "w") as f:
        f.write(text)
    return "written"


def fork_hold(limit):
    """Fork children that sleep (they stay until the instance ends); count them."""
    n, err = 0, None
    while n < limit:
        try:
            pid = os.fork()
        except OSError as exc:
            err = errname(exc)
            break
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        n += 1
    return {"forked": n, "stopped_by": err}


def find_key(desc):
    out = {}
    for name, ring in (("user", KEY_SPEC_USER), ("user_session", KEY_SPEC_USER_SESSION), ("session", KEY_SPEC_SESSION)):
        out[name] = attempt(lambda r=ring: sc("keyctl", KEYCTL_SEARCH, r, b"user", desc.encode(), 0))
    out["request_key"] = attempt(lambda: sc("request_key", b"user", desc.encode(), None, 0))
    for res in list(out.values()):
        if res["ok"]:
            buf = ctypes.create_string_buffer(256)
            n = attempt(lambda: sc("keyctl", KEYCTL_READ, res["value"], buf, 256))
            out["payload"] = buf.raw[: n["value"]].decode(errors="replace") if n["ok"] else n
            break
    out["found"] = any(v.get("ok") for k, v in out.items() if k != "payload" and isinstance(v, dict))
    try:
        out["proc_keys"] = desc in open("/proc/keys").read()
    except OSError:
        out["proc_keys"] = False
    return out


def scan_memory(pattern):
    shape = re.compile(pattern.encode())
    found = set()
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for parts in regions:
        name = parts[5] if len(parts) > 5 else ""
        if not parts[1].startswith("r") or name.startswith("[v"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if end - start <= 256 << 20:
            found.update(m.decode() for m in shape.findall(ctypes.string_at(start, end - start)))
    return sorted(found)


# ------------------------------------------------------------------ neighbours
def plant(ev, ctx):
    me = ev["me"]
    write(os.path.join(ctx.workdir, "secret.txt"), me + "-FILE")
    write("/tmp/nb", me + "-TMP")
    write("/dev/shm/nb", me + "-SHM")
    ctx.state["mine"] = me + "-STATE"
    return {"workdir": ctx.workdir, "secret": os.path.join(ctx.workdir, "secret.txt"), "host": socket.gethostname()}


def check(ev, ctx):
    def spawn():
        return subprocess.run(["/bin/true"], timeout=20).returncode
    out = {
        "file": attempt(read, os.path.join(ctx.workdir, "secret.txt")),
        "tmp": attempt(read, "/tmp/nb"),
        "shm": attempt(read, "/dev/shm/nb"),
        "state": ctx.state.get("mine"),
        "spawn": attempt(spawn),
        "host": socket.gethostname(),
        "keys_seen": [],
    }
    with_keys = attempt(read, "/proc/keys", 1 << 20)
    if with_keys["ok"]:  # keys an attacker planted (the key holder's own is its own case)
        out["keys_seen"] = sorted(set(re.findall(r"fai-attack-[a-z]+", with_keys["value"])) - {"fai-attack-holder"})
    return out


def clear_keys(ev, ctx):
    """Empty this uid's user keyring (KEYCTL_CLEAR): what earlier runs left there."""
    return attempt(lambda: sc("keyctl", 7, KEY_SPEC_USER))


def hold_key(ev, ctx):
    kid = attempt(lambda: sc("add_key", b"user", b"fai-attack-holder", b"HOLDER-KEY-SECRET", 17, KEY_SPEC_USER))
    return {"add": kid, "seen": find_key("fai-attack-holder")}


# ------------------------------------------------------------------ attacks
def a_read(ev, ctx):
    return {p: attempt(read, p) for p in ev["paths"]}


def a_list(ev, ctx):
    return {p: attempt(lambda p=p: sorted(os.listdir(p))) for p in ev["paths"]}


def a_write(ev, ctx):
    return {p: attempt(write, p) for p in ev["paths"]}


def a_connect(ev, ctx):
    def conn():
        s = socket.create_connection((ev["host"], ev["port"]), timeout=3)
        try:
            return s.recv(64).decode()
        finally:
            s.close()
    return {"connect": attempt(conn)}


def a_dns(ev, ctx):
    return {"resolve": attempt(lambda: socket.getaddrinfo("example.com", 80)[0][4][0]),
            "resolve_localhost": attempt(lambda: socket.gethostbyname("localhost"))}


def a_raw(ev, ctx):
    return {
        "raw_icmp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()),
        "raw_tcp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()),
        "packet": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()),
    }


def a_abstract(ev, ctx):
    def conn():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect("\0" + ev["sock"])
            return s.recv(64).decode()
        finally:
            s.close()
    return {"connect": attempt(conn)}


def _open_fds(pid):
    """Open every descriptor of ``pid`` through /proc (its disk image, say)."""
    opened = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            os.close(os.open(f"/proc/{pid}/fd/{n}", os.O_RDONLY))
            opened.append(n)
        except OSError:
            pass
    if not opened:
        raise PermissionError(13, "no descriptor could be opened")
    return opened


def a_procs(ev, ctx):
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    others = {}
    for pid in pids:
        if pid in (1, os.getpid()):
            continue
        others[str(pid)] = {
            "comm": attempt(lambda: read(f"/proc/{pid}/comm", 64)),
            "environ": attempt(lambda: read(f"/proc/{pid}/environ", 64)),
            "mem": attempt(lambda: read(f"/proc/{pid}/mem", 64)),
            "fd": attempt(lambda: _open_fds(pid)),
        }
    return {"pids": [p for p in pids if str(p) not in others], "ppid": os.getppid(), "others": others}


def a_proc_other(ev, ctx):
    out = {}
    for pid in ev["pids"]:
        for what in ("environ", "cmdline", "mem", "maps", "root/"):
            path = f"/proc/{pid}/{what}"
            out[path] = attempt(lambda p=path: os.listdir(p) if p.endswith("/") else read(p, 64))
    return out


def a_kill(ev, ctx):
    out = {str(pid): attempt(os.kill, pid, signal.SIGKILL) for pid in ev["pids"]}
    scanned = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    out["scanned"] = {str(p): attempt(os.kill, p, signal.SIGKILL) for p in scanned}
    return out


def a_ptrace(ev, ctx):
    def attach(pid):
        lc(libc.ptrace(16, pid, 0, 0))  # PTRACE_ATTACH
        return "attached"
    return {str(pid): attempt(attach, pid) for pid in ev["pids"]}


def a_mount(ev, ctx):
    target = os.path.join(ctx.workdir, "mnt")
    os.makedirs(target, exist_ok=True)
    return {
        "tmpfs_on_tmp": attempt(lambda: lc(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))),
        "tmpfs_in_workdir": attempt(lambda: lc(libc.mount(b"tmpfs", target.encode(), b"tmpfs", 0, None))),
        "remount_root_rw": attempt(lambda: lc(libc.mount(None, b"/", None, 32 | 4096, None))),  # MS_REMOUNT|MS_BIND
        "umount_tmp": attempt(lambda: lc(libc.umount2(b"/tmp", 2))),
    }


def a_unshare_mount(ev, ctx):
    out = {"unshare": attempt(lambda: sc("unshare", CLONE_NEWUSER | CLONE_NEWNS))}
    target = os.path.join(ctx.workdir, "mnt")
    os.makedirs(target, exist_ok=True)
    out["mount"] = attempt(lambda: lc(libc.mount(b"tmpfs", target.encode(), b"tmpfs", 0, None)))
    out["libc_unshare"] = attempt(lambda: lc(libc.unshare(CLONE_NEWUSER)))
    return out


def a_add_key(ev, ctx):
    return {
        "add_key_user": attempt(lambda: sc("add_key", b"user", b"fai-attack-u", b"LEAK", 4, KEY_SPEC_USER)),
        "add_key_session": attempt(lambda: sc("add_key", b"user", b"fai-attack-s", b"LEAK", 4, KEY_SPEC_SESSION)),
    }


def a_keyctl(ev, ctx):
    return {
        "join_session": attempt(lambda: sc("keyctl", KEYCTL_JOIN_SESSION_KEYRING, None)),
        "search_user": attempt(lambda: sc("keyctl", KEYCTL_SEARCH, KEY_SPEC_USER, b"user", b"fai-attack-holder", 0)),
        "request_key": attempt(lambda: sc("request_key", b"user", b"fai-attack-holder", None, 0)),
    }


def a_find_key(ev, ctx):
    return find_key(ev["desc"])


def a_plant_key(ev, ctx):
    return {"add": attempt(lambda: sc("add_key", b"user", ev["desc"].encode(), b"LEFT-BEHIND", 11, KEY_SPEC_USER))}


def a_fork_hold(ev, ctx):
    return fork_hold(ev["n"])


def a_fill_disk(ev, ctx):
    """V4: write to the working directory until something says no."""
    n = 0
    try:
        with open("fill", "wb") as f:
            while n < ev["mib"] << 20:
                f.write(b"\xaa" * (1 << 20))
                n += 1 << 20
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return {"errno": exc.errno, "written_mib": n >> 20}
    finally:
        try:
            os.unlink("fill")
        except OSError:
            pass
    return {"errno": None, "written_mib": n >> 20}


def a_fork_bomb(ev, ctx):
    return fork_hold(10 ** 6)


def a_memory(ev, ctx):
    blocks = []
    while True:
        blocks.append(bytearray(16 * 1024 * 1024))


def a_flood(ev, ctx):
    chunk = "z" * 65536
    for _ in range(ev["mib"] * 16):
        sys.stdout.write(chunk)
    return "flooded"


def a_setuid(ev, ctx):
    nnp = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")]
    out = {"no_new_privs": nnp[0] if nnp else None, "runs": {}}
    # (inside a user namespace the uid is 0 already, so "id -u" says nothing: su must fail to switch at all)
    for argv in (["su", "-c", "cat /etc/shadow", "root"], ["sudo", "-n", "cat", "/etc/shadow"], ["mount", "-t", "tmpfs", "x", "/tmp"], ["passwd", "-l", "fai-nonexistent-user"]):
        def run(argv=argv):
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            return {"rc": p.returncode, "out": p.stdout.decode(errors="replace")[:200]}
        out["runs"][" ".join(argv)] = attempt(run)
    return out


def a_dev(ev, ctx):
    paths = ["/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg"]
    with_blk = attempt(lambda: [os.path.join("/dev", n) for n in os.listdir("/dev") if stat.S_ISBLK(os.stat(os.path.join("/dev", n)).st_mode)])
    if with_blk["ok"]:
        paths += with_blk["value"]
    return {p: attempt(read, p, 16) for p in paths if os.path.exists(p) or p in ("/dev/mem", "/dev/kmsg")}


def a_hostname(ev, ctx):
    return {"sethostname": attempt(socket.sethostname, "fai-pwned"), "now": socket.gethostname()}


def a_sysctl(ev, ctx):
    out = {}
    for p in ("/proc/sys/kernel/hostname", "/proc/sys/vm/swappiness", "/proc/sys/fs/file-max", "/proc/sys/kernel/core_pattern"):
        cur = attempt(read, p, 4096)
        out[p] = attempt(write, p, cur["value"] if cur["ok"] else "0") if cur["ok"] else cur  # the same value back: harmless
    return out


def a_chroot(ev, ctx):
    jail = os.path.join(ctx.workdir, "jail")
    os.makedirs(jail, exist_ok=True)
    def escape():
        os.chroot(jail)
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        return sorted(os.listdir("/"))
    return {"chroot": attempt(escape)}


def a_cgroup(ev, ctx):
    mine = open("/proc/self/cgroup").read().strip().splitlines()
    out = {"cgroup": mine}
    rel = mine[-1].split(":", 2)[2] if mine else "/"
    base = "/sys/fs/cgroup" + (rel if rel != "/" else "")
    for p in (f"{base}/pids.max", f"{base}/memory.max", f"{base}/cpu.max", "/sys/fs/cgroup/cgroup.procs",
              os.path.dirname(base) + "/cgroup.procs", "/sys/fs/cgroup/cgroup.subtree_control"):
        out[p] = attempt(write, p, "max")
    return out


def a_time(ev, ctx):
    return {
        "clock_settime": attempt(time.clock_settime, time.CLOCK_REALTIME, time.time()),
        "settimeofday": attempt(settimeofday_now),
    }


class TimeVal(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]


def settimeofday_now():
    now = time.time()  # the time it is: harmless if it went through
    return lc(libc.settimeofday(ctypes.byref(TimeVal(int(now), int(now % 1 * 1e6))), None))


def a_module(ev, ctx):
    return {
        "init_module": attempt(lambda: sc("init_module", None, 0, b"")),
        "finit_module": attempt(lambda: sc("finit_module", 0, b"", 0)),
        "delete_module": attempt(lambda: sc("delete_module", b"fai_nonexistent", 0)),
    }


def a_reboot(ev, ctx):
    # wrong magic numbers: the capability check comes first (EPERM); a capable caller gets EINVAL, harmlessly
    return {"reboot": attempt(lambda: sc("reboot", 0, 0, 0, None))}


def a_code(ev, ctx):
    path = globals().get("__file__") or ev["code"]
    return {"path": path, "append": attempt(lambda: open(path, "a").close()), "dir": attempt(write, os.path.join(os.path.dirname(path), "evil.py"))}


def a_hardlink(ev, ctx):
    return {p: attempt(os.link, p, os.path.join(ctx.workdir, "link-" + str(i))) for i, p in enumerate(ev["paths"])}


def a_symlink(ev, ctx):
    made = {}
    for i, p in enumerate(ev["paths"]):
        made[p] = attempt(os.symlink, p, os.path.join(ctx.workdir, "sym-" + str(i)))
    return {"made": made, "through": {p: attempt(read, os.path.join(ctx.workdir, "sym-" + str(i))) for i, p in enumerate(ev["paths"])}}


def a_through_symlinks(ev, ctx):
    return {p: attempt(read, os.path.join(ctx.workdir, "sym-" + str(i))) for i, p in enumerate(ev["paths"])}


def a_environ(ev, ctx):
    blob = json.dumps(dict(os.environ)) + attempt(read, "/proc/self/environ", 1 << 16).get("value", "") + attempt(read, "/proc/1/environ", 1 << 16).get("value", "")
    return {"found": sorted(n for n in ev["names"] if n in blob), "keys": sorted(os.environ), "home": os.environ.get("HOME")}


def a_memscan(ev, ctx):
    return {"found": scan_memory(ev["pattern"])}


def a_proc1_root(ev, ctx):
    return {p: attempt(read, "/proc/1/root" + p) for p in ev["paths"]}


def a_fds(ev, ctx):
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        fds[int(fd)] = attempt(os.readlink, f"/proc/self/fd/{fd}").get("value")
    return {"fds": fds}


def a_template_mem(ev, ctx):
    out = {"ppid": os.getppid()}
    for pid in [os.getppid(), *ev["pids"]]:
        out[f"/proc/{pid}/mem"] = attempt(read, f"/proc/{pid}/mem", 16)
    return out


def a_forge(ev, ctx):
    import struct
    ctx.state["forged"] = True
    body = ev["raw"].replace("CALL_ID", ctx.call_id).encode()
    os.write(3, struct.pack(">I", len(body)) + body)
    return "forged"


def a_state_big(ev, ctx):
    ctx.state["big"] = "x" * ev["bytes"]
    return "stored"


def a_state(ev, ctx):
    return {"keys": sorted(ctx.state)}


def a_double_fork(ev, ctx):
    for _ in range(ev["n"]):
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                os._exit(0)
            os._exit(0)
        os.waitpid(pid, 0)
    deadline = time.monotonic() + 10  # every grandchild has exited (a zombie) before the call ends
    while a_zombies(ev, ctx)["zombies"] < ev["n"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return a_zombies(ev, ctx)


def a_zombies(ev, ctx):
    z = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if open(f"/proc/{p}/stat").read().split(") ")[1][0] == "Z":
                    z += 1
            except OSError:
                pass
    return {"zombies": z}


def a_ipc(ev, ctx):
    out = {}
    for p in ("/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem"):
        r = attempt(read, p, 1 << 16)
        out[p] = len(r["value"].strip().splitlines()) - 1 if r["ok"] else r
    return out


def handler(event, ctx):
    op = event["op"]
    fn = globals().get("a_" + op) or {"plant": plant, "check": check, "hold_key": hold_key, "clear_keys": clear_keys}[op]
    return fn(event, ctx)
'''

# Frames forged on the instance's socket (fd 3); tests/test_control_channel.py has the full list.
FORGED = {
    "bad_state_json": json.dumps({"op": "result", "id": "CALL_ID", "value": 1, "state_json": "{not json"}),
    "deep_nesting": "[" * 100_000 + "]" * 100_000,
    "wrong_field_type": json.dumps({"op": "result", "id": "CALL_ID", "value": 1, "duration_ms": "soon"}),
}

SECRET_NAME = "FAI_ATTACK_SERVER_SECRET"


def cases(w: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every attack: the event, and where it runs.  ``w`` is the planted world."""
    t = w["targets"]
    nb = w["neighbour"]
    host_pids = [w["runtime_pid"], nb["pid"], *w["template_pids"]]
    out: dict[str, dict[str, Any]] = {
        # V0: the server's and the user's own files, its port, its processes
        "read_jpserver": {"op": "read", "paths": [t["jpserver"]]},
        "read_store_db": {"op": "read", "paths": [t["store"]]},
        "read_server_log": {"op": "read", "paths": [t["log"]]},
        "list_data_dir": {"op": "list", "paths": [w["data"], os.path.dirname(t["jpserver"])]},
        "read_profile": {"op": "read", "paths": [t["profile"]]},
        "read_ssh_key": {"op": "read", "paths": [t["ssh"]]},
        "connect_server_port": {"op": "connect", "host": "127.0.0.1", "port": w["port"]},
        "see_host_processes": {"op": "procs"},
        # V1: forged frames on fd 3
        **{f"forge_{k}": {"op": "forge", "raw": v} for k, v in FORGED.items()},
        # V2 / V5: keyrings
        "add_key": {"op": "add_key"},
        "keyctl": {"op": "keyctl"},
        "key_of_live_session": {"op": "find_key", "desc": "fai-attack-holder", "fn": "keys"},
        "key_of_live_session_other_runtime": {"op": "find_key", "desc": "fai-attack-holder", "fn": "keys", "runtime": "far"},
        "key_left_for_next_session": {
            "op": "plant_key", "desc": "fai-attack-left", "fn": "keys", "between": "close",
            "then": {"op": "find_key", "desc": "fai-attack-left"}, "then_session": "attacker-next-session",
        },
        "hold_250_processes": {"op": "fork_hold", "n": 250},
        # V3: the server's secrets in the environment or memory
        "environment": {"op": "environ", "names": [SECRET_NAME, "JUPYTER_TOKEN", "JUPYTER_RUNTIME_DIR", "PYTEST_CURRENT_TEST", "FUNCTIONAI_TEST_USER"]},
        "memory_scan": {"op": "memscan", "pattern": "s3cr3t-atk-" + "[0-9a-f]{24}"},
        # V5
        "unshare_user_mount": {"op": "unshare_mount"},
        # V7 / V8
        "double_fork_zombies": {"op": "double_fork", "n": 20, "then": {"op": "zombies"}},
        "oversized_state": {"op": "state_big", "bytes": 17 << 20, "then": {"op": "state"}},
        # contained ones
        "read_neighbour_file": {"op": "read", "paths": [nb["secret"], w["other"]["secret"], w["far"]["secret"]]},
        "list_sessions_dir": {"op": "list", "paths": [os.path.dirname(nb["workdir"]), os.path.dirname(os.path.dirname(nb["workdir"]))]},
        "write_neighbour_file": {"op": "write", "paths": [nb["secret"], os.path.join(nb["workdir"], "planted-by-attacker")]},
        "neighbour_tmp_and_shm": {"op": "read", "paths": ["/tmp/nb", "/dev/shm/nb"]},
        "proc_of_other_processes": {"op": "proc_other", "pids": host_pids},
        "kill_scanned_pids": {"op": "kill", "pids": host_pids},
        "ptrace_attach": {"op": "ptrace", "pids": [*host_pids, 1]},
        "mount": {"op": "mount"},
        "write_read_only_root": {"op": "write", "paths": ["/usr/fai-attack", "/etc/fai-attack", "/usr/bin/python3", "/etc/passwd"]},
        "write_outside_workdir": {"op": "write", "paths": ["/fai-attack", "/var/fai-attack", "/opt/fai-attack", "/home/fai-attack", "/root/fai-attack", os.path.join(w["data"], "fai-attack")]},
        "write_function_code": {"op": "code", "code": w["code"]},
        "outbound_tcp_host_address": {"op": "connect", "host": w["host_ip"], "port": w["port"]},
        "outbound_tcp_external": {"op": "connect", "host": "1.1.1.1", "port": 53},
        "abstract_unix_socket": {"op": "abstract", "sock": w["abstract"]},
        "dns": {"op": "dns"},
        "raw_sockets": {"op": "raw"},
        "fork_bomb": {"op": "fork_bomb"},
        "fill_disk": {"op": "fill_disk", "mib": 1536},  # V4: 1.5 GiB into a 64 MiB disk
        "memory_bomb": {"op": "memory"},
        "output_flood": {"op": "flood", "mib": 64},
        "setuid_binaries": {"op": "setuid"},
        "dev_access": {"op": "dev"},
        "read_shadow": {"op": "read", "paths": ["/etc/shadow", "/etc/gshadow"]},
        "hostname": {"op": "hostname"},
        "sysctl_write": {"op": "sysctl"},
        "chroot_escape": {"op": "chroot"},
        "cgroup_write": {"op": "cgroup"},
        "set_time": {"op": "time"},
        "kernel_module": {"op": "module"},
        "reboot": {"op": "reboot"},
        "hard_link_other_files": {"op": "hardlink", "paths": [nb["secret"], t["store"], t["jpserver"], "/etc/shadow"]},
        "symlink_to_data_dir": {
            "op": "symlink", "paths": [t["store"], nb["secret"], w["data"] + "/", "/etc/shadow"], "between": "pause",
            "then": {"op": "through_symlinks", "paths": [t["store"], nb["secret"], w["data"] + "/", "/etc/shadow"]},
        },
        "proc_1_root": {"op": "proc1_root", "paths": [nb["secret"], t["store"], t["jpserver"], t["profile"]]},
        "inherited_fds": {"op": "fds"},
        "template_memory": {"op": "template_mem", "pids": w["template_pids"]},
        "sysv_ipc": {"op": "ipc"},
    }
    for name, c in out.items():
        c.setdefault("name", name)
    return out


# ---------------------------------------------------------------------- driver


def _snapshot(w: dict[str, Any]) -> dict[str, Any]:
    """What the host looks like: owners, modes and contents of what must not change."""

    def st(p: str) -> Any:
        try:
            s = os.lstat(p)
        except OSError as exc:
            return type(exc).__name__
        digest = None
        if os.path.isfile(p) and not p.endswith(".db"):
            with contextlib.suppress(OSError), open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:16]
        return [s.st_uid, s.st_gid, oct(s.st_mode), digest]

    t = w["targets"]
    paths = [*t.values(), w["data"], w["neighbour"]["secret"], w["neighbour"]["workdir"], w["other"]["secret"], w["far"]["secret"], w["code"]]
    canaries = ["/usr/fai-attack", "/etc/fai-attack", "/fai-attack", "/var/fai-attack", "/opt/fai-attack", "/home/fai-attack", "/root/fai-attack", os.path.join(w["data"], "fai-attack"), os.path.join(os.path.dirname(w["code"]), "evil.py")]
    return {
        "hostname": socket.gethostname(),
        "files": {p: st(p) for p in paths},
        "canaries": sorted(p for p in canaries if os.path.lexists(p)),
    }


async def _outcome(coro: Any) -> dict[str, Any]:
    try:
        r = await coro
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)[:300]}
    return {"value": r.value, "logs_len": len(r.logs), "logs_dropped": r.logs_dropped}


def _host_ip() -> str:
    """This host's address on its default route (no packet is sent), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class _Listeners:
    """A TCP port on 127.0.0.1 (standing in for the server's) and an abstract unix socket."""

    def __init__(self) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("0.0.0.0", 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.abstract = "fai-attack-" + secrets.token_hex(6)
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind("\0" + self.abstract)
        self.unix.listen(16)
        self.reached: list[str] = []
        for s, what in ((self.tcp, "tcp"), (self.unix, "abstract")):
            threading.Thread(target=self._serve, args=(s, what), daemon=True).start()

    def _serve(self, s: socket.socket, what: str) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            self.reached.append(what)
            with c:
                c.sendall(b"HOST-REACHED")

    def close(self) -> None:
        for s in (self.tcp, self.unix):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


async def run_all(cfg: dict[str, Any]) -> dict[str, Any]:
    """Open two runtimes in ``cfg["data"]`` and ``cfg["data2"]``, plant, attack, report."""
    from jupyter_functionai import FunctionSpec, Runtime

    only = set(cfg.get("only") or [])
    res: dict[str, Any] = {"uid": os.getuid(), "cases": {}}
    lst = _Listeners()
    try:
        async with Runtime.open(cfg["data"], reap_interval=0.05) as rt, Runtime.open(cfg["data2"], reap_interval=0.05) as rt2:
            common = {"network": "none", "timeout": 30, "memory": 256, "disk": f"{DISK_MB}M"}
            for r, name in ((rt, "att"), (rt, "other"), (rt2, "att")):
                await r.deploy(FunctionSpec.from_code(name, HANDLER, **common))
            allow = {"seccomp_allow": {"add_key", "keyctl", "request_key"}}
            for r in (rt, rt2):  # a spec that relaxed the filter: the uid / user namespace must still hold
                await r.deploy(FunctionSpec.from_code("keys", HANDLER, **common, **allow))
            sessions = {"neighbour": (rt, "att"), "neighbour-other": (rt, "other"), "far": (rt2, "att")}
            w: dict[str, Any] = {"targets": cfg["targets"], "data": str(rt.state_dir), "port": lst.port, "abstract": lst.abstract, "host_ip": _host_ip()}
            for sid, (r, fn) in sessions.items():
                p = (await r.invoke(fn, {"op": "plant", "me": sid}, session=sid)).value
                p["pid"] = next(i.pid for i in r.live_instances() if i.bound_session == sid)
                w[{"neighbour": "neighbour", "neighbour-other": "other", "far": "far"}[sid]] = p
            res["cleared"] = await _outcome(rt.invoke("keys", {"op": "clear_keys"}, session="key-holder"))
            res["holder"] = await _outcome(rt.invoke("keys", {"op": "hold_key"}, session="key-holder"))
            w["runtime_pid"] = os.getpid()
            w["template_pids"] = [t.proc.pid for t in rt.backend._templates.values()]  # type: ignore[attr-defined]
            code_dir = rt.function("att").code_dir
            w["code"] = os.path.join(code_dir, sorted(f for f in os.listdir(code_dir) if f.endswith(".py"))[0])
            logs = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(rt.state_dir, "logs")) for f in fs]
            w["targets"] = {**cfg["targets"], "store": os.path.join(rt.state_dir, "functionai.db"), "log": (sorted(logs) or [os.path.join(rt.state_dir, "logs")])[0]}
            res["isolation"] = (await rt.describe_session("neighbour"))["instance"]["isolation"]
            res["world"] = w
            before = _snapshot(w)
            res["before"] = before
            for name, case in cases(w).items():
                if only and name not in only:
                    continue
                r = rt2 if case.get("runtime") == "far" else rt
                fn = case.get("fn", "att")
                sid = "attacker-" + name.replace("_", "-")  # a closed session's id is not reused
                event = {k: v for k, v in case.items() if k not in ("fn", "runtime", "between", "then", "then_session", "name")}
                one: dict[str, Any] = {"attack": await _outcome(r.invoke(fn, event, session=sid))}
                if case.get("between") == "pause":
                    one["between"] = await r.pause_session(sid)
                elif case.get("between") == "close":
                    await r.close_session(sid)
                if "then" in case:
                    then_sid = case.get("then_session", sid)
                    one["then"] = await _outcome(r.invoke(fn, case["then"], session=then_sid))
                    if then_sid != sid:
                        await r.close_session(then_sid)
                # the neighbours answer while what the attack left (children, keys) is still there
                one["neighbours"] = {sid2: await _outcome(r2.invoke(fn2, {"op": "check"}, session=sid2)) for sid2, (r2, fn2) in sessions.items()}
                with contextlib.suppress(Exception):
                    await r.close_session(sid)
                one["host"] = _snapshot(w)
                one["reached"] = list(lst.reached)
                lst.reached.clear()
                res["cases"][name] = one
            res["holder_after"] = await _outcome(rt.invoke("keys", {"op": "find_key", "desc": "fai-attack-holder"}, session="key-holder"))
            await _outcome(rt.invoke("keys", {"op": "clear_keys"}, session="key-holder"))
    finally:
        lst.close()
    return res


def plant_world(base: str) -> dict[str, Any]:
    """A normal user's home with a Jupyter server's files in it, as a laptop has them."""
    home = os.path.join(base, "home")
    runtime_dir = os.path.join(home, ".local", "share", "jupyter", "runtime")
    os.makedirs(runtime_dir)
    os.makedirs(os.path.join(home, ".ssh"))
    targets = {
        "jpserver": os.path.join(runtime_dir, "jpserver-4242.json"),
        "profile": os.path.join(home, ".profile"),
        "ssh": os.path.join(home, ".ssh", "id_test"),
    }
    files = {
        "jpserver": (json.dumps({"port": 8888, "token": "SERVER-TOKEN-SECRET"}), 0o600),
        "profile": ("export AWS_SECRET=PROFILE-SECRET\n", 0o644),
        "ssh": ("SSH-KEY-SECRET\n", 0o600),
    }
    for k, (text, mode) in files.items():
        with open(targets[k], "w") as f:
            f.write(text)
        os.chmod(targets[k], mode)
    os.chmod(home, 0o755)  # Debian's default for a home: readable by other uids
    os.chmod(os.path.join(home, ".ssh"), 0o700)
    os.chmod(base, 0o755)
    return {
        "home": home,
        "data": os.path.join(home, ".local", "share", "jupyter", "functionai"),
        "data2": os.path.join(base, "second-server"),
        "runtime_dir": runtime_dir,
        "targets": targets,
    }


def server_env(world: dict[str, Any], secret: str) -> dict[str, str]:
    """The server's environment: its home, Jupyter dirs, and a secret it must not pass on."""
    return {
        "HOME": world["home"],
        "JUPYTER_RUNTIME_DIR": world["runtime_dir"],
        "JUPYTER_DATA_DIR": os.path.dirname(world["runtime_dir"]),
        SECRET_NAME: secret,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run_all(json.loads(sys.argv[1]))), default=str))
