"""Autoscaler: sizes each function's warm pool to its sessionless load.

A function scales when its spec sets ``max_instances`` (0: no ceiling, no
scaling; the warm pool stays at ``min_instances``):

* **A ceiling.** At most ``max_instances`` sessionless calls of the function
  run at once, each in an instance of its own; the next ones queue, first
  come first served. A call that waits longer than its own time limit is
  refused (:class:`NoCapacity`, 503) and never started; the time it waited is
  taken off its limit. Instances the warm pool holds count against the
  ceiling too: ready plus busy never exceeds ``max_instances``.
* **Growth.** The load is the number of sessionless calls in flight plus those
  queued. The pool's target becomes ``ceil(load / target_concurrency)``, at
  least ``min_instances``, at most ``max_instances``, as soon as the load
  rises past it: the pool forks instances ahead, so the calls that follow a
  burst find them ready (cold-start path ``warm-pool``).
* **Shrink.** Once the wanted target has stayed below the current one for
  ``scale_cooldown_s``, the target comes down to it (``min_instances`` when
  the calls have stopped) and the pool drains what it holds beyond it.

Sessions are not counted: each has an instance of its own for its life and
takes it from the same warm pool. Every change of a target is a *scale event*,
written to the store (``scale_events``) and shown by ``GET
/functionai/api/scaling``, ``functionai scaling`` and the Functions panel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..backends.base import FunctionVersion
from ..errors import NoCapacity
from ..spec import FunctionSpec
from .pool import InstancePool

log = logging.getLogger("jupyter_functionai.scaling")

#: how often the cooldowns are looked at (the growth is immediate)
TICK_S = 0.25


class _Load:
    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self.in_flight = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.target = spec.min_instances
        self.low_since: float | None = None
        # a growth not yet recorded: a burst's steps (0 -> 1 -> 2 ...) make one
        # event, from where it started to where it got, written at the next tick
        self.rising: dict[str, Any] | None = None

    @property
    def queued(self) -> int:
        return sum(1 for w in self.waiters if not w.done())

    def wanted(self) -> int:
        spec = self.spec
        if not spec.max_instances:
            return spec.min_instances
        load = self.in_flight + self.queued
        return max(
            spec.min_instances, min(spec.max_instances, math.ceil(load / spec.target_concurrency))
        )


class Autoscaler:
    """See the module docstring. ``record`` receives each scale event (a dict);
    the runtime writes it through the store's write path."""

    def __init__(
        self,
        pool: InstancePool,
        record: Callable[[dict[str, Any]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self._record = record
        self._clock = clock
        self._loads: dict[str, _Load] = {}
        self._task: asyncio.Task[None] | None = None
        pool.cap = self._cap

    # -- configuration ------------------------------------------------------------

    def configure(self, fv: FunctionVersion) -> None:
        """Follow ``fv``'s spec (a deploy, a rollback, a start): its target is
        kept within the new bounds, and the pool told."""
        load = self._loads.get(fv.name)
        if load is None:
            load = self._loads[fv.name] = _Load(fv.spec)
        load.spec = fv.spec
        bounded = max(
            fv.spec.min_instances, min(load.target, fv.spec.max_instances or fv.spec.min_instances)
        )
        if bounded != load.target:
            self._change(fv.name, load, bounded, "configured")
        self.pool.set_target(fv.name, load.target)
        self._wake(load)  # a higher ceiling (or none) lets queued calls in

    def remove(self, name: str) -> None:
        load = self._loads.pop(name, None)
        if load is not None:
            for w in load.waiters:
                if not w.done():
                    w.set_exception(
                        NoCapacity(f"function {name!r} was deleted while the call was queued")
                    )

    def scales(self, spec: FunctionSpec) -> bool:
        """Whether the pool of a function with ``spec`` is kept (a floor or a ceiling)."""
        return bool(spec.min_instances or spec.max_instances)

    # -- the gate -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admit(self, fv: FunctionVersion, limit: float) -> AsyncIterator[float]:
        """Hold one of the function's ``max_instances`` places for a sessionless
        call, queueing for it (at most ``limit`` seconds); yields the time limit
        the call has left."""
        load = self._loads.get(fv.name)
        if load is None:
            load = self._loads[fv.name] = _Load(fv.spec)
        cap = load.spec.max_instances
        left = limit
        if cap and (load.in_flight >= cap or load.queued):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            load.waiters.append(waiter)
            self._grow(fv.name, load)
            started = self._clock()
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout=limit)
            except TimeoutError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._leave(fv.name, load)  # handed a place just as the wait ended: give it on
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    load.waiters.remove(waiter)
                raise NoCapacity(
                    f"function {fv.name!r} already runs {cap} sessionless calls (max_instances) and this one waited "
                    f"{limit:g}s, its time limit, for a place",
                ) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._leave(fv.name, load)
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    load.waiters.remove(waiter)
                raise
            left = max(0.0, limit - (self._clock() - started))
            # the place was taken for this call by _wake (in_flight already counted)
        else:
            load.in_flight += 1
            self._grow(fv.name, load)
        try:
            yield left
        finally:
            self._leave(fv.name, load)

    def _leave(self, name: str, load: _Load) -> None:
        """A call's place is free: the first waiters take what room the ceiling
        has now (it may have moved with a new version's spec)."""
        load.in_flight -= 1
        self._wake(load)
        self.pool.refill(name)  # room under the ceiling again

    @staticmethod
    def _wake(load: _Load) -> None:
        cap = load.spec.max_instances
        while load.waiters and (not cap or load.in_flight < cap):
            waiter = load.waiters.popleft()
            if not waiter.done():
                load.in_flight += 1  # the place is the waiter's from now on
                waiter.set_result(None)

    def _cap(self, name: str) -> int | None:
        """How many instances the pool of ``name`` may hold ready now (None: any)."""
        load = self._loads.get(name)
        if load is None or not load.spec.max_instances:
            return None
        return max(0, load.spec.max_instances - load.in_flight)

    # -- targets ----------------------------------------------------------------------

    def _grow(self, name: str, load: _Load) -> None:
        wanted = load.wanted()
        if wanted > load.target:
            self._change(name, load, wanted, "up")
        if wanted >= load.target:
            load.low_since = None

    def tick(self) -> None:
        """Look at every function once: record growth, shrink after the cooldown."""
        now = self._clock()
        for name, load in list(self._loads.items()):
            self._settle(load)
            wanted = load.wanted()
            if wanted >= load.target:
                self._grow(name, load)
                continue
            if load.low_since is None:
                load.low_since = now
            elif now - load.low_since >= load.spec.scale_cooldown_s:
                self._change(name, load, wanted, "down")
                load.low_since = None

    def _change(self, name: str, load: _Load, to: int, reason: str) -> None:
        before, load.target = load.target, to
        self.pool.set_target(name, to)
        if reason == "up" and load.rising is not None:
            load.rising.update(to=to, in_flight=load.in_flight, queued=load.queued)
            return
        self._settle(load)
        event = {
            "function": name,
            "at": time.time(),
            "from": before,
            "to": to,
            "in_flight": load.in_flight,
            "queued": load.queued,
            "reason": reason,
        }
        if reason == "up":
            load.rising = event
            return
        self._write(event)

    def _settle(self, load: _Load) -> bool:
        if load.rising is None:
            return False
        event, load.rising = load.rising, None
        self._write(event)
        return True

    def _write(self, e: dict[str, Any]) -> None:
        log.info(
            "scale %s %s: %d -> %d (in flight %d, queued %d)",
            e["reason"],
            e["function"],
            e["from"],
            e["to"],
            e["in_flight"],
            e["queued"],
        )
        self._record(e)

    # -- reading ------------------------------------------------------------------------

    def settle(self) -> bool:
        """Hand the growth not yet recorded to the store's write path now;
        True if there was any."""
        handed = False
        for load in self._loads.values():
            handed = self._settle(load) or handed
        return handed

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per function: its bounds, target, ready instances and load now."""
        sizes = self.pool.sizes()
        out: dict[str, dict[str, Any]] = {}
        for name, load in self._loads.items():
            spec = load.spec
            out[name] = {
                "min_instances": spec.min_instances,
                "max_instances": spec.max_instances,
                "target_concurrency": spec.target_concurrency,
                "scale_cooldown_s": spec.scale_cooldown_s,
                "target": load.target,
                "ready": int(sizes.get(name, {}).get("ready", 0) or 0),  # type: ignore[call-overload]
                "in_flight": load.in_flight,
                "queued": load.queued,
            }
        return out

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fai-autoscaler")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception:  # never let one bad tick stop scaling
                log.exception("autoscaler tick failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for name in list(self._loads):
            self._settle(self._loads[name])
            self.remove(name)
