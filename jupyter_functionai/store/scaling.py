"""Scale events: each time the autoscaler changed a function's warm-pool target.

One row per change: the function, when, the target before and after, the
load that decided it (sessionless calls in flight and queued) and why
(``up``: the load rose past the target; ``down``: it stayed lower for the
cooldown). Written through the write path, read by the API, the CLI and the
panels.

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Connection, Float, Index, Integer, String, Table, select

from ._base import StoreBase, metadata

scale_events = Table(
    "scale_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("function", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("from_target", Integer, nullable=False),
    Column("to_target", Integer, nullable=False),
    Column("in_flight", Integer, nullable=False),
    Column("queued", Integer, nullable=False),
    Column("reason", String(16), nullable=False),
    Index("ix_scale_events_function_at", "function", "at"),
)


def create_scale_events_table(conn: Connection) -> None:
    """The migration step that adds scale events (schema version 6)."""
    scale_events.create(conn, checkfirst=True)


class ScalingStore(StoreBase):
    def add_scale_event(self, event: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                scale_events.insert().values(
                    function=event["function"],
                    at=float(event["at"]),
                    from_target=int(event["from"]),
                    to_target=int(event["to"]),
                    in_flight=int(event["in_flight"]),
                    queued=int(event["queued"]),
                    reason=str(event["reason"]),
                )
            )

    def list_scale_events(
        self, function: str | None = None, since: float | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` events (of ``function``, since ``since``), oldest first."""
        q = select(scale_events)
        if function is not None:
            q = q.where(scale_events.c.function == function)
        if since is not None:
            q = q.where(scale_events.c.at >= since)
        q = q.order_by(scale_events.c.at.desc(), scale_events.c.id.desc()).limit(max(1, int(limit)))
        with self._tx(write=False) as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        return [
            {
                "function": r["function"],
                "at": r["at"],
                "from": r["from_target"],
                "to": r["to_target"],
                "in_flight": r["in_flight"],
                "queued": r["queued"],
                "reason": r["reason"],
            }
            for r in reversed(rows)
        ]
