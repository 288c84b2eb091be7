"""MPS (gpu/mps.py): one control daemon per card, started by the runtime on
the first slice placed there and stopped when the runtime closes; each slice
instance an MPS client with its memory and SM limits, its card's pipe
directory, and its card's shm directory as /dev/shm.

There is no GPU here: NVML is the fake of test_gpu_allocator.py and the
control binary is replaced at its adapter boundary (``Runner``), which
records the lifecycle commands. The launcher that gives the daemon its
card's /dev/shm and the sandbox side (what an instance sees) run for real,
the launcher with a stand-in control binary."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from jupyter_functionai.backends.process import ProcessBackend
from jupyter_functionai.gpu import GpuAllocator
from jupyter_functionai.gpu.mps import PID_FILE, CommandRunner, MpsControl, MpsDirs, MpsError
from jupyter_functionai.runtime import Runtime
from jupyter_functionai.spec import FunctionSpec

from .test_gpu_allocator import GIB, FakeNvml, card


class FakeRunner:
    """The control binary's stand-in: records each command; a started daemon
    leaves its pid file (this process: alive) and a shared-memory file in the
    card's shm directory, as the MPS server's would be."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def start(self, uuid: str, dirs: MpsDirs) -> None:
        self.calls.append(("start", uuid))
        if self.fail:
            raise MpsError(self.fail)
        Path(dirs.pipe, PID_FILE).write_text(f"{os.getpid()}\n")
        Path(dirs.shm, "cuda.shm.0.1.1").write_text("mps")

    def quit(self, uuid: str, dirs: MpsDirs) -> None:
        self.calls.append(("quit", uuid))
        Path(dirs.pipe, PID_FILE).unlink()


def test_one_daemon_per_card_started_on_its_first_slice_and_stopped_at_close(tmp_path: Path) -> None:
    runner = FakeRunner()
    mps = MpsControl(str(tmp_path / "mps"), runner)
    gpus = GpuAllocator(FakeNvml(card(0, gib=16), card(1, gib=16)), mps=mps)
    a = gpus.allocate("i-a", memory_mib=4 * GIB)
    b = gpus.allocate("i-b", memory_mib=4 * GIB)
    assert a.indexes == b.indexes == (0,)  # best fit: the same card, one daemon
    assert runner.calls == [("start", "GPU-fake-0")]
    assert (a.mode, a.describe()) == ("mps", "GPU-fake-0 4096 MiB (mps)")
    env = a.env()
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-fake-0"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=4096M"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"  # 4 of 16 GiB: a quarter of the SMs
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == mps.dirs("GPU-fake-0").pipe
    gpus.allocate("i-c", memory_mib=14 * GIB)  # does not fit card 0 any more: card 1, its own daemon
    assert runner.calls == [("start", "GPU-fake-0"), ("start", "GPU-fake-1")]
    snap = gpus.snapshot()
    assert [d["enforcement"] for d in snap["devices"]] == ["mps", "mps"]
    assert snap["mps"]["used"] and [(d["uuid"], d["pid"]) for d in snap["mps"]["daemons"]] == [("GPU-fake-0", os.getpid()), ("GPU-fake-1", os.getpid())]
    gpus.release("i-a")
    gpus.release("i-b")
    assert gpus.allocate("i-d", memory_mib=GIB).mps is not None and len(runner.calls) == 2  # still running: not started again
    assert gpus.close() == []
    assert sorted(runner.calls[2:]) == [("quit", "GPU-fake-0"), ("quit", "GPU-fake-1")]
    assert gpus.snapshot()["mps"]["daemons"] == []


def test_a_daemon_an_earlier_run_left_is_adopted_not_started_twice(tmp_path: Path) -> None:
    """A server killed with -9 cannot quit its daemons: the next run finds the
    card's daemon by its pid file, uses it, and quits it when it closes."""
    first = FakeRunner()
    GpuAllocator(FakeNvml(card(0, gib=16)), mps=MpsControl(str(tmp_path / "mps"), first)).allocate("i-a", memory_mib=GIB)
    assert first.calls == [("start", "GPU-fake-0")]  # ... and the run dies without close()
    again = FakeRunner()
    gpus = GpuAllocator(FakeNvml(card(0, gib=16)), mps=MpsControl(str(tmp_path / "mps"), again))
    assert gpus.allocate("i-b", memory_mib=GIB).mode == "mps"
    assert again.calls == []
    assert gpus.close() == [] and again.calls == [("quit", "GPU-fake-0")]


