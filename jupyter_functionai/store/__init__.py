"""The store: the runtime's persistent state, one module per domain on one engine.

- ``functions``: functions and their versions
- ``sessions``: sessions, instances, cold starts, invocations
- ``keys``: function-scoped API keys
- ``tasks``: durable tasks and their attempts
- ``runs``: notebook runs and schedules
- ``mcp``: hosted MCP servers, their tools, MCP sessions
- ``usage``: the usage ledger (per instance and minute)
- ``writer``: the one write path (acknowledged means committed)
- ``migrations``: the schema version and the steps that bring an older database to it
- ``_base``: the engine, SQLite pragmas, transactions, shared helpers

SQLAlchemy 2 *Core* (tables in one ``MetaData``, no ORM), synchronous, safe
to share between threads (one ``Engine``; every method is one short
transaction). Any SQLAlchemy URL works; the default is a SQLite file in WAL
mode. Timestamps are float epoch seconds; JSON columns are ``TEXT`` holding
``json.dumps`` output so every backend stores them the same way. Rows come
back as plain ``dict``s with JSON fields decoded.

Opening a store checks the database's schema version first (a newer one is
refused untouched), then migrates an older one or creates a new one; see
``migrations``.

This package must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Table
from sqlalchemy.engine import URL

from . import migrations
from ._base import metadata
from .functions import FunctionsStore
from .keys import KeysStore
from .mcp import McpStore
from .runs import RunsStore
from .scaling import ScalingStore
from .sessions import SESSION_FINAL_STATUSES, SessionsStore
from .tasks import TASK_FINAL_STATES, TASK_STATES, TasksStore
from .usage import UsageStore
from .writer import Writer

__all__ = ["SESSION_FINAL_STATUSES", "TABLES", "TASK_FINAL_STATES", "TASK_STATES", "Store", "metadata"]


class Store(FunctionsStore, SessionsStore, KeysStore, RunsStore, TasksStore, McpStore, UsageStore, ScalingStore):
    """Persistent state of the runtime; see the package docstring.

    ``schema_version`` is the version the database is at after opening;
    ``migrations_applied`` the migration steps this open applied."""

    def __init__(self, url: str | URL, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(url, clock=clock)
        try:
            outcome = migrations.upgrade(self.engine)
            self._enable_wal()
        except BaseException:
            self.engine.dispose()
            raise
        self.schema_version: int = outcome.version
        self.migrations_applied: tuple[int, ...] = outcome.applied
        #: The one write path (see ``writer``): the runtime and every service write through it.
        self.writer = Writer(self)

    def close(self) -> None:
        """Commit what is queued, then close the engine."""
        self.writer.close()
        super().close()


#: Every table of the store by name (for migrations, tests and raw queries).
TABLES: dict[str, Table] = dict(metadata.tables)
