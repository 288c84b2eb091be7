"""Functions and their versions: ``functions`` (one row per name, which
version is active) and ``function_versions`` (spec, source and digest of every
deployed version).

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Column, Connection, Float, ForeignKey, Integer, String, Table, Text, select
from sqlalchemy.exc import IntegrityError

from ..errors import NotFound
from ._base import StoreBase, _digest, _dumps, metadata

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

_DEPLOY_ATTEMPTS = 5


class FunctionsStore(StoreBase):
    """Deploy, read, roll back and delete versioned functions."""

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
        if not 0 < version < 1 << 63:  # no such row can exist (and SQLite has no such integer)
            raise NotFound(f"function {name!r} has no version {version}", name=name)
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
