"""Durable tasks (see runtime/tasks.py): ``tasks`` (one row per task) and
``task_attempts`` (one per attempt).

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Connection, Float, Index, Integer, String, Table, Text, func, select

from ..errors import NotFound
from ._base import StoreBase, _update_sql, metadata

TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
TASK_FINAL_STATES = ("succeeded", "failed", "cancelled", "timed_out")
_TASK_JSON = ("event", "options", "result", "error")

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
    Index("ix_tasks_seq", "seq"),  # newest-first listings and max(seq) (schema version 3)
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


class TasksStore(StoreBase):
    """Task rows and their attempts: the durable queue's persistence."""

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
        with self._tx(write=False) as conn:
            rows = conn.execute(select(tasks.c.function, tasks.c.state, func.count()).group_by(tasks.c.function, tasks.c.state)).all()
        out: dict[str, dict[str, int]] = {}
        for fn, st, n in rows:
            out.setdefault(fn, {})[st] = int(n)
        return out

    def max_task_seq(self) -> int:
        with self._tx(write=False) as conn:
            return int(conn.execute(select(func.max(tasks.c.seq))).scalar() or 0)

    def prune_tasks(self, cuts: Mapping[str, float], other: float) -> int:
        """Delete finished tasks (with their attempts and, see ``_delete_tasks``,
        their run rows) that finished before their function's cut-off
        (``cuts``; ``other`` for any other function)."""
        with self._tx() as conn:
            rows = conn.execute(select(tasks.c.id, tasks.c.function, tasks.c.finished_at).where(tasks.c.state.in_(TASK_FINAL_STATES))).all()
            ids = [r.id for r in rows if r.finished_at is not None and r.finished_at < cuts.get(r.function, other)]
            for i in range(0, len(ids), 500):
                self._delete_tasks(conn, ids[i : i + 500])
        return len(ids)

    def _delete_tasks(self, conn: Connection, ids: Sequence[str]) -> None:
        """Delete these tasks and their attempts. Domains whose rows hang off
        a task (runs) extend this to delete theirs in the same transaction."""
        conn.execute(task_attempts.delete().where(task_attempts.c.task_id.in_(ids)))
        conn.execute(tasks.delete().where(tasks.c.id.in_(ids)))
