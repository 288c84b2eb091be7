"""The GPU share of a function reaches its instances (the process backend
does not partition a GPU: the share is advisory, for the framework to apply;
CUDA inside a sandbox is measured by benchmarks/gpu.py on a machine with one)."""

from __future__ import annotations

import pytest

from jupyter_functionai.runtime import Runtime
from jupyter_functionai.spec import FunctionSpec

pytestmark = pytest.mark.asyncio

SHOW = "import os\n\ndef handler(event, ctx):\n    return {k: os.environ.get(k) for k in ('FUNCTIONAI_GPU_FRACTION', 'XLA_PYTHON_CLIENT_MEM_FRACTION')}\n"


async def test_the_gpu_share_is_told_to_the_instance(rt: Runtime) -> None:
    await rt.deploy(FunctionSpec.from_code("half", SHOW, gpu=0.5))
    await rt.deploy(FunctionSpec.from_code("two", SHOW, gpu=2))
    await rt.deploy(FunctionSpec.from_code("none", SHOW))
    await rt.deploy(FunctionSpec.from_code("own", SHOW, gpu=0.25, env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.1"}))
    assert (await rt.invoke("half", session="a")).value == {"FUNCTIONAI_GPU_FRACTION": "0.5", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
    assert (await rt.invoke("two")).value == {"FUNCTIONAI_GPU_FRACTION": "2", "XLA_PYTHON_CLIENT_MEM_FRACTION": None}
    assert (await rt.invoke("none")).value == {"FUNCTIONAI_GPU_FRACTION": None, "XLA_PYTHON_CLIENT_MEM_FRACTION": None}
    # the function's own env wins
    assert (await rt.invoke("own")).value == {"FUNCTIONAI_GPU_FRACTION": "0.25", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.1"}
