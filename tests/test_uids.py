"""Session uids are leased host-wide: two runtimes on one host (two data dirs,
the same uid range) never hand out the same uid, a released uid waits out its
quarantine, and a paused session whose uid another runtime took meanwhile
resumes on a new uid with its files and state."""

from __future__ import annotations

import os

import pytest

from jupyter_functionai import Runtime
from jupyter_functionai.runtime.sessions import UidAllocator

from .conftest import deploy

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="per-session uids need root on this machine")

KEEPER = '''
import os
def handler(event, ctx):
    path = os.path.join(ctx.workdir, "notes.txt")
    if event.get("note"):
        with open(path, "a") as f:
            f.write(event["note"] + "\\n")
        ctx.session.state.setdefault("notes", []).append(event["note"])
    text = open(path).read() if os.path.exists(path) else ""
    return {"uid": os.getuid(), "file": text.split(), "state": ctx.session.state.get("notes", [])}
'''


@needs_root
@pytest.mark.asyncio
async def test_two_runtimes_never_share_a_uid(tmp_path) -> None:
    async with Runtime.open(tmp_path / "a") as a, Runtime.open(tmp_path / "b") as b:
        await deploy(a, "k", KEEPER)
        await deploy(b, "k", KEEPER)
        seen_a = {(await a.invoke("k", {}, session=f"a{i}")).value["uid"] for i in range(6)}
        seen_b = {(await b.invoke("k", {}, session=f"b{i}")).value["uid"] for i in range(6)}
        assert len(seen_a) == 6 and len(seen_b) == 6
        assert not seen_a & seen_b, f"shared uids: {sorted(seen_a & seen_b)}"


@needs_root
def test_a_released_uid_waits_out_its_quarantine(tmp_path) -> None:
    one = UidAllocator(910_000, 3, set(), lease_dir=str(tmp_path), quarantine_s=3600)
    other = UidAllocator(910_000, 3, set(), lease_dir=str(tmp_path), quarantine_s=3600)
    got = {one.allocate() for _ in range(2)}
    third = other.allocate()
    assert third not in got  # held by the first: the second allocator skips them
    first = sorted(got)[0]
    one.release(first)
    with pytest.raises(Exception, match="no free session uid"):
        other.allocate()  # the released one is in quarantine, the rest are held
    assert not other.claim(sorted(got)[1])  # still held by the first
    one.close()
    other.close()


@needs_root
@pytest.mark.asyncio
async def test_a_paused_session_whose_uid_was_taken_moves_to_a_new_one(tmp_path) -> None:
    state = tmp_path / "state"
    async with Runtime.open(state) as rt:
        await deploy(rt, "k", KEEPER)
        old = (await rt.invoke("k", {"note": "one"}, session="moving")).value["uid"]
    # the runtime stopped (its leases dropped); another one on the host takes that uid
    thief = UidAllocator(old, 1, set())
    assert thief.claim(old)
    try:
        async with Runtime.open(state) as rt:
            r = (await rt.invoke("k", {"note": "two"}, session="moving")).value
            assert r["uid"] != old and r["file"] == ["one", "two"] and r["state"] == ["one", "two"]
            assert (await rt.describe_session("moving"))["uid"] == r["uid"]
    finally:
        thief.close()
