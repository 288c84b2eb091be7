"""Sessions and what runs them: ``sessions`` (state, status, workdir),
``instances`` (one sandbox each), ``coldstarts`` (the timing record of each
instance start) and ``invocations`` (one row per synchronous call).

No foreign keys from these tables to ``functions``: their rows may outlive a
deleted function (history, cold-start charts, audit).

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Column, Float, Index, Integer, String, Table, Text, bindparam, select
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, NotFound
from ._base import StoreBase, _dumps, metadata

#: Session statuses whose uid may be handed out again.
SESSION_FINAL_STATUSES = ("closed", "expired")

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
    # who opened it: "key:<key id>", "mcp" (the session behind an MCP session),
    # NULL: the server's owner (its token, a Jupyter login) or a script
    Column("principal", String(128), nullable=True),
    Index("ix_sessions_function", "function"),
    Index("ix_sessions_status", "status"),
    Index("ix_sessions_created_at", "created_at"),
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

#: SessionsStore.touch_sessions: one compiled UPDATE for many sessions
_TOUCH = (
    sessions.update()
    .where(sessions.c.id == bindparam("b_id"))
    .values(last_used_at=bindparam("b_last_used_at"), calls=bindparam("b_calls"))
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
        "uid",
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


class SessionsStore(StoreBase):
    """Sessions, instances, cold starts and invocation logs."""

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
        principal: str | None = None,
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
            "principal": principal,
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

    def touch_sessions(self, touches: Iterable[tuple[str, float, int]]) -> None:
        """The bookkeeping of many sessions, ``(id, last_used_at, calls)``
        each, in one statement (``executemany``): what a group commit writes
        for every session that served calls since the last one.  An id with
        no row (a session deleted meanwhile) changes nothing."""
        batch = [{"b_id": sid, "b_last_used_at": float(last), "b_calls": int(calls)} for sid, last, calls in touches]
        if batch:
            with self._tx() as conn:
                conn.execute(_TOUCH, batch)

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

    def coldstart_of(self, instance_id: str) -> dict[str, Any] | None:
        """The cold start recorded for an instance, if any."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(coldstarts.c.path, coldstarts.c.spawn_ms, coldstarts.c.init_ms, coldstarts.c.first_call_ms).where(coldstarts.c.instance_id == instance_id)
            ).first()
        return None if row is None else dict(row._mapping)

    # ------------------------------------------------------------------ invocations
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

    def recent_durations(self, limit: int) -> list[tuple[str, float, str]]:
        """``(function, duration_ms, outcome)`` of the last ``limit`` invocations
        of all functions, newest first: what per-function latency is made of
        (no logs read)."""
        query = (
            select(invocations.c.function, invocations.c.duration_ms, invocations.c.outcome)
            .order_by(invocations.c.started_at.desc(), invocations.c.id.desc())
            .limit(limit)
        )
        with self._tx(write=False) as conn:
            return [(str(r[0]), float(r[1]), str(r[2])) for r in conn.execute(query)]

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
