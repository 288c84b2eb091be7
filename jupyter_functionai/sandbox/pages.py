"""The template's pages that an instance's first call writes: learned once,
written ahead in every standby.

A forked instance shares the template's memory copy-on-write.  Its first call
writes to a few hundred of those pages (reference counts, type caches, the
allocator's free lists), and each write is a page fault that copies 4 KiB on
the call's critical path: for a handler using pandas, ~600 faults and several
milliseconds of a first call that takes ~1 ms the second time.

So where the spec has a ``warmup`` hook (the owner's sign that instances
should start primed), the template learns, once, which of its pages a call
writes: a throwaway probe process (a fork of the template, never an
instance) drives one call through the worker's real call path, with the
``warmup`` hook as the handler, and reads its own ``/proc/self/pagemap``
before and after: the pages that were shared with the template and are now
its own are that call's writes.  Each standby (forked ahead, while the
template is idle) then takes its own copies of those pages with
``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14) before it is asked for, off
every critical path.  Nothing is shared by this: every copy is the
standby's own, made from the template's pages before any session's code
runs.

The cost is memory: an instance that never serves a call holds the copies
a call would have made (bounded by :data:`MAX_PAGES`), and since the
standby takes them before it joins its session's cgroup, they are charged
to the template's.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable

from . import isolation as iso

MADV_POPULATE_WRITE = 23  # Linux 5.14
PAGE = os.sysconf("SC_PAGE_SIZE")
#: at most this many pages are written ahead (64 MiB of 4 KiB pages): a
#: warmup hook that writes more is not what this is for
MAX_PAGES = 16384
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56

Ranges = list[tuple[int, int]]


def private_writable_regions(maps: str | None = None) -> Ranges:
    """The process's private writable mappings that a fork shares
    copy-on-write: the heap, anonymous memory and libraries' data (not the
    stack, nor the kernel's ``[vvar]``/``[vdso]``)."""
    if maps is None:
        with open("/proc/self/maps") as f:
            maps = f.read()
    out: Ranges = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        perms = parts[1]
        name = parts[5].strip() if len(parts) > 5 else ""
        if perms[1] != "w" or perms[3] != "p" or (name.startswith("[") and name != "[heap]"):
            continue
        lo, _, hi = parts[0].partition("-")
        out.append((int(lo, 16), int(hi, 16)))
    return out


def page_flags(regions: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Each present page of ``regions``: address -> 1 if it is this process's
    alone (written since the fork), 0 if it is still shared."""
    out: dict[int, int] = {}
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        for lo, hi in regions:
            n = (hi - lo) // PAGE
            data = os.pread(f.fileno(), n * 8, (lo // PAGE) * 8)
            for i, (entry,) in enumerate(struct.iter_unpack("<Q", data)):
                if entry & _PRESENT:
                    out[lo + i * PAGE] = 1 if entry & _EXCLUSIVE else 0
    return out


def written(before: dict[int, int], after: dict[int, int]) -> Ranges:
    """The pages shared in ``before`` that are this process's own in
    ``after``, as address ranges (adjacent pages merged)."""
    pages = sorted(a for a, excl in after.items() if excl and before.get(a) == 0)
    return as_ranges(pages)


def as_ranges(pages: Iterable[int]) -> Ranges:
    out: list[list[int]] = []
    for a in pages:
        if out and out[-1][1] == a:
            out[-1][1] = a + PAGE
        else:
            out.append([a, a + PAGE])
    return [(lo, hi) for lo, hi in out]


def check_ranges(ranges: object, regions: Ranges) -> Ranges:
    """What a probe reported, checked: page-aligned ranges inside the
    template's own private writable mappings, at most :data:`MAX_PAGES` in
    all.  Raises ``ValueError``."""
    if not isinstance(ranges, list):
        raise ValueError("not a list of ranges")
    out: Ranges = []
    total = 0
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r)):
            raise ValueError(f"not a [start, end] pair of integers: {r!r}")
        lo, hi = r
        if lo % PAGE or hi % PAGE or hi <= lo:
            raise ValueError(f"not a page-aligned range: {r!r}")
        if not any(a <= lo and hi <= b for a, b in regions):
            raise ValueError(f"outside the template's writable memory: {r!r}")
        total += (hi - lo) // PAGE
        if total > MAX_PAGES:
            raise ValueError(f"more than {MAX_PAGES} pages")
        out.append((lo, hi))
    return out


def populate_write(ranges: Ranges) -> tuple[int, str]:
    """Fault ``ranges`` in writable, taking this process's own copy of each
    page now (``MADV_POPULATE_WRITE``); (pages done, why it stopped: "" when
    all were).  A range that is no longer mapped is skipped."""
    madvise = iso.libc().madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for lo, hi in ranges:
        if madvise(lo, hi - lo, MADV_POPULATE_WRITE) != 0:
            err = ctypes.get_errno()
            if err == 22:  # EINVAL: this kernel has no MADV_POPULATE_WRITE
                return done, "madvise(MADV_POPULATE_WRITE) is not supported by this kernel (Linux 5.14+)"
            continue  # ENOMEM/EFAULT: unmapped or not writable any more
        done += (hi - lo) // PAGE
    return done, ""
