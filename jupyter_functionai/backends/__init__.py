"""Sandbox backends: one module each, all behind :class:`.base.Backend` (one
contract test suite).  A backend is chosen by short name or by a dotted path
to its class (``--FunctionAI.backend=process``)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument
from .base import Backend

__all__ = ["BACKENDS", "backend_class"]

#: Short names of the backends shipped with the package (``--FunctionAI.backend=process``).
BACKENDS = {"process": "jupyter_functionai.backends.process.ProcessBackend"}


def backend_class(name: str | type[Backend]) -> type[Backend]:
    """A backend class from a short name (``process``), a dotted import path
    or the class itself; anything else is a clear error."""
    if isinstance(name, type):
        klass: Any = name
    else:
        from importlib import import_module

        path = BACKENDS.get(name, name)
        module, _, attr = path.rpartition(".")
        try:
            klass = getattr(import_module(module), attr) if module else None
        except (ImportError, AttributeError) as exc:
            raise InvalidArgument(f"unknown backend {name!r} (short names: {', '.join(BACKENDS)}; else a dotted path to a Backend class): {exc}") from None
        if klass is None:
            raise InvalidArgument(f"unknown backend {name!r} (short names: {', '.join(BACKENDS)}; else a dotted path to a Backend class)")
    if not (isinstance(klass, type) and issubclass(klass, Backend)):
        raise InvalidArgument(f"backend {name!r} is not a subclass of jupyter_functionai.backends.base.Backend")
    return klass


