"""Live notebook panels (ipywidgets) over the functionai API.

    from jupyter_functionai.panels import panel
    panel("sessions")                 # the affinity map, a Close button per session
    panel("coldstarts", function="f") # each start as a bar: spawn / init / first call
    panel("functions", function="f")  # versions, source, rollback, endpoint, curl
    panel("tasks")                    # durable tasks: counts, progress bars, cancel / retry
    panel("tools", function="notes")  # MCP servers: tools, schemas, calls/errors/p50, sessions, try a tool
    panel("runs")                     # notebook runs and schedules: run now, pause / resume, cancel, outputs
    panel()                           # all six in tabs

Also shown by ``%fai panel [sessions|coldstarts|functions|tasks|tools|runs] [NAME]``, by the
output of a ``%%function`` cell and by ``FunctionHandle.panel()``.

A panel is built from a client (:class:`~jupyter_functionai.client.Client` or
the embedded runtime's :class:`~jupyter_functionai.embedded.EmbeddedClient`:
the same methods), fetches once when it is made, then refreshes itself: a
daemon thread per panel polls the API every ``interval`` seconds and updates
the widgets' values, so the kernel is never blocked and no cell is re-run.
Button actions (close a session, roll back) run on that thread too: the
click returns at once, the outcome shows in the panel's status line, and
``panel.last_action`` is a :class:`~concurrent.futures.Future` of it.  Errors
while polling or acting are shown in the status line, never raised into the
kernel; after failures the poll interval backs off (up to 30 s).

Polling stops when the panel is closed (``panel.close()``), while its ``live``
toggle is off, and, inside tabs, while its tab is not the selected one.  A
panel made again by the same notebook cell (the cell re-run) closes the one
it replaces.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from .api import FunctionAIClient, ServerClient, as_server

__all__ = [
    "PATH_COLOURS",
    "ColdStartsPanel",
    "Dashboard",
    "FunctionsPanel",
    "RunsPanel",
    "SessionsPanel",
    "TasksPanel",
    "ToolsPanel",
    "coldstart_chart",
    "coldstart_histograms",
    "curl_example",
    "isolation_summary",
    "panel",
    "params_summary",
    "schema_skeleton",
]

#: The colour of each cold-start path (bars, histograms, badges).
PATH_COLOURS: dict[str, str] = {"warm-pool": "#2e7d32", "template-fork": "#1565c0", "fresh": "#e65100"}
OTHER_COLOUR = "#757575"
#: (field, label, opacity): a bar is split into these segments, shaded within the path's colour.
SEGMENTS: tuple[tuple[str, str, float], ...] = (("spawn_ms", "spawn", 1.0), ("init_ms", "init", 0.62), ("first_call_ms", "first call", 0.32))
ENDED = ("closed", "expired")
STATUS_COLOURS = {"live": "#2e7d32", "paused": "#b26a00", "closed": "#757575", "expired": "#757575"}
MAX_BACKOFF = 30.0
FONT = "var(--jp-code-font-family, monospace)"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def path_colour(path: str | None) -> str:
    return PATH_COLOURS.get(path or "", OTHER_COLOUR)


# -- formatting ---------------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round axis ticks from 0 to at least ``top`` (steps of 1, 2 or 5 x 10^k)."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else "?"


def _tick_label(v: float) -> str:
    return f"{v:g}"


# -- what the API returns, as HTML ----------------------------------------------------------------

_NS_SHORT = {"mount": "mnt"}


def isolation_summary(iso: dict[str, Any] | None) -> tuple[str, str]:
    """(HTML, plain-text tooltip) summarising an instance's achieved isolation."""
    if not iso:
        return "—", ""
    parts: list[str] = []
    ns = [_NS_SHORT.get(k, k) for k, v in (iso.get("namespaces") or {}).items() if v]
    if ns:
        parts.append("ns " + ",".join(ns))
    cgroup = iso.get("cgroup")
    parts.append(f"cgroup {cgroup}" if cgroup else "no cgroup")
    if iso.get("uid") is not None:
        parts.append(f"uid {iso['uid']}")
    if iso.get("network"):
        parts.append(f"net {iso['network']}")
    out = _esc(" · ".join(parts))
    missing = iso.get("missing") or {}
    if missing:
        out += f' · <span style="color:#c62828" title="{_esc(json.dumps(missing))}">missing: {_esc(", ".join(sorted(missing)))}</span>'
    title = json.dumps({k: v for k, v in iso.items() if k != "timings"}, sort_keys=True, default=str)
    return out, title


def curl_example(endpoint: str, session: str | None, event: str = '{"hello": "world"}') -> str:
    """A shell command that calls ``endpoint`` in ``session``; the token is left as a placeholder."""
    sid = session or "<session id>"
    return "\n".join(
        [
            f"curl -X POST {_shell_quote(endpoint)} \\",
            '  -H "Authorization: token $FUNCTIONAI_TOKEN" \\',
            "  -H 'Content-Type: application/json' \\",
            f"  -H {_shell_quote('X-Functionai-Session-Id: ' + sid)} \\",
            f"  -d {_shell_quote(event)}",
        ]
    )


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def coldstart_chart(rows: Sequence[dict[str, Any]], *, width: int = 760) -> str:
    """An inline SVG: one horizontal bar per start (newest at the top), split into
    spawn / init / first call and coloured by path, with a legend and an axis in ms."""
    if not rows:
        return '<div class="fai-chart fai-empty" style="opacity:.7">no cold starts yet</div>'
    label_w, right_w, bar_h, gap, legend_h, axis_h = 200, 80, 14, 4, 26, 30
    plot_w = width - label_w - right_w
    totals = [_total(r) for r in rows]
    ticks = nice_ticks(max(totals))
    top = ticks[-1] or 1.0
    height = legend_h + len(rows) * (bar_h + gap) + axis_h
    out = [
        f'<svg class="fai-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="font-family:{FONT};font-size:11px;color:inherit">'
    ]
    out.append(_legend(label_w))
    for i, (r, total) in enumerate(zip(rows, totals, strict=True)):
        y = legend_h + i * (bar_h + gap)
        path = str(r.get("path") or "?")
        colour = path_colour(path)
        who = str(r.get("session_id") or r.get("instance_id") or "?")
        tip = (
            f"{r.get('function', '')} v{r.get('version', '')} · {path} · instance {r.get('instance_id', '')}"
            + (f" · session {r['session_id']}" if r.get("session_id") else "")
            + f" · {fmt_time(r.get('at'))}\n"
            + " + ".join(f"{label} {fmt_ms(float(r.get(key) or 0))}" for key, label, _ in SEGMENTS)
            + f" = {fmt_ms(total)}"
        )
        out.append(
            f'<g class="fai-bar" data-path="{_esc(path)}" data-instance="{_esc(r.get("instance_id", ""))}" '
            f'data-session="{_esc(r.get("session_id") or "")}" data-total-ms="{total:.3f}"><title>{_esc(tip)}</title>'
        )
        label = who if len(who) <= 28 else who[:27] + "…"
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h - 3}" text-anchor="end" fill="currentColor">{_esc(label)}</text>')
        x = float(label_w)
        for key, name, opacity in SEGMENTS:
            ms = max(0.0, float(r.get(key) or 0.0))
            w = ms * plot_w / top
            out.append(
                f'<rect class="fai-seg" data-segment="{name}" data-ms="{ms:.3f}" x="{x:.2f}" y="{y}" width="{max(w, 0.0):.2f}" '
                f'height="{bar_h}" fill="{colour}" fill-opacity="{opacity}" stroke="{colour}" stroke-width="0.5"/>'
            )
            x += w
        out.append(f'<text x="{x + 4:.2f}" y="{y + bar_h - 3}" fill="currentColor">{_esc(fmt_ms(total))}</text></g>')
    # the axis, in ms
    ay = legend_h + len(rows) * (bar_h + gap) + 2
    out.append(f'<line x1="{label_w}" y1="{ay}" x2="{label_w + plot_w}" y2="{ay}" stroke="currentColor" stroke-opacity="0.6"/>')
    for t in ticks:
        tx = label_w + t * plot_w / top
        out.append(f'<line x1="{tx:.2f}" y1="{legend_h - 2}" x2="{tx:.2f}" y2="{ay + 4}" stroke="currentColor" stroke-opacity="0.12"/>')
        out.append(f'<text x="{tx:.2f}" y="{ay + 16}" text-anchor="middle" fill="currentColor">{_tick_label(t)}</text>')
    out.append(f'<text x="{label_w + plot_w + 16}" y="{ay + 16}" fill="currentColor">ms</text>')
    out.append("</svg>")
    return "".join(out)


