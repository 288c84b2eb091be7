"""Scaling on load: what the autoscaler buys a bursty sessionless workload.

Two functions with the same tiny handler, called in bursts of ``--burst``
concurrent sessionless calls, alternating, in one run:

* ``plain``: no warm pool, no ceiling: each call forks a fresh instance
  from the template (cold-start path ``template-fork``);
* ``scaled``: ``max_instances=--burst`` and a long cooldown: the first burst
  forks as ``plain`` does and grows the warm pool to the burst; after it, each
  burst is served from the pool (``warm-pool``), which refills between bursts.

Prints the p50 and p95 of a call (as its caller sees it, fork included)
per function over ``--rounds`` bursts after the first, the cold-start paths
seen, and the ratio scaled / plain. Asserts nothing.

    .venv/bin/python benchmarks/scaling.py [--burst 4] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence

CODE = "def handler(event, ctx):\n    return event\n"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


async def run(burst: int, rounds: int) -> dict[str, dict[str, object]]:
    from jupyter_functionai.runtime import Runtime
    from jupyter_functionai.spec import FunctionSpec

    with tempfile.TemporaryDirectory(prefix="fai-scaling-") as tmp:
        async with Runtime.open(tmp) as rt:
            await rt.deploy(FunctionSpec.from_code("plain", CODE, session=False))
            await rt.deploy(FunctionSpec.from_code("scaled", CODE, session=False, max_instances=burst, cooldown=3600))
            ms: dict[str, list[float]] = {"plain": [], "scaled": []}
            paths: dict[str, Counter[str]] = {"plain": Counter(), "scaled": Counter()}

            async def one(name: str) -> tuple[float, str]:
                t0 = time.perf_counter()
                r = await rt.invoke(name, {})
                return (time.perf_counter() - t0) * 1000, r.cold_start.path if r.cold_start else "-"

            for rnd in range(rounds + 1):
                for name in ("plain", "scaled") if rnd % 2 else ("scaled", "plain"):
                    if name == "scaled":
                        await rt.pool.wait_full("scaled", timeout=120)  # refilled between bursts
                    got = await asyncio.gather(*(one(name) for _ in range(burst)))
                    if rnd == 0:
                        continue  # the first burst: scaled grows its pool here
                    ms[name] += [m for m, _ in got]
                    paths[name].update(p for _, p in got)
            events = (await rt.scaling("scaled"))["events"]
    return {
        name: {"p50": statistics.median(v), "p95": pct(v, 95), "paths": dict(paths[name]), "events": events if name == "scaled" else []}
        for name, v in ms.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burst", type=int, default=4, help="concurrent calls per burst (default 4)")
    ap.add_argument("--rounds", type=int, default=20, help="bursts measured per function (default 20)")
    args = ap.parse_args(argv)
    res = asyncio.run(run(args.burst, args.rounds))
    p, s = res["plain"], res["scaled"]
    print(f"bursts of {args.burst} sessionless calls, {args.rounds} per function (after the first)")
    print(f"{'':<10} {'p50 ms':>8} {'p95 ms':>8}  cold-start paths")
    for name in ("plain", "scaled"):
        r = res[name]
        print(f"{name:<10} {r['p50']:>8.1f} {r['p95']:>8.1f}  {r['paths']}")
    print(f"scaled / plain: p50 {float(s['p50']) / float(p['p50']):.2f}, p95 {float(s['p95']) / float(p['p95']):.2f}")  # type: ignore[arg-type]
    print(f"scale events: {[(e['reason'], e['from'], e['to']) for e in s['events']]}")  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
