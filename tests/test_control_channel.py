"""The control channel is untrusted input: frames forged from inside a real
sandbox (written straight onto the instance's socket, fd 3) end that instance
with ``instance_crashed``; its session keeps its last persisted state and goes
on; a neighbour session and the store are untouched."""

from __future__ import annotations

import json

import pytest

from jupyter_functionai import InstanceCrashed, Runtime

from .conftest import deploy

pytestmark = pytest.mark.asyncio

# The handler appends a note to its state, then (when asked) writes the frame
# it was given onto the runtime's socket before returning normally.
FORGER = '''
import json, os, struct
def handler(event, ctx):
    ctx.session.state.setdefault("notes", []).append(event["note"])
    raw = event.get("raw")
    if raw is not None:
        body = raw.replace("CALL_ID", ctx.call_id).encode()
        os.write(3, struct.pack(">I", len(body)) + body)
    return ctx.session.state["notes"]
'''

FORGED = {
    "state that is not JSON": json.dumps({"op": "result", "id": "CALL_ID", "value": 1, "state_json": "{not json"}),
    "state that is not an object": json.dumps({"op": "result", "id": "CALL_ID", "value": 1, "state_json": "[1, 2]"}),
    "nesting 100000 deep": "[" * 100_000 + "]" * 100_000,
    "a value 5000 deep": json.dumps({"op": "result", "id": "CALL_ID", "value": 0}).replace("0}", "[" * 5000 + "]" * 5000 + "}"),
    "a value 200 deep": json.dumps({"op": "result", "id": "CALL_ID", "value": 0}).replace("0}", "[" * 200 + "]" * 200 + "}"),
    "a wrong field type": json.dumps({"op": "result", "id": "CALL_ID", "value": 1, "duration_ms": "soon"}),
    "a progress out of range": json.dumps({"op": "progress", "id": "CALL_ID", "fraction": 1e308 * 10}).replace("Infinity", "1e999"),
    "an unknown op": json.dumps({"op": "exec", "id": "CALL_ID"}),
    "an error kind of the server's": json.dumps({"op": "error", "id": "CALL_ID", "error": {"kind": "not_found", "message": "x"}}),
    "a checkpoint that is not JSON": json.dumps({"op": "checkpoint", "id": "CALL_ID", "data_json": "{"}),
    "not an object": "42",
    "a trace with the runtime's points": json.dumps({"op": "result", "id": "CALL_ID", "value": 1, "trace": {"stored": 1.0}}),
    "a trace that is not numbers": json.dumps({"op": "result", "id": "CALL_ID", "value": 1, "trace": {"received": "now"}}),
}


@pytest.mark.parametrize("what", sorted(FORGED))
async def test_a_forged_frame_ends_only_its_instance(rt: Runtime, what: str) -> None:
    await deploy(rt, "forge", FORGER)
    assert (await rt.invoke("forge", {"note": "n1"}, session="victim")).value == ["n1"]
    assert (await rt.invoke("forge", {"note": "m1"}, session="neighbour")).value == ["m1"]
    first = await rt.sessions()
    inst = next(s["instance_id"] for s in first if s["id"] == "victim")
    with pytest.raises(InstanceCrashed) as ei:
        await rt.invoke("forge", {"note": "evil", "raw": FORGED[what]}, session="victim")
    assert "invalid frame" in str(ei.value), str(ei.value)
    # the session goes on in a new instance, from its last persisted state
    r = await rt.invoke("forge", {"note": "n2"}, session="victim")
    assert r.value == ["n1", "n2"] and r.instance_id != inst
    assert (await rt.invoke("forge", {"note": "m2"}, session="neighbour")).value == ["m1", "m2"]
    await rt.flush()  # every write still commits: nothing forged reached the store
    stored = {s["id"]: s["state"] for s in rt.store.list_sessions()}
    assert stored["victim"] == {"notes": ["n1", "n2"]} and stored["neighbour"] == {"notes": ["m1", "m2"]}
