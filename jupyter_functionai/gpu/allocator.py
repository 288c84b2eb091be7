"""``GpuAllocator``: which GPU (or MIG instance) an instance runs on.

A function asks with ``gpu``, a share: below 1, a slice of one card's
memory, rounded up to whole GiB (Function Compute sells GPU memory in 1 GiB
steps); 1 or more, that many whole cards. Or with ``gpu_memory``: that many
GiB of one card. Slices are packed best-fit: the card (or
MIG instance) that the slice fills most tightly. A card counts as free only
for what is neither held by a slice nor used by a process outside the
slices, so nothing lands on an over-full card: a request that fits nowhere
is refused with :class:`NoCapacity`, naming what each card has free.

Each slice is held by one instance, which is pinned to it with
``CUDA_VISIBLE_DEVICES`` (the card's or MIG instance's UUID), and released
when the instance stops. Without NVML the allocator reports "no GPU found"
(``reason`` says why) and places nothing."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import NoCapacity
from .mps import MpsControl, MpsDirs, MpsError
from .nvml import Device, Nvml, load

GIB_MIB = 1024
MPS_SERVER = "nvidia-cuda-mps-server"
POLICIES = ("best-fit", "first-fit")


@dataclass(frozen=True)
class Slice:
    owner: str  # the instance id
    function: str
    devices: tuple[str, ...]  # UUIDs (one: a slice or MIG instance; several: whole cards)
    indexes: tuple[int, ...]
    memory_mib: int
    whole: bool  # whole cards, not a slice
    mig: bool = False
    share: float = 0.0  # the cards it holds: a slice counts as its part of its card (for metering)
    mps: dict[str, str] | None = None  # the MPS client's environment, where MPS holds the slice (mps.py)
    mps_dirs: MpsDirs | None = None

    @property
    def mode(self) -> str:
        """How the slice is held to: MIG partitions it in hardware; a card of
        its own needs nothing; MPS caps its memory and SMs; else the runtime's
        NVML watchdog (and the framework's own cap, told FUNCTIONAI_GPU_MEMORY_MIB).
        The watchdog watches MPS slices too."""
        return "mig" if self.mig else "whole card" if self.whole else "mps" if self.mps else "watchdog"

    def describe(self) -> str:
        return f"{','.join(self.devices)} {self.memory_mib} MiB ({self.mode})"

    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.devices), "FUNCTIONAI_GPU_MEMORY_MIB": str(self.memory_mib), **(self.mps or {})}

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.owner,
            "function": self.function,
            "devices": list(self.devices),
            "memory_mib": self.memory_mib,
            "whole": self.whole,
            "mig": self.mig,
            "mode": self.mode,
        }


class GpuAllocator:
    def __init__(self, nvml: Nvml | None, reason: str = "", *, policy: str = "best-fit", mps: MpsControl | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        #: "best-fit" (the card a slice fills most tightly) or "first-fit" (the
        #: first card it fits on, for comparison: benchmarks/gpu_packing.py)
        self.policy = policy
        self.nvml = nvml
        self.reason = reason if nvml is None else (reason or "NVML")
        self._slices: dict[str, Slice] = {}
        self._lock = threading.Lock()
        #: the MPS control daemons, where MPS holds slices (None: never)
        self.mps = mps

    @classmethod
    def from_machine(cls, mps: MpsControl | None = None) -> GpuAllocator:
        nvml, reason = load()
        return cls(nvml, reason, mps=mps if nvml is not None else None)

    @property
    def available(self) -> bool:
        return self.nvml is not None

    def slices(self) -> list[Slice]:
        with self._lock:
            return list(self._slices.values())

    def allocate(self, owner: str, share: float = 0.0, *, memory_mib: int = 0, function: str = "") -> Slice:
        """Place ``owner`` (an instance) with a GPU ``share``, or ``memory_mib``
        of one card; raises NoCapacity when no card can take it now."""
        if self.nvml is None:
            raise NoCapacity(f"no GPU found ({self.reason}): a function with {_asked(share, memory_mib)} cannot be placed")
        if share <= 0 and memory_mib <= 0:
            raise ValueError("share or memory_mib must be > 0")
        with self._lock:
            if owner in self._slices:
                return self._slices[owner]
            devices = self.nvml.devices()
            if share >= 1:
                placed = self._whole(owner, share, devices, function)
            else:
                placed = self._slice(owner, share, memory_mib, devices, function)
            self._slices[owner] = placed
        if placed.whole or placed.mig or self.mps is None or not self.mps.usable:
            return placed
        # MPS holds the slice: its card's daemon runs before the instance starts
        try:
            dirs = self.mps.ensure(placed.devices[0])
        except MpsError:
            return placed  # the watchdog holds it; mps.reason says why MPS is not used
        placed = dataclasses.replace(placed, mps=self.mps.client_env(dirs, placed.memory_mib, placed.share), mps_dirs=dirs)
        with self._lock:
            if self._slices.get(owner) is not None:
                self._slices[owner] = placed
        return placed

    def close(self) -> list[str]:
        """Stop the MPS daemons this allocator started (what failed, if anything)."""
        return self.mps.close() if self.mps is not None else []

    def never_fits(self, share: float = 0.0, *, memory_mib: int = 0) -> str | None:
        """Why no card here could take this request even with nothing else on
        it, or None (checked at deploy: a request that can never be met is
        refused then, not at each call)."""
        if self.nvml is None:
            return f"no GPU found ({self.reason}): a function with {_asked(share, memory_mib)} cannot run here"
        devices = self.nvml.devices()
        if share >= 1:
            cards = [d for d in devices if not d.mig_enabled]
            if len(cards) < math.ceil(share):
                return f"gpu={share:g} needs {math.ceil(share)} whole card(s); this machine has {len(cards)} (without MIG)"
            return None
        for d in devices:
            need = memory_mib or _round_gib(share * d.memory_total_mib)
            sizes = [m.memory_mib for m in d.mig] if d.mig_enabled else [d.memory_total_mib]
            if any(need <= size for size in sizes):
                return None
        sizes = [m.memory_mib for d in devices for m in d.mig] + [d.memory_total_mib for d in devices if not d.mig_enabled]
        return f"no GPU here can ever hold {_asked(share, memory_mib)}: the largest card (or MIG instance) has {max(sizes, default=0)} MiB"

    def release(self, owner: str) -> Slice | None:
        with self._lock:
            return self._slices.pop(owner, None)

    def over_slice(self, owner_of: Callable[[int], str | None]) -> list[tuple[str, int, int]]:
        """``(owner, used MiB, allowed MiB)`` for each instance whose processes
        use more GPU memory than it may (``owner_of`` maps a process id to the
        instance it belongs to, None for the host's own). On its slice's card
        it may use the slice; on any other card, or with no slice at all,
        nothing: ``CUDA_VISIBLE_DEVICES`` is only an environment variable,
        which code in the sandbox can change. Within a MIG instance or a whole
        card the hardware bounds it, so those are not summed."""
        if self.nvml is None:
            return []
        with self._lock:
            slices = dict(self._slices)
        used: dict[tuple[str, int], int] = {}  # (owner, card) -> MiB
        for dev in self.nvml.devices():
            for proc in dev.processes:
                owner = owner_of(proc.pid)
                if owner is not None:
                    used[(owner, dev.index)] = used.get((owner, dev.index), 0) + proc.used_mib
        worst: dict[str, tuple[int, int]] = {}
        for (owner, card), mib in used.items():
            s = slices.get(owner)
            if s is not None and card in s.indexes:
                if s.whole or s.mig:
                    continue
                cap = s.memory_mib
            else:
                cap = 0  # a card not its own, or no slice at all
            if mib > cap and (owner not in worst or mib - cap > worst[owner][0] - worst[owner][1]):
                worst[owner] = (mib, cap)
        return [(o, mib, cap) for o, (mib, cap) in worst.items()]

    # -- placement (under the lock) -----------------------------------------------------

    def _held(self, uuid: str) -> int:
        return sum(s.memory_mib for s in self._slices.values() if uuid in s.devices and not s.whole)

    def _busy(self, uuid: str) -> bool:
        return any(uuid in s.devices for s in self._slices.values())

    def _free_mib(self, dev: Device) -> int:
        """Memory a new slice may take: what is neither held by a slice nor used
        by others (a slice's own use counts once, inside what it holds)."""
        held = self._held(dev.uuid)
        return max(0, dev.memory_total_mib - max(held, dev.memory_used_mib))

    def _slice(self, owner: str, share: float, memory_mib: int, devices: list[Device], function: str) -> Slice:
        best: tuple[int, Device, str, int, bool] | None = None  # (leftover, device, uuid, need, mig)
        for dev in devices:
            need = memory_mib or _round_gib(share * dev.memory_total_mib)
            if dev.mig_enabled:
                for m in dev.mig:
                    if self._busy(m.uuid) or need > m.memory_mib:
                        continue
                    left = m.memory_mib - need
                    if best is None or left < best[0]:
                        best = (left, dev, m.uuid, m.memory_mib, True)
                        if self.policy == "first-fit":
                            break
                continue
            if any(s.whole and dev.uuid in s.devices for s in self._slices.values()):
                continue
            left = self._free_mib(dev) - need
            if left >= 0 and (best is None or left < best[0]):
                best = (left, dev, dev.uuid, need, False)
            if best is not None and self.policy == "first-fit":
                break
        if best is None:
            raise NoCapacity(f"no GPU can take {_asked(share, memory_mib)} now: {self._describe(devices)}")
        _left, dev, uuid, need, mig = best
        return Slice(owner, function, (uuid,), (dev.index,), need, whole=False, mig=mig, share=round(need / dev.memory_total_mib, 6))

    def _whole(self, owner: str, share: float, devices: list[Device], function: str) -> Slice:
        count = math.ceil(share)
        free = [d for d in devices if not d.mig_enabled and not self._busy(d.uuid) and d.memory_used_mib < GIB_MIB]
        if len(free) < count:
            raise NoCapacity(f"gpu={share:g} needs {count} whole card(s) with nothing on them; {len(free)} free now: {self._describe(devices)}")
        chosen = free[:count]
        return Slice(owner, function, tuple(d.uuid for d in chosen), tuple(d.index for d in chosen), sum(d.memory_total_mib for d in chosen), whole=True, share=float(count))

    def _describe(self, devices: list[Device]) -> str:
        parts = []
        for d in devices:
            if d.mig_enabled:
                free_mig = [m for m in d.mig if not self._busy(m.uuid)]
                parts.append(f"GPU {d.index} ({d.name}, MIG): {len(free_mig)} of {len(d.mig)} instances free")
            else:
                parts.append(f"GPU {d.index} ({d.name}): {self._free_mib(d)} of {d.memory_total_mib} MiB free")
        return "; ".join(parts) or "no device"

    # -- what the API shows ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        if self.nvml is None:
            return {"available": False, "reason": f"no GPU found ({self.reason})", "devices": [], "slices": []}
        with self._lock:
            devices = self.nvml.devices()
            out = []
            for d in devices:
                row = d.to_dict()
                row["free_mib"] = self._free_mib(d) if not d.mig_enabled else None
                row["slices"] = [s.to_dict() for s in self._slices.values() if d.uuid in s.devices or any(m.uuid in s.devices for m in d.mig)]
                # how a slice placed here now is held to (the isolation report names each instance's)
                row["enforcement"] = "mig" if d.mig_enabled else "mps" if self.mps is not None and self.mps.usable else "watchdog"
                # MPS servers NVML sees on the card, ours or anyone's
                row["mps_server_pids"] = [p.pid for p in d.processes if p.name == MPS_SERVER]
                out.append(row)
            slices = [s.to_dict() for s in self._slices.values()]
        mps = self.mps.state() if self.mps is not None else {"used": False, "reason": "MPS is off for this backend", "daemons": []}
        return {"available": True, "reason": self.reason, "devices": out, "slices": slices, "mps": mps}


def _asked(share: float, memory_mib: int) -> str:
    return f"gpu_memory={memory_mib // GIB_MIB}GiB" if memory_mib else f"gpu={share:g}"


def _round_gib(mib: float) -> int:
    """Up to whole GiB (at least 1)."""
    return max(1, math.ceil(mib / GIB_MIB - 1e-9)) * GIB_MIB
