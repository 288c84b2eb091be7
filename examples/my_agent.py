"""A small function for the README's CLI tour (``functionai deploy examples/my_agent.py``).

It answers a question and remembers, per session, what it was asked.
"""


def handler(event, ctx):
    event = event or {}
    asked = ctx.session.state.setdefault("asked", [])
    asked.append(event.get("q"))
    print(f"{ctx.session_id} asked {event.get('q')!r}")  # shown by `functionai logs my_agent`
    return {"answer": f"you said {event.get('q')!r}", "asked": asked}
