"""Each session's disk is capped (``resources.disk_mb``, default 1 GiB).

tests/disk_probe.py runs real sessions of a function with a 32 MiB disk,
once as root (loop-mounted ext4 image) and once as a normal user (the same
image served by fuse2fs inside the session's user namespace): the session that
fills its disk gets ENOSPC, its neighbour keeps writing, the host holds no more
than the image, and the files survive a pause and a crash of the instance.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

from jupyter_functionai.errors import InvalidSpec
from jupyter_functionai.spec import FunctionSpec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.geteuid() == 0
USER = os.environ.get("FUNCTIONAI_TEST_USER", "")
CAP = 32 << 20

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sandboxes")


def _run_probe(mode: str) -> dict[str, Any]:
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": os.path.dirname(HERE)}
    if mode == "root":
        if not ROOT:
            pytest.skip("the root half needs root (CI runs the suite as root)")
        base = tempfile.mkdtemp(prefix="fai-disk-")
        argv = [sys.executable, os.path.join(HERE, "disk_probe.py"), os.path.join(base, "data")]
        env["HOME"] = base
    else:
        if ROOT:
            if not USER:
                pytest.skip("running as root: set FUNCTIONAI_TEST_USER to a normal user (CI creates fai-ci) to run the non-root half")
            pw = pwd.getpwnam(USER)
        else:
            pw = pwd.getpwuid(os.getuid())
        base = tempfile.mkdtemp(prefix="fai-disk-", dir="/var/tmp")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        env["HOME"] = base
        argv = [sys.executable, os.path.join(HERE, "disk_probe.py"), os.path.join(base, "data")]
        if ROOT:
            argv = ["runuser", "-u", pw.pw_name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, f"the disk probe failed ({mode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fuse2fs() -> bool:
    """fuse2fs serves a normal user's disk images; as root the test installs it
    (as .ci/run does), as a normal user it takes the machine as it is."""
    if shutil.which("fuse2fs") or os.access("/usr/bin/fuse2fs", os.X_OK):
        return True
    if ROOT and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "fuse2fs"], capture_output=True, timeout=900, env=env)
    return bool(shutil.which("fuse2fs"))


@pytest.fixture(scope="module", params=["root", "user"])
def probe(request: pytest.FixtureRequest) -> dict[str, Any]:
    capped = request.param == "root" or _fuse2fs()
    return {"mode": request.param, "capped": capped, **_run_probe(request.param)}


def _capped(probe: dict[str, Any]) -> bool:
    """Whether this machine can cap the probe's disks; where it cannot (a
    normal user without fuse2fs), what the user gets instead is checked:
    the reason, in the report, and a refusal for ``isolation_required``."""
    if probe["capped"]:
        return True
    assert "fuse2fs" in probe["caps"], probe["caps"]
    assert probe["a_isolation"]["missing"]["disk"] == probe["caps"], probe["a_isolation"]
    assert "refused" in probe["strict"] and "disk" in probe["strict"]["refused"], probe["strict"]
    return False


def test_the_working_directory_is_a_filesystem_of_the_cap(probe: dict[str, Any]) -> None:
    if not _capped(probe):
        return
    iso = probe["a_isolation"]
    assert probe["caps"] == "", probe["caps"]
    assert iso["disk"] == ("loop" if probe["mode"] == "root" else "fuse2fs"), iso
    assert iso["disk_mb"] == 32 and "disk" not in iso["missing"], iso
    # what the session sees: a filesystem of (about) 32 MiB, empty
    assert 8 <= probe["a_stat"]["size_mib"] <= 32, probe["a_stat"]
    assert probe["a_stat"]["ls"] in ([], ["lost+found"]), probe["a_stat"]


def test_writing_past_the_cap_gets_enospc_and_the_host_holds_no_more(probe: dict[str, Any]) -> None:
    if not _capped(probe):
        return
    fill = probe["a_fill"]
    assert fill["errno"] == 28, fill  # ENOSPC, not 200 MiB on the host
    assert 8 <= fill["written_mib"] <= 32, fill
    assert probe["a_more"]["errno"] == 28, probe["a_more"]
    img = probe["host_image"]
    assert img["size"] == CAP and img["allocated"] <= CAP, img
    assert img["mode"] == "0o600", img  # the image itself is not the session's to open
    assert probe["host_workdir"] == [], "the session's files are inside the image, not in the host directory"
    # many small files end the same way
    assert probe["a_files"]["errno"] == 28 and probe["a_files"]["made"] > 100, probe["a_files"]


def test_a_full_neighbour_takes_nothing_from_another_session(probe: dict[str, Any]) -> None:
    if not _capped(probe):
        return
    assert probe["b_write"] == "ok"
    assert probe["b_after"] == "B-FILE"
    assert probe["b_fill"] == {"errno": None, "written_mib": 8}, probe["b_fill"]


def test_space_comes_back_and_files_survive_a_pause_and_a_crash(probe: dict[str, Any]) -> None:
    if not _capped(probe):
        return
    assert probe["a_rm"] == "ok" and probe["a_again"] == {"errno": None, "written_mib": 4}, (probe["a_rm"], probe["a_again"])
    assert probe["a_keep"] == "ok" and probe["paused"] is True
    if probe["a_isolation"].get("disk") == "fuse2fs":
        # a pause stops the instance in order: fuse2fs unmounts and flushes
        # the image (killed, it left it mounted: a file closed just before
        # could be missing, and every resume ran e2fsck first)
        assert probe["a_clean_after_pause"] is True
    assert probe["a_resumed"] == "A-KEEP"
    assert "keep.txt" in probe["a_resumed_stat"]["ls"] and probe["a_resumed_stat"]["size_mib"] == probe["a_stat"]["size_mib"]
    assert probe["a_crash"]["raised"] == "InstanceCrashed", probe["a_crash"]
    # the instance died without unmounting: the image still mounts (repaired
    # first where fuse2fs serves it), with what was there before
    assert probe["a_after_crash"] == "A-KEEP"
    assert probe["a_write_after_crash"] == "ok"
    assert probe["a_dir_after_close"] is False, "closing the session removes its image"


def test_disk_zero_is_a_plain_directory_and_says_so(probe: dict[str, Any]) -> None:
    assert probe["plain_stat"]["size_mib"] > 1024, probe["plain_stat"]
    iso = probe["plain_isolation"]
    assert iso["disk"] is None and "resources.disk_mb is 0" in iso["missing"]["disk"], iso


def test_isolation_required_disk_runs_where_the_cap_can_be_made(probe: dict[str, Any]) -> None:
    if not _capped(probe):
        return
    assert "size_mib" in probe["strict"] and probe["strict"]["size_mib"] <= 16, probe["strict"]


@pytest.mark.parametrize(
    ("kw", "field", "shown"),
    [
        ({"disk": 8}, "resources.disk_mb", "8"),
        ({"disk": "lots"}, "resources.disk_mb", "'lots'"),
        ({"disk": True}, "resources.disk_mb", "True"),
        ({"disk": -1}, "resources.disk_mb", "-1"),
        ({"disk_mb": 2 << 20}, "resources.disk_mb", "2097152"),
        ({"disk": 0, "isolation_required": ["disk"]}, "resources.disk_mb", "0"),
    ],
)
def test_bad_disk_specs_are_refused_with_the_field(kw: dict[str, Any], field: str, shown: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_code("d", "def handler(e, c):\n    return 1\n", **kw)
    assert exc.value.field == field and shown in str(exc.value), str(exc.value)


def test_disk_sizes_read_like_memory_and_default_to_one_gib() -> None:
    code = "def handler(e, c):\n    return 1\n"
    assert FunctionSpec.from_code("d", code).resources.disk_mb == 1024
    assert FunctionSpec.from_code("d", code, disk="2G").resources.disk_mb == 2048
    assert FunctionSpec.from_code("d", code, disk="512Mi").resources.disk_mb == 512
    spec = FunctionSpec.from_dict({"name": "d", "source": {"kind": "code", "code": code}, "resources": {"disk_mb": "64M"}})
    assert spec.resources.disk_mb == 64 and spec.to_dict()["resources"]["disk_mb"] == 64


def test_where_no_disk_can_be_made_the_report_says_why_and_required_disk_is_refused(tmp_path: Any) -> None:
    """A machine with no loop devices (a container without /dev/loop-control)
    or, for a normal user, no fuse2fs: sessions run uncapped and say why, and
    a spec that requires the cap is refused at deploy with that reason."""
    import asyncio

    from jupyter_functionai import Runtime
    from jupyter_functionai.errors import IsolationUnavailable

    code = "import os\ndef handler(e, c):\n    st = os.statvfs('.')\n    return st.f_blocks * st.f_frsize >> 20\n"
    why = "no /dev/loop-control: loop devices are unavailable"

    async def main() -> tuple[int, dict[str, Any]]:
        async with Runtime.open(str(tmp_path / "data")) as rt:
            rt.backend.disk_mechanism, rt.backend.disk_reason = None, why  # type: ignore[attr-defined]
            with pytest.raises(IsolationUnavailable, match="loop devices are unavailable"):
                await rt.deploy(FunctionSpec.from_code("strict", code, isolation_required=["disk"]))
            await rt.deploy(FunctionSpec.from_code("loose", code, disk="32M"))
            size = (await rt.invoke("loose", {}, session="s")).value
            return size, (await rt.describe_session("s"))["instance"]["isolation"]

    size, iso = asyncio.run(main())
    assert size > 1024, "without a cap the working directory is the host's filesystem"
    assert iso["disk"] is None and iso["missing"]["disk"] == why, iso


def _loops_backing(under: str) -> list[str]:
    found = []
    for dev in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{dev}/loop/backing_file") as f:
                path = f.read().strip()
        except OSError:
            continue
        if path.startswith(under):
            found.append(f"{dev}: {path}")
    return found


@pytest.mark.skipif(not ROOT, reason="loop devices are root's mechanism")
def test_closing_while_the_blank_disk_stock_is_refilled_leaves_no_loop_device(tmp_path: Any) -> None:
    """The stock of blank images is refilled (and attached to loop devices) in
    a thread after a new session took one; a runtime closed meanwhile waits
    for it and detaches every device: none stays attached to the data
    directory, and the close does not fail."""
    import asyncio

    from jupyter_functionai import Runtime

    data = str(tmp_path / "data")

    async def main() -> list[str]:
        left: list[str] = []
        for i in range(3):
            async with Runtime.open(data) as rt:
                backend = rt.backend
                if backend.disk_mechanism != "loop":  # type: ignore[attr-defined]
                    pytest.skip(f"no loop devices here: {backend.disk_reason}")  # type: ignore[attr-defined]
                size = 16 + i
                await rt.deploy(FunctionSpec.from_code(f"f{i}", "def handler(e, c):\n    return 1\n", disk=f"{size}M"))
                # three new sessions take the whole stock; its refill starts
                # (as it would a moment later) and the runtime closes at once
                calls = [rt.invoke(f"f{i}", {}, session=f"s{i}-{n}") for n in range(3)]
                assert [r.value for r in await asyncio.gather(*calls)] == [1, 1, 1]
                backend._start_refill(size)  # type: ignore[attr-defined]
                await asyncio.sleep(0)  # its thread is under way
            left += _loops_backing(data)
        return left

    assert asyncio.run(main()) == []


def test_the_host_reaches_a_sessions_files_through_its_instance_never_through_its_symlinks(probe: dict[str, Any]) -> None:
    """How the MCP relay's and a sandbox kernel's sockets are found: on the
    session's disk (mounted in its instance only), walked without following
    any symlink the sandbox planted (an absolute one would resolve on the
    host) and without ``..``."""
    assert probe["b_plant"] == "ok", probe["b_plant"]
    r = probe["host_reach"]
    assert r["file"] == {"read": "B-REAL"}, r
    assert r["socket"] == {"received": "from-the-sandbox"}, r
    assert r["dir"] == {"opened": True}, r
    refused = {"abs", "abs_dir", "up", "dotdot", "sock_ln", "file_ln"}
    assert all("errno" in r[k] for k in refused), r
    assert r["missing"] == {"errno": 2}, r


@pytest.mark.skipif(not ROOT, reason="loop devices are root's mechanism")
def test_a_new_sessions_disk_is_mounted_ahead_and_only_in_its_instance(tmp_path: Any) -> None:
    """The stock's blank images are mounted ahead too (detached, by the
    runtime) and handed to the instance that a new session is forked into,
    which only attaches the mount: it is the session's capped ext4 there, it
    appears in no mount table but the instance's, and it goes with the
    instance.  An instance bound later (a warm pool's) mounts its disk itself,
    with the same cap."""
    import asyncio

    from jupyter_functionai import Runtime

    data = str(tmp_path / "data")
    code = (
        "import os\n"
        "def handler(e, c):\n"
        "    st = os.statvfs('.')\n"
        "    dev = os.stat('.').st_dev\n"
        "    mine = [l.split()[4] for l in open('/proc/self/mountinfo') if l.split()[2] == f'{os.major(dev)}:{os.minor(dev)}']\n"
        "    try:\n"
        "        with open('big', 'wb') as f:\n"
        "            for _ in range(64):\n"
        "                f.write(b'x' * (1 << 20)); f.flush(); os.fsync(f.fileno())\n"
        "        full = None\n"
        "    except OSError as exc:\n"
        "        full = exc.errno\n"
        "    return {'mib': st.f_blocks * st.f_frsize >> 20, 'dev': [os.major(dev), os.minor(dev)], 'mounted_at': mine,\n"
        "            'cwd': os.getcwd(), 'full': full}\n"
    )

    def host_mounts_of(dev: list[int]) -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line for line in f if line.split()[2] == f"{dev[0]}:{dev[1]}"]

    async def main() -> None:
        async with Runtime.open(data) as rt:
            backend: Any = rt.backend
            if backend.disk_mechanism != "loop":
                pytest.skip(f"no loop devices here: {backend.disk_reason}")
            await rt.deploy(FunctionSpec.from_code("ahead", code, disk="32M"))
            await rt.deploy(FunctionSpec.from_code("pooled", code, disk="32M", min_instances=1))
            await asyncio.gather(*list(backend._disk_refills.values()))  # the stock is made (and mounted)
            await rt.pool.wait_full("pooled")
            for name, sid in (("ahead", "s-ahead"), ("pooled", "s-pooled")):
                v = (await rt.invoke(name, None, session=sid)).value
                iso = (await rt.describe_session(sid))["instance"]["isolation"]
                assert iso["disk"] == "loop" and iso["disk_mb"] == 32 and "disk" not in iso["missing"], iso
                assert ("disk" in iso["ahead"]) == (name == "ahead"), iso["ahead"]
                assert v["dev"][0] == 7 and v["mounted_at"] == [v["cwd"]], v  # a loop device's ext4, on its working directory
                assert 8 <= v["mib"] <= 32 and v["full"] == 28, v  # ENOSPC at the cap
                assert host_mounts_of(v["dev"]) == [], "the session's disk is mounted in its instance only"
                await rt.close_session(sid)
                # the instance goes, then the kernel unmounts and detaches (autoclear)
                session_dir = os.path.join(os.path.realpath(data), "sessions", sid)
                deadline = time.monotonic() + 30
                while _loops_backing(session_dir) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert _loops_backing(session_dir) == [], "nothing holds the closed session's disk"

    asyncio.run(main())
