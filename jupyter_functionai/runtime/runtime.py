"""The Runtime facade: deploy functions, invoke them in sessions, watch them.

Usable without Jupyter::

    async with Runtime.open("~/.functionai") as rt:
        await rt.deploy(FunctionSpec.from_code("hello", "def handler(e, ctx): return e"))
        r = await rt.invoke("hello", {"x": 1}, session="s1")

The store is the single source of truth after a crash: ``open`` reconciles
what it says with what is alive (instances that were running are marked
lost; their sessions become resumable).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..backends.base import (
    Backend,
    Binding,
    CallOutcome,
    CheckpointCallback,
    ChunkCallback,
    FunctionVersion,
    Instance,
    ProgressCallback,
)
from ..errors import (
    BadPayload,
    FunctionAIError,
    FunctionTimeout,
    InstanceCrashed,
    InvalidArgument,
    IsolationUnavailable,
    NotFound,
    OutOfMemory,
    PayloadTooLarge,
    SessionClosed,
)
from ..spec import FunctionSpec
from ..store import Store
from .metering import Meter, PriceTable
from .pool import InstancePool
from .scaling import Autoscaler
from .sessions import (
    CLOSED,
    ENDED,
    EXPIRED,
    LIVE,
    PAUSED,
    LiveSession,
    UidAllocator,
    check_session_id,
    chown_tree,
    make_workdir,
    remove_tree,
)
from .tasks import TaskQueue

log = logging.getLogger("jupyter_functionai.runtime")

UID_BASE = 200_000
UID_SPAN = 100_000
EPHEMERAL_UID_SPAN = 50_000
MAX_LOG_BYTES = 64 * 1024
#: The invocations (newest, all functions) that ``Runtime.latency`` summarises.
LATENCY_WINDOW = 5000
#: How often the bookkeeping of calls (each session's last use and call
#: count, the invocation log) goes to the store's writer: one group of rows
#: per interval however many calls.  Nothing acknowledged waits on it (a
#: session's new state is committed before its answer) and every read of
#: these rows flushes first; a short interval costs the event loop GIL
#: switches to the writer thread (gateway c=32: 822 req/s at 20 ms, 1,067
#: at 250 ms, 1,028 with no bookkeeping at all).
BOOKKEEPING_INTERVAL_S = 0.25
#: ... or sooner, once this many invocation rows wait.
BOOKKEEPING_MAX_ROWS = 4096


@dataclass(frozen=True)
class ColdStart:
    """Timing record of one instance start."""

    instance_id: str
    function: str
    version: int
    path: str  # "warm-pool" | "template-fork" | "fresh"
    spawn_ms: float
    init_ms: float
    first_call_ms: float
    session_id: str | None = None

    @property
    def total_ms(self) -> float:
        return self.spawn_ms + self.init_ms + self.first_call_ms

    def header(self) -> str:
        return f"{self.path};ms={self.total_ms:.2f}"


@dataclass
class InvokeResult:
    value: Any
    function: str
    version: int
    session_id: str | None
    instance_id: str
    cold_start: ColdStart | None
    logs: str
    logs_dropped: int
    duration_ms: float
    streamed: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d


class Runtime:
    """Sandbox functions with sessions, on one backend, over one store."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        store_url: str | None = None,
        store: Store | None = None,
        backend: Backend | str = "process",
        reap_interval: float = 1.0,
        uid_base: int = UID_BASE,
        uid_span: int = UID_SPAN,
        use_templates: bool = True,
        isolate: bool = True,
        task_lease_s: float = 15.0,
        prices: PriceTable | Mapping[str, Any] | None = None,
        metering: bool = True,
    ) -> None:
        #: turns usage into cost (``usage()`` rows gain ``cost``); None: no prices
        self.prices = PriceTable.from_dict(prices) if isinstance(prices, Mapping) else prices
        self.state_dir = os.path.realpath(os.path.expanduser(os.fspath(state_dir)))
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._own_store = store is None  # a store handed in is closed by whoever built it
        if store is None:
            store = Store(store_url) if store_url else Store.open(os.path.join(self.state_dir, "functionai.db"))
        self.store = store
        if isinstance(backend, str):
            backend = _make_backend(backend, self.state_dir, use_templates=use_templates, isolate=isolate)
        self.backend = backend
        self.backend.on_instance_exit(self._instance_exited)
        self.pool = InstancePool(self.backend, self._prebind, self._release_prebound)
        #: grows and shrinks warm pools with the sessionless load (scaling.py)
        self.scaler = Autoscaler(self.pool, lambda event: self._defer(self.store.add_scale_event, event))
        #: per-second usage of every live instance, into the ledger (metering.py)
        self.meter = Meter(self.backend, self.store)
        self.metering = metering  # False: no meter runs (benchmarks/coldstart.py measures its cost)
        self.reap_interval = reap_interval
        self._uid_base, self._uid_span = uid_base, uid_span
        self._active: dict[str, FunctionVersion] = {}
        self._sessions: dict[str, LiveSession] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._stored: dict[str, str] = {}  # id -> status of stored sessions not in memory
        self._deploy_lock = asyncio.Lock()
        self._touched: dict[str, LiveSession] = {}  # sessions called since the last flush
        self._invocations: list[dict[str, Any]] = []
        # ids of calls (``ctx.call_id``) and of
        # invocation rows: a random prefix per runtime and a counter (unique
        # across restarts and runtimes; no uuid4 per call)
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._flush_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.ephemeral_uids = UidAllocator(uid_base + uid_span, EPHEMERAL_UID_SPAN, set())
        self._closed = False
        self._start_task: asyncio.Future[None] | None = None
        self.uids = UidAllocator(uid_base, uid_span, set())
        self.tasks = TaskQueue(self, lease_s=task_lease_s)

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], **kw: Any) -> _Opener:
        """``async with Runtime.open(path) as rt`` (or ``rt = await Runtime.open(path)``)."""
        return _Opener(cls, state_dir, kw)

    @property
    def started(self) -> bool:
        return bool(self._tasks) and not self._closed

    async def ensure_started(self) -> None:
        """Start once, however many callers ask at the same time."""
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self.start())
        await asyncio.shield(self._start_task)

    async def start(self) -> None:
        _raise_nofile_limit()
        await asyncio.to_thread(self._reconcile)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._reaper(), name="fai-reaper"))
        self._tasks.append(loop.create_task(self._flusher(), name="fai-flusher"))
        if self.metering:
            self.meter.start()
        for f in await asyncio.to_thread(self.store.list_functions):
            try:
                fv = await asyncio.to_thread(self._load_version, f["name"], f["active_version"])
            except FunctionAIError as exc:
                log.warning("function %s could not be loaded: %s", f["name"], exc)
                continue
            if self.scaler.scales(fv.spec):
                self.pool.configure(fv)
            self.scaler.configure(fv)
        self.scaler.start()
        await self.tasks.start()

    def _reconcile(self) -> None:
        """Make the store agree with reality after a stop or a crash."""
        now = time.time()
        for inst in self.store.list_instances(status="running"):
            self.store.update_instance(inst["id"], status="lost", stopped_at=now, exit_reason="runtime restarted")
        in_use: set[int] = set()
        stored: dict[str, str] = {}
        for s in self.store.list_sessions():
            stored[s["id"]] = s["status"]
            if s["status"] in ENDED:
                continue
            if s["expires_at"] <= now:
                self.store.update_session(s["id"], status=EXPIRED, closed_at=now, close_reason="max lifetime", instance_id=None)
                stored[s["id"]] = EXPIRED
                remove_tree(os.path.dirname(s["workdir"]))
                continue
            if s["status"] != PAUSED:
                self.store.update_session(s["id"], status=PAUSED, instance_id=None)
            if s["uid"] is not None:
                in_use.add(int(s["uid"]))
        self.uids = UidAllocator(self._uid_base, self._uid_span, in_use)
        self._stored = stored
        remove_tree(os.path.join(self.state_dir, "ephemeral"))
        # what an earlier run left that no paused session owns: warm-pool
        # instances' directories, sessions that ended while it died
        keep = {os.path.dirname(s["workdir"]) for s in self.store.list_sessions() if s["status"] not in ENDED}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(os.path.join(self.state_dir, "sessions")):
                if entry.path not in keep:
                    remove_tree(entry.path)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        reaper, flusher = self._tasks or (None, None)
        if reaper is not None:
            reaper.cancel()
            await asyncio.wait({reaper}, timeout=10)
        await self.meter.close()  # the instances' last second, before they stop
        if self._tasks:
            await self.tasks.close()
        await self.scaler.close()
        await self.pool.close()
        # all at once: an instance stopping in order (its fuse2fs disk
        # flushing) may take a moment, and a shutdown must not add them up
        await asyncio.gather(*(self._pause(sess, "runtime closed") for sess in list(self._sessions.values()) if sess.instance is not None))
        await self.backend.close()
        self._flush_event.set()
        if flusher is not None:
            await asyncio.wait({flusher}, timeout=10)
        await self.flush()
        self.uids.close()
        self.ephemeral_uids.close()
        if self._own_store:
            await asyncio.to_thread(self.store.close)

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- functions -------------------------------------------------------------

    async def deploy(self, spec: FunctionSpec | dict[str, Any]) -> dict[str, Any]:
        """Deploy a new version (and make it active). The module is loaded in
        a template first: a module that fails to import is refused with its
        traceback and no version is recorded."""
        if not isinstance(spec, FunctionSpec):
            spec = FunctionSpec.from_dict(spec)
        self._check_isolation(spec)
        self.backend.check_placement(spec)
        source = spec.load_text()
        async with self._deploy_lock:
            versions = []
            with contextlib.suppress(NotFound):
                versions = await asyncio.to_thread(self.store.list_versions, spec.name)
            version = (versions[-1]["version"] + 1) if versions else 1
            fv = await asyncio.to_thread(self._materialize, spec.name, version, spec, source)
            try:
                await self.backend.prepare(fv)
            except BaseException:
                remove_tree(fv.code_dir)
                raise
            row = await self.store.writer.write(self.store.deploy, spec.name, spec.to_dict(), source)
            if row["version"] != version:  # another process deployed meanwhile
                await self.backend.retire(fv)
                fv = self._materialize(spec.name, row["version"], spec, source)
            self._activate(fv)
            return row

    def _check_isolation(self, spec: FunctionSpec) -> None:
        caps = self.backend.capabilities(spec)
        missing = {k: caps.get(k, "unknown layer") for k in spec.isolation_required if caps.get(k, "unknown layer")}
        if missing:
            raise IsolationUnavailable(
                f"function {spec.name!r} requires isolation this system cannot give: "
                + "; ".join(f"{k}: {v}" for k, v in sorted(missing.items())),
                missing=missing,
            )

    def _materialize(self, name: str, version: int, spec: FunctionSpec, source: str | None) -> FunctionVersion:
        code_dir = os.path.join(self.state_dir, "functions", name, f"v{version}")
        os.makedirs(code_dir, exist_ok=True)
        os.chmod(code_dir, 0o755)
        code_path = None
        if source is not None:
            code_path = os.path.join(code_dir, f"{name.replace('-', '_')}.py")
            with open(code_path, "w") as f:
                f.write(source)
            os.chmod(code_path, 0o644)
        return FunctionVersion(name=name, version=version, spec=spec, code_path=code_path, code_dir=code_dir)

    def _load_version(self, name: str, version: int | None = None) -> FunctionVersion:
        row = self.store.get_function(name, version)
        spec = FunctionSpec.from_dict(row["spec"]) if row["spec"]["source"]["kind"] != "file" else _spec_with_code(row)
        fv = self._materialize(name, row["version"], spec, row["source"])
        if version is None or row.get("active"):
            self._active[name] = fv
        return fv

    def _activate(self, fv: FunctionVersion) -> None:
        old = self._active.get(fv.name)
        self._active[fv.name] = fv
        if self.scaler.scales(fv.spec):
            self.pool.configure(fv)
        else:
            self.pool.remove(fv.name)
        self.scaler.configure(fv)
        if old is not None and old.version != fv.version:
            self._spawn(self._retire_if_unused(old))

    async def _retire_if_unused(self, fv: FunctionVersion) -> None:
        if not any(s.instance is not None and s.instance.fv.version == fv.version and s.function == fv.name for s in self._sessions.values()):
            await self.backend.retire(fv)

    def active_function(self, name: str) -> FunctionVersion | None:
        """``name``'s active version if it is loaded, else None (no I/O: for hot paths)."""
        return self._active.get(name)

    def function(self, name: str) -> FunctionVersion:
        fv = self._active.get(name)
        if fv is None:
            fv = self._load_version(name)
        return fv

    def functions(self) -> list[dict[str, Any]]:
        return self.store.list_functions()

    def versions(self, name: str) -> list[dict[str, Any]]:
        return self.store.list_versions(name)

    async def rollback(self, name: str, version: int) -> dict[str, Any]:
        async with self._deploy_lock:
            row = await self.store.writer.write(self.store.rollback, name, version)
            fv = self._load_version(name, version)
            await self.backend.prepare(fv)
            self._activate(fv)
            return row

    async def delete(self, name: str) -> None:
        async with self._deploy_lock:
            await asyncio.to_thread(self.store.get_function, name)
            for sess in [s for s in self._sessions.values() if s.function == name]:
                await self.close_session(sess.id, reason="function deleted")
            self.pool.remove(name)
            self.scaler.remove(name)
            fv = self._active.pop(name, None)
            if fv is not None:
                await self.backend.retire(fv)
            await self.store.writer.write(self.store.delete_function, name)

    # -- invocation --------------------------------------------------------------

    async def invoke(
        self,
        name: str,
        event: Any = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_chunk: ChunkCallback | None = None,
        task: dict[str, Any] | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        principal: str | None = None,
        trace: dict[str, float] | None = None,
    ) -> InvokeResult:
        """Call ``name`` with ``event``. With ``session`` the call reaches that
        session's instance (created or resumed as needed); without, it runs in
        an ephemeral instance that is discarded afterwards. ``task`` makes the
        call an attempt of a durable task (see ``runtime.tasks``): its
        ``timeout`` is the task's own, not capped by the function's.

        ``principal`` is who calls (e.g. ``"key:<key id>"``): a session it
        opens is bound to it, and a session opened by anyone else is
        :class:`NotFound` to it, as if it did not exist. ``None`` is the
        runtime's owner (a script, the server's token holder): it reaches
        every session, and the sessions it opens have no principal.

        ``trace`` (a dict; ``benchmarks/coldstart.py --profile``) receives
        the ``time.perf_counter`` of each step of a session call, from
        ``start`` to ``finished``: ``session`` (found or opened), ``claimed``
        (its instance: live, from the warm pool or forked), ``recorded``
        (the store's rows queued), the instance's steps (see
        :meth:`Instance.call`), ``resumed`` (the answer back in this call),
        ``stored`` (a changed state committed) and ``finished``."""
        if trace is not None:
            trace["start"] = time.perf_counter()
        if self._closed:
            raise InstanceCrashed("the runtime is closed")
        fv = self.function(name)
        size = _payload_size(event, fv.spec.limits.max_payload_bytes)
        if task is not None and timeout is not None:
            limit = float(timeout)
        else:
            limit = fv.spec.timeout_s if timeout is None else min(float(timeout), fv.spec.timeout_s)
        extra: dict[str, Any] = {"task": task, "on_checkpoint": on_checkpoint} if task is not None else {}
        if session is not None:
            check_session_id(session)
        if session is None or not fv.spec.session.enabled:
            async with self.scaler.admit(fv, limit) as left:  # max_instances: queue for a place
                return await self._invoke_ephemeral(fv, event, size, left, on_progress, on_chunk, extra)
        sess = await self._session(session, fv, principal)
        if trace is not None:
            trace["session"] = time.perf_counter()
        async with sess.slots:
            if sess.ended:
                raise SessionClosed(f"session {sess.id!r} was {sess.ended}", session_id=sess.id)
            sess.busy += 1
            try:
                async with sess.start_lock:
                    inst, fresh, attach = await self._ensure_instance(sess, trace)
                fresh, sess.cold_pending = fresh or sess.cold_pending, False
                if trace is not None:
                    extra["trace"] = trace
                try:
                    outcome, elapsed = await self._call(inst, event, limit, on_progress, on_chunk, attach, **extra)
                except (FunctionTimeout, OutOfMemory, InstanceCrashed) as exc:
                    await self._lost_instance(sess, inst, exc)
                    self._log_invocation(inst, sess.id, time.time(), 0.0, exc.kind, size, 0, "")
                    raise
                finally:
                    if attach is not None:  # a warm-pool hit: replace it now that it has answered
                        self.pool.refill(fv.name)
            finally:
                sess.busy -= 1
                sess.last_used = time.time()
            sess.calls += 1
            if trace is not None:
                trace["resumed"] = time.perf_counter()
            if outcome.state_json is not None and outcome.state_json != sess.state_json:
                # acknowledged means committed: the new state is stored before the answer
                sess.state_json = outcome.state_json
                self._touched.pop(sess.id, None)
                await self.store.writer.write(
                    self.store.update_session, sess.id, last_used_at=sess.last_used, calls=sess.calls, state=json.loads(sess.state_json)
                )
            else:
                self._touched[sess.id] = sess  # bookkeeping: written once per group commit, however many calls
                self._flush_event.set()
            if trace is not None:
                trace["stored"] = time.perf_counter()
            result = self._finish(inst, sess.id, outcome, elapsed, fresh, size)
            if trace is not None:
                trace["finished"] = time.perf_counter()
            return result

    async def _invoke_ephemeral(
        self, fv: FunctionVersion, event: Any, size: int, limit: float, on_progress: ProgressCallback | None, on_chunk: ChunkCallback | None, extra: dict[str, Any]
    ) -> InvokeResult:
        inst = self.pool.acquire(fv, refill=False)
        pooled = inst is not None
        uid = None
        root = ""
        if inst is None:
            uid = self.ephemeral_uids.allocate() if os.geteuid() == 0 else None
            root = os.path.join(self.state_dir, "ephemeral", uuid.uuid4().hex[:16])
            try:
                inst = await self.backend.start(fv, Binding(session_id=None, uid=uid, workdir=make_workdir(root, uid)))
            except BaseException:
                remove_tree(root)
                self.ephemeral_uids.release(uid)
                raise
        try:
            self._record_instance(inst, None)
            try:
                outcome, elapsed = await self._call(inst, event, limit, on_progress, on_chunk, **extra)
            except (FunctionTimeout, OutOfMemory, InstanceCrashed) as exc:
                self._log_invocation(inst, None, time.time(), 0.0, exc.kind, size, 0, "")
                raise
            return self._finish(inst, None, outcome, elapsed, True, size)
        finally:
            if pooled:
                self.pool.refill(fv.name)
            self._spawn(self._discard(inst, root, uid))

    async def _discard(self, inst: Instance, root: str, uid: int | None) -> None:
        await inst.stop("ephemeral call done")
        self._defer(self.store.update_instance, inst.id, status="stopped", stopped_at=time.time(), exit_reason="ephemeral call done")
        if root:
            await asyncio.to_thread(remove_tree, root)
            self.ephemeral_uids.release(uid)
        else:
            self._release_prebound(inst)

    async def _prebind(self, inst: Instance) -> None:
        """Bind a warm-pool instance ahead of time: its own uid and directory,
        re-seeded, primed by the spec's warmup hook; the session attaches later."""
        uid = self.uids.allocate() if os.geteuid() == 0 else None
        root = os.path.join(self.state_dir, "sessions", inst.id)
        try:
            await inst.bind(Binding(session_id=None, uid=uid, workdir=make_workdir(root, uid), warmup=True))
        except BaseException:
            self.uids.release(uid)
            remove_tree(root)
            raise

    def _release_prebound(self, inst: Instance) -> None:
        """Give back what a pre-bound instance held when no session took it."""
        b = inst.binding
        if b is not None and inst.bound_session is None:
            self.uids.release(b.uid)
            remove_tree(os.path.dirname(b.workdir))

    async def stream(
        self, name: str, event: Any = None, *, session: str | None = None, timeout: float | None = None, principal: str | None = None
    ) -> AsyncIterator[Any]:
        """Yield a generator handler's items as they are produced (a plain
        handler yields its one result)."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=64)

        async def on_chunk(item: Any) -> None:
            await queue.put(("item", item))

        task = asyncio.get_running_loop().create_task(self.invoke(name, event, session=session, timeout=timeout, on_chunk=on_chunk, principal=principal))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()[1]
                    continue
                getter.cancel()
                while not queue.empty():
                    yield queue.get_nowait()[1]
                result = task.result()
                if not result.streamed:
                    yield result.value
                return
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _call(
        self,
        inst: Instance,
        event: Any,
        limit: float,
        on_progress: ProgressCallback | None,
        on_chunk: ChunkCallback | None,
        attach: tuple[str | None, str] | None = None,
        task: dict[str, Any] | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        trace: dict[str, float] | None = None,
    ) -> tuple[CallOutcome, float]:
        chunks: list[Any] | None = None
        if on_chunk is None:
            chunks = []

            async def on_chunk(item: Any) -> None:
                chunks.append(item)

        t0 = time.perf_counter()
        outcome = await inst.call(f"{self._id_prefix}{next(self._ids):016x}", event, timeout=limit, on_progress=on_progress, on_chunk=on_chunk, attach=attach, task=task, on_checkpoint=on_checkpoint, trace=trace)
        elapsed = (time.perf_counter() - t0) * 1000
        if outcome.streamed and chunks is not None:
            outcome.value = chunks
        return outcome, elapsed

    def _finish(self, inst: Instance, session_id: str | None, outcome: CallOutcome, elapsed: float, fresh: bool, size: int) -> InvokeResult:
        started = time.time() - elapsed / 1000
        cold = None
        if fresh:
            cold = ColdStart(inst.id, inst.fv.name, inst.fv.version, inst.path, inst.spawn_ms, inst.init_ms, elapsed, session_id)
            self._defer(
                self.store.add_coldstart,
                inst.id, inst.fv.name, inst.fv.version, inst.path, inst.spawn_ms, inst.init_ms, elapsed, session_id,
            )
        out_bytes = 0 if outcome.error else len(json.dumps(outcome.value, separators=(",", ":"), ensure_ascii=False))
        logs = outcome.logs
        if outcome.logs_dropped:
            logs += f"\n[functionai: {outcome.logs_dropped} more bytes of output dropped (cap {inst.fv.spec.limits.max_output_bytes} bytes)]"
        self._log_invocation(inst, session_id, started, elapsed, outcome.error["kind"] if outcome.error else "ok", size, out_bytes, logs)
        if outcome.error:
            err = FunctionAIError.from_dict(outcome.error)
            err.details.update(instance_id=inst.id, session_id=session_id, logs=logs)
            raise err
        return InvokeResult(
            value=outcome.value,
            function=inst.fv.name,
            version=inst.fv.version,
            session_id=session_id,
            instance_id=inst.id,
            cold_start=cold,
            logs=logs,
            logs_dropped=outcome.logs_dropped,
            duration_ms=elapsed,
            streamed=outcome.streamed,
        )

    def _log_invocation(self, inst: Instance, session_id: str | None, started: float, ms: float, outcome: str, bytes_in: int, bytes_out: int, logs: str) -> None:
        self._invocations.append(
            {
                "id": f"{self._id_prefix}{next(self._ids):016x}",
                "function": inst.fv.name,
                "version": inst.fv.version,
                "session_id": session_id,
                "instance_id": inst.id,
                "started_at": started,
                "duration_ms": ms,
                "outcome": "ok" if outcome == "ok" else "error",
                "error_kind": None if outcome == "ok" else outcome,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "logs": logs[-MAX_LOG_BYTES:],
            }
        )
        if len(self._invocations) >= BOOKKEEPING_MAX_ROWS:
            self._hand_over()
        else:
            self._flush_event.set()

    # -- sessions ------------------------------------------------------------------

    async def _session(self, session_id: str, fv: FunctionVersion, principal: str | None = None) -> LiveSession:
        sess = self._sessions.get(session_id)
        if sess is None:
            lock = self._opening.setdefault(session_id, asyncio.Lock())
            try:
                async with lock:
                    sess = self._sessions.get(session_id) or await self._open_session(session_id, fv, principal)
            finally:
                if not lock.locked():
                    self._opening.pop(session_id, None)
        _check_principal(session_id, sess.principal, principal)
        if sess.function != fv.name:
            raise _wrong_function(session_id, sess.function, fv.name)
        return sess

    async def _open_session(self, session_id: str, fv: FunctionVersion, principal: str | None = None) -> LiveSession:
        """Load a paused session from the store, or create a new one.

        ``_stored`` indexes every session the store holds that is not in
        memory, so a brand-new id costs no store round trip on the call path
        (its row is written behind, in the next group commit)."""
        known = self._stored.get(session_id)
        if known in ENDED:
            if principal is not None:  # another's ended session is unknown to it, not "closed"
                _check_principal(session_id, (await asyncio.to_thread(self.store.get_session, session_id))["principal"], principal)
            raise SessionClosed(f"session {session_id!r} was {known}", session_id=session_id)
        row = await asyncio.to_thread(self.store.get_session, session_id) if known else None
        if row is not None:
            _check_principal(session_id, row["principal"], principal)
            if row["function"] != fv.name:
                raise _wrong_function(session_id, row["function"], fv.name)
            if row["status"] in ENDED:
                raise SessionClosed(f"session {session_id!r} was {row['status']} ({row.get('close_reason') or 'closed'})", session_id=session_id)
            sess = LiveSession(
                id=session_id,
                function=fv.name,
                uid=row["uid"],
                workdir=row["workdir"],
                created_at=row["created_at"],
                expires_at=row["expires_at"],
                idle_ttl=fv.spec.session.idle_ttl_s,
                state_json=json.dumps(row["state"], separators=(",", ":"), ensure_ascii=False, sort_keys=True),
                calls=row["calls"],
                last_used=row["last_used_at"],
                principal=row["principal"],
            )
            if sess.uid is not None and not self.uids.claim(sess.uid):
                # another runtime on the host holds its old uid now: it moves to a new one
                uid = self.uids.allocate()
                await asyncio.to_thread(chown_tree, os.path.dirname(sess.workdir), uid)
                sess.uid = uid
                await self.store.writer.write(self.store.update_session, session_id, uid=uid)
        else:
            # brand new: uid and working directory come with its first instance
            now = time.time()
            sess = LiveSession(
                id=session_id,
                function=fv.name,
                uid=None,
                workdir="",
                created_at=now,
                expires_at=now + fv.spec.session.max_lifetime_s,
                idle_ttl=fv.spec.session.idle_ttl_s,
                last_used=now,
                principal=principal,
            )
        self._stored.pop(session_id, None)
        sess.slots = asyncio.Semaphore(fv.spec.concurrency)
        self._sessions[session_id] = sess
        return sess

    async def _ensure_instance(self, sess: LiveSession, trace: dict[str, float] | None = None) -> tuple[Instance, bool, tuple[str | None, str] | None]:
        """The session's live instance, or a new one: a warm-pool hit for a
        brand-new session (it adopts the instance's uid and directory), else a
        fork bound to the session's uid, directory and saved state (resume)."""
        if sess.instance is not None and sess.instance.alive:
            if trace is not None:
                trace["claimed"] = trace["recorded"] = time.perf_counter()
            return sess.instance, False, None
        fv = self.function(sess.function)
        inst: Instance | None = None
        attach = None
        if not sess.workdir:
            inst = self.pool.acquire(fv, refill=False)
            if inst is not None and inst.binding is not None:
                sess.uid, sess.workdir = inst.binding.uid, inst.binding.workdir
                attach = (sess.id, sess.state_json)
            else:
                sess.uid = self.uids.allocate() if os.geteuid() == 0 else None
                sess.workdir = make_workdir(os.path.join(self.state_dir, "sessions", sess.id), sess.uid)
            self._defer(self.store.create_session, sess.id, fv.name, fv.version, sess.uid, sess.workdir, sess.expires_at, sess.principal)
        if inst is None:
            inst = await self.backend.start(fv, Binding(session_id=sess.id, uid=sess.uid, workdir=sess.workdir, state_json=sess.state_json))
        if trace is not None:
            trace["claimed"] = time.perf_counter()
        sess.instance = inst
        sess.status = LIVE
        sess.idle_ttl = fv.spec.session.idle_ttl_s
        self._record_instance(inst, sess.id)
        self._defer(self.store.update_session, sess.id, status=LIVE, instance_id=inst.id, version=fv.version)
        if trace is not None:
            trace["recorded"] = time.perf_counter()
        return inst, True, attach

    def _record_instance(self, inst: Instance, session_id: str | None) -> None:
        self._defer(
            self.store.add_instance,
            inst.id, inst.fv.name, inst.fv.version, self.backend.name, inst.path, inst.pid, inst.isolation, session_id, time.time() - (inst.spawn_ms + inst.init_ms) / 1000,
        )

    async def _lost_instance(self, sess: LiveSession, inst: Instance, exc: FunctionAIError) -> None:
        """The session's instance is gone (timeout, OOM, crash): the session stays resumable."""
        if sess.instance is inst and not sess.ended:  # (a close that stopped it has written the session)
            sess.instance = None
            sess.status = PAUSED
            self._defer(self.store.update_session, sess.id, status=PAUSED, instance_id=None)
        self._defer(self.store.update_instance, inst.id, status="stopped", stopped_at=time.time(), exit_reason=exc.kind)
        await inst.stop(exc.kind)

    def _instance_exited(self, inst: Instance, reason: str) -> None:
        """An instance ended on its own (e.g. killed by the OOM killer between calls)."""
        for sess in self._sessions.values():
            if sess.instance is inst:
                sess.instance = None
                sess.status = PAUSED
                self._defer(self.store.update_session, sess.id, status=PAUSED, instance_id=None)
        self._defer(self.store.update_instance, inst.id, status="stopped", stopped_at=time.time(), exit_reason=reason)

    async def _pause(self, sess: LiveSession, reason: str) -> None:
        inst, sess.instance = sess.instance, None
        sess.status = PAUSED
        self._defer(self.store.update_session, sess.id, status=PAUSED, instance_id=None)
        if inst is not None:
            self._defer(self.store.update_instance, inst.id, status="stopped", stopped_at=time.time(), exit_reason=reason)
            await inst.stop(reason)

    async def open_session(self, name: str, session: str | None = None, *, principal: str | None = None) -> dict[str, Any]:
        """Create (or resume) a session and start its sandbox now, without
        calling the handler; returns its description. ``session=None`` picks a
        new id. The start is recorded as a ColdStart at the first call.
        ``principal`` as for :meth:`invoke`."""
        fv = self.function(name)
        if not fv.spec.session.enabled:
            raise InvalidArgument(f"function {name!r} has sessions disabled (spec.session.enabled is false)")
        session = check_session_id(session) if session is not None else f"s-{uuid.uuid4().hex[:20]}"
        sess = await self._session(session, fv, principal)
        async with sess.slots:
            if sess.ended:
                raise SessionClosed(f"session {sess.id!r} was {sess.ended}", session_id=sess.id)
            async with sess.start_lock:
                inst, fresh, attach = await self._ensure_instance(sess)
            if attach is not None:
                await inst.attach(*attach)
                self.pool.refill(fv.name)
            sess.cold_pending = sess.cold_pending or fresh
            sess.last_used = time.time()
        return await self.describe_session(session, principal=principal)

    async def pause_session(self, session_id: str, reason: str = "paused") -> bool:
        """Stop a live session's instance now if no call is in flight; the session
        stays resumable (its next call resumes it, at the function's active
        version, with its state and directory). True if it was paused."""
        check_session_id(session_id)
        sess = self._sessions.get(session_id)
        if sess is None or sess.instance is None or sess.busy or sess.ended:
            return False
        await self._pause(sess, reason)
        return True

    async def close_session(self, session_id: str, *, reason: str = "closed", principal: str | None = None) -> None:
        """End a session: its instance stops, its state and working directory are
        deleted. ``principal`` as for :meth:`invoke`."""
        check_session_id(session_id)
        if principal is not None:
            live = self._sessions.get(session_id)
            if live is not None:
                _check_principal(session_id, live.principal, principal)
            else:
                await self.flush()
                _check_principal(session_id, (await asyncio.to_thread(self.store.get_session, session_id))["principal"], principal)
        sess = self._sessions.pop(session_id, None)
        status = EXPIRED if reason == "max lifetime" else CLOSED
        previous = self._stored.get(session_id)
        self._stored[session_id] = status  # before any await: no call may reopen it
        self._touched.pop(session_id, None)  # its pending coalesced update must not outlive the close
        if sess is None:
            await self.flush()
            try:
                row = await asyncio.to_thread(self.store.get_session, session_id)
            except NotFound:
                if previous is None:
                    self._stored.pop(session_id, None)
                raise
            if row["status"] in ENDED:
                self._stored[session_id] = row["status"]
                return
            workdir, uid = row["workdir"], row["uid"]
        else:
            sess.ended = status
            inst, sess.instance = sess.instance, None  # a busy call may drop it while it stops
            if inst is not None:
                await inst.stop(reason)
                self._defer(self.store.update_instance, inst.id, status="stopped", stopped_at=time.time(), exit_reason=reason)
            workdir, uid = sess.workdir, sess.uid
        if workdir:  # a session that never got an instance has no row yet
            self._defer(self.store.update_session, session_id, status=status, closed_at=time.time(), close_reason=reason, instance_id=None, state={})
        if workdir:  # off the event loop: a session's directory may hold a lot
            await asyncio.to_thread(remove_tree, os.path.dirname(workdir))
        self.uids.release(uid)  # only once nothing of the session is left

    async def check_session(self, session_id: str, principal: str | None) -> None:
        """:class:`NotFound` if ``session_id`` is a session ``principal`` may
        not use (one opened by another principal); an unknown id passes (using
        it opens a session bound to ``principal``)."""
        if principal is None:
            return
        check_session_id(session_id)
        live = self._sessions.get(session_id)
        if live is not None:
            _check_principal(session_id, live.principal, principal)
        elif session_id in self._stored:
            with contextlib.suppress(NotFound):  # (closed before its row was written)
                row = await asyncio.to_thread(self.store.get_session, session_id)
                _check_principal(session_id, row["principal"], principal)

    async def describe_session(self, session_id: str, *, principal: str | None = None) -> dict[str, Any]:
        """A session's description; ``principal`` as for :meth:`invoke`."""
        check_session_id(session_id)
        await self.flush()
        row = await asyncio.to_thread(self.store.get_session, session_id)
        _check_principal(session_id, row["principal"], principal)
        return self._describe(row)

    async def sessions(self, function: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        await self.flush()
        rows = await asyncio.to_thread(self.store.list_sessions, function, status)
        return [self._describe(r) for r in rows]

    def _describe(self, row: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        sess = self._sessions.get(row["id"])
        out = dict(row)
        out["age_s"] = now - row["created_at"]
        out["idle_s"] = now - (sess.last_used if sess else row["last_used_at"])
        inst = sess.instance if sess else None
        out["instance"] = None
        if inst is not None and inst.alive:
            out["status"] = LIVE
            out["instance"] = {"id": inst.id, "pid": inst.pid, "path": inst.path, "isolation": inst.isolation, **inst.stats()}
        out["busy"] = bool(sess and sess.busy)
        return out

    async def coldstarts(self, function: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        await self.flush()
        return await asyncio.to_thread(self.store.list_coldstarts, function, limit)

    async def usage(
        self,
        function: str | None = None,
        session: str | None = None,
        since: float | None = None,
        until: float | None = None,
        step: float | None = None,
        by: str = "session",
    ) -> list[dict[str, Any]]:
        """The usage ledger, up to now (``by``: "session" or "function"): totals per function and session (and per
        ``step`` seconds, a multiple of 60, when given): ``cpu_s``, ``mem_gib_s``,
        ``gpu_s``, ``gpu_mem_gib_s``, ``active_s``, ``idle_s``."""
        if step is not None and (step < 60 or step % 60):
            raise InvalidArgument(f"step must be a multiple of 60 seconds, got {step:g}")
        if by not in ("session", "function"):
            raise InvalidArgument(f"by must be 'session' or 'function', got {by!r:.40}")
        if since is not None and until is not None and until < since:
            raise InvalidArgument(f"until ({until:g}) is before since ({since:g})")
        if self.meter.running:
            self.meter.sample()
            await self.meter.flush()
        rows = await asyncio.to_thread(self.store.usage, function, session, since, until, step, by)
        if self.prices is not None:
            for row in rows:
                row["cost"] = round(self.prices.cost(row), 10)  # per-second prices are micro-amounts: 6 places lost up to 3 %
                row["currency"] = self.prices.currency
        return rows

    async def scaling(self, function: str | None = None, since: float | None = None, limit: int = 200) -> dict[str, Any]:
        """Scaling on load (``scaling.py``): per function with a warm pool or a
        ceiling, its bounds, target, ready instances and load now
        (``functions``); and the scale events (``events``, oldest first, the
        newest ``limit``)."""
        if function is not None:
            self.function(function)  # NotFound for an unknown one
        if self.scaler.settle():
            await self.store.writer.flush()
        events = await asyncio.to_thread(self.store.list_scale_events, function, since, limit)
        now = {n: v for n, v in self.scaler.snapshot().items() if (function is None or n == function) and (v["max_instances"] or v["min_instances"])}
        return {"functions": now, "events": events}

    def gpus(self) -> dict[str, Any]:
        """The GPUs the backend places instances on: devices (memory, MIG
        instances, processes) and the slice each instance holds; or, with
        ``available`` false, why there are none ("no GPU found ...")."""
        allocator = getattr(self.backend, "gpus", None)
        if allocator is None:
            return {"available": False, "reason": f"no GPU found (the {self.backend.name} backend places no GPUs)", "devices": [], "slices": []}
        snap: dict[str, Any] = allocator.snapshot()
        return snap

    async def latency(self, window: int = LATENCY_WINDOW) -> list[dict[str, Any]]:
        """Per function, over its part of the last ``window`` invocations (all
        functions together): calls, errors, p50 and p95 of the duration in ms."""
        await self.flush()
        by: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        for function, ms, outcome in await asyncio.to_thread(self.store.recent_durations, window):
            by.setdefault(function, []).append(ms)
            errors[function] = errors.get(function, 0) + (outcome != "ok")
        out = []
        for function, durations in sorted(by.items()):
            durations.sort()
            out.append(
                {
                    "function": function,
                    "calls": len(durations),
                    "errors": errors[function],
                    "p50_ms": durations[max(0, math.ceil(0.50 * len(durations)) - 1)],
                    "p95_ms": durations[max(0, math.ceil(0.95 * len(durations)) - 1)],
                }
            )
        return out

    async def invocations(self, function: str | None = None, session_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        await self.flush()
        return await asyncio.to_thread(self.store.list_invocations, function, session_id, limit)

    # -- function-scoped keys ------------------------------------------------------

    async def create_key(self, function: str, note: str = "") -> dict[str, Any]:
        """A key that may invoke ``function`` only. The secret is shown once."""
        await asyncio.to_thread(self.store.get_function, function)  # NotFound for an unknown function
        key = await self.store.writer.write(self.store.create_key, function, note)
        return {"key": key, "id": key.split("_", 2)[1], "function": function, "note": note}

    async def keys(self, function: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.list_keys, function)

    async def revoke_key(self, key_id: str) -> None:
        await self.store.writer.write(self.store.revoke_key, key_id)

    async def key_function(self, key: str) -> str | None:
        """The function a valid key is scoped to (None for an unknown or revoked key)."""
        return await asyncio.to_thread(self.store.check_key, key)

    def live_instances(self) -> list[Instance]:
        return [s.instance for s in self._sessions.values() if s.instance is not None and s.instance.alive]

    # -- background --------------------------------------------------------------------

    async def _reaper(self) -> None:
        """Stop idle instances (sessions stay resumable); end sessions past max lifetime."""
        # ``_closed`` ends the loop even when a cancellation was swallowed on
        # the way (Python 3.11's asyncio.wait_for can lose one)
        while not self._closed:
            await asyncio.sleep(self.reap_interval)
            if self._closed:
                return
            try:
                await self.reap()
            except Exception:  # keep reaping whatever happened
                log.exception("reaper failed")

    async def reap(self) -> None:
        now = time.time()
        for sess in list(self._sessions.values()):
            if sess.expires_at <= now:
                await self.close_session(sess.id, reason="max lifetime")
            elif sess.instance is not None and not sess.busy and now - sess.last_used >= sess.idle_ttl:
                await self._pause(sess, "idle")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends
        (the event loop holds only weak ones: an unkept task can vanish)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _defer(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """A record nobody waits for (instances, cold starts, status changes),
        committed in order with the next batch of the store's writer."""
        self.store.writer.defer(fn, *args, **kw)

    async def _flusher(self) -> None:
        """Hands the coalesced bookkeeping (session touches, invocation logs)
        to the store's writer every :data:`BOOKKEEPING_INTERVAL_S` while calls
        come: many calls, one group of rows."""
        while not self._closed:
            await self._flush_event.wait()
            if not self._closed:
                await asyncio.sleep(BOOKKEEPING_INTERVAL_S)
            self._hand_over()

    def _hand_over(self) -> None:
        self._flush_event.clear()
        if self._touched:
            touches = [(sess.id, sess.last_used, sess.calls) for sess in self._touched.values()]
            self.store.writer.defer(self.store.touch_sessions, touches)
        self._touched.clear()
        invocations, self._invocations = self._invocations, []
        if invocations:
            self.store.writer.defer(self.store.log_invocations, invocations)

    async def flush(self) -> None:
        """Commit every store write queued so far (session state, records)."""
        self._hand_over()
        await self.store.writer.flush()


class _Opener:
    def __init__(self, cls: type[Runtime], state_dir: str | os.PathLike[str], kw: dict[str, Any]) -> None:
        self.cls, self.state_dir, self.kw = cls, state_dir, kw
        self.rt: Runtime | None = None

    async def _open(self) -> Runtime:
        rt = self.cls(self.state_dir, **self.kw)
        try:
            await rt.start()
        except BaseException:
            await rt.close()
            raise
        return rt

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> Runtime:
        self.rt = await self._open()
        return self.rt

    async def __aexit__(self, *exc: object) -> None:
        if self.rt is not None:
            await self.rt.close()


def _make_backend(name: str, state_dir: str, *, use_templates: bool, isolate: bool) -> Backend:
    from ..backends import backend_class

    return backend_class(name)(state_dir, use_templates=use_templates, isolate=isolate)  # type: ignore[call-arg]


def _payload_size(event: Any, limit: int) -> int:
    try:
        size = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise BadPayload(f"the event is not JSON-serialisable: {exc}") from None
    if size > limit:
        raise PayloadTooLarge(f"the event is {size} bytes, over the function's limit of {limit} bytes")
    return size


def _check_principal(session_id: str, holder: str | None, principal: str | None) -> None:
    """A session is usable by the principal that opened it and by the owner
    (``principal`` None); to anyone else it does not exist."""
    if principal is not None and holder != principal:
        raise NotFound(f"session {session_id!r} not found", session_id=session_id)


def _wrong_function(session_id: str, owner: str, asked: str) -> FunctionAIError:
    from ..errors import Conflict

    return Conflict(f"session {session_id!r} belongs to function {owner!r}, not {asked!r}", session_id=session_id)


def _spec_with_code(row: dict[str, Any]) -> FunctionSpec:
    """A stored file-source spec whose file may be gone: run the stored source text."""
    d = dict(row["spec"])
    d["source"] = {"kind": "code", "code": row["source"]}
    return FunctionSpec.from_dict(d)


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
