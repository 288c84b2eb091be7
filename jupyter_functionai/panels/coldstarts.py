"""The Cold starts panel: each start as a bar split into spawn / init / first call, and histograms per path."""


from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from ..api import FunctionAIClient
from .base import _LivePanel
from .formatting import _esc, path_colour
from .render import coldstart_chart, coldstart_histograms

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
