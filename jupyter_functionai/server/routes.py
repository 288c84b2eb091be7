"""REST API, invoke gateway and the route table the OpenAPI document is made from.

Handlers are thin: parse, call the Runtime, serialise.  Every verb carries
``jupyter_auth`` (``@web.authenticated`` + ``@authorized``), except the
gateway's POST which also accepts a function-scoped key.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from tornado import web
from tornado.iostream import StreamClosedError

from .._version import __version__
from ..errors import BadPayload, InvalidArgument, NotFound
from ..mcp.manager import KEY_SCOPE_PREFIX
from ..spec import FunctionSpec
from .base import BaseHandler, dumps, jupyter_auth, query_int
from .gateway import InvokeHandler
from .mcp import (
    McpEndpointHandler,
    McpServerHandler,
    McpServersHandler,
    McpSessionHandler,
    McpSessionsHandler,
    McpToolHandler,
)

API = "/functionai/api"
#: The REST API's own version (the handshake's ``api``): raised when a change would break a client.
API_VERSION = 1
#: The events stream: how often it looks for a change, sends a keep-alive, ends (the browser reconnects).
EVENTS_TICK = 0.1
EVENTS_KEEPALIVE = 15.0
EVENTS_MAX_S = 300.0
EVENTS_RETRY_MS = 2000
# path parameters take any one segment; the handler judges it (a JSON 404, not
# Jupyter's HTML page, for a name that cannot exist)
NAME = r"(?P<name>[^/]+)"
SESSION = r"(?P<session_id>[^/]+)"
TASK = r"(?P<task_id>[^/]+)"
SERVER = r"(?P<server>[^/]+)"
TOOL = r"(?P<tool>[^/]+)"
RUN = r"(?P<run_id>[^/]+)"
SCHEDULE = r"(?P<schedule_id>[^/]+)"


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class HealthHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        rt = self.runtime
        store = rt.store.writer.health()  # writes that failed for good make the server "degraded"
        self.write_json(
            {
                "status": "ok" if store["status"] == "ok" else "degraded",
                "version": __version__,
                "backend": rt.backend.name,
                "data_dir": rt.state_dir,
                "store": store,
                "functions": len(await asyncio.to_thread(rt.functions)),
                "live_instances": len(rt.live_instances()),
                "pool": rt.pool.sizes(),
            }
        )


class VersionHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        """The handshake of the JupyterLab extension: it compares its own version
        with this one and says so when they differ (a stale browser tab, or a
        server extension older than the frontend one)."""
        self.write_json({"version": __version__, "api": API_VERSION})


class EventsHandler(BaseHandler):
    """``text/event-stream`` (server-sent events): one ``changed`` event each
    time what the sidebar shows may have changed, so it refetches at once
    instead of polling.

    A change is a committed store write (a session opened or closed, a cold
    start, a task, a run, an invocation's log line, a scale event: every
    write goes through the one writer, which counts them; the usage meter's
    own writes and flushes are not changes) or a live instance come or gone.  The
    check is two integers every :data:`EVENTS_TICK` seconds, however many
    clients listen; at most one event per tick.  A ``: keep-alive`` comment
    goes out every :data:`EVENTS_KEEPALIVE` seconds, and a stream ends after
    :data:`EVENTS_MAX_S` (the browser's ``EventSource`` reconnects by itself,
    after ``retry`` ms), so no connection outlives a proxy's idle timeout or
    the server.
    """

    @jupyter_auth
    async def get(self) -> None:
        rt = self.runtime
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

        def mark() -> tuple[int, int]:
            return rt.store.writer.changes, len(rt.live_instances())

        loop = asyncio.get_running_loop()
        started = last_sent = loop.time()
        seen = mark()
        try:
            self.write(f"retry: {EVENTS_RETRY_MS}\nevent: hello\ndata: {dumps({'version': __version__})}\n\n")
            await self.flush()
            while loop.time() - started < EVENTS_MAX_S:
                await asyncio.sleep(EVENTS_TICK)
                now = mark()
                if now != seen:
                    seen = now
                    self.write(f"event: changed\ndata: {dumps({'writes': now[0], 'instances': now[1]})}\n\n")
                elif loop.time() - last_sent >= EVENTS_KEEPALIVE:
                    self.write(": keep-alive\n\n")
                else:
                    continue
                last_sent = loop.time()
                await self.flush()
        except StreamClosedError:
            return  # the tab went away
        self.finish()


class FunctionsHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await asyncio.to_thread(self.runtime.functions))

    @jupyter_auth
    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise BadPayload("the body must be a FunctionSpec object (JSON)")
        spec = FunctionSpec.from_dict(body)
        if spec.source.kind == "file":
            raise InvalidArgument("source.kind 'file' is not accepted over HTTP: send the code (kind 'code')")
        row = await self.runtime.deploy(spec)
        self.write_json(row, status=201)


class FunctionHandler(BaseHandler):
    @jupyter_auth
    async def get(self, name: str) -> None:
        rt = self.runtime
        row = await asyncio.to_thread(rt.store.get_function, name)
        row["pool"] = rt.pool.sizes().get(name)
        row["endpoint"] = self.base_url.rstrip("/") + f"/functionai/invoke/{name}"
        self.write_json(row)

    @jupyter_auth
    async def delete(self, name: str) -> None:
        await self.runtime.delete(name)
        self.set_status(204)
        self.finish()


class VersionsHandler(BaseHandler):
    @jupyter_auth
    async def get(self, name: str) -> None:
        self.write_json(await asyncio.to_thread(self.runtime.versions, name))


class RollbackHandler(BaseHandler):
    @jupyter_auth
    async def post(self, name: str) -> None:
        body = self.json_body()
        version = body.get("version") if isinstance(body, dict) else None
        if isinstance(version, bool) or not isinstance(version, int):
            raise BadPayload('the body must be {"version": <int>}')
        self.write_json(await self.runtime.rollback(name, version))


class FunctionSessionsHandler(BaseHandler):
    @jupyter_auth
    async def post(self, name: str) -> None:
        """Open a session (its sandbox starts now, no call yet)."""
        body = self.json_body()
        sid = body.get("session") if isinstance(body, dict) else None
        self.write_json(await self.runtime.open_session(name, sid), status=201)


class SessionsHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(
            await self.runtime.sessions(self.get_query_argument("function", None), self.get_query_argument("status", None))
        )


class SessionHandler(BaseHandler):
    @jupyter_auth
    async def get(self, session_id: str) -> None:
        self.write_json(await self.runtime.describe_session(session_id))

    @jupyter_auth
    async def delete(self, session_id: str) -> None:
        await self.runtime.close_session(session_id)
        self.set_status(204)
        self.finish()


class InstancesHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        out = []
        for inst in self.runtime.live_instances():
            out.append(
                {
                    "id": inst.id,
                    "function": inst.fv.name,
                    "version": inst.fv.version,
                    "backend": self.runtime.backend.name,
                    "path": inst.path,
                    "session_id": inst.bound_session,
                    "isolation": inst.isolation,
                    "gpu": slice_.to_dict() if (slice_ := getattr(inst, "gpu_slice", None)) is not None else None,
                    **inst.stats(),
                }
            )
        self.write_json(out)


class ColdStartsHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await self.runtime.coldstarts(self.get_query_argument("function", None), query_int(self, "limit", 500)))


class InvocationsHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(
            await self.runtime.invocations(
                self.get_query_argument("function", None), self.get_query_argument("session", None), query_int(self, "limit", 100)
            )
        )


class LatencyHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await self.runtime.latency())


class UsageHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(
            await self.runtime.usage(
                self.get_query_argument("function", None),
                self.get_query_argument("session", None),
                query_float(self, "since", 0, float("inf")),
                query_float(self, "until", 0, float("inf")),
                query_float(self, "step", 60, 366 * 86400),
                self.get_query_argument("by", "session"),
            )
        )


class ScalingHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(
            await self.runtime.scaling(
                self.get_query_argument("function", None),
                query_float(self, "since", 0, float("inf")),
                query_int(self, "limit", 200),
            )
        )


class GpusHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await asyncio.to_thread(self.runtime.gpus))  # NVML calls block


class KeysHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await self.runtime.keys(self.get_query_argument("function", None)))

    @jupyter_auth
    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("function"), str):
            raise BadPayload('the body must be {"function": <name>, "note": <text, optional>}')
        note = body.get("note", "")
        if not isinstance(note, str):
            raise BadPayload("note must be a string")
        if body["function"].startswith(KEY_SCOPE_PREFIX):  # "mcp:<server>": that MCP server's endpoint
            self.write_json(await self.mcp.create_key(body["function"][len(KEY_SCOPE_PREFIX) :], note), status=201)
            return
        self.write_json(await self.runtime.create_key(body["function"], note), status=201)


class KeyHandler(BaseHandler):
    @jupyter_auth
    async def delete(self, key_id: str) -> None:
        await self.runtime.revoke_key(key_id)
        self.set_status(204)
        self.finish()


def query_float(handler: BaseHandler, name: str, lo: float, hi: float) -> float | None:
    raw = handler.get_query_argument(name, None)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not lo <= value <= hi:
        raise InvalidArgument(f"query parameter {name}={raw!r} must be a number in [{lo:g}, {hi:g}]")
    return value


class FunctionTasksHandler(BaseHandler):
    body_allows_nul = True  # the body is the task's event: the function's data

    @jupyter_auth
    async def post(self, name: str) -> None:
        """Enqueue a durable task; the body is the event, as for invoke."""
        retries = self.get_query_argument("retries", None)
        attempts = self.get_query_argument("max_attempts", None)
        task = await self.runtime.tasks.submit(
            name,
            self.json_body(),
            session=self.get_query_argument("session", None),
            timeout=query_float(self, "timeout", float("-inf"), float("inf")),
            retries=query_int(self, "retries", 0, -(10**9), 10**9) if retries is not None else None,
            max_attempts=query_int(self, "max_attempts", 1, -(10**9), 10**9) if attempts is not None else None,
        )
        self.set_header("Location", self.base_url.rstrip("/") + f"/functionai/api/tasks/{task['id']}")
        self.write_json(task, status=202)


class TasksHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(
            await self.runtime.tasks.list_tasks(
                self.get_query_argument("function", None),
                self.get_query_argument("state", None),
                query_float(self, "since", 0, float("inf")),
                query_float(self, "until", 0, float("inf")),
                query_int(self, "limit", 100),
            )
        )


class TaskCountsHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await self.runtime.tasks.counts())


class TaskHandler(BaseHandler):
    @jupyter_auth
    async def get(self, task_id: str) -> None:
        """The task; ``?wait=S`` long-polls up to S seconds (≤ 300) for it to finish."""
        wait = query_float(self, "wait", 0, 300)
        if wait:
            self.write_json(await self.runtime.tasks.wait(task_id, wait))
        else:
            self.write_json(await self.runtime.tasks.get(task_id))


class TaskCancelHandler(BaseHandler):
    @jupyter_auth
    async def post(self, task_id: str) -> None:
        self.write_json(await self.runtime.tasks.cancel(task_id))


class TaskRetryHandler(BaseHandler):
    @jupyter_auth
    async def post(self, task_id: str) -> None:
        self.write_json(await self.runtime.tasks.retry(task_id))


RUN_FIELDS = ("notebook", "parameters", "timeout", "retries", "output_formats", "kernel", "name", "tags", "idempotency_token")


class RunsHandler(BaseHandler):
    @property
    def runs(self) -> Any:
        return self.settings["functionai_runs"]

    @jupyter_auth
    async def get(self) -> None:
        """Runs, newest first: ``?state=``, ``?tag=``, ``?schedule=``, ``?limit=``."""
        self.write_json(
            await self.runs.list_runs(
                self.get_query_argument("state", None), query_int(self, "limit", 100),
                schedule_id=self.get_query_argument("schedule", None), tag=self.get_query_argument("tag", None),
            )
        )

    @jupyter_auth
    async def post(self) -> None:
        """Start a run: ``{"notebook", "parameters", "timeout", "retries", "output_formats", "kernel", "name", "tags", "idempotency_token"}``."""
        body = self.json_body()
        if not isinstance(body, dict):
            raise BadPayload('the body must be {"notebook": PATH, "parameters": {...}, ...}')
        unknown = set(body) - set(RUN_FIELDS)
        if unknown:
            raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}; known: {', '.join(RUN_FIELDS)}", field=sorted(unknown)[0])
        run = await self.runs.start(
            body.get("notebook"), body.get("parameters"), timeout=body.get("timeout"), retries=body.get("retries"),
            output_formats=body.get("output_formats"), kernel=body.get("kernel"), name=body.get("name"), tags=body.get("tags"),
            idempotency_token=body.get("idempotency_token"),
        )
        self.set_header("Location", self.base_url.rstrip("/") + f"/functionai/api/runs/{run['id']}")
        self.write_json(run, status=202)


class RunHandler(BaseHandler):
    @jupyter_auth
    async def get(self, run_id: str) -> None:
        """The run; ``?wait=S`` long-polls up to S seconds (<= 300) for it to finish."""
        runs = self.settings["functionai_runs"]
        wait = query_float(self, "wait", 0, 300)
        self.write_json(await (runs.wait(run_id, wait) if wait else runs.get(run_id)))

    @jupyter_auth
    async def delete(self, run_id: str) -> None:
        """Delete a finished run and its outputs (409 while it is queued or running)."""
        await self.settings["functionai_runs"].delete(run_id)
        self.set_status(204)
        self.finish()


class RunCancelHandler(BaseHandler):
    @jupyter_auth
    async def post(self, run_id: str) -> None:
        self.write_json(await self.settings["functionai_runs"].cancel(run_id))


class RunOutputHandler(BaseHandler):
    @jupyter_auth
    async def get(self, run_id: str, fmt: str) -> None:
        """Download an output of the run (``ipynb`` or ``html``) as an attachment."""
        path = await self.settings["functionai_runs"].output_path(run_id, fmt)
        data = await asyncio.to_thread(_read_bytes, path)
        self.set_header("Content-Type", "text/html; charset=utf-8" if fmt == "html" else "application/x-ipynb+json")
        self.set_header("Content-Disposition", f'attachment; filename="{os.path.basename(path)}"')
        self.finish(data)


class SchedulesHandler(BaseHandler):
    @property
    def schedules(self) -> Any:
        return self.settings["functionai_schedules"]

    @jupyter_auth
    async def get(self) -> None:
        self.write_json(await self.schedules.list_schedules())

    @jupyter_auth
    async def post(self) -> None:
        """Create a schedule: 201 (200 when ``idempotency_token`` names one made before)."""
        schedule, created = await self.schedules.create(self.json_body())
        self.set_header("Location", self.base_url.rstrip("/") + f"/functionai/api/schedules/{schedule['id']}")
        self.write_json(schedule, status=201 if created else 200)


class ScheduleHandler(BaseHandler):
    @property
    def schedules(self) -> Any:
        return self.settings["functionai_schedules"]

    @jupyter_auth
    async def get(self, schedule_id: str) -> None:
        self.write_json(await self.schedules.get(schedule_id))

    @jupyter_auth
    async def patch(self, schedule_id: str) -> None:
        self.write_json(await self.schedules.update(schedule_id, self.json_body()))

    @jupyter_auth
    async def delete(self, schedule_id: str) -> None:
        await self.schedules.delete(schedule_id)
        self.set_status(204)
        self.finish()


class ScheduleActionHandler(BaseHandler):
    @jupyter_auth
    async def post(self, schedule_id: str, action: str) -> None:
        schedules = self.settings["functionai_schedules"]
        if action not in ("run", "pause", "resume"):
            raise NotFound(f"no schedule action {action!r}: run, pause or resume")
        if action == "run":
            self.write_json(await schedules.run_now(schedule_id), status=202)
        elif action == "pause":
            self.write_json(await schedules.pause(schedule_id))
        else:
            self.write_json(await schedules.resume(schedule_id))


class ScheduleRunsHandler(BaseHandler):
    @jupyter_auth
    async def get(self, schedule_id: str) -> None:
        """The schedule's runs, newest first (``?state=``, ``?limit=``)."""
        self.write_json(
            await self.settings["functionai_schedules"].runs_of(schedule_id, query_int(self, "limit", 100), self.get_query_argument("state", None))
        )


