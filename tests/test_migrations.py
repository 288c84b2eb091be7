"""Schema version and migrations: a database written by the release of
2026-12-06 (tests/fixtures/functionai-v1.db, schema version 1, no
``schema_version`` table) opens with every row, a newer one is refused
untouched, a failing step rolls back to the previous version, a new one is
stamped with the head version."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from jupyter_functionai import Runtime
from jupyter_functionai.errors import SchemaError, SchemaTooNew
from jupyter_functionai.runtime.sessions import make_workdir
from jupyter_functionai.store import TABLES, Store, migrations

FIXTURE = Path(__file__).parent / "fixtures" / "functionai-v1.db"
V1_COUNTS = {
    "coldstarts": 5, "counters": 0, "function_keys": 1, "function_versions": 6, "functions": 5, "instances": 5, "invocations": 7,
    "mcp_servers": 2, "mcp_sessions": 1, "mcp_tools": 1, "runs": 1, "schedules": 1, "sessions": 2, "task_attempts": 3, "tasks": 3,
}


@contextlib.contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        yield con


def _counts(path: Path) -> dict[str, int]:
    with _sqlite(path) as con:
        names = [n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: con.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names}


def _rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with _sqlite(path) as con:
        names = [n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(con.execute(f"SELECT * FROM {n}").fetchall(), key=repr) for n in names}


def _version_row(path: Path) -> tuple[Any, ...] | None:
    with _sqlite(path) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
            return None
        return tuple(con.execute("SELECT id, version, updated_at FROM schema_version").fetchall())


def _schema(path: Path) -> dict[str, Any]:
    """Tables with their columns, indexes (with their columns) and foreign keys."""
    with _sqlite(path) as con:
        out: dict[str, Any] = {}
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            indexes = {
                row[1]: (row[2], row[3], [c[2] for c in con.execute(f"PRAGMA index_info('{row[1]}')")])
                for row in con.execute(f"PRAGMA index_list('{name}')")
                if row[3] != "pk" or not row[1].startswith("sqlite_autoindex")
            }
            out[name] = {
                "columns": [tuple(r) for r in con.execute(f"PRAGMA table_xinfo('{name}')")],
                "indexes": sorted((sorted(v[2]), v[0], v[1], k if not k.startswith("sqlite_autoindex") else "") for k, v in indexes.items()),
                "foreign_keys": [tuple(r) for r in con.execute(f"PRAGMA foreign_key_list('{name}')")],
            }
        return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    """A copy of the committed v1 database (never the committed file itself)."""
    state = tmp_path / "state"
    state.mkdir()
    copy = state / "functionai.db"
    shutil.copyfile(FIXTURE, copy)
    return copy


def test_v1_database_opens_with_every_row(v1: Path) -> None:
    before = _counts(v1)
    rows_before = _rows(v1)
    print("\nrow counts before (v1, read with sqlite3):", before)
    assert before == V1_COUNTS
    assert _version_row(v1) is None

    with Store.open(v1) as store:
        assert store.schema_version == migrations.HEAD
        assert store.migrations_applied == tuple(s.version for s in migrations.STEPS)

        # the rows, through the new store
        alice = store.get_session("alice")
        assert (alice["function"], alice["status"]) == ("memory", "paused")
        assert alice["state"] == {"notes": ["alice-1", "alice-2", "alice-task"]}
        assert store.get_session("bob")["status"] == "closed"
        assert [s["id"] for s in store.list_sessions(function="memory")] == ["bob", "alice"]
        memory = next(f for f in store.list_functions() if f["name"] == "memory")
        assert (memory["active_version"], memory["latest_version"]) == (2, 2)
        assert [v["version"] for v in store.list_versions("memory")] == [1, 2]
        assert store.get_function("memory")["version"] == 2
        assert {f["name"] for f in store.list_functions()} == {"memory", "echo", "mcp-notes", "mcp-stdio-echo", "notebook-run"}
        tasks = store.list_tasks(state="succeeded")
        assert len(tasks) == 3
        assert store.max_task_seq() == 3
        assert store.get_task(tasks[1]["id"])["result"] == {"notes": ["alice-1", "alice-2", "alice-task"]}
        (run,) = store.list_runs(tag="fixture")
        assert (run["name"], run["tags"], run["state"]) == ("fixture-run", ["fixture"], "succeeded")
        (schedule,) = store.list_schedules()
        assert (schedule["cron"], schedule["timezone"], schedule["parameters"]) == ("0 6 * * *", "Europe/Paris", {"x": 3})
        (key,) = store.list_keys()
        assert (key["function"], key["note"], key["revoked_at"]) == ("echo", "ci key", None)
        notes, stdio = store.list_mcp_servers()
        assert (notes["name"], notes["kind"], notes["function"]) == ("notes", "functions", "mcp-notes")
        assert (stdio["name"], stdio["kind"]) == ("stdio-echo", "stdio")
        assert stdio["secrets"] == {"TOKEN": "s3cret"}
        assert stdio["config"]["env"] == {"MODE": "x"}
        (tool,) = store.list_mcp_tools("notes")
        assert (tool["name"], tool["handler"]) == ("add", "add")
        assert tool["input_schema"]["required"] == ["a", "b"]
        (mcp_session,) = store.list_mcp_sessions()
        assert (mcp_session["server"], mcp_session["status"], mcp_session["principal"]) == ("notes", "active", "token")
        assert mcp_session["client_info"] == {"name": "fixture", "version": "1"}
        assert len(store.list_instances()) == 5
        assert len(store.list_coldstarts()) == 5
        assert len(store.list_invocations()) == 7

    after = _counts(v1)
    print("row counts after (head, read with sqlite3):", after)
    # step 5 added the usage ledger, step 6 the scale events, both empty
    assert after == {**{k: v for k, v in before.items() if k != "counters"}, "schema_version": 1, "usage": 0, "scale_events": 0}
    rows_after = _rows(v1)
    for name, rows in rows_before.items():
        if name == "sessions":  # step 4 added sessions.principal: NULL (the server's owner) for each old row
            assert rows_after[name] == sorted(((*r, None) for r in rows), key=repr), name
        elif name != "counters":
            assert rows_after[name] == rows, name  # every row, every column, unchanged
    ((_, version, _),) = _version_row(v1) or ((None, None, None),)
    assert version == migrations.HEAD


def test_the_session_behind_an_mcp_session_is_the_mcp_service_s(v1: Path) -> None:
    """Step 4: old sessions are the owner's (NULL), except the one behind an MCP
    session, which only the MCP service may use (no function key reaches it)."""
    with _sqlite(v1) as con:
        (runtime_session,) = con.execute("SELECT runtime_session FROM mcp_sessions").fetchone()
        con.execute(
            "INSERT INTO sessions SELECT ?, 'mcp-notes', version, status, uid, workdir, state, state_bytes, created_at, last_used_at, "
            "expires_at, calls, instance_id, closed_at, close_reason FROM sessions WHERE id = 'alice'",
            (runtime_session,),
        )
        con.commit()
    with Store.open(v1) as store:
        assert store.get_session(runtime_session)["principal"] == "mcp"
        assert store.get_session("alice")["principal"] is None
        assert store.get_session("bob")["principal"] is None
        assert len(store.list_sessions()) == 3


def test_a_migrated_database_has_the_schema_of_a_new_one(v1: Path, tmp_path: Path) -> None:
    Store.open(v1).close()
    new = tmp_path / "new.db"
    Store.open(new).close()
    migrated, fresh = _schema(v1), _schema(new)
    assert sorted(migrated) == sorted(fresh) == sorted(TABLES)
    for name in fresh:
        assert migrated[name] == fresh[name], name


def test_reopening_is_a_no_op(v1: Path) -> None:
    Store.open(v1).close()
    stamp, sha = _version_row(v1), _sha(v1)
    with Store.open(v1) as again:
        assert again.migrations_applied == ()
        assert again.schema_version == migrations.HEAD
        assert again.get_session("alice")["status"] == "paused"
    assert _version_row(v1) == stamp
    assert _sha(v1) == sha


def test_a_newer_database_is_refused_and_left_untouched(v1: Path) -> None:
    Store.open(v1).close()
    with _sqlite(v1) as con:
        con.execute("UPDATE schema_version SET version = ?", (migrations.HEAD + 1,))
        con.commit()
        # rollback-journal mode: had the store switched it to WAL before the check, the file's header would change
        assert con.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    sha = _sha(v1)
    with pytest.raises(SchemaTooNew, match=rf"schema version {migrations.HEAD + 1}, newer than this release knows \({migrations.HEAD}\)") as err:
        Store.open(v1)
    assert err.value.kind == "schema_too_new"
    assert isinstance(err.value, SchemaError)
    assert _sha(v1) == sha
    assert not v1.with_name(v1.name + "-wal").exists()
    with _sqlite(v1) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def _explode(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
    conn.execute(text("DROP TABLE sessions"))
    raise RuntimeError("boom")


def test_a_failing_step_rolls_back_to_the_previous_version(v1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(v1)
    steps = (migrations.STEPS[0], migrations.Step(3, "explode", _explode))
    monkeypatch.setattr(migrations, "STEPS", steps)
    with pytest.raises(SchemaError, match=r"step 3 \(explode\) failed: boom; the database is left at schema version 2") as err:
        Store.open(v1)
    assert err.value.details == {"step": 3, "version": 2}
    ((_, version, _),) = _version_row(v1) or ((None, None, None),)
    assert version == 2  # step 2 committed, step 3 rolled back whole
    after = _rows(v1)
    assert "half_done" not in after and "counters" not in after
    assert after["sessions"] == rows["sessions"]

    # the first step failing leaves a v1 database as it was (no schema_version either)
    fresh_copy = v1.with_name("again.db")
    shutil.copyfile(FIXTURE, fresh_copy)
    monkeypatch.setattr(migrations, "STEPS", (migrations.Step(2, "explode", _explode),))
    with pytest.raises(SchemaError, match=r"step 2 \(explode\) failed: boom; the database is left at schema version 1"):
        Store.open(fresh_copy)
    assert _version_row(fresh_copy) is None
    assert _rows(fresh_copy) == rows

    # with the real steps the database then migrates to the head
    monkeypatch.undo()
    with Store.open(v1) as store:
        assert store.migrations_applied == tuple(range(3, migrations.HEAD + 1))
        assert store.schema_version == migrations.HEAD


def test_a_new_database_gets_the_head_stamped(tmp_path: Path) -> None:
    path = tmp_path / "new" / "functionai.db"
    with Store.open(path) as store:
        assert store.schema_version == migrations.HEAD
        assert store.migrations_applied == ()
    ((one, version, _),) = _version_row(path) or ((None, None, None),)
    assert (one, version) == (1, migrations.HEAD)
    assert set(_counts(path)) == set(TABLES)
    with Store("sqlite://") as memory:
        assert memory.schema_version == migrations.HEAD


def test_steps_must_be_numbered_in_order(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a.db") as store, pytest.raises(ValueError, match="numbered"):
        migrations.upgrade(store.engine, [migrations.Step(3, "skips 2", lambda conn: None)])


@pytest.mark.asyncio
async def test_a_runtime_resumes_a_v1_database(v1: Path) -> None:
    # Session workdirs are stored as absolute paths in the state dir the old
    # release ran in (a temporary one, gone); put this copy back "in place":
    # its workdirs under the new state dir, alice's as the old runtime left it.
    with _sqlite(v1) as con:
        (old,) = con.execute("SELECT workdir FROM sessions WHERE id = 'alice'").fetchone()
        old_state = str(Path(old).parents[2])
        con.execute("UPDATE sessions SET workdir = ? || substr(workdir, ?)", (str(v1.parent), len(old_state) + 1))
        # and in time: as if the old release had stopped just now (its sessions
        # live at most 24 h, and the fixture was made on 2026-12-06)
        (last,) = con.execute("SELECT max(last_used_at) FROM sessions").fetchone()
        shift = time.time() - last
        con.execute(
            "UPDATE sessions SET created_at = created_at + ?, last_used_at = last_used_at + ?, expires_at = expires_at + ?, "
            "closed_at = closed_at + ?",
            (shift, shift, shift, shift),
        )
        con.commit()
        (uid,) = con.execute("SELECT uid FROM sessions WHERE id = 'alice'").fetchone()
    make_workdir(str(v1.parent / "sessions" / "alice"), uid)
    async with Runtime.open(v1.parent) as rt:
        assert rt.store.schema_version == migrations.HEAD
        assert {f["name"] for f in rt.store.list_functions()} >= {"memory", "echo"}
        assert rt.store.get_session("alice")["status"] == "paused"
        result = await rt.invoke("memory", {"note": "x"}, session="alice")
        assert result.value == {"notes": ["alice-1", "alice-2", "alice-task", "x"]}
        assert [v["version"] for v in rt.store.list_versions("memory")] == [1, 2]
        assert len(rt.store.list_tasks(state="succeeded")) == 3
        assert [r["name"] for r in rt.store.list_runs()] == ["fixture-run"]
