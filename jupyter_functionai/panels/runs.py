"""The Runs panel: notebook runs and schedules (run now, pause, resume, cancel, outputs)."""


from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient, ServerClient, as_server
from .base import _LivePanel
from .formatting import _esc, fmt_duration, fmt_ms, path_colour
from .tasks import RETRYABLE, TASK_COLOURS, TASK_STATES

# -- runs and schedules --------------------------------------------------------------------------------

SCHEDULE_COLUMNS = ("schedule", "notebook", "when", "status", "next fire", "last result", "last run", "", "")
SCHEDULE_GRID = "repeat(7, max-content) 96px 96px"
RESULT_COLOURS = {"fired": "#2e7d32", "queued": "#1565c0", "skipped": "#b26a00", "missed": "#b26a00", "error": "#c62828"}
RUN_COLUMNS = ("run", "notebook", "state", "progress", "", "duration", "cold start", "tags", "outputs", "")
RUN_GRID = "repeat(3, max-content) 160px minmax(120px, 1fr) repeat(4, max-content) 84px"
ACTIVE_RUN_STATES = ("queued", "running")
NO_RUNS = "runs and schedules need a functionai server (this client has none: the embedded runtime?)"


def _server(client: FunctionAIClient) -> ServerClient:
    """``client`` as a functionai server's (runs, schedules, MCP): the panels
    act on those only once the server has answered."""
    server = as_server(client)
    if server is None:
        raise RuntimeError(f"this needs a functionai server, not {getattr(client, 'url', client)!r}")
    return server


def _row_box(cells: Sequence[Any], *classes: str) -> Any:
    """One table row: a box that does not draw itself (``display: contents``), so its
    cells sit in the columns of the grid around it, yet a row is one element (CSS class)."""
    box = widgets.Box(children=list(cells), layout=widgets.Layout(display="contents"))
    for c in classes:
        box.add_class(c)
    return box


def output_links(base: str, outputs: dict[str, Any] | None) -> str:
    """Links that open a run's outputs: the notebook in JupyterLab, the HTML as a file."""
    links = []
    order = sorted(outputs or {}, key=lambda f: (f != "ipynb", f != "html", f))
    for fmt in order:
        rel = (outputs or {}).get(fmt)
        if not rel:
            continue
        quoted = urllib.parse.quote(str(rel).replace("\\", "/").lstrip("/"), safe="/")
        href = f"{base}/lab/tree/{quoted}" if fmt == "ipynb" else f"{base}/files/{quoted}"
        links.append(
            f'<a class="fai-run-link" data-format="{_esc(fmt)}" href="{_esc(href)}" target="_blank" rel="noopener" '
            f'title="{_esc(rel)}" style="color:var(--jp-content-link-color, #1565c0);text-decoration:underline">{_esc(fmt)}</a>'
        )
    return " · ".join(links) if links else "—"


def run_coldstart(cold: dict[str, Any] | None) -> str:
    """How a run's kernel started: "warm kernel" (a kernel kept ready) or the sandbox's path."""
    if not cold:
        return "—"
    path = cold.get("path")
    warm = bool(cold.get("warm_kernel"))
    tip = [f"path {path or '?'}", "warm kernel" if warm else "kernel started for the run"]
    for key, label in (("first_call_ms", "first call"), ("kernel_start_ms", "kernel start")):
        if isinstance(cold.get(key), (int, float)):
            tip.append(f"{label} {fmt_ms(float(cold[key]))}")
    return (
        f'<span class="fai-run-coldstart" data-path="{_esc(path or "")}" data-warm-kernel="{str(warm).lower()}" '
        f'title="{_esc(" · ".join(tip))}" style="color:{path_colour(path)};white-space:nowrap">{_esc("warm kernel" if warm else path or "?")}</span>'
    )


