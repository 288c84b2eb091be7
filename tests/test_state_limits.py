"""A state the runtime refuses (too large, not JSON) is rolled back to the last
saved one inside the instance: the session keeps working from there, instead
of every later call being refused too.  Values that are not JSON (NaN) are
refused by the worker with a clear error."""

from __future__ import annotations

import pytest

from jupyter_functionai import BadPayload, PayloadTooLarge, Runtime

from .conftest import deploy

pytestmark = pytest.mark.asyncio

HANDLER = '''
def handler(event, ctx):
    s = ctx.session.state
    if event == "huge":
        s["blob"] = "x" * (2 << 20)
    elif event == "nan":
        s["bad"] = float("nan")
        return "stored?"
    elif event == "return-nan":
        return float("nan")
    else:
        s.setdefault("notes", []).append(event)
    return {k: v for k, v in s.items() if k != "blob"}
'''


async def test_a_refused_state_is_rolled_back_and_the_session_goes_on(rt: Runtime) -> None:
    await deploy(rt, "st", HANDLER, limits={"max_state_bytes": 1 << 20})
    assert (await rt.invoke("st", "a", session="s")).value == {"notes": ["a"]}
    with pytest.raises(PayloadTooLarge, match="rolled back"):
        await rt.invoke("st", "huge", session="s")
    assert (await rt.invoke("st", "b", session="s")).value == {"notes": ["a", "b"]}  # not refused again
    with pytest.raises(BadPayload, match="rolled back"):
        await rt.invoke("st", "nan", session="s")
    assert (await rt.invoke("st", "c", session="s")).value == {"notes": ["a", "b", "c"]}
    with pytest.raises(BadPayload, match="not JSON"):
        await rt.invoke("st", "return-nan", session="s")
    assert (await rt.describe_session("s"))["state"] == {"notes": ["a", "b", "c"]}


ORPHANS = '''
import os, time

def zombies():
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    n += f.read().rsplit(") ", 1)[1].split()[0] == "Z"
            except OSError:
                pass
    return n

def handler(event, ctx):
    if event == "spawn":
        for _ in range(5):  # double fork: the grandchild is orphaned to PID 1 and exits
            if os.fork() == 0:
                if os.fork() == 0:
                    os._exit(0)
                os._exit(0)
        for _ in range(5):
            os.wait()  # the direct children: waited for here
        import subprocess
        keeper = subprocess.Popen(["/bin/sh", "-c", "exit 7"])  # one the handler waits for later
        globals()["keeper"] = keeper
        deadline = time.monotonic() + 30
        while zombies() < 6 and time.monotonic() < deadline:  # the five orphans and the keeper have exited
            time.sleep(0.005)
        return None
    seen = zombies()
    code = globals()["keeper"].wait() if "keeper" in globals() else None
    return {"pid": os.getpid(), "zombies": seen, "keeper": code}
'''


async def test_pid_1_reaps_orphans_but_not_a_handlers_own_children(rt: Runtime) -> None:
    await deploy(rt, "orph", ORPHANS)
    await rt.invoke("orph", "spawn", session="z")
    seen = (await rt.invoke("orph", "look", session="z")).value
    if seen["pid"] != 1:
        pytest.skip("no PID namespace here (the instance is not PID 1)")
    # the five orphans were reaped between the calls; the exited child that a Popen of the
    # handler still owned was left to it (the one zombie), and its status reached the handler
    assert seen["zombies"] == 1 and seen["keeper"] == 7, seen
