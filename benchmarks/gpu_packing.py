"""GPU packing efficiency: the allocator's best fit beside first fit, on one
synthetic stream of slice requests (arrivals and departures) over a set of
cards. The cards are an inventory given to the allocator (its NVML adapter's
interface); what is measured is the placement policy, not a GPU.

    .venv/bin/python benchmarks/gpu_packing.py [--cards 8] [--gib 80] [--requests 20000] [--seed 1]

Prints, for each load and policy: the requests refused and the mean memory
held while the streams run (medians over seeds); then the ratios. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics

from jupyter_functionai.errors import NoCapacity
from jupyter_functionai.gpu import Device, GpuAllocator


class Inventory:
    def __init__(self, cards: int, gib: int) -> None:
        self.list = [Device(index=i, uuid=f"GPU-{i}", name="card", memory_total_mib=gib * 1024, memory_used_mib=0) for i in range(cards)]

    def devices(self) -> list[Device]:
        return self.list

    def driver(self) -> str:
        return "inventory"


SIZES = [1, 1, 2, 2, 4, 4, 4, 8, 8, 16, 24, 40]  # GiB: many small agents, a few large models


def run(policy: str, cards: int, gib: int, requests: int, seed: int, load: float) -> dict[str, float]:
    """``load``: the memory asked for on average (arrivals x mean size x mean
    lifetime) as a fraction of all the cards' memory."""
    rng = random.Random(seed)
    alloc = GpuAllocator(Inventory(cards, gib), policy=policy)
    leaving: list[tuple[float, str]] = []
    refused, held = 0, []
    lifetime = load * cards * gib / statistics.fmean(SIZES)
    t = 0.0
    for n in range(requests):
        t += rng.expovariate(1.0)
        while leaving and leaving[0][0] <= t:
            alloc.release(heapq.heappop(leaving)[1])
        owner = f"i{n}"
        try:
            alloc.allocate(owner, memory_mib=rng.choice(SIZES) * 1024)
        except NoCapacity:
            refused += 1
        else:
            heapq.heappush(leaving, (t + rng.expovariate(1 / lifetime), owner))
        held.append(sum(s.memory_mib for s in alloc.slices()) / (cards * gib * 1024))
    free = [max(0, d.memory_total_mib - sum(s.memory_mib for s in alloc.slices() if d.uuid in s.devices)) for d in alloc.nvml.devices()]  # type: ignore[union-attr]
    return {"refused": refused / requests, "held": statistics.fmean(held), "largest_free_gib": max(free) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cards", type=int, default=8)
    ap.add_argument("--gib", type=int, default=80)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--seeds", type=int, default=5, help="streams per load (medians are printed)")
    ap.add_argument("--loads", type=float, nargs="+", default=[0.8, 1.0, 1.2], help="memory asked / memory there is")
    a = ap.parse_args()
    print(f"{a.requests} slice requests per stream over {a.cards} x {a.gib} GiB cards, sizes {SIZES} GiB; medians of {a.seeds} streams")
    print(f"{'load':>5} {'policy':<10} {'refused':>8} {'mean held':>10}   best-fit / first-fit: refused, held")
    for load in a.loads:
        out = {p: [run(p, a.cards, a.gib, a.requests, s, load) for s in range(1, a.seeds + 1)] for p in ("best-fit", "first-fit")}
        med = {p: {k: statistics.median(r[k] for r in rs) for k in ("refused", "held")} for p, rs in out.items()}
        bf, ff = med["best-fit"], med["first-fit"]
        for p in ("best-fit", "first-fit"):
            tail = f"   {bf['refused'] / ff['refused']:.2f}, {bf['held'] / ff['held']:.3f}" if p == "first-fit" and ff["refused"] else ""
            print(f"{load:>5.1f} {p:<10} {med[p]['refused']:>8.2%} {med[p]['held']:>10.2%}{tail}")


if __name__ == "__main__":
    main()