class _ScheduleRow:
    def __init__(self, panel: RunsPanel, sid: str) -> None:
        self.id = sid
        self.cells = [widgets.HTML(layout=widgets.Layout(overflow="hidden")) for _ in SCHEDULE_COLUMNS[:-2]]
        for c, name in zip(self.cells, ("name", "notebook", "when", "status", "next", "result", "last-run"), strict=True):
            c.add_class("fai-cell")
            c.add_class(f"fai-schedule-{name}")
        self.run_button = widgets.Button(description="Run now", icon="bolt", button_style="primary", tooltip=f"run schedule {sid} now", layout=widgets.Layout(width="92px"))
        self.run_button.add_class("fai-schedule-run-now")
        self.run_button.on_click(lambda _b: panel.run_now(sid))
        self.toggle_button = widgets.Button(layout=widgets.Layout(width="92px"))
        self.toggle_button.add_class("fai-schedule-toggle")
        self.toggle_button.on_click(lambda _b: panel.toggle(sid))
        self.box = _row_box([*self.cells, self.run_button, self.toggle_button], "fai-schedule-row", f"fai-row-{sid}")

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.run_button, self.toggle_button, self.box]

    def update(self, s: dict[str, Any], busy: bool) -> None:
        enabled = bool(s.get("enabled"))
        cron = s.get("cron")
        nxt = list(s.get("next_fire_times") or [])
        result = s.get("last_result")
        counts = f"fired {s.get('fired', 0)} · skipped {s.get('skipped', 0)} · missed {s.get('missed', 0)}"
        last_fire = f"last fire {s['last_fire_time']} · " if s.get("last_fire_time") else ""
        values = [
            f"<b>{_esc(s.get('name') or '')}</b> <code style='opacity:.6;white-space:nowrap'>{_esc(s.get('id'))}</code>",
            f"<code style='white-space:nowrap'>{_esc(s.get('notebook', ''))}</code>",
            (
                f"<code style='white-space:nowrap'>{_esc(cron)}</code> <span class='fai-schedule-tz'>{_esc(s.get('timezone') or 'UTC')}</span>"
                if cron
                else "<span class='fai-on-demand' style='opacity:.7'>on demand</span>"
            ),
            (
                "<span class='fai-schedule-enabled' style='color:#2e7d32;font-weight:bold'>enabled</span>"
                if enabled
                else "<span class='fai-schedule-paused' style='color:#b26a00;font-weight:bold'>paused</span>"
            ),
            f"<span title='{_esc(chr(10).join(nxt))}' style='white-space:nowrap'>{_esc(nxt[0])}</span>" if nxt else "—",
            (
                f"<span class='fai-result-{_esc(result)}' title='{_esc(last_fire + counts + (chr(10) + str(s['last_error']) if s.get('last_error') else ''))}' "
                f"style='color:{RESULT_COLOURS.get(str(result), 'inherit')};font-weight:bold'>{_esc(result)}</span>"
                if result
                else f"<span title='{_esc(counts)}'>-</span>"
            ),
            f"<code style='white-space:nowrap'>{_esc(s['last_run_id'])}</code>" if s.get("last_run_id") else "-",
        ]
        for cell, value in zip(self.cells, values, strict=True):
            cell.value = value
        self.run_button.disabled = busy
        if enabled:
            self.toggle_button.description, self.toggle_button.icon, self.toggle_button.button_style = "Pause", "pause", "warning"
            self.toggle_button.tooltip = f"pause schedule {self.id}: no more fires until resumed"
        else:
            self.toggle_button.description, self.toggle_button.icon, self.toggle_button.button_style = "Resume", "play", "success"
            self.toggle_button.tooltip = f"resume schedule {self.id}"
        self.toggle_button.disabled = busy
        if busy:
            self.toggle_button.description = "…"

    def close(self) -> None:
        for w in self.widgets:
            w.close()


