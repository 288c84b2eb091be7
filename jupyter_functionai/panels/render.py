"""What the API returns, as HTML: isolation reports, curl examples, cold-start charts and histograms."""


from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .formatting import (
    FONT,
    PATH_COLOURS,
    SEGMENTS,
    _esc,
    _tick_label,
    fmt_ms,
    fmt_time,
    nice_ticks,
    path_colour,
    percentile,
)

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
    if iso.get("gpu"):
        parts.append(f"gpu {iso['gpu']}")
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
