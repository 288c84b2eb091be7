"""An IPython extension a sandbox kernel loads at start (``--IPKernelApp.extra_extensions``):
it loads the functionai magics (``%%function``, ``%fai``: they talk to the
server that started the kernel, through its relay), then tells the sandbox
that the kernel has finished initialising, so the recorded cold start covers
the kernel's whole start, not just its sockets."""

from __future__ import annotations

import os
from typing import Any

ENV_READY_FILE = "FUNCTIONAI_KERNEL_READY_FILE"


def load_ipython_extension(ipython: Any) -> None:
    try:
        ipython.extension_manager.load_extension("jupyter_functionai.magics")
    except Exception as exc:  # the kernel is still useful without them
        print(f"functionai: the magics could not be loaded: {exc}")
    path = os.environ.pop(ENV_READY_FILE, None)  # not inherited by what the kernel runs
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