class _RunRow:
    def __init__(self, panel: RunsPanel, rid: str) -> None:
        self.id = rid
        self.cells = [widgets.HTML(layout=widgets.Layout(overflow="hidden")) for _ in range(3)]
        for c, name in zip(self.cells, ("name", "notebook", "state"), strict=True):
            c.add_class("fai-cell")
            c.add_class(f"fai-run-{name}")
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="150px"))
        self.bar.add_class("fai-run-progress")
        self.message = widgets.HTML(layout=widgets.Layout(overflow="hidden"))
        self.duration = widgets.HTML()
        self.coldstart = widgets.HTML()
        self.tags = widgets.HTML()
        self.links = widgets.HTML()
        for w, name in ((self.message, "message"), (self.duration, "duration"), (self.coldstart, "cold"), (self.tags, "tags"), (self.links, "links")):
            w.add_class("fai-cell")
            w.add_class(f"fai-run-{name}")
        self.button = widgets.Button(description="Cancel", icon="times", button_style="danger", tooltip=f"cancel run {rid}", layout=widgets.Layout(width="80px"))
        self.button.add_class("fai-run-cancel")
        self.button.on_click(lambda _b: panel.cancel(rid))
        self.box = _row_box(
            [*self.cells, self.bar, self.message, self.duration, self.coldstart, self.tags, self.links, self.button], "fai-run-row", f"fai-row-{rid}"
        )

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.bar, self.message, self.duration, self.coldstart, self.tags, self.links, self.button, self.box]

    def update(self, r: dict[str, Any], busy: bool, base: str) -> None:
        state = str(r.get("state", ""))
        notebook = str(r.get("notebook") or "")
        name = r.get("name") or notebook.rsplit("/", 1)[-1].removesuffix(".ipynb") or "?"
        via = f" · schedule {r['schedule_id']}" if r.get("schedule_id") else ""
        attempts = f" <span style='opacity:.6'>attempt {_esc(r['attempts'])}</span>" if (r.get("attempts") or 0) > 1 else ""
        values = [
            f"<b title='{_esc(json.dumps(r.get('parameters') or {}, default=str) + via)}'>{_esc(name)}</b> <code style='opacity:.6;white-space:nowrap'>{_esc(r.get('id'))}</code>",
            f"<code style='white-space:nowrap'>{_esc(notebook)}</code>",
            f'<span class="fai-run-{_esc(state)}" style="color:{TASK_COLOURS.get(state, "inherit")};font-weight:bold">{_esc(state)}</span>{attempts}',
        ]
        for cell, value in zip(self.cells, values, strict=True):
            cell.value = value
        progress = r.get("progress")
        self.bar.value = min(1.0, max(0.0, float(progress))) if progress is not None else (1.0 if state == "succeeded" else 0.0)
        self.bar.bar_style = {"succeeded": "success", "failed": "danger", "timed_out": "warning", "running": "info"}.get(state, "")
        err = r.get("error") or {}
        note = str(r.get("progress_message") or "")
        if state in RETRYABLE and err:
            note = f"{err.get('kind')}: {err.get('message', '')}"
        self.message.value = f'<span title="{_esc(note)}" style="white-space:nowrap">{_esc(note[:80])}</span>'
        self.duration.value = _esc(fmt_duration(r.get("duration_s")))
        self.coldstart.value = run_coldstart(r.get("cold_start"))
        tags = r.get("tags") or []
        self.tags.value = (
            " ".join(f"<span class='fai-tag' style='border:1px solid currentColor;border-radius:3px;padding:0 3px;opacity:.8'>{_esc(t)}</span>" for t in tags)
            if tags
            else "—"
        )
        self.links.value = output_links(base, r.get("outputs"))
        active = state in ACTIVE_RUN_STATES
        self.button.layout.visibility = "visible" if active else "hidden"
        self.button.disabled = busy or not active
        self.button.description = "…" if busy else "Cancel"

    def close(self) -> None:
        for w in self.widgets:
            w.close()


