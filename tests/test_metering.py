"""The usage ledger (runtime/metering.py, store/usage.py), measured for real:
a handler that burns CPU is billed what it burned, an idle session accrues
idle time only, the ledger survives kill -9 of the runtime's process, and
it is served over HTTP, by the CLI and the clients."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai.errors import InvalidArgument
from jupyter_functionai.runtime import Runtime
from jupyter_functionai.spec import FunctionSpec
from jupyter_functionai.store import Store

from .conftest import wait_for

BURN = "import time\n\ndef handler(event, ctx):\n    t = time.process_time()\n    while time.process_time() - t < event['cpu']:\n        pass\n    return 'burned'\n"


async def _meter_saw(rt: Runtime, session: str, what: str, cond: Any) -> None:
    async def seen() -> bool:
        rows = await rt.usage(session=session)
        return bool(rows) and cond(rows[0])

    await wait_for(seen, 30, what)


@pytest.mark.asyncio
async def test_a_handler_that_burns_2_cpu_seconds_is_billed_2(rt: Runtime) -> None:
    await rt.deploy(FunctionSpec.from_code("burn", BURN))
    await rt.invoke("burn", {"cpu": 0}, session="hot")  # started, then measured from here
    before = (await rt.usage(session="hot"))[0]["cpu_s"]
    await rt.invoke("burn", {"cpu": 2.0}, session="hot")
    # the meter samples every second: wait until it has seen the call end (an idle second after it)
    idle_then = (await rt.usage(session="hot"))[0]["idle_s"]
    await _meter_saw(rt, "hot", "a sample after the call", lambda r: r["idle_s"] > idle_then)
    row = (await rt.usage(session="hot"))[0]
    billed = row["cpu_s"] - before
    print(f"\nbilled {billed:.3f} CPU-s for a 2.0 CPU-s call; active {row['active_s']:.2f} s, idle {row['idle_s']:.2f} s")
    assert 1.8 <= billed <= 2.2, row
    assert row["active_s"] >= 1.0 and row["mem_gib_s"] > 0 and row["function"] == "burn"
    assert row["gpu_s"] == 0 and row["gpu_mem_gib_s"] == 0


@pytest.mark.asyncio
async def test_an_idle_session_accrues_idle_time_only(rt: Runtime) -> None:
    await rt.deploy(FunctionSpec.from_code("burn", BURN))
    await rt.invoke("burn", {"cpu": 0}, session="quiet")
    first = (await rt.usage(session="quiet"))[0]
    await _meter_saw(rt, "quiet", "two more idle seconds", lambda r: r["idle_s"] >= first["idle_s"] + 2)
    row = (await rt.usage(session="quiet"))[0]
    assert row["active_s"] == first["active_s"]  # nothing ran meanwhile
    assert row["cpu_s"] - first["cpu_s"] < 0.1, (first, row)
    # per-minute rows with step; bad ranges are refused
    per_minute = await rt.usage(session="quiet", step=60)
    assert per_minute and all(r["start"] % 60 == 0 for r in per_minute)
    assert sum(r["idle_s"] for r in per_minute) == pytest.approx(row["idle_s"], abs=1.5)
    await rt.invoke("burn", {"cpu": 0}, session="other")
    t0 = time.monotonic()
    by_session = await rt.usage()
    (per_function,) = await rt.usage(by="function")
    between = time.monotonic() - t0  # each query first adds what the two live sessions idled meanwhile
    assert per_function["session"] is None and len(by_session) == 2
    extra = per_function["idle_s"] - sum(r["idle_s"] for r in by_session)
    assert 0 <= extra <= 2 * between + 1e-3, (extra, between)
    for bad in ({"step": 30}, {"step": 90}, {"since": 10.0, "until": 5.0}, {"by": "instance"}):
        with pytest.raises(InvalidArgument):
            await rt.usage(**bad)  # type: ignore[arg-type]


RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    from jupyter_functionai.runtime import Runtime
    from jupyter_functionai.spec import FunctionSpec

    BURN = {burn!r}

    async def main():
        rt = Runtime(sys.argv[1])
        await rt.start()
        await rt.deploy(FunctionSpec.from_code("burn", BURN))
        await rt.invoke("burn", {{"cpu": 1.0}}, session="doomed")
        print("burned", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_the_ledger_survives_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(burn=BURN))
    proc = subprocess.Popen([sys.executable, str(script), str(state)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "burned"
        db = state / "functionai.db"

        def billed() -> float:
            with contextlib.closing(sqlite3.connect(db)) as con:  # what is committed, read by another process
                (cpu,) = con.execute("SELECT coalesce(sum(cpu_s), 0) FROM usage WHERE session_id = 'doomed'").fetchone()
            return float(cpu)

        deadline = time.monotonic() + 60
        while billed() < 0.9:  # the meter writes every few seconds
            assert proc.poll() is None and time.monotonic() < deadline, "the runner wrote no usage"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    with Store.open(db) as store:
        rows = store.usage(session="doomed")
    assert len(rows) == 1 and rows[0]["cpu_s"] >= 0.9 and rows[0]["function"] == "burn", rows


def test_usage_over_http_the_cli_and_the_client(tmp_path: Path) -> None:
    from jupyter_functionai.client import Client

    from .test_cli_server import start_server, stop_server

    # the README's price table, as printed, in the server's config file
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"^```python\n(.*?)^```", readme, re.M | re.S) if b.startswith("c.FunctionAI.usage_prices")]
    (tmp_path / "home" / "config").mkdir(parents=True)
    (tmp_path / "home" / "config" / "jupyter_server_config.py").write_text(snippet)
    srv = start_server(tmp_path / "home", tmp_path / "data")
    try:
        fai = Client(srv.url, srv.token)
        fai.deploy("burn", BURN)
        fai.invoke("burn", {"cpu": 0.3}, session="s1")
        rows = fai.usage("burn")
        assert rows[0]["currency"] == "USD" and rows[0]["cost"] >= rows[0]["cpu_s"] * 0.00002 > 0, rows
        assert [r["session"] for r in rows] == ["s1"] and rows[0]["cpu_s"] > 0 and set(rows[0]) >= {
            "function", "session", "cpu_s", "mem_gib_s", "gpu_s", "gpu_mem_gib_s", "active_s", "idle_s"
        }
        with pytest.raises(InvalidArgument, match=r"step must be a multiple of 60 seconds, got 61") as bad:
            fai.usage(step=61)
        assert bad.value.status == 400
        out = subprocess.run(
            [sys.executable, "-m", "jupyter_functionai", "usage", "burn", "--json"], capture_output=True, text=True, timeout=60, env=srv.client_env()
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["session"] == "s1"
        # the README's lines, as printed (NAME: this function)
        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
        lines = [ln.split("#")[0].strip() for ln in readme.splitlines() if ln.startswith(".venv/bin/functionai usage")]
        assert len(lines) == 2, lines
        outs = []
        for line in lines:
            argv = [sys.executable, "-m", "jupyter_functionai", *(("burn" if a == "NAME" else a) for a in shlex.split(line)[1:])]
            p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=srv.client_env())
            assert p.returncode == 0, (line, p.stderr)
            outs.append(p.stdout)
        assert "CPU_S" in outs[0] and "s1" in outs[0], outs[0]
        hourly = json.loads(outs[1])
        assert [r["session"] for r in hourly] == ["s1"] and hourly[0]["start"] % 3600 == 0
    finally:
        stop_server(srv)


def test_a_price_table_turns_usage_into_cost() -> None:
    from jupyter_functionai.runtime.metering import PriceTable

    prices = PriceTable.from_dict({"cpu_s": 0.01, "mem_gib_s": 0.002, "gpu_s": 1.0, "gpu_mem_gib_s": 0.1, "idle_factor": 0.25, "currency": "USD"})
    # half the time idle: memory and GPU at (0.5 + 0.25 * 0.5) of their price; CPU as used
    row = {"cpu_s": 10.0, "mem_gib_s": 100.0, "gpu_s": 2.0, "gpu_mem_gib_s": 8.0, "active_s": 30.0, "idle_s": 30.0}
    assert prices.cost(row) == pytest.approx(10 * 0.01 + (100 * 0.002 + 2 * 1.0 + 8 * 0.1) * 0.625)
    assert prices.cost({**row, "idle_s": 0.0}) == pytest.approx(10 * 0.01 + 100 * 0.002 + 2 * 1.0 + 8 * 0.1)
    for bad, says in (({"cpu": 1}, "unknown price table key"), ({"cpu_s": -1}, "number >= 0"), ({"idle_factor": 2}, "between 0 and 1"), ({"gpu_s": "1"}, "number >= 0")):
        with pytest.raises(InvalidArgument, match=says):
            PriceTable.from_dict(bad)


@pytest.mark.asyncio
async def test_usage_rows_carry_their_cost(tmp_path: Path) -> None:
    async with Runtime.open(tmp_path / "state", prices={"cpu_s": 1.0, "idle_factor": 0.5, "currency": "EUR"}) as rt:
        await rt.deploy(FunctionSpec.from_code("burn", BURN))
        await rt.invoke("burn", {"cpu": 0.5}, session="paid")
        (row,) = await rt.usage(session="paid")
        assert row["currency"] == "EUR" and row["cost"] == pytest.approx(row["cpu_s"], abs=1e-6) and row["cost"] > 0


@pytest.mark.asyncio
async def test_the_meter_writes_are_not_changes_the_sidebar_refetches_for(rt: Runtime) -> None:
    """The events stream (GET /functionai/api/events) counts the writer's
    ``changes``: the ledger's own writes (every few seconds while an instance
    lives, and at each usage read) are committed but are not changes, or
    every sidebar would refetch everything every few seconds, and each usage
    fetch would set off the next."""
    await rt.deploy(FunctionSpec.from_code("burn", BURN))
    await rt.invoke("burn", {"cpu": 0}, session="quiet")
    await rt.flush()
    writer = rt.store.writer
    changes, committed = writer.changes, writer.committed
    for _ in range(3):
        await rt.usage(session="quiet")  # samples and flushes the meter: a ledger write each time
    assert writer.committed >= committed + 3
    assert writer.changes == changes
    await rt.close_session("quiet")
    await rt.flush()
    assert writer.changes > changes  # a real change still counts
