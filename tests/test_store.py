"""The SQLAlchemy Core store: functions, sessions, instances, timings, logs."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai.errors import Conflict, InvalidArgument, NotFound
from jupyter_functionai.store import Store


class FakeClock:
    """A deterministic clock: every reading is one second after the previous."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "functionai.sqlite"


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store.open(db_path, clock=clock)
    yield s
    s.close()


@pytest.fixture
def reopen(db_path: Path) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []

    def _open() -> Store:
        s = Store.open(db_path)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


SPEC = {"name": "echo", "handler": "handler", "resources": {"cpu": 1.0}}


# --------------------------------------------------------------------------- engine


def test_open_creates_parent_dirs_and_uses_wal(store: Store, db_path: Path) -> None:
    assert db_path.exists()
    assert store.url.startswith("sqlite:///")
    assert store.url.endswith("functionai.sqlite")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: an fsync per commit (durable task transitions)


def test_indexes_exist(store: Store) -> None:
    with store.engine.connect() as conn:
        names = {
            r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='index'")
        }
    for expected in (
        "ix_sessions_function",
        "ix_sessions_status",
        "ix_instances_function",
        "ix_instances_status",
        "ix_instances_session_id",
        "ix_invocations_function",
        "ix_invocations_session_id",
        "ix_coldstarts_function",
        "ix_tasks_seq",
    ):
        assert expected in names


def test_in_memory_url_works() -> None:
    with Store("sqlite://") as s:
        assert s.deploy("f", {}, None)["version"] == 1
        assert s.get_function("f")["version"] == 1


# --------------------------------------------------------------------------- functions


def test_deploy_increments_versions(store: Store) -> None:
    v1 = store.deploy("echo", SPEC, "def handler(e, c):\n    return 1\n")
    assert v1["version"] == 1
    assert v1["active"] is True
    assert v1["spec"] == SPEC
    assert v1["source"].startswith("def handler")
    assert len(v1["digest"]) == 64
    v2 = store.deploy("echo", {**SPEC, "timeout_s": 5.0}, "def handler(e, c):\n    return 2\n")
    assert v2["version"] == 2
    assert v2["digest"] != v1["digest"]
    assert v2["created_at"] > v1["created_at"]
    assert store.get_function("echo") == v2
    assert store.get_function("echo", 1) == {**v1, "active": False}


def test_digest_is_sha256_of_source_and_spec(store: Store) -> None:
    row = store.deploy("a", {"x": 1}, "src")
    spec_json = json.dumps({"x": 1}, sort_keys=True, separators=(",", ":"))
    assert row["digest"] == hashlib.sha256(b"src\0" + spec_json.encode()).hexdigest()
    # Same content, same digest (whatever the key order); other content, other digest.
    other = store.deploy("b", {"y": 2, "x": 1}, "src")
    assert other["digest"] == store.deploy("d", {"x": 1, "y": 2}, "src")["digest"]
    other = store.deploy("e", {"x": 1}, "src")
    assert other["digest"] == row["digest"]
    assert store.deploy("c", {"x": 1}, None)["digest"] != row["digest"]


def test_rollback_switches_active_version(store: Store) -> None:
    for i in range(3):
        store.deploy("echo", {**SPEC, "n": i}, f"# v{i + 1}")
    back = store.rollback("echo", 1)
    assert back["version"] == 1 and back["active"] is True
    assert store.get_function("echo")["source"] == "# v1"
    versions = store.list_versions("echo")
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert [v["active"] for v in versions] == [True, False, False]
    listed = store.list_functions()
    assert listed[0]["active_version"] == 1
    assert listed[0]["latest_version"] == 3
    # The next deploy continues after the latest, not after the active one.
    assert store.deploy("echo", SPEC, "# v4")["version"] == 4
    assert store.get_function("echo")["version"] == 4


def test_not_found_messages(store: Store) -> None:
    with pytest.raises(NotFound, match=r"^function 'ghost' not found$"):
        store.get_function("ghost")
    store.deploy("echo", SPEC, None)
    with pytest.raises(NotFound, match=r"^function 'echo' has no version 7$"):
        store.get_function("echo", 7)
    with pytest.raises(NotFound, match=r"^function 'echo' has no version 9$"):
        store.rollback("echo", 9)
    with pytest.raises(NotFound, match="'ghost' not found"):
        store.rollback("ghost", 1)
    with pytest.raises(NotFound, match="'ghost' not found"):
        store.list_versions("ghost")
    with pytest.raises(NotFound, match="'ghost' not found"):
        store.delete_function("ghost")
    with pytest.raises(NotFound, match="session 'nope' not found"):
        store.get_session("nope")
    with pytest.raises(NotFound, match="session 'nope' not found"):
        store.update_session("nope", status="active")
    with pytest.raises(NotFound, match="instance 'nope' not found"):
        store.update_instance("nope", status="stopped")
    assert store.get_function("echo")["version"] == 1  # the failed rollback changed nothing


