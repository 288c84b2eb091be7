"""The Tasks panel: durable tasks with counts, progress bars, cancel and retry."""


from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient
from .base import _LivePanel
from .formatting import _esc, fmt_duration

# -- tasks ---------------------------------------------------------------------------------------------

TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
TASK_COLOURS = {"queued": "#757575", "running": "#1565c0", "succeeded": "#2e7d32", "failed": "#c62828", "cancelled": "#757575", "timed_out": "#b26a00"}
TASK_COLUMNS = ("task", "function", "state", "attempts", "progress", "", "age", "")
TASK_GRID = "repeat(4, max-content) 160px minmax(120px, 1fr) max-content 84px"
RETRYABLE = ("failed", "cancelled", "timed_out")


class _TaskRow:
    def __init__(self, panel: TasksPanel, tid: str) -> None:
        self.id = tid
        self.cells = [widgets.HTML(layout=widgets.Layout(overflow="hidden")) for _ in range(4)]
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="150px"))
        self.bar.add_class("fai-task-progress")
        self.message = widgets.HTML(layout=widgets.Layout(overflow="hidden"))
        self.age = widgets.HTML()
        self.cells[0].add_class("fai-task-id")
        self.button = widgets.Button(layout=widgets.Layout(width="80px"))
        self.button.add_class("fai-task-action")
        self.button.on_click(lambda _b: panel.act(tid))

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.bar, self.message, self.age, self.button]

    def update(self, t: dict[str, Any], busy: bool) -> None:
        state = str(t.get("state", ""))
        values = [
            f'<code style="white-space:nowrap">{_esc(t.get("id"))}</code>',
            _esc(t.get("function", "")) + (f" <span style='opacity:.6'>@{_esc(t['session_id'])}</span>" if t.get("session_id") else ""),
            f'<span class="fai-task-{_esc(state)}" style="color:{TASK_COLOURS.get(state, "inherit")};font-weight:bold">{_esc(state)}</span>',
            f"{_esc(t.get('attempts', 0))}/{_esc(t.get('max_attempts', '?'))}",
        ]
        for cell, value in zip(self.cells, values, strict=True):
            cell.value = value
        progress = t.get("progress")
        self.bar.value = float(progress) if progress is not None else (1.0 if state == "succeeded" else 0.0)
        self.bar.bar_style = {"succeeded": "success", "failed": "danger", "timed_out": "warning", "running": "info"}.get(state, "")
        err = t.get("error") or {}
        note = t.get("progress_message") or ""
        if state in RETRYABLE and err:
            note = f"{err.get('kind')}: {err.get('message', '')}"
        self.message.value = f'<span title="{_esc(note)}" style="white-space:nowrap">{_esc(note[:80])}</span>'
        created = t.get("created_at")
        self.age.value = _esc(fmt_duration(time.time() - float(created))) if created else ""
        if state in ("queued", "running"):
            self.button.description, self.button.icon, self.button.button_style = "Cancel", "times", "danger"
            self.button.disabled = busy
        elif state in RETRYABLE:
            self.button.description, self.button.icon, self.button.button_style = "Retry", "redo", "warning"
            self.button.disabled = busy
        else:
            self.button.description, self.button.icon, self.button.button_style = "done", "check", ""
            self.button.disabled = True
        if busy:
            self.button.description = "…"

    def close(self) -> None:
        for w in self.widgets:
            w.close()


