"""GPU slices on one card, on a lent GPU: how many 4 GiB slice sessions fit,
the matrix-product throughput they keep when they all run at once, and a
neighbour over its slice stopped while they run. Needs an NVIDIA GPU,
nvidia-ml-py and PyTorch.

1. ``--slice-gib`` (4) slice sessions of one function (``gpu_memory``), as
   many as the allocator places on card 0 (goal: >= 16 on an 80 GiB card;
   7 under MIG). Each initialises CUDA and caps its framework at its slice
   (``torch.cuda.set_per_process_memory_fraction``).
2. ``alone``: all of them run bf16 matrix products at the same time for
   ``--seconds``; each reports its products per second.
3. ``with greedy``: the same, while one more session of a function that
   does *not* cap itself allocates twice its slice. The runtime (MPS or the
   NVML watchdog, whichever holds the slice: the isolation report says)
   must stop it: reported is the time from its allocation (the handler's
   clock) to its caller's ``gpu_out_of_memory`` (goal: <= 1 s), and the
   throughput the others kept, as a ratio to ``alone`` (goal: loss < 10 %).

``--cpu-dry-run`` checks the plumbing without a GPU: numpy instead of
torch, and a stand-in NVML for one card whose processes' memory is what
each instance writes in its working directory (the real NVML's place); the
figures then mean nothing.

Run: ``python benchmarks/gpu_slices.py [--slice-gib 4] [--seconds 10] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

WORK = r'''
import os, time
DRY = os.environ.get("FAI_GPU_DRY") == "1"
if DRY:
    import numpy as np
else:
    import torch
_held = []


def _use(mib):
    """What the stand-in NVML reads in a dry run (a real GPU needs no help)."""
    with open("gpu-use", "w") as f:
        f.write(str(mib))


def handler(event, ctx):
    op = event["op"]
    mib = int(os.environ.get("FUNCTIONAI_GPU_MEMORY_MIB") or 0)
    if op == "init":
        if DRY:
            _use(256)
        else:
            torch.zeros(1, device="cuda")
            total = torch.cuda.get_device_properties(0).total_memory
            if mib and event.get("cap", True):
                torch.cuda.set_per_process_memory_fraction(min(1.0, mib * 2**20 / total))
        return {"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "mps": os.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"), "slice_mib": mib}
    if op == "work":
        size = int(event["size"])
        while time.time() < event["start_at"]:
            time.sleep(0.001)
        if DRY:
            a = np.random.rand(size, size).astype("float32")
        else:
            a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
        n = 0
        t0 = time.time()
        while time.time() < event["until"]:
            a @ a
            if not DRY:
                torch.cuda.synchronize()
            n += 1
        return {"products": n, "per_s": n / max(1e-9, time.time() - t0)}
    if op == "grab":  # twice its slice, uncapped
        want = 2 * mib
        if DRY:
            _use(want)
        else:
            _held.append(torch.empty(want * 2**20, dtype=torch.uint8, device="cuda"))
            torch.cuda.synchronize()
        grabbed_at = time.time()
        print(f"grabbed {want} MiB at {grabbed_at!r}", flush=True)
        time.sleep(float(event.get("hold", 30)))
        return {"grabbed_at": grabbed_at, "survived": True}
    raise ValueError(op)
'''


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class DryNvml:
    """The stand-in NVML of --cpu-dry-run: one 80 GiB card; each live
    instance's process uses what its handler wrote in ``gpu-use``."""

    def __init__(self) -> None:
        self.backend: Any = None

    def driver(self) -> str:
        return "dry run"

    def devices(self) -> list[Any]:
        from jupyter_functionai.gpu import Device, GpuProcess

        procs = []
        for inst in list(getattr(self.backend, "_instances", {}).values()):
            b = inst.binding
            try:
                with open(os.path.join(b.workdir, "gpu-use")) as f:
                    procs.append(GpuProcess(inst.pid, int(f.read() or 0)))
            except (OSError, ValueError, AttributeError):
                continue
        used = sum(p.used_mib for p in procs)
        return [Device(index=0, uuid="GPU-dry-0", name="dry run", memory_total_mib=80 * 1024, memory_used_mib=used, processes=tuple(procs))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from jupyter_functionai.backends.process import ProcessBackend
    from jupyter_functionai.errors import FunctionAIError, GpuOutOfMemory, NoCapacity
    from jupyter_functionai.gpu import GpuAllocator
    from jupyter_functionai.runtime import Runtime
    from jupyter_functionai.spec import FunctionSpec

    out: dict[str, Any] = {}
    env = {"FAI_GPU_DRY": "1"} if args.cpu_dry_run else {}
    with tempfile.TemporaryDirectory(prefix="fai-gpu-slices-") as tmp:
        state = os.path.join(tmp, "state")
        backend = None
        if args.cpu_dry_run:
            nvml = DryNvml()
            backend = ProcessBackend(state, gpus=GpuAllocator(nvml))
            nvml.backend = backend
        async with Runtime.open(state, backend=backend or "process") as rt:
            common: dict[str, Any] = {"gpu_memory": f"{args.slice_gib}GiB", "memory": args.host_memory, "timeout": 600, "env": env, "limits": {"max_pids": 1024}}
            if args.cpu_dry_run:
                common["disk"] = 0  # the stand-in NVML reads gpu-use from the host's side of the working directory
            await rt.deploy(FunctionSpec.from_code("slice", WORK, **common))
            await rt.deploy(FunctionSpec.from_code("greedy", WORK, **common))
            # 1. as many slice sessions as card 0 takes (one slice kept back for the greedy neighbour)
            sessions: list[str] = []
            out["placement_refusal"] = None
            while len(sessions) < args.max_sessions:
                sid = f"s{len(sessions)}"
                try:
                    r = await rt.invoke("slice", {"op": "init"}, session=sid)
                except NoCapacity as exc:
                    out["placement_refusal"] = str(exc)
                    break
                if not sessions:
                    out["first_instance"] = r.value
                sessions.append(sid)
            if len(sessions) < 2:
                raise SystemExit(f"only {len(sessions)} slice session(s) could be placed: {out['placement_refusal']}")
            await rt.close_session(sessions.pop())  # room for the greedy one
            await rt.invoke("greedy", {"op": "init", "cap": False}, session="greedy")
            out["sessions"] = len(sessions)
            desc = await rt.describe_session(sessions[0])
            out["mode"] = (((desc.get("instance") or {}).get("isolation") or {}).get("gpu"))
            log(f"{len(sessions)} slice sessions of {args.slice_gib} GiB placed, held as: {out['mode']}")

            async def burst(label: str, greedy: bool) -> dict[str, Any]:
                start_at = time.time() + 1.0
                until = start_at + args.seconds
                work = [rt.invoke("slice", {"op": "work", "size": args.size, "start_at": start_at, "until": until}, session=s) for s in sessions]
                grab = None
                called: list[float] = []
                if greedy:
                    async def grab_later() -> Any:
                        await asyncio.sleep(max(0.0, start_at + args.seconds / 3 - time.time()))
                        called.append(time.time())
                        return await rt.invoke("greedy", {"op": "grab", "hold": args.seconds}, session="greedy")

                    grab = asyncio.ensure_future(grab_later())
                results = await asyncio.gather(*work, return_exceptions=True)
                ok = [r.value["per_s"] for r in results if not isinstance(r, BaseException)]
                failed = [repr(r) for r in results if isinstance(r, BaseException)]
                res: dict[str, Any] = {"per_s_median": statistics.median(ok) if ok else 0.0, "per_s_sum": sum(ok), "failed": failed}
                if grab is not None:
                    try:
                        g = await grab
                        res["greedy"] = {"stopped": False, "value": g.value}
                    except GpuOutOfMemory as exc:
                        stopped_at = time.time()
                        grabbed = [float(line.rsplit(" at ", 1)[1]) for line in str(exc.details.get("logs") or "").splitlines() if line.startswith("grabbed ")]
                        res["greedy"] = {
                            "stopped": True, "error": str(exc), "used_mib": exc.details.get("used_mib"), "slice_mib": exc.details.get("slice_mib"),
                            # from its allocation where its output says when, else an upper bound: from the call
                            "stop_after_grab_s": round(stopped_at - grabbed[0], 3) if grabbed else None,
                            "stop_after_call_s": round(stopped_at - called[0], 3) if called else None,
                        }
                    except FunctionAIError as exc:  # an allocation MPS refused inside the instance, say
                        res["greedy"] = {"stopped": False, "refused": True, "error": f"{exc.kind}: {exc}"}
                log(f"{label}: median {res['per_s_median']:.2f} products/s per session, {len(failed)} failed, greedy {res.get('greedy')}")
                return res

            out["alone"] = await burst("alone", False)
            out["with_greedy"] = await burst("with greedy", True)
            a, b = out["alone"]["per_s_median"], out["with_greedy"]["per_s_median"]
            out["kept"] = round(b / a, 3) if a else None
            out["gpus"] = rt.gpus()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slice-gib", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="each burst (default 10)")
    ap.add_argument("--size", type=int, default=4096, help="matrix size (default 4096)")
    ap.add_argument("--max-sessions", type=int, default=64)
    ap.add_argument("--host-memory", default="3GiB", help="each instance's host memory limit (torch and a CUDA context)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="numpy on the CPU and a stand-in NVML (checks the plumbing)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.cpu_dry_run:
        os.environ["FAI_GPU_DRY"] = "1"
    elif not glob.glob("/dev/nvidia[0-9]*"):
        print("no NVIDIA GPU here (no /dev/nvidia* device); --cpu-dry-run checks the plumbing without one", file=sys.stderr)
        return 2
    res = asyncio.run(run(args))
    g = res["with_greedy"].get("greedy") or {}
    print(f"slice sessions on one card: {res['sessions']} of {args.slice_gib} GiB (goal >= 16 on 80 GiB; 7 under MIG), held as {res['mode']}")
    print(f"products/s per session, median: alone {res['alone']['per_s_median']:.2f}, with a greedy neighbour {res['with_greedy']['per_s_median']:.2f}: kept {res['kept']} (goal >= 0.9)")
    print(
        f"greedy neighbour: {'stopped' if g.get('stopped') else 'NOT stopped'}, {g.get('stop_after_grab_s')} s after its allocation, "
        f"{g.get('stop_after_call_s')} s after its call began (goal <= 1 s): {g.get('error') or g}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
