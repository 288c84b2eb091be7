"""The Functions panel: versions, source, rollback, the endpoint and a curl example."""


from __future__ import annotations

import time
import urllib.parse
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient
from .base import _LivePanel, open_sessions
from .formatting import _esc, _num, fmt_duration, fmt_time
from .render import curl_example

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
        scaling = getattr(self.client, "scaling", None)
        if callable(scaling):
            out["scaling"] = scaling(name, limit=5)
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
        if spec.get("max_instances"):
            facts.append(
                f"max instances {_esc(spec['max_instances'])} (scales at {_esc(spec.get('target_concurrency', 1))} per instance, "
                f"cooldown {_esc(fmt_duration(spec.get('scale_cooldown_s', 60)))})"
            )
        pool = data.get("pool")
        if isinstance(pool, dict):
            facts.append(f"pool {_esc(pool.get('ready'))}/{_esc(pool.get('target'))} ready" + (f" ({_esc(pool['last_error'])})" if pool.get("last_error") else ""))
        scaling = data.get("scaling") or {}
        now = (scaling.get("functions") or {}).get(name)
        if now and now.get("max_instances"):
            facts.append(f'<span class="fai-load">load: {_esc(now["in_flight"])} in flight, {_esc(now["queued"])} queued</span>')
        self.info.value = " · ".join(facts) + self._scale_events_html(scaling.get("events") or [])
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

    @staticmethod
    def _scale_events_html(events: list[dict[str, Any]]) -> str:
        if not events:
            return ""
        rows = "".join(
            f'<li class="fai-scale-event" data-reason="{_esc(e.get("reason"))}">{_esc(fmt_time(e.get("at")))}: {_esc(e.get("reason"))} '
            f"{_esc(e.get('from'))} → {_esc(e.get('to'))} (in flight {_esc(e.get('in_flight'))}, queued {_esc(e.get('queued'))})</li>"
            for e in reversed(events)
        )
        return f'<div class="fai-scale-events">scale events, newest first:<ul style="margin:2px 0">{rows}</ul></div>'

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
