"""The store's one write path: acknowledged means committed, writes queued
together commit together, one bad write fails only itself, deferred writes are
retried and then reported, and nothing is dropped silently."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from jupyter_functionai.errors import NotFound
from jupyter_functionai.store import Store
from jupyter_functionai.store.writer import DEFER_ATTEMPTS

pytestmark = pytest.mark.asyncio


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "db.sqlite")
    yield s
    s.close()


def _raw_count(path: Path, function: str) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute("SELECT count(*) FROM function_keys WHERE function = ?", (function,)).fetchone()[0])
    finally:
        con.close()


async def test_an_acknowledged_write_is_committed(store: Store, tmp_path: Path) -> None:
    await store.writer.write(store.create_key, "f", "note")
    # another connection (another process would see the same) finds it at once
    assert _raw_count(tmp_path / "db.sqlite", "f") == 1


async def test_writes_queued_together_commit_in_one_transaction(store: Store, tmp_path: Path) -> None:
    gate, entered = threading.Event(), threading.Event()

    def hold() -> None:  # keeps the writer thread busy while the others queue
        entered.set()
        gate.wait(10)

    first = asyncio.ensure_future(store.writer.write(hold))
    await asyncio.to_thread(entered.wait, 10)
    before = store.writer.batches
    writes = [asyncio.ensure_future(store.writer.write(store.create_key, "g", str(i))) for i in range(50)]
    await asyncio.sleep(0)
    gate.set()
    await first
    await asyncio.gather(*writes)
    assert _raw_count(tmp_path / "db.sqlite", "g") == 50
    assert store.writer.batches - before <= 2, "50 writes queued behind one another commit together"


async def test_one_bad_write_fails_only_itself(store: Store, tmp_path: Path) -> None:
    gate, entered = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(10)

    def bad() -> None:
        store.create_key("h", "goes with the batch")  # written, then undone with it
        raise RuntimeError("disk on fire")

    first = asyncio.ensure_future(store.writer.write(hold))
    await asyncio.to_thread(entered.wait, 10)
    good1 = asyncio.ensure_future(store.writer.write(store.create_key, "h", "1"))
    evil = asyncio.ensure_future(store.writer.write(bad))
    good2 = asyncio.ensure_future(store.writer.write(store.create_key, "h", "2"))
    gate.set()
    await first
    await asyncio.gather(good1, good2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await evil
    con = sqlite3.connect(tmp_path / "db.sqlite")
    notes = sorted(r[0] for r in con.execute("SELECT note FROM function_keys WHERE function = 'h'"))
    con.close()
    assert notes == ["1", "2"], "the others committed; the bad write's own rows were rolled back"
    health = store.writer.health()
    assert health["status"] == "degraded" and health["failed"] == 1 and "disk on fire" in health["last_error"]


async def test_a_deferred_write_is_retried_then_reported(store: Store, tmp_path: Path) -> None:
    tries = []

    def flaky() -> None:
        tries.append(1)
        if len(tries) < 2:
            raise RuntimeError("busy")
        store.create_key("k", "after a retry")

    def hopeless() -> None:
        raise RuntimeError("never")

    store.writer.defer(flaky)
    store.writer.defer(hopeless)
    store.writer.defer(store.create_key, "k", "plain")
    await store.writer.flush()
    assert _raw_count(tmp_path / "db.sqlite", "k") == 2
    h = store.writer.health()
    assert len(tries) == 2 and h["retried"] == 1 + (DEFER_ATTEMPTS - 1) and h["failed"] == 1 and "never" in h["last_error"]


async def test_a_refusal_is_an_answer_not_a_failure(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.writer.write(store.revoke_key, "nope")
    assert store.writer.health()["status"] == "ok"


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "db.sqlite")
    for i in range(20):
        s.writer.defer(s.create_key, "c", str(i))
    s.close()
    assert _raw_count(tmp_path / "db.sqlite", "c") == 20