def test_mig_instances_and_whole_cards_need_no_daemon(tmp_path: Path) -> None:
    from jupyter_functionai.gpu import MigInstance

    runner = FakeRunner()
    mig = dataclasses.replace(card(0), mig_enabled=True, mig=(MigInstance(0, "MIG-a", 10 * GIB),))
    gpus = GpuAllocator(FakeNvml(mig, card(1)), mps=MpsControl(str(tmp_path / "mps"), runner))
    assert gpus.allocate("i-m", memory_mib=8 * GIB).mode == "mig"
    assert gpus.allocate("i-w", 1.0).mode == "whole card"
    assert runner.calls == []
    assert [d["enforcement"] for d in gpus.snapshot()["devices"]] == ["mig", "mps"]


def test_a_daemon_that_does_not_start_leaves_the_watchdog_and_says_why(tmp_path: Path) -> None:
    runner = FakeRunner(fail="exited 1: permission denied")
    gpus = GpuAllocator(FakeNvml(card(0, gib=16)), mps=MpsControl(str(tmp_path / "mps"), runner))
    s = gpus.allocate("i-a", memory_mib=2 * GIB)
    assert s.mode == "watchdog" and "CUDA_MPS_PIPE_DIRECTORY" not in s.env()
    snap = gpus.snapshot()
    assert snap["devices"][0]["enforcement"] == "watchdog"
    assert snap["mps"]["used"] is False and "did not start: exited 1: permission denied" in snap["mps"]["reason"]
    gpus.allocate("i-b", memory_mib=2 * GIB)
    assert runner.calls == [("start", "GPU-fake-0")]  # not tried at every slice


def test_mps_is_used_only_where_it_is_installed_and_instances_share_a_uid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    off = MpsControl.from_machine(str(tmp_path / "mps"), ["launch"], shared_uid=True)
    assert not off.usable and off.reason == "nvidia-cuda-mps-control is not installed"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-cuda-mps-control").write_text("#!/bin/sh\n")
    (bin_dir / "nvidia-cuda-mps-control").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    root = MpsControl.from_machine(str(tmp_path / "mps"), ["launch"], shared_uid=False)
    assert not root.usable and "one uid at a time" in root.reason
    assert MpsControl.from_machine(str(tmp_path / "mps"), ["launch"], shared_uid=True).usable
    # without NVML there is nothing to hold: the allocator says so and no MPS state is kept
    assert GpuAllocator(None, "no driver").snapshot()["available"] is False


# a stand-in for nvidia-cuda-mps-control: "-d" records what its /dev/shm holds
# and leaves a daemon (sleep) with its pid file; as a client, "quit" ends it
FAKE_CONTROL = """\
#!/bin/sh
if [ "$1" = "-d" ]; then
    ls -a /dev/shm > "$CUDA_MPS_LOG_DIRECTORY/shm-seen"
    echo "$CUDA_VISIBLE_DEVICES" > "$CUDA_MPS_LOG_DIRECTORY/device"
    sleep 300 > /dev/null 2>&1 &
    echo $! > "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
    exit 0
fi
read cmd
[ "$cmd" = quit ] && kill "$(cat "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid")"
"""


def test_the_real_launcher_gives_the_daemon_its_cards_shm_and_quit_stops_it(tmp_path: Path) -> None:
    control = tmp_path / "nvidia-cuda-mps-control"
    control.write_text(FAKE_CONTROL)
    control.chmod(control.stat().st_mode | stat.S_IXUSR)
    host_marker = Path("/dev/shm") / f"fai-host-{uuid.uuid4().hex[:8]}"
    host_marker.write_text("the host's")
    try:
        mps = MpsControl(str(tmp_path / "mps"), CommandRunner(str(control), [sys.executable, "-m", "jupyter_functionai.sandbox.mps_launch"]))
        dirs = mps.dirs("GPU-real-0")
        os.makedirs(dirs.shm, exist_ok=True)
        Path(dirs.shm, "card-0-only").write_text("x")
        assert mps.ensure("GPU-real-0") == dirs
        seen = Path(dirs.log, "shm-seen").read_text().split()
        assert "card-0-only" in seen and host_marker.name not in seen, seen
        assert Path(dirs.log, "device").read_text().strip() == "GPU-real-0"
        (daemon,) = mps.state()["daemons"]
        assert daemon["pid"] is not None
        assert mps.close() == []
        subprocess.run(["sh", "-c", f"while kill -0 {daemon['pid']} 2>/dev/null; do sleep 0.05; done"], timeout=30, check=True)
        assert mps.state()["daemons"] == []
    finally:
        host_marker.unlink()


