"""The Backend protocol: start / bind / invoke / stop / stats.

A backend turns a deployed function version into *instances*: sandboxes that
run the worker loop of :mod:`jupyter_functionai.sandbox.worker`.  The runtime
(session routing, pools, the store) is the same for every backend; every
backend passes ``tests/test_backend_contract.py`` unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..spec import FunctionSpec

#: ``<state dir>/envs``: read-only environments every sandbox can see (like the
#: Python installation), e.g. the virtual environments of hosted MCP servers.
SHARED_ENVS_DIR = "envs"

ProgressCallback = Callable[[float, str], Any]
ChunkCallback = Callable[[Any], Awaitable[None]]
CheckpointCallback = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class FunctionVersion:
    """One deployed version of a function, as a backend needs it."""

    name: str
    version: int
    spec: FunctionSpec
    code_path: str | None  # the module file for code/file sources
    code_dir: str  # directory sandboxes may read the code from


@dataclass(frozen=True)
class Binding:
    """What ties an instance to one session."""

    session_id: str | None
    uid: int | None
    workdir: str
    state_json: str = "{}"
    env: dict[str, str] = field(default_factory=dict)
    warmup: bool = False  # run the spec's warmup hook after binding (warm-pool priming)


@dataclass
class CallOutcome:
    value: Any = None
    streamed: bool = False
    error: dict[str, Any] | None = None
    logs: str = ""
    logs_dropped: int = 0
    duration_ms: float = 0.0
    state_json: str | None = None  # set when the session state changed


@dataclass(frozen=True)
class UsageSample:
    """One live instance, now: its CPU time since it started (µs; None when
    unknown), memory in use, the GPU it holds (cards: a slice counts as its
    share of the card; memory in MiB), and whether a call is in flight."""

    instance_id: str
    function: str
    session_id: str | None
    cpu_usec: int | None
    mem_bytes: int
    gpu_cards: float = 0.0
    gpu_mem_mib: int = 0
    busy: bool = False


class Instance(abc.ABC):
    """A started sandbox. Created ready and unbound; bound once to one session."""

    id: str
    fv: FunctionVersion
    backend: str
    path: str  # "template-fork" | "fresh" (the pool relabels its hits "warm-pool")
    pid: int | None
    isolation: dict[str, Any]
    spawn_ms: float
    init_ms: float
    bound_session: str | None
    binding: Binding | None = None

    @abc.abstractmethod
    async def bind(self, binding: Binding) -> None:
        """Attach to a session (uid, working directory, state); raises on failure."""

    @abc.abstractmethod
    async def call(
        self,
        call_id: str,
        event: Any,
        *,
        timeout: float,
        on_progress: ProgressCallback | None = None,
        on_chunk: ChunkCallback | None = None,
        attach: tuple[str | None, str] | None = None,
        task: dict[str, Any] | None = None,
        on_checkpoint: CheckpointCallback | None = None,
        trace: dict[str, float] | None = None,
    ) -> CallOutcome:
        """Run one call. ``trace`` (a profiled call) gets the
        ``time.perf_counter`` of each step: ``encoded``, ``written``, the
        instance's own points as ``w_<point>``
        (:data:`~jupyter_functionai.sandbox.protocol.TRACE_POINTS`) and
        ``decoded`` (its answer read and validated).
        ``attach=(session_id, state_json)`` hands a pre-bound
        (warm-pool) instance to its session as part of the same message.
        ``task`` ({"id", "attempt", "resume_from_json"}) makes it an attempt of
        a durable task; each ``ctx.checkpoint`` is awaited through
        ``on_checkpoint`` before anything later from the call is read. Raises FunctionTimeout / OutOfMemory / InstanceCrashed
        when the instance could not answer; user errors come back in
        ``CallOutcome.error``."""

    @abc.abstractmethod
    async def attach(self, session_id: str | None, state_json: str) -> None:
        """Hand a pre-bound (warm-pool) instance to its session without a call."""

    @abc.abstractmethod
    async def stop(self, reason: str = "stopped") -> None:
        """Stop the instance and everything it started; idempotent."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool: ...

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Memory (rss/uss bytes where known), pid, and what the backend knows."""


class Backend(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    async def start(self, fv: FunctionVersion, binding: Binding | None = None) -> Instance:
        """Start a ready instance of ``fv``: unbound, or already bound to
        ``binding`` (one step, when the session is known up front)."""

    @abc.abstractmethod
    async def prepare(self, fv: FunctionVersion) -> None:
        """Make starting instances of ``fv`` fast (e.g. start its template).
        Raises UserError when the function's module cannot be loaded."""

    @abc.abstractmethod
    async def retire(self, fv: FunctionVersion) -> None:
        """``fv`` will start no more instances (its template may go)."""

    def usage_samples(self) -> list[UsageSample]:
        """What each live instance has used so far (the meter's input; a
        backend that cannot tell returns [])."""
        return []

    def check_placement(self, spec: FunctionSpec) -> None:
        """Raise InvalidSpec when ``spec`` asks for what this backend can
        never give (a GPU slice larger than any card): checked at deploy.
        A backend that places no GPUs accepts every spec."""
        return None

    @abc.abstractmethod
    def capabilities(self, spec: FunctionSpec) -> dict[str, str]:
        """Isolation layers this backend can give ``spec``: layer -> '' when
        available, else the reason it is not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every instance and helper process."""

    def on_instance_exit(self, callback: Callable[[Instance, str], None]) -> None:
        """Register a callback for instances that end on their own (crash, OOM kill)."""
        self._exit_callback = callback

    def _notify_exit(self, inst: Instance, reason: str) -> None:
        cb = getattr(self, "_exit_callback", None)
        if cb is not None:
            cb(inst, reason)