def _legend(x0: int) -> str:
    out, x = [], float(x0)
    for path, colour in PATH_COLOURS.items():
        out.append(f'<g class="fai-legend" data-path="{path}"><rect x="{x:.0f}" y="6" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 16:.0f}" y="16" fill="currentColor">{path}</text></g>')
        x += 22 + 7 * len(path)
    x += 10
    for _, name, opacity in SEGMENTS:
        out.append(f'<rect x="{x:.0f}" y="6" width="12" height="12" fill="currentColor" fill-opacity="{opacity * 0.7:.2f}"/>')
        out.append(f'<text x="{x + 16:.0f}" y="16" fill="currentColor">{name}</text>')
        x += 22 + 7 * len(name)
    return "".join(out)


def _total(r: dict[str, Any]) -> float:
    return sum(max(0.0, float(r.get(key) or 0.0)) for key, _, _ in SEGMENTS)


def coldstart_histograms(rows: Sequence[dict[str, Any]], *, width: int = 240, height: int = 120) -> str:
    """One small SVG histogram of the total cold-start time per path, with n, p50 and p95."""
    by_path: dict[str, list[float]] = {}
    for r in rows:
        by_path.setdefault(str(r.get("path") or "?"), []).append(_total(r))
    if not by_path:
        return ""
    order = [p for p in PATH_COLOURS if p in by_path] + sorted(p for p in by_path if p not in PATH_COLOURS)
    parts = ['<div class="fai-histograms" style="display:flex;flex-wrap:wrap;gap:12px">']
    for path in order:
        values = by_path[path]
        parts.append(_histogram(path, values, width, height))
    parts.append("</div>")
    return "".join(parts)


