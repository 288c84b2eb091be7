"""Function-scoped API keys: ``fai_<id>_<secret>``; only sha256(secret) is kept.

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import Column, Float, Index, String, Table, Text, select

from ..errors import NotFound
from ._base import StoreBase, metadata

function_keys = Table(
    "function_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("function", String(64), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Index("ix_function_keys_function", "function"),
)


class KeysStore(StoreBase):
    """Create, list, revoke and check function keys."""

    def create_key(self, function: str, note: str = "") -> str:
        """A new key for ``function``; the only time its secret is visible."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(24)
        with self._tx() as conn:
            conn.execute(
                function_keys.insert().values(
                    id=key_id,
                    function=function,
                    secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
                    note=note,
                    created_at=self._now(),
                    revoked_at=None,
                )
            )
        return f"fai_{key_id}_{secret}"

    def list_keys(self, function: str | None = None) -> list[dict[str, Any]]:
        """Keys without their secrets, newest first."""
        query = select(function_keys.c.id, function_keys.c.function, function_keys.c.note, function_keys.c.created_at, function_keys.c.revoked_at)
        if function is not None:
            query = query.where(function_keys.c.function == function)
        with self._tx(write=False) as conn:
            rows = conn.execute(query.order_by(function_keys.c.created_at.desc(), function_keys.c.id.desc())).all()
        return [dict(r._mapping) for r in rows]

    def revoke_key(self, key_id: str) -> None:
        with self._tx() as conn:
            found = conn.execute(
                function_keys.update().where(function_keys.c.id == key_id, function_keys.c.revoked_at.is_(None)).values(revoked_at=self._now())
            ).rowcount
        if not found:
            raise NotFound(f"no active key {key_id!r}", key_id=key_id)

    def check_key(self, key: str) -> str | None:
        """The function a valid, unrevoked key is for; None otherwise."""
        parts = key.split("_", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != "fai" or not parts[1] or not parts[2]:
            return None
        with self._tx(write=False) as conn:
            row = conn.execute(select(function_keys).where(function_keys.c.id == parts[1])).first()
        if row is None or row.revoked_at is not None:
            return None
        digest = hashlib.sha256(parts[2].encode()).hexdigest()
        return str(row.function) if hmac.compare_digest(digest, row.secret_sha256) else None
