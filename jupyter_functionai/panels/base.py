"""The live panel machinery: a panel polls the API on a daemon thread of its own and updates its widgets."""


from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient
from .formatting import MAX_BACKOFF, _esc

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
