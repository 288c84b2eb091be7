"""The sandbox holds for a server run by a *normal user* (a laptop's JupyterLab).

As root the tests run the probe (tests/nonroot_probe.py) as the user named by
``FUNCTIONAI_TEST_USER`` (CI creates ``fai-ci``) through ``runuser``; as a
normal user they run it directly. The server's home, Jupyter runtime dir (with
a fake ``jpserver-*.json``), data dir (store, logs), ~/.profile, ~/.ssh and a
TCP port on 127.0.0.1 are planted; session B attacks them from inside its
sandbox and session A must still answer with its own file and state.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.geteuid() == 0
USER = os.environ.get("FUNCTIONAI_TEST_USER", "")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sandboxes")


def _user() -> pwd.struct_passwd | None:
    if not ROOT:
        return pwd.getpwuid(os.getuid())
    if not USER:
        pytest.skip("running as root: set FUNCTIONAI_TEST_USER to a normal user (CI creates fai-ci) to run the non-root half")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"FUNCTIONAI_TEST_USER={USER} does not exist (useradd --create-home {USER})")
    return None


def _as_user(pw: pwd.struct_passwd, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    if ROOT:
        envs = [f"{k}={v}" for k, v in env.items()]
        argv = ["runuser", "-u", pw.pw_name, "--", "env", "-i", *envs, *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    pw = _user()
    assert pw is not None
    py = sys.executable
    # outside /tmp (which every sandbox masks anyway): under the user's home
    parent = pw.pw_dir if os.path.isdir(pw.pw_dir) and os.path.realpath(pw.pw_dir) != "/" else "/var/tmp"
    base = tempfile.mkdtemp(prefix="fai-nonroot-", dir=parent)
    try:
        home = os.path.join(base, "home")
        runtime_dir = os.path.join(home, ".local", "share", "jupyter", "runtime")
        data = os.path.join(home, ".local", "share", "jupyter", "functionai")
        os.makedirs(runtime_dir)
        os.makedirs(os.path.join(home, ".ssh"))
        targets = {
            "jpserver": os.path.join(runtime_dir, "jpserver-4242.json"),
            "profile": os.path.join(home, ".profile"),
            "ssh": os.path.join(home, ".ssh", "id_test"),
            "store": os.path.join(data, "functionai.db"),
            "log": os.path.join(data, "logs", "template-probe-v1.log"),
        }
        with open(targets["jpserver"], "w") as f:
            json.dump({"port": 8888, "token": "SERVER-TOKEN-SECRET"}, f)
        with open(targets["profile"], "w") as f:
            f.write("export AWS_SECRET=PROFILE-SECRET\n")
        with open(targets["ssh"], "w") as f:
            f.write("SSH-KEY-SECRET\n")
        for root, dirs, files in os.walk(base):
            for n in [*dirs, *files]:
                os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        probe = _as_user(pw, [py, "-c", "import jupyter_functionai"], {"PATH": "/usr/bin:/bin", "HOME": home}, 60)
        if probe.returncode != 0:
            pytest.skip(f"{pw.pw_name} cannot run {py} with jupyter_functionai (an unreadable interpreter or checkout?): {probe.stderr[-300:]}")

        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]

        def serve() -> None:
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                with c:
                    c.sendall(b"HOST-PORT-REACHED")

        threading.Thread(target=serve, daemon=True).start()
        cfg = {
            "data": data,
            "port": port,
            "targets": targets,
            "starts": 20,
            # deploying with these required succeeds as a normal user now
            "required": ["user", "mount", "pid", "ipc", "uts", "net", "tmp"],
            "write": [os.path.join(HERE, "b-was-here"), os.path.join(home, ".profile"), "/etc/b-was-here"],
        }
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": home,
            "JUPYTER_RUNTIME_DIR": runtime_dir,
            "JUPYTER_DATA_DIR": os.path.dirname(runtime_dir),
            "PYTHONPATH": os.path.dirname(HERE),
        }
        proc = _as_user(pw, [py, os.path.join(HERE, "nonroot_probe.py"), json.dumps(cfg)], env, 240)
        srv.close()
        assert proc.returncode == 0, f"the probe failed as {pw.pw_name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        with open(targets["profile"]) as f:
            out["profile_after"] = f.read()
        yield {"out": out, "targets": targets, "home": home, "data": data, "user": pw.pw_name}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _neighbour_intact(out: dict[str, Any]) -> None:
    assert out["a_after"] == {"file": "A-SECRET", "state": "A-STATE"}


def test_report_says_user_namespace(world: dict[str, Any]) -> None:
    iso = world["out"]["isolation"]
    assert iso["user_namespace"] is True, iso
    assert iso["caps_dropped"] is True, iso
    for ns in ("mount", "pid", "ipc", "uts", "net"):
        assert iso["namespaces"].get(ns) is True, (ns, iso)
    assert "user" not in iso["missing"], iso
    # each session in a user namespace of its own (nested in the template's):
    # what makes the process limit and the user keyring per session
    assert iso["namespaces"].get("user") is True and "session_user" not in iso["missing"], iso
    assert "nproc" in iso["rlimits"], iso
    assert iso["private_tmp"] is True
    # the server's home, runtime and data dirs are masked
    masks = world["out"]["masks"]
    for d in (world["home"], world["data"], os.path.dirname(world["targets"]["jpserver"])):
        assert os.path.realpath(d) in masks, (d, masks)
        assert not any(d.startswith(m + os.sep) for m in ("/tmp", "/var/tmp")), "the test must not rely on the /tmp mask"


@pytest.mark.parametrize("name", ["jpserver", "profile", "ssh", "store", "log"])
def test_server_and_user_files_unreadable(world: dict[str, Any], name: str) -> None:
    att = world["out"]["attack"]
    assert not att[f"read:{name}"]["ok"], att[f"read:{name}"]
    assert "FileNotFoundError" in att[f"read:{name}"]["error"]
    _neighbour_intact(world["out"])


def test_host_port_unreachable(world: dict[str, Any]) -> None:
    att = world["out"]["attack"]
    assert not att["connect"]["ok"], att["connect"]
    _neighbour_intact(world["out"])


def test_sys_shows_the_sandbox_network_not_the_hosts(world: dict[str, Any]) -> None:
    """/sys is the sandbox's own sysfs: its network devices are its loopback
    only (the host's would give away interface names and MAC addresses), and
    no cgroup tree of other sessions hangs under it."""
    att = world["out"]["attack"]
    assert att["sys_net"] == ["lo"], att["sys_net"]
    assert sorted(os.listdir("/sys/class/net")) != ["lo"]  # (the host has more: the probe can tell)
    assert not att["sys_cgroup"]["ok"] or att["sys_cgroup"]["value"] == [], att["sys_cgroup"]
    assert world["out"]["isolation"]["own_sysfs"] is True and "sysfs" not in world["out"]["isolation"]["missing"]


def test_only_own_processes_visible(world: dict[str, Any]) -> None:
    att = world["out"]["attack"]
    # pid 1 (the instance) and, at most, its own disk's fuse2fs daemon
    others = [p for p in att["procs"] if p != 1]
    assert 1 in att["procs"] and len(others) <= 1, att["cmdlines"]
    for p in others:
        assert att["cmdlines"][str(p)].split()[0].endswith("fuse2fs"), att["cmdlines"]
    _neighbour_intact(world["out"])


def test_no_capabilities_no_mounts(world: dict[str, Any]) -> None:
    att = world["out"]["attack"]
    assert int(att["capeff"], 16) == 0
    assert int(att["capbnd"], 16) == 0
    for m, res in att["umount"].items():
        assert not res["ok"] and "Operation not permitted" in res["error"], (m, res)
    assert not att["mount_tmpfs"]["ok"] and "Operation not permitted" in att["mount_tmpfs"]["error"]
    _neighbour_intact(world["out"])


def test_other_session_workdir_hidden(world: dict[str, Any]) -> None:
    att = world["out"]["attack"]
    assert not att["other_workdir"]["ok"], att["other_workdir"]
    assert not att["other_workdir_list"]["ok"] or att["other_workdir_list"]["value"] == [], att["other_workdir_list"]
    _neighbour_intact(world["out"])


def test_writes_outside_workdir_and_tmp_fail(world: dict[str, Any]) -> None:
    att = world["out"]["attack"]
    for path, res in att["write"].items():
        assert not res["ok"], (path, res)
        assert any(e in res["error"] for e in ("Read-only file system", "Permission denied")), (path, res)
    assert att["write_tmp"]["ok"] and att["write_workdir"]["ok"]
    assert world["out"]["profile_after"] == "export AWS_SECRET=PROFILE-SECRET\n"
    assert not os.path.exists(os.path.join(HERE, "b-was-here"))
    _neighbour_intact(world["out"])


def test_cold_start_as_normal_user(world: dict[str, Any]) -> None:
    starts = world["out"]["starts_ms"]
    assert len(starts) == 20
    p50 = statistics.median(starts)
    print(f"\nsession start + first call as {world['user']}: p50 {p50:.1f} ms, max {max(starts):.1f} ms")
    assert p50 < 2000


def test_standbys_take_their_copies_of_a_calls_pages_as_normal_user(world: dict[str, Any]) -> None:
    """In a user namespace too, the template learns the pages a call writes
    (its own pagemap) and later standbys take their own copies ahead."""
    ahead = world["out"]["starts_ahead"][-4:]  # the function with a warmup hook
    assert "a call writes" in world["out"]["warmed_log"], world["out"]["warmed_log"]
    assert any("pages" in a for a in ahead), ahead
    assert all(("process" in a) == ("pages" in a) for a in ahead), ahead


def test_refused_user_namespaces_are_said_at_start_and_refuse_required_specs(tmp_path, monkeypatch, caplog) -> None:
    """A kernel that refuses unprivileged user namespaces (simulated: this one
    allows them): the backend warns at start naming the sysctl, reports
    ``user`` (and the namespaces) as missing, and a spec requiring them is refused."""
    import logging

    from jupyter_functionai import FunctionSpec, IsolationUnavailable, Runtime
    from jupyter_functionai.backends.process import ProcessBackend
    from jupyter_functionai.sandbox import isolation as iso

    why = "unprivileged user namespaces are disabled: sysctl kernel.unprivileged_userns_clone=0 (set it to 1)"
    monkeypatch.setattr(iso, "_userns_reason", why)
    monkeypatch.setattr(iso.os, "geteuid", lambda: 1000)
    with caplog.at_level(logging.WARNING):
        backend = ProcessBackend(str(tmp_path / "data"), cgroups=False)
    assert "kernel.unprivileged_userns_clone" in caplog.text and "NOT be isolated" in caplog.text
    assert backend.userns is False
    spec = FunctionSpec.from_code("strict", "def handler(e, ctx):\n    return 1\n", isolation_required={"user", "pid"})
    caps = backend.capabilities(spec)
    assert caps["user"] == why and "kernel.unprivileged_userns_clone" in caps["pid"]
    rt = Runtime(str(tmp_path / "data"), backend=backend)
    try:
        with pytest.raises(IsolationUnavailable) as ei:
            rt._check_isolation(spec)
        assert "user: " + why in str(ei.value)
    finally:
        rt.store.close()


def test_user_namespace_probe_is_real() -> None:
    """On this kernel, as this user: the probe's answer matches what unshare does."""
    from jupyter_functionai.sandbox import isolation as iso

    caps = iso.probe_namespaces()
    if ROOT:
        assert caps["user"].startswith("not used") and caps["pid"] == ""
    else:
        assert caps["user"] == iso.unprivileged_userns_unavailable()
