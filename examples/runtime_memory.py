"""The README's "Use it from Python": the Runtime library, no server.

    python examples/runtime_memory.py

Its state (store, session directories) lives in ~/.functionai.  Every run
uses a new session id: a closed session's id is never reused.
"""

import asyncio
import uuid

from jupyter_functionai import FunctionSpec, Runtime

CODE = '''
import json                             # module-level code runs once, in the template
def handler(event, ctx):
    notes = ctx.session.state.setdefault("notes", [])   # persisted after each call
    notes.append(event["note"])
    with open(f"{ctx.workdir}/log.txt", "a") as f:
        f.write(json.dumps(event) + "\\n")
    ctx.progress(1.0, "saved")
    return {"notes": notes}
'''


async def main():
    async with Runtime.open("~/.functionai") as rt:
        await rt.deploy(FunctionSpec.from_code("memory", CODE, min_instances=2, memory="256Mi", timeout=30))
        await rt.pool.wait_full("memory")                    # the 2 warm instances are ready
        session = f"memory-{uuid.uuid4().hex[:8]}"           # a new session each run
        r = await rt.invoke("memory", {"note": "hi"}, session=session)
        print(r.value, r.instance_id, r.cold_start)          # ColdStart(..., path='warm-pool', ...)
        async for item in rt.stream("memory", {"note": "again"}, session=session):
            print(item)
        await rt.close_session(session)                      # its instance stops, its state is deleted


asyncio.run(main())
