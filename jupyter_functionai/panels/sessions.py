"""The Sessions panel: the affinity map session → instance → pid, with a Close button per session."""


from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient
from .base import _LivePanel, open_sessions
from .formatting import ENDED, STATUS_COLOURS, _esc, fmt_bytes, fmt_duration, path_colour
from .render import isolation_summary

# -- sessions -----------------------------------------------------------------------------------------

SESSION_COLUMNS = ("session", "function", "status", "instance", "pid", "path", "isolation achieved", "age", "idle", "calls", "state", "memory", "")
SESSION_GRID = "repeat(6, max-content) minmax(150px, 1fr) repeat(5, max-content) 84px"


class _SessionRow:
    def __init__(self, panel: SessionsPanel, sid: str) -> None:
        self.id = sid
        self.cells = [widgets.HTML(layout=widgets.Layout(overflow="hidden")) for _ in SESSION_COLUMNS[:-1]]
        for c in self.cells:
            c.add_class("fai-cell")
        self.cells[0].add_class("fai-session-id")
        self.button = widgets.Button(description="Close", icon="times", button_style="danger", tooltip=f"close session {sid}", layout=widgets.Layout(width="80px"))
        self.button.add_class("fai-close")
        self.button.on_click(lambda _b: panel.close_session(sid))

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.button]

    def update(self, s: dict[str, Any], closing: bool) -> None:
        inst = s.get("instance") or {}
        status = str(s.get("status", ""))
        iso_html, iso_title = isolation_summary(inst.get("isolation"))
        path = inst.get("path")
        values = [
            f'<code style="white-space:nowrap">{_esc(s.get("id"))}</code>',
            f"{_esc(s.get('function', ''))} <span style='opacity:.6'>v{_esc(s.get('version', ''))}</span>",
            f'<span class="fai-status-{_esc(status)}" style="color:{STATUS_COLOURS.get(status, "inherit")};font-weight:bold">{_esc(status)}</span>',
            f"<code style='white-space:nowrap'>{_esc(inst.get('id') or s.get('instance_id') or '—')}</code>",
            _esc(inst.get("pid") if inst.get("pid") is not None else "—"),
            f'<span style="color:{path_colour(path)};white-space:nowrap">{_esc(path)}</span>' if path else "—",
            f'<span title="{_esc(iso_title)}" style="line-height:1.3;display:inline-block">{iso_html}</span>',
            _esc(fmt_duration(s.get("age_s"))),
            _esc(fmt_duration(s.get("idle_s"))),
            _esc(s.get("calls", 0)),
            _esc(fmt_bytes(s.get("state_bytes"))),
            _esc(fmt_bytes(inst.get("uss") if inst.get("uss") is not None else inst.get("rss"))) if inst else "—",
        ]
        for cell, value in zip(self.cells, values, strict=True):
            cell.value = value
        ended = status in ENDED
        self.button.disabled = ended or closing
        self.button.description = "closed" if ended else ("closing…" if closing else "Close")

    def close(self) -> None:
        for w in self.widgets:
            w.close()


class SessionsPanel(_LivePanel):
    """The affinity map: session → instance → pid, isolation achieved, age, idle
    time, calls and state size, with a Close button per session."""

    kind = "sessions"
    title = "functionai sessions"

    def __init__(self, client: FunctionAIClient, function: str | None = None, *, include_ended: bool = False, interval: float = 2.0, **kw: Any) -> None:
        self.function = function
        self._rows: dict[str, _SessionRow] = {}
        self._closing: set[str] = set()
        self._order: list[str] = []
        self.include_ended = widgets.Checkbox(value=include_ended, description="show ended", indent=False, layout=widgets.Layout(width="120px"))
        self.summary = widgets.HTML()
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns=SESSION_GRID, grid_gap="2px 10px", align_items="center", overflow="auto"))
        self.grid.add_class("fai-sessions-grid")
        self._header = [widgets.HTML(f"<b>{_esc(c)}</b>") for c in SESSION_COLUMNS]
        if function:
            self.title = f"functionai sessions of {function}"
        super().__init__(client, interval=interval, **kw)
        for w in (self.include_ended, self.summary, self.grid, *self._header):
            self._own(w)
        self.include_ended.observe(lambda _c: self._submit(None, ""), names="value")

    def _controls(self) -> list[Any]:
        return [self.include_ended]

    def _body(self) -> list[Any]:
        return [self.summary, self.grid]

    def _fetch(self) -> list[dict[str, Any]]:
        if self.include_ended.value:
            return list(self.client.sessions(self.function))
        return open_sessions(self.client, self.function)

    def shown(self) -> list[dict[str, Any]]:
        """The sessions the table shows, newest first."""
        rows = self.data or []
        if not self.include_ended.value:
            rows = [s for s in rows if s.get("status") not in ENDED]
        return sorted(rows, key=lambda s: -float(s.get("created_at") or 0))

    def row(self, session_id: str) -> _SessionRow:
        return self._rows[session_id]

    def _render(self) -> None:
        all_rows = self.data or []
        counts: dict[str, int] = {}
        for s in all_rows:
            counts[str(s.get("status"))] = counts.get(str(s.get("status")), 0) + 1
        shown = self.shown()
        self.summary.value = (
            " · ".join(f"{n} {_esc(st)}" for st, n in sorted(counts.items())) or ("no sessions" if self.include_ended.value else "no open sessions")
        ) + (f" · function {_esc(self.function)}" if self.function else "")
        ids = [str(s["id"]) for s in shown]
        for sid in [k for k in self._rows if k not in ids]:
            self._rows.pop(sid).close()
        for s in shown:
            sid = str(s["id"])
            if sid not in self._rows:
                self._rows[sid] = _SessionRow(self, sid)
            if s.get("status") in ENDED:
                self._closing.discard(sid)
            self._rows[sid].update(s, sid in self._closing)
        if ids != self._order:
            self._order = ids
            self.grid.children = [*self._header, *(w for sid in ids for w in self._rows[sid].widgets)]

    def close_session(self, session_id: str) -> Future[Any]:
        """What a row's Close button does: close the session on the panel's thread, then refresh."""
        with self._lock:
            self._closing.add(session_id)
            if session_id in self._rows:
                self._rows[session_id].button.disabled = True
                self._rows[session_id].button.description = "closing…"

        def act() -> None:
            try:
                self.client.close_session(session_id)
            finally:
                self._closing.discard(session_id)

        return self._submit(act, f"closed session {session_id}")

    def _close_rows(self) -> None:
        for r in self._rows.values():
            r.close()
        self._rows.clear()
