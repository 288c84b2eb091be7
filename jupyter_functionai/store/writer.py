"""The one write path of the store, and its one rule: **acknowledged means
committed**.

Every write of the runtime and of the services over it goes through
:class:`Writer`:

* ``await writer.write(fn, *args)`` returns ``fn``'s answer only once the
  transaction holding it has committed; a caller that acknowledges something
  (an HTTP answer, a queued task) awaits this first.
* ``writer.defer(fn, *args)`` queues a record nobody waits on (an invocation
  log line, an instance's exit); it is committed with the next batch.

One thread applies the writes, in the order they were queued (two writing
threads would only meet on SQLite's write lock).  Writes queued while a batch
commits form the next batch: one transaction, one fsync, however many callers
(group commit), with no timer.  A batch that fails is applied again one write
at a time, so a bad row fails only its own write: its caller gets the error; a
deferred write is retried, then counted as failed and logged.  Nothing is
dropped silently: :meth:`Writer.health` reports failures and the server's
health endpoint shows them.

Reads go through :meth:`Writer.read` (a worker thread: SQLite in WAL mode
serves readers beside the writer), so no SQLite call runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import FunctionAIError

if TYPE_CHECKING:
    from . import Store

__all__ = ["Writer"]

log = logging.getLogger("jupyter_functionai.store")
T = TypeVar("T")

#: How many times a deferred write is tried before it is counted as failed.
DEFER_ATTEMPTS = 3
#: Writes applied in one transaction at most (a burst is split into several).
MAX_BATCH = 1024
#: writes that change nothing a user sees (see Writer.changes)
QUIET = frozenset({"_noop", "add_usage"})


@dataclass
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kw: dict[str, Any]
    fut: asyncio.Future[Any] | None  # None: deferred
    loop: asyncio.AbstractEventLoop | None


class Writer:
    """See the module docstring."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="fai-store")
        self._lock = threading.Lock()
        self._queue: list[_Op] = []
        self._draining = False  # a _drain is queued on the thread or running: it takes what is queued
        self._closed = False
        self.committed = 0  # writes committed
        #: writes committed that change what a user sees: all but the usage
        #: ledger's own samples and flushes (the events stream counts these,
        #: so a live instance's meter does not make every sidebar refetch)
        self.changes = 0
        self.batches = 0  # transactions
        self.failed = 0  # writes that failed for good (their callers were told, or they were deferred)
        self.retried = 0  # deferred writes tried again after a failure
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    # -- the API ----------------------------------------------------------------

    async def write(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Apply ``fn(*args, **kw)`` on the writer thread; return its answer
        once committed (raise its error if it failed).  A caller cancelled
        meanwhile does not cancel the write."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._submit(_Op(fn, args, kw, fut, loop))
        return await asyncio.shield(fut)

    def defer(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """Queue ``fn(*args, **kw)`` for the next batch; nobody waits for it."""
        self._submit(_Op(fn, args, kw, None, None))

    async def flush(self) -> None:
        """Return once everything queued before this call has committed."""
        await self.write(_noop)

    async def read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """A store read off the event loop."""
        return await asyncio.to_thread(fn, *args, **kw)

    def health(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._queue)
        return {
            "status": "ok" if self.failed == 0 else "degraded",
            "committed": self.committed,
            "batches": self.batches,
            "queued": queued,
            "retried": self.retried,
            "failed": self.failed,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }

    def close(self) -> None:
        """Apply what is queued, then stop the thread (blocking)."""
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._drain)
        self._thread.shutdown(wait=True)

    # -- the writer thread --------------------------------------------------------

    def _submit(self, op: _Op) -> None:
        if self._closed:
            raise RuntimeError("the store's writer is closed")
        with self._lock:
            self._queue.append(op)
            start, self._draining = not self._draining, True
        if start:  # else the drain under way takes it (one thread hand-off per group, not per write)
            self._thread.submit(self._drain)

    def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    if not batch:
                        self._draining = False
                        return
                self._apply(batch)
        except BaseException:  # (_apply answers every failure itself: a bug) what is queued is not stranded
            with self._lock:
                self._draining = bool(self._queue)
            if self._draining:
                self._thread.submit(self._drain)
            raise

    def _apply(self, batch: list[_Op]) -> None:
        if len(batch) == 1:
            self._apply_one(batch[0])
            return
        results: list[Any] = []
        try:
            with self._store.batch():  # one transaction, one fsync
                for op in batch:
                    results.append(op.fn(*op.args, **op.kw))
        except Exception:
            # one bad write must not fail the others: apply them one by one, in order
            for op in batch:
                self._apply_one(op)
            return
        self.batches += 1
        self.committed += len(batch)
        self.changes += sum(1 for op in batch if _name(op.fn) not in QUIET)
        for op, result in zip(batch, results, strict=True):
            _resolve(op, result, None)

    def _apply_one(self, op: _Op) -> None:
        """One write in its own transaction; a deferred one is tried again
        (in place, so what was queued after it still comes after it)."""
        tries = 1 if op.fut is not None else DEFER_ATTEMPTS
        for attempt in range(1, tries + 1):
            try:
                with self._store.batch():
                    result = op.fn(*op.args, **op.kw)
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, FunctionAIError):  # an answer (not found, conflict...), not a failure of the store
                    if op.fut is None:
                        log.info("deferred store write %s refused: %s", _name(op.fn), text)
                    _resolve(op, None, exc)
                    return
                self.last_error, self.last_error_at = text, time.time()
                if attempt < tries:
                    self.retried += 1
                    log.warning("store write %s failed (try %d of %d, trying again): %s", _name(op.fn), attempt, tries, text)
                    time.sleep(0.01 * attempt)
                    continue
                self.failed += 1
                log.error("store write %s failed%s: %s", _name(op.fn), f" {tries} times, given up" if tries > 1 else "", text)
                _resolve(op, None, exc)
                return
            self.batches += 1
            self.committed += 1
            if _name(op.fn) not in QUIET:
                self.changes += 1
            _resolve(op, result, None)
            return


def _noop() -> None:
    return None


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", fn))


def _resolve(op: _Op, result: Any, exc: BaseException | None) -> None:
    fut, loop = op.fut, op.loop
    if fut is None or loop is None or loop.is_closed():
        return

    def settle() -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    loop.call_soon_threadsafe(settle)