def test_list_functions_sorted_by_name(store: Store) -> None:
    for name in ("zeta", "alpha", "Mid"):
        store.deploy(name, {}, None)
    store.deploy("alpha", {}, None)
    listed = store.list_functions()
    assert [f["name"] for f in listed] == sorted(["zeta", "alpha", "Mid"])
    alpha = next(f for f in listed if f["name"] == "alpha")
    assert alpha["active_version"] == alpha["latest_version"] == 2
    assert alpha["updated_at"] > alpha["created_at"]
    assert set(alpha) == {"name", "active_version", "latest_version", "created_at", "updated_at"}


def test_delete_function_keeps_history_rows(store: Store) -> None:
    store.deploy("echo", SPEC, None)
    store.deploy("echo", SPEC, None)
    store.create_session("s1", "echo", 2, None, "/w", 9e9)
    store.add_instance("i1", "echo", 2, "process", "full", 1, {}, "s1", 1.0)
    store.add_coldstart("i1", "echo", 2, "full", 1.0, 2.0)
    store.log_invocations([_inv(1, function="echo", version=2)])
    store.delete_function("echo")
    assert store.list_functions() == []
    with pytest.raises(NotFound):
        store.get_function("echo")
    assert store.get_session("s1")["function"] == "echo"
    assert [i["function"] for i in store.list_instances()] == ["echo"]
    assert len(store.list_coldstarts("echo")) == 1
    assert len(store.list_invocations("echo")) == 1
    # A redeploy starts again at version 1.
    assert store.deploy("echo", SPEC, None)["version"] == 1


def test_deploy_rejects_non_json_spec(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="not JSON-serialisable"):
        store.deploy("echo", {"x": object()}, None)
    assert store.list_functions() == []


def test_functions_survive_reopen(store: Store, reopen: Callable[[], Store]) -> None:
    store.deploy("echo", SPEC, "src")
    store.deploy("echo", SPEC, "src2")
    store.rollback("echo", 1)
    again = reopen()
    assert again.get_function("echo")["source"] == "src"
    assert again.deploy("echo", SPEC, "src3")["version"] == 3


# --------------------------------------------------------------------------- sessions


def test_create_and_get_session(store: Store, clock: FakeClock) -> None:
    row = store.create_session("s1", "echo", 1, 20001, "/tmp/s1", 5000.0)
    assert row == {
        "id": "s1",
        "function": "echo",
        "version": 1,
        "status": "new",
        "uid": 20001,
        "workdir": "/tmp/s1",
        "state": {},
        "state_bytes": 0,
        "created_at": clock.now,
        "last_used_at": clock.now,
        "expires_at": 5000.0,
        "calls": 0,
        "instance_id": None,
        "closed_at": None,
        "close_reason": None,
        "principal": None,
    }
    assert store.get_session("s1") == row
    keyed = store.create_session("s2", "echo", 1, None, "/tmp/s2", 5000.0, principal="key:abc")
    assert keyed["principal"] == store.get_session("s2")["principal"] == "key:abc"


def test_duplicate_session_is_conflict(store: Store) -> None:
    store.create_session("s1", "echo", 1, None, "/w", 1.0)
    with pytest.raises(Conflict, match="s1"):
        store.create_session("s1", "other", 2, None, "/w2", 1.0)
    assert store.get_session("s1")["function"] == "echo"


def test_session_state_round_trip_and_bytes(store: Store) -> None:
    store.create_session("s1", "echo", 1, None, "/w", 1.0)
    state = {"history": [{"role": "user", "content": "héllo"}], "n": 3, "ok": True, "x": None}
    store.update_session("s1", state=state, status="active", calls=4, last_used_at=77.0)
    row = store.get_session("s1")
    assert row["state"] == state
    encoded = json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert row["state_bytes"] == len(encoded)
    assert (row["status"], row["calls"], row["last_used_at"]) == ("active", 4, 77.0)
    store.update_session("s1", state={})
    assert store.get_session("s1")["state_bytes"] == 2
    store.update_session(
        "s1", status="closed", closed_at=99.0, close_reason="idle", instance_id="i9", version=2
    )
    row = store.get_session("s1")
    assert (row["status"], row["closed_at"], row["close_reason"]) == ("closed", 99.0, "idle")
    assert (row["instance_id"], row["version"]) == ("i9", 2)


