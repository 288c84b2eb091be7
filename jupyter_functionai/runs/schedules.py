"""Schedules: a notebook run on a cron, durable, restart-safe.

A schedule (a jupyter-scheduler "job definition") holds what a run needs
(notebook, parameters, output formats, kernel, tags, timeout, retries) and
when to start one: a cron expression in a time zone (5 fields, or croniter's
6 with seconds last; ``None`` for a definition run on demand only).

**Firing.** ``tick(now)`` deals with every cron time that has come: the
loop calls it at each schedule's next time (so a schedule fires within a
second of it), tests call it with the time they want (the clock is injected).
A cron time is dealt with exactly once: the schedule row records it
(``last_fire_at``) by a conditional update in the *same transaction* that
inserts the run, and the run row's unique ``(schedule_id, scheduled_for)``
backs that up; a crash before the commit leaves the time to the restarted
server, a crash after leaves nothing to do. Never a run twice for one time.

**Late and missed times.** A time found more than ``grace_s`` late (the
server was down, or paused past it) is *missed*; ``catch_up`` says what
happens to missed times: ``none`` records them as missed, ``latest`` runs the
newest one once (older ones are recorded as missed). Resuming a paused
schedule or changing its cron starts afresh: times before that are not
caught up.

**Overlap.** When a time comes while the schedule's previous run is still
queued or running: ``skip`` records it as skipped, ``queue`` keeps it (one
at most, newer times replace it) and starts it when the previous run ends,
``allow`` starts it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ..errors import BadPayload, FunctionAIError, InvalidArgument, NotFound
from .manager import check_formats, check_parameters, check_tags, check_token

if TYPE_CHECKING:
    from .manager import RunManager

log = logging.getLogger("jupyter_functionai.schedules")

__all__ = ["CATCH_UPS", "OVERLAPS", "Scheduler", "check_cron", "next_fire_times"]

OVERLAPS = ("skip", "queue", "allow")
CATCH_UPS = ("none", "latest")
ACTIVE = ("queued", "running")
FIELDS = frozenset(
    {"name", "notebook", "cron", "timezone", "parameters", "enabled", "overlap", "catch_up", "output_formats", "kernel", "tags",
     "timeout", "retries", "idempotency_token"}
)
MAX_SLEEP_S = 30.0  # the loop looks again at least this often (a clock that jumps)


def check_timezone(tz: Any) -> ZoneInfo:
    if not isinstance(tz, str) or not tz:
        raise InvalidArgument(f"timezone must be an IANA time zone name such as 'UTC' or 'Europe/Paris', got {tz!r}", field="timezone")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"timezone {tz!r} is not a known IANA time zone (e.g. 'UTC', 'Europe/Paris')", field="timezone") from None


def check_cron(cron: Any) -> str | None:
    """A valid cron expression, else InvalidArgument naming ``cron``."""
    if cron is None:
        return None
    if not isinstance(cron, str) or not cron.strip():
        raise InvalidArgument(f"cron must be a cron expression such as '0 6 * * *', got {cron!r}", field="cron")
    cron = " ".join(cron.split())
    if not cron.startswith("@") and len(cron.split()) not in (5, 6):
        raise InvalidArgument(
            f"cron {cron!r} has {len(cron.split())} fields: give 5 (minute hour day month weekday), or 6 with seconds last", field="cron"
        )
    try:
        croniter(cron, datetime(2000, 1, 1)).get_next(float)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"cron {cron!r} is not a valid cron expression: {exc}", field="cron") from None
    return cron


def next_fire_times(cron: str, tz: str, after: float, n: int = 1) -> list[float]:
    """The next ``n`` times (epoch seconds) of ``cron`` in ``tz`` strictly after ``after``."""
    it = croniter(cron, datetime.fromtimestamp(after, ZoneInfo(tz)))
    out: list[float] = []
    while len(out) < n:
        t = float(it.get_next(float))
        if t > after:
            out.append(t)
    return out


def _latest_due(cron: str, tz: str, after: float, now: float) -> tuple[float | None, int]:
    """The newest cron time in ``(after, now]`` and how many there are
    before it (counted up to 1000)."""
    it = croniter(cron, datetime.fromtimestamp(now + 1e-3, ZoneInfo(tz)))
    latest = float(it.get_prev(float))
    if latest > now:  # defensive: croniter's rounding
        latest = float(it.get_prev(float))
    if latest <= after:
        return None, 0
    earlier = 0
    while earlier < 1000:
        t = float(it.get_prev(float))
        if t <= after:
            break
        earlier += 1
    return latest, earlier


def _iso(t: float | None, tz: str) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat()


class Scheduler:
    """The schedules of a :class:`RunManager` and the loop that fires them."""

    def __init__(self, runs: RunManager, *, clock: Callable[[], float] = time.time, grace_s: float = 60.0) -> None:
        self.runs = runs
        self.store = runs.rt.store
        self.clock = clock
        self.grace_s = float(grace_s)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tick_lock = asyncio.Lock()
        self._closed = False

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start firing (at once: times missed while the server was down are
        dealt with by the catch-up policy)."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="fai-scheduler")

    async def close(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    async def _loop(self) -> None:
        while not self._closed:
            try:
                delay = await self.tick()
            except Exception:  # a bad row must not stop every schedule
                log.exception("scheduler tick failed")
                delay = 1.0
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(delay, MAX_SLEEP_S)))

    def poke(self) -> None:
        """Look again now (a schedule changed, or a run of one finished)."""
        self._wake.set()

    # -- firing -----------------------------------------------------------------

    async def tick(self, now: float | None = None) -> float:
        """Deal with every cron time up to ``now`` (default: the clock) and
        return the seconds until the next one."""
        async with self._tick_lock:
            now = self.clock() if now is None else float(now)
            soonest = MAX_SLEEP_S
            for row in await asyncio.to_thread(self.store.list_schedules):
                if not row["enabled"]:
                    continue
                try:
                    await self._tick_one(row, now)
                except FunctionAIError as exc:  # e.g. its notebook was removed: recorded, the others go on
                    log.warning("schedule %s: %s", row["id"], exc)
                    await self.store.writer.write(self._record_error, row, now, exc)
                try:
                    fresh = await asyncio.to_thread(self.store.get_schedule, row["id"])
                except NotFound:
                    continue  # deleted meanwhile
                if fresh["pending_at"] is not None:
                    soonest = min(soonest, 1.0)  # its previous run's end is not signalled: look again soon
                if fresh["cron"]:
                    after = max(fresh["anchor_at"], fresh["last_fire_at"] or 0.0, now)
                    soonest = min(soonest, next_fire_times(fresh["cron"], fresh["timezone"], after)[0] - now)
            return soonest

    def _record_error(self, row: dict[str, Any], now: float, exc: FunctionAIError) -> None:
        """A time that could not start its run (its notebook is gone or no longer
        valid) is dealt with: recorded as an error, not tried on every tick."""
        latest, _ = _latest_due(row["cron"], row["timezone"], max(row["anchor_at"], row["last_fire_at"] or 0.0), now) if row["cron"] else (None, 0)
        fields: dict[str, Any] = {"last_result": "error", "last_error": f"{exc.kind}: {exc.message}"[:1000], "updated_at": now, "pending_at": None}
        if latest is not None:
            fields["last_fire_at"] = latest  # dealt with: a broken schedule does not fire again and again
        with contextlib.suppress(NotFound):
            self.store.update_schedule(row["id"], fields, expect={"last_fire_at": row["last_fire_at"]})

    async def _active(self, schedule_id: str) -> bool:
        return bool(await asyncio.to_thread(self.store.list_runs, schedule_id=schedule_id, state=ACTIVE, limit=1))

    async def _tick_one(self, row: dict[str, Any], now: float) -> None:
        sid = row["id"]
        if row["pending_at"] is not None and not await self._active(sid):
            await self._fire(row, row["pending_at"], {"pending_at": None}, {"pending_at": row["pending_at"]})
            row = await asyncio.to_thread(self.store.get_schedule, sid)
        if not row["cron"]:
            return
        last = row["last_fire_at"]
        latest, earlier = _latest_due(row["cron"], row["timezone"], max(row["anchor_at"], last or 0.0), now)
        if latest is None:
            return
        expect = {"last_fire_at": last}
        missed = earlier
        if now - latest > self.grace_s and row["catch_up"] == "none":
            missed += 1
            await self.store.writer.write(
                self.store.update_schedule, sid,
                {"last_fire_at": latest, "last_result": "missed", "missed": row["missed"] + missed},
                expect=expect,
            )
            return
        counts = {"missed": row["missed"] + missed} if missed else {}
        if row["overlap"] != "allow" and await self._active(sid):
            if row["overlap"] == "skip":
                fields = {"last_fire_at": latest, "last_result": "skipped", "skipped": row["skipped"] + 1, **counts}
            else:
                fields = {"last_fire_at": latest, "pending_at": latest, "last_result": "queued", **counts}
            await self.store.writer.write(self.store.update_schedule, sid, fields, expect=expect)
            return
        await self._fire(row, latest, {"last_fire_at": latest, **counts}, expect)

    async def _fire(self, row: dict[str, Any], at: float, fields: dict[str, Any], expect: dict[str, Any]) -> dict[str, Any] | None:
        """Start the run for cron time ``at``, recording ``fields`` on the
        schedule in the same transaction, only while it matches ``expect``."""
        run_id_fields = {**fields, "last_result": "fired", "last_error": None, "fired": row["fired"] + 1}
        return await self._start_run(row, scheduled_for=at, claim=(row["id"], expect, run_id_fields))

    async def _start_run(self, row: dict[str, Any], *, scheduled_for: float | None, claim: Any = None) -> dict[str, Any] | None:
        # the run's id is known only once prepared: the claim's last_run_id is
        # filled in by the store from the run row (see RunManager.start)
        run = await self.runs.start(
            row["notebook"], row["parameters"], timeout=row["timeout_s"], retries=row["retries"],
            output_formats=row["output_formats"], kernel=row["kernel"], name=row["name"], tags=row["tags"],
            schedule=claim, scheduled_for=scheduled_for, schedule_id=row["id"],
        )
        if run is not None:
            log.info("schedule %s: run %s for %s", row["id"], run["id"], _iso(scheduled_for, row["timezone"]) or "now")
        return run

    # -- the API ----------------------------------------------------------------

    def _validate(self, body: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
        unknown = set(body) - FIELDS
        if unknown:
            raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(FIELDS))}", field=sorted(unknown)[0])
        out: dict[str, Any] = {}
        get = body.get
        if "notebook" in body or current is None:
            notebook = get("notebook")
            full = self.runs.resolve(notebook)
            if not full.endswith(".ipynb"):
                raise InvalidArgument(f"notebook {notebook!r} is not an .ipynb file", field="notebook")
            out["notebook"] = notebook
        if "cron" in body or current is None:
            out["cron"] = check_cron(get("cron"))
        if "timezone" in body or current is None:
            out["timezone"] = get("timezone") or "UTC"
            check_timezone(out["timezone"])
        if "parameters" in body:
            out["parameters"] = check_parameters(get("parameters"))
        if "enabled" in body:
            if not isinstance(get("enabled"), bool):
                raise InvalidArgument(f"enabled must be true or false, got {get('enabled')!r}", field="enabled")
            out["enabled"] = get("enabled")
        if "overlap" in body and get("overlap") not in OVERLAPS:
            raise InvalidArgument(f"overlap must be one of {', '.join(OVERLAPS)}, got {get('overlap')!r}", field="overlap")
        if "catch_up" in body and get("catch_up") not in CATCH_UPS:
            raise InvalidArgument(f"catch_up must be one of {', '.join(CATCH_UPS)}, got {get('catch_up')!r}", field="catch_up")
        for key in ("overlap", "catch_up"):
            if key in body:
                out[key] = get(key)
        if "output_formats" in body:
            out["output_formats"] = check_formats(get("output_formats"))
        if "tags" in body:
            out["tags"] = check_tags(get("tags"))
        if "kernel" in body:
            kernel = get("kernel")
            if kernel is not None and (not isinstance(kernel, str) or not kernel):
                raise InvalidArgument(f"kernel must be a kernelspec name, got {kernel!r}", field="kernel")
            out["kernel"] = kernel
        if "name" in body:
            name = get("name")
            if not isinstance(name, str) or not 0 < len(name) <= 200:
                raise InvalidArgument("name must be a string of 1-200 characters", field="name")
            out["name"] = name
        if "timeout" in body:
            t = get("timeout")
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 86400):
                raise InvalidArgument(f"timeout must be a number of seconds in (0, 86400], got {t!r}", field="timeout")
            out["timeout_s"] = None if t is None else float(t)
        if "retries" in body:
            r = get("retries")
            if r is not None and (isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 99):
                raise InvalidArgument(f"retries must be an integer in [0, 99], got {r!r}", field="retries")
            out["retries"] = r
        return out

    async def create(self, body: Any) -> tuple[dict[str, Any], bool]:
        """A new schedule (``idempotency_token``: the same token gives back the
        schedule first made with it). Returns (schedule, created)."""
        if not isinstance(body, dict):
            raise BadPayload('the body must be a JSON object {"notebook": PATH, "cron": "0 6 * * *", ...}')
        fields = self._validate(body)
        token = check_token(body.get("idempotency_token"))
        await asyncio.to_thread(self.runs.check_notebook, fields["notebook"])
        now = self.clock()
        row = {
            "id": f"s-{uuid.uuid4().hex[:16]}",
            "name": fields.pop("name", None) or str(fields["notebook"]).rsplit("/", 1)[-1].removesuffix(".ipynb"),
            "parameters": {}, "enabled": True, "overlap": "skip", "catch_up": "none", "output_formats": ["ipynb"],
            "kernel": None, "tags": [], "timeout_s": None, "retries": None,
            **fields,
            "idempotency_token": token, "created_at": now, "updated_at": now, "anchor_at": now,
            "last_fire_at": None, "pending_at": None, "last_result": None, "last_run_id": None, "last_error": None, "fired": 0, "skipped": 0, "missed": 0,
        }
        created, new = await self.store.writer.write(self.store.create_schedule, row)
        self.poke()
        return self.public(created), new

    async def get(self, schedule_id: str) -> dict[str, Any]:
        return self.public(await asyncio.to_thread(self.store.get_schedule, _check_id(schedule_id)))

    async def list_schedules(self) -> list[dict[str, Any]]:
        return [self.public(r) for r in await asyncio.to_thread(self.store.list_schedules)]

    async def update(self, schedule_id: str, body: Any) -> dict[str, Any]:
        """Change fields (PATCH). A new cron or time zone starts afresh: times
        before now are not caught up."""
        current = await asyncio.to_thread(self.store.get_schedule, _check_id(schedule_id))
        if not isinstance(body, dict) or not body:
            raise BadPayload("the body must be a JSON object of the fields to change", field="body")
        if "idempotency_token" in body:
            raise InvalidArgument("idempotency_token is set on create only", field="idempotency_token")
        fields = self._validate(body, current)
        if "notebook" in fields:
            await asyncio.to_thread(self.runs.check_notebook, fields["notebook"])
        now = self.clock()
        if any(k in fields and fields[k] != current[k] for k in ("cron", "timezone")) or (fields.get("enabled") and not current["enabled"]):
            fields["anchor_at"] = now
        await self.store.writer.write(self.store.update_schedule, schedule_id, {**fields, "updated_at": now})
        self.poke()
        return await self.get(schedule_id)

    async def pause(self, schedule_id: str) -> dict[str, Any]:
        return await self.update(schedule_id, {"enabled": False})

    async def resume(self, schedule_id: str) -> dict[str, Any]:
        return await self.update(schedule_id, {"enabled": True})

    async def delete(self, schedule_id: str) -> None:
        """Delete a schedule; its runs stay (a running one goes on)."""
        await self.store.writer.write(self.store.delete_schedule, _check_id(schedule_id))

    async def run_now(self, schedule_id: str) -> dict[str, Any]:
        """Start a run of the schedule now, whatever its cron and overlap."""
        row = await asyncio.to_thread(self.store.get_schedule, _check_id(schedule_id))
        run = await self._start_run(row, scheduled_for=None)
        assert run is not None
        await self.store.writer.write(self.store.update_schedule, schedule_id, {"last_run_id": run["id"]})
        return run

    async def runs_of(self, schedule_id: str, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        await asyncio.to_thread(self.store.get_schedule, _check_id(schedule_id))  # NotFound
        return await self.runs.list_runs(state, limit, schedule_id=schedule_id)

    def public(self, row: dict[str, Any]) -> dict[str, Any]:
        tz = row["timezone"]
        nxt: list[float] = []
        if row["cron"] and row["enabled"]:
            after = max(row["anchor_at"], row["last_fire_at"] or 0.0, self.clock())
            nxt = next_fire_times(row["cron"], tz, after, 5)
        out = {k: v for k, v in row.items() if k not in ("anchor_at",)}
        out["timeout"] = out.pop("timeout_s")
        out.update(
            next_fire_at=nxt[0] if nxt else None,
            next_fire_times=[_iso(t, tz) for t in nxt],
            last_fire_time=_iso(row["last_fire_at"], tz),
        )
        return out


def _check_id(schedule_id: Any) -> str:
    if not isinstance(schedule_id, str) or not schedule_id or len(schedule_id) > 40:
        raise NotFound(f"no schedule {schedule_id!r}")
    return schedule_id
