"""Durable asynchronous tasks: queued invocations that survive a crash.

``await rt.tasks.submit(name, event)`` persists a *queued* task and returns
at once; the dispatcher runs each function's tasks in submit order (FIFO), at
most ``spec.tasks.concurrency`` at a time, every attempt through the same
``Runtime.invoke`` path as a call (a session's tasks run in that session's
instance, in order with its other calls; others in a fresh sandbox each).

Lifecycle ``queued -> running -> succeeded | failed | cancelled | timed_out``.
Every transition is committed to the store *before* it is acted on (the
write is awaited; concurrent transitions share one commit: group commit).

**Guarantee: at-least-once execution, exactly-once recorded outcome.** A
running attempt holds a lease (``lease_s``) that the runtime renews; when the
runtime dies (``kill -9``), the restarted one finds the task *running* under
a lease that expires, counts the lost attempt and queues the task again
(``ctx.attempt`` grows), so an attempt may run more than once. A task's
final state is written once, by a conditional update: it is never reported
finished twice. Handlers make side effects idempotent by keying them on
``ctx.task_id`` (and ``ctx.attempt``), and make long work resumable with
``ctx.checkpoint(obj)``: every later attempt gets the last checkpoint as
``ctx.resume_from``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import json
import logging
import random
import threading
import time
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import Conflict, FunctionAIError, InvalidArgument, NotFound
from ..spec import MAX_TIMEOUT_S, TaskPolicy
from ..store import TASK_FINAL_STATES, TASK_STATES
from .sessions import check_session_id

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("jupyter_functionai.tasks")

__all__ = ["TaskQueue"]

PRUNE_INTERVAL_S = 60.0


def _now() -> float:
    return time.time()


@dataclasses.dataclass
class _Task:
    """What the dispatcher keeps of a queued or running task."""

    id: str
    seq: int
    function: str
    session_id: str | None
    event: Any
    options: dict[str, Any]
    attempts: int
    run_after: float
    checkpoint: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    runner: asyncio.Task[None] | None = None
    cancelled: bool = False


#: How long a cancelled attempt has to end before it is cancelled again (see ``_cancel_until_done``).
CANCEL_AGAIN_S = 0.25


class TaskQueue:
    """The durable task queue of one :class:`Runtime` (``rt.tasks``)."""

    def __init__(self, runtime: Runtime, *, lease_s: float = 15.0) -> None:
        self.rt = runtime
        self.store = runtime.store
        self.lease_s = float(lease_s)
        self.owner = uuid.uuid4().hex[:16]
        self._queues: dict[str, list[tuple[int, str]]] = {}  # function -> sorted (seq, id), due now
        self._delayed: list[tuple[float, int, str]] = []  # (run_after, seq, id), sorted
        self._tasks: dict[str, _Task] = {}  # queued and running
        self._running: dict[str, set[str]] = {}  # function -> running ids
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        # task writes not yet taken by the store's writer thread (see _write)
        self._pending: list[tuple[list[tuple[str, dict[str, Any]]], asyncio.Future[bool]]] = []
        self._pending_lock = threading.Lock()
        self._collector: _Collected | None = None  # queued on the store's writer, not yet taken
        self._commits: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Load what the store holds: queued tasks run again; running ones whose
        lease has expired (their runtime died) are retried or failed."""
        self._seq = await asyncio.to_thread(self.store.max_task_seq)
        live = await asyncio.to_thread(self.store.list_tasks, state=("queued", "running"), limit=None, oldest_first=True)
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._dispatch_loop(), name="fai-task-dispatch"),
            loop.create_task(self._lease_loop(), name="fai-task-leases"),
        ]
        now = _now()
        for row in live:
            task = _Task(
                row["id"], row["seq"], row["function"], row["session_id"], row["event"], row["options"],
                row["attempts"], row["run_after"], row["checkpoint"], row["progress"], row["progress_message"],
            )
            if row["state"] == "queued":
                self._enqueue(task)
            elif row["lease_owner"] != self.owner:
                expires = float(row["lease_expires"] or 0.0)
                self._tasks[task.id] = task
                delay = max(0.0, expires - now)
                self._spawn(self._reclaim_after(task, delay))
        self._wake.set()

    async def close(self) -> None:
        """Stop dispatching. Running attempts are interrupted and their tasks
        queued again (the attempt counts), all committed before returning."""
        if self._closed:
            return
        self._closed = True
        for t in self._loops:
            t.cancel()
        if self._loops:
            await asyncio.wait(set(self._loops), timeout=10)
        for t in list(self._background):
            t.cancel()
        runners = [t.runner for t in self._tasks.values() if t.runner is not None]
        for r in runners:
            r.cancel()
        if runners:
            await asyncio.wait(runners, timeout=15)
        ops = []
        for task in self._tasks.values():
            if task.runner is not None and not task.cancelled:
                ops.append(("update", {"id": task.id, "state": "queued", "run_after": _now(), "lease_owner": None, "lease_expires": None}))
                ops.append(("attempt", {"task_id": task.id, "attempt": task.attempts, "finished_at": _now(), "outcome": "interrupted"}))
        if ops:
            await self._write(ops)
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
        if self._commits:  # every write asked for is committed (or has failed its caller) before close returns
            await asyncio.wait(set(self._commits), timeout=30)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    # -- the API ----------------------------------------------------------------

    def policy(self, function: str) -> TaskPolicy:
        return self.rt.function(function).spec.tasks

    async def submit(
        self,
        name: str,
        event: Any = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retries: int | None = None,
    ) -> dict[str, Any]:
        """Persist a queued task for ``name`` and return it (it runs later).
        ``retries`` = extra attempts after the first (``max_attempts - 1``)."""
        task, row = self.prepare(name, event, session=session, timeout=timeout, max_attempts=max_attempts, retries=retries)
        if session is not None:
            await self.check_session_owner(session, name)  # a Conflict now, not a failed task later
        await self._write([("insert", row)])
        self.admit(task)
        return self.public({**row, "event": event, "options": task.options})

    async def session_owner(self, session_id: str) -> str | None:
        """The function ``session_id`` belongs to: its live session's, its
        stored row's, or that of a task already queued with it; None for an
        id nothing has used yet."""
        live = self.rt._sessions.get(session_id)
        if live is not None:
            return str(live.function)
        if session_id in self.rt._stored:
            with contextlib.suppress(NotFound):
                row = await asyncio.to_thread(self.store.get_session, session_id)
                return str(row["function"])
        for t in self._tasks.values():
            if t.session_id == session_id:
                return t.function
        return None

    async def check_session_owner(self, session_id: str, function: str) -> None:
        """Conflict if ``session_id`` belongs to a function other than ``function``."""
        owner = await self.session_owner(session_id)
        if owner is not None and owner != function:
            raise Conflict(
                f"session {session_id!r} belongs to function {owner!r}, not {function!r}: a session serves one function",
                session_id=session_id,
                function=owner,
            )

    async def submit_with(self, task: _Task, row: dict[str, Any], write: Any) -> Any:
        """Persist a prepared task with ``write(row)`` (the store call that
        inserts it together with other rows, in one transaction, on the
        runtime's writer thread) and queue it if that inserted it (a truthy
        answer). Returns what ``write`` returned."""
        done = await self.store.writer.write(write, row)
        if done == row["id"]:
            self.admit(task)
        return done

    def prepare(
        self,
        name: str,
        event: Any = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retries: int | None = None,
    ) -> tuple[_Task, dict[str, Any]]:
        """Validate a submission: the task and the row that records it."""
        if self._closed:
            raise Conflict("the runtime is closed")
        fv = self.rt.function(name)  # NotFound for an unknown function
        if session is not None:
            check_session_id(session)
            if not fv.spec.session.enabled:
                raise InvalidArgument(f"function {name!r} has sessions disabled: a task cannot be bound to session {session!r}")
        try:
            text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"the event is not JSON-serialisable: {exc}") from None
        if len(text.encode()) > fv.spec.limits.max_payload_bytes:
            from ..errors import PayloadTooLarge

            raise PayloadTooLarge(f"the event is {len(text.encode())} bytes, over the limit of {fv.spec.limits.max_payload_bytes}")
        if retries is not None and max_attempts is not None:
            raise InvalidArgument("give retries or max_attempts, not both")
        changes: dict[str, Any] = {}
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < float(timeout) <= MAX_TIMEOUT_S:
                raise InvalidArgument(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout!r}")
            changes["timeout_s"] = float(timeout)
        if retries is not None:
            if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 99:
                raise InvalidArgument(f"retries must be an integer in [0, 99], got {retries!r}")
            changes["max_attempts"] = retries + 1
        if max_attempts is not None:
            if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= 100:
                raise InvalidArgument(f"max_attempts must be an integer in [1, 100], got {max_attempts!r}")
            changes["max_attempts"] = max_attempts
        policy = dataclasses.replace(fv.spec.tasks, **changes)
        now = _now()
        self._seq += 1
        task = _Task(f"t-{uuid.uuid4().hex[:20]}", self._seq, name, session, event, policy.to_dict(), 0, now)
        row = {
            "id": task.id, "seq": task.seq, "function": name, "session_id": session, "event": text,
            "state": "queued", "attempts": 0, "options": json.dumps(task.options), "created_at": now, "run_after": now,
        }
        return task, row

    def admit(self, task: _Task) -> None:
        """Queue a task whose row is committed."""
        self._enqueue(task)
        self._wake.set()

    async def get(self, task_id: str) -> dict[str, Any]:
        _check_task_id(task_id)
        row = await asyncio.to_thread(self.store.get_task, task_id)
        live = self._tasks.get(task_id)
        if live is not None and row["state"] == "running":
            row["progress"], row["progress_message"] = live.progress, live.progress_message
        return self._public(row)

    async def list_tasks(
        self, function: str | None = None, state: str | None = None, since: float | None = None, until: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        if state is not None and state not in TASK_STATES:
            raise InvalidArgument(f"unknown task state {state!r}; one of {', '.join(TASK_STATES)}")
        if not 1 <= limit <= 10000:
            raise InvalidArgument(f"limit must be within [1, 10000], got {limit}")
        rows = await asyncio.to_thread(self.store.list_tasks, function, state, since, until, limit)
        out = []
        for row in rows:
            live = self._tasks.get(row["id"])
            if live is not None and row["state"] == "running":
                row["progress"], row["progress_message"] = live.progress, live.progress_message
            out.append(self._public(row, brief=True))
        return out

    async def counts(self) -> dict[str, dict[str, int]]:
        return await asyncio.to_thread(self.store.task_counts)

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The task once it is finished, or as it is after ``timeout`` seconds."""
        _check_task_id(task_id)
        if task_id not in self._tasks or timeout == 0:  # finished, or not this runtime's
            return await self.get(task_id)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(fut)  # set when it leaves self._tasks
        try:
            if task_id in self._tasks:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, timeout)
            row = await self.get(task_id)
        finally:
            waiters = self._waiters.get(task_id, [])
            if fut in waiters:
                waiters.remove(fut)
        return row

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a queued or running task (a running attempt's instance is
        stopped); a finished task is a Conflict."""
        _check_task_id(task_id)
        task = self._tasks.get(task_id)
        if task is None or task.cancelled:
            row = await asyncio.to_thread(self.store.get_task, task_id, attempts=False)
            if row["state"] in TASK_FINAL_STATES:
                raise Conflict(f"task {task_id} is already {row['state']}", task_id=task_id, state=row["state"])
            raise Conflict(f"task {task_id} is {row['state']} on another runtime", task_id=task_id)
        task.cancelled = True
        now = _now()
        ops: list[tuple[str, dict[str, Any]]] = [("update", {"id": task_id, "state": "cancelled", "finished_at": now, "lease_owner": None, "lease_expires": None})]
        if task.runner is not None:
            ops.append(("attempt", {"task_id": task_id, "attempt": task.attempts, "finished_at": now, "outcome": "cancelled"}))
        await self._write(ops)  # persisted, then acted on
        self._unqueue(task)
        if task.runner is not None:
            task.runner.cancel()
            self._spawn(self._cancel_until_done(task.runner))
        else:
            self._forget(task)
        return await self.get(task_id)

    @staticmethod
    async def _cancel_until_done(runner: asyncio.Task[None]) -> None:
        """Cancel a cancelled attempt again until it has ended.

        One cancellation can be lost on the way: Python 3.11's
        ``asyncio.wait_for`` returns its inner result and drops the
        cancellation when both happen at once (the instance start awaits a
        few). The attempt would then run on (a 60 s call, say) and hold its
        function's concurrency slot, so the next task stays queued that long.
        Each further cancel reaches the attempt's next await."""
        while not runner.done():
            await asyncio.wait({runner}, timeout=CANCEL_AGAIN_S)
            if not runner.done():
                runner.cancel()

    async def retry(self, task_id: str) -> dict[str, Any]:
        """Run a failed, cancelled or timed-out task again: the same task, one
        more attempt, from its last checkpoint (``ctx.resume_from``). A
        succeeded, queued or running task is a Conflict."""
        _check_task_id(task_id)
        if self._closed:
            raise Conflict("the runtime is closed")
        row = await asyncio.to_thread(self.store.get_task, task_id, attempts=False)
        if row["state"] not in ("failed", "cancelled", "timed_out") or task_id in self._tasks:
            raise Conflict(f"task {task_id} is {row['state']}: only a failed, cancelled or timed-out task can be retried", task_id=task_id, state=row["state"])
        self.rt.function(row["function"])  # NotFound if the function is gone
        if row["session_id"] is not None:  # taken by another function since (the reason it failed?)
            await self.check_session_owner(row["session_id"], row["function"])
        options = {**row["options"], "max_attempts": min(100, int(row["attempts"]) + 1)}
        now = _now()
        ok = await self._write([("update", {"id": task_id, "_expect_state": row["state"], "state": "queued", "run_after": now, "finished_at": None,
                                            "result": None, "options": json.dumps(options)})])
        if not ok:
            raise Conflict(f"task {task_id} changed while it was being retried", task_id=task_id)
        task = _Task(task_id, row["seq"], row["function"], row["session_id"], row["event"], options, int(row["attempts"]), now, row["checkpoint"])
        queued = await self.get(task_id)  # as committed: queued (the dispatcher may start it at once)
        self._enqueue(task)
        self._wake.set()
        return queued

    # -- queueing ---------------------------------------------------------------

    def _enqueue(self, task: _Task) -> None:
        self._tasks[task.id] = task
        if task.run_after > _now():
            bisect.insort(self._delayed, (task.run_after, task.seq, task.id))
        else:
            bisect.insort(self._queues.setdefault(task.function, []), (task.seq, task.id))

    def _unqueue(self, task: _Task) -> None:
        q = self._queues.get(task.function, [])
        with contextlib.suppress(ValueError):
            q.remove((task.seq, task.id))
        with contextlib.suppress(ValueError):
            self._delayed.remove((task.run_after, task.seq, task.id))

    def _forget(self, task: _Task) -> None:
        self._tasks.pop(task.id, None)
        self._running.get(task.function, set()).discard(task.id)
        for fut in self._waiters.pop(task.id, []):
            if not fut.done():
                fut.set_result(None)
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        while not self._closed:
            self._wake.clear()
            now = _now()
            while self._delayed and self._delayed[0][0] <= now:
                _, seq, tid = self._delayed.pop(0)
                task = self._tasks.get(tid)
                if task is not None:
                    bisect.insort(self._queues.setdefault(task.function, []), (seq, tid))
            for function, queue in self._queues.items():
                running = self._running.setdefault(function, set())
                try:
                    limit = self.policy(function).concurrency
                except FunctionAIError:
                    limit = 0  # deleted: its tasks fail when they run
                    while queue:
                        _, tid = queue.pop(0)
                        if tid in self._tasks:
                            self._start(self._tasks[tid])
                    continue
                while queue and len(running) < limit:
                    _, tid = queue.pop(0)
                    task = self._tasks.get(tid)
                    if task is not None and not task.cancelled:
                        self._start(task)
            timeout = max(0.0, self._delayed[0][0] - _now()) if self._delayed else None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _start(self, task: _Task) -> None:
        self._running.setdefault(task.function, set()).add(task.id)
        task.runner = asyncio.get_running_loop().create_task(self._run(task), name=f"fai-task-{task.id}")

    # -- one attempt ------------------------------------------------------------

    async def _run(self, task: _Task) -> None:
        try:
            await self._attempt(task)
        except asyncio.CancelledError:
            pass  # cancelled by the user (already persisted) or by close()
        except Exception:
            log.exception("task %s: internal error", task.id)
        finally:
            task.runner = None
            self._running.get(task.function, set()).discard(task.id)
            if task.cancelled:
                self._forget(task)
            self._wake.set()

    async def _attempt(self, task: _Task) -> None:
        task.attempts += 1
        attempt = task.attempts
        now = _now()
        task.progress, task.progress_message = None, None
        started = await self._write([
            ("update", {"id": task.id, "_expect_state": "queued", "state": "running", "attempts": attempt, "started_at": now,
                        "lease_owner": self.owner, "lease_expires": now + self.lease_s, "progress": None, "progress_message": None}),
            ("attempt_new", {"task_id": task.id, "attempt": attempt, "started_at": now}),
        ])
        if not started or task.cancelled:  # cancelled while it was being started
            await self._write([("attempt", {"task_id": task.id, "attempt": attempt, "finished_at": now, "outcome": "cancelled"})])
            return
        opts = task.options

        def on_progress(fraction: float, message: str) -> None:
            task.progress, task.progress_message = fraction, message

        async def on_checkpoint(text: str) -> None:
            task.checkpoint = text
            await self._write([("update", {"id": task.id, "checkpoint": text})])

        error: dict[str, Any] | None = None
        result: Any = None
        instance_id = None
        try:
            res = await self.rt.invoke(
                task.function, task.event, session=task.session_id, timeout=float(opts["timeout_s"]),
                on_progress=on_progress, on_checkpoint=on_checkpoint,
                task={"id": task.id, "attempt": attempt, "resume_from_json": task.checkpoint},
            )
            result, instance_id = res.value, res.instance_id
        except FunctionAIError as exc:
            error = exc.to_dict()
            instance_id = exc.details.get("instance_id")
        if task.cancelled or self._closed:
            return
        # the session state this attempt produced is committed before the
        # outcome is (a crash never leaves a success without its state):
        # ``Runtime.invoke`` returns only once a session's new state has
        # committed; its bookkeeping (last use, call count, the invocation
        # log) follows with the runtime's next hand-over
        now = _now()
        attempt_row = {"task_id": task.id, "attempt": attempt, "finished_at": now, "instance_id": instance_id}
        if error is None:
            mine = await self._write([
                ("update", {"id": task.id, "_expect_owner": self.owner, "state": "succeeded", "finished_at": now, "result": json.dumps(result), "error": None,
                            "progress": 1.0, "progress_message": task.progress_message, "lease_owner": None, "lease_expires": None}),
                ("attempt", {**attempt_row, "outcome": "succeeded"}),
            ])
            self._forget(task)
            if mine:
                self._deliver(task, "succeeded", result=result)
            return
        kind = str(error.get("kind"))
        failed = "timed_out" if kind == "timeout" else "failed"
        error_json = json.dumps(error)
        policy = TaskPolicy.from_dict(opts)
        if kind in policy.retry_on and attempt < policy.max_attempts:
            run_after = now + policy.backoff(attempt, random.random())
            mine = await self._write([
                ("update", {"id": task.id, "_expect_owner": self.owner, "state": "queued", "run_after": run_after, "error": error_json,
                            "lease_owner": None, "lease_expires": None}),
                ("attempt", {**attempt_row, "outcome": failed, "error": error_json}),
            ])
            task.run_after = run_after
            task.runner = None
            self._running.get(task.function, set()).discard(task.id)
            if mine:
                self._enqueue(task)
            else:
                self._forget(task)
            return
        mine = await self._write([
            ("update", {"id": task.id, "_expect_owner": self.owner, "state": failed, "finished_at": now, "error": error_json,
                        "progress": task.progress, "progress_message": task.progress_message, "lease_owner": None, "lease_expires": None}),
            ("attempt", {**attempt_row, "outcome": failed, "error": error_json}),
        ])
        self._forget(task)
        if mine:
            self._deliver(task, failed, error=error)

    async def _reclaim_after(self, task: _Task, delay: float) -> None:
        """A task left running by a runtime that died: once its lease has
        expired, count the lost attempt and queue it again (or fail it)."""
        if delay > 0:
            await asyncio.sleep(delay)
        row = await asyncio.to_thread(self.store.get_task, task.id, attempts=False)
        if row["state"] != "running" or (row["lease_owner"] != self.owner and float(row["lease_expires"] or 0) > _now()):
            if row["state"] == "running":
                self._spawn(self._reclaim_after(task, float(row["lease_expires"]) - _now()))
            else:
                self._forget(task)
            return
        now = _now()
        policy = TaskPolicy.from_dict(task.options)
        error = {"kind": "instance_crashed", "message": f"attempt {task.attempts} was lost: its runtime stopped while it ran (lease expired)", "details": {}}
        ops: list[tuple[str, dict[str, Any]]] = [("attempt", {"task_id": task.id, "attempt": task.attempts, "finished_at": now, "outcome": "lost", "error": json.dumps(error)})]
        if task.attempts < policy.max_attempts:
            ops.append(("update", {"id": task.id, "state": "queued", "run_after": now, "error": json.dumps(error), "lease_owner": None, "lease_expires": None}))
            await self._write(ops)
            task.run_after = now
            self._enqueue(task)
            self._wake.set()
        else:
            ops.append(("update", {"id": task.id, "state": "failed", "finished_at": now, "error": json.dumps(error), "lease_owner": None, "lease_expires": None}))
            await self._write(ops)
            self._forget(task)
            self._deliver(task, "failed", error=error)

    # -- destinations -----------------------------------------------------------

    def _deliver(self, task: _Task, state: str, *, result: Any = None, error: dict[str, Any] | None = None) -> None:
        dest = task.options.get("on_success" if state == "succeeded" else "on_failure")
        if not dest:
            return
        body = {"task_id": task.id, "function": task.function, "state": state, "attempts": task.attempts,
                "event": task.event, "result": result, "error": error}
        if dest.startswith(("http://", "https://")):
            self._spawn(asyncio.to_thread(_post_json, dest, body))
        else:
            self._spawn(self._submit_quietly(dest, body))

    async def _submit_quietly(self, function: str, body: dict[str, Any]) -> None:
        try:
            await self.submit(function, body)
        except FunctionAIError as exc:
            log.warning("task %s: destination %s refused: %s", body["task_id"], function, exc)

    # -- leases and writes ------------------------------------------------------

    async def _lease_loop(self) -> None:
        last_prune = 0.0
        while not self._closed:
            await asyncio.sleep(self.lease_s / 3)
            running = [t for t in self._tasks.values() if t.runner is not None and not t.cancelled]
            now = _now()
            ops: list[tuple[str, dict[str, Any]]] = [
                ("update", {"id": t.id, "lease_expires": now + self.lease_s, "progress": t.progress, "progress_message": t.progress_message})
                for t in running
            ]
            if ops:
                with contextlib.suppress(Exception):
                    await self._write(ops)
            if now - last_prune > PRUNE_INTERVAL_S:
                last_prune = now
                with contextlib.suppress(Exception):
                    await self.prune()

    async def prune(self, now: float | None = None) -> int:
        """Delete finished tasks older than their function's retention (tasks
        of deleted functions: the default retention), as of ``now``."""
        now = _now() if now is None else now
        cuts = {f["name"]: now - self.policy(f["name"]).retention_s for f in await asyncio.to_thread(self.rt.functions)}
        return await self.store.writer.write(self.store.prune_tasks, cuts, now - TaskPolicy().retention_s)

    async def _write(self, ops: list[tuple[str, dict[str, Any]]]) -> bool:
        """Commit ``ops``; False when a conditional update (``_expect_owner``)
        found the task no longer leased by this runtime: nothing of it was
        acted on.

        Group commit without a timer, and without waiting for the previous
        commit: the task writes queued until the store's writer thread starts
        its next transaction are applied there together, as one
        ``write_tasks`` (an ``executemany`` per statement shape) inside the
        writer's batch, with whatever else it commits. The writes of one
        caller stay in order, and after those of earlier callers."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        box = None
        with self._pending_lock:
            self._pending.append((ops, fut))
            if self._collector is None:
                box = self._collector = _Collected()
        if box is not None:
            t = asyncio.get_running_loop().create_task(self._commit_collected(box))
            self._commits.add(t)
            t.add_done_callback(self._commits.discard)
        return await asyncio.shield(fut)

    def _take(self, box: _Collected) -> list[tuple[list[tuple[str, dict[str, Any]]], asyncio.Future[bool]]]:
        """The pending writes, for ``box`` (once: a batch re-applied after a
        failure applies the same writes again)."""
        with self._pending_lock:
            if not box.taken:
                box.taken = True
                box.entries, self._pending = self._pending, []
                if self._collector is box:
                    self._collector = None
        return box.entries

    def _apply_collected(self, box: _Collected) -> list[bool]:
        """On the store's writer thread, inside its transaction."""
        ops = [op for ops, _ in self._take(box) for op in ops]
        return self.store.write_tasks(ops) if ops else []

    async def _commit_collected(self, box: _Collected) -> None:
        """Commit the writes ``box`` collects and answer their callers; if
        that fails, each caller's writes are committed alone, so one bad row
        fails only its caller."""
        try:
            applied = await self.store.writer.write(self._apply_collected, box)
        except Exception as exc:
            entries = self._take(box)
            if len(entries) == 1:
                if not entries[0][1].done():
                    entries[0][1].set_exception(exc)
                return
            for entry, fut in entries:
                try:
                    ok = all(await self.store.writer.write(self.store.write_tasks, entry))
                except Exception as one:
                    if not fut.done():
                        fut.set_exception(one)
                else:
                    if not fut.done():
                        fut.set_result(ok)
            return
        i = 0
        for entry, fut in box.entries:
            ok = all(applied[i : i + len(entry)])
            i += len(entry)
            if not fut.done():
                fut.set_result(ok)

    # -- presentation -----------------------------------------------------------

    @staticmethod
    def public(row: dict[str, Any], brief: bool = False) -> dict[str, Any]:
        """A task row as the API shows it."""
        return TaskQueue._public(row, brief)

    @staticmethod
    def _public(row: dict[str, Any], brief: bool = False) -> dict[str, Any]:
        out = {
            "id": row["id"],
            "function": row["function"],
            "session_id": row.get("session_id"),
            "state": row["state"],
            "attempts": row.get("attempts", 0),
            "max_attempts": (row.get("options") or {}).get("max_attempts"),
            "timeout_s": (row.get("options") or {}).get("timeout_s"),
            "created_at": row.get("created_at"),
            "started_at": row.get("started_at"),
            "finished_at": row.get("finished_at"),
            "run_after": row.get("run_after"),
            "progress": row.get("progress"),
            "progress_message": row.get("progress_message"),
            "result": row.get("result"),
            "error": row.get("error"),
            "has_checkpoint": row.get("checkpoint") is not None,
        }
        if not brief:
            out["event"] = row.get("event")
            out["options"] = row.get("options")
            out["checkpoint"] = json.loads(row["checkpoint"]) if row.get("checkpoint") else None
            if "attempt_history" in row:
                out["attempt_history"] = row["attempt_history"]
        return out


@dataclasses.dataclass
class _Collected:
    """Task writes applied as one ``write_tasks`` (see ``TaskQueue._write``)."""

    taken: bool = False
    entries: list[tuple[list[tuple[str, dict[str, Any]]], asyncio.Future[bool]]] = dataclasses.field(default_factory=list)


def _check_task_id(task_id: Any) -> None:
    if not isinstance(task_id, str) or not task_id.startswith("t-") or len(task_id) > 40 or not task_id[2:].isalnum():
        raise NotFound(f"no task {task_id!r} (task ids look like t-<hex>)", task_id=str(task_id)[:64])


def _post_json(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(url, data=json.dumps(body, default=str).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as resp:
            resp.read()
    except OSError as exc:
        log.warning("task %s: webhook %s failed: %s", body.get("task_id"), url, exc)
