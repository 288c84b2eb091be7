"""Durable tasks (see runtime/tasks.py): ``tasks`` (one row per task) and
``task_attempts`` (one per attempt).

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    func,
    select,
    text,
)

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


# A task's row and its attempts: the statements of the hottest read (every
# ``wait`` and ``GET`` of a task), built once. A Core ``select()`` built per
# call costs its construction and cache-key walk on every read (about half of
# ``get_task``'s CPU).
# The columns are named (not ``*``): a migrated file may order them otherwise.
_GET_TASK = text(f"SELECT {', '.join(tasks.c.keys())} FROM tasks WHERE id = :id").columns(*tasks.c)
_GET_ATTEMPTS = text(
    f"SELECT {', '.join(task_attempts.c.keys())} FROM task_attempts WHERE task_id = :id ORDER BY attempt"
).columns(*task_attempts.c)


def _task_update(row: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The statement and parameters of an ``("update", row)`` task write."""
    values = {k: v for k, v in row.items() if k not in ("id", "_expect_owner", "_expect_state")}
    params = {**{f"v_{k}": v for k, v in values.items()}, "w_id": row["id"]}
    where = ["id = :w_id"]
    if row.get("_expect_state"):
        where.append("state = :w_state")
        params["w_state"] = row["_expect_state"]
    if row.get("_expect_owner"):
        where.append("state = 'running' AND lease_owner = :w_owner")
        params["w_owner"] = row["_expect_owner"]
    return _update_sql("tasks", tuple(values), tuple(where)), params


def _attempt_update(row: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The statement and parameters that update the attempt row of an ``("attempt", row)`` write."""
    values = {k: v for k, v in row.items() if k not in ("task_id", "attempt")}
    params = {**{f"v_{k}": v for k, v in values.items()}, "w_task": row["task_id"], "w_attempt": row["attempt"]}
    return _update_sql("task_attempts", tuple(values), ("task_id = :w_task", "attempt = :w_attempt")), params


class TasksStore(StoreBase):
    """Task rows and their attempts: the durable queue's persistence."""

    def write_tasks(self, ops: Iterable[tuple[str, Mapping[str, Any]]]) -> list[bool]:
        """Apply task writes in one transaction: ``("insert", row)``,
        ``("attempt_new", row)`` (a new attempt row), ``("update", {"id",
        ...fields})``, ``("attempt", row)`` (insert or update of an attempt
        row). An update with ``_expect_owner`` applies only while the task is
        still ``running`` under that lease owner (so an outcome is recorded
        once); one with ``_expect_state`` only while the task is in that
        state. The runtime batches its transitions here (group commit); each
        caller waits for the commit. Returns, per op, whether it applied.

        Each kind of write goes to the database as one ``executemany`` per
        statement shape (SQLAlchemy costs ~55 us of CPU per statement, the
        tasks' hot path is CPU-bound): inserts first, then each table's
        updates in their order. A group of updates runs inside a savepoint
        and is applied again one row at a time (to learn which rows applied)
        when its summed row count says that some did not."""
        ops = list(ops)
        for kind, _ in ops:
            if kind not in ("insert", "attempt_new", "update", "attempt"):
                raise ValueError(f"unknown task write {kind!r}")
        applied = [True] * len(ops)
        with self._tx() as conn:
            inserts = [dict(row) for kind, row in ops if kind == "insert"]
            if inserts:
                conn.execute(tasks.insert(), inserts)
            new_attempts = [dict(row) for kind, row in ops if kind == "attempt_new"]
            if new_attempts:
                conn.execute(task_attempts.insert(), new_attempts)
            updates = [(i, _task_update(row)) for i, (kind, row) in enumerate(ops) if kind == "update"]
            for i, ok in self._grouped(conn, updates, len({row["id"] for kind, row in ops if kind == "update"})):
                applied[i] = ok
            attempts = [(i, row) for i, (kind, row) in enumerate(ops) if kind == "attempt"]
            keys = {(row["task_id"], row["attempt"]) for _, row in attempts}

            def insert_attempt(i: int) -> None:  # no such attempt row yet: insert it
                conn.execute(task_attempts.insert().values(**ops[i][1]))

            self._grouped(conn, [(i, _attempt_update(row)) for i, row in attempts], len(keys), missing=insert_attempt)
        return applied

    @staticmethod
    def _grouped(
        conn: Connection, updates: list[tuple[int, tuple[Any, dict[str, Any]]]], distinct: int, missing: Callable[[int], None] | None = None
    ) -> list[tuple[int, bool]]:
        """Run ``(op index, (statement, params))`` updates; per op, whether it
        changed a row (``missing(i)`` is called at once for one that did
        not). Updates of distinct rows (``distinct`` rows for as many
        updates) with one statement run as one ``executemany`` where the
        driver sums row counts reliably; any other run row by row, in order."""
        out: list[tuple[int, bool]] = []

        def one(i: int, sql: Any, params: dict[str, Any]) -> None:
            ok = bool(conn.execute(sql, params).rowcount)
            if not ok and missing is not None:
                missing(i)
            out.append((i, ok))

        if len(updates) < 2 or distinct != len(updates) or not conn.dialect.supports_sane_multi_rowcount:
            for i, (sql, params) in updates:
                one(i, sql, params)
            return out
        groups: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
        for i, (sql, params) in updates:
            groups.setdefault(sql, []).append((i, params))
        for sql, group in groups.items():
            if len(group) == 1:
                one(group[0][0], sql, group[0][1])
                continue
            savepoint = conn.begin_nested()
            try:
                count = conn.execute(sql, [params for _, params in group]).rowcount
            except BaseException:
                savepoint.rollback()
                raise
            if count == len(group):
                savepoint.commit()
                out.extend((i, True) for i, _ in group)
            else:  # some did not apply: which ones, row by row
                savepoint.rollback()
                for i, params in group:
                    one(i, sql, params)
        return out

    @staticmethod
    def _task_row(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        for key in _TASK_JSON:
            if out.get(key) is not None:
                out[key] = json.loads(out[key])
        return out

    def get_task(self, id: str, *, attempts: bool = True) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(_GET_TASK, {"id": id}).first()
            if row is None:
                raise NotFound(f"no task {id!r}", task_id=id)
            out = self._task_row(row)
            if attempts:
                rows = conn.execute(_GET_ATTEMPTS, {"id": id}).all()
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
