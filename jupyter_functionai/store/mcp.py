"""The MCP tool service's rows (see mcp/manager.py): ``mcp_servers`` (hosted
servers, their config and secrets), ``mcp_tools`` (function-backed tools) and
``mcp_sessions`` (one row per ``Mcp-Session-Id``).

This module must not import tornado or anything Jupyter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Column, Float, Index, Integer, String, Table, Text, select
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, NotFound
from ._base import StoreBase, _dumps, _update_sql, metadata

mcp_servers = Table(
    "mcp_servers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # "functions" | "stdio"
    Column("function", String(64), nullable=False),  # the backing sandbox function
    Column("config", Text, nullable=False),  # JSON: command, env, idle TTL, spec fields
    Column("secrets", Text, nullable=False),  # JSON {name: value}: never listed
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

mcp_tools = Table(
    "mcp_tools",
    metadata,
    Column("server", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("description", Text, nullable=False),
    Column("input_schema", Text, nullable=False),  # JSON
    Column("output_schema", Text, nullable=True),  # JSON
    Column("wrap_output", Integer, nullable=False),
    Column("code", Text, nullable=False),
    Column("handler", String(128), nullable=False),
    Column("ctx_param", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

mcp_sessions = Table(
    "mcp_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # the Mcp-Session-Id
    Column("server", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("runtime_session", String(128), nullable=False),
    Column("protocol_version", String(32), nullable=False),
    Column("client_info", Text, nullable=False),  # JSON
    Column("principal", String(128), nullable=False),  # who opened it: only they may use it
    Column("status", String(16), nullable=False),  # active | closed | expired
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    Column("close_reason", Text, nullable=True),
    Index("ix_mcp_sessions_server", "server"),
    Index("ix_mcp_sessions_status", "status"),
)

_MCP_JSON = {"config", "secrets", "input_schema", "output_schema", "client_info"}
_MCP_SESSION_UPDATABLE = frozenset({"status", "last_used_at", "closed_at", "close_reason", "protocol_version"})


class McpStore(StoreBase):
    """Hosted MCP servers, their tools and MCP sessions."""

    # ------------------------------------------------------------------ MCP servers
    @staticmethod
    def _mcp_row(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        for key in _MCP_JSON & set(out):
            if out[key] is not None:
                out[key] = json.loads(out[key])
        if "wrap_output" in out:
            out["wrap_output"] = bool(out["wrap_output"])
        return out

    def create_mcp_server(self, name: str, kind: str, function: str, config: Mapping[str, Any], secrets: Mapping[str, str]) -> dict[str, Any]:
        now = self._now()
        row = {
            "name": name,
            "kind": kind,
            "function": function,
            "config": _dumps(dict(config), "config"),
            "secrets": _dumps(dict(secrets), "secrets"),
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._tx() as conn:
                conn.execute(mcp_servers.insert().values(**row))
        except IntegrityError:
            raise Conflict(f"MCP server {name!r} already exists", name=name) from None
        return self.get_mcp_server(name)

    def update_mcp_server(self, name: str, config: Mapping[str, Any]) -> None:
        with self._tx() as conn:
            n = conn.execute(
                mcp_servers.update().where(mcp_servers.c.name == name).values(config=_dumps(dict(config), "config"), updated_at=self._now())
            ).rowcount
        if not n:
            raise NotFound(f"MCP server {name!r} not found", name=name)

    def get_mcp_server(self, name: str) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(select(mcp_servers).where(mcp_servers.c.name == name)).first()
        if row is None:
            raise NotFound(f"MCP server {name!r} not found", name=name)
        return self._mcp_row(row)

    def list_mcp_servers(self) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            rows = conn.execute(select(mcp_servers).order_by(mcp_servers.c.name)).all()
        return [self._mcp_row(r) for r in rows]

    def delete_mcp_server(self, name: str) -> None:
        """The server and its tools (its sessions' rows stay, as history)."""
        with self._tx() as conn:
            n = conn.execute(mcp_servers.delete().where(mcp_servers.c.name == name)).rowcount
            conn.execute(mcp_tools.delete().where(mcp_tools.c.server == name))
        if not n:
            raise NotFound(f"MCP server {name!r} not found", name=name)

    def put_mcp_tool(self, server: str, tool: Mapping[str, Any]) -> None:
        """Create or replace a tool of ``server``."""
        now = self._now()
        values = {
            "description": str(tool.get("description") or ""),
            "input_schema": _dumps(tool["input_schema"], "input_schema"),
            "output_schema": None if tool.get("output_schema") is None else _dumps(tool["output_schema"], "output_schema"),
            "wrap_output": int(bool(tool.get("wrap_output"))),
            "code": tool["code"],
            "handler": tool["handler"],
            "ctx_param": tool.get("ctx_param"),
            "updated_at": now,
        }
        with self._tx() as conn:
            n = conn.execute(mcp_tools.update().where(mcp_tools.c.server == server, mcp_tools.c.name == tool["name"]).values(**values)).rowcount
            if not n:
                conn.execute(mcp_tools.insert().values(server=server, name=tool["name"], created_at=now, **values))

    def delete_mcp_tool(self, server: str, name: str) -> None:
        with self._tx() as conn:
            n = conn.execute(mcp_tools.delete().where(mcp_tools.c.server == server, mcp_tools.c.name == name)).rowcount
        if not n:
            raise NotFound(f"MCP server {server!r} has no tool {name!r}", server=server, tool=name)

    def list_mcp_tools(self, server: str | None = None) -> list[dict[str, Any]]:
        query = select(mcp_tools)
        if server is not None:
            query = query.where(mcp_tools.c.server == server)
        with self._tx(write=False) as conn:
            rows = conn.execute(query.order_by(mcp_tools.c.server, mcp_tools.c.name)).all()
        return [self._mcp_row(r) for r in rows]

    # ------------------------------------------------------------------ MCP sessions
    def create_mcp_session(self, row: Mapping[str, Any]) -> None:
        values = dict(row)
        values["client_info"] = _dumps(values.get("client_info") or {}, "client_info")
        with self._tx() as conn:
            conn.execute(mcp_sessions.insert().values(**values))

    def update_mcp_session(self, id: str, **fields: Any) -> None:
        unknown = set(fields) - _MCP_SESSION_UPDATABLE
        if unknown:
            raise ValueError(f"unknown MCP session field(s): {', '.join(sorted(unknown))}")
        with self._tx() as conn:
            conn.execute(mcp_sessions.update().where(mcp_sessions.c.id == id).values(**fields))

    def touch_mcp_sessions(self, last_used: Mapping[str, float]) -> None:
        """Record when each session was last used (one transaction)."""
        if not last_used:
            return
        with self._tx() as conn:
            conn.execute(
                _update_sql("mcp_sessions", ("last_used_at",), ("id = :w_id",)),
                [{"v_last_used_at": t, "w_id": sid} for sid, t in last_used.items()],
            )

    def get_mcp_session(self, id: str) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            row = conn.execute(select(mcp_sessions).where(mcp_sessions.c.id == id)).first()
        if row is None:
            raise NotFound(f"no MCP session {id!r}", session_id=id)
        return self._mcp_row(row)

    def list_mcp_sessions(self, server: str | None = None, status: str | None = None, limit: int | None = 500) -> list[dict[str, Any]]:
        query = select(mcp_sessions)
        if server is not None:
            query = query.where(mcp_sessions.c.server == server)
        if status is not None:
            query = query.where(mcp_sessions.c.status == status)
        query = query.order_by(mcp_sessions.c.created_at.desc(), mcp_sessions.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self._tx(write=False) as conn:
            return [self._mcp_row(r) for r in conn.execute(query).all()]
