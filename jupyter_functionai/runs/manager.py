"""Runs: one papermill execution of a notebook, in a sandbox, as a durable task.

A run *is* a task of the built-in function ``notebook-run`` (see
``handler.py``): it has the task states, attempts, retries, timeout (up to
24 h), cancel and crash safety of every task, and its id is the task's. The
notebook's path is relative to the root directory (the Jupyter server's
``root_dir``, as in the contents API); a path that leaves it is refused. The
notebook's text travels in the task's event, so a run reads nothing from the
host once queued and survives a restart like any task.

Outputs are written under ``<root>/.functionai/runs/<run id>/``: the executed
notebook (``ipynb``) and, if asked, its ``html``. A failed run keeps its
partially executed notebook (the task's checkpoint). Outputs are written when
the run finishes, or on the first read after a restart if the server stopped
in between.
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import BadPayload, InvalidArgument, NotFound
from ..spec import FunctionSpec

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["RUN_FUNCTION", "RunManager"]

RUN_FUNCTION = "notebook-run"
FORMATS = ("ipynb", "html")
OUTPUT_DIR = ".functionai/runs"


def _run_spec() -> FunctionSpec:
    return FunctionSpec.from_module(
        RUN_FUNCTION,
        "jupyter_functionai.runs.handler:handler",
        memory="2Gi",
        network="loopback",  # the kernel's ZMQ sockets on the sandbox's own lo
        session=False,
        timeout=86400,
        limits={"max_payload_bytes": 64 << 20, "max_result_bytes": 64 << 20, "max_state_bytes": 64 << 20, "max_output_bytes": 1 << 20, "max_pids": 512},
        tasks={"concurrency": 4, "timeout_s": 3600, "max_attempts": 1, "retry_on": ["timeout", "instance_crashed", "out_of_memory", "user_exception"]},
        description="Executes a notebook with papermill (jupyter-functionai runs)",
    )


class RunManager:
    """Runs of notebooks under ``root_dir`` on a Runtime."""

    def __init__(self, runtime: Runtime, root_dir: str) -> None:
        self.rt = runtime
        self.root = os.path.realpath(os.path.expanduser(root_dir))
        self._deployed = False
        self._lock = asyncio.Lock()

    # -- paths ------------------------------------------------------------------

    def resolve(self, path: Any) -> str:
        """The absolute path of ``path`` (relative to the root); refused if it leaves the root."""
        if not isinstance(path, str) or not path.strip():
            raise InvalidArgument("notebook must be a path relative to the root directory")
        if os.path.isabs(path):
            raise InvalidArgument(f"notebook {path!r} must be relative to the root directory, not absolute")
        full = os.path.realpath(os.path.join(self.root, path))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise InvalidArgument(f"notebook {path!r} is outside the root directory")
        return full

    async def _ensure_function(self) -> None:
        async with self._lock:
            if self._deployed:
                return
            spec = _run_spec()
            try:
                current = self.rt.function(RUN_FUNCTION).spec
            except NotFound:
                current = None
            if current is None or current.to_dict() != spec.to_dict():
                await self.rt.deploy(spec)
            self._deployed = True

    # -- the API ----------------------------------------------------------------

    async def start(
        self,
        notebook: Any,
        parameters: Any = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        output_formats: Any = None,
        kernel: str | None = None,
    ) -> dict[str, Any]:
        full = self.resolve(notebook)
        if not full.endswith(".ipynb"):
            raise InvalidArgument(f"notebook {notebook!r} is not an .ipynb file")
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
            raise BadPayload("parameters must be a JSON object of names to values")
        formats = list(output_formats or ["ipynb"])
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise InvalidArgument(f"output_formats must be a list of {', '.join(FORMATS)}; got {output_formats!r}")
        if "ipynb" not in formats:
            formats.insert(0, "ipynb")
        if kernel is not None and not isinstance(kernel, str):
            raise InvalidArgument("kernel must be a kernelspec name")
        text = await asyncio.to_thread(_read_notebook, full, notebook)
        await self._ensure_function()
        event = {"notebook": text, "parameters": parameters, "kernel": kernel, "path": notebook, "output_formats": formats}
        task = await self.rt.tasks.submit(RUN_FUNCTION, event, timeout=timeout, retries=retries)
        return self._public(task)

    async def get(self, run_id: str) -> dict[str, Any]:
        task = await self.rt.tasks.get(run_id)
        if task["function"] != RUN_FUNCTION:
            raise NotFound(f"no run {run_id!r}", run_id=run_id)
        if task["state"] in ("succeeded", "failed", "timed_out", "cancelled"):
            await asyncio.to_thread(self._write_outputs, task)
        return self._public(task)

    async def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        await self.rt.tasks.wait(run_id, timeout)
        return await self.get(run_id)

    async def list_runs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.rt.tasks.list_tasks(RUN_FUNCTION, state, limit=limit)
        return [await self.get(r["id"]) for r in rows]

    async def cancel(self, run_id: str) -> dict[str, Any]:
        await self.get(run_id)  # NotFound for a task that is not a run
        await self.rt.tasks.cancel(run_id)
        return await self.get(run_id)

    # -- outputs ----------------------------------------------------------------

    def output_dir(self, run_id: str) -> str:
        return os.path.join(self.root, OUTPUT_DIR, run_id)

    def _write_outputs(self, task: dict[str, Any]) -> None:
        event = task.get("event") or {}
        result = task.get("result") if task["state"] == "succeeded" else task.get("checkpoint")
        text = (result or {}).get("output") if isinstance(result, dict) else None
        if not text:
            return
        out = self.output_dir(task["id"])
        stem = os.path.splitext(os.path.basename(str(event.get("path") or "notebook.ipynb")))[0]
        ipynb = os.path.join(out, f"{stem}.ipynb")
        if os.path.exists(ipynb):
            return
        os.makedirs(out, exist_ok=True)
        tmp = ipynb + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        if "html" in (event.get("output_formats") or []):
            import nbformat
            from nbconvert import HTMLExporter

            body, _ = HTMLExporter().from_notebook_node(nbformat.reads(text, as_version=4))
            with open(os.path.join(out, f"{stem}.html"), "w") as f:
                f.write(body)
        os.replace(tmp, ipynb)  # last: its presence means the outputs are complete

    def _public(self, task: dict[str, Any]) -> dict[str, Any]:
        event = task.get("event") or {}
        run_id = task["id"]
        outputs: dict[str, str] = {}
        out = self.output_dir(run_id)
        if os.path.isdir(out):
            for name in sorted(os.listdir(out)):
                ext = name.rsplit(".", 1)[-1]
                if ext in FORMATS and not name.endswith(".tmp"):
                    outputs[ext] = os.path.relpath(os.path.join(out, name), self.root)
        progress = task.get("progress")
        result = task.get("result") if isinstance(task.get("result"), dict) else {}
        return {
            "id": run_id,
            "state": task["state"],
            "notebook": event.get("path"),
            "parameters": event.get("parameters"),
            "output_formats": event.get("output_formats"),
            "attempts": task.get("attempts"),
            "max_attempts": task.get("max_attempts"),
            "timeout_s": task.get("timeout_s"),
            "error": task.get("error"),
            "progress": progress,
            "progress_message": task.get("progress_message"),
            "cells": (result or {}).get("cells"),
            "created_at": task.get("created_at"),
            "started_at": task.get("started_at"),
            "finished_at": task.get("finished_at"),
            "outputs": outputs,
        }


def _read_notebook(full: str, shown: str) -> str:
    import nbformat

    try:
        with open(full, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise NotFound(f"no notebook {shown!r} under the root directory", notebook=shown) from None
    except IsADirectoryError:
        raise InvalidArgument(f"{shown!r} is a directory, not a notebook") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"notebook {shown!r} cannot be read: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. cells without ids: normalised below
            nb = nbformat.reads(text, as_version=4)
            nbformat.validate(nb)
    except (ValueError, nbformat.ValidationError) as exc:
        raise InvalidArgument(f"notebook {shown!r} is not a valid notebook: {str(exc).splitlines()[0][:300]}") from None
    return json.dumps(nb)
