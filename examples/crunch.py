"""The README's durable task: a long job that checkpoints each step.

    functionai deploy examples/crunch.py
    functionai submit crunch --data '{"n": 1000}' --timeout 7200 --retries 3
"""

import hashlib


def step(i, key):
    """One unit of work; its side effects are keyed by ``key`` (idempotent)."""
    return hashlib.sha256(f"{key}:{i}".encode()).hexdigest()


def handler(event, ctx):
    done = (ctx.resume_from or {}).get("done", 0)      # the last checkpoint of an earlier attempt
    for i in range(done, event["n"]):
        step(i, key=f"{ctx.task_id}:{i}")              # side effects keyed by task (idempotent)
        ctx.checkpoint({"done": i + 1})                # stored before anything later is read
        ctx.progress((i + 1) / event["n"], f"step {i + 1}")
    return "done"
