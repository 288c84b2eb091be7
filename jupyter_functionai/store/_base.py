"""The store's plumbing: the one ``MetaData``, the engine and its SQLite
pragmas, transactions (``_tx``, ``batch``) and helpers the domain modules share.

SQLAlchemy 2 *Core* (no ORM), synchronous, safe to share between threads (one
``Engine``; every method is one short transaction). Any SQLAlchemy URL works;
the default is a SQLite file in WAL mode. Building a :class:`StoreBase` does no
I/O: the package's ``Store`` checks the schema version (and migrates) before
anything writes, and only then switches the file to WAL.

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from ..errors import InvalidArgument, NotFound

#: Every table of the store, whatever its domain module, is on this one ``MetaData``.
metadata = MetaData()


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
    # Only per-connection settings here: nothing that writes to the file (the
    # WAL switch is made once, after the schema version check; see Store).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
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


_SQL_CACHE: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Any] = {}


def _update_sql(table: str, columns: tuple[str, ...], where: tuple[str, ...]) -> Any:
    """A cached ``UPDATE`` text statement (a Core ``update()`` costs ~5x more
    to build per call, on the tasks' hot path). Column names come from the
    table only."""
    key = (table, columns, where)
    sql = _SQL_CACHE.get(key)
    if sql is None:
        known = metadata.tables[table].c
        for c in columns:
            if c not in known:
                raise ValueError(f"unknown column {table}.{c}")
        sets = ", ".join(f"{c} = :v_{c}" for c in columns)
        sql = _SQL_CACHE[key] = text(f"UPDATE {table} SET {sets} WHERE {' AND '.join(where)}")
    return sql


class StoreBase:
    """The engine, transactions and shared helpers every domain mixin uses."""

    def __init__(self, url: str | URL, *, clock: Callable[[], float] = time.time) -> None:
        parsed = make_url(url)
        self.url: str = parsed.render_as_string(hide_password=False)
        self._clock = clock
        self._local = threading.local()
        self._sqlite = _is_sqlite(parsed)
        self._sqlite_file = self._sqlite and not _is_sqlite_memory(parsed)
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

    def _enable_wal(self) -> None:
        """Switch a SQLite file to WAL (persistent in the file; a no-op when it
        already is). Called once the schema is known to be this code's."""
        if self._sqlite_file:
            raw = self.engine.raw_connection()  # outside any transaction (SQLite refuses the switch inside one)
            try:
                cursor = raw.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.close()
            finally:
                raw.close()

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kw: Any) -> Self:
        """A store in the SQLite file at ``path`` (parent directories are created)."""
        target = Path(path).expanduser().absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        return cls(URL.create("sqlite", database=str(target)), **kw)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

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

    def _update(self, table: Table, id: str, values: dict[str, Any], what: str) -> None:
        with self._tx() as conn:
            if values:
                params = {**{f"v_{k}": v for k, v in values.items()}, "w_id": id}
                found = conn.execute(_update_sql(table.name, tuple(values), ("id = :w_id",)), params).rowcount > 0
            else:
                found = conn.execute(select(table.c.id).where(table.c.id == id)).first() is not None
        if not found:
            raise NotFound(f"{what} {id!r} not found", **{f"{what}_id": id})
