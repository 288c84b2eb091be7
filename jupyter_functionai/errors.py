"""One error hierarchy for the whole package.

Every error a caller can see is a :class:`FunctionAIError` with a stable
``kind`` string (what the wire protocol, the HTTP API and the CLI report) and
an HTTP ``status`` that the server's single error translator uses.
"""

from __future__ import annotations

from typing import Any


class FunctionAIError(Exception):
    """Base class of every error raised by jupyter-functionai."""

    kind: str = "error"
    status: int = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "message": self.message}
        out.update({k: v for k, v in self.details.items() if v is not None})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FunctionAIError:
        """Rebuild the precise subclass from a structured error (wire or JSON)."""
        kind = data.get("kind", "error")
        klass = _BY_KIND.get(kind, FunctionAIError)
        details = {k: v for k, v in data.items() if k not in ("kind", "message")}
        err = klass.__new__(klass)
        FunctionAIError.__init__(err, str(data.get("message", kind)), **details)
        return err


class InvalidSpec(FunctionAIError, ValueError):
    """A FunctionSpec field has a bad value; ``field`` names it (dotted path)."""

    kind = "invalid_spec"
    status = 400

    def __init__(self, field: str, value: Any, reason: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: {shown} is not valid: {reason}", field=field, reason=reason)
        self.field = field
        self.value = value
        self.reason = reason


class BadPayload(FunctionAIError, ValueError):
    """The event (or a result) cannot be encoded/decoded as JSON."""

    kind = "bad_payload"
    status = 400


class InvalidArgument(FunctionAIError, ValueError):
    """A malformed argument other than a spec or payload (e.g. a session id)."""

    kind = "invalid_argument"
    status = 400


class NotFound(FunctionAIError, LookupError):
    kind = "not_found"
    status = 404


class SandboxForbidden(FunctionAIError, PermissionError):
    """A sandbox kernel's relay refused a request that would reach past the
    kernel's sandbox (see ``kernel/relay.py``)."""

    kind = "sandbox_forbidden"
    status = 403


class Conflict(FunctionAIError):
    kind = "conflict"
    status = 409


class PayloadTooLarge(FunctionAIError):
    kind = "payload_too_large"
    status = 413


class IsolationUnavailable(FunctionAIError):
    """A spec *requires* an isolation layer this system cannot provide."""

    kind = "isolation_unavailable"
    status = 422


class InvocationError(FunctionAIError):
    """Base of errors produced by running a call."""


class UserError(InvocationError):
    """The handler raised; ``type``, ``traceback`` are in details."""

    kind = "user_exception"
    status = 422


class FunctionTimeout(InvocationError):
    kind = "timeout"
    status = 504


class OutOfMemory(InvocationError):
    kind = "out_of_memory"
    status = 502


class GpuOutOfMemory(InvocationError):
    """The instance's processes used more GPU memory than its slice, and the
    runtime's watchdog ended it (``details``: ``used_mib``, ``slice_mib``)."""

    kind = "gpu_out_of_memory"
    status = 502


class InstanceCrashed(InvocationError):
    kind = "instance_crashed"
    status = 502


class NoCapacity(InvocationError):
    kind = "no_capacity"
    status = 503


class SessionClosed(FunctionAIError):
    kind = "session_closed"
    status = 404  # a closed session is gone: the gateway answers as for an unknown one


class SchemaError(FunctionAIError):
    """The store's database cannot be brought to this code's schema version
    (a migration step failed, or its version record is damaged); ``step``
    names the failing step when there is one."""

    kind = "schema_error"
    status = 500


class SchemaTooNew(SchemaError):
    """The database was written by a newer release (its schema version is
    higher than this code knows); it is left untouched."""

    kind = "schema_too_new"
    status = 500


_BY_KIND: dict[str, type[FunctionAIError]] = {
    c.kind: c
    for c in (
        InvalidSpec,
        BadPayload,
        InvalidArgument,
        NotFound,
        Conflict,
        SandboxForbidden,
        PayloadTooLarge,
        IsolationUnavailable,
        UserError,
        FunctionTimeout,
        OutOfMemory,
        GpuOutOfMemory,
        InstanceCrashed,
        NoCapacity,
        SessionClosed,
        SchemaError,
        SchemaTooNew,
    )
}

__all__ = [
    "BadPayload",
    "Conflict",
    "FunctionAIError",
    "FunctionTimeout",
    "GpuOutOfMemory",
    "InstanceCrashed",
    "InvalidArgument",
    "InvalidSpec",
    "InvocationError",
    "IsolationUnavailable",
    "NoCapacity",
    "NotFound",
    "OutOfMemory",
    "PayloadTooLarge",
    "SchemaError",
    "SchemaTooNew",
    "SessionClosed",
    "UserError",
]
