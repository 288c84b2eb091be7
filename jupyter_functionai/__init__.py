"""jupyter-functionai: session-isolated sandbox functions for AI agents, Jupyter-native."""

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import (
    BadPayload,
    Conflict,
    FunctionAIError,
    FunctionTimeout,
    InstanceCrashed,
    InvalidArgument,
    InvalidSpec,
    IsolationUnavailable,
    NoCapacity,
    NotFound,
    OutOfMemory,
    PayloadTooLarge,
    SessionClosed,
    UserError,
)
from .spec import FunctionSpec

if TYPE_CHECKING:
    from .client import AsyncClient, Client
    from .magics import function, tool
    from .runtime.runtime import ColdStart, InvokeResult, Runtime

# Heavy names load on first use, so that code running inside sandboxes (which
# imports jupyter_functionai.sandbox.*) never pulls in SQLAlchemy or Jupyter.
_LAZY = {
    "function": "jupyter_functionai.magics",
    "tool": "jupyter_functionai.magics",
    "AsyncClient": "jupyter_functionai.client",
    "Client": "jupyter_functionai.client",
    "Runtime": "jupyter_functionai.runtime.runtime",
    "ColdStart": "jupyter_functionai.runtime.runtime",
    "InvokeResult": "jupyter_functionai.runtime.runtime",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jupyter_functionai' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    from .server.app import FunctionAI

    return [{"module": "jupyter_functionai.server.app", "app": FunctionAI}]

__all__ = [
    "AsyncClient",
    "BadPayload",
    "Client",
    "ColdStart",
    "Conflict",
    "FunctionAIError",
    "FunctionSpec",
    "FunctionTimeout",
    "InstanceCrashed",
    "InvalidArgument",
    "InvalidSpec",
    "InvokeResult",
    "IsolationUnavailable",
    "NoCapacity",
    "NotFound",
    "OutOfMemory",
    "PayloadTooLarge",
    "Runtime",
    "SessionClosed",
    "UserError",
    "__version__",
    "function",
    "tool",
]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext jupyter_functionai``: the ``%%function``, ``%%tool`` and ``%fai`` magics."""
    from .magics import load_ipython_extension as load

    load(ipython)
