"""InstancePool: pre-forked, fully isolated, pre-bound instances.

Per function version the pool keeps a target of instances ready (the spec's
``min_instances``, or what the autoscaler, ``scaling.py``, sets) so
a new session's first call skips the fork, the sandbox setup and the binding:
each pooled instance already runs as its own fresh uid in its own working
directory (``prebind``), re-seeded and optionally primed by the spec's
``warmup`` hook; the session id and state ride on its first call.  Taking one
schedules a refill in the background; instances that die while pooled are
dropped and replaced; drained ones give their uid and directory back
(``release``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..backends.base import Backend, FunctionVersion, Instance
from ..errors import FunctionAIError, NoCapacity

log = logging.getLogger("jupyter_functionai.pool")


class _Slot:
    def __init__(self, fv: FunctionVersion) -> None:
        self.fv = fv
        self.ready: deque[Instance] = deque()
        self.filling: asyncio.Task[None] | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.target = fv.spec.min_instances

    def alive(self) -> int:
        return sum(1 for i in self.ready if i.alive)


class InstancePool:
    def __init__(
        self,
        backend: Backend,
        prebind: Callable[[Instance], Awaitable[None]],
        release: Callable[[Instance], None],
    ) -> None:
        self.backend = backend
        self._prebind = prebind
        self._release = release
        self._slots: dict[str, _Slot] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        #: how many instances a function's pool may hold ready now (None: no
        #: ceiling); the autoscaler sets it, to keep ready + busy within max_instances
        self.cap: Callable[[str], int | None] = lambda name: None

    def configure(self, fv: FunctionVersion) -> None:
        """Make ``fv`` the pooled version of its function (draining an older one)."""
        slot = self._slots.get(fv.name)
        if slot is not None and slot.fv.version != fv.version:
            self._drain(slot)
            slot = None
        if slot is None:
            slot = self._slots[fv.name] = _Slot(fv)
        else:
            slot.fv = fv  # the same version: its spec's target may be new
        self._refill(slot)

    def set_target(self, name: str, n: int) -> None:
        """Keep ``n`` instances of ``name`` ready: fork up to it, or drain the
        ready ones beyond it (newest first; the oldest are the most primed)."""
        slot = self._slots.get(name)
        if slot is None:
            return
        slot.target = n
        slot.ready = deque(i for i in slot.ready if i.alive)
        extra = [slot.ready.pop() for _ in range(max(0, len(slot.ready) - n))]
        for inst in extra:
            self._spawn(self._discard(inst, "scaled down"))
        self._refill(slot)

    def _want(self, slot: _Slot) -> bool:
        ready = slot.alive()
        cap = self.cap(slot.fv.name)
        return ready < slot.target and (cap is None or ready < cap)

    def remove(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is not None:
            self._drain(slot)

    def acquire(self, fv: FunctionVersion, refill: bool = True) -> Instance | None:
        """A ready instance of exactly ``fv``, or None (a miss).

        With ``refill=False`` the caller calls :meth:`refill` once the instance
        has answered, so the replacement's fork does not compete for the CPU
        with the very call the pool is there to speed up."""
        slot = self._slots.get(fv.name)
        if slot is None or slot.fv.version != fv.version:
            return None
        inst = None
        while slot.ready:
            cand = slot.ready.popleft()
            if cand.alive:
                inst = cand
                break
        if refill:
            self._refill(slot)
        if inst is not None:
            inst.path = "warm-pool"
        return inst

    def refill(self, name: str) -> None:
        slot = self._slots.get(name)
        if slot is not None:
            self._refill(slot)

    def sizes(self) -> dict[str, dict[str, object]]:
        return {
            n: {"version": s.fv.version, "ready": s.alive(), "target": s.target, "last_error": s.last_error}
            for n, s in self._slots.items()
        }

    async def wait_full(self, name: str, timeout: float = 60.0) -> None:
        """Wait until the pool of ``name`` holds its target (for tests and benchmarks)."""
        slot = self._slots.get(name)
        if slot is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while slot.alive() < slot.target:
            if slot.filling is None or slot.filling.done():
                if slot.failures >= 3:
                    raise NoCapacity(f"the warm pool of {name!r} cannot be filled: {slot.last_error}")
                self._refill(slot)
                if slot.filling is None:
                    return
            left = deadline - loop.time()
            if left <= 0:
                raise NoCapacity(f"the warm pool of {name!r} was not full within {timeout:g}s")
            await asyncio.wait({slot.filling}, timeout=left)

    def _refill(self, slot: _Slot) -> None:
        if self._closed or (slot.filling is not None and not slot.filling.done()):
            return
        if not self._want(slot):
            return
        slot.filling = asyncio.get_running_loop().create_task(self._fill(slot), name=f"fai-pool-{slot.fv.name}")

    async def _fill(self, slot: _Slot) -> None:
        while not self._closed and self._slots.get(slot.fv.name) is slot:
            slot.ready = deque(i for i in slot.ready if i.alive)
            if not self._want(slot):
                return
            inst = None
            try:
                inst = await self.backend.start(slot.fv)
                await self._prebind(inst)
            except FunctionAIError as exc:
                if inst is not None:
                    await self._discard(inst, "prebind failed")
                slot.failures += 1
                slot.last_error = str(exc)
                log.warning("pool refill for %s failed: %s", slot.fv.name, exc)
                if slot.failures >= 3:
                    return
                await asyncio.sleep(0.2 * slot.failures)
                continue
            slot.failures = 0
            if self._closed or self._slots.get(slot.fv.name) is not slot:
                await self._discard(inst, "pool drained")
                return
            if not self._want(slot):  # the target came down (or the ceiling filled) during the fork
                await self._discard(inst, "scaled down")
                return
            slot.ready.append(inst)

    def _drain(self, slot: _Slot) -> None:
        if slot.filling is not None:
            slot.filling.cancel()
        for inst in slot.ready:
            self._spawn(self._discard(inst, "pool drained"))
        slot.ready.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)  # kept until it ends: the loop holds only weak references
        task.add_done_callback(self._background.discard)

    async def _discard(self, inst: Instance, reason: str) -> None:
        await inst.stop(reason)
        self._release(inst)

    async def close(self) -> None:
        self._closed = True
        tasks = []
        for slot in self._slots.values():
            if slot.filling is not None:
                slot.filling.cancel()
                tasks.append(slot.filling)
            for inst in slot.ready:
                await self._discard(inst, "runtime closed")
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._slots.clear()