def test_touch_sessions_updates_many_sessions_in_one_call_and_nothing_else(store: Store) -> None:
    """The group commit's bookkeeping: each session's last use and call
    count, in one statement; other fields stay, an id with no row is skipped."""
    for sid in ("t1", "t2", "t3"):
        store.create_session(sid, "echo", 1, None, f"/w/{sid}", 1.0)
    store.update_session("t2", state={"keep": 1}, status="live")
    store.touch_sessions([("t1", 10.5, 3), ("t2", 20.25, 7), ("gone", 30.0, 1)])
    rows = {sid: store.get_session(sid) for sid in ("t1", "t2", "t3")}
    assert (rows["t1"]["last_used_at"], rows["t1"]["calls"]) == (10.5, 3)
    assert (rows["t2"]["last_used_at"], rows["t2"]["calls"]) == (20.25, 7)
    assert rows["t2"]["state"] == {"keep": 1} and rows["t2"]["status"] == "live"
    assert rows["t3"]["calls"] == 0 and rows["t3"]["last_used_at"] != 10.5
    with pytest.raises(NotFound):
        store.get_session("gone")
    store.touch_sessions([])  # nothing to write: no statement


def test_update_session_rejects_unknown_fields(store: Store) -> None:
    store.create_session("s1", "echo", 1, None, "/w", 1.0)
    with pytest.raises(ValueError, match="workdir"):
        store.update_session("s1", workdir="/elsewhere")
    with pytest.raises(ValueError, match="state_bytes"):
        store.update_session("s1", state_bytes=5)
    with pytest.raises(InvalidArgument):
        store.update_session("s1", state={"f": object()})
    assert store.get_session("s1")["workdir"] == "/w"


def test_list_sessions_newest_first_and_filters(store: Store) -> None:
    store.create_session("a", "f1", 1, None, "/a", 1.0)
    store.create_session("b", "f2", 1, None, "/b", 1.0)
    store.create_session("c", "f1", 1, None, "/c", 1.0)
    store.update_session("a", status="closed")
    store.update_session("b", status="active")
    assert [s["id"] for s in store.list_sessions()] == ["c", "b", "a"]
    assert [s["id"] for s in store.list_sessions(function="f1")] == ["c", "a"]
    assert [s["id"] for s in store.list_sessions(status="closed")] == ["a"]
    assert [s["id"] for s in store.list_sessions(status=["new", "active"])] == ["c", "b"]
    assert [s["id"] for s in store.list_sessions("f1", {"new", "closed"})] == ["c", "a"]
    assert store.list_sessions(function="nobody") == []


# --------------------------------------------------------------------------- instances


def _instance(store: Store, id: str) -> dict[str, Any]:
    return next(i for i in store.list_instances() if i["id"] == id)


def test_instances(store: Store) -> None:
    iso = {"pid": True, "net": False, "uid": 20001}
    store.add_instance("i1", "echo", 1, "process", "template-fork", 4242, iso, "s1", 10.0)
    store.add_instance("i2", "echo", 1, "process", "full", None, {}, None, 12.0)
    store.add_instance("i3", "other", 2, "ray", "warm-pool", 7, {}, None, 11.0)
    row = _instance(store, "i1")
    assert row == {
        "id": "i1",
        "function": "echo",
        "version": 1,
        "backend": "process",
        "path": "template-fork",
        "pid": 4242,
        "isolation": iso,
        "session_id": "s1",
        "status": "running",
        "started_at": 10.0,
        "stopped_at": None,
        "exit_reason": None,
    }
    assert [i["id"] for i in store.list_instances()] == ["i2", "i3", "i1"]
    assert [i["id"] for i in store.list_instances(function="echo")] == ["i2", "i1"]
    store.update_instance("i1", status="stopped", stopped_at=20.0, exit_reason="idle", pid=None)
    store.update_instance("i2", isolation={"mount": True}, session_id="s2")
    assert [i["id"] for i in store.list_instances(status="running")] == ["i2", "i3"]
    assert [i["id"] for i in store.list_instances("echo", "stopped")] == ["i1"]
    stopped = _instance(store, "i1")
    assert (stopped["status"], stopped["stopped_at"], stopped["exit_reason"]) == (
        "stopped",
        20.0,
        "idle",
    )
    assert stopped["pid"] is None
    assert _instance(store, "i2")["isolation"] == {"mount": True}
    assert _instance(store, "i2")["session_id"] == "s2"
    with pytest.raises(ValueError, match="backend"):
        store.update_instance("i1", backend="docker")
    with pytest.raises(Conflict):
        store.add_instance("i1", "echo", 1, "process", "full", None, {}, None, 1.0)