def _histogram(path: str, values: list[float], width: int, height: int) -> str:
    colour = path_colour(path)
    ticks = nice_ticks(max(values), 4)
    top = ticks[-1] or 1.0
    nbins = max(4, min(16, math.ceil(math.sqrt(len(values))) + 3))
    counts = [0] * nbins
    for v in values:
        counts[min(nbins - 1, int(v / top * nbins))] += 1
    left, right, head, foot = 28, 10, 30, 22
    plot_w, plot_h = width - left - right, height - head - foot
    cmax = max(counts)
    title = f"{path} · n={len(values)} · p50 {fmt_ms(percentile(values, 50))} · p95 {fmt_ms(percentile(values, 95))}"
    out = [
        f'<svg class="fai-histogram" data-path="{_esc(path)}" data-n="{len(values)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" style="font-family:{FONT};font-size:10px">',
        f'<text x="{left}" y="12" fill="{colour}" font-weight="bold">{_esc(path)}</text>',
        f'<text x="{left}" y="24" fill="currentColor">{_esc(title.split(" · ", 1)[1])}</text>',
    ]
    bw = plot_w / nbins
    for i, c in enumerate(counts):
        if not c:
            continue
        h = c * plot_h / cmax
        lo, hi = i * top / nbins, (i + 1) * top / nbins
        out.append(
            f'<rect class="fai-hbin" data-count="{c}" x="{left + i * bw + 0.5:.2f}" y="{head + plot_h - h:.2f}" width="{bw - 1:.2f}" '
            f'height="{h:.2f}" fill="{colour}"><title>{c} start(s) of {fmt_ms(lo)} to {fmt_ms(hi)}</title></rect>'
        )
    base = head + plot_h
    out.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="currentColor" stroke-opacity="0.6"/>')
    out.append(f'<text x="{left - 4}" y="{head + 8}" text-anchor="end" fill="currentColor">{cmax}</text>')
    for t in (ticks[0], ticks[len(ticks) // 2], ticks[-1]):
        tx = left + t * plot_w / top
        out.append(f'<text x="{tx:.2f}" y="{base + 12}" text-anchor="middle" fill="currentColor">{_tick_label(t)}</text>')
    out.append(f'<text x="{left + plot_w}" y="{base + 21}" text-anchor="end" fill="currentColor" fill-opacity="0.7">total ms</text>')
    out.append("</svg>")
    return "".join(out)


# -- the live panel machinery ----------------------------------------------------------------------


class _LivePanel(widgets.VBox):
    """A VBox that fetches from the API on a daemon thread and renders into its widgets.

    Subclasses implement ``_fetch`` (network, any thread, no widget access) and
    ``_render`` (widgets only, called with the panel's lock held).
    """

    kind = "panel"
    title = "functionai"

    def __init__(self, client: FunctionAIClient, *, interval: float = 2.0, live: bool = True, active: bool = True) -> None:
        self.client = client
        self.interval = max(0.2, float(interval))
        self.last_action: Future[Any] | None = None
        self.data: Any = None
        self.error: str | None = None
        self.updated_at: float | None = None
        self._lock = threading.RLock()
        self._actions: deque[tuple[Callable[[], Any] | None, str, Future[Any]]] = deque()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._active = active
        self._failures = 0
        self._kick = False
        self._message = ""
        self._owned: list[Any] = []
        self._thread: threading.Thread | None = None
        self.heading = self._own(widgets.HTML(f"<b>{_esc(self.title)}</b>"))
        self.live_toggle = self._own(
            widgets.ToggleButton(value=live, description="live", icon="refresh", tooltip="refresh every few seconds", layout=widgets.Layout(width="80px"))
        )
        self.refresh_button = self._own(widgets.Button(description="refresh", tooltip="refresh now", layout=widgets.Layout(width="80px")))
        self.status = self._own(widgets.HTML(layout=widgets.Layout(min_height="1.5em")))
        self.status.add_class("fai-status")
        self.live_toggle.observe(self._on_live, names="value")
        self.refresh_button.on_click(lambda _b: self._submit(None, ""))
        header = self._own(widgets.HBox([self.heading, *self._controls(), self.live_toggle, self.refresh_button], layout=widgets.Layout(align_items="center")))
        super().__init__(children=[header, *self._body(), self.status])
        self.add_class("fai-panel")
        self.add_class(f"fai-panel-{self.kind}")
        if active:
            self.refresh()
        self._thread = threading.Thread(target=self._loop, name=f"functionai-panel-{self.kind}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {getattr(self.client, 'url', self.client)!r}{' (closed)' if self._stopped.is_set() else ''}>"

    # subclass hooks
    def _controls(self) -> list[Any]:
        return []

    def _body(self) -> list[Any]:
        raise NotImplementedError

    def _fetch(self) -> Any:
        raise NotImplementedError

    def _render(self) -> None:
        raise NotImplementedError

    def _own(self, w: Any) -> Any:
        self._owned.append(w)
        return w

    # -- state -----------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return bool(self.live_toggle.value)

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        """Tabs set this: a panel in a hidden tab does not poll; shown, it refreshes at once."""
        was, self._active = self._active, bool(value)
        if self._active and not was:
            self._kick = True
            self._wake.set()

    @property
    def closed(self) -> bool:
        return self._stopped.is_set()

    def _on_live(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self._kick = True
        self._wake.set()

    # -- fetching and rendering ------------------------------------------------------------------

    def refresh(self) -> bool:
        """Fetch now (in the calling thread) and render; returns False (and shows
        why in the status line) if the fetch failed."""
        try:
            data = self._fetch()
        except Exception as exc:
            with self._lock:
                self.error = _describe_error(exc)
                self._failures += 1
                self._show_status()
            return False
        with self._lock:
            if self._stopped.is_set():
                return True
            self.data, self.error, self.updated_at, self._failures = data, None, time.time(), 0
            try:
                self._render()
            except Exception as exc:  # a bug here must not kill the poller either
                self.error = f"cannot show the data: {_describe_error(exc)}"
            self._show_status()
        return True

    def rerender(self) -> None:
        """Render the last fetched data again (after a control changed)."""
        with self._lock:
            if self.data is not None and not self._stopped.is_set():
                try:
                    self._render()
                except Exception as exc:
                    self.error = f"cannot show the data: {_describe_error(exc)}"
                    self._show_status()

    def _show_status(self, message: str | None = None) -> None:
        if message is not None:
            self._message = message
        parts = []
        if self.error:
            parts.append(f'<span class="fai-error" style="color:#c62828">⚠ {_esc(self.error)}</span>')
        if self._message:
            parts.append(f'<span class="fai-message">{_esc(self._message)}</span>')
        if self.updated_at:
            live = "live" if self.live and self._active else "paused"
            parts.append(f'<span style="opacity:.6">updated {time.strftime("%H:%M:%S", time.localtime(self.updated_at))} ({live})</span>')
        self.status.value = " · ".join(parts)

    # -- actions and the poller ------------------------------------------------------------------

    def _submit(self, action: Callable[[], Any] | None, done: str) -> Future[Any]:
        """Run ``action`` on the panel's thread, then refresh; the click returns at once."""
        fut: Future[Any] = Future()
        if self._stopped.is_set():
            fut.set_exception(RuntimeError("the panel is closed"))
            return fut
        self.last_action = fut
        self._actions.append((action, done, fut))
        self._wake.set()
        return fut

    def _run_actions(self) -> bool:
        ran = False
        while self._actions:
            action, done, fut = self._actions.popleft()
            ran = True
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = action() if action is not None else None
            except Exception as exc:
                with self._lock:
                    self._show_status(f"failed: {_describe_error(exc)}")
                self.refresh()
                fut.set_exception(exc)
                continue
            self.refresh()
            with self._lock:
                self._show_status(done if done else None)
            fut.set_result(result)
        return ran

    def _polling(self) -> bool:
        return self.live and self._active

    def _loop(self) -> None:
        next_poll = time.monotonic() + self.interval
        while True:
            self._wake.wait(max(0.0, next_poll - time.monotonic()) if self._polling() else None)
            self._wake.clear()
            if self._stopped.is_set():
                break
            if self._run_actions():
                next_poll = time.monotonic() + self.interval
                continue
            if self._polling() and (self._kick or time.monotonic() >= next_poll):
                self._kick = False
                self.refresh()
                delay = self.interval * 2 ** min(self._failures, 6) if self._failures else self.interval
                next_poll = time.monotonic() + min(MAX_BACKOFF, delay)
        while self._actions:  # closed: what was still queued is cancelled
            self._actions.popleft()[2].cancel()

    def close(self) -> None:
        """Stop polling and close the panel's widgets."""
        self._stopped.set()
        self._wake.set()
        with self._lock:
            super().close()
            for w in self._owned:
                w.close()
            self._close_rows()

    def _close_rows(self) -> None:
        pass


def open_sessions(client: FunctionAIClient, function: str | None) -> list[dict[str, Any]]:
    """The live and paused sessions (not the ended ones, which pile up)."""
    return [*client.sessions(function, status="live"), *client.sessions(function, status="paused")]


def _describe_error(exc: BaseException) -> str:
    kind = getattr(exc, "kind", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{kind}: {message}" if kind else f"{type(exc).__name__}: {message}"


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


# -- cold starts ---------------------------------------------------------------------------------------


class ColdStartsPanel(_LivePanel):
    """Each instance start as a bar split into spawn / init / first call,
    coloured by path, and a histogram of the total per path."""

    kind = "coldstarts"
    title = "functionai cold starts"

    def __init__(self, client: FunctionAIClient, function: str | None = None, *, limit: int = 200, bars: int = 30, interval: float = 2.0, **kw: Any) -> None:
        self.function = function
        self.limit = limit
        self.bars = bars
        self.summary = widgets.HTML()
        self.chart = widgets.HTML()
        self.chart.add_class("fai-coldstart-chart")
        self.histograms = widgets.HTML()
        self.histograms.add_class("fai-coldstart-histograms")
        if function:
            self.title = f"functionai cold starts of {function}"
        super().__init__(client, interval=interval, **kw)
        for w in (self.summary, self.chart, self.histograms):
            self._own(w)

    def _body(self) -> list[Any]:
        return [self.summary, self.chart, self.histograms]

    def _fetch(self) -> list[dict[str, Any]]:
        return list(self.client.coldstarts(self.function, self.limit))

    def _render(self) -> None:
        rows: list[dict[str, Any]] = self.data or []
        recent = rows[: self.bars]
        n_paths: dict[str, int] = {}
        for r in rows:
            n_paths[str(r.get("path"))] = n_paths.get(str(r.get("path")), 0) + 1
        self.summary.value = (
            f"{len(rows)} start(s)"
            + (f" of {_esc(self.function)}" if self.function else "")
            + (" · " + ", ".join(f'<span style="color:{path_colour(p)}">{_esc(p)}</span> {n}' for p, n in sorted(n_paths.items())) if rows else "")
            + (f" · the newest {len(recent)} as bars" if len(rows) > len(recent) else "")
        )
        self.chart.value = coldstart_chart(recent)
        self.histograms.value = coldstart_histograms(rows)


# -- functions ----------------------------------------------------------------------------------------


class FunctionsPanel(_LivePanel):
    """A function's versions (deploy time, source), rollback, its endpoint and a
    ``curl`` example carrying a session header."""

    kind = "functions"
    title = "functionai functions"

    def __init__(self, client: FunctionAIClient, name: str | None = None, *, session: str | None = None, interval: float = 3.0, **kw: Any) -> None:
        self.fixed_name = name
        self.session = session
        self._updating = False
        self._follow_active = True
        self.function_select = widgets.Dropdown(description="function", options=[name] if name else [], value=name, layout=widgets.Layout(width="280px"))
        self.function_select.add_class("fai-function-select")
        if name:
            self.function_select.layout.display = "none"
        self.version_select = widgets.Dropdown(description="version", options=[], layout=widgets.Layout(width="420px"))
        self.version_select.add_class("fai-version-select")
        self.rollback_button = widgets.Button(description="Roll back", icon="undo", button_style="warning", disabled=True, layout=widgets.Layout(width="180px"))
        self.rollback_button.add_class("fai-rollback")
        self.info = widgets.HTML()
        self.info.add_class("fai-version-info")
        self.endpoint = widgets.HTML()
        self.endpoint.add_class("fai-endpoint")
        self.source = widgets.HTML()
        self.source.add_class("fai-source")
        if name:
            self.title = f"functionai function {name}"
        super().__init__(client, interval=interval, **kw)
        for w in (self.function_select, self.version_select, self.rollback_button, self.info, self.endpoint, self.source):
            self._own(w)
        self.function_select.observe(self._on_function, names="value")
        self.version_select.observe(self._on_version, names="value")
        self.rollback_button.on_click(lambda _b: self.rollback_to(self.version_select.value))

    def _body(self) -> list[Any]:
        picker = widgets.HBox([self.function_select, self.version_select, self.rollback_button], layout=widgets.Layout(align_items="center"))
        self._own(picker)
        return [picker, self.info, self.endpoint, self.source]

    @property
    def name(self) -> str | None:
        return self.fixed_name or self.function_select.value

    def _fetch(self) -> dict[str, Any]:
        names = [self.fixed_name] if self.fixed_name else [str(f["name"]) for f in self.client.functions()]
        name = self.fixed_name or (self.function_select.value if self.function_select.value in names else (names[0] if names else None))
        out: dict[str, Any] = {"names": names, "name": name, "versions": [], "sessions": [], "pool": None}
        if name is None:
            return out
        out["versions"] = list(self.client.versions(name))
        out["sessions"] = open_sessions(self.client, name)
        describe = getattr(self.client, "function", None)
        if callable(describe):
            out["pool"] = describe(name).get("pool")
        return out

    def _render(self) -> None:
        data = self.data or {}
        names: list[str] = data.get("names") or []
        versions: list[dict[str, Any]] = sorted(data.get("versions") or [], key=lambda v: -int(v["version"]))
        self._updating = True
        try:
            if not self.fixed_name and tuple(self.function_select.options) != tuple(names):
                keep = data.get("name")
                self.function_select.options = names
                self.function_select.value = keep if keep in names else (names[0] if names else None)
            options = [(self._version_label(v), int(v["version"])) for v in versions]
            active = next((int(v["version"]) for v in versions if v.get("active")), None)
            current = self.version_select.value
            if list(self.version_select.options) != options:
                self.version_select.options = options
            values = [o[1] for o in options]
            want = active if (self._follow_active or current not in values) else current
            if want in values:
                self.version_select.value = want
        finally:
            self._updating = False
        self._render_version(versions, active, data)

    @staticmethod
    def _version_label(v: dict[str, Any]) -> str:
        return f"v{v['version']} — {fmt_time(v.get('created_at'))}" + (" (active)" if v.get("active") else "")

    def _render_version(self, versions: list[dict[str, Any]], active: int | None, data: dict[str, Any]) -> None:
        name = data.get("name")
        if name is None:
            self.info.value = "no functions deployed yet"
            self.endpoint.value = self.source.value = ""
            self.rollback_button.disabled = True
            return
        chosen = next((v for v in versions if int(v["version"]) == self.version_select.value), None)
        if chosen is None:
            self.info.value = f"{_esc(name)}: no versions"
            return
        n = int(chosen["version"])
        spec = chosen.get("spec") or {}
        res = spec.get("resources") or {}
        sess = spec.get("session") or {}
        facts = [
            f"<b>{_esc(name)}</b> v{n}" + (' <span style="color:#2e7d32">(active)</span>' if n == active else f" (active: v{active})"),
            f'deployed <span class="fai-deployed">{_esc(fmt_time(chosen.get("created_at")))}</span> ({_esc(fmt_duration(time.time() - float(chosen.get("created_at") or time.time())))} ago)',
            f"digest <code>{_esc(str(chosen.get('digest', ''))[:12])}</code>",
            f"memory {_esc(_num(res.get('memory_mb')))} MiB, cpu {_esc(_num(res.get('cpu')))}" + (f", gpu {_esc(_num(res['gpu']))}" if res.get("gpu") else ""),
            f"timeout {_esc(_num(spec.get('timeout_s')))} s",
            "sessions " + (f"on (idle TTL {_esc(fmt_duration(sess.get('idle_ttl_s')))})" if sess.get("enabled", True) else "off"),
            f"min instances {_esc(spec.get('min_instances', 0))}",
        ]
        pool = data.get("pool")
        if isinstance(pool, dict):
            facts.append(f"pool {_esc(pool.get('ready'))}/{_esc(pool.get('target'))} ready" + (f" ({_esc(pool['last_error'])})" if pool.get("last_error") else ""))
        self.info.value = " · ".join(facts)
        self.rollback_button.disabled = n == active
        self.rollback_button.button_style = "" if n == active else "warning"
        self.rollback_button.description = f"Roll back to v{n}" if active is not None and n < active else (f"Activate v{n}" if n != active else f"v{n} is active")
        self.rollback_button.tooltip = f"make version {n} of {name} the active one"
        self.endpoint.value = self._endpoint_html(name, data.get("sessions") or [], sess.get("enabled", True))
        source = chosen.get("source") or (spec.get("source") or {}).get("code") or ""
        self.source.value = (
            f"<details open><summary>source of v{n} ({len(source.splitlines())} lines)</summary>"
            f'<pre class="fai-source-code" style="max-height:320px;overflow:auto;margin:4px 0;padding:6px;'
            f'background:var(--jp-layout-color2, #f5f5f5)">{_esc(source)}</pre></details>'
        )

    def _endpoint_html(self, name: str, sessions: list[dict[str, Any]], sessions_on: bool) -> str:
        url = str(getattr(self.client, "url", ""))
        if not url.startswith(("http://", "https://")):
            return (
                f"endpoint: none over HTTP (an embedded runtime in this kernel: <code>{_esc(url)}</code>); "
                "run <code>functionai serve</code> for one. From Python: "
                f"<code>{_esc(name)}.invoke(event)</code>"
            )
        endpoint = url.rstrip("/") + "/functionai/invoke/" + urllib.parse.quote(name, safe="")
        sid = self.session
        if sid is None and sessions_on and sessions:
            sid = str(max(sessions, key=lambda s: float(s.get("last_used_at") or s.get("created_at") or 0))["id"])
        note = (
            f"session <code class='fai-curl-session'>{_esc(sid)}</code>" if sid else ("a new session id is made if you send none" if sessions_on else "sessions are off")
        )
        cmd = curl_example(endpoint, sid if sessions_on else None) if sessions_on else curl_example(endpoint, None).replace(
            "  -H 'X-Functionai-Session-Id: <session id>' \\\n", ""
        )
        return (
            f'endpoint <a href="{_esc(endpoint)}" target="_blank"><code class="fai-endpoint-url">{_esc(endpoint)}</code></a> · {note}'
            f'<pre class="fai-curl" style="margin:4px 0;padding:6px;background:var(--jp-layout-color2, #f5f5f5)">{_esc(cmd)}</pre>'
            '<span style="opacity:.7">the token: your Jupyter token, or a key for this function only '
            "(<code>functionai keys create NAME</code>, sent as <code>Authorization: Bearer fai_…</code>)</span>"
        )

    def _on_function(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        self._follow_active = True
        self._submit(None, "")

    def _on_version(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        data = self.data or {}
        versions = data.get("versions") or []
        active = next((int(v["version"]) for v in versions if v.get("active")), None)
        self._follow_active = change["new"] == active
        with self._lock:
            self._render_version(sorted(versions, key=lambda v: -int(v["version"])), active, data)

    def rollback_to(self, version: int | None) -> Future[Any]:
        """What the Rollback button does: make ``version`` active (on the panel's thread), then refresh."""
        name = self.name
        if version is None or name is None:
            fut: Future[Any] = Future()
            fut.set_exception(ValueError("no version selected"))
            return fut
        self._follow_active = True
        self.rollback_button.disabled = True
        return self._submit(lambda: self.client.rollback(name, int(version)), f"{name}: version {version} is now active")


# -- tabs and the factory ---------------------------------------------------------------------------------


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
        recent = [t for t in self.client.tasks(self.function, limit=self.recent + len(active)) if t.get("state") not in ("queued", "running")]
        return {"counts": counts, "tasks": active + recent[: self.recent]}

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


# -- MCP tools ---------------------------------------------------------------------------------------

MCP_SESSION_COLUMNS = ("MCP session", "server", "client", "opened by", "runtime session", "instance", "pid", "sandbox", "in flight", "age", "idle", "")
MCP_SESSION_GRID = "repeat(11, max-content) 84px"
TOOL_COLUMNS = ("tool", "description", "parameters", "calls", "errors", "p50", "p95")
KIND_LABELS = {"functions": "function-backed", "stdio": "stdio"}
ALL_SERVERS = ""
PANEL_CLIENT = "functionai-panel"  # the clientInfo name of the try-a-tool form's MCP sessions


def schema_type(prop: Any, depth: int = 0) -> str:
    """A short type of a JSON-schema property: ``integer``, ``string|null``, ``array[number]``, ``Point``."""
    if not isinstance(prop, dict) or depth > 4:
        return "any"
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "const" in prop:
        return json.dumps(prop["const"])
    if isinstance(prop.get("enum"), list):
        return "|".join(json.dumps(v) for v in prop["enum"][:6]) + ("|…" if len(prop["enum"]) > 6 else "")
    for key in ("anyOf", "oneOf"):
        if isinstance(prop.get(key), list):
            return "|".join(schema_type(p, depth + 1) for p in prop[key])
    typ = prop.get("type")
    if isinstance(typ, list):
        return "|".join(str(t) for t in typ)
    if typ == "array":
        return f"array[{schema_type(prop.get('items'), depth + 1)}]" if isinstance(prop.get("items"), dict) else "array"
    return str(typ) if typ else "any"


def params_summary(schema: Any) -> str:
    """``a: integer, b: integer = 1, note?: string``: each parameter of a tool's input
    schema with its type; ``?`` marks an optional one without a default."""
    if not isinstance(schema, dict):
        return ""
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    parts = []
    for name, prop in props.items():
        part = f"{name}{'' if name in required or (isinstance(prop, dict) and 'default' in prop) else '?'}: {schema_type(prop)}"
        if isinstance(prop, dict) and "default" in prop:
            part += f" = {json.dumps(prop['default'])}"
        parts.append(part)
    return ", ".join(parts) or "(none)"


def schema_skeleton(schema: Any) -> dict[str, Any]:
    """Arguments to start from: each parameter's default, else a value of its type."""
    if not isinstance(schema, dict):
        return {}
    value = _skeleton_value(schema, schema, 0)
    return value if isinstance(value, dict) else {}


_EMPTY_OF: dict[str, Any] = {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "null": None}


def _skeleton_value(prop: Any, root: dict[str, Any], depth: int) -> Any:
    if not isinstance(prop, dict) or depth > 6:
        return None
    if "default" in prop:
        return prop["default"]
    if "const" in prop:
        return prop["const"]
    if isinstance(prop.get("enum"), list) and prop["enum"]:
        return prop["enum"][0]
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return _skeleton_value(target, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = [p for p in prop.get(key) or [] if isinstance(p, dict) and p.get("type") != "null"]
        if options:
            return _skeleton_value(options[0], root, depth + 1)
    typ = prop.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or (typ is None and "properties" in prop):
        return {k: _skeleton_value(v, root, depth + 1) for k, v in (prop.get("properties") or {}).items()}
    return _EMPTY_OF.get(str(typ))


def tool_result_html(result: dict[str, Any] | None) -> str:
    """A tool call's answer: ok / isError / a JSON-RPC error, its structured content and its text."""
    if not result:
        return ""
    where = f"{_esc(result.get('server', ''))} / {_esc(result.get('tool', ''))}"
    took = f" in {fmt_ms(float(result['ms']))}" if isinstance(result.get("ms"), (int, float)) else ""
    pre = 'style="margin:4px 0;padding:6px;max-height:320px;overflow:auto;background:var(--jp-layout-color2, #f5f5f5)"'
    if result.get("local_error"):
        return f'<div class="fai-tool-result" data-outcome="invalid"><span style="color:#c62828;font-weight:bold">not called</span>: {_esc(result["local_error"])}</div>'
    if "error" in result:
        err = result["error"] or {}
        return (
            f'<div class="fai-tool-result" data-outcome="protocol-error">{where}: <span style="color:#c62828;font-weight:bold">JSON-RPC error '
            f'{_esc(err.get("code"))}</span>{took}<pre class="fai-tool-error" {pre}>{_esc(err.get("message", ""))}</pre></div>'
        )
    is_error = bool(result.get("isError"))
    badge = '<span style="color:#c62828;font-weight:bold">isError</span>' if is_error else '<span style="color:#2e7d32;font-weight:bold">ok</span>'
    out = [f'<div class="fai-tool-result" data-outcome="{"tool-error" if is_error else "ok"}">{where}: {badge}{took}']
    if result.get("structuredContent") is not None:
        out.append(f'<div style="opacity:.7">structured content</div><pre class="fai-tool-structured" {pre}>{_esc(json.dumps(result["structuredContent"], indent=2, ensure_ascii=False))}</pre>')
    for item in result.get("content") or []:
        if item.get("type") == "text":
            out.append(f'<div style="opacity:.7">text</div><pre class="fai-tool-text" {pre}>{_esc(item.get("text", ""))}</pre>')
        else:
            out.append(f'<div style="opacity:.7">{_esc(item.get("type"))} content</div><pre class="fai-tool-content" {pre}>{_esc(json.dumps(item, ensure_ascii=False)[:2000])}</pre>')
    out.append("</div>")
    return "".join(out)


def _call_tool_once(url: str, headers: dict[str, str], tool: str, arguments: dict[str, Any], *, timeout: float = 300.0) -> dict[str, Any]:
    """Call ``tool`` on the MCP endpoint ``url`` with the official ``mcp`` client,
    in an MCP session of its own (ended after): the result as MCP sends it
    (``content``, ``structuredContent``, ``isError``) or ``{"error": {code,
    message}}`` for a JSON-RPC error, with ``ms`` (the call, not the handshake).
    Blocking: run it on a thread with no event loop (a panel's)."""

    async def go() -> dict[str, Any]:
        from ._version import __version__
        from .mcp.client import McpCallError, open_session

        async with open_session(url, headers=headers, timeout=timeout, client_name=PANEL_CLIENT, client_version=__version__) as session:
            started = time.perf_counter()
            try:
                out = await session.call_tool(tool, arguments)
            except McpCallError as exc:
                return {"error": {"code": exc.code, "message": exc.message}, "ms": (time.perf_counter() - started) * 1000}
            out["ms"] = (time.perf_counter() - started) * 1000
            return out

    try:
        return asyncio.run(go())
    except BaseException as exc:
        inner: BaseException = exc
        while isinstance(getattr(inner, "exceptions", None), tuple) and inner.exceptions:  # type: ignore[attr-defined]
            inner = inner.exceptions[0]  # type: ignore[attr-defined]
        if inner is exc:
            raise
        raise inner from exc


class _ServerBlock:
    """One hosted server: what it is, its tools with their calls, their schemas."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.header = widgets.HTML()
        self.header.add_class("fai-mcp-server")
        self.tools = widgets.HTML(layout=widgets.Layout(overflow="auto"))
        self.tools.add_class("fai-mcp-tools")
        self.schemas = widgets.HTML()
        self.schemas.add_class("fai-mcp-schemas")
        self.box = widgets.VBox([self.header, self.tools, self.schemas], layout=widgets.Layout(margin="0 0 8px 0"))

    def update(self, srv: dict[str, Any], url: str | None) -> None:
        kind = str(srv.get("kind", ""))
        facts = [
            f'<b class="fai-mcp-name">{_esc(self.name)}</b>',
            f'<span class="fai-mcp-kind" data-kind="{_esc(kind)}">{_esc(KIND_LABELS.get(kind, kind))}</span>',
            f'<code class="fai-mcp-url">{_esc(url or srv.get("path", ""))}</code>',
            f'<span class="fai-mcp-live">{_esc(srv.get("live_sessions", 0))}</span> live session(s)',
        ]
        if kind == "stdio" and srv.get("command"):
            cmd = " ".join(str(a) for a in srv["command"])
            facts.append(f'<span title="{_esc(cmd)}">command <code>{_esc(cmd if len(cmd) <= 60 else "…" + cmd[-59:])}</code></span>')
        self.header.value = " · ".join(facts)
        tools = list(srv.get("tools") or [])
        if not tools:
            self.tools.value = '<span style="opacity:.7">no tools' + (" known yet (listed by a session)" if kind == "stdio" else "") + "</span>"
            self.schemas.value = ""
            return
        head = "".join(f'<th style="text-align:left;padding:0 8px">{_esc(c)}</th>' for c in TOOL_COLUMNS)
        rows = [f'<table class="fai-tool-table"><tr>{head}</tr>']
        for t in tools:
            desc = str(t.get("description") or "")
            first = desc.strip().splitlines()[0] if desc.strip() else ""
            schema = json.dumps(t.get("inputSchema") or {}, indent=2, sort_keys=True)
            errors = int(t.get("errors") or 0)
            err_style = "color:#c62828;font-weight:bold" if errors else ""
            p50, p95 = t.get("p50_ms"), t.get("p95_ms")
            rows.append(
                f'<tr class="fai-tool" data-tool="{_esc(t.get("name"))}">'
                f'<td style="padding:0 8px"><code>{_esc(t.get("name"))}</code></td>'
                f'<td style="padding:0 8px" title="{_esc(desc)}">{_esc(first[:80])}</td>'
                f'<td class="fai-tool-params" style="padding:0 8px" title="{_esc(schema)}"><code>{_esc(params_summary(t.get("inputSchema")))}</code></td>'
                f'<td class="fai-tool-calls" style="padding:0 8px;text-align:right">{_esc(t.get("calls", 0))}</td>'
                f'<td class="fai-tool-errors" style="padding:0 8px;text-align:right;{err_style}" title="{_esc(t.get("last_error") or "")}">{errors}</td>'
                f'<td class="fai-tool-p50" style="padding:0 8px;text-align:right">{_esc(fmt_ms(float(p50)) if p50 is not None else "—")}</td>'
                f'<td class="fai-tool-p95" style="padding:0 8px;text-align:right">{_esc(fmt_ms(float(p95)) if p95 is not None else "—")}</td></tr>'
            )
        rows.append("</table>")
        self.tools.value = "".join(rows)
        schemas = "".join(
            f'<div><code>{_esc(t.get("name"))}</code><pre class="fai-tool-schema" data-tool="{_esc(t.get("name"))}" '
            f'style="margin:2px 0 6px 0;padding:6px;background:var(--jp-layout-color2, #f5f5f5)">'
            f"{_esc(json.dumps(t.get('inputSchema') or {}, indent=2, sort_keys=True))}</pre></div>"
            for t in tools
        )
        self.schemas.value = f"<details><summary>input schemas ({len(tools)})</summary>{schemas}</details>"

    def close(self) -> None:
        for w in (self.header, self.tools, self.schemas, self.box):
            w.close()


class _McpSessionRow:
    def __init__(self, panel: ToolsPanel, sid: str) -> None:
        self.id = sid
        self.cells = [widgets.HTML(layout=widgets.Layout(overflow="hidden")) for _ in MCP_SESSION_COLUMNS[:-1]]
        self.cells[0].add_class("fai-mcp-session-id")
        self.button = widgets.Button(description="End", icon="times", button_style="danger", tooltip=f"end MCP session {sid}", layout=widgets.Layout(width="80px"))
        self.button.add_class("fai-mcp-end")
        self.button.on_click(lambda _b: panel.end_session(sid))

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.button]

    def update(self, s: dict[str, Any], rs: dict[str, Any] | None, ending: bool) -> None:
        info = s.get("client_info") or {}
        inst = (rs or {}).get("instance") or {}
        sandbox = str((rs or {}).get("status") or "not started")
        now = time.time()
        values = [
            f'<code style="white-space:nowrap" title="{_esc(s.get("id"))}">{_esc(str(s.get("id", ""))[:12])}…</code>',
            _esc(s.get("server", "")),
            _esc(" ".join(str(info[k]) for k in ("name", "version") if info.get(k)) or "—"),
            _esc(s.get("principal") or "—"),
            f'<code style="white-space:nowrap">{_esc(s.get("runtime_session", ""))}</code>',
            f"<code style='white-space:nowrap'>{_esc(inst.get('id') or (rs or {}).get('instance_id') or '—')}</code>",
            _esc(inst.get("pid") if inst.get("pid") is not None else "—"),
            f'<span style="color:{STATUS_COLOURS.get(sandbox, "inherit")}">{_esc(sandbox)}</span>',
            _esc(s.get("in_flight", 0)),
            _esc(fmt_duration(now - float(s["created_at"])) if s.get("created_at") else "—"),
            _esc(fmt_duration(now - float(s["last_used_at"])) if s.get("last_used_at") else "—"),
        ]
        for cell, value in zip(self.cells, values, strict=True):
            cell.value = value
        self.button.disabled = ending
        self.button.description = "ending…" if ending else "End"

    def close(self) -> None:
        for w in self.widgets:
            w.close()


class ToolsPanel(_LivePanel):
    """Hosted MCP servers: kind, endpoint, tools with their parameters and
    input schemas, calls / errors / p50 / p95 per tool; the live MCP sessions
    with their sandbox session and instance (an End button each); and a form
    to try a tool: it calls the tool through the hosted endpoint with the
    official ``mcp`` client (an MCP session of its own, ended after the call)
    on the panel's thread and shows the answer."""

    kind = "tools"
    title = "functionai MCP tools"

    def __init__(self, client: FunctionAIClient, server: str | None = None, *, interval: float = 2.0, call_timeout: float = 300.0, **kw: Any) -> None:
        self.fixed_server = server
        self.call_timeout = call_timeout
        self.last_result: dict[str, Any] | None = None
        self._updating = False
        self._blocks: dict[str, _ServerBlock] = {}
        self._block_order: list[str] = []
        self._rows: dict[str, _McpSessionRow] = {}
        self._row_order: list[str] = []
        self._ending: set[str] = set()
        self._tool_keys: list[tuple[str, str]] = []
        self._calling = False
        self.server_select = widgets.Dropdown(description="server", options=[("all servers", ALL_SERVERS)], value=ALL_SERVERS, layout=widgets.Layout(width="280px"))
        self.server_select.add_class("fai-mcp-server-select")
        if server:
            self.server_select.options = [(server, server)]
            self.server_select.value = server
            self.server_select.layout.display = "none"
            self.title = f"functionai MCP server {server}"
        self.summary = widgets.HTML()
        self.servers_box = widgets.VBox()
        self.sessions_title = widgets.HTML("<b>live MCP sessions</b>")
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns=MCP_SESSION_GRID, grid_gap="2px 10px", align_items="center", overflow="auto"))
        self.grid.add_class("fai-mcp-sessions-grid")
        self._header = [widgets.HTML(f"<b>{_esc(c)}</b>") for c in MCP_SESSION_COLUMNS]
        self.try_title = widgets.HTML("<b>try a tool</b> <span style='opacity:.7'>(through the hosted endpoint, in an MCP session of its own)</span>")
        self.tool_select = widgets.Dropdown(description="tool", options=[], layout=widgets.Layout(width="360px"))
        self.tool_select.add_class("fai-try-tool")
        self.arguments = widgets.Textarea(placeholder="arguments (a JSON object)", layout=widgets.Layout(width="100%", height="110px"))
        self.arguments.add_class("fai-try-arguments")
        self.call_button = widgets.Button(description="Call", icon="play", button_style="primary", disabled=True, layout=widgets.Layout(width="120px"))
        self.call_button.add_class("fai-try-call")
        self.result = widgets.HTML()
        self.result.add_class("fai-try-result")
        # host a stdio MCP server (what `functionai mcp add` does)
        self.add_title = widgets.HTML("<b>host a stdio MCP server</b> <span style='opacity:.7'>(each MCP session gets its own process in its own sandbox)</span>")
        self.add_name = widgets.Text(placeholder="name", layout=widgets.Layout(width="160px"))
        self.add_catalog = widgets.Dropdown(options=[("command:", ""), ("catalog: time", "time"), ("catalog: git", "git")], value="", layout=widgets.Layout(width="150px"))
        self.add_command = widgets.Text(placeholder="command and arguments, e.g. python -m my_server", layout=widgets.Layout(width="100%"))
        self.add_env = widgets.Textarea(placeholder="environment, one KEY=VALUE per line (optional)", layout=widgets.Layout(width="100%", height="48px"))
        self.add_button = widgets.Button(description="Add", icon="plus", layout=widgets.Layout(width="100px"))
        for w, cls in ((self.add_name, "fai-add-name"), (self.add_catalog, "fai-add-catalog"), (self.add_command, "fai-add-command"), (self.add_env, "fai-add-env"), (self.add_button, "fai-add-button")):
            w.add_class(cls)
        super().__init__(client, interval=interval, **kw)
        for w in (self.server_select, self.summary, self.servers_box, self.sessions_title, self.grid, *self._header,
                  self.try_title, self.tool_select, self.arguments, self.call_button, self.result,
                  self.add_title, self.add_name, self.add_catalog, self.add_command, self.add_env, self.add_button):
            self._own(w)
        self.add_button.on_click(lambda _b: self.add_server())
        self.server_select.observe(self._on_server, names="value")
        self.tool_select.observe(self._on_tool, names="value")
        self.call_button.on_click(lambda _b: self.call_tool())

    def _controls(self) -> list[Any]:
        return [self.server_select]

    def _body(self) -> list[Any]:
        row = self._own(widgets.HBox([self.tool_select, self.call_button], layout=widgets.Layout(align_items="center")))
        body = [self.summary, self.servers_box, self.sessions_title, self.grid, self.try_title, row, self.arguments, self.result]
        if not self.fixed_server:
            add = self._own(widgets.HBox([self.add_name, self.add_catalog, self.add_command, self.add_button], layout=widgets.Layout(align_items="center")))
            body += [self.add_title, add, self.add_env]
        return body

    def add_server(self) -> Future[Any]:
        """The Add button: host a stdio MCP server (a command, or a catalog
        package) on the panel's thread; the outcome shows in the status line."""
        import shlex

        name = self.add_name.value.strip()
        catalog = self.add_catalog.value or None
        try:
            command = None if catalog else shlex.split(self.add_command.value)
            env = {}
            for line in self.add_env.value.splitlines():
                if line.strip():
                    key, eq, value = line.partition("=")
                    if not eq or not key.strip():
                        raise ValueError(f"environment lines are KEY=VALUE, not {line.strip()!r}")
                    env[key.strip()] = value
        except ValueError as exc:
            fut: Future[Any] = Future()
            fut.set_exception(exc)
            with self._lock:
                self._show_status(f"not added: {exc}")
            self.last_action = fut
            return fut
        if not name or (not catalog and not command):
            fut = Future()
            fut.set_exception(ValueError("a name and a command (or a catalog package) are needed"))
            with self._lock:
                self._show_status("not added: a name and a command (or a catalog package) are needed")
            self.last_action = fut
            return fut
        self.add_button.disabled = True

        def act() -> Any:
            try:
                return _server(self.client).mcp_add(name, command, catalog=catalog, env=env or None)
            finally:
                self.add_button.disabled = False

        return self._submit(act, f"added MCP server {name}")

    # -- data --------------------------------------------------------------------------------

    def _fetch(self) -> dict[str, Any]:
        server = as_server(self.client)
        if server is None:
            raise RuntimeError("MCP servers are hosted by a functionai server (functionai serve, or Jupyter with the extension), not by this client")
        servers = [server.mcp_server(self.fixed_server)] if self.fixed_server else list(server.mcp_servers())
        sessions = list(server.mcp_sessions(self.fixed_server, "active"))
        functions = {str(s["name"]): str(s.get("function") or "") for s in servers}
        runtime: dict[str, dict[str, Any]] = {}
        for fn in sorted({functions[str(s.get("server"))] for s in sessions if functions.get(str(s.get("server")))}):
            for r in open_sessions(self.client, fn):
                runtime[str(r["id"])] = r
        urls = {name: server.mcp_url(name) for name in functions}
        return {"servers": servers, "sessions": sessions, "runtime": runtime, "urls": urls}

    @property
    def server(self) -> str | None:
        """The server shown (None: all of them)."""
        return self.fixed_server or (self.server_select.value or None)

    def shown_servers(self) -> list[dict[str, Any]]:
        servers = list((self.data or {}).get("servers") or [])
        return [s for s in servers if self.server is None or s.get("name") == self.server]

    def shown_sessions(self) -> list[dict[str, Any]]:
        """The active MCP sessions shown, newest first."""
        rows = [s for s in (self.data or {}).get("sessions") or [] if self.server is None or s.get("server") == self.server]
        return sorted(rows, key=lambda s: -float(s.get("created_at") or 0))

    def block(self, server: str) -> _ServerBlock:
        return self._blocks[server]

    def row(self, session_id: str) -> _McpSessionRow:
        return self._rows[session_id]

    # -- rendering -----------------------------------------------------------------------------

    def _render(self) -> None:
        data = self.data or {}
        all_servers = list(data.get("servers") or [])
        names = [str(s["name"]) for s in all_servers]
        self._updating = True
        try:
            if not self.fixed_server:
                options = [("all servers", ALL_SERVERS), *((n, n) for n in names)]
                if list(self.server_select.options) != options:
                    keep = self.server_select.value
                    self.server_select.options = options
                    self.server_select.value = keep if keep in names else ALL_SERVERS
        finally:
            self._updating = False
        servers = self.shown_servers()
        sessions = self.shown_sessions()
        n_tools = sum(len(s.get("tools") or []) for s in servers)
        self.summary.value = (
            f"{len(servers)} server(s) · {n_tools} tool(s) · {len(sessions)} live MCP session(s)"
            if all_servers
            else "no MCP servers yet: publish a tool (<code>@jupyter_functionai.tool(\"SERVER\")</code>, <code>%%tool</code>) or <code>functionai mcp add</code>"
        )
        shown = [str(s["name"]) for s in servers]
        for name in [k for k in self._blocks if k not in shown]:
            self._blocks.pop(name).close()
        for srv in servers:
            name = str(srv["name"])
            if name not in self._blocks:
                self._blocks[name] = _ServerBlock(name)
            self._blocks[name].update(srv, (data.get("urls") or {}).get(name))
        if shown != self._block_order:
            self._block_order = shown
            self.servers_box.children = [self._blocks[n].box for n in shown]
        self._render_sessions(sessions, data.get("runtime") or {})
        self._render_tools(servers)

    def _render_sessions(self, sessions: list[dict[str, Any]], runtime: dict[str, dict[str, Any]]) -> None:
        ids = [str(s["id"]) for s in sessions]
        for sid in [k for k in self._rows if k not in ids]:
            self._rows.pop(sid).close()
            self._ending.discard(sid)
        for s in sessions:
            sid = str(s["id"])
            if sid not in self._rows:
                self._rows[sid] = _McpSessionRow(self, sid)
            self._rows[sid].update(s, runtime.get(str(s.get("runtime_session"))), sid in self._ending)
        self.sessions_title.value = "<b>live MCP sessions</b>" + ("" if sessions else " <span style='opacity:.7'>none</span>")
        if ids != self._row_order:
            self._row_order = ids
            self.grid.children = [*self._header, *(w for sid in ids for w in self._rows[sid].widgets)] if ids else []

    def _render_tools(self, servers: list[dict[str, Any]]) -> None:
        keys = [(str(s["name"]), str(t["name"])) for s in servers for t in s.get("tools") or [] if t.get("name")]
        if keys == self._tool_keys:
            return
        self._tool_keys = keys
        options = [(tool if self.fixed_server else f"{srv} / {tool}", (srv, tool)) for srv, tool in keys]
        current = self.tool_select.value
        self._updating = True
        try:
            self.tool_select.options = options
            self.tool_select.value = current if current in keys else (keys[0] if keys else None)
        finally:
            self._updating = False
        if self.tool_select.value != current:
            self._fill_arguments()
        if not self._calling:
            self.call_button.disabled = not keys

    def _schema_of(self, server: str, tool: str) -> dict[str, Any]:
        for s in (self.data or {}).get("servers") or []:
            if s.get("name") == server:
                for t in s.get("tools") or []:
                    if t.get("name") == tool:
                        return dict(t.get("inputSchema") or {})
        return {}

    def _fill_arguments(self) -> None:
        choice = self.tool_select.value
        self.arguments.value = json.dumps(schema_skeleton(self._schema_of(*choice)), indent=2) if choice else ""

    def _on_server(self, change: dict[str, Any]) -> None:
        if not self._updating:
            self.rerender()

    def _on_tool(self, change: dict[str, Any]) -> None:
        if not self._updating:
            with self._lock:
                self._fill_arguments()

    # -- actions ---------------------------------------------------------------------------------

    def choose_tool(self, server: str, tool: str) -> None:
        """Pick ``tool`` of ``server`` in the form (its arguments skeleton fills the text area)."""
        self.tool_select.value = (server, tool)

    def call_tool(self) -> Future[Any]:
        """What the Call button does: call the chosen tool with the text area's
        arguments through the hosted endpoint (on the panel's thread), show the
        answer, then refresh (the call is counted). The future's result is the
        answer (``isError`` and JSON-RPC errors included); it fails if the
        arguments are not a JSON object or the endpoint cannot be reached."""
        choice = self.tool_select.value
        text = self.arguments.value
        if not choice:
            fut: Future[Any] = Future()
            fut.set_exception(ValueError("no tool chosen"))
            return fut
        server, tool = choice
        with self._lock:
            self._calling = True
            self.call_button.disabled = True
            self.call_button.description = "calling…"

        def run() -> dict[str, Any]:
            try:
                try:
                    args = json.loads(text) if text.strip() else {}
                    if not isinstance(args, dict):
                        raise ValueError("the arguments must be a JSON object")
                except ValueError as exc:
                    self._show_result({"server": server, "tool": tool, "local_error": f"the arguments are not a JSON object: {exc}"})
                    raise
                url, headers = _server(self.client).mcp_url(server), _server(self.client).auth_headers()
                try:
                    out = _call_tool_once(url, headers, tool, args, timeout=self.call_timeout)
                except Exception as exc:
                    self._show_result({"server": server, "tool": tool, "local_error": f"the call failed: {_describe_error(exc)}"})
                    raise
                out.update(server=server, tool=tool)
                self._show_result(out)
                return out
            finally:
                with self._lock:
                    self._calling = False
                    self.call_button.disabled = not self._tool_keys
                    self.call_button.description = "Call"

        return self._submit(run, f"called {server} / {tool}")

    def _show_result(self, result: dict[str, Any]) -> None:
        with self._lock:
            self.last_result = result
            self.result.value = tool_result_html(result)

    def end_session(self, session_id: str) -> Future[Any]:
        """What a session's End button does: end the MCP session (on the panel's thread), then refresh."""
        with self._lock:
            self._ending.add(session_id)
            if session_id in self._rows:
                self._rows[session_id].button.disabled = True
                self._rows[session_id].button.description = "ending…"

        def act() -> None:
            try:
                _server(self.client).mcp_end_session(session_id)
            finally:
                self._ending.discard(session_id)

        return self._submit(act, f"ended MCP session {session_id}")

    def _close_rows(self) -> None:
        for r in self._rows.values():
            r.close()
        self._rows.clear()
        for b in self._blocks.values():
            b.close()
        self._blocks.clear()


class Dashboard(widgets.Tab):
    """The panels in tabs; only the selected tab polls."""

    def __init__(self, panels: Sequence[_LivePanel], titles: Iterable[str]) -> None:
        super().__init__(children=list(panels), titles=tuple(titles), selected_index=0)
        self.panels = list(panels)
        self.add_class("fai-dashboard")
        self.observe(self._on_select, names="selected_index")
        self._on_select({"new": self.selected_index})

    def __repr__(self) -> str:
        return f"<functionai Dashboard: {', '.join(p.kind for p in self.panels)}>"

    def _on_select(self, change: dict[str, Any]) -> None:
        for i, p in enumerate(self.panels):
            p.active = i == change["new"]

    def close(self) -> None:
        for p in self.panels:
            p.close()
        super().close()


KINDS = {
    "sessions": "sessions",
    "session": "sessions",
    "coldstarts": "coldstarts",
    "coldstart": "coldstarts",
    "cold-starts": "coldstarts",
    "functions": "functions",
    "function": "functions",
    "versions": "functions",
    "tasks": "tasks",
    "task": "tasks",
    "tools": "tools",
    "tool": "tools",
    "mcp": "tools",
    "runs": "runs",
    "run": "runs",
    "schedules": "runs",
    "schedule": "runs",
    "all": "all",
}

_BY_KEY: dict[str, Any] = {}
_BY_KEY_LOCK = threading.Lock()


def _cell_id() -> str | None:
    """The id of the notebook cell being run (JupyterLab and Notebook 7 send it), if any."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        parent = kernel.get_parent("shell") if kernel is not None else None
        cell = ((parent or {}).get("metadata") or {}).get("cellId")
        return str(cell) if cell else None
    except Exception:
        return None


def panel(
    kind: str = "all",
    client: FunctionAIClient | None = None,
    *,
    function: str | None = None,
    session: str | None = None,
    interval: float | None = None,
    key: str | None = None,
) -> Any:
    """A live panel: ``"sessions"``, ``"coldstarts"``, ``"functions"``,
    ``"tasks"``, ``"tools"`` (hosted MCP servers; ``function`` then names the
    server), ``"runs"`` (notebook runs and schedules) or ``"all"`` (in tabs:
    the Runs and Tools tabs only when no ``function`` is given, as they are
    about notebooks and MCP servers, not one function), optionally for one
    ``function``.

    ``client`` defaults to the notebook's server (or the embedded runtime),
    as the magics find it. A panel made for the same ``key`` (by default the
    notebook cell being run, with the kind and function) replaces the previous
    one, which stops polling."""
    which = KINDS.get(kind.lower())
    if which is None:
        raise ValueError(f"unknown panel {kind!r}: use sessions, coldstarts, functions, tasks, tools, runs or all")
    if client is None:
        from .connect import connect

        client = connect()
    kw: dict[str, Any] = {} if interval is None else {"interval": interval}
    made: Any
    if which == "sessions":
        made = SessionsPanel(client, function, **kw)
    elif which == "coldstarts":
        made = ColdStartsPanel(client, function, **kw)
    elif which == "functions":
        made = FunctionsPanel(client, function, session=session, **kw)
    elif which == "tasks":
        made = TasksPanel(client, function, **kw)
    elif which == "tools":
        made = ToolsPanel(client, function, **kw)
    elif which == "runs":
        made = RunsPanel(client, **kw)
    else:
        parts: list[_LivePanel] = [
            FunctionsPanel(client, function, session=session, active=True, **kw),
            SessionsPanel(client, function, active=False, **kw),
            ColdStartsPanel(client, function, active=False, **kw),
            TasksPanel(client, function, active=False, **kw),
        ]
        titles = ["Function" if function else "Functions", "Sessions", "Cold starts", "Tasks"]
        if function is None:
            parts.extend([RunsPanel(client, active=False, **kw), ToolsPanel(client, active=False, **kw)])
            titles.extend(["Runs", "Tools"])
        made = Dashboard(parts, titles)
    cell = _cell_id()
    if key is None and cell is not None:
        key = f"{cell}:{which}:{function or ''}"
    if key is not None:
        with _BY_KEY_LOCK:
            old = _BY_KEY.pop(key, None)
            _BY_KEY[key] = made
        if old is not None and old is not made:
            old.close()
    return made
