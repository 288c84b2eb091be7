"""The store: functions (versioned), sessions, instances, cold starts, invocations.

SQLAlchemy 2 *Core* (tables in one ``MetaData``, no ORM), synchronous, safe
to share between threads (one ``Engine``; every method is one short
transaction). Any SQLAlchemy URL works; the default is a SQLite file in WAL
mode. Timestamps are float epoch seconds; JSON columns are ``TEXT`` holding
``json.dumps`` output so every backend stores them the same way. Rows come
back as plain ``dict``s with JSON fields decoded.

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from .errors import Conflict, InvalidArgument, NotFound

__all__ = ["SESSION_FINAL_STATUSES", "TABLES", "TASK_FINAL_STATES", "TASK_STATES", "Store", "metadata"]

#: Session statuses whose uid may be handed out again.
SESSION_FINAL_STATUSES = ("closed", "expired")

metadata = MetaData()

functions = Table(
    "functions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("active_version", Integer, nullable=False),
    Column("latest_version", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

function_versions = Table(
    "function_versions",
    metadata,
    Column(
        "name",
        String(64),
        ForeignKey("functions.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("spec", Text, nullable=False),
    Column("source", Text, nullable=True),
    Column("digest", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)

# No foreign keys from the tables below to ``functions``: their rows may
# outlive a deleted function (history, cold-start charts, audit).
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("function", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("uid", Integer, nullable=True),
    Column("workdir", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("state_bytes", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("calls", Integer, nullable=False),
    Column("instance_id", String(128), nullable=True),
    Column("closed_at", Float, nullable=True),
    Column("close_reason", Text, nullable=True),
    Index("ix_sessions_function", "function"),
    Index("ix_sessions_status", "status"),
    Index("ix_sessions_created_at", "created_at"),
)

counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("function", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("backend", String(32), nullable=False),
    Column("path", String(32), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("isolation", Text, nullable=False),
    Column("session_id", String(128), nullable=True),
    Column("status", String(32), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
    Column("exit_reason", Text, nullable=True),
    Index("ix_instances_function", "function"),
    Index("ix_instances_status", "status"),
    Index("ix_instances_session_id", "session_id"),
    Index("ix_instances_started_at", "started_at"),
)

coldstarts = Table(
    "coldstarts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance_id", String(128), nullable=False),
    Column("function", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("path", String(32), nullable=False),
    Column("spawn_ms", Float, nullable=False),
    Column("init_ms", Float, nullable=False),
    Column("first_call_ms", Float, nullable=True),
    Column("session_id", String(128), nullable=True),
    Column("at", Float, nullable=False),
    Index("ix_coldstarts_instance_id", "instance_id"),
    Index("ix_coldstarts_function", "function"),
    Index("ix_coldstarts_at", "at"),
)

invocations = Table(
    "invocations",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("function", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("session_id", String(128), nullable=True),
    Column("instance_id", String(128), nullable=True),
    Column("started_at", Float, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("error_kind", String(64), nullable=True),
    Column("bytes_in", Integer, nullable=False),
    Column("bytes_out", Integer, nullable=False),
    Column("logs", Text, nullable=False),
    Index("ix_invocations_function", "function"),
    Index("ix_invocations_session_id", "session_id"),
    Index("ix_invocations_started_at", "started_at"),
)

# Function-scoped API keys: ``fai_<id>_<secret>``; only sha256(secret) is kept.
function_keys = Table(
    "function_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("function", String(64), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Index("ix_function_keys_function", "function"),
)

# Durable tasks (see runtime/tasks.py): one row per task, one per attempt.
tasks = Table(
    "tasks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("seq", Integer, nullable=False),  # submit order: FIFO per function
    Column("function", String(64), nullable=False),
    Column("session_id", String(128), nullable=True),
    Column("event", Text, nullable=False),  # JSON
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("options", Text, nullable=False),  # JSON: timeout_s, retry, destinations
    Column("created_at", Float, nullable=False),
    Column("run_after", Float, nullable=False),  # not before (retry backoff)
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("lease_owner", String(40), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("progress", Float, nullable=True),
    Column("progress_message", Text, nullable=True),
    Column("checkpoint", Text, nullable=True),  # JSON text as the handler sent it
    Column("result", Text, nullable=True),  # JSON
    Column("error", Text, nullable=True),  # JSON
    Index("ix_tasks_function_state", "function", "state"),
    Index("ix_tasks_state", "state"),
    Index("ix_tasks_created_at", "created_at"),
)

task_attempts = Table(
    "task_attempts",
    metadata,
    Column("task_id", String(40), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("error", Text, nullable=True),
    Column("instance_id", String(128), nullable=True),
)

# MCP tool service (see mcp/manager.py): hosted servers, their tools, MCP sessions.
mcp_servers = Table(
    "mcp_servers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # "functions" | "stdio"
    Column("function", String(64), nullable=False),  # the backing sandbox function
    Column("config", Text, nullable=False),  # JSON: command, env, idle TTL, spec fields
    Column("secrets", Text, nullable=False),  # JSON {name: value}: never listed
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

mcp_tools = Table(
    "mcp_tools",
    metadata,
    Column("server", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("description", Text, nullable=False),
    Column("input_schema", Text, nullable=False),  # JSON
    Column("output_schema", Text, nullable=True),  # JSON
    Column("wrap_output", Integer, nullable=False),
    Column("code", Text, nullable=False),
    Column("handler", String(128), nullable=False),
    Column("ctx_param", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

mcp_sessions = Table(
    "mcp_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # the Mcp-Session-Id
    Column("server", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("runtime_session", String(128), nullable=False),
    Column("protocol_version", String(32), nullable=False),
    Column("client_info", Text, nullable=False),  # JSON
    Column("principal", String(128), nullable=False),  # who opened it: only they may use it
    Column("status", String(16), nullable=False),  # active | closed | expired
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    Column("close_reason", Text, nullable=True),
    Index("ix_mcp_sessions_server", "server"),
    Index("ix_mcp_sessions_status", "status"),
)

_MCP_JSON = {"config", "secrets", "input_schema", "output_schema", "client_info"}

# Notebook runs and their schedules (see runs/): a run is a task of the built-in
# notebook-run function; this row says where it came from. The unique
# (schedule_id, scheduled_for) pair is what makes a schedule fire at most once
# per time, whatever crashes and restarts in between.
runs = Table(
    "runs",
    metadata,
    Column("id", String(40), primary_key=True),  # the task's id
    Column("name", Text, nullable=True),
    Column("notebook", Text, nullable=False),
    Column("schedule_id", String(40), nullable=True),
    Column("scheduled_for", Float, nullable=True),  # the cron time it fired for
    Column("tags", Text, nullable=False),  # JSON list
    Column("idempotency_token", String(128), nullable=True, unique=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("schedule_id", "scheduled_for", name="uq_runs_schedule_time"),
    Index("ix_runs_schedule", "schedule_id"),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", Text, nullable=False),
    Column("notebook", Text, nullable=False),
    Column("cron", Text, nullable=True),  # None: run on demand only (a job definition)
    Column("timezone", String(64), nullable=False),
    Column("parameters", Text, nullable=False),  # JSON
    Column("enabled", Integer, nullable=False),
    Column("overlap", String(8), nullable=False),  # skip | queue | allow
    Column("catch_up", String(8), nullable=False),  # none | latest
    Column("output_formats", Text, nullable=False),  # JSON list
    Column("kernel", String(128), nullable=True),
    Column("tags", Text, nullable=False),  # JSON list
    Column("timeout_s", Float, nullable=True),
    Column("retries", Integer, nullable=True),
    Column("idempotency_token", String(128), nullable=True, unique=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("anchor_at", Float, nullable=False),  # fire for cron times after this (creation, resume, new cron)
    Column("last_fire_at", Float, nullable=True),  # the last cron time dealt with (fired, queued, skipped or missed)
    Column("pending_at", Float, nullable=True),  # overlap=queue: a cron time waiting for the running one
    Column("last_result", String(16), nullable=True),  # fired | queued | skipped | missed
    Column("last_run_id", String(40), nullable=True),
    Column("last_error", Text, nullable=True),  # why the last time could not start a run
    Column("fired", Integer, nullable=False),
    Column("skipped", Integer, nullable=False),
    Column("missed", Integer, nullable=False),
)

_SCHEDULE_JSON = ("parameters", "output_formats", "tags")
_SCHEDULE_UPDATABLE = frozenset(
    {"name", "notebook", "cron", "timezone", "parameters", "enabled", "overlap", "catch_up", "output_formats", "kernel", "tags",
     "timeout_s", "retries", "updated_at", "anchor_at", "last_fire_at", "pending_at", "last_result", "last_run_id", "last_error",
     "fired", "skipped", "missed"}
)
_MCP_SESSION_UPDATABLE = frozenset({"status", "last_used_at", "closed_at", "close_reason", "protocol_version"})

TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
TASK_FINAL_STATES = ("succeeded", "failed", "cancelled", "timed_out")
_TASK_JSON = ("event", "options", "result", "error")

_SESSION_UPDATABLE = frozenset(
    {
        "status",
        "state",
        "last_used_at",
        "calls",
        "instance_id",
        "closed_at",
        "close_reason",
        "version",
    }
)
_INSTANCE_UPDATABLE = frozenset(
    {"status", "pid", "session_id", "stopped_at", "exit_reason", "isolation"}
)
_INVOCATION_REQUIRED = frozenset(
    {
        "id",
        "function",
        "version",
        "session_id",
        "instance_id",
        "started_at",
        "duration_ms",
        "outcome",
        "error_kind",
        "bytes_in",
        "bytes_out",
    }
)
_INVOCATION_KEYS = _INVOCATION_REQUIRED | {"logs"}
_UID_COUNTER = "session_uid"
_DEPLOY_ATTEMPTS = 5


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} is not JSON-serialisable: {exc}") from exc


def _digest(source: str | None, spec_json: str) -> str:
    h = hashlib.sha256()
    h.update((source or "").encode("utf-8"))
    h.update(b"\0")
    h.update(spec_json.encode("utf-8"))
    return h.hexdigest()


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _is_sqlite_memory(url: URL) -> bool:
    return _is_sqlite(url) and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit
    # transactions would otherwise defer it and break BEGIN IMMEDIATE).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # an fsync per commit: task transitions are durable
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front so that a read-then-write
    # transaction waits (busy_timeout) instead of failing with SQLITE_BUSY.
    if conn.get_execution_options().get("functionai_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


class Store:
    """Persistent state of the runtime; see the module docstring."""

    def __init__(self, url: str | URL, *, clock: Callable[[], float] = time.time) -> None:
        parsed = make_url(url)
        self.url: str = parsed.render_as_string(hide_password=False)
        self._clock = clock
        self._local = threading.local()
        self._sqlite = _is_sqlite(parsed)
        self._lock: contextlib.AbstractContextManager[Any]
        kwargs: dict[str, Any] = {}
        if self._sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 5.0}
            if _is_sqlite_memory(parsed):
                # One shared connection; transactions on it must not interleave.
                kwargs["poolclass"] = StaticPool
                self._lock = threading.RLock()
            else:
                self._lock = contextlib.nullcontext()
        else:
            self._lock = contextlib.nullcontext()
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self._sqlite:
            event.listen(self.engine, "connect", _on_sqlite_connect)
            event.listen(self.engine, "begin", _on_sqlite_begin)
        try:
            metadata.create_all(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kw: Any) -> Store:
        """A store in the SQLite file at ``path`` (parent directories are created)."""
        target = Path(path).expanduser().absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        return cls(URL.create("sqlite", database=str(target)), **kw)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run the store calls made in this thread inside one transaction (one
        commit, one fsync): the runtime's group commit."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._tx() as conn:
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[Connection]:
        batch = getattr(self._local, "conn", None)
        if batch is not None:
            yield batch
            return
        with self._lock, self.engine.connect() as conn:
            if write:
                conn.execution_options(functionai_write=True)
            with conn.begin():
                yield conn

    def _now(self) -> float:
        return float(self._clock())

    # ------------------------------------------------------------------ functions
    def deploy(self, name: str, spec: Mapping[str, Any], source: str | None) -> dict[str, Any]:
        """Store a new version of ``name`` (previous max + 1, from 1) and activate it."""
        spec_json = _dumps(dict(spec), "spec")
        digest = _digest(source, spec_json)
        for attempt in range(_DEPLOY_ATTEMPTS):
            try:
                return self._deploy_once(name, spec_json, source, digest)
            except IntegrityError:
                # Another writer deployed the same name at the same moment
                # (possible on backends without BEGIN IMMEDIATE); try again.
                if attempt == _DEPLOY_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _deploy_once(
        self, name: str, spec_json: str, source: str | None, digest: str
    ) -> dict[str, Any]:
        now = self._now()
        with self._tx() as conn:
            row = conn.execute(
                select(functions).where(functions.c.name == name).with_for_update()
            ).first()
            if row is None:
                version = 1
                conn.execute(
                    functions.insert().values(
                        name=name,
                        active_version=version,
                        latest_version=version,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                version = int(row.latest_version) + 1
                conn.execute(
                    functions.update()
                    .where(functions.c.name == name)
                    .values(active_version=version, latest_version=version, updated_at=now)
                )
            conn.execute(
                function_versions.insert().values(
                    name=name,
                    version=version,
                    spec=spec_json,
                    source=source,
                    digest=digest,
                    created_at=now,
                )
            )
        return {
            "name": name,
            "version": version,
            "spec": json.loads(spec_json),
            "source": source,
            "digest": digest,
            "created_at": now,
            "active": True,
        }

    @staticmethod
    def _version_row(row: Any, active_version: int) -> dict[str, Any]:
        return {
            "name": row.name,
            "version": int(row.version),
            "spec": json.loads(row.spec),
            "source": row.source,
            "digest": row.digest,
            "created_at": row.created_at,
            "active": int(row.version) == active_version,
        }

    def _function_head(self, conn: Connection, name: str) -> Any:
        row = conn.execute(select(functions).where(functions.c.name == name)).first()
        if row is None:
            raise NotFound(f"function {name!r} not found", name=name)
        return row

    def get_function(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A version row of ``name``; ``version=None`` means the active one."""
        with self._tx(write=False) as conn:
            head = self._function_head(conn, name)
            wanted = int(head.active_version) if version is None else version
            row = conn.execute(
                select(function_versions).where(
                    function_versions.c.name == name, function_versions.c.version == wanted
                )
            ).first()
        if row is None:
            raise NotFound(f"function {name!r} has no version {wanted}", name=name)
        return self._version_row(row, int(head.active_version))

    def list_functions(self) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            rows = conn.execute(select(functions).order_by(functions.c.name)).all()
        return [
            {
                "name": r.name,
                "active_version": int(r.active_version),
                "latest_version": int(r.latest_version),
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in rows
        ]

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            head = self._function_head(conn, name)
            rows = conn.execute(
                select(function_versions)
                .where(function_versions.c.name == name)
                .order_by(function_versions.c.version)
            ).all()
        return [self._version_row(r, int(head.active_version)) for r in rows]

    def rollback(self, name: str, version: int) -> dict[str, Any]:
        """Make an existing ``version`` of ``name`` the active one."""
        now = self._now()
        with self._tx() as conn:
            self._function_head(conn, name)
            row = conn.execute(
                select(function_versions).where(
                    function_versions.c.name == name, function_versions.c.version == version
                )
            ).first()
            if row is None:
                raise NotFound(f"function {name!r} has no version {version}", name=name)
            conn.execute(
                functions.update()
                .where(functions.c.name == name)
                .values(active_version=version, updated_at=now)
            )
        return self._version_row(row, version)

    def delete_function(self, name: str) -> None:
        """Delete ``name`` and all its versions (sessions, instances, logs stay)."""
        with self._tx() as conn:
            self._function_head(conn, name)
            conn.execute(function_versions.delete().where(function_versions.c.name == name))
            conn.execute(functions.delete().where(functions.c.name == name))

    # ------------------------------------------------------------------ sessions
    @staticmethod
    def _session_row(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        out["state"] = json.loads(out["state"])
        return out

    def create_session(
        self,
        id: str,
        function: str,
        version: int,
        uid: int | None,
        workdir: str,
        expires_at: float,
    ) -> dict[str, Any]:
        now = self._now()
        row = {
            "id": id,
            "function": function,
            "version": version,
            "status": "new",
            "uid": uid,
            "workdir": workdir,
            "state": {},
            "state_bytes": 0,
            "created_at": now,
            "last_used_at": now,
            "expires_at": expires_at,
            "calls": 0,
            "instance_id": None,
            "closed_at": None,
            "close_reason": None,
        }
        try:
            with self._tx() as conn:
                conn.execute(sessions.insert().values(**{**row, "state": "{}"}))
        except IntegrityError as exc:
            raise Conflict(f"session {id!r} already exists", session_id=id) from exc
        return row

    def get_session(self, id: str) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(select(sessions).where(sessions.c.id == id)).first()
        if row is None:
            raise NotFound(f"session {id!r} not found", session_id=id)
        return self._session_row(row)

    def update_session(self, id: str, **fields: Any) -> None:
        """Update some of: status, state, last_used_at, calls, instance_id,
        closed_at, close_reason, version. ``state`` also sets ``state_bytes``."""
        unknown = set(fields) - _SESSION_UPDATABLE
        if unknown:
            raise ValueError(f"cannot update session field(s): {', '.join(sorted(unknown))}")
        values = dict(fields)
        if "state" in values:
            text = _dumps(values["state"], "session state")
            values["state"] = text
            values["state_bytes"] = len(text.encode("utf-8"))
        self._update(sessions, id, values, "session")

    def _update(self, table: Table, id: str, values: dict[str, Any], what: str) -> None:
        with self._tx() as conn:
            if values:
                params = {**{f"v_{k}": v for k, v in values.items()}, "w_id": id}
                found = conn.execute(_update_sql(table.name, tuple(values), ("id = :w_id",)), params).rowcount > 0
            else:
                found = conn.execute(select(table.c.id).where(table.c.id == id)).first() is not None
        if not found:
            raise NotFound(f"{what} {id!r} not found", **{f"{what}_id": id})

    def list_sessions(
        self, function: str | None = None, status: str | Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Sessions, newest first, optionally of one function and status(es)."""
        query = select(sessions)
        if function is not None:
            query = query.where(sessions.c.function == function)
        if status is not None:
            if isinstance(status, str):
                query = query.where(sessions.c.status == status)
            else:
                query = query.where(sessions.c.status.in_(list(status)))
        query = query.order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
        return [self._session_row(r) for r in rows]

    def allocate_uid(self, base: int, span: int) -> int:
        """A uid in ``[base, base + span)`` that no live session uses.

        Allocation cycles through the range with a counter kept in the store,
        so a restarted runtime does not hand out a recently used uid again.
        Raises :class:`Conflict` when every uid in the range is in use.
        """
        if isinstance(base, bool) or not isinstance(base, int) or base < 0:
            raise InvalidArgument(f"uid base must be a non-negative integer, not {base!r}")
        if isinstance(span, bool) or not isinstance(span, int) or span < 1:
            raise InvalidArgument(f"uid span must be a positive integer, not {span!r}")
        with self._tx() as conn:
            used = {
                int(u)
                for (u,) in conn.execute(
                    select(sessions.c.uid).where(
                        sessions.c.uid.is_not(None),
                        sessions.c.uid >= base,
                        sessions.c.uid < base + span,
                        sessions.c.status.not_in(SESSION_FINAL_STATUSES),
                    )
                )
            }
            row = conn.execute(
                select(counters.c.value).where(counters.c.name == _UID_COUNTER)
            ).first()
            start = int(row.value) if row is not None else 0
            for step in range(span):
                offset = (start + step) % span
                if base + offset in used:
                    continue
                following = (offset + 1) % span
                if row is None:
                    conn.execute(counters.insert().values(name=_UID_COUNTER, value=following))
                else:
                    conn.execute(
                        counters.update()
                        .where(counters.c.name == _UID_COUNTER)
                        .values(value=following)
                    )
                return base + offset
        raise Conflict("no free session uid", base=base, span=span)

    # ------------------------------------------------------------------ instances
    @staticmethod
    def _instance_row(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        out["isolation"] = json.loads(out["isolation"])
        return out

    def add_instance(
        self,
        id: str,
        function: str,
        version: int,
        backend: str,
        path: str,
        pid: int | None,
        isolation: Mapping[str, Any],
        session_id: str | None,
        started_at: float,
    ) -> None:
        values = {
            "id": id,
            "function": function,
            "version": version,
            "backend": backend,
            "path": path,
            "pid": pid,
            "isolation": _dumps(dict(isolation), "isolation"),
            "session_id": session_id,
            "status": "running",
            "started_at": started_at,
            "stopped_at": None,
            "exit_reason": None,
        }
        try:
            with self._tx() as conn:
                conn.execute(instances.insert().values(**values))
        except IntegrityError as exc:
            raise Conflict(f"instance {id!r} already exists", instance_id=id) from exc

    def update_instance(self, id: str, **fields: Any) -> None:
        """Update some of: status, pid, session_id, stopped_at, exit_reason, isolation."""
        unknown = set(fields) - _INSTANCE_UPDATABLE
        if unknown:
            raise ValueError(f"cannot update instance field(s): {', '.join(sorted(unknown))}")
        values = dict(fields)
        if "isolation" in values:
            values["isolation"] = _dumps(dict(values["isolation"]), "isolation")
        self._update(instances, id, values, "instance")

    def get_instance(self, id: str) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(select(instances).where(instances.c.id == id)).first()
        if row is None:
            raise NotFound(f"instance {id!r} not found", instance_id=id)
        return self._instance_row(row)

    def list_instances(
        self, function: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Instances, newest (by ``started_at``) first."""
        query = select(instances)
        if function is not None:
            query = query.where(instances.c.function == function)
        if status is not None:
            query = query.where(instances.c.status == status)
        query = query.order_by(instances.c.started_at.desc(), instances.c.id.desc())
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
        return [self._instance_row(r) for r in rows]

    # ------------------------------------------------------------------ cold starts
    def add_coldstart(
        self,
        instance_id: str,
        function: str,
        version: int,
        path: str,
        spawn_ms: float,
        init_ms: float,
        first_call_ms: float | None = None,
        session_id: str | None = None,
        at: float | None = None,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                coldstarts.insert().values(
                    instance_id=instance_id,
                    function=function,
                    version=version,
                    path=path,
                    spawn_ms=spawn_ms,
                    init_ms=init_ms,
                    first_call_ms=first_call_ms,
                    session_id=session_id,
                    at=self._now() if at is None else at,
                )
            )

    def set_first_call(
        self, instance_id: str, first_call_ms: float, session_id: str | None = None
    ) -> None:
        """Record the first call's latency on the cold start of ``instance_id``."""
        values: dict[str, Any] = {"first_call_ms": first_call_ms}
        if session_id is not None:
            values["session_id"] = session_id
        with self._tx() as conn:
            result = conn.execute(
                coldstarts.update().where(coldstarts.c.instance_id == instance_id).values(**values)
            )
        if result.rowcount == 0:
            raise NotFound(
                f"no cold start recorded for instance {instance_id!r}", instance_id=instance_id
            )

    def list_coldstarts(
        self, function: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Cold starts, newest first."""
        query = select(
            coldstarts.c.instance_id,
            coldstarts.c.function,
            coldstarts.c.version,
            coldstarts.c.path,
            coldstarts.c.spawn_ms,
            coldstarts.c.init_ms,
            coldstarts.c.first_call_ms,
            coldstarts.c.session_id,
            coldstarts.c.at,
        )
        if function is not None:
            query = query.where(coldstarts.c.function == function)
        query = query.order_by(coldstarts.c.at.desc(), coldstarts.c.id.desc()).limit(limit)
        with self._tx(write=False) as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # ------------------------------------------------------------------ invocations
    def log_invocation(
        self,
        id: str,
        function: str,
        version: int,
        session_id: str | None,
        instance_id: str | None,
        started_at: float,
        duration_ms: float,
        outcome: str,
        error_kind: str | None,
        bytes_in: int,
        bytes_out: int,
        logs: str = "",
    ) -> None:
        self.log_invocations(
            [
                {
                    "id": id,
                    "function": function,
                    "version": version,
                    "session_id": session_id,
                    "instance_id": instance_id,
                    "started_at": started_at,
                    "duration_ms": duration_ms,
                    "outcome": outcome,
                    "error_kind": error_kind,
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "logs": logs,
                }
            ]
        )

    def log_invocations(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert many invocation rows in one transaction (``executemany``)."""
        batch: list[dict[str, Any]] = []
        for row in rows:
            keys = set(row)
            missing = _INVOCATION_REQUIRED - keys
            extra = keys - _INVOCATION_KEYS
            if missing:
                raise ValueError(f"invocation row lacks: {', '.join(sorted(missing))}")
            if extra:
                raise ValueError(f"unknown invocation field(s): {', '.join(sorted(extra))}")
            batch.append({"logs": "", **row})
        if not batch:
            return
        try:
            with self._tx() as conn:
                conn.execute(invocations.insert(), batch)
        except IntegrityError as exc:
            raise Conflict("invocation id already logged") from exc

    def list_invocations(
        self, function: str | None = None, session_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Invocations, newest (by ``started_at``) first."""
        query = select(invocations)
        if function is not None:
            query = query.where(invocations.c.function == function)
        if session_id is not None:
            query = query.where(invocations.c.session_id == session_id)
        query = query.order_by(invocations.c.started_at.desc(), invocations.c.id.desc()).limit(
            limit
        )
        with self._tx(write=False) as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # ------------------------------------------------------------------ keys
    def create_key(self, function: str, note: str = "") -> str:
        """A new key for ``function``; the only time its secret is visible."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(24)
        with self._tx() as conn:
            conn.execute(
                function_keys.insert().values(
                    id=key_id,
                    function=function,
                    secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
                    note=note,
                    created_at=self._now(),
                    revoked_at=None,
                )
            )
        return f"fai_{key_id}_{secret}"

    def list_keys(self, function: str | None = None) -> list[dict[str, Any]]:
        """Keys without their secrets, newest first."""
        query = select(function_keys.c.id, function_keys.c.function, function_keys.c.note, function_keys.c.created_at, function_keys.c.revoked_at)
        if function is not None:
            query = query.where(function_keys.c.function == function)
        with self._tx(write=False) as conn:
            rows = conn.execute(query.order_by(function_keys.c.created_at.desc(), function_keys.c.id.desc())).all()
        return [dict(r._mapping) for r in rows]

    def revoke_key(self, key_id: str) -> None:
        with self._tx() as conn:
            found = conn.execute(
                function_keys.update().where(function_keys.c.id == key_id, function_keys.c.revoked_at.is_(None)).values(revoked_at=self._now())
            ).rowcount
        if not found:
            raise NotFound(f"no active key {key_id!r}", key_id=key_id)

    def check_key(self, key: str) -> str | None:
        """The function a valid, unrevoked key is for; None otherwise."""
        parts = key.split("_", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != "fai" or not parts[1] or not parts[2]:
            return None
        with self._tx(write=False) as conn:
            row = conn.execute(select(function_keys).where(function_keys.c.id == parts[1])).first()
        if row is None or row.revoked_at is not None:
            return None
        digest = hashlib.sha256(parts[2].encode()).hexdigest()
        return str(row.function) if hmac.compare_digest(digest, row.secret_sha256) else None


    # ------------------------------------------------------------------ tasks
    def write_tasks(self, ops: Iterable[tuple[str, Mapping[str, Any]]]) -> list[bool]:
        """Apply task writes in one transaction: ``("insert", row)``,
        ``("update", {"id", ...fields})``, ``("attempt", row)`` (insert or
        update of an attempt row). An update with ``_expect_owner`` applies
        only while the task is still ``running`` under that lease owner
        (so an outcome is recorded once). The runtime batches its transitions
        here (group commit); each caller waits for the commit. Returns, per
        op, whether it applied."""
        ops = list(ops)
        applied: list[bool] = []
        with self._tx() as conn:
            inserts = [dict(row) for kind, row in ops if kind == "insert"]
            if inserts:
                conn.execute(tasks.insert(), inserts)
            new_attempts = [dict(row) for kind, row in ops if kind == "attempt_new"]
            if new_attempts:
                conn.execute(task_attempts.insert(), new_attempts)
            for kind, row in ops:
                ok = True
                if kind == "update":
                    values = {k: v for k, v in row.items() if k not in ("id", "_expect_owner", "_expect_state")}
                    params = {**{f"v_{k}": v for k, v in values.items()}, "w_id": row["id"]}
                    where = ["id = :w_id"]
                    if row.get("_expect_state"):
                        where.append("state = :w_state")
                        params["w_state"] = row["_expect_state"]
                    if row.get("_expect_owner"):
                        where.append("state = 'running' AND lease_owner = :w_owner")
                        params["w_owner"] = row["_expect_owner"]
                    ok = bool(conn.execute(_update_sql("tasks", tuple(values), tuple(where)), params).rowcount)
                elif kind == "attempt":
                    values = {k: v for k, v in row.items() if k not in ("task_id", "attempt")}
                    params = {**{f"v_{k}": v for k, v in values.items()}, "w_task": row["task_id"], "w_attempt": row["attempt"]}
                    sql = _update_sql("task_attempts", tuple(values), ("task_id = :w_task", "attempt = :w_attempt"))
                    if not conn.execute(sql, params).rowcount:
                        conn.execute(task_attempts.insert().values(**row))
                elif kind not in ("insert", "attempt_new"):
                    raise ValueError(f"unknown task write {kind!r}")
                applied.append(ok)
        return applied

    @staticmethod
    def _task_row(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        for key in _TASK_JSON:
            if out.get(key) is not None:
                out[key] = json.loads(out[key])
        return out

    def get_task(self, id: str, *, attempts: bool = True) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(select(tasks).where(tasks.c.id == id)).first()
            if row is None:
                raise NotFound(f"no task {id!r}", task_id=id)
            out = self._task_row(row)
            if attempts:
                rows = conn.execute(select(task_attempts).where(task_attempts.c.task_id == id).order_by(task_attempts.c.attempt)).all()
                out["attempt_history"] = [
                    {**dict(r._mapping), "error": json.loads(r.error) if r.error else None} for r in rows
                ]
        return out

    def list_tasks(
        self,
        function: str | None = None,
        state: str | Iterable[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 100,
        oldest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Tasks, newest first (or in submit order), filtered by function,
        state(s) and creation time."""
        query = select(tasks)
        if function is not None:
            query = query.where(tasks.c.function == function)
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            query = query.where(tasks.c.state.in_(states))
        if since is not None:
            query = query.where(tasks.c.created_at >= since)
        if until is not None:
            query = query.where(tasks.c.created_at < until)
        query = query.order_by(tasks.c.seq.asc() if oldest_first else tasks.c.seq.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._tx(write=False) as conn:
            return [self._task_row(r) for r in conn.execute(query).all()]

    def task_counts(self) -> dict[str, dict[str, int]]:
        """{function: {state: count}}."""
        from sqlalchemy import func

        with self._tx(write=False) as conn:
            rows = conn.execute(select(tasks.c.function, tasks.c.state, func.count()).group_by(tasks.c.function, tasks.c.state)).all()
        out: dict[str, dict[str, int]] = {}
        for fn, st, n in rows:
            out.setdefault(fn, {})[st] = int(n)
        return out

    def max_task_seq(self) -> int:
        from sqlalchemy import func

        with self._tx(write=False) as conn:
            return int(conn.execute(select(func.max(tasks.c.seq))).scalar() or 0)

    def prune_tasks(self, cuts: Mapping[str, float], other: float) -> int:
        """Delete finished tasks (and their attempts) that finished before
        their function's cut-off (``cuts``; ``other`` for any other function)."""
        with self._tx() as conn:
            rows = conn.execute(select(tasks.c.id, tasks.c.function, tasks.c.finished_at).where(tasks.c.state.in_(TASK_FINAL_STATES))).all()
            ids = [r.id for r in rows if r.finished_at is not None and r.finished_at < cuts.get(r.function, other)]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                conn.execute(task_attempts.delete().where(task_attempts.c.task_id.in_(chunk)))
                conn.execute(tasks.delete().where(tasks.c.id.in_(chunk)))
                conn.execute(runs.delete().where(runs.c.id.in_(chunk)))
        return len(ids)


    # ------------------------------------------------------------------ MCP servers
    @staticmethod
    def _mcp_row(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        for key in _MCP_JSON & set(out):
            if out[key] is not None:
                out[key] = json.loads(out[key])
        if "wrap_output" in out:
            out["wrap_output"] = bool(out["wrap_output"])
        return out

    def create_mcp_server(self, name: str, kind: str, function: str, config: Mapping[str, Any], secrets: Mapping[str, str]) -> dict[str, Any]:
        now = self._now()
        row = {
            "name": name,
            "kind": kind,
            "function": function,
            "config": _dumps(dict(config), "config"),
            "secrets": _dumps(dict(secrets), "secrets"),
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._tx() as conn:
                conn.execute(mcp_servers.insert().values(**row))
        except IntegrityError:
            raise Conflict(f"MCP server {name!r} already exists", name=name) from None
        return self.get_mcp_server(name)

    def update_mcp_server(self, name: str, config: Mapping[str, Any]) -> None:
        with self._tx() as conn:
            n = conn.execute(
                mcp_servers.update().where(mcp_servers.c.name == name).values(config=_dumps(dict(config), "config"), updated_at=self._now())
            ).rowcount
        if not n:
            raise NotFound(f"MCP server {name!r} not found", name=name)

    def get_mcp_server(self, name: str) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(select(mcp_servers).where(mcp_servers.c.name == name)).first()
        if row is None:
            raise NotFound(f"MCP server {name!r} not found", name=name)
        return self._mcp_row(row)

    def list_mcp_servers(self) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            rows = conn.execute(select(mcp_servers).order_by(mcp_servers.c.name)).all()
        return [self._mcp_row(r) for r in rows]

    def delete_mcp_server(self, name: str) -> None:
        """The server and its tools (its sessions' rows stay, as history)."""
        with self._tx() as conn:
            n = conn.execute(mcp_servers.delete().where(mcp_servers.c.name == name)).rowcount
            conn.execute(mcp_tools.delete().where(mcp_tools.c.server == name))
        if not n:
            raise NotFound(f"MCP server {name!r} not found", name=name)

    def put_mcp_tool(self, server: str, tool: Mapping[str, Any]) -> None:
        """Create or replace a tool of ``server``."""
        now = self._now()
        values = {
            "description": str(tool.get("description") or ""),
            "input_schema": _dumps(tool["input_schema"], "input_schema"),
            "output_schema": None if tool.get("output_schema") is None else _dumps(tool["output_schema"], "output_schema"),
            "wrap_output": int(bool(tool.get("wrap_output"))),
            "code": tool["code"],
            "handler": tool["handler"],
            "ctx_param": tool.get("ctx_param"),
            "updated_at": now,
        }
        with self._tx() as conn:
            n = conn.execute(mcp_tools.update().where(mcp_tools.c.server == server, mcp_tools.c.name == tool["name"]).values(**values)).rowcount
            if not n:
                conn.execute(mcp_tools.insert().values(server=server, name=tool["name"], created_at=now, **values))

    def delete_mcp_tool(self, server: str, name: str) -> None:
        with self._tx() as conn:
            n = conn.execute(mcp_tools.delete().where(mcp_tools.c.server == server, mcp_tools.c.name == name)).rowcount
        if not n:
            raise NotFound(f"MCP server {server!r} has no tool {name!r}", server=server, tool=name)

    def list_mcp_tools(self, server: str | None = None) -> list[dict[str, Any]]:
        query = select(mcp_tools)
        if server is not None:
            query = query.where(mcp_tools.c.server == server)
        with self._tx(write=False) as conn:
            rows = conn.execute(query.order_by(mcp_tools.c.server, mcp_tools.c.name)).all()
        return [self._mcp_row(r) for r in rows]

    # ------------------------------------------------------------------ MCP sessions
    def create_mcp_session(self, row: Mapping[str, Any]) -> None:
        values = dict(row)
        values["client_info"] = _dumps(values.get("client_info") or {}, "client_info")
        with self._tx() as conn:
            conn.execute(mcp_sessions.insert().values(**values))

    def update_mcp_session(self, id: str, **fields: Any) -> None:
        unknown = set(fields) - _MCP_SESSION_UPDATABLE
        if unknown:
            raise ValueError(f"unknown MCP session field(s): {', '.join(sorted(unknown))}")
        with self._tx() as conn:
            conn.execute(mcp_sessions.update().where(mcp_sessions.c.id == id).values(**fields))

    def touch_mcp_sessions(self, last_used: Mapping[str, float]) -> None:
        """Record when each session was last used (one transaction)."""
        if not last_used:
            return
        with self._tx() as conn:
            conn.execute(
                _update_sql("mcp_sessions", ("last_used_at",), ("id = :w_id",)),
                [{"v_last_used_at": t, "w_id": sid} for sid, t in last_used.items()],
            )

    def get_mcp_session(self, id: str) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(select(mcp_sessions).where(mcp_sessions.c.id == id)).first()
        if row is None:
            raise NotFound(f"no MCP session {id!r}", session_id=id)
        return self._mcp_row(row)

    def list_mcp_sessions(self, server: str | None = None, status: str | None = None, limit: int | None = 500) -> list[dict[str, Any]]:
        query = select(mcp_sessions)
        if server is not None:
            query = query.where(mcp_sessions.c.server == server)
        if status is not None:
            query = query.where(mcp_sessions.c.status == status)
        query = query.order_by(mcp_sessions.c.created_at.desc(), mcp_sessions.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self._tx(write=False) as conn:
            return [self._mcp_row(r) for r in conn.execute(query).all()]


    # ------------------------------------------------------------------ runs and schedules
    @staticmethod
    def _schedule_row(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        for key in _SCHEDULE_JSON:
            out[key] = json.loads(out[key])
        out["enabled"] = bool(out["enabled"])
        return out

    def create_schedule(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert a schedule; with an ``idempotency_token`` already used, the
        existing one instead. Returns (schedule, created)."""
        values = {k: (json.dumps(v) if k in _SCHEDULE_JSON else v) for k, v in row.items()}
        values["enabled"] = int(bool(values.get("enabled", True)))
        with self._tx() as conn:
            token = values.get("idempotency_token")
            if token is not None:
                found = conn.execute(select(schedules).where(schedules.c.idempotency_token == token)).first()
                if found is not None:
                    return self._schedule_row(found), False
            conn.execute(schedules.insert().values(**values))
            created = conn.execute(select(schedules).where(schedules.c.id == values["id"])).one()
            return self._schedule_row(created), True

    def get_schedule(self, id: str) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(select(schedules).where(schedules.c.id == id)).first()
        if row is None:
            raise NotFound(f"no schedule {id!r}", schedule_id=id)
        return self._schedule_row(row)

    def list_schedules(self) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            return [self._schedule_row(r) for r in conn.execute(select(schedules).order_by(schedules.c.created_at)).all()]

    def update_schedule(self, id: str, fields: Mapping[str, Any], *, expect: Mapping[str, Any] | None = None) -> bool:
        """Update a schedule's fields; with ``expect`` only while those columns
        still hold those values (so one cron time is dealt with once).
        Returns whether it applied; NotFound if there is no such schedule."""
        bad = set(fields) - _SCHEDULE_UPDATABLE
        if bad:
            raise InvalidArgument(f"schedule fields not updatable: {', '.join(sorted(bad))}")
        values = {k: (json.dumps(v) if k in _SCHEDULE_JSON else int(bool(v)) if k == "enabled" else v) for k, v in fields.items()}
        with self._tx() as conn:
            ok = self._update_schedule(conn, id, values, expect)
            if not ok and conn.execute(select(schedules.c.id).where(schedules.c.id == id)).first() is None:
                raise NotFound(f"no schedule {id!r}", schedule_id=id)
        return ok

    @staticmethod
    def _update_schedule(conn: Connection, id: str, values: Mapping[str, Any], expect: Mapping[str, Any] | None) -> bool:
        query = schedules.update().where(schedules.c.id == id)
        for key, value in (expect or {}).items():
            col = schedules.c[key]
            query = query.where(col.is_(None) if value is None else col == value)
        return bool(conn.execute(query.values(**values)).rowcount)

    def delete_schedule(self, id: str) -> None:
        with self._tx() as conn:
            if not conn.execute(schedules.delete().where(schedules.c.id == id)).rowcount:
                raise NotFound(f"no schedule {id!r}", schedule_id=id)

    def insert_run(
        self,
        task_row: Mapping[str, Any],
        run_row: Mapping[str, Any],
        *,
        schedule: tuple[str, Mapping[str, Any], Mapping[str, Any]] | None = None,
    ) -> str | None:
        """Record a run: its task and its run row, in one transaction. With
        ``schedule=(id, expected column values, fields)`` only if the schedule is
        still where the caller saw it (else None: another fire got there
        first). With an ``idempotency_token`` already used, the id of that
        run instead (and nothing is written)."""
        run_values = {**run_row, "tags": json.dumps(list(run_row.get("tags") or []))}
        with self._tx() as conn:
            token = run_values.get("idempotency_token")
            if token is not None:
                found = conn.execute(select(runs.c.id).where(runs.c.idempotency_token == token)).first()
                if found is not None:
                    return str(found.id)
            if schedule is not None:
                sid, expect, fields = schedule
                values = {k: (json.dumps(v) if k in _SCHEDULE_JSON else v) for k, v in fields.items()}
                if not self._update_schedule(conn, sid, values, expect):
                    return None
            conn.execute(tasks.insert().values(**task_row))
            conn.execute(runs.insert().values(**run_values))
        return str(run_row["id"])

    @staticmethod
    def _run_row(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        out["tags"] = json.loads(out["tags"])
        return out

    def get_run(self, id: str) -> dict[str, Any] | None:
        with self._tx(write=False) as conn:
            row = conn.execute(select(runs).where(runs.c.id == id)).first()
        return None if row is None else self._run_row(row)

    def get_run_by_token(self, token: str) -> str | None:
        with self._tx(write=False) as conn:
            row = conn.execute(select(runs.c.id).where(runs.c.idempotency_token == token)).first()
        return None if row is None else str(row.id)

    def coldstart_of(self, instance_id: str) -> dict[str, Any] | None:
        """The cold start recorded for an instance, if any."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(coldstarts.c.path, coldstarts.c.spawn_ms, coldstarts.c.init_ms, coldstarts.c.first_call_ms).where(coldstarts.c.instance_id == instance_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def list_runs(
        self, *, schedule_id: str | None = None, tag: str | None = None, state: str | Iterable[str] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Run rows with their task's state, newest first."""
        query = select(runs, tasks.c.state).join(tasks, tasks.c.id == runs.c.id)
        if schedule_id is not None:
            query = query.where(runs.c.schedule_id == schedule_id)
        if tag is not None:
            query = query.where(runs.c.tags.like(f"%{json.dumps(tag)}%"))
        if state is not None:
            query = query.where(tasks.c.state.in_([state] if isinstance(state, str) else list(state)))
        query = query.order_by(tasks.c.seq.desc()).limit(limit)
        with self._tx(write=False) as conn:
            out = [self._run_row(r) for r in conn.execute(query).all()]
        if tag is not None:  # LIKE found candidates; keep exact tags
            out = [r for r in out if tag in r["tags"]]
        return out

    def delete_run(self, id: str) -> None:
        """Forget a finished run: its run row, task and attempts."""
        with self._tx() as conn:
            conn.execute(task_attempts.delete().where(task_attempts.c.task_id == id))
            conn.execute(tasks.delete().where(tasks.c.id == id))
            conn.execute(runs.delete().where(runs.c.id == id))


_SQL_CACHE: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}


def _update_sql(table: str, columns: tuple[str, ...], where: tuple[str, ...]) -> Any:
    """A cached ``UPDATE`` text statement (a Core ``update()`` costs ~5x more
    to build per call, on the tasks' hot path). Column names come from the
    table only."""
    key = (table, columns, where)
    sql = _SQL_CACHE.get(key)
    if sql is None:
        known = TABLES[table].c
        for c in columns:
            if c not in known:
                raise ValueError(f"unknown column {table}.{c}")
        sets = ", ".join(f"{c} = :v_{c}" for c in columns)
        sql = _SQL_CACHE[key] = text(f"UPDATE {table} SET {sets} WHERE {' AND '.join(where)}")
    return sql


# Kept importable for callers that want the raw tables (e.g. migrations, tests).
TABLES = {
    t.name: t
    for t in (
        functions, function_versions, sessions, counters, instances, coldstarts, invocations, function_keys, tasks, task_attempts,
        mcp_servers, mcp_tools, mcp_sessions, runs, schedules,
    )
}
