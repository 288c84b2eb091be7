"""A normal user's sandboxes get cgroup memory and pids caps where the
user has been delegated a cgroup (as systemd delegates one with
``Delegate=yes``), else rlimits.

As root, the test makes such a delegation for ``FUNCTIONAI_TEST_USER`` (CI
creates ``fai-ci``): a cgroup the user owns, on whichever hierarchy holds the
memory controller, with a process of that user alone in it, which runs
tests/cgroup_probe.py. The probe's runtime must use that cgroup: a memory hog
is stopped by the cgroup (no ``RLIMIT_AS``), a fork bomb by its pids limit,
its neighbour session keeps answering, and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai.sandbox.isolation import SERVER_LEAF, CgroupManager

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.geteuid() == 0
USER = os.environ.get("FUNCTIONAI_TEST_USER", "")
CG = "/sys/fs/cgroup"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux cgroups")


def _chown_tree(path: str, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            os.chown(p, uid, gid)


def _delegate(pw: pwd.struct_passwd, name: str) -> tuple[list[str], list[str]]:
    """Make cgroup(s) ``name`` owned by the user, as a delegation does; the
    files to write a pid to (to move it in) and the directories made."""
    made: list[str] = []
    if os.path.exists(os.path.join(CG, "cgroup.controllers")) and "memory" in Path(CG, "cgroup.controllers").read_text().split():
        d = os.path.join(CG, name)
        os.mkdir(d)
        made.append(d)
        _chown_tree(d, pw.pw_uid, pw.pw_gid)
        return [os.path.join(d, "cgroup.procs")], made
    procs = []
    for c in ("memory", "pids", "cpu"):
        d = os.path.join(CG, c, name)
        os.mkdir(d)
        made.append(d)
        _chown_tree(d, pw.pw_uid, pw.pw_gid)
        procs.append(os.path.join(d, "tasks"))
    return procs, made


def _remove_tree(d: str) -> list[str]:
    """Remove a cgroup directory and its children; what could not go."""
    left = []
    for sub, _dirs, _files in os.walk(d, topdown=False):
        try:
            os.rmdir(sub)
        except OSError:
            left.append(sub)
    return left


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    if not ROOT:
        pytest.skip("making a delegation takes root (CI runs the suite as root and names a normal user)")
    if not USER:
        pytest.skip("running as root: set FUNCTIONAI_TEST_USER to a normal user (CI creates fai-ci)")
    pw = pwd.getpwnam(USER)
    name = f"fai-deleg-{os.urandom(4).hex()}"
    procs, made = _delegate(pw, name)
    base = tempfile.mkdtemp(prefix="fai-cg-", dir="/var/tmp")
    os.chown(base, pw.pw_uid, pw.pw_gid)
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": os.path.dirname(HERE), "HOME": base}
    # the user's process alone in the delegated cgroup: moved in, then exec'd
    # (no forking wrapper stays there) as the user with a clean environment
    moves = "; ".join(f"echo $$ > {p}" for p in procs)
    argv = [
        "sh", "-c",
        f'{moves}; exec setpriv --reuid={pw.pw_uid} --regid={pw.pw_gid} --init-groups env -i "$@"', "sh",
        *(f"{k}={v}" for k, v in env.items()),
        sys.executable, os.path.join(HERE, "cgroup_probe.py"), os.path.join(base, "data"),
    ]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"the cgroup probe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["delegation"] = name
        out["left"] = [x for d in made for x in _remove_tree(d)]
        return out
    finally:
        for d in made:
            _remove_tree(d)
        shutil.rmtree(base, ignore_errors=True)


def test_the_runtime_uses_the_users_delegated_cgroup(probe: dict[str, Any]) -> None:
    assert probe["version"] in (1, 2) and probe["reason"] == "", probe
    assert probe["delegated"].strip("/").startswith(probe["delegation"]), probe
    assert probe["isolation"]["cgroup"] == f"v{probe['version']}", probe["isolation"]
    assert "as" not in probe["isolation"]["rlimits"], "with a cgroup, memory is capped by it, not by RLIMIT_AS"
    assert "cgroup" not in probe["isolation"]["missing"], probe["isolation"]


def test_a_memory_hog_is_stopped_by_the_cgroup_and_the_neighbour_answers(probe: dict[str, Any]) -> None:
    assert probe["limit_bytes"] == 64 << 20, probe
    assert probe["hog"]["raised"] == "OutOfMemory", probe["hog"]
    assert probe["hog_again"] == "ok" and probe["neighbour"] == "B-STATE", probe


def test_a_fork_bomb_stops_at_the_cgroups_pids_limit(probe: dict[str, Any]) -> None:
    assert probe["pids_max"] == "48", probe
    bomb = probe["bomb"]
    # the instance, its disk's fuse2fs and the children: the cgroup is full
    assert bomb["error"] == "BlockingIOError" and 30 < bomb["forked"] < 48 and probe["pids_current"] == "48", bomb


def test_nothing_is_left_in_the_delegated_cgroup(probe: dict[str, Any]) -> None:
    assert probe["after_close"] == [], probe["after_close"]
    assert probe["left"] == [], probe["left"]


# -- the layout a delegated v2 cgroup gets (no v2 memory controller on a v1 machine) --


def _fake_v2(tmp_path: Path, own: str, procs: str) -> tuple[Path, Path]:
    root = tmp_path / "cg"
    d = root / own.strip("/")
    d.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (d / "cgroup.controllers").write_text("cpu memory pids\n")
    (d / "cgroup.subtree_control").write_text("")
    (d / "cgroup.procs").write_text(procs)
    proc_file = tmp_path / "cgroup"
    proc_file.write_text(f"0::{own}\n")
    return root, proc_file


def test_a_delegated_v2_cgroup_moves_the_server_into_a_leaf_and_makes_instances_beside_it(tmp_path: Path) -> None:
    own = "/user.slice/user-1000.slice/user@1000.service/app.slice/functionai-1.scope"
    root, proc_file = _fake_v2(tmp_path, own, f"{os.getpid()}\n")
    mgr = CgroupManager(root=str(root), as_root=False, proc_cgroup=str(proc_file), ask_systemd=False)
    d = root / own.strip("/")
    assert (mgr.version, mgr.reason) == (2, ""), mgr.reason
    assert (d / SERVER_LEAF / "cgroup.procs").read_text() == "0"  # the server moved itself out of the way
    assert (d / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (d / "functionai" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    inst = d / "functionai" / "i-1"
    inst.mkdir()  # a real cgroupfs makes the interface files; emulate that
    for f in ("memory.max", "memory.swap.max", "cpu.max", "pids.max", "cgroup.procs", "memory.events"):
        (inst / f).write_text("")
    assert mgr.create("i-1", cpu=0.5, memory_mb=128, pids=64) == [str(inst / "cgroup.procs")]
    assert (inst / "memory.max").read_text() == str(128 << 20) and (inst / "pids.max").read_text() == "64"
    assert mgr.bases == {"": str(d / "functionai")}


@pytest.mark.parametrize(
    ("procs", "controllers", "says"),
    [
        ("1\n{me}\n", "cpu memory pids", "holds other processes (1)"),
        ("{me}\n", "cpu", "not delegated with the memory and pids controller(s)"),
    ],
)
def test_a_v2_cgroup_that_cannot_be_used_says_why(tmp_path: Path, procs: str, controllers: str, says: str) -> None:
    own = "/user.slice/user-1000.slice/session-3.scope"
    root, proc_file = _fake_v2(tmp_path, own, procs.format(me=os.getpid()))
    (root / own.strip("/") / "cgroup.controllers").write_text(controllers + "\n")
    mgr = CgroupManager(root=str(root), as_root=False, proc_cgroup=str(proc_file), ask_systemd=False)
    assert mgr.version is None and says in mgr.reason and "systemd-run --user --scope -p Delegate=yes" in mgr.reason, mgr.reason
    assert not (root / own.strip("/") / SERVER_LEAF).exists()


def test_a_normal_user_without_a_delegation_falls_back_to_rlimits_and_says_why(tmp_path: Path) -> None:
    """A v1 memory cgroup the user cannot write (here: no ``tasks`` file to
    write to) is no delegation: refused, with the reason."""
    root = tmp_path / "cg"
    for c in ("memory", "pids", "cpu"):
        (root / c / "system.slice").mkdir(parents=True)
        if c != "memory":
            (root / c / "system.slice" / "tasks").write_text("")
    proc_file = tmp_path / "cgroup"
    proc_file.write_text("4:memory:/system.slice\n8:pids:/system.slice\n1:cpu,cpuacct:/system.slice\n0::/\n")
    mgr = CgroupManager(root=str(root), as_root=False, proc_cgroup=str(proc_file), ask_systemd=False)
    assert mgr.version is None and "memory cgroup (/system.slice) is not delegated to this user" in mgr.reason, mgr.reason
    (root / "memory" / "system.slice" / "tasks").write_text("")
    mgr = CgroupManager(root=str(root), as_root=False, proc_cgroup=str(proc_file), ask_systemd=False)
    assert mgr.version == 1 and mgr.bases == {c: str(root / c / "system.slice" / "functionai") for c in ("memory", "cpu", "pids")}


def test_cgroups_switched_off_make_and_probe_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    for as_root in (True, False):
        mgr = CgroupManager(root=str(root), enabled=False, as_root=as_root)
        assert mgr.version is None and mgr.reason == "cgroups disabled by configuration"
        assert list(root.iterdir()) == [] and mgr.create("i-1", cpu=1, memory_mb=64, pids=8) == []