# --------------------------------------------------------------------------- cold starts


def test_coldstarts(store: Store, clock: FakeClock) -> None:
    store.add_coldstart("i1", "echo", 1, "full", 50.0, 120.0, at=100.0)
    store.add_coldstart("i2", "echo", 1, "template-fork", 2.5, 0.5, session_id="s2", at=300.0)
    store.add_coldstart("i3", "other", 1, "warm-pool", 0.1, 0.0, first_call_ms=1.0, at=200.0)
    store.add_coldstart("i4", "other", 1, "full", 1.0, 1.0)  # at defaults to the clock
    rows = store.list_coldstarts()
    assert [r["instance_id"] for r in rows] == ["i4", "i2", "i3", "i1"]
    assert rows[0]["at"] == clock.now
    assert set(rows[0]) == {
        "instance_id",
        "function",
        "version",
        "path",
        "spawn_ms",
        "init_ms",
        "first_call_ms",
        "session_id",
        "at",
    }
    assert [r["instance_id"] for r in store.list_coldstarts("echo")] == ["i2", "i1"]
    assert [r["instance_id"] for r in store.list_coldstarts(limit=2)] == ["i4", "i2"]

    assert store.coldstart_of("i3") == {"path": "warm-pool", "spawn_ms": 0.1, "init_ms": 0.0, "first_call_ms": 1.0}
    assert store.coldstart_of("i1") == {"path": "full", "spawn_ms": 50.0, "init_ms": 120.0, "first_call_ms": None}
    assert store.coldstart_of("i9") is None


# --------------------------------------------------------------------------- invocations


def _inv(i: int, **over: Any) -> dict[str, Any]:
    row = {
        "id": f"call-{i}",
        "function": "echo",
        "version": 1,
        "session_id": "s1" if i % 2 else "s2",
        "instance_id": "i1",
        "started_at": 1000.0 + i,
        "duration_ms": 1.5 * i,
        "outcome": "ok",
        "error_kind": None,
        "bytes_in": 10 * i,
        "bytes_out": 20 * i,
        "logs": f"log {i}\n",
    }
    row.update(over)
    return row


def test_log_invocations_and_list(store: Store) -> None:
    store.log_invocations([_inv(1)])
    store.log_invocations([{k: v for k, v in _inv(2, outcome="error").items() if k != "logs"}])
    store.log_invocations([_inv(3, function="other", error_kind="timeout", outcome="error")])
    rows = store.list_invocations()
    assert [r["id"] for r in rows] == ["call-3", "call-2", "call-1"]
    assert rows[2] == {**_inv(1)}
    assert rows[1]["logs"] == ""
    assert [r["id"] for r in store.list_invocations(function="echo")] == ["call-2", "call-1"]
    assert [r["id"] for r in store.list_invocations(session_id="s1")] == ["call-3", "call-1"]
    assert [r["id"] for r in store.list_invocations("echo", "s1")] == ["call-1"]
    assert [r["id"] for r in store.list_invocations(limit=1)] == ["call-3"]
    with pytest.raises(Conflict):
        store.log_invocations([_inv(1)])


def test_log_invocations_batch(store: Store) -> None:
    rows = [_inv(i) for i in range(50)]
    del rows[7]["logs"]  # logs is optional
    store.log_invocations(rows)
    listed = store.list_invocations(limit=1000)
    assert len(listed) == 50
    assert [r["id"] for r in listed] == [f"call-{i}" for i in reversed(range(50))]
    assert next(r for r in listed if r["id"] == "call-7")["logs"] == ""
    assert listed[0] == _inv(49)
    store.log_invocations([])  # no-op
    with pytest.raises(ValueError, match="outcome"):
        store.log_invocations([{k: v for k, v in _inv(99).items() if k != "outcome"}])
    with pytest.raises(ValueError, match="colour"):
        store.log_invocations([_inv(98, colour="red")])
    # A batch is one transaction: a duplicate id rolls the whole batch back.
    with pytest.raises(Conflict):
        store.log_invocations([_inv(100), _inv(0)])
    assert len(store.list_invocations(limit=1000)) == 50


