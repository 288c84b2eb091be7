"""The template's pages a call writes, learned once and written ahead in each
standby (``sandbox.pages``): what the probe reports is checked before any
standby acts on it, each instance's copies are its own (a write in one
session is never seen by another, nor by the template), and a probe that
fails leaves instances serving as before."""

from __future__ import annotations

import asyncio
import glob
import os
import sys

import pytest

from jupyter_functionai import FunctionSpec, Runtime
from jupyter_functionai.sandbox import pages

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/pagemap is Linux's")

P = pages.PAGE

MAPS = """\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000101000 r--p 00000000 08:01 42                         /usr/lib/libc.so.6
7f0000101000-7f0000103000 rw-p 00001000 08:01 42                         /usr/lib/libc.so.6
7f0000200000-7f0000300000 rw-s 00000000 00:05 7                          /dev/shm/x
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
7ffc00100000-7ffc00102000 r-xp 00000000 00:00 0                          [vdso]
"""


def test_regions_are_the_private_writable_mappings_a_fork_shares() -> None:
    assert pages.private_writable_regions(MAPS) == [
        (0x55D0C0000000, 0x55D0C0021000),  # the heap
        (0x7F0000000000, 0x7F0000100000),  # anonymous memory
        (0x7F0000101000, 0x7F0000103000),  # a library's data
    ]  # not read-only, shared, the stack or the kernel's pages


def test_written_pages_are_those_shared_before_and_own_after() -> None:
    before = {0: 0, P: 0, 2 * P: 0, 3 * P: 1, 5 * P: 0}
    after = {0: 1, P: 1, 2 * P: 0, 3 * P: 1, 4 * P: 1, 5 * P: 1}
    # 3P was own already (not this call's), 4P is new memory (nothing to copy)
    assert pages.written(before, after) == [(0, 2 * P), (5 * P, 6 * P)]


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"ranges": []}, "not a list"),
        ([[0, P, 2]], "pair"),
        ([[0.0, P]], "pair"),
        ([[True, P]], "pair"),
        ([[1, P + 1]], "page-aligned"),
        ([[2 * P, P]], "page-aligned"),
        ([[0x10, 0x10]], "page-aligned"),
        ([[0x1000 * P, 0x1001 * P]], "outside"),  # not the template's memory
        ([[0x7F0000000000 - P, 0x7F0000000000 + P]], "outside"),  # straddles a region's start
    ],
)
def test_a_probe_answer_is_checked_before_any_standby_uses_it(bad: object, why: str) -> None:
    regions = pages.private_writable_regions(MAPS)
    with pytest.raises(ValueError, match=why):
        pages.check_ranges(bad, regions)


def test_a_probe_answer_is_bounded() -> None:
    lo = 0x100000 * P
    regions = [(lo, lo + (pages.MAX_PAGES + 1) * P)]
    assert pages.check_ranges([[lo, lo + pages.MAX_PAGES * P]], regions) == [(lo, lo + pages.MAX_PAGES * P)]
    with pytest.raises(ValueError, match="more than"):
        pages.check_ranges([[lo, lo + pages.MAX_PAGES * P], [lo + pages.MAX_PAGES * P, lo + (pages.MAX_PAGES + 1) * P]], regions)


def test_populating_writes_copies_with_the_same_content_in_a_fork() -> None:
    """In a real fork: the copies taken ahead hold what the parent's pages
    held, and are the child's own (the parent's stay as they were)."""
    import ctypes

    buf = bytearray(b"\x07" * (16 * P))
    data = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    lo, hi = (data + P - 1) // P * P, (data + len(buf)) // P * P
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            regions = pages.private_writable_regions()
            before = pages.page_flags(regions)
            done, why = pages.populate_write([(lo, hi)])
            own = pages.written(before, pages.page_flags(regions))
            ok = done == (hi - lo) // P and not why and all(any(a <= p < b for a, b in own) for p in range(lo, hi, P))
            ok = ok and bytes(buf) == b"\x07" * (16 * P)
            buf[P : P + 1] = b"\x09"
            os.write(wfd, b"1" if ok else f"0 {done} {why!r} {own}".encode())
        finally:
            os._exit(0)
    os.close(wfd)
    got = os.read(rfd, 4096)
    os.close(rfd)
    os.waitpid(pid, 0)
    assert got == b"1", got
    assert bytes(buf) == b"\x07" * (16 * P)  # the child's write stayed its own


