"""Run by tests/test_gpu_mps.py as a normal user: a ProcessBackend whose MPS
control daemon is started through the real launcher (a user namespace and a
mount namespace, the card's shm as /dev/shm) with a stand-in control binary,
over a fake NVML (there is no GPU here), and a slice instance that reports
what it sees. Prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from jupyter_functionai.backends.process import ProcessBackend
from jupyter_functionai.gpu import Device, GpuAllocator
from jupyter_functionai.gpu.mps import CommandRunner, MpsControl
from jupyter_functionai.runtime import Runtime
from jupyter_functionai.spec import FunctionSpec

SEE = """
import os

def handler(event, ctx):
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
    return {
        "env": {k: v for k, v in os.environ.items() if k.startswith("CUDA_MPS_")},
        "shm": sorted(os.listdir("/dev/shm")),
        "pipe": sorted(os.listdir(pipe)) if pipe and os.path.isdir(pipe) else None,
    }
"""


class OneCard:
    def devices(self) -> list[Device]:
        return [Device(index=0, uuid="GPU-fake-0", name="Fake H100", memory_total_mib=16 * 1024, memory_used_mib=0)]

    def driver(self) -> str:
        return "fake"


async def main(cfg: dict[str, str]) -> dict[str, object]:
    state = cfg["state"]
    mps = MpsControl(os.path.join(state, "mps"), CommandRunner(cfg["control"], [sys.executable, "-m", "jupyter_functionai.sandbox.mps_launch"]))
    backend = ProcessBackend(state, gpus=GpuAllocator(OneCard(), mps=mps))
    async with Runtime.open(state, backend=backend) as rt:
        await rt.deploy(FunctionSpec.from_code("client", SEE, gpu_memory="4GiB"))
        out = (await rt.invoke("client", session="m")).value
        (inst,) = rt.live_instances()
        out["gpu"] = inst.isolation.get("gpu")
        out["missing"] = inst.isolation.get("missing", {})
        daemons = rt.gpus()["mps"]["daemons"]
        out["daemon_pid"] = daemons[0]["pid"] if daemons else None
        out["daemon_shm_seen"] = open(os.path.join(mps.dirs("GPU-fake-0").log, "shm-seen")).read().split()
    out["daemons_after"] = mps.state()["daemons"]
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
