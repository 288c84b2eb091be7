"""The Usage panel: what each function (or session) used over the last hour,
from the usage ledger, with CPU-seconds per 5 minutes as bars."""


from __future__ import annotations

import time
from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient
from .base import _LivePanel
from .formatting import _esc

WINDOW_S = 3600
STEP_S = 300
MEASURES = ("cpu_s", "mem_gib_s", "gpu_s", "gpu_mem_gib_s", "active_s", "idle_s")


def usage_chart(rows: list[dict[str, Any]], *, now: float, width: int = 480, height: int = 70) -> str:
    """An inline SVG: CPU-seconds per step over the window, all rows together."""
    slots = WINDOW_S // STEP_S
    first = (int(now) // STEP_S) * STEP_S - (slots - 1) * STEP_S
    per: dict[int, float] = {}
    for r in rows:
        if r.get("start") is not None:
            i = round((float(r["start"]) - first) / STEP_S)
            if 0 <= i < slots:
                per[i] = per.get(i, 0.0) + float(r.get("cpu_s") or 0.0)
    top = max(per.values(), default=0.0) or 1e-9
    bar = width / slots
    bars = []
    for i, cpu in sorted(per.items()):
        h = max(1.0, cpu / top * (height - 2))
        bars.append(
            f'<rect class="fai-usage-bar" x="{i * bar + 1:.1f}" y="{height - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
            f'fill="#1976d2" data-cpu-s="{cpu:.3f}"><title>{cpu:.2f} CPU-s</title></rect>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="fai-usage-chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="CPU-seconds per {STEP_S // 60} minutes, the last hour">{"".join(bars)}</svg>'
    )


class UsagePanel(_LivePanel):
    """Per function (or, for one function, per session): CPU-s, memory
    GiB-s, GPU-s, GPU memory GiB-s, active and idle seconds and, with a price
    table, the cost; CPU-seconds per 5 minutes as bars."""

    kind = "usage"
    title = "functionai usage, the last hour"

    def __init__(self, client: FunctionAIClient, function: str | None = None, *, interval: float = 5.0, **kw: Any) -> None:
        self.function = function
        self.chart = widgets.HTML()
        self.table = widgets.HTML()
        self.table.add_class("fai-usage-table")
        if function:
            self.title = f"functionai usage of {function}, the last hour"
        super().__init__(client, interval=interval, **kw)
        for w in (self.chart, self.table):
            self._own(w)

    def _body(self) -> list[Any]:
        return [self.chart, self.table]

    def _fetch(self) -> list[dict[str, Any]]:
        by = "session" if self.function else "function"
        return list(self.client.usage(self.function, since=time.time() - WINDOW_S, step=STEP_S, by=by))

    def _render(self) -> None:
        rows: list[dict[str, Any]] = self.data or []
        self.chart.value = usage_chart(rows, now=time.time())
        totals: dict[tuple[str, str | None], dict[str, Any]] = {}
        for r in rows:
            key = (str(r["function"]), r.get("session"))
            t = totals.setdefault(key, {m: 0.0 for m in MEASURES} | {"cost": None, "currency": r.get("currency") or ""})
            for m in MEASURES:
                t[m] += float(r.get(m) or 0.0)
            if r.get("cost") is not None:
                t["cost"] = (t["cost"] or 0.0) + float(r["cost"])
        if not totals:
            self.table.value = "<i>no usage in the last hour</i>"
            return
        head = "".join(f"<th>{h}</th>" for h in ("function", "session", "CPU-s", "GiB-s", "GPU-s", "GPU GiB-s", "active s", "idle s", "cost"))
        body = []
        for (fn, sid), t in sorted(totals.items(), key=lambda kv: -kv[1]["cpu_s"]):
            cost = f"{t['cost']:.4f} {_esc(t['currency'])}" if t["cost"] is not None else "—"
            cells = [_esc(fn), _esc(sid or "—"), *(f"{t[m]:.2f}" for m in MEASURES), cost]
            body.append(f'<tr data-function="{_esc(fn)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        self.table.value = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