def test_as_a_normal_user_the_daemon_and_its_client_share_the_cards_shm_and_nothing_else(tmp_path: Path) -> None:
    """The path MPS is for: a server run by a normal user. The real launcher
    (a user namespace, then a mount namespace) starts the stand-in daemon with
    the card's shm as /dev/shm; the slice instance, as the same user, finds
    the daemon's pid file in its pipe directory and the daemon's shared file
    in its /dev/shm, and neither sees the host's /dev/shm."""
    from .test_isolation_nonroot import HERE, _as_user, _user

    pw = _user()
    assert pw is not None
    parent = pw.pw_dir if os.path.isdir(pw.pw_dir) and os.path.realpath(pw.pw_dir) != "/" else "/var/tmp"
    base = Path(tempfile.mkdtemp(prefix="fai-mps-", dir=parent))
    host_marker = Path("/dev/shm") / f"fai-host-{uuid.uuid4().hex[:8]}"
    host_marker.write_text("the host's")
    try:
        control = base / "nvidia-cuda-mps-control"
        # the stand-in also leaves the shared file an MPS server would
        control.write_text(FAKE_CONTROL.replace('    exit 0\n', '    echo mps > /dev/shm/cuda.shm.0.1.1\n    exit 0\n'))
        control.chmod(0o755)
        for p in (base, control):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        cfg = {"state": str(base / "state"), "control": str(control)}
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "PYTHONPATH": os.path.dirname(HERE)}
        proc = _as_user(pw, [sys.executable, os.path.join(HERE, "mps_nonroot_probe.py"), json.dumps(cfg)], env, 240)
        assert proc.returncode == 0, f"the probe failed as {pw.pw_name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        host_marker.unlink()
        shutil.rmtree(base, ignore_errors=True)
    assert out["gpu"] == "GPU-fake-0 4096 MiB (mps)" and "mps" not in out["missing"], out
    assert out["env"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=4096M" and out["env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert out["pipe"] == [PID_FILE] and out["daemon_pid"] is not None
    assert "cuda.shm.0.1.1" in out["shm"] and host_marker.name not in out["shm"], out["shm"]
    assert host_marker.name not in out["daemon_shm_seen"], out["daemon_shm_seen"]
    assert out["daemons_after"] == []  # quit with the runtime


SEE = textwrap.dedent("""
    import os

    def handler(event, ctx):
        pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
        return {
            "env": {k: v for k, v in os.environ.items() if k.startswith(("CUDA_MPS_", "CUDA_VISIBLE"))},
            "shm": sorted(os.listdir("/dev/shm")),
            "pipe": sorted(os.listdir(pipe)) if pipe and os.path.isdir(pipe) else None,
            "mps_root": sorted(os.listdir(os.path.dirname(os.path.dirname(pipe)))) if pipe else None,
        }
""").lstrip()


async def test_a_slice_instance_is_an_mps_client_of_its_card_and_sees_nothing_else(tmp_path: Path) -> None:
    runner = FakeRunner()
    state = tmp_path / "state"
    mps = MpsControl(str(state / "mps"), runner)
    backend = ProcessBackend(str(state), gpus=GpuAllocator(FakeNvml(card(0, gib=16), card(1, gib=16)), mps=mps))
    host_marker = Path("/dev/shm") / f"fai-host-{uuid.uuid4().hex[:8]}"
    host_marker.write_text("the host's")
    try:
        async with Runtime.open(state, backend=backend, reap_interval=0.05) as rt:
            await rt.deploy(FunctionSpec.from_code("client", SEE, gpu_memory="4GiB", env={"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=80G"}))
            out = (await rt.invoke("client", session="m1")).value
            assert out["env"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=4096M"  # the slice's, not the spec env's
            assert out["env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
            assert out["env"]["CUDA_VISIBLE_DEVICES"] == "GPU-fake-0"
            assert out["shm"] == ["cuda.shm.0.1.1"]  # the card's shm, not the host's /dev/shm
            assert out["pipe"] == [PID_FILE]
            assert out["mps_root"] == ["GPU-fake-0"]  # nothing else of the state directory
            (inst,) = rt.live_instances()
            assert inst.isolation["gpu"] == "GPU-fake-0 4096 MiB (mps)" and "mps" not in inst.isolation.get("missing", {})
            assert rt.gpus()["mps"]["daemons"][0]["uuid"] == "GPU-fake-0"
            assert runner.calls == [("start", "GPU-fake-0")]
        assert runner.calls == [("start", "GPU-fake-0"), ("quit", "GPU-fake-0")]  # stopped with the runtime
    finally:
        host_marker.unlink()
