"""The meter: per-second usage of every live instance, into the ledger.

Every ``interval`` (1 s) it asks the backend what each live instance has
used (``Backend.usage_samples``: CPU time from the instance's cgroup, else
its process; memory in use; the GPU it holds; a call in flight or not) and
adds, for the time since the last sample:

* ``cpu_s``: the CPU time used meanwhile;
* ``mem_gib_s``: memory in use times seconds;
* ``gpu_s`` / ``gpu_mem_gib_s``: cards held (a slice: its share) times seconds,
  and its GPU memory in GiB times seconds;
* ``active_s`` or ``idle_s``: the seconds, by whether a call was in flight
  (a price table can bill idle at a fraction, as Function Compute does).

The minute each sample falls in gets it; every ``flush_every`` (5 s) the
touched minutes are added to the ledger through the store's one write path
(``store/usage.py``), so a killed process loses at most those seconds.
Paused sessions have no instance and accrue nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..backends.base import Backend, UsageSample
from ..errors import InvalidArgument
from ..store import Store
from ..store.usage import BUCKET_S, MEASURES

log = logging.getLogger(__name__)

GIB = 1024**3
PRICED = ("cpu_s", "mem_gib_s", "gpu_s", "gpu_mem_gib_s")


@dataclass(frozen=True)
class PriceTable:
    """What a unit of each measure costs, and the fraction of the price that
    an idle instance's memory and GPU are billed at (Function Compute bills
    idle instances at a fraction). CPU-seconds are billed as used."""

    cpu_s: float = 0.0
    mem_gib_s: float = 0.0
    gpu_s: float = 0.0
    gpu_mem_gib_s: float = 0.0
    idle_factor: float = 1.0
    currency: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"unknown price table key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key == "currency":
                if not isinstance(value, str) or len(value) > 16:
                    raise InvalidArgument(f"prices.currency must be a short string, got {value!r:.40}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"prices.{key} must be a number >= 0, got {value!r:.40}")
            elif key == "idle_factor" and value > 1:
                raise InvalidArgument(f"prices.idle_factor must be between 0 and 1, got {value!r}")
            out[key] = value if key == "currency" else float(value)
        return cls(**out)

    def cost(self, row: Mapping[str, float]) -> float:
        """The cost of one ledger row: memory and GPU billed at the idle factor
        for the idle part of the time."""
        busy, idle = row.get("active_s", 0.0), row.get("idle_s", 0.0)
        share = busy / (busy + idle) if busy + idle > 0 else 1.0
        held = row.get("mem_gib_s", 0.0) * self.mem_gib_s + row.get("gpu_s", 0.0) * self.gpu_s + row.get("gpu_mem_gib_s", 0.0) * self.gpu_mem_gib_s
        return row.get("cpu_s", 0.0) * self.cpu_s + held * (share + self.idle_factor * (1.0 - share))


class Meter:
    def __init__(
        self,
        backend: Backend,
        store: Store,
        *,
        interval: float = 1.0,
        flush_every: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.store = store
        self.interval = interval
        self.flush_every = flush_every
        self.clock = clock
        self._last: dict[str, tuple[float, int | None]] = {}  # instance -> (time, cpu µs) at its last sample
        self._pending: dict[tuple[str, float], dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._flushed_at = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fai-meter")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.sample()  # the last partial second, then everything to the ledger
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                # the reads (/proc, cgroup files: two per instance) off the event loop
                self.add(await asyncio.to_thread(self._samples), self.clock())
                if self.clock() - self._flushed_at >= self.flush_every:
                    await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # the meter never takes the runtime down
                log.exception("functionai: metering failed")

    def _samples(self) -> list[UsageSample]:
        try:
            return self.backend.usage_samples()
        except RuntimeError:  # its instances changed while they were read (another thread): next second
            return []

    def sample(self) -> None:
        """Add what each live instance used since its last sample (on the loop)."""
        self.add(self._samples(), self.clock())

    def add(self, samples: list[UsageSample], now: float) -> None:
        seen = set()
        for s in samples:
            seen.add(s.instance_id)
            last_t, last_cpu = self._last.get(s.instance_id, (now - self.interval, 0))
            dt = max(0.0, now - last_t)
            cpu_s = max(0, (s.cpu_usec or 0) - (last_cpu or 0)) / 1e6 if s.cpu_usec is not None else 0.0
            self._last[s.instance_id] = (now, s.cpu_usec)
            start = math.floor(now / BUCKET_S) * BUCKET_S
            row = self._pending.get((s.instance_id, start))
            if row is None:
                row = self._pending[(s.instance_id, start)] = {
                    "instance_id": s.instance_id,
                    "start": start,
                    "function": s.function,
                    "session_id": s.session_id,
                    **{m: 0.0 for m in MEASURES},
                }
            row["session_id"] = row["session_id"] or s.session_id  # bound after its first sample
            row["cpu_s"] += cpu_s
            row["mem_gib_s"] += s.mem_bytes / GIB * dt
            row["gpu_s"] += s.gpu_cards * dt
            row["gpu_mem_gib_s"] += s.gpu_mem_mib / 1024 * dt
            row["active_s" if s.busy else "idle_s"] += dt
        for gone in set(self._last) - seen:
            del self._last[gone]

    async def flush(self) -> None:
        self._flushed_at = self.clock()
        rows, self._pending = list(self._pending.values()), {}
        if rows:
            await self.store.writer.write(self.store.add_usage, rows)