class OpenAPIHandler(BaseHandler):
    @jupyter_auth
    async def get(self) -> None:
        self.write_json(openapi())


# -- the route table and the OpenAPI document made from it ---------------------------------


@dataclass(frozen=True)
class Op:
    summary: str
    body: str | None = None  # schema name of the request body
    ok: int = 200
    returns: str | None = None  # schema name of the response
    query: tuple[str, ...] = ()
    errors: tuple[int, ...] = (400, 404)


@dataclass(frozen=True)
class Route:
    pattern: str  # tornado regex, relative to the base URL
    path: str  # OpenAPI path template
    handler: type[web.RequestHandler]
    ops: dict[str, Op] = field(default_factory=dict)


ROUTES: list[Route] = [
    Route(f"{API}/health", "/functionai/api/health", HealthHandler, {"get": Op("Runtime health and pools", returns="Health")}),
    Route(f"{API}/openapi.json", "/functionai/api/openapi.json", OpenAPIHandler, {"get": Op("This document")}),
    Route(f"{API}/version", "/functionai/api/version", VersionHandler, {"get": Op("The server extension's version (the JupyterLab extension's handshake)", returns="Health", errors=())}),
    Route(f"{API}/events", "/functionai/api/events", EventsHandler, {"get": Op("Server-sent events: 'changed' whenever what the sidebar shows may have changed", errors=())}),
    Route(
        f"{API}/functions",
        "/functionai/api/functions",
        FunctionsHandler,
        {
            "get": Op("List functions", returns="FunctionList"),
            "post": Op("Deploy a new version of a function", body="FunctionSpec", ok=201, returns="FunctionVersion", errors=(400, 422)),
        },
    ),
    Route(
        f"{API}/functions/{NAME}",
        "/functionai/api/functions/{name}",
        FunctionHandler,
        {"get": Op("Active version of a function", returns="FunctionVersion"), "delete": Op("Delete a function and end its sessions", ok=204)},
    ),
    Route(f"{API}/functions/{NAME}/versions", "/functionai/api/functions/{name}/versions", VersionsHandler, {"get": Op("All versions", returns="FunctionVersionList")}),
    Route(
        f"{API}/functions/{NAME}/rollback",
        "/functionai/api/functions/{name}/rollback",
        RollbackHandler,
        {"post": Op("Make an earlier version active", body="Rollback", returns="FunctionVersion")},
    ),
    Route(
        f"{API}/functions/{NAME}/sessions",
        "/functionai/api/functions/{name}/sessions",
        FunctionSessionsHandler,
        {"post": Op("Open a session: its sandbox starts now", body="OpenSession", ok=201, returns="Session")},
    ),
    Route(f"{API}/sessions", "/functionai/api/sessions", SessionsHandler, {"get": Op("List sessions", returns="SessionList", query=("function", "status"))}),
    Route(
        f"{API}/sessions/{SESSION}",
        "/functionai/api/sessions/{session_id}",
        SessionHandler,
        {"get": Op("Describe a session", returns="Session"), "delete": Op("Close a session", ok=204)},
    ),
    Route(f"{API}/instances", "/functionai/api/instances", InstancesHandler, {"get": Op("Live instances", returns="AnyList")}),
    Route(f"{API}/coldstarts", "/functionai/api/coldstarts", ColdStartsHandler, {"get": Op("Cold starts, newest first", returns="AnyList", query=("function", "limit"))}),
    Route(
        f"{API}/invocations",
        "/functionai/api/invocations",
        InvocationsHandler,
        {"get": Op("Recent invocations with their logs", returns="AnyList", query=("function", "session", "limit"))},
    ),
    Route(
        f"{API}/usage",
        "/functionai/api/usage",
        UsageHandler,
        {"get": Op("The usage ledger: per function and session (and per step seconds, a multiple of 60): cpu_s, mem_gib_s, gpu_s, gpu_mem_gib_s, active_s, idle_s", returns="AnyList", query=("function", "session", "since", "until", "step", "by"))},
    ),
    Route(
        f"{API}/scaling",
        "/functionai/api/scaling",
        ScalingHandler,
        {"get": Op("Scaling on load: per function its min/max instances, target, ready instances, calls in flight and queued; and the scale events, oldest first", returns="Health", query=("function", "since", "limit"))},
    ),
    Route(f"{API}/gpus", "/functionai/api/gpus", GpusHandler, {"get": Op("GPUs: devices, memory, MIG instances and the slice each instance holds; or why there are none", returns="Health", errors=())}),
    Route(f"{API}/latency", "/functionai/api/latency", LatencyHandler, {"get": Op("Per function over the last 5,000 invocations: calls, errors, p50 and p95 ms", returns="AnyList", errors=())}),
    Route(
        f"{API}/keys",
        "/functionai/api/keys",
        KeysHandler,
        {"get": Op("Function-scoped keys (no secrets)", returns="AnyList", query=("function",)), "post": Op("Create a key", body="CreateKey", ok=201, returns="Key")},
    ),
    Route(
        f"{API}/functions/{NAME}/tasks",
        "/functionai/api/functions/{name}/tasks",
        FunctionTasksHandler,
        {"post": Op("Submit a durable task (the body is the event)", body="Event", ok=202, returns="Task", query=("session", "timeout", "retries", "max_attempts"), errors=(400, 404, 413))},
    ),
    Route(f"{API}/tasks", "/functionai/api/tasks", TasksHandler, {"get": Op("List tasks, newest first", returns="TaskList", query=("function", "state", "since", "until", "limit"))}),
    Route(f"{API}/tasks/counts", "/functionai/api/tasks/counts", TaskCountsHandler, {"get": Op("Task counts per function and state", returns="Health")}),
    Route(f"{API}/tasks/{TASK}", "/functionai/api/tasks/{task_id}", TaskHandler, {"get": Op("Describe a task (?wait=S long-polls until it finishes)", returns="Task", query=("wait",))}),
    Route(f"{API}/tasks/{TASK}/cancel", "/functionai/api/tasks/{task_id}/cancel", TaskCancelHandler, {"post": Op("Cancel a queued or running task", returns="Task", errors=(404, 409))}),
    Route(f"{API}/tasks/{TASK}/retry", "/functionai/api/tasks/{task_id}/retry", TaskRetryHandler, {"post": Op("Run a failed, cancelled or timed-out task again from its last checkpoint", returns="Task", errors=(404, 409))}),
    Route(f"{API}/runs", "/functionai/api/runs", RunsHandler, {
        "get": Op("List runs, newest first", returns="AnyList", query=("state", "tag", "schedule", "limit")),
        "post": Op("Start a run: a notebook executed with papermill in a sandbox (a durable task)", body="StartRun", ok=202, returns="Run", errors=(400, 404)),
    }),
    Route(f"{API}/runs/{RUN}", "/functionai/api/runs/{run_id}", RunHandler, {
        "get": Op("Describe a run (?wait=S long-polls until it finishes)", returns="Run", query=("wait",)),
        "delete": Op("Delete a finished run and its outputs", ok=204, errors=(404, 409)),
    }),
    Route(f"{API}/runs/{RUN}/cancel", "/functionai/api/runs/{run_id}/cancel", RunCancelHandler, {"post": Op("Stop a queued or running run", returns="Run", errors=(404, 409))}),
    Route(f"{API}/runs/{RUN}/outputs/(?P<fmt>[^/]+)", "/functionai/api/runs/{run_id}/outputs/{fmt}", RunOutputHandler, {
        "get": Op("Download an output of a run (ipynb or html)", errors=(404,)),
    }),
    Route(f"{API}/schedules", "/functionai/api/schedules", SchedulesHandler, {
        "get": Op("List schedules with their next fire times", returns="AnyList"),
        "post": Op("Create a schedule (a job definition): a notebook run on a cron", body="CreateSchedule", ok=201, returns="Schedule", errors=(400, 404)),
    }),
    Route(f"{API}/schedules/{SCHEDULE}", "/functionai/api/schedules/{schedule_id}", ScheduleHandler, {
        "get": Op("Describe a schedule", returns="Schedule", errors=(404,)),
        "patch": Op("Change a schedule's fields", body="CreateSchedule", returns="Schedule"),
        "delete": Op("Delete a schedule (its runs stay)", ok=204, errors=(404,)),
    }),
    Route(f"{API}/schedules/{SCHEDULE}/runs", "/functionai/api/schedules/{schedule_id}/runs", ScheduleRunsHandler, {
        "get": Op("The schedule's runs, newest first", returns="AnyList", query=("state", "limit"), errors=(404,)),
    }),
    Route(f"{API}/schedules/{SCHEDULE}/(?P<action>[^/]+)", "/functionai/api/schedules/{schedule_id}/{action}", ScheduleActionHandler, {
        "post": Op("run: start a run now; pause / resume the schedule", returns="Schedule", errors=(404,)),
    }),
    Route(f"{API}/keys/(?P<key_id>[^/]+)", "/functionai/api/keys/{key_id}", KeyHandler, {"delete": Op("Revoke a key", ok=204)}),
    Route(
        f"{API}/mcp/servers",
        "/functionai/api/mcp/servers",
        McpServersHandler,
        {
            "get": Op("Hosted MCP servers with their endpoints and tools", returns="McpServerList"),
            "post": Op("Host a stdio MCP server (a command or a catalog name), or create a function-backed one", body="CreateMcpServer", ok=201, returns="McpServer", errors=(400, 409, 422)),
        },
    ),
    Route(
        f"{API}/mcp/servers/{SERVER}",
        "/functionai/api/mcp/servers/{server}",
        McpServerHandler,
        {"get": Op("One hosted MCP server", returns="McpServer"), "delete": Op("Remove an MCP server and end its sessions", ok=204)},
    ),
    Route(
        f"{API}/mcp/servers/{SERVER}/tools/{TOOL}",
        "/functionai/api/mcp/servers/{server}/tools/{tool}",
        McpToolHandler,
        {
            "put": Op("Publish a tool (a notebook function) on a function-backed MCP server", body="PublishTool", returns="McpServer", errors=(400, 404, 409, 422)),
            "delete": Op("Remove a tool", returns="McpServer"),
        },
    ),
    Route(f"{API}/mcp/sessions", "/functionai/api/mcp/sessions", McpSessionsHandler, {"get": Op("MCP sessions, newest first", returns="AnyList", query=("server", "status"))}),
    Route(
        f"{API}/mcp/sessions/{SESSION}",
        "/functionai/api/mcp/sessions/{session_id}",
        McpSessionHandler,
        {"delete": Op("End an MCP session, whoever opened it (its client then gets 404 and initializes again)", ok=204, errors=(404,))},
    ),
    Route(
        f"/functionai/mcp/{SERVER}/mcp",
        "/functionai/mcp/{server}/mcp",
        McpEndpointHandler,
        {
            "post": Op("MCP over streamable HTTP: one JSON-RPC message (initialize starts a session: Mcp-Session-Id)", body="McpMessage", returns="McpMessage", errors=(400, 401, 403, 404)),
            "get": Op("MCP over streamable HTTP: the session's server-sent event stream", errors=(400, 401, 403, 404, 406)),
            "delete": Op("MCP over streamable HTTP: end the session", ok=204, errors=(400, 401, 403, 404)),
        },
    ),
    Route(
        f"/functionai/invoke/{NAME}",
        "/functionai/invoke/{name}",
        InvokeHandler,
        {
            "post": Op(
                "Invoke a function (JSON in, JSON out; SSE with Accept: text/event-stream)",
                body="Event",
                returns="Result",
                query=("session",),
                errors=(400, 401, 403, 404, 413, 422, 503, 504),
            )
        },
    ),
]


def handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    return [(r.pattern, r.handler) for r in ROUTES]


_ANY = {"type": "object", "additionalProperties": True}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["kind", "message"], "properties": {"kind": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "FunctionSpec": {
        "type": "object",
        "required": ["name", "source"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,62}$"},
            "source": {
                "type": "object",
                "required": ["kind"],
                "properties": {"kind": {"type": "string", "enum": ["code", "module"]}, "code": {"type": "string"}, "module": {"type": "string"}},
            },
            "handler": {"type": "string"},
            "resources": _ANY,
            "timeout_s": {"type": "number"},
            "concurrency": {"type": "integer"},
            "session": _ANY,
            "min_instances": {"type": "integer"},
            "max_instances": {"type": "integer"},
            "target_concurrency": {"type": "integer"},
            "scale_cooldown_s": {"type": "number"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "network": {"type": "string", "enum": ["none", "loopback", "host"]},
            "isolation_required": {"type": "array", "items": {"type": "string"}},
            "seccomp": {"type": "string", "enum": ["default", "off"]},
            "seccomp_allow": {"type": "array", "items": {"type": "string"}},
            "limits": _ANY,
            "tasks": _ANY,
            "description": {"type": "string"},
            "warmup": {"type": ["string", "null"]},
        },
    },
    "FunctionVersion": _ANY,
    "FunctionList": {"type": "array", "items": _ANY},
    "FunctionVersionList": {"type": "array", "items": _ANY},
    "Rollback": {"type": "object", "required": ["version"], "properties": {"version": {"type": "integer", "minimum": 1}}},
    "OpenSession": {"type": "object", "properties": {"session": {"type": "string"}}},
    "Session": _ANY,
    "SessionList": {"type": "array", "items": _ANY},
    "AnyList": {"type": "array", "items": _ANY},
    "Health": _ANY,
    "CreateKey": {"type": "object", "required": ["function"], "properties": {"function": {"type": "string"}, "note": {"type": "string"}}},
    "Key": {"type": "object", "properties": {"key": {"type": "string"}, "id": {"type": "string"}, "function": {"type": "string"}}},
    "Event": {},
    "StartRun": {"type": "object", "required": ["notebook"], "properties": {"notebook": {"type": "string"}, "parameters": {"type": "object"}, "timeout": {"type": "number"}, "retries": {"type": "integer"}, "output_formats": {"type": "array", "items": {"type": "string", "enum": ["ipynb", "html"]}}, "kernel": {"type": "string"}, "name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}, "idempotency_token": {"type": "string"}}},
    "CreateSchedule": {"type": "object", "required": ["notebook"], "properties": {"notebook": {"type": "string"}, "cron": {"type": ["string", "null"]}, "timezone": {"type": "string"}, "parameters": {"type": "object"}, "enabled": {"type": "boolean"}, "overlap": {"type": "string", "enum": ["skip", "queue", "allow"]}, "catch_up": {"type": "string", "enum": ["none", "latest"]}, "output_formats": {"type": "array", "items": {"type": "string", "enum": ["ipynb", "html"]}}, "kernel": {"type": "string"}, "name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}, "timeout": {"type": "number"}, "retries": {"type": "integer"}, "idempotency_token": {"type": "string"}}},
    "Schedule": {"type": "object", "required": ["id", "notebook", "cron"], "properties": {"id": {"type": "string"}, "notebook": {"type": "string"}, "cron": {"type": ["string", "null"]}, "timezone": {"type": "string"}, "enabled": {"type": "boolean"}, "next_fire_at": {"type": ["number", "null"]}, "next_fire_times": {"type": "array"}, "last_result": {"type": ["string", "null"]}, "last_run_id": {"type": ["string", "null"]}}},
    "Run": {"type": "object", "required": ["id", "state"], "properties": {"id": {"type": "string"}, "state": {"type": "string"}, "notebook": {"type": "string"}, "parameters": {"type": "object"}, "attempts": {"type": "integer"}, "error": {}, "progress": {"type": ["number", "null"]}, "outputs": {"type": "object"}}},
    "Task": {"type": "object", "required": ["id", "state", "attempts"], "properties": {"id": {"type": "string"}, "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]}, "attempts": {"type": "integer"}, "result": {}, "error": _ANY, "progress": {"type": ["number", "null"]}}},
    "TaskList": {"type": "array", "items": _ANY},
    "Result": {},
    "McpServer": {
        "type": "object",
        "required": ["name", "kind", "path", "tools"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["functions", "stdio"]},
            "function": {"type": "string"},
            "path": {"type": "string"},
            "tools": {"type": "array", "items": {"$ref": "#/components/schemas/McpTool"}},
            "command": {"type": ["array", "null"], "items": {"type": "string"}},
            "catalog": {"type": ["string", "null"]},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "secrets": {"type": "array", "items": {"type": "string"}},
            "idle_ttl_s": {"type": ["number", "null"]},
            "live_sessions": {"type": "integer"},
        },
    },
    "McpTool": {
        "type": "object",
        "description": "A tool (as tools/list gives it) with its calls since the server started (in memory): p50/p95 over the last 1,000 calls, null before the first",
        "required": ["name", "inputSchema", "calls", "errors"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "inputSchema": _ANY,
            "outputSchema": _ANY,
            "calls": {"type": "integer"},
            "errors": {"type": "integer", "description": "isError results and JSON-RPC errors"},
            "p50_ms": {"type": ["number", "null"]},
            "p95_ms": {"type": ["number", "null"]},
            "last_called_at": {"type": ["number", "null"]},
            "last_error": {"type": ["string", "null"]},
        },
    },
    "McpServerList": {"type": "array", "items": {"$ref": "#/components/schemas/McpServer"}},
    "CreateMcpServer": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,58}$"},
            "kind": {"type": "string", "enum": ["stdio", "functions"]},
            "command": {"type": "array", "items": {"type": "string"}},
            "catalog": {"type": "string"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "secrets": {"type": "object", "additionalProperties": {"type": "string"}},
            "idle_ttl_s": {"type": "number"},
            "network": {"type": "string", "enum": ["none", "loopback", "host"]},
            "memory": {"type": ["string", "integer"]},
            "probe": {"type": "boolean"},
            "spec": _ANY,
        },
    },
    "PublishTool": {
        "type": "object",
        "required": ["code", "handler", "input_schema"],
        "properties": {
            "code": {"type": "string"},
            "handler": {"type": "string"},
            "description": {"type": "string"},
            "input_schema": _ANY,
            "output_schema": {"type": ["object", "null"]},
            "wrap_output": {"type": "boolean"},
            "ctx_param": {"type": ["string", "null"]},
            "spec": _ANY,
        },
    },
    "McpMessage": {"type": "object", "required": ["jsonrpc"], "properties": {"jsonrpc": {"const": "2.0"}, "id": {"type": ["string", "integer"]}, "method": {"type": "string"}, "params": _ANY}},
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from ``ROUTES`` (never written by hand)."""
    paths: dict[str, Any] = {}
    for r in ROUTES:
        item: dict[str, Any] = {}
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in _path_params(r.path)]
        for verb, op in r.ops.items():
            o: dict[str, Any] = {"summary": op.summary, "operationId": f"{verb}_{r.handler.__name__}"}
            o["parameters"] = params + [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in op.query]
            if op.body:
                o["requestBody"] = {"required": op.body not in ("Event",), "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.body}"}}}}
            ok: dict[str, Any] = {"description": "OK"}
            if op.returns and op.ok != 204:
                ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.returns}"}}}
            responses: dict[str, Any] = {str(op.ok): ok}
            for code in sorted({*op.errors, 403}):
                responses[str(code)] = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            o["responses"] = responses
            item[verb] = o
        paths[r.path] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "jupyter-functionai", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "jupyterToken": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "Authorization: token <jupyter server token>"},
                "functionKey": {"type": "http", "scheme": "bearer", "description": "a scoped key fai_...: a function's invoke gateway, or (scope mcp:<server>) an MCP server's endpoint"},
            },
        },
        "security": [{"jupyterToken": []}],
    }


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]

