"""The store's schema version and the ordered steps that bring an older
database to it.

A tested, ordered list of steps in this one module (:data:`STEPS`) is what we
chose over Alembic, to keep the dependency set small: each step is a target
version, a description and an ``upgrade(conn)`` function.

Versions:

1. The schema of the release of 2026-12-06. A database of that release has no
   ``schema_version`` table; it is recognised by its tables.
2. Drops the ``counters`` table: it only backed ``Store.allocate_uid``, which
   nothing called (the runtime allocates session uids in memory), and was
   always empty.
3. Adds the index ``ix_tasks_seq``: task and run listings are newest first by
   ``seq`` and the task queue reads ``max(seq)`` on start; without it each of
   those scanned and sorted the whole ``tasks`` table.
4. Adds ``sessions.principal``: who opened the session (``key:<key id>``, or
   ``mcp`` for the session behind an MCP session); a session is usable only by
   the principal that opened it. Existing rows get NULL (the server's owner),
   except the sessions behind MCP sessions, which get ``mcp`` (so the MCP
   service can go on using them and a function key cannot).

Rules (see :func:`upgrade`):

- The version is read before anything writes (no DDL, no ``journal_mode``
  switch): a database whose version is newer than :data:`HEAD` is refused
  with :class:`~jupyter_functionai.errors.SchemaTooNew` and left as it was.
- A new database (no store tables) gets the current schema, from the live
  table definitions, stamped with the head version in one transaction.
- An older database gets each missing step in order, each in its own write
  transaction together with its version bump (SQLite DDL is transactional),
  so a failing step leaves the database at the previous version and raises
  :class:`~jupyter_functionai.errors.SchemaError` naming the step. A version 1
  database gets its ``schema_version`` row in the transaction of step 2.
- Steps are history: they use SQL text, never the live ``Table`` objects
  (those describe the head schema), and a released step is never edited. A
  schema change is a new step at the end of :data:`STEPS` plus the same change
  in the domain module's table; tests/test_migrations.py checks that a
  migrated version 1 database and a new one end up with the same schema.
- A step that must rebuild a SQLite table (``ALTER TABLE`` is limited) does it
  with create-copy-drop-rename inside its transaction; ``PRAGMA foreign_keys``
  cannot change inside a transaction (use ``PRAGMA defer_foreign_keys=ON``).

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    Table,
    inspect,
    select,
    text,
)

from ..errors import SchemaError, SchemaTooNew
from ._base import metadata

log = logging.getLogger(__name__)

#: One row (id 1): the schema version of this database. Its shape never changes.
schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    CheckConstraint("id = 1", name="ck_schema_version_one_row"),
)


@dataclass(frozen=True)
class Step:
    """One migration step: ``upgrade`` takes a database from ``version - 1`` to ``version``."""

    version: int
    description: str
    upgrade: Callable[[Connection], None]


@dataclass(frozen=True)
class Outcome:
    """What :func:`upgrade` found and did."""

    found: int | None  # None: a new database
    version: int  # the version the database is at now
    applied: tuple[int, ...]  # the steps applied, in order


#: The version of a database without a ``schema_version`` table but with the store's tables.
BASELINE = 1

#: The tables of the release of 2026-12-06 (version 1).
V1_TABLES = frozenset(
    {
        "functions", "function_versions", "sessions", "counters", "instances", "coldstarts", "invocations", "function_keys",
        "tasks", "task_attempts", "mcp_servers", "mcp_tools", "mcp_sessions", "runs", "schedules",
    }
)


def _drop_counters(conn: Connection) -> None:
    conn.execute(text("DROP TABLE IF EXISTS counters"))


def _index_tasks_seq(conn: Connection) -> None:
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_tasks_seq ON tasks (seq)"))


def _sessions_principal(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE sessions ADD COLUMN principal VARCHAR(128)"))
    conn.execute(text("UPDATE sessions SET principal = 'mcp' WHERE id IN (SELECT runtime_session FROM mcp_sessions)"))


def _usage_ledger(conn: Connection) -> None:
    from .usage import create_usage_table

    create_usage_table(conn)


def _scale_events(conn: Connection) -> None:
    from .scaling import create_scale_events_table

    create_scale_events_table(conn)


#: The steps after the baseline, in order. Append only.
STEPS: tuple[Step, ...] = (
    Step(2, "drop the unused counters table", _drop_counters),
    Step(3, "index tasks by seq", _index_tasks_seq),
    Step(4, "record the principal that opened each session", _sessions_principal),
    Step(5, "the usage ledger (per instance and minute)", _usage_ledger),
    Step(6, "scale events (the autoscaler's changes of a warm-pool target)", _scale_events),
)

#: The schema version this code writes.
HEAD = STEPS[-1].version


def _check_steps(steps: Sequence[Step]) -> int:
    for expected, step in enumerate(steps, start=BASELINE + 1):
        if step.version != expected:
            raise ValueError(f"migration steps must be numbered {BASELINE + 1}, {BASELINE + 2}, ...: step {step.version} is where {expected} should be")
    return steps[-1].version if steps else BASELINE


def current_version(conn: Connection) -> int | None:
    """The schema version of the database on ``conn`` (read only); None for a
    database without the store's tables."""
    names = set(inspect(conn).get_table_names())
    if schema_version.name in names:
        row = conn.execute(select(schema_version.c.version).where(schema_version.c.id == 1)).first()
        if row is None:
            raise SchemaError("the store's schema_version table has no row: the database is damaged; restore it from a backup")
        return int(row.version)
    if names & V1_TABLES:
        return BASELINE
    return None


