"""jupyter-functionai: session-isolated sandbox functions for AI agents, Jupyter-native."""

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
from .runtime import ColdStart, InvokeResult, Runtime
from .spec import FunctionSpec

__all__ = [
    "BadPayload",
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
]
