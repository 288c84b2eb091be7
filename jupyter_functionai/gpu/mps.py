"""MPS: one control daemon per GPU, started and stopped by the runtime.

Where NVIDIA's Multi-Process Service runs, a slice (not a MIG instance, not a
whole card) is held by MPS itself: its instance is an MPS client with
``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` (the slice's memory: an allocation past
it fails inside the instance, it is not merely noticed afterwards) and
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (its share of the card's SMs, in
proportion to its slice, as Function Compute gives compute in proportion to
memory). These are environment variables, read by the CUDA library inside
the sandbox, so hostile code can change them before it initialises CUDA:
they hold for well-behaved frameworks, and the NVML watchdog, which goes on
watching MPS slices, is what holds against the rest.

Each card gets a directory of its own under ``root``: ``pipe`` (the control
daemon's sockets, ``CUDA_MPS_PIPE_DIRECTORY``), ``log`` and ``shm``. MPS
clients share memory with their server through ``/dev/shm``; rather than
give the sandboxes the host's ``/dev/shm``, the daemon is started in a mount
namespace of its own with the card's ``shm`` there (the launcher,
``sandbox/mps_launch.py``), and each client instance gets that same
directory as its ``/dev/shm``: the card's MPS clients share it, as MPS
requires, and nothing else.

MPS serves one user id at a time: a client of another uid waits until the
server's clients are gone. So MPS is used only where every instance runs as
the same uid (a normal user's server); as root, where each session has a
uid of its own, slices are held by the watchdog, and the reason says so.

Commands reach the control binary through a :class:`Runner`, the adapter
boundary that tests replace (there is no GPU here); ``state()`` discovers
what runs (the daemon's pid file in its pipe directory, and its process).

This module must not import the sandbox, the backends or anything Jupyter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Any, Protocol

CONTROL = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"
START_TIMEOUT_S = 30.0


class MpsError(Exception):
    """The control daemon could not be started or stopped."""


@dataclass(frozen=True)
class MpsDirs:
    pipe: str
    log: str
    shm: str


class Runner(Protocol):
    """Runs the control binary (the adapter boundary)."""

    def start(self, uuid: str, dirs: MpsDirs) -> None:
        """Start a control daemon for the card ``uuid`` (in the background); raise MpsError."""
        ...

    def quit(self, uuid: str, dirs: MpsDirs) -> None:
        """Tell that daemon to quit (``echo quit | nvidia-cuda-mps-control``); raise MpsError."""
        ...


class CommandRunner:
    """The real runner: ``launcher`` (argv) starts the daemon in its own mount
    namespace with ``shm`` as its ``/dev/shm``; ``quit`` runs the control
    binary as a client. The environment is the bare minimum, not the server's."""

    def __init__(self, binary: str, launcher: list[str]) -> None:
        self.binary = binary
        self.launcher = launcher

    def _env(self, uuid: str, dirs: MpsDirs) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CUDA_VISIBLE_DEVICES": uuid,
            "CUDA_MPS_PIPE_DIRECTORY": dirs.pipe,
            "CUDA_MPS_LOG_DIRECTORY": dirs.log,
        }

    def start(self, uuid: str, dirs: MpsDirs) -> None:
        argv = [*self.launcher, dirs.shm, "--", self.binary, "-d"]
        try:
            p = subprocess.run(argv, env=self._env(uuid, dirs), capture_output=True, text=True, timeout=START_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MpsError(f"{CONTROL} -d: {exc}") from None
        if p.returncode != 0:
            raise MpsError(f"{CONTROL} -d exited {p.returncode}: {(p.stderr or p.stdout).strip()[-500:]}")

    def quit(self, uuid: str, dirs: MpsDirs) -> None:
        try:
            p = subprocess.run([self.binary], input="quit\n", env=self._env(uuid, dirs), capture_output=True, text=True, timeout=START_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MpsError(f"echo quit | {CONTROL}: {exc}") from None
        if p.returncode != 0:
            raise MpsError(f"echo quit | {CONTROL} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-500:]}")


class MpsControl:
    """The control daemons of this runtime, one per card, started on the first
    slice placed on a card and stopped by :meth:`close`. A daemon an earlier
    run left behind (killed before it could stop it) is found by its pid file
    in the card's pipe directory and adopted, not started twice."""

    def __init__(self, root: str, runner: Runner | None, reason: str = "") -> None:
        self.root = root
        self.runner = runner
        #: why MPS is not used ("" when it is)
        self.reason = reason if runner is None else ""
        self._started: dict[str, MpsDirs] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_machine(cls, root: str, launcher: list[str], *, shared_uid: bool) -> MpsControl:
        """MPS where its control binary is installed and every instance shares
        one uid; otherwise none, with the reason."""
        binary = shutil.which(CONTROL)
        if binary is None:
            return cls(root, None, f"{CONTROL} is not installed")
        if not shared_uid:
            return cls(root, None, "MPS serves one uid at a time, and each session here runs as a uid of its own (root)")
        return cls(root, CommandRunner(binary, launcher))

    @property
    def usable(self) -> bool:
        return self.runner is not None

    def dirs(self, uuid: str) -> MpsDirs:
        base = os.path.join(self.root, _safe(uuid))
        return MpsDirs(os.path.join(base, "pipe"), os.path.join(base, "log"), os.path.join(base, "shm"))

    def ensure(self, uuid: str) -> MpsDirs:
        """The card's daemon, started if it is not running; raises MpsError
        (and MPS is not used again: ``reason`` says why)."""
        if self.runner is None:
            raise MpsError(self.reason or "MPS is not available")
        with self._lock:
            dirs = self._started.get(uuid)
            if dirs is not None and _daemon_pid(dirs) is not None:
                return dirs
            dirs = self.dirs(uuid)
            if _daemon_pid(dirs) is not None:  # left running by an earlier run of this runtime (kill -9): ours, adopted
                self._started[uuid] = dirs
                return dirs
            for d in (dirs.pipe, dirs.log, dirs.shm):
                os.makedirs(d, mode=0o700, exist_ok=True)
            # the clients reach the pipe directory and use shm as their /dev/shm
            # (both are bound only into the card's client instances; the state
            # directory above them is the server's alone)
            os.chmod(dirs.pipe, 0o755)
            os.chmod(dirs.shm, 0o1777)
            try:
                self.runner.start(uuid, dirs)
            except MpsError as exc:
                self.reason = f"the MPS control daemon for {uuid} did not start: {exc}"
                self.runner = None
                raise MpsError(self.reason) from None
            self._started[uuid] = dirs
            return dirs

    def client_env(self, dirs: MpsDirs, memory_mib: int, share: float) -> dict[str, str]:
        """What an instance holding ``memory_mib`` (``share`` of its card) is
        told: device 0 is its card (``CUDA_VISIBLE_DEVICES`` names it alone)."""
        return {
            "CUDA_MPS_PIPE_DIRECTORY": dirs.pipe,
            "CUDA_MPS_LOG_DIRECTORY": dirs.log,
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory_mib}M",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(thread_percentage(share)),
        }

    def state(self) -> dict[str, Any]:
        """Whether MPS is used (or why not), and each daemon this runtime started: its pid while it runs."""
        with self._lock:
            started = dict(self._started)
        return {
            "used": self.usable,
            "reason": self.reason,
            "daemons": [{"uuid": u, "pipe": d.pipe, "pid": _daemon_pid(d)} for u, d in sorted(started.items())],
        }

    def close(self) -> list[str]:
        """Quit every daemon this runtime started; returns what failed."""
        with self._lock:
            started, self._started = dict(self._started), {}
        errors = []
        for uuid, dirs in started.items():
            if self.runner is None and _daemon_pid(dirs) is None:
                continue
            runner = self.runner
            try:
                if runner is None:
                    raise MpsError("no runner")
                runner.quit(uuid, dirs)
            except MpsError as exc:
                errors.append(f"{uuid}: {exc}")
        return errors


def thread_percentage(share: float) -> int:
    """The SM share of a slice: its share of the card's memory, in whole percent (1..100)."""
    return max(1, min(100, round(share * 100)))


def _daemon_pid(dirs: MpsDirs) -> int | None:
    """The pid in the daemon's pid file, while that process lives."""
    try:
        with open(os.path.join(dirs.pipe, PID_FILE)) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


def _safe(uuid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in uuid)[:80]
