"""Helpers shared by the benchmarks: the handler under test, percentiles,
Jupyter sandboxing of config/runtime dirs, /proc memory readers, tables.

Only the standard library is imported here (numpy/pandas are loaded by the
handler module when a benchmark runs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

# one reading of /proc for the runtime and the benchmarks alike
from jupyter_functionai.backends.process import smaps_rollup as smaps_rollup

#: The function every benchmark deploys: a module whose top level imports
#: numpy and pandas and builds a DataFrame; the handler does a small pandas
#: computation on the event and returns a small JSON dict.
HANDLER_CODE = '''\
import numpy as np, pandas as pd

df = pd.DataFrame({"a": np.arange(1000), "b": np.arange(1000) % 7, "c": np.linspace(0.0, 1.0, 1000)})


def handler(event, ctx):
    x = int(event.get("x", 1))
    sub = df[df["b"] == x % 7]
    return {"x": x, "rows": int(len(sub)), "sum": float((sub["a"] * x).sum()), "mean_c": round(float(sub["c"].mean()), 6)}


def warmup():
    # the spec's warm-pool priming hook (used only where the benchmark turns it on)
    handler({"x": 0}, None)
'''

#: The same work as a Jupyter cell: imports + module top level + handler definition.
KERNEL_SETUP = HANDLER_CODE + "\nimport json as _json\n"


def expected_value(x: int) -> dict[str, Any]:
    """What the handler returns for ``{"x": x}``, computed without pandas
    (so every path's answer can be checked)."""
    rows = [a for a in range(1000) if a % 7 == x % 7]
    cs = [a / 999 for a in rows]
    return {"x": x, "rows": len(rows), "sum": float(sum(a * x for a in rows)), "mean_c": round(sum(cs) / len(cs), 6)}


def check_value(path: str, got: Any, x: int) -> None:
    want = expected_value(x)
    ok = (
        isinstance(got, dict)
        and got.get("x") == want["x"]
        and got.get("rows") == want["rows"]
        and math.isclose(got.get("sum", math.nan), want["sum"], rel_tol=1e-9)
        and math.isclose(got.get("mean_c", math.nan), want["mean_c"], abs_tol=1e-5)
    )
    if not ok:
        raise RuntimeError(f"{path}: wrong result for x={x}: {got!r} (expected {want!r})")


def write_handler(directory: str, name: str = "bench_handler.py") -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(HANDLER_CODE)
    os.chmod(path, 0o644)
    return path


def load_module(path: str, modname: str = "fai_bench_handler") -> ModuleType:
    """Import the handler file into this process (the fork-floor's parent)."""
    spec = importlib.util.spec_from_file_location(modname, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module


# -- statistics ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


# -- Jupyter ---------------------------------------------------------------------

JUPYTER_ENV_VARS = ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")


@contextlib.contextmanager
def jupyter_sandbox_env(base: str | None = None) -> Iterator[str]:
    """Point Jupyter's and IPython's per-user directories at a temp dir
    (restored afterwards), so kernels leave nothing in ``~``."""
    own = base is None
    root = tempfile.mkdtemp(prefix="fai-jupyter-") if base is None else base
    saved = {k: os.environ.get(k) for k in JUPYTER_ENV_VARS}
    for k in JUPYTER_ENV_VARS:
        d = os.path.join(root, k.lower())
        os.makedirs(d, exist_ok=True)
        os.environ[k] = d
    try:
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if own:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def kernel_pid(km: Any) -> int | None:
    """The pid of a jupyter_client KernelManager's kernel process."""
    prov = getattr(km, "provisioner", None)
    proc = getattr(prov, "process", None)
    pid = getattr(proc, "pid", None)
    if pid is None:
        pid = getattr(prov, "pid", None)
    return int(pid) if pid else None


async def kernel_execute(kc: Any, code: str, expr: str, timeout: float = 120.0) -> str:
    """Run ``code`` in a kernel and return the text of ``expr`` evaluated after it
    (as a user expression); raise when the cell or the expression failed."""
    msg_id = kc.execute(code, silent=False, store_history=False, user_expressions={"r": expr})
    while True:
        reply = await kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    content = reply["content"]
    if content.get("status") != "ok":
        raise RuntimeError(f"kernel cell failed: {content.get('ename')}: {content.get('evalue')}")
    r = content["user_expressions"]["r"]
    if r.get("status") != "ok":
        raise RuntimeError(f"kernel expression failed: {r.get('ename')}: {r.get('evalue')}")
    text = r["data"]["text/plain"]
    # text/plain of a str is its repr
    import ast

    return ast.literal_eval(text) if text[:1] in "'\"" else text


# -- memory ------------------------------------------------------------------------



MB = 1024 * 1024


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmPTE / Threads of a process from /proc/PID/status (kB, or a count)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmPTE", "Threads"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- output ---------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text (Markdown-compatible) table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(not isinstance(r[i], str) for r in rows) for i in range(len(headers))]
    out = []
    for j, r in enumerate(cells):
        out.append("| " + " | ".join(c.rjust(widths[i]) if j and numeric[i] else c.ljust(widths[i]) for i, c in enumerate(r)) + " |")
        if j == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