WARMED = """\
import os
PAGE = os.sysconf("SC_PAGE_SIZE")
buf = bytearray(256 * PAGE)   # 1 MiB the warmup writes: pages a call writes


def warmup():
    for i in range(0, len(buf), PAGE):
        buf[i] = 1


def data_pages():
    # where buf's data lies: its whole pages (finding it touches none of them)
    import ctypes
    data = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    lo = (data + PAGE - 1) // PAGE * PAGE
    return lo, (data + len(buf) - lo) // PAGE


def handler(event, ctx):
    if event["op"] == "where":
        return data_pages()
    if event["op"] == "write":
        for i in range(0, len(buf), PAGE):
            buf[i] = event["value"]
    return {"pid": os.getpid(), "seen": sorted(set(buf[i] for i in range(0, len(buf), PAGE)))}
"""


def _own_pages(pid: int, lo: int, n: int) -> int:
    """How many of the ``n`` pages from ``lo`` are process ``pid``'s own."""
    import struct

    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        raw = os.pread(f.fileno(), n * 8, lo // P * 8)
    return sum(1 for (e,) in struct.iter_unpack("<Q", raw) if e >> 63 and (e >> 56) & 1)


async def _learned(rt: Runtime, name: str) -> str:
    """The template's log once its probe has answered (or a minute passed)."""
    deadline = asyncio.get_running_loop().time() + 60
    log = _template_log(rt, name)
    while "functionai template:" not in log and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        log = _template_log(rt, name)
    return log


def _template_log(rt: Runtime, name: str) -> str:
    logs = glob.glob(os.path.join(rt.backend.log_dir, f"template-{name}-v*.log"))  # type: ignore[attr-defined]
    out = ""
    for path in logs:
        with open(path) as f:
            out += f.read()
    return out


@pytest.mark.asyncio
async def test_standbys_hold_their_own_copies_of_what_a_call_writes(rt: Runtime) -> None:
    """The template learns the pages its warmup writes; each later instance
    starts in a standby that took its own copies ahead ("pages" in its
    report, and they are its own memory before any call).  Copies are per
    instance: what one session writes there no other session sees."""
    await rt.deploy(FunctionSpec.from_code("warmed", WARMED, warmup="warmup"))
    first = (await rt.invoke("warmed", {"op": "read"}, session="s0")).value
    assert first["seen"] == [1]  # (the template ran the warmup before forking)
    await _learned(rt, "warmed")  # (standbys are forked once the template knows the pages)
    reports, own = [], []
    for i in range(1, 5):
        lo, n = (await rt.invoke("warmed", {"op": "where"}, session=f"s{i}")).value  # its first call
        desc = await rt.describe_session(f"s{i}")
        reports.append(desc["instance"]["isolation"]["ahead"])
        if os.geteuid() == 0:  # (another uid's pagemap is root's to read)
            own.append(_own_pages(desc["instance"]["pid"], lo, n))
    with_pages = [i for i, ahead in enumerate(reports) if "pages" in ahead]
    assert with_pages, (reports, _template_log(rt, "warmed"))
    assert "writes" in _template_log(rt, "warmed")
    for ahead in reports:
        assert ("process" in ahead) == ("pages" in ahead), reports  # every standby holds them
    for i, mine in enumerate(own):
        if "pages" in reports[i]:  # the 1 MiB the warmup writes: its own before any call touched it
            assert mine >= 250, (own, reports)
        else:  # (forked on request: no standby was ready): still shared
            assert mine <= 1, (own, reports)
    # session s1 writes its copy; nobody else sees it, and the template's stays as it was
    assert (await rt.invoke("warmed", {"op": "write", "value": 42}, session="s1")).value["seen"] == [42]
    for i in (2, 3, 4):
        assert (await rt.invoke("warmed", {"op": "read"}, session=f"s{i}")).value["seen"] == [1]
    assert (await rt.invoke("warmed", {"op": "read"}, session="s5")).value["seen"] == [1]
    assert (await rt.invoke("warmed", {"op": "read"}, session="s1")).value["seen"] == [42]


FAILS_IN_PROBE = """\
import os


def warmup():
    if not os.environ.get("FUNCTIONAI_TEMPLATE"):
        raise RuntimeError("only in the template")


def handler(event, ctx):
    return os.getpid()
"""


@pytest.mark.asyncio
async def test_a_probe_that_fails_leaves_instances_serving(rt: Runtime) -> None:
    """A warmup hook that fails in the probe (it runs in the template, not
    outside it): nothing is written ahead, the template's log says why, and
    every session is served as before."""
    await rt.deploy(FunctionSpec.from_code("probefail", FAILS_IN_PROBE, warmup="warmup"))
    await _learned(rt, "probefail")
    pids = set()
    for i in range(4):
        assert isinstance((await rt.invoke("probefail", None, session=f"p{i}")).value, int)
        desc = await rt.describe_session(f"p{i}")
        assert "pages" not in desc["instance"]["isolation"]["ahead"], desc["instance"]["isolation"]
        pids.add(desc["instance"]["pid"])
    assert len(pids) == 4  # a process of its own each
    log = _template_log(rt, "probefail")
    ahead = [(await rt.describe_session(f"p{i}"))["instance"]["isolation"]["ahead"] for i in range(1, 4)]
    assert any("process" in a for a in ahead), ahead  # standbys still
    assert "the probe's call failed" in log and "only in the template" in log, log


CONFINED = """\
import os, socket

seen = {}


def warmup():
    if os.environ.get("FUNCTIONAI_TEMPLATE"):
        return
    # the probe: record what it could do (pages it writes: this dict)
    seen["uid"] = os.getuid()
    try:
        socket.create_connection(("127.0.0.1", int(os.environ["PROBE_PORT"])), timeout=2).close()
        seen["net"] = "reached"
    except OSError as exc:
        seen["net"] = type(exc).__name__
    with open("/proc/self/status") as f:
        seen["nnp"] = [l.split()[1] for l in f if l.startswith("NoNewPrivs")][0]
    raise RuntimeError(repr(sorted(seen.items())))   # (the template's log shows it)


def handler(event, ctx):
    return 1
"""


@pytest.mark.asyncio
async def test_the_probe_runs_confined(rt: Runtime) -> None:
    """The probe runs the warmup hook outside any instance: it has no
    network (not even the host's loopback), no new privileges, and as root
    it is not root."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    try:
        port = srv.getsockname()[1]
        await rt.deploy(FunctionSpec.from_code("confined", CONFINED, warmup="warmup", env={"PROBE_PORT": str(port)}))
        assert (await rt.invoke("confined", None, session="c0")).value == 1
        log = await _learned(rt, "confined")
        assert "('net', 'ConnectionRefusedError')" in log or "('net', 'OSError')" in log or "('net', 'TimeoutError')" in log, log
        assert "('net', 'reached')" not in log, log
        assert "('nnp', '1')" in log, log
        if os.geteuid() == 0:
            assert "('uid', 65534)" in log, log
    finally:
        srv.close()


@pytest.mark.asyncio
async def test_without_a_warmup_hook_nothing_is_written_ahead(rt: Runtime) -> None:
    """The pages are learned only where the owner asked for primed instances
    (a warmup hook): a plain function's instances hold no copies ahead."""
    await rt.deploy(FunctionSpec.from_code("plain", "def handler(e, c):\n    return 1\n"))
    for i in range(4):
        assert (await rt.invoke("plain", None, session=f"n{i}")).value == 1
        ahead = (await rt.describe_session(f"n{i}"))["instance"]["isolation"]["ahead"]
        assert "pages" not in ahead, ahead
        assert "process" in ahead or i == 0, ahead  # (standbys all the same)
    assert "probe" not in _template_log(rt, "plain") and "writes" not in _template_log(rt, "plain")
