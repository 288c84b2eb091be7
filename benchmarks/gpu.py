"""CUDA inside a sandbox: what a GPU function costs, next to the same work
outside any sandbox, in one run. Needs an NVIDIA GPU and PyTorch.

* ``host``: a plain ``python3`` subprocess: import torch, first CUDA call
  (context creation), then bf16 matrix products;
* ``sandbox``: a function deployed with ``gpu=0.5`` on a Runtime (process
  backend: its own PID/mount/IPC/UTS/network namespaces, read-only root, its
  own uid, memory and pid limits); its module imports torch in the template,
  so an instance is forked with torch loaded; the first call of a session
  creates the CUDA context in that instance, later calls reuse it. Two
  sessions: each gets its own instance, uid and CUDA context.

Reported: first-call and warm-call latency, CUDA context creation, matmul
TFLOP/s inside vs outside, the uid and isolation each instance achieved, and
what the instance saw of the GPU (``CUDA_VISIBLE_DEVICES``,
``FUNCTIONAI_GPU_FRACTION``). The process backend does not partition a GPU:
the fraction is advisory (see the README).

Run: ``python benchmarks/gpu.py [--n 5] [--size 8192] [--json PATH]``.
``--cpu-dry-run`` does the same plumbing with numpy on the CPU (no GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

WORK = r'''
import os, time
DRY = os.environ.get("FAI_GPU_DRY") == "1"
t_import = time.perf_counter()
if DRY:
    import numpy as np
else:
    import torch
IMPORT_MS = (time.perf_counter() - t_import) * 1000
_ready = {}


def _matmul(size, reps):
    if DRY:
        a = np.random.rand(size, size).astype("float32")
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ a
        return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e12
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e12


def handler(event, ctx):
    first = not _ready
    t0 = time.perf_counter()
    if first:
        if not DRY:
            torch.cuda.init()
            torch.zeros(1, device="cuda")
            _ready["name"] = torch.cuda.get_device_name(0)
            total = torch.cuda.get_device_properties(0).total_memory
            _ready["mem_gib"] = round(total / 2**30, 1)
            share = float(os.environ.get("FUNCTIONAI_GPU_FRACTION") or 0)
            if 0 < share < 1:  # the advisory share, applied the way a handler applies it
                torch.cuda.set_per_process_memory_fraction(share)
                try:
                    over = torch.empty(int(total * min(0.95, share + 0.1)), dtype=torch.uint8, device="cuda")
                    del over
                    _ready["cap"] = "not enforced"
                except torch.cuda.OutOfMemoryError:
                    _ready["cap"] = f"enforced at {share:g}"
                inside = torch.empty(int(total * share * 0.8), dtype=torch.uint8, device="cuda")
                del inside
                torch.cuda.empty_cache()
        else:
            _ready["name"] = "cpu (dry run)"
        _ready["init_ms"] = (time.perf_counter() - t0) * 1000
    tflops = _matmul(int(event.get("size", 4096)), int(event.get("reps", 10)))
    return {
        "first": first, "device": _ready["name"], "mem_gib": _ready.get("mem_gib"), "cuda_init_ms": _ready["init_ms"] if first else 0.0,
        "tflops": round(tflops, 1), "uid": os.getuid(), "pid": os.getpid(), "import_ms": IMPORT_MS,
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "fraction": os.environ.get("FUNCTIONAI_GPU_FRACTION"), "cap": _ready.get("cap"),
        "dev_nodes": sorted(os.listdir("/dev"))[:0] or sorted(p for p in os.listdir("/dev") if p.startswith("nvidia")),
    }
'''

HOST = WORK + r'''
import json, sys
t0 = time.perf_counter()
first = handler({"size": SIZE, "reps": REPS}, None)
first["call_ms"] = (time.perf_counter() - t0) * 1000
t0 = time.perf_counter()
warm = handler({"size": SIZE, "reps": REPS}, None)
warm["call_ms"] = (time.perf_counter() - t0) * 1000
print(json.dumps({"first": first, "warm": warm}))
'''


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def nvidia_smi() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(nvidia-smi: {exc})"


def host_run(size: int, reps: int, env: dict[str, str]) -> dict[str, Any]:
    code = HOST.replace("SIZE", str(size)).replace("REPS", str(reps))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    total = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise RuntimeError(f"host run failed: {p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_ms"] = total
    return out


async def sandbox_run(size: int, reps: int, n: int) -> dict[str, Any]:
    from jupyter_functionai.runtime import Runtime
    from jupyter_functionai.spec import FunctionSpec

    out: dict[str, Any] = {"sessions": {}}
    with tempfile.TemporaryDirectory(prefix="fai-gpu-") as tmp:
        async with Runtime.open(os.path.join(tmp, "state")) as rt:
            spec = FunctionSpec.from_code(
                "gpu-work", WORK, gpu=0.5, memory="16Gi", timeout=600,
                env={k: v for k, v in os.environ.items() if k == "FAI_GPU_DRY"},
                limits={"max_pids": 1024},
            )
            t0 = time.perf_counter()
            await rt.deploy(spec)
            out["deploy_ms"] = (time.perf_counter() - t0) * 1000
            for sid in ("g1", "g2"):
                calls = []
                for i in range(n):
                    t0 = time.perf_counter()
                    r = await rt.invoke("gpu-work", {"size": size, "reps": reps}, session=sid)
                    v = dict(r.value)
                    v["call_ms"] = (time.perf_counter() - t0) * 1000
                    if r.cold_start is not None:
                        v["cold_start"] = {k: round(x, 1) if isinstance(x, float) else x for k, x in dataclasses.asdict(r.cold_start).items() if k in ("path", "spawn_ms", "init_ms", "first_call_ms")}
                    calls.append(v)
                    log(f"sandbox {sid} call {i}: {v['call_ms']:.0f} ms, {v['tflops']} TFLOP/s, first={v['first']}")
                desc = await rt.describe_session(sid)
                iso = ((desc.get("instance") or {}).get("isolation") or {})
                out["sessions"][sid] = {
                    "calls": calls, "namespaces": iso.get("namespaces"), "cgroup": iso.get("cgroup"), "uid": iso.get("uid"),
                    "network": iso.get("network"), "missing": iso.get("missing"),
                }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="calls per session (default 4)")
    ap.add_argument("--size", type=int, default=8192, help="matrix size (default 8192)")
    ap.add_argument("--reps", type=int, default=20, help="products per call (default 20)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="numpy on the CPU instead of torch on a GPU (checks the plumbing)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    if args.cpu_dry_run:
        os.environ["FAI_GPU_DRY"] = env["FAI_GPU_DRY"] = "1"
    elif not glob.glob("/dev/nvidia[0-9]*"):
        print("no NVIDIA GPU here (no /dev/nvidia* device); --cpu-dry-run checks the plumbing without one", file=sys.stderr)
        return 2
    res: dict[str, Any] = {"gpu": nvidia_smi() if not args.cpu_dry_run else "dry run", "size": args.size, "reps": args.reps}
    log(f"GPU: {res['gpu']}")
    res["host"] = host_run(args.size, args.reps, env)
    log(f"host: first {res['host']['first']['call_ms']:.0f} ms, warm {res['host']['warm']['tflops']} TFLOP/s")
    res["sandbox"] = asyncio.run(sandbox_run(args.size, args.reps, args.n))
    h = res["host"]
    print(f"GPU: {res['gpu']}")
    print(f"{'':<34} {'host':>10} {'sandbox g1':>11} {'sandbox g2':>11}")
    s1, s2 = (res["sandbox"]["sessions"][k]["calls"] for k in ("g1", "g2"))
    rows = [
        ("first call ms (CUDA context + work)", h["first"]["call_ms"], s1[0]["call_ms"], s2[0]["call_ms"]),
        ("CUDA context creation ms", h["first"]["cuda_init_ms"], s1[0]["cuda_init_ms"], s2[0]["cuda_init_ms"]),
        ("warm call ms", h["warm"]["call_ms"], min(c["call_ms"] for c in s1[1:]), min(c["call_ms"] for c in s2[1:])),
        ("bf16 matmul TFLOP/s (warm)", h["warm"]["tflops"], max(c["tflops"] for c in s1[1:]), max(c["tflops"] for c in s2[1:])),
    ]
    for label, a, b, c in rows:
        print(f"{label:<34} {a:>10.1f} {b:>11.1f} {c:>11.1f}")
    for sid, calls in (("g1", s1), ("g2", s2)):
        c0 = calls[0]
        print(f"{sid}: uid {c0['uid']}, device {c0['device']}, CUDA_VISIBLE_DEVICES={c0['visible']}, fraction={c0['fraction']}, cap {c0['cap']}, "
              f"/dev: {', '.join(c0['dev_nodes']) or '-'}, cold start {json.dumps(c0.get('cold_start'))}")
        info = res["sandbox"]["sessions"][sid]
        print(f"{sid}: namespaces {info['namespaces']}, cgroup {info['cgroup']}, network {info['network']}, missing {info['missing']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
