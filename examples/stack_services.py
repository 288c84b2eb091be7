"""The whole stack in a script: the same composition the server builds
(store, runtime, hosted MCP, notebook runs, schedules), without Jupyter.
Runs the shipped notebook reports/daily.ipynb as a durable, sandboxed run."""

import asyncio
import os

from jupyter_functionai.stack import Stack

HERE = os.path.dirname(os.path.abspath(__file__))


async def main():
    async with Stack.open("~/.functionai-stack", root_dir=HERE) as stack:
        run = await stack.runs.start("reports/daily.ipynb", {"day": "2026-12-06"})
        done = await stack.runs.wait(run["id"], 300)
        print(done["state"], done["outputs"]["ipynb"] if done.get("outputs") else "")


asyncio.run(main())