class TasksPanel(_LivePanel):
    """Durable tasks: counts per function and state, then each queued or
    running task (and the most recent finished ones) with its progress bar,
    attempts and a Cancel or Retry button."""

    kind = "tasks"
    title = "functionai tasks"

    def __init__(self, client: FunctionAIClient, function: str | None = None, *, recent: int = 20, interval: float = 2.0, **kw: Any) -> None:
        self.function = function
        self.recent = recent
        self._rows: dict[str, _TaskRow] = {}
        self._busy: set[str] = set()
        self._order: list[str] = []
        self.counts = widgets.HTML()
        self.counts.add_class("fai-task-counts")
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns=TASK_GRID, grid_gap="2px 10px", align_items="center", overflow="auto"))
        self.grid.add_class("fai-tasks-grid")
        self._header = [widgets.HTML(f"<b>{_esc(c)}</b>") for c in TASK_COLUMNS]
        if function:
            self.title = f"functionai tasks of {function}"
        super().__init__(client, interval=interval, **kw)
        for w in (self.counts, self.grid, *self._header):
            self._own(w)

    def _body(self) -> list[Any]:
        return [self.counts, self.grid]

    def _fetch(self) -> dict[str, Any]:
        counts = self.client.task_counts()
        active = [*self.client.tasks(self.function, state="running", limit=200), *self.client.tasks(self.function, state="queued", limit=200)]
        latest = self.client.tasks(self.function, limit=self.recent + len(active))
        # Three reads are not one snapshot: a task can move between them (queued
        # when "running" is read, running when "queued" is). The last read wins
        # for a task it holds, and a task read as active stays shown, so a row
        # never blinks out while its task changes state.
        newest = {str(t["id"]): t for t in latest}
        seen: set[str] = set()
        tasks: list[dict[str, Any]] = []
        for t in active:
            tid = str(t["id"])
            if tid not in seen:
                seen.add(tid)
                tasks.append(newest.get(tid, t))
        rest = [t for t in latest if str(t["id"]) not in seen]
        moved = [t for t in rest if t.get("state") in ("queued", "running")]
        finished = [t for t in rest if t.get("state") not in ("queued", "running")]
        return {"counts": counts, "tasks": tasks + moved + finished[: self.recent]}

    def shown(self) -> list[dict[str, Any]]:
        return list((self.data or {}).get("tasks", []))

    def row(self, task_id: str) -> _TaskRow:
        return self._rows[task_id]

    def _render(self) -> None:
        counts: dict[str, dict[str, int]] = (self.data or {}).get("counts", {})
        if self.function:
            counts = {k: v for k, v in counts.items() if k == self.function}
        if counts:
            head = "".join(f"<th style='padding:0 8px;color:{TASK_COLOURS[s]}'>{s}</th>" for s in TASK_STATES)
            body = "".join(
                f"<tr><td style='padding-right:8px'>{_esc(fn)}</td>" + "".join(f"<td class='fai-count-{s}' style='text-align:right;padding:0 8px'>{c.get(s, 0)}</td>" for s in TASK_STATES) + "</tr>"
                for fn, c in sorted(counts.items())
            )
            self.counts.value = f"<table class='fai-counts'><tr><th></th>{head}</tr>{body}</table>"
        else:
            self.counts.value = "no tasks"
        shown = self.shown()
        ids = [str(t["id"]) for t in shown]
        for tid in [k for k in self._rows if k not in ids]:
            self._rows.pop(tid).close()
        for t in shown:
            tid = str(t["id"])
            if tid not in self._rows:
                self._rows[tid] = _TaskRow(self, tid)
            self._rows[tid].update(t, tid in self._busy)
        if ids != self._order:
            self._order = ids
            self.grid.children = [*self._header, *(w for tid in ids for w in self._rows[tid].widgets)]

    def act(self, task_id: str) -> Future[Any]:
        """A row's button: cancel a queued/running task, retry a failed one."""
        with self._lock:
            state = next((t.get("state") for t in self.shown() if t.get("id") == task_id), None)
            self._busy.add(task_id)
            if task_id in self._rows:
                self._rows[task_id].button.disabled = True
        retry = state in RETRYABLE

        def run() -> None:
            try:
                if retry:
                    self.client.retry_task(task_id)
                else:
                    self.client.cancel_task(task_id)
            finally:
                self._busy.discard(task_id)

        return self._submit(run, f"{'retrying' if retry else 'cancelled'} task {task_id}")

    def _close_rows(self) -> None:
        for r in self._rows.values():
            r.close()
        self._rows.clear()
