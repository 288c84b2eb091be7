"""Shared formatting: the colours of paths and states, durations, sizes, times, ticks."""


from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from typing import Any

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
