"""Notebook runs: the same small parameterised notebook four ways, in one run.

* ``warm``: a Run (``RunManager.start`` then wait until *succeeded*) whose
  sandbox comes from the warm pool with its kernel already started: what a
  server gives a run when it has had a moment since the last one;
* ``fresh``: a Run with no warm kernels: the sandbox is forked from the
  function's template and papermill starts the kernel;
* ``papermill CLI``: ``python -m papermill IN OUT -p x N`` as a subprocess;
* ``execute_notebook``: ``papermill.execute_notebook`` in this process (a
  new kernel each time, no interpreter start).

The paths take turns (one of each per round), so drift on a noisy machine
hits them alike. Each run's output is checked (the parameter reached the
notebook). A Run is durable (three committed transitions, fsync each) and
isolated (its own sandbox, uid and directory); the papermill paths are
neither. Before each warm Run the benchmark waits until the pool has its
kernel back (the refill happens between runs, not in the measured time): a
server that gets runs back to back faster than it starts kernels falls back
to the fresh path for the excess.

Goal (for the note): ``warm`` at least 10x faster than ``papermill CLI`` at p50.

Run: ``python benchmarks/runs.py [--n 10] [--json PATH]`` (or ``functionai bench runs``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from _common import jupyter_sandbox_env, percentile

PATHS = ("warm", "fresh", "papermill_cli", "execute_notebook")
LABELS = {
    "warm": "Run, warm kernel (pool)",
    "fresh": "Run, fresh kernel",
    "papermill_cli": "papermill command line",
    "execute_notebook": "papermill.execute_notebook",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_notebook(path: str) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    params = new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[params, new_code_cell("total = sum(i * x for i in range(1000))\nprint('total', total)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)


def printed(path: str) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def expect(x: int) -> str:
    return f"total {sum(i * x for i in range(1000))}"


async def _run_once(runs: Any, x: int, warm: bool) -> float:
    if warm:
        await runs.rt.pool.wait_full("notebook-run", timeout=60)
    t0 = time.perf_counter()
    run = await runs.start("bench.ipynb", {"x": x})
    done = await runs.wait(run["id"], 120)
    ms = (time.perf_counter() - t0) * 1000
    if done["state"] != "succeeded":
        raise RuntimeError(f"run {done['id']} {done['state']}: {done.get('error')}")
    cold = done.get("cold_start") or {}
    if warm and not cold.get("warm_kernel"):
        raise RuntimeError(f"the warm run did not get a warm kernel: {cold}")
    if not warm and cold.get("warm_kernel"):
        raise RuntimeError("the fresh run got a warm kernel")
    text = printed(os.path.join(runs.root, done["outputs"]["ipynb"]))
    if expect(x) not in text:
        raise RuntimeError(f"run {done['id']}: the output lacks {expect(x)!r}")
    return ms


def _cli_once(root: str, x: int, env: dict[str, str]) -> float:
    out = os.path.join(root, f"cli-{x}.ipynb")
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "papermill", os.path.join(root, "bench.ipynb"), out, "-p", "x", str(x), "--no-progress-bar", "--log-level", "ERROR"],
        capture_output=True, text=True, env=env, cwd=root, timeout=120,
    )
    ms = (time.perf_counter() - t0) * 1000
    if p.returncode != 0 or expect(x) not in printed(out):
        raise RuntimeError(f"papermill CLI failed ({p.returncode}): {p.stderr[-500:]}")
    return ms


def _inproc_once(root: str, x: int) -> float:
    import papermill

    out = os.path.join(root, f"inproc-{x}.ipynb")
    t0 = time.perf_counter()
    papermill.execute_notebook(os.path.join(root, "bench.ipynb"), out, parameters={"x": x}, progress_bar=False, cwd=root)
    ms = (time.perf_counter() - t0) * 1000
    if expect(x) not in printed(out):
        raise RuntimeError("execute_notebook: wrong output")
    return ms


async def run(n: int) -> dict[str, Any]:
    from jupyter_functionai.runs.manager import RunManager
    from jupyter_functionai.runtime import Runtime

    times: dict[str, list[float]] = {p: [] for p in PATHS}
    with tempfile.TemporaryDirectory(prefix="fai-bench-runs-") as tmp, jupyter_sandbox_env(os.path.join(tmp, "jupyter")):
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        write_notebook(os.path.join(root, "bench.ipynb"))
        env = dict(os.environ)
        async with Runtime.open(os.path.join(tmp, "warm-state")) as rt_warm, Runtime.open(os.path.join(tmp, "fresh-state")) as rt_fresh:
            warm, fresh = RunManager(rt_warm, root, warm_kernels=1), RunManager(rt_fresh, root, warm_kernels=0)
            await warm.prepare()
            await fresh.prepare()
            # one unmeasured round: templates built, files cached
            await _run_once(warm, 0, True)
            await _run_once(fresh, 0, False)
            await asyncio.to_thread(_cli_once, root, 0, env)
            await asyncio.to_thread(_inproc_once, root, 0)
            for i in range(1, n + 1):
                times["warm"].append(await _run_once(warm, i, True))
                times["fresh"].append(await _run_once(fresh, i, False))
                times["papermill_cli"].append(await asyncio.to_thread(_cli_once, root, i, env))
                times["execute_notebook"].append(await asyncio.to_thread(_inproc_once, root, i))
                log(f"round {i}/{n}: " + ", ".join(f"{p} {times[p][-1]:.0f} ms" for p in PATHS))
    res: dict[str, Any] = {
        p: {"p50_ms": round(percentile(v, 50), 1), "p95_ms": round(percentile(v, 95), 1), "n": len(v)} for p, v in times.items()
    }
    res["cli_over_warm_p50"] = round(res["papermill_cli"]["p50_ms"] / res["warm"]["p50_ms"], 2)
    res["cli_over_fresh_p50"] = round(res["papermill_cli"]["p50_ms"] / res["fresh"]["p50_ms"], 2)
    res["execute_notebook_over_warm_p50"] = round(res["execute_notebook"]["p50_ms"] / res["warm"]["p50_ms"], 2)
    return res


def report(res: dict[str, Any]) -> None:
    print(f"{'path':<30} {'p50 ms':>8} {'p95 ms':>8} {'n':>4}")
    for p in PATHS:
        print(f"{LABELS[p]:<30} {res[p]['p50_ms']:>8} {res[p]['p95_ms']:>8} {res[p]['n']:>4}")
    ratio = res["cli_over_warm_p50"]
    print(f"papermill CLI / warm Run at p50: {ratio:.1f}x (goal >= 10: {'PASS' if ratio >= 10 else 'MISS'}); "
          f"CLI / fresh Run: {res['cli_over_fresh_p50']:.1f}x; execute_notebook / warm Run: {res['execute_notebook_over_warm_p50']:.1f}x")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="runs per path (default 10, at least 10 for the note)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    res = asyncio.run(run(args.n))
    report(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