class RunsPanel(_LivePanel):
    """Notebook runs and their schedules: each schedule (cron and time zone,
    enabled or paused, next fire, last result) with Run now and Pause / Resume
    buttons, then the latest runs, newest first, with state, progress, duration,
    cold start, tags, links to their outputs and a Cancel button."""

    kind = "runs"
    title = "functionai runs"

    def __init__(self, client: FunctionAIClient, *, limit: int = 50, interval: float = 2.0, **kw: Any) -> None:
        self.limit = limit
        self._schedule_rows: dict[str, _ScheduleRow] = {}
        self._run_rows: dict[str, _RunRow] = {}
        self._busy: set[str] = set()  # schedule and run ids being acted on
        self._schedule_order: list[str] = []
        self._run_order: list[str] = []
        self.summary = widgets.HTML()
        self.summary.add_class("fai-runs-summary")
        self.schedules_heading = widgets.HTML("<b>schedules</b>")
        self.schedules_heading.add_class("fai-schedules-heading")
        self.schedule_grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns=SCHEDULE_GRID, grid_gap="2px 10px", align_items="center", overflow="auto"))
        self.schedule_grid.add_class("fai-schedules-grid")
        self.runs_heading = widgets.HTML("<b>runs</b>")
        self.runs_heading.add_class("fai-runs-heading")
        self.run_grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns=RUN_GRID, grid_gap="2px 10px", align_items="center", overflow="auto"))
        self.run_grid.add_class("fai-runs-grid")
        self._schedule_header = [widgets.HTML(f"<b>{_esc(c)}</b>") for c in SCHEDULE_COLUMNS]
        self._run_header = [widgets.HTML(f"<b>{_esc(c)}</b>") for c in RUN_COLUMNS]
        super().__init__(client, interval=interval, **kw)
        for w in (self.summary, self.schedules_heading, self.schedule_grid, self.runs_heading, self.run_grid, *self._schedule_header, *self._run_header):
            self._own(w)

    def _body(self) -> list[Any]:
        return [self.summary, self.schedules_heading, self.schedule_grid, self.runs_heading, self.run_grid]

    def _fetch(self) -> dict[str, Any]:
        server = as_server(self.client)
        if server is None:
            return {"unsupported": True, "base": "", "schedules": [], "runs": []}
        schedules = list(server.schedules())
        runs = list(server.runs(limit=self.limit))
        base = str(getattr(self.client, "url", "") or "").rstrip("/")
        return {"base": base, "schedules": schedules, "runs": runs}

    def shown_schedules(self) -> list[dict[str, Any]]:
        return list((self.data or {}).get("schedules", []))

    def shown_runs(self) -> list[dict[str, Any]]:
        """The runs the table shows, newest first."""
        return sorted((self.data or {}).get("runs", []), key=lambda r: -float(r.get("created_at") or 0))

    def schedule_row(self, schedule_id: str) -> _ScheduleRow:
        return self._schedule_rows[schedule_id]

    def run_row(self, run_id: str) -> _RunRow:
        return self._run_rows[run_id]

    def _render(self) -> None:
        data = self.data or {}
        schedules, runs = self.shown_schedules(), self.shown_runs()
        if data.get("unsupported"):
            self.summary.value = f"<span class='fai-runs-unsupported' style='opacity:.7'>{_esc(NO_RUNS)}</span>"
        else:
            enabled = sum(1 for s in schedules if s.get("enabled"))
            counts: dict[str, int] = {}
            for r in runs:
                counts[str(r.get("state"))] = counts.get(str(r.get("state")), 0) + 1
            run_counts = " · ".join(
                f"<span class='fai-count-{s}' style='color:{TASK_COLOURS[s]}'>{counts[s]} {s}</span>" for s in TASK_STATES if counts.get(s)
            )
            self.summary.value = (
                f"{len(schedules)} schedule{'s' if len(schedules) != 1 else ''} ({enabled} enabled, {len(schedules) - enabled} paused) · "
                + (f"latest {len(runs)} run{'s' if len(runs) != 1 else ''}: {run_counts}" if runs else "no runs yet")
            )
        self.schedules_heading.value = "<b>schedules</b>" + ("" if schedules else " <span style='opacity:.6'>none</span>")
        self.runs_heading.value = "<b>runs</b> <span style='opacity:.6'>newest first</span>" + ("" if runs else " <span style='opacity:.6'>none</span>")
        sids = [str(s["id"]) for s in schedules]
        for sid in [k for k in self._schedule_rows if k not in sids]:
            self._schedule_rows.pop(sid).close()
        for s in schedules:
            sid = str(s["id"])
            if sid not in self._schedule_rows:
                self._schedule_rows[sid] = _ScheduleRow(self, sid)
            self._schedule_rows[sid].update(s, sid in self._busy)
        if sids != self._schedule_order:
            self._schedule_order = sids
            self.schedule_grid.children = [*self._schedule_header, *(self._schedule_rows[sid].box for sid in sids)]
        rids = [str(r["id"]) for r in runs]
        for rid in [k for k in self._run_rows if k not in rids]:
            self._run_rows.pop(rid).close()
        base = str(data.get("base") or "")
        for r in runs:
            rid = str(r["id"])
            if rid not in self._run_rows:
                self._run_rows[rid] = _RunRow(self, rid)
            self._run_rows[rid].update(r, rid in self._busy, base)
        if rids != self._run_order:
            self._run_order = rids
            self.run_grid.children = [*self._run_header, *(self._run_rows[rid].box for rid in rids)]

    def _schedule_label(self, schedule_id: str) -> str:
        name = next((s.get("name") for s in self.shown_schedules() if s.get("id") == schedule_id), None)
        return f"{name} ({schedule_id})" if name else schedule_id

    def _start(self, key: str, buttons: Iterable[Any], action: Callable[[], Any], done: str) -> Future[Any]:
        """Disable the row's buttons at once, run ``action`` on the panel's thread, then refresh."""
        with self._lock:
            self._busy.add(key)
            for b in buttons:
                b.disabled = True

        def run() -> Any:
            try:
                return action()
            finally:
                self._busy.discard(key)

        return self._submit(run, done)

    def run_now(self, schedule_id: str) -> Future[Any]:
        """A schedule's Run now button: start a run of it now (whatever its cron), then refresh."""
        label = self._schedule_label(schedule_id)
        row = self._schedule_rows.get(schedule_id)

        def act() -> Any:
            run = _server(self.client).run_schedule_now(schedule_id)
            with self._lock:
                self._show_status(f"schedule {label}: started run {run.get('id')}")
            return run

        return self._start(schedule_id, [row.run_button, row.toggle_button] if row else [], act, "")

    def toggle(self, schedule_id: str) -> Future[Any]:
        """A schedule's Pause / Resume button: pause an enabled schedule, resume a paused one."""
        with self._lock:
            enabled = next((bool(s.get("enabled")) for s in self.shown_schedules() if s.get("id") == schedule_id), True)
        label = self._schedule_label(schedule_id)
        row = self._schedule_rows.get(schedule_id)
        buttons = [row.run_button, row.toggle_button] if row else []
        if enabled:
            return self._start(schedule_id, buttons, lambda: _server(self.client).pause_schedule(schedule_id), f"paused schedule {label}")
        return self._start(schedule_id, buttons, lambda: _server(self.client).resume_schedule(schedule_id), f"resumed schedule {label}")

    def cancel(self, run_id: str) -> Future[Any]:
        """A run's Cancel button: stop a queued or running run, then refresh."""
        row = self._run_rows.get(run_id)
        return self._start(run_id, [row.button] if row else [], lambda: _server(self.client).cancel_run(run_id), f"cancelled run {run_id}")

    def _close_rows(self) -> None:
        rows: list[_ScheduleRow | _RunRow] = [*self._schedule_rows.values(), *self._run_rows.values()]
        for row in rows:
            row.close()
        self._schedule_rows.clear()
        self._run_rows.clear()
