"""Try to break session isolation from inside a session.

Each test has session A hold something (a file, a process, an env var, a
/tmp entry) and session B attack it; then A is checked to be untouched.
A layer this machine lacks is reported by the instance; the tests read that
report and say which layer was missing instead of asserting blindly.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest
import pytest_asyncio

from jupyter_functionai import (
    FunctionSpec,
    FunctionTimeout,
    IsolationUnavailable,
    Runtime,
    UserError,
)

from .conftest import deploy

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="namespaces and per-session uids need root on this machine")

PROBE = """
import ctypes, ctypes.util, json, os, signal, socket

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}

def handler(event, ctx):
    op = event["op"]
    if op == "plant":
        with open(os.path.join(ctx.workdir, "secret.txt"), "w") as f:
            f.write("A-SECRET")
        with open("/tmp/planted", "w") as f:
            f.write("A-TMP")
        with open("/dev/shm/planted", "w") as f:
            f.write("A-SHM")
        os.environ["A_SECRET"] = "A-ENV"
        return {"workdir": ctx.workdir, "uid": os.getuid(), "host": socket.gethostname()}
    if op == "read":
        return attempt(lambda: open(event["path"]).read())
    if op == "write":
        def w():
            with open(event["path"], "w") as f:
                f.write("B was here")
        return attempt(w)
    if op == "listdir":
        return attempt(lambda: sorted(os.listdir(event["path"])))
    if op == "kill":
        return attempt(lambda: os.kill(event["pid"], signal.SIGKILL))
    if op == "ptrace":
        def pt():
            PTRACE_ATTACH = 16
            if libc.ptrace(PTRACE_ATTACH, event["pid"], 0, 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            return "attached"
        return attempt(pt)
    if op == "procs":
        return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    if op == "environ":
        out = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    out[p] = open(f"/proc/{p}/environ", "rb").read().decode(errors="replace")
                except OSError as exc:
                    out[p] = "ERR " + type(exc).__name__
        return {"procs": out, "mine": dict(os.environ)}
    if op == "connect":
        def c():
            s = socket.create_connection(("127.0.0.1", event["port"]), timeout=2)
            data = s.recv(16)
            s.close()
            return data.decode()
        return attempt(c)
    if op == "loopback_self":
        def ls():
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            cli = socket.create_connection(srv.getsockname(), timeout=2)
            cli.close()
            srv.close()
            return "ok"
        return attempt(ls)
    if op == "setuid0":
        return attempt(lambda: os.setuid(0))
    if op == "whoami":
        return {"uid": os.getuid(), "pid": os.getpid(), "host": socket.gethostname()}
    if op == "spin":
        while True:
            pass
    raise ValueError(op)
"""


@pytest_asyncio.fixture
async def probe(rt: Runtime):
    await deploy(rt, "probe", PROBE, timeout=30)
    a = await rt.invoke("probe", {"op": "plant"}, session="A")
    return rt, a.value


async def call(rt: Runtime, session: str, **event):
    return (await rt.invoke("probe", event, session=session)).value


def outer_pid(rt: Runtime, session: str) -> int:
    for inst in rt.live_instances():
        if inst.bound_session == session:
            assert inst.pid is not None
            return inst.pid
    raise AssertionError(f"no live instance for {session}")


async def assert_a_untouched(rt: Runtime, a: dict) -> None:
    got = await call(rt, "A", op="read", path=os.path.join(a["workdir"], "secret.txt"))
    assert got == {"ok": True, "value": "A-SECRET"}
    assert (await call(rt, "A", op="read", path="/tmp/planted"))["value"] == "A-TMP"


@needs_root
@pytest.mark.asyncio
async def test_cannot_read_or_write_another_sessions_files(probe):
    rt, a = probe
    secret = os.path.join(a["workdir"], "secret.txt")
    # A's files are really there on the host: in its disk image (the working
    # directory is that image's filesystem)
    image = os.path.join(os.path.dirname(a["workdir"]), "disk.img")
    assert os.path.getsize(image) > 0
    for path in (secret, image):
        got = await call(rt, "B", op="read", path=path)
        assert not got["ok"], got
        got = await call(rt, "B", op="write", path=path)
        assert not got["ok"], got
    got = await call(rt, "B", op="listdir", path=os.path.dirname(os.path.dirname(a["workdir"])))
    assert not got["ok"] or got["value"] == ["B"], got  # the sessions dir shows B's own entry at most
    await assert_a_untouched(rt, a)


@needs_root
@pytest.mark.asyncio
async def test_private_tmp_and_shm(probe):
    rt, _a = probe
    assert not (await call(rt, "B", op="read", path="/tmp/planted"))["ok"]
    assert not (await call(rt, "B", op="read", path="/dev/shm/planted"))["ok"]
    assert (await call(rt, "A", op="read", path="/dev/shm/planted"))["value"] == "A-SHM"
    assert not os.path.exists("/tmp/planted")  # nothing leaked to the host either


@needs_root
@pytest.mark.asyncio
async def test_cannot_signal_or_ptrace_another_session(probe):
    rt, a = probe
    await call(rt, "B", op="whoami")
    pid_a = outer_pid(rt, "A")
    assert (await call(rt, "B", op="kill", pid=pid_a))["ok"] is False
    assert (await call(rt, "B", op="ptrace", pid=pid_a))["ok"] is False
    # inside its PID namespace A is pid 1; B's pid 1 is B itself
    assert (await call(rt, "B", op="kill", pid=os.getpid()))["ok"] is False  # the runtime is invisible
    await assert_a_untouched(rt, a)
    assert (await call(rt, "A", op="whoami"))["pid"] == 1


@needs_root
@pytest.mark.asyncio
async def test_proc_shows_only_own_processes_and_env(probe):
    rt, _a = probe
    procs = await call(rt, "B", op="procs")
    assert procs == [1]
    env = await call(rt, "B", op="environ")
    blob = " ".join(env["procs"].values()) + " ".join(f"{k}={v}" for k, v in env["mine"].items())
    assert "A-ENV" not in blob
    assert "PYTEST_CURRENT_TEST" not in blob  # the runtime's own environment does not leak either
    assert env["mine"]["FUNCTIONAI_SESSION_ID"] == "B"


@needs_root
@pytest.mark.asyncio
async def test_per_session_uid_and_no_way_back_to_root(probe):
    rt, a = probe
    b = await call(rt, "B", op="whoami")
    assert a["uid"] != b["uid"] and a["uid"] >= 100000 and b["uid"] >= 100000
    assert a["host"] != b["host"]  # own UTS namespace
    assert (await call(rt, "B", op="setuid0"))["ok"] is False
    assert (await call(rt, "B", op="write", path="/etc/functionai-escape"))["ok"] is False
    assert not os.path.exists("/etc/functionai-escape")


@needs_root
@pytest.mark.asyncio
async def test_store_and_runtime_files_are_hidden(probe):
    rt, _a = probe
    db = os.path.join(rt.state_dir, "functionai.db")
    assert os.path.exists(db)
    assert not (await call(rt, "B", op="read", path=db))["ok"]


@needs_root
@pytest.mark.parametrize("policy", ["none", "loopback", "host"])
@pytest.mark.asyncio
async def test_network_policy(rt: Runtime, policy: str):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve() -> None:
        srv.settimeout(10)
        try:
            conn, _ = srv.accept()
            conn.sendall(b"hello")
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        await rt.deploy(FunctionSpec.from_code("net", PROBE, network=policy))
        host = (await rt.invoke("net", {"op": "connect", "port": port}, session="n"))
        own = (await rt.invoke("net", {"op": "loopback_self"}, session="n")).value
        if policy == "host":
            assert host.value == {"ok": True, "value": "hello"}
            assert own["ok"]
        else:
            assert host.value["ok"] is False, host.value
            assert own["ok"] is (policy == "loopback"), own
    finally:
        if t.is_alive():  # nobody connected (the expected outcome): wake the accept
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        t.join(timeout=15)
        srv.close()


@needs_root
@pytest.mark.asyncio
async def test_each_instance_gets_a_network_namespace_of_its_own(rt: Runtime):
    """Templates make network namespaces ahead (the slowest one to create):
    each is joined by one instance only, never shared, never the host's, and
    one with ``loopback`` still brings up its own ``lo`` only."""
    code = (
        "import os, socket\n"
        "_srv = []\n"
        "def handler(e, c):\n"
        "    if e == 'listen':\n"
        "        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); _srv.append(s)\n"
        "        return s.getsockname()[1]\n"
        "    if isinstance(e, int):\n"
        "        try:\n"
        "            socket.create_connection(('127.0.0.1', e), timeout=2).close(); return 'connected'\n"
        "        except OSError as exc:\n"
        "            return type(exc).__name__\n"
        "    return os.readlink('/proc/self/ns/net')\n"
    )
    await rt.deploy(FunctionSpec.from_code("nets", code, network="loopback"))
    seen = []
    for i in range(6):
        seen.append((await rt.invoke("nets", None, session=f"n{i}")).value)
        iso = (await rt.describe_session(f"n{i}"))["instance"]["isolation"]
        assert iso["namespaces"]["net"] is True and "net" not in iso["missing"], iso
    assert len(set(seen)) == 6 and os.readlink("/proc/self/ns/net") not in seen, seen
    port = (await rt.invoke("nets", "listen", session="n0")).value
    assert (await rt.invoke("nets", port, session="n0")).value == "connected"  # its own lo is up
    assert (await rt.invoke("nets", port, session="n1")).value != "connected"  # not a neighbour's


async def test_sys_shows_the_sandbox_network_not_the_hosts(rt: Runtime):
    """/sys in a sandbox is a sysfs of its own network namespace: the host's
    interfaces (names, MAC addresses) are not there, nor the cgroup tree with
    every other session's cgroup; with ``network="host"`` it stays the host's."""
    code = (
        "import os\n"
        "def handler(e, c):\n"
        "    macs = {}\n"
        "    for d in os.listdir('/sys/class/net'):\n"
        "        with open(f'/sys/class/net/{d}/address') as f:\n"
        "            macs[d] = f.read().strip()\n"
        "    return {'net': sorted(os.listdir('/sys/class/net')), 'macs': macs, 'cgroup': sorted(os.listdir('/sys/fs/cgroup')) if os.path.isdir('/sys/fs/cgroup') else None}\n"
    )
    host_net = sorted(os.listdir("/sys/class/net"))
    host_macs = set()
    for d in host_net:
        with open(f"/sys/class/net/{d}/address") as f:
            host_macs.add(f.read().strip())
    host_macs.discard("00:00:00:00:00:00")
    assert host_net != ["lo"] and host_macs  # (the host has more: the test can tell)
    await rt.deploy(FunctionSpec.from_code("sysfs", code))
    seen = (await rt.invoke("sysfs", None, session="s")).value
    assert seen["net"] == ["lo"] and not (set(seen["macs"].values()) & host_macs), seen
    assert not seen["cgroup"], seen
    iso = (await rt.describe_session("s"))["instance"]["isolation"]
    assert iso["own_sysfs"] is True and "sysfs" not in iso["missing"], iso
    await rt.deploy(FunctionSpec.from_code("hostnet", code, network="host"))
    assert (await rt.invoke("hostnet", None, session="h")).value["net"] == host_net


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


@pytest.mark.asyncio
async def test_each_instance_starts_in_its_own_process_forked_ahead(rt: Runtime):
    """A template keeps one process forked ahead (a standby) and starts the
    next instance in it: every instance is still a process of its own, PID 1
    of its own PID namespace, and the standby waiting next holds nothing of
    the template (its control socket: the runtime must see the template go)
    and goes with the template."""
    code = "import os\ndef handler(e, c):\n    return [os.getpid(), os.readlink('/proc/self/ns/pid'), sorted(os.listdir('/proc/self/fd'))]\n"
    await rt.deploy(FunctionSpec.from_code("ahead", code))
    seen, host_pids, ahead = [], [], []
    for i in range(5):
        pid, pidns, _fds = (await rt.invoke("ahead", None, session=f"a{i}")).value
        desc = await rt.describe_session(f"a{i}")
        assert pid == 1, pid
        seen.append(pidns)
        host_pids.append(desc["instance"]["pid"])
        ahead.append("process" in desc["instance"]["isolation"]["ahead"])
    assert len(set(seen)) == 5 and os.readlink("/proc/self/ns/pid") not in seen, seen
    assert len(set(host_pids)) == 5, host_pids
    assert any(ahead[1:]), f"no instance started in a process forked ahead: {ahead}"
    template = next(iter(rt.backend._templates.values()))  # type: ignore[attr-defined]
    tpid = template.proc.pid
    # the standby: the template's child that is no instance
    deadline = asyncio.get_running_loop().time() + 30
    while not (_children(tpid) - set(host_pids)) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    standby = _children(tpid) - set(host_pids)
    assert len(standby) == 1, (standby, host_pids)
    (spid,) = standby
    held = {fd: os.readlink(f"/proc/{spid}/fd/{fd}") for fd in os.listdir(f"/proc/{spid}/fd")}
    beyond_stdio = [link for fd, link in held.items() if int(fd) > 2]
    assert len(beyond_stdio) == 1 and beyond_stdio[0].startswith("socket:"), held  # its own socket only
    template.proc.kill()
    template.proc.wait()
    deadline = asyncio.get_running_loop().time() + 30
    while os.path.exists(f"/proc/{spid}") and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert not os.path.exists(f"/proc/{spid}"), "the standby went with its template"
    r = await rt.invoke("ahead", None, session="after")  # a new template serves again
    assert r.value[0] == 1


@pytest.mark.asyncio
async def test_each_instance_gets_a_masked_mount_namespace_of_its_own(rt: Runtime):
    """Templates also make mount namespaces ahead, with the masks in place:
    each goes to one instance only.  Every instance still sees a read-only
    root, a /tmp that holds only its own files (not those of an instance
    before it), a /proc of its own PID namespace, and of the state
    directory only its own session's path."""
    code = (
        "import os\n"
        "def handler(e, c):\n"
        "    sid = os.environ['FUNCTIONAI_SESSION_ID']\n"
        "    with open(f'/tmp/{sid}', 'w') as f:\n"
        "        f.write(sid)\n"
        "    try:\n"
        "        open('/fai-root-write', 'w').close(); root = 'written'\n"
        "    except OSError as exc:\n"
        "        root = exc.errno\n"
        "    seen, d = [], os.getcwd()\n"
        "    while d != e and len(d) > len(e):\n"
        "        d = os.path.dirname(d)\n"
        "        seen += os.listdir(d)\n"
        "    return {'mnt': os.readlink('/proc/self/ns/mnt'), 'tmp': sorted(os.listdir('/tmp')), 'root': root,\n"
        "            'proc_self': os.readlink('/proc/self'), 'pid': os.getpid(), 'state': seen}\n"
    )
    await rt.deploy(FunctionSpec.from_code("mnts", code))
    seen: list[str] = []
    ahead: list[bool] = []
    bound_back: list[list[str]] = []
    state_dir = os.path.realpath(rt.state_dir)
    sids = [f"m{i}" for i in range(6)]
    for sid in sids:
        v = (await rt.invoke("mnts", state_dir, session=sid)).value
        iso = (await rt.describe_session(sid))["instance"]["isolation"]
        assert iso["namespaces"]["mount"] is True and iso["private_tmp"] and iso["fs_masked"], iso
        assert "mount" not in iso["missing"] and "tmp" not in iso["missing"], iso
        ahead.append("mount" in iso["ahead"])
        # no earlier instance's files, no neighbour's; besides its own file,
        # only what every instance has (kept paths that lie under /tmp,
        # bound back: the state directory, the package's checkout)
        assert [n for n in v["tmp"] if n in sids] == [sid], v
        bound_back.append([n for n in v["tmp"] if n not in sids])
        assert v["root"] == 30, v  # EROFS: / is read-only
        assert v["proc_self"] == str(v["pid"]), v  # /proc is its own PID namespace's
        others = set(sids) - {sid}
        assert not others & set(v["state"]), v["state"]
        seen.append(v["mnt"])
    assert len(set(seen)) == 6 and os.readlink("/proc/self/ns/mnt") not in seen, seen
    assert any(ahead[1:]), f"no instance got a mount namespace made ahead: {ahead}"
    assert all(b == bound_back[0] for b in bound_back), bound_back
    assert all(os.path.isdir(f"/tmp/{n}") for n in bound_back[0]), bound_back[0]


@needs_root
@pytest.mark.asyncio
async def test_busy_neighbour_does_not_block_others(probe):
    rt, a = probe
    spinning = asyncio.ensure_future(rt.invoke("probe", {"op": "spin"}, session="spinner", timeout=1.5))
    try:
        for _ in range(5):
            assert (await call(rt, "B", op="whoami"))["pid"] == 1
        assert not spinning.done()
    finally:
        with pytest.raises(FunctionTimeout):
            await spinning
    await assert_a_untouched(rt, a)


@pytest.mark.asyncio
async def test_random_sources_are_reseeded_per_instance(rt: Runtime):
    await deploy(
        rt,
        "rnd",
        """
        import random, numpy as np
        MINE = random.Random(42)
        GEN = np.random.default_rng(7)
        def handler(event, ctx):
            return [random.random(), MINE.random(), float(np.random.rand()), float(GEN.random())]
        """,
    )
    draws = [(await rt.invoke("rnd", {}, session=f"r{i}")).value for i in range(3)]
    for k in range(4):
        column = [d[k] for d in draws]
        assert len(set(column)) == 3, (k, column)


@pytest.mark.asyncio
async def test_required_isolation_is_enforced(rt: Runtime, monkeypatch):
    from jupyter_functionai.sandbox import seccomp

    monkeypatch.setattr(seccomp, "_import_error", "simulated: no libseccomp")  # a layer this system lacks
    with pytest.raises(IsolationUnavailable) as ei:
        await rt.deploy(FunctionSpec.from_code("strict", "def handler(e, ctx):\n    return 1\n", isolation_required={"seccomp"}))
    assert "seccomp: simulated: no libseccomp" in str(ei.value)
    assert rt.functions() == []
    if ROOT:
        await rt.deploy(
            FunctionSpec.from_code(
                "strict", "def handler(e, ctx):\n    return 1\n", isolation_required={"pid", "net", "mount", "uid", "tmp", "cgroup"}
            )
        )
        r = await rt.invoke("strict", {}, session="s")
        assert r.value == 1
        desc = await rt.describe_session("s")
        assert {"pid", "net", "mount"} <= {k for k, v in desc["instance"]["isolation"]["namespaces"].items() if v}


@pytest.mark.asyncio
async def test_instance_reports_what_it_achieved(rt: Runtime):
    await deploy(rt, "echo", "def handler(e, ctx):\n    return 1\n")
    await rt.invoke("echo", {}, session="rep")
    iso = (await rt.describe_session("rep"))["instance"]["isolation"]
    assert set(iso) >= {"namespaces", "cgroup", "rlimits", "uid", "network", "missing"}
    if ROOT:
        assert iso["namespaces"] == {"pid": True, "mount": True, "ipc": True, "uts": True, "net": True}
        assert iso["uid"] is not None and iso["private_tmp"] and iso["fds_closed"]
        cg = rt.backend.cgroups.version  # type: ignore[attr-defined]
        assert iso["cgroup"] == (f"v{cg}" if cg else None)
        if not cg:
            assert "cgroup" in iso["missing"]  # the report says what this machine lacks
    else:
        assert "pid" in iso["missing"]


@pytest.mark.asyncio
async def test_module_that_fails_to_import_is_refused_at_deploy(rt: Runtime):
    with pytest.raises(UserError) as ei:
        await deploy(rt, "broken", "import json\nraise RuntimeError('bad top level')\ndef handler(e, c):\n    return 1\n")
    assert "bad top level" in str(ei.value)
    assert "line 2" in ei.value.details["traceback"]
    assert rt.functions() == []
    with pytest.raises(UserError) as ei:
        await deploy(rt, "nohandler", "def other(e, c):\n    return 1\n")
    assert "'handler'" in str(ei.value)


@pytest.mark.asyncio
async def test_fresh_path_when_templates_are_off(tmp_path):
    async with Runtime.open(tmp_path / "s", use_templates=False) as rt:
        await deploy(rt, "echo", "import os\ndef handler(e, ctx):\n    return os.getpid()\n")
        r = await rt.invoke("echo", {}, session="f")
        assert r.cold_start is not None and r.cold_start.path == "fresh"
        assert r.cold_start.init_ms > 0
        r2 = await rt.invoke("echo", {}, session="f")
        assert r2.instance_id == r.instance_id


@pytest.mark.asyncio
async def test_template_that_dies_is_replaced(rt: Runtime):
    await deploy(rt, "echo", "import os\ndef handler(e, ctx):\n    return 1\n")
    for t in list(rt.backend._templates.values()):  # type: ignore[attr-defined]
        t.proc.kill()
        t.proc.wait()
    r = await rt.invoke("echo", {}, session="x")
    assert r.value == 1 and r.cold_start is not None and r.cold_start.path == "template-fork"


@pytest.mark.asyncio
async def test_instance_sits_in_its_own_cgroups_with_the_specs_limits(rt: Runtime):
    cg = rt.backend.cgroups  # type: ignore[attr-defined]
    await deploy(rt, "cg", "import threading\ndef handler(e, ctx):\n    t = threading.Thread(target=print); t.start(); t.join()\n    return 1\n", memory=96, cpu=0.5)
    await rt.invoke("cg", {}, session="g")
    inst = rt.live_instances()[0]
    if not cg.version:
        pytest.skip(f"no writable cgroups on this machine: {cg.reason}")
    name = inst.cgroup  # named after the data dir (made ahead, or for the instance)
    assert name and name.startswith(f"{rt.backend.cgroup_tag}-"), name  # type: ignore[attr-defined]
    with open(f"/proc/{inst.pid}/cgroup") as f:
        membership = f.read()
    if cg.version == 1:
        for ctl in ("memory", "pids", "cpu"):
            assert f"{ctl}:/{cg.prefix}/{name}" in membership or f"{ctl},cpuacct:/{cg.prefix}/{name}" in membership, membership
        base = f"{cg.root}/memory/{cg.prefix}/{name}"
        with open(f"{base}/memory.limit_in_bytes") as f:
            assert int(f.read()) == 96 * 1024 * 1024
        with open(f"{cg.root}/cpu/{cg.prefix}/{name}/cpu.cfs_quota_us") as f:
            assert int(f.read()) == 50000
        with open(f"{base}/cgroup.procs") as f:
            assert [int(p) for p in f.read().split()] == [inst.pid]  # the whole process, nothing else
    else:
        assert f"0::/{cg.prefix}/{name}" in membership



@pytest.mark.asyncio
async def test_cgroups_made_ahead_go_to_one_instance_each_and_go_with_it(rt: Runtime):
    """The backend keeps a few cgroups with a function's limits made ahead:
    each instance, sequential or concurrent, sits in one of its own with the
    spec's limit, and every one is removed once its instance is gone."""
    cg = rt.backend.cgroups  # type: ignore[attr-defined]
    if not cg.version:
        pytest.skip(f"no writable cgroups on this machine: {cg.reason}")
    await deploy(rt, "cgs", "def handler(e, ctx):\n    return 1\n", memory=96)
    sids = [f"c{i}" for i in range(4)]
    for sid in sids:
        await rt.invoke("cgs", {}, session=sid)
    more = [f"p{i}" for i in range(3)]
    await asyncio.gather(*(rt.invoke("cgs", {}, session=sid) for sid in more))
    names, dirs = [], []
    for sid in sids + more:
        iid = (await rt.describe_session(sid))["instance"]["id"]
        inst = next(i for i in rt.live_instances() if i.id == iid)
        with open(f"/proc/{inst.pid}/cgroup") as f:
            membership = f.read()
        assert inst.cgroup and f"/{cg.prefix}/{inst.cgroup}" in membership, (inst.cgroup, membership)
        names.append((inst.cgroup, iid))
        base = os.path.join(cg.bases["memory"] if cg.version == 1 else cg.bases[""], inst.cgroup)
        with open(os.path.join(base, "memory.limit_in_bytes" if cg.version == 1 else "memory.max")) as f:
            assert int(f.read()) == 96 * 1024 * 1024
        with open(os.path.join(base, "cgroup.procs")) as f:
            assert [int(p) for p in f.read().split()] == [inst.pid]  # its process only
        dirs += [os.path.join(b, inst.cgroup) for b in cg.bases.values()]
    assert len({n for n, _ in names}) == len(names), names  # never shared
    assert any(not n.endswith(iid) for n, iid in names), names  # some came from the stock
    for sid in sids + more:
        await rt.close_session(sid)
    deadline = asyncio.get_running_loop().time() + 30
    while any(os.path.isdir(d) for d in dirs) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert [d for d in dirs if os.path.isdir(d)] == [], "an exited instance's cgroup is removed"

ATTACKS = """
import ctypes, os, sys, time
def handler(event, ctx):
    kind = event["attack"]
    if kind == "neighbour":
        return {"ok": event["n"]}
    if kind == "spin":
        while True:
            pass
    if kind == "memory":
        blocks = []
        while True:
            blocks.append(bytearray(16 * 1024 * 1024))
    if kind == "forkbomb":
        while True:
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
            except OSError:
                time.sleep(0.5)
                return "contained"
    if kind == "flood":
        chunk = "z" * 65536
        for _ in range(1600):  # 100 MiB
            sys.stdout.write(chunk)
        return "flooded"
    if kind == "crash":
        ctypes.string_at(0)
    if kind == "fds":
        return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
"""


@pytest.mark.parametrize("attack", ["spin", "memory", "forkbomb", "flood", "crash"])
@pytest.mark.asyncio
async def test_neighbour_keeps_answering_during_each_attack(rt: Runtime, attack: str):
    await deploy(rt, "att", ATTACKS, timeout=3, memory=128 if attack == "memory" else 512)
    assert (await rt.invoke("att", {"attack": "neighbour", "n": 0}, session="neighbour")).value == {"ok": 0}
    bad = asyncio.ensure_future(rt.invoke("att", {"attack": attack}, session="attacker"))
    answered = 0
    while not bad.done() and answered < 50:
        r = await rt.invoke("att", {"attack": "neighbour", "n": answered + 1}, session="neighbour")
        answered += 1
        assert r.value == {"ok": answered}
    assert answered >= 1
    try:
        outcome = await bad
    except Exception as exc:  # each attack ends in its own, precise way
        outcome = exc
    expected = {"spin": "FunctionTimeout", "memory": "OutOfMemory", "forkbomb": "contained", "flood": "flooded", "crash": "InstanceCrashed"}[attack]
    got = type(outcome).__name__ if isinstance(outcome, Exception) else outcome.value
    assert got == expected, outcome
    r = await rt.invoke("att", {"attack": "neighbour", "n": 99}, session="neighbour")
    assert r.value == {"ok": 99}
    assert len({i.bound_session for i in rt.live_instances()}) == len(rt.live_instances())


@needs_root
@pytest.mark.asyncio
async def test_inherited_descriptors_are_closed(rt: Runtime):
    await deploy(rt, "att", ATTACKS)
    # the runtime holds many descriptors (store, sockets of other instances)
    await rt.invoke("att", {"attack": "neighbour", "n": 1}, session="other")
    fds = (await rt.invoke("att", {"attack": "fds"}, session="x")).value
    assert fds == [0, 1, 2, 3, 4]  # stdio on /dev/null, the instance socket, and the listing itself