def _refuse_newer(found: int | None, head: int) -> None:
    if found is not None and found > head:
        raise SchemaTooNew(
            f"the database has schema version {found}, newer than this release knows ({head}): "
            "it was written by a newer jupyter-functionai; upgrade jupyter-functionai to open it (the database was not modified)",
            version=found,
            head=head,
        )


def _stamp(conn: Connection, version: int) -> None:
    schema_version.create(conn, checkfirst=True)
    now = time.time()
    done = conn.execute(schema_version.update().where(schema_version.c.id == 1).values(version=version, updated_at=now)).rowcount
    if not done:
        conn.execute(schema_version.insert().values(id=1, version=version, updated_at=now))


def upgrade(engine: Engine, steps: Sequence[Step] | None = None) -> Outcome:
    """Bring the database of ``engine`` to the head of ``steps`` (default
    :data:`STEPS`); see the module docstring for the rules."""
    steps = STEPS if steps is None else tuple(steps)
    head = _check_steps(steps)
    with engine.connect() as conn, conn.begin():  # read only: nothing is written before the check
        found = current_version(conn)
    _refuse_newer(found, head)
    applied: list[int] = []
    now = found
    while now != head:
        with engine.connect() as conn:
            conn.execution_options(functionai_write=True)  # SQLite: BEGIN IMMEDIATE
            with conn.begin():
                now = current_version(conn)  # again, under the write lock: another opener may have migrated
                _refuse_newer(now, head)
                if now == head:
                    break
                if now is None:
                    metadata.create_all(conn)
                    _stamp(conn, head)
                    now = head
                    break
                if now < BASELINE:
                    raise SchemaError(f"the store's schema_version table says version {now}, which no release wrote: the database is damaged", version=now)
                step = steps[now - BASELINE]
                try:
                    step.upgrade(conn)
                    _stamp(conn, step.version)
                except Exception as exc:
                    raise SchemaError(
                        f"schema migration step {step.version} ({step.description}) failed: {exc}; "
                        f"the database is left at schema version {now}",
                        step=step.version,
                        version=now,
                    ) from exc
        applied.append(step.version)
        now = step.version
    if applied:
        log.info("store schema migrated from version %s to %s (steps %s)", found, now, ", ".join(map(str, applied)))
    return Outcome(found=found, version=head, applied=tuple(applied))
