"""The built-in function that executes one notebook with papermill, inside
its sandbox (its own working directory, no access to the host's files: the
notebook arrives in the event, the executed notebook leaves in the result).

The module imports papermill, nbclient and nbformat at load time, so the
function's template holds them and a run's sandbox starts with them warm.

Event: ``{"notebook": <ipynb JSON text>, "parameters": {...}, "kernel": "python3"}``.
Result: ``{"output": <executed ipynb JSON text>, "cells": N}``. A cell that
raises fails the run: the partially executed notebook is first saved as the
task's checkpoint (``{"output": ...}``), then a ``RunCellError`` names the
cell. Progress is reported per cell (cells done / total).
"""

from __future__ import annotations

import json
import os
from typing import Any

import nbformat
import papermill
from papermill.engines import NotebookExecutionManager
from papermill.exceptions import PapermillExecutionError

_ctx: Any = None
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


def handler(event: Any, ctx: Any) -> dict[str, Any]:
    global _ctx
    if not isinstance(event, dict) or not isinstance(event.get("notebook"), str):
        raise ValueError("expected an event {'notebook': <ipynb JSON text>, 'parameters': {...}}")
    workdir = ctx.workdir or os.getcwd()
    src, dst = os.path.join(workdir, "input.ipynb"), os.path.join(workdir, "output.ipynb")
    with open(src, "w") as f:
        f.write(event["notebook"])
    parameters = event.get("parameters") or {}
    kernel = event.get("kernel") or None
    _ctx = ctx
    try:
        papermill.execute_notebook(src, dst, parameters=parameters, kernel_name=kernel, progress_bar=False, cwd=workdir)
    except PapermillExecutionError as exc:
        if os.path.exists(dst):
            with open(dst) as f:
                ctx.checkpoint({"output": f.read()})
        tb = "\n".join(exc.traceback or [])
        raise RunCellError(f"cell {exc.exec_count} (index {exc.cell_index}) raised {exc.ename}: {exc.evalue}\n{tb}") from None
    finally:
        _ctx = None
    with open(dst) as f:
        text = f.read()
    cells = len(nbformat.reads(text, as_version=4).cells)
    return {"output": text, "cells": cells, "parameters": json.loads(json.dumps(parameters))}
