"""The one module that talks to NVML (nvidia-ml-py, imported as ``pynvml``).

Everything else sees :class:`Nvml`: a snapshot of the devices (memory, MIG
instances, compute processes). :func:`load` answers the real one, or None
with the reason there is none (no package, no driver, no device), which the
allocator reports as "no GPU found". Tests put a fake here, and nowhere
else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_mib: int
    name: str = ""  # the host's /proc/<pid>/comm ("nvidia-cuda-mps-server" for an MPS server)


@dataclass(frozen=True)
class MigInstance:
    index: int
    uuid: str
    memory_mib: int


@dataclass(frozen=True)
class Device:
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    mig_enabled: bool = False
    mig: tuple[MigInstance, ...] = ()
    processes: tuple[GpuProcess, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_total_mib": self.memory_total_mib,
            "memory_used_mib": self.memory_used_mib,
            "mig_enabled": self.mig_enabled,
            "mig": [{"index": m.index, "uuid": m.uuid, "memory_mib": m.memory_mib} for m in self.mig],
            "processes": [{"pid": p.pid, "used_mib": p.used_mib, "name": p.name} for p in self.processes],
        }


class Nvml(Protocol):
    """What the allocator asks of NVML."""

    def devices(self) -> list[Device]:
        """The devices now (memory in use and processes change between calls)."""
        ...

    def driver(self) -> str:
        """The driver version, for messages."""
        ...


class RealNvml:
    """NVML through nvidia-ml-py; initialised once, shut down by ``close``."""

    def __init__(self, pynvml: Any) -> None:
        self._n = pynvml

    def driver(self) -> str:
        return _text(self._n.nvmlSystemGetDriverVersion())

    def devices(self) -> list[Device]:
        n = self._n
        out = []
        for i in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(i)
            mem = n.nvmlDeviceGetMemoryInfo(h)
            mig_enabled, mig = False, []
            try:
                current, _pending = n.nvmlDeviceGetMigMode(h)
                mig_enabled = bool(current)
            except n.NVMLError:
                pass  # not MIG-capable
            if mig_enabled:
                for j in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        mh = n.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                    except n.NVMLError:
                        continue
                    mig.append(MigInstance(j, _text(n.nvmlDeviceGetUUID(mh)), int(n.nvmlDeviceGetMemoryInfo(mh).total // MIB)))
            try:
                procs = tuple(GpuProcess(int(p.pid), int((p.usedGpuMemory or 0) // MIB), _comm(int(p.pid))) for p in n.nvmlDeviceGetComputeRunningProcesses(h))
            except n.NVMLError:
                procs = ()
            out.append(
                Device(
                    index=i,
                    uuid=_text(n.nvmlDeviceGetUUID(h)),
                    name=_text(n.nvmlDeviceGetName(h)),
                    memory_total_mib=int(mem.total // MIB),
                    memory_used_mib=int(mem.used // MIB),
                    mig_enabled=mig_enabled,
                    mig=tuple(mig),
                    processes=procs,
                )
            )
        return out

    def close(self) -> None:
        try:
            self._n.nvmlShutdown()
        except self._n.NVMLError:
            pass


def load() -> tuple[RealNvml | None, str]:
    """The machine's NVML, or None and why there is none."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"no NVIDIA driver could be used ({exc})"
    nvml = RealNvml(pynvml)
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            nvml.close()
            return None, "the NVIDIA driver sees no device"
    except pynvml.NVMLError as exc:
        nvml.close()
        return None, f"NVML could not count the devices ({exc})"
    return nvml, f"NVIDIA driver {nvml.driver()}"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