# --------------------------------------------------------------------------- threads


def test_concurrent_writers(db_path: Path) -> None:
    a = Store.open(db_path)
    b = Store.open(db_path)  # a second engine: like a second process
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def deployer(s: Store, tag: str) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(20):
                s.deploy("shared", {"tag": tag, "i": i}, None)
                s.create_session(f"{tag}-{i}", "shared", 1, (0 if tag == "da" else 100) + i, "/w", 1.0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def logger(s: Store, tag: str) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(20):
                s.log_invocations([_inv(j, id=f"{tag}-{i}-{j}") for j in range(5)])
                s.update_session(f"{tag}-seed", calls=i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        a.create_session("la-seed", "shared", 1, None, "/w", 1.0)
        a.create_session("lb-seed", "shared", 1, None, "/w", 1.0)
        threads = [
            threading.Thread(target=deployer, args=(a, "da")),
            threading.Thread(target=deployer, args=(b, "db")),
            threading.Thread(target=logger, args=(a, "la")),
            threading.Thread(target=logger, args=(b, "lb")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        versions = a.list_versions("shared")
        assert [v["version"] for v in versions] == list(range(1, 41))
        assert len(a.list_invocations(limit=10_000)) == 2 * 20 * 5
        uids = [s["uid"] for s in a.list_sessions() if s["uid"] is not None]
        assert len(uids) == 40
        assert len(set(uids)) == 40  # every session row landed
        assert a.get_session("la-seed")["calls"] == 19
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- runs


def _task(id: str, seq: int, state: str = "succeeded", finished_at: float | None = 10.0) -> dict[str, Any]:
    return {"id": id, "seq": seq, "function": "notebook-run", "event": "{}", "state": state, "attempts": 1, "options": "{}",
            "created_at": 1.0, "run_after": 1.0, "finished_at": finished_at}


def test_deleting_and_pruning_runs_take_their_task_and_attempts(store: Store) -> None:
    for i, state in enumerate(("succeeded", "failed", "running"), start=1):
        store.insert_run(_task(f"t{i}", i, state, None if state == "running" else 10.0), {"id": f"t{i}", "notebook": "a.ipynb", "tags": ["x"], "created_at": 1.0})
        store.write_tasks([("attempt_new", {"task_id": f"t{i}", "attempt": 1, "started_at": 1.0})])
    assert [r["id"] for r in store.list_runs()] == ["t3", "t2", "t1"]
    store.delete_run("t1")
    assert [r["id"] for r in store.list_runs()] == ["t3", "t2"]
    with pytest.raises(NotFound):
        store.get_task("t1")
    assert store.prune_tasks({}, other=20.0) == 1  # t2 finished before the cut; t3 still runs
    assert [r["id"] for r in store.list_runs()] == ["t3"]
    assert store.get_run("t2") is None
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT task_id FROM task_attempts").fetchall() == [("t3",)]


def test_usage_rows_add_to_their_minute_and_survive_reopen(store: Store, reopen: Callable[[], Store]) -> None:
    """The meter hands the ledger (instance, minute) rows every few seconds: a
    row for a minute already written adds to it, a new minute or instance
    makes a new row, in one statement for the whole batch."""
    base = {"function": "f", "session_id": "s", "cpu_s": 1.0, "mem_gib_s": 0.5, "active_s": 2.0}
    assert store.add_usage([{**base, "instance_id": "i1", "start": 60.0}, {**base, "instance_id": "i2", "start": 60.0}]) == 2
    assert store.add_usage([{**base, "instance_id": "i1", "start": 60.0, "idle_s": 3.0}, {**base, "instance_id": "i1", "start": 120.0}]) == 2
    assert store.add_usage([]) == 0
    again = reopen()
    rows = {(r["start"], r["session"]): r for r in again.usage(step=60, by="session")}
    first = rows[(60.0, "s")]
    assert first["cpu_s"] == pytest.approx(3.0) and first["active_s"] == pytest.approx(6.0) and first["idle_s"] == pytest.approx(3.0)
    assert rows[(120.0, "s")]["cpu_s"] == pytest.approx(1.0) and rows[(120.0, "s")]["idle_s"] == 0.0
