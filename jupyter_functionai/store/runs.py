"""Notebook runs and their schedules (see runs/): ``runs`` and ``schedules``.

A run is a task of the built-in notebook-run function; its ``runs`` row says
where it came from. The unique (schedule_id, scheduled_for) pair is what makes
a schedule fire at most once per time, whatever crashes and restarts in between.

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)

from ..errors import InvalidArgument, NotFound
from ._base import metadata
from .tasks import TasksStore, tasks

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


class RunsStore(TasksStore):
    """Schedules and run rows; a run is written together with its task."""

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
            self._delete_tasks(conn, [id])

    def _delete_tasks(self, conn: Connection, ids: Sequence[str]) -> None:
        super()._delete_tasks(conn, ids)
        conn.execute(runs.delete().where(runs.c.id.in_(ids)))
