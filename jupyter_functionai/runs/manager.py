"""Runs: one papermill execution of a notebook, in a sandbox, as a durable task.

A run *is* a task of the built-in function ``notebook-run`` (see
``handler.py``): it has the task states, attempts, retries, timeout (up to
24 h), cancel and crash safety of every task, and its id is the task's. The
notebook's path is relative to the root directory (the Jupyter server's
``root_dir``, as in the contents API); a path that leaves it is refused. The
notebook's text travels in the task's event, so a run reads nothing from the
host once queued and survives a restart like any task.

Outputs are written under ``<root>/functionai-runs/<run id>/`` (not a hidden
folder: Jupyter's contents API, Lab and ``/files`` refuse those): the executed
notebook (``ipynb``) and, if asked, its ``html``. A failed run keeps its
partially executed notebook (the task's checkpoint). Outputs are written when
the run finishes, or on the first read after a restart if the server stopped
in between.

A run's row in the ``runs`` table says where it came from: a name, tags, the
schedule and cron time that fired it, and the idempotency token it was
created with (the same token gives back the same run, never a second one).
Warm kernels: the ``notebook-run`` function keeps ``warm_kernels`` sandbox
instances ready, each with its kernel already started (``handler.warmup``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import BadPayload, Conflict, InvalidArgument, NotFound
from ..spec import FunctionSpec

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["FORMATS", "RUN_FUNCTION", "RunManager", "check_tags", "check_token"]

RUN_FUNCTION = "notebook-run"
FORMATS = ("ipynb", "html")
OUTPUT_DIR = "functionai-runs"


FINAL = ("succeeded", "failed", "timed_out", "cancelled")
_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def check_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= 64 and t.strip() == t for t in tags) or len(tags) > 32:
        raise InvalidArgument(f"tags must be a list of at most 32 non-empty strings of at most 64 characters, got {tags!r}", field="tags")
    return list(dict.fromkeys(tags))


def check_token(token: Any) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise InvalidArgument("idempotency_token must be 1-128 characters of letters, digits, '.', '_', ':' or '-'", field="idempotency_token")
    return token


def check_formats(output_formats: Any) -> list[str]:
    if output_formats is None:
        return ["ipynb"]
    if not isinstance(output_formats, list) or not output_formats or any(f not in FORMATS for f in output_formats):
        raise InvalidArgument(f"output_formats must be a list of {', '.join(FORMATS)}; got {output_formats!r}", field="output_formats")
    formats = list(dict.fromkeys(output_formats))
    if "ipynb" not in formats:
        formats.insert(0, "ipynb")
    return formats


def check_parameters(parameters: Any) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict) or not all(isinstance(k, str) and k.isidentifier() for k in parameters):
        raise BadPayload("parameters must be a JSON object of Python identifiers to values", field="parameters")
    return parameters


def _run_spec(warm: int) -> FunctionSpec:
    return FunctionSpec.from_module(
        RUN_FUNCTION,
        "jupyter_functionai.runs.handler:handler",
        memory="2Gi",
        network="loopback",  # the kernel's ZMQ sockets on the sandbox's own lo
        session=False,
        timeout=86400,
        min_instances=warm,
        warmup="warmup" if warm else None,
        limits={"max_payload_bytes": 64 << 20, "max_result_bytes": 64 << 20, "max_state_bytes": 64 << 20, "max_output_bytes": 1 << 20, "max_pids": 512},
        tasks={"concurrency": 4, "timeout_s": 3600, "max_attempts": 1, "retry_on": ["timeout", "instance_crashed", "out_of_memory", "user_exception"]},
        description="Executes a notebook with papermill (jupyter-functionai runs)",
    )


class RunManager:
    """Runs of notebooks under ``root_dir`` on a Runtime."""

    def __init__(self, runtime: Runtime, root_dir: str, *, warm_kernels: int = 1) -> None:
        if not 0 <= int(warm_kernels) <= 64:
            raise InvalidArgument(f"warm_kernels must be within [0, 64], got {warm_kernels!r}")
        self.rt = runtime
        self.warm_kernels = int(warm_kernels)
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

    def check_notebook(self, path: Any) -> None:
        """NotFound / InvalidArgument unless ``path`` is a readable, valid notebook under the root."""
        _read_notebook(self.resolve(path), path)

    async def prepare(self) -> None:
        """Deploy the notebook-run function now (the server does at start), so
        the first run neither waits for it nor for its warm kernels, nor for
        nbformat's first validation (which compiles its JSON schema)."""
        await self._ensure_function()
        await asyncio.to_thread(_warm_nbformat)

    async def _ensure_function(self) -> None:
        async with self._lock:
            if self._deployed:
                return
            spec = _run_spec(self.warm_kernels)
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
        name: str | None = None,
        tags: Any = None,
        idempotency_token: Any = None,
        schedule: tuple[str, dict[str, Any], dict[str, Any]] | None = None,
        scheduled_for: float | None = None,
        schedule_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Queue a run of ``notebook`` and return it. The same
        ``idempotency_token`` gives back the run first made with it. With
        ``schedule`` (the scheduler's claim on a cron time), None when another
        fire got there first."""
        full = self.resolve(notebook)
        if not full.endswith(".ipynb"):
            raise InvalidArgument(f"notebook {notebook!r} is not an .ipynb file", field="notebook")
        parameters = check_parameters(parameters)
        formats = check_formats(output_formats)
        tags = check_tags(tags)
        token = check_token(idempotency_token)
        if kernel is not None and (not isinstance(kernel, str) or not re.match(r"^[A-Za-z0-9._-]{1,128}$", kernel)):
            raise InvalidArgument(f"kernel must be a kernelspec name, got {kernel!r}", field="kernel")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
            raise InvalidArgument("name must be a string of 1-200 characters", field="name")
        if token is not None:
            found = await asyncio.to_thread(self.rt.store.get_run_by_token, token)
            if found is not None:
                return await self.get(found)
        text = await asyncio.to_thread(_read_notebook, full, notebook)
        await self._ensure_function()
        if schedule is not None:
            schedule = (schedule[0], schedule[1], {**schedule[2], "last_run_id": None})
        event = {"notebook": text, "parameters": parameters, "kernel": kernel, "path": notebook, "output_formats": formats}
        task, row = self.rt.tasks.prepare(RUN_FUNCTION, event, timeout=timeout, retries=retries)
        if schedule is not None:
            schedule[2]["last_run_id"] = task.id  # recorded on the schedule in the run's own transaction
        meta = {
            "id": task.id, "name": name or os.path.splitext(os.path.basename(notebook))[0], "notebook": notebook,
            "schedule_id": schedule[0] if schedule else schedule_id, "scheduled_for": scheduled_for, "tags": tags,
            "idempotency_token": token, "created_at": row["created_at"],
        }
        store = self.rt.store
        run_id = await self.rt.tasks.submit_with(task, row, lambda r: store.insert_run(r, meta, schedule=schedule))
        if run_id is None:
            return None
        if run_id != task.id:  # the idempotency token's earlier run
            return await self.get(run_id)
        # the run as committed (queued): the dispatcher may already be starting it
        return self._public(self.rt.tasks.public({**row, "event": event, "options": task.options}), meta)

    async def get(self, run_id: str) -> dict[str, Any]:
        task = await self.rt.tasks.get(run_id)
        if task["function"] != RUN_FUNCTION:
            raise NotFound(f"no run {run_id!r}", run_id=run_id)
        meta, cold = await asyncio.to_thread(self._meta, task)
        finished = task.get("finished_at") or 0.0
        if cold is None and task["state"] in FINAL and task.get("attempt_history") and time.time() - finished < 10:
            # just finished: its cold start is written with the next group commit (an
            # attempt whose instance crashed has none, and is not flushed for again)
            await self.rt.flush()
            meta, cold = await asyncio.to_thread(self._meta, task)
        if task["state"] in FINAL:
            await asyncio.to_thread(self._write_outputs, task)
        return self._public(task, meta, cold)

    def _meta(self, task: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        meta = self.rt.store.get_run(task["id"])
        cold = None
        history = task.get("attempt_history") or []
        instance = history[-1].get("instance_id") if history else None
        if instance:
            cold = self.rt.store.coldstart_of(instance)
        return meta, cold

    async def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        await self.rt.tasks.wait(run_id, timeout)
        return await self.get(run_id)

    async def list_runs(
        self, state: str | None = None, limit: int = 100, *, schedule_id: str | None = None, tag: str | None = None
    ) -> list[dict[str, Any]]:
        """Runs, newest first, filtered by state, schedule and tag."""
        from ..store import TASK_STATES

        if state is not None and state not in TASK_STATES:
            raise InvalidArgument(f"unknown run state {state!r}; one of {', '.join(TASK_STATES)}", field="state")
        if not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be within [1, 1000], got {limit}", field="limit")
        rows = await asyncio.to_thread(self.rt.store.list_runs, schedule_id=schedule_id, tag=tag, state=state, limit=limit)
        out = []
        for r in rows:
            try:
                out.append(await self.get(r["id"]))
            except NotFound:  # deleted meanwhile
                continue
        return out

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Stop a queued or running run (its sandbox and kernel are stopped)."""
        await self.get(run_id)  # NotFound for a task that is not a run
        await self.rt.tasks.cancel(run_id)
        return await self.get(run_id)

    async def delete(self, run_id: str) -> None:
        """Forget a finished run and delete its outputs; a queued or running
        run must be stopped first (409)."""
        run = await self.get(run_id)
        if run["state"] not in FINAL:
            raise Conflict(f"run {run_id} is {run['state']}: cancel it before deleting it", run_id=run_id, state=run["state"])
        await self.rt.store.writer.write(self.rt.store.delete_run, run_id)
        await asyncio.to_thread(shutil.rmtree, self.output_dir(run_id), True)

    async def output_path(self, run_id: str, fmt: str) -> str:
        """The absolute path of a run's output in ``fmt`` (404 if it has none)."""
        if fmt not in FORMATS:
            raise NotFound(f"no output format {fmt!r}; one of {', '.join(FORMATS)}")
        run = await self.get(run_id)
        rel = run["outputs"].get(fmt)
        if rel is None:
            raise NotFound(f"run {run_id} has no {fmt} output (it is {run['state']})", run_id=run_id)
        return os.path.join(self.root, rel)

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

    def _public(self, task: dict[str, Any], meta: dict[str, Any] | None = None, cold: dict[str, Any] | None = None) -> dict[str, Any]:
        event = task.get("event") or {}
        run_id = task["id"]
        meta = meta or {}
        outputs: dict[str, str] = {}
        out = self.output_dir(run_id)
        if os.path.isdir(out):
            for name in sorted(os.listdir(out)):
                ext = name.rsplit(".", 1)[-1]
                if ext in FORMATS and not name.endswith(".tmp"):
                    outputs[ext] = os.path.relpath(os.path.join(out, name), self.root)
        progress = task.get("progress")
        result = task.get("result") if isinstance(task.get("result"), dict) else {}
        started, finished = task.get("started_at"), task.get("finished_at")
        kernel = (result or {}).get("kernel") or {}
        return {
            "id": run_id,
            "name": meta.get("name"),
            "state": task["state"],
            "notebook": event.get("path"),
            "parameters": event.get("parameters"),
            "kernel": event.get("kernel") or kernel.get("name"),
            "tags": meta.get("tags", []),
            "schedule_id": meta.get("schedule_id"),
            "scheduled_for": meta.get("scheduled_for"),
            "idempotency_token": meta.get("idempotency_token"),
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
            "finished_at": finished,
            "duration_s": (finished if finished is not None else time.time()) - started if started is not None else None,
            "cold_start": {**cold, "warm_kernel": kernel.get("warm"), "kernel_start_ms": kernel.get("start_ms")} if cold else None,
            "outputs": outputs,
        }


def _warm_nbformat() -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nbformat.validate(nbformat.reads(nbformat.writes(new_notebook(cells=[new_code_cell("1")])), as_version=4))


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
