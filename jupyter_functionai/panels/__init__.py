"""Live notebook panels (ipywidgets) over the functionai API.

    from jupyter_functionai.panels import panel
    panel("sessions")                 # the affinity map, a Close button per session
    panel("coldstarts", function="f") # each start as a bar: spawn / init / first call
    panel("functions", function="f")  # versions, source, rollback, endpoint, curl
    panel("tasks")                    # durable tasks: counts, progress bars, cancel / retry
    panel("tools", function="notes")  # MCP servers: tools, schemas, calls/errors/p50, sessions, try a tool
    panel("runs")                     # notebook runs and schedules: run now, pause / resume, cancel, outputs
    panel("usage")                    # the usage ledger, the last hour: CPU-s, GiB-s, GPU-s, active / idle, cost
    panel()                           # all seven in tabs

Also shown by ``%fai panel [sessions|coldstarts|functions|tasks|tools|runs|usage] [NAME]``, by the
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

One module per panel (``sessions``, ``coldstarts``, ``functions``, ``tasks``,
``runs``, ``tools``, ``usage``), on ``base`` (the polling machinery), ``formatting``
(colours, durations, sizes) and ``render`` (isolation reports, curl examples,
cold-start charts as SVG); ``dashboard`` puts them in tabs and holds the
``panel()`` factory. The JupyterLab sidebar (``labextension/``) shows the same
REST API outside any kernel.
"""

from __future__ import annotations

from .coldstarts import ColdStartsPanel
from .dashboard import KINDS, Dashboard, panel
from .formatting import PATH_COLOURS, fmt_bytes, fmt_ms, fmt_time, nice_ticks
from .functions import FunctionsPanel
from .render import coldstart_chart, coldstart_histograms, curl_example, isolation_summary
from .runs import RunsPanel, output_links
from .sessions import SessionsPanel
from .tasks import TasksPanel
from .tools import ToolsPanel, params_summary, schema_skeleton, tool_result_html
from .usage import UsagePanel, usage_chart

__all__ = [
    "KINDS",
    "PATH_COLOURS",
    "ColdStartsPanel",
    "Dashboard",
    "FunctionsPanel",
    "RunsPanel",
    "SessionsPanel",
    "TasksPanel",
    "ToolsPanel",
    "UsagePanel",
    "coldstart_chart",
    "coldstart_histograms",
    "curl_example",
    "fmt_bytes",
    "fmt_ms",
    "fmt_time",
    "isolation_summary",
    "nice_ticks",
    "output_links",
    "panel",
    "params_summary",
    "schema_skeleton",
    "tool_result_html",
    "usage_chart",
]
