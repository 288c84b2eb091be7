"""The usage ledger: what each instance used, per minute.

One row per (instance, minute): CPU-seconds, memory GiB-seconds, GPU-seconds
(cards held, a slice counting as its share of the card), GPU memory
GiB-seconds, and the seconds it was active (a call in flight) or idle (live,
waiting). The meter (``runtime/metering.py``) samples every second and
writes the minutes it has touched every few seconds, adding to a row that is
already there, so a killed process loses at most those few seconds.

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    String,
    Table,
    select,
    text,
)

from ._base import StoreBase, metadata

MEASURES = ("cpu_s", "mem_gib_s", "gpu_s", "gpu_mem_gib_s", "active_s", "idle_s")
BUCKET_S = 60.0

usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance_id", String(128), nullable=False),
    Column("start", Float, nullable=False),  # the minute's start (epoch seconds)
    Column("function", String(64), nullable=False),
    Column("session_id", String(128), nullable=True),
    *(Column(m, Float, nullable=False, default=0.0) for m in MEASURES),
    Index("ix_usage_instance_start", "instance_id", "start", unique=True),
    Index("ix_usage_function_start", "function", "start"),
    Index("ix_usage_session_start", "session_id", "start"),
    Index("ix_usage_start", "start"),
)


#: Add to a minute's row, or create it (SQLite >= 3.24 and PostgreSQL spell it alike).
_UPSERT = text(
    f"INSERT INTO usage (instance_id, start, function, session_id, {', '.join(MEASURES)}) "
    f"VALUES (:instance_id, :start, :function, :session_id, {', '.join(':' + m for m in MEASURES)}) "
    f"ON CONFLICT (instance_id, start) DO UPDATE SET {', '.join(f'{m} = usage.{m} + excluded.{m}' for m in MEASURES)}"
)


def create_usage_table(conn: Connection) -> None:
    """The migration step that adds the ledger (schema version 5)."""
    usage.create(conn, checkfirst=True)


class UsageStore(StoreBase):
    def add_usage(self, rows: Iterable[dict[str, Any]]) -> int:
        """Add each row's measures to its (instance, minute) row, creating it
        when missing; one transaction, one statement for all the rows (an
        upsert on the unique (instance, minute) index: the meter writes a row
        per live instance every few seconds, and this is on the writer's
        thread, beside every other write). Returns the number of rows given."""
        params = [
            {
                "instance_id": row["instance_id"],
                "start": row["start"],
                "function": row["function"],
                "session_id": row.get("session_id"),
                **{m: float(row.get(m, 0.0)) for m in MEASURES},
            }
            for row in rows
        ]
        if params:
            with self._tx() as conn:
                conn.execute(_UPSERT, params)
        return len(params)

    def usage(
        self,
        function: str | None = None,
        session: str | None = None,
        since: float | None = None,
        until: float | None = None,
        step: float | None = None,
        by: str = "session",
    ) -> list[dict[str, Any]]:
        """Totals per (function, session) (``by="function"``: per function,
        ``session`` None), and per ``step`` seconds when given (a multiple of
        a minute), oldest first. Each row: ``function``, ``session``,
        ``start`` (None without ``step``), ``end``, and the measures."""
        q = select(usage)
        if function is not None:
            q = q.where(usage.c.function == function)
        if session is not None:
            q = q.where(usage.c.session_id == session)
        if since is not None:
            q = q.where(usage.c.start >= math.floor(since / BUCKET_S) * BUCKET_S)
        if until is not None:
            q = q.where(usage.c.start < until)
        with self._tx(write=False) as conn:
            rows = [dict(r._mapping) for r in conn.execute(q.order_by(usage.c.start))]
        out: dict[tuple[str, str | None, float | None], dict[str, Any]] = {}
        for r in rows:
            start = math.floor(r["start"] / step) * step if step else None
            sid = r["session_id"] if by == "session" else None
            key = (r["function"], sid, start)
            acc = out.get(key)
            if acc is None:
                acc = out[key] = {"function": r["function"], "session": sid, "start": start, "end": None, **{m: 0.0 for m in MEASURES}}
            for m in MEASURES:
                acc[m] += r[m]
            acc["end"] = max(acc["end"] or 0.0, r["start"] + BUCKET_S if step is None else start + step)  # type: ignore[operator]
        for acc in out.values():
            for m in MEASURES:
                acc[m] = round(acc[m], 6)
        return sorted(out.values(), key=lambda a: (a["start"] or 0.0, a["function"], a["session"] or ""))
