"""The built-in function that executes one notebook with papermill, inside
its sandbox (its own working directory, no access to the host's files: the
notebook arrives in the event, the executed notebook leaves in the result).

The module imports papermill, nbclient and nbformat at load time, so the
function's template holds them and a run's sandbox starts with them warm.
A warm-pool instance goes further: its ``warmup`` hook (run after the fork,
as the instance's own uid, in its own directory) starts the kernel and waits
until it answers, so a run that takes the instance finds its kernel ready.
Each kernel serves one run: the instance is discarded after it.

Event: ``{"notebook": <ipynb JSON text>, "parameters": {...}, "kernel": "python3"}``.
Result: ``{"output": <executed ipynb JSON text>, "cells": N, "kernel": {...}}``.
A cell that raises fails the run: the partially executed notebook is first
saved as the task's checkpoint (``{"output": ...}``), then a ``RunCellError``
names the cell. Progress is reported per cell (cells done / total).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import nbformat
import papermill
from jupyter_client.manager import KernelManager
from papermill.engines import NotebookExecutionManager
from papermill.exceptions import PapermillExecutionError

#: the kernelspec a warm-pool instance starts ahead of its run
WARM_KERNEL = "python3"

_ctx: Any = None
_warm: dict[str, Any] | None = None  # {"km": KernelManager, "name": str, "start_ms": float}
_orig_complete = NotebookExecutionManager.cell_complete


def _cell_complete(self: Any, cell: Any, cell_index: Any = None, **kwargs: Any) -> Any:
    out = _orig_complete(self, cell, cell_index=cell_index, **kwargs)
    if _ctx is not None:
        total = max(1, len(self.nb.cells))
        done = min(total, (cell_index or 0) + 1)
        _ctx.progress(done / total, f"cell {done} of {total}")
    return out


NotebookExecutionManager.cell_complete = _cell_complete


class RunCellError(RuntimeError):
    """A cell of the notebook raised."""


def _start_kernel(name: str, cwd: str) -> KernelManager:
    """A started kernel whose client is connected and has seen it answer: the
    run's client is that one (``wait_for_ready`` costs 200 ms and more per
    client, most of it flushing IOPub, so it is paid here, ahead of time)."""
    km = KernelManager(kernel_name=name)
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    ready = lambda *args, **kwargs: None
    kc.start_channels = ready  # type: ignore[method-assign]
    kc.wait_for_ready = ready  # type: ignore[method-assign]
    km.client = lambda *args, **kwargs: kc  # type: ignore[method-assign]
    return km


def warmup() -> None:
    """Start the kernel the next run will use (a warm-pool instance). In the
    function's template, before any fork, there is nothing to do: a kernel
    there would be shared by every fork."""
    global _warm
    if os.environ.get("FUNCTIONAI_TEMPLATE"):
        return
    t0 = time.perf_counter()
    km = _start_kernel(WARM_KERNEL, os.getcwd())
    _warm = {"km": km, "name": WARM_KERNEL, "start_ms": (time.perf_counter() - t0) * 1000}


def _kernel_name(event: dict[str, Any]) -> str:
    name = event.get("kernel")
    if not name:
        try:
            name = json.loads(event["notebook"]).get("metadata", {}).get("kernelspec", {}).get("name")
        except (ValueError, AttributeError):
            name = None
    name = str(name or WARM_KERNEL)
    # a notebook written in a sandbox kernel runs in this sandbox's own Python
    return WARM_KERNEL if name.startswith("functionai-sandbox") else name


def handler(event: Any, ctx: Any) -> dict[str, Any]:
    global _ctx, _warm
    if not isinstance(event, dict) or not isinstance(event.get("notebook"), str):
        raise ValueError("expected an event {'notebook': <ipynb JSON text>, 'parameters': {...}}")
    workdir = ctx.workdir or os.getcwd()
    src, dst = os.path.join(workdir, "input.ipynb"), os.path.join(workdir, "output.ipynb")
    with open(src, "w") as f:
        f.write(event["notebook"])
    parameters = event.get("parameters") or {}
    kernel = _kernel_name(event)
    warm, _warm = _warm, None  # a kernel serves one run
    extra: dict[str, Any] = {}
    info: dict[str, Any] = {"name": kernel, "warm": False}
    if warm is not None and warm["name"] == kernel and warm["km"].is_alive():
        extra["km"] = warm["km"]
        info.update(warm=True, start_ms=warm["start_ms"])
    _ctx = ctx
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(src, dst, parameters=parameters, kernel_name=kernel, progress_bar=False, cwd=workdir, **extra)
    except PapermillExecutionError as exc:
        if os.path.exists(dst):
            with open(dst) as f:
                ctx.checkpoint({"output": f.read()})
        tb = "\n".join(exc.traceback or [])
        raise RunCellError(f"cell {exc.exec_count} (index {exc.cell_index}) raised {exc.ename}: {exc.evalue}\n{tb}") from None
    finally:
        _ctx = None
    info["execute_ms"] = (time.perf_counter() - t0) * 1000
    with open(dst) as f:
        text = f.read()
    cells = len(nbformat.reads(text, as_version=4).cells)
    return {"output": text, "cells": cells, "parameters": json.loads(json.dumps(parameters)), "kernel": info}
