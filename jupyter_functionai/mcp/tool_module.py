"""The module of a function-backed MCP server: runs inside its sandboxes.

The server's backing function (``mcp-<server>``) is deployed as the text of
this file followed by one ``_register(...)`` line per tool, whose arguments
are ``repr`` literals (never user text pasted into code). Each tool's code
(the notebook function plus the names it carries) is compiled into a
namespace of its own, once, in the template; the handler dispatches
``{"tool": NAME, "arguments": {...}}`` to it. Calls of one MCP session reach
one session of this function, so its tools share ``ctx.session.state`` and
the working directory.

Standard library only (pydantic, when the sandbox's Python has it, coerces
arguments to the annotated types the way ``MCPServer`` tools get them).
"""

from __future__ import annotations

import dataclasses
import inspect
import linecache
from typing import Any

_TOOLS: dict[str, dict[str, Any]] = {}


class ToolNotFound(LookupError):
    """The tool is not in this version of the server."""


def _register(name: str, code: str, func: str, ctx_param: str | None) -> None:
    filename = f"<tool {name}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # tracebacks show the lines
    namespace: dict[str, Any] = {"__name__": "functionai_tool_" + "".join(c if c.isalnum() else "_" for c in name)}
    exec(compile(code, filename, "exec", dont_inherit=True), namespace)  # the tool's own code, in its own namespace
    fn = namespace.get(func)
    if not callable(fn):
        raise NameError(f"tool {name!r}: its code defines no callable {func!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"tool {name!r}: {func} is a generator; a tool returns one result")
    _TOOLS[name] = {"fn": fn, "call": _validating(fn), "ctx": ctx_param}


def _validating(fn: Any) -> Any:
    try:
        import pydantic
    except ImportError:  # pragma: no cover - pydantic comes with the package
        return fn
    try:
        return pydantic.validate_call(config={"arbitrary_types_allowed": True})(fn)
    except Exception:  # an annotation pydantic cannot build a validator for: call as is
        return fn


def handler(event: Any, ctx: Any) -> Any:
    if not isinstance(event, dict) or not isinstance(event.get("tool"), str):
        raise ValueError('expected an event {"tool": NAME, "arguments": {...}}')
    name = event["tool"]
    tool = _TOOLS.get(name)
    if tool is None:
        raise ToolNotFound(f"tool {name!r} is not in this version of the server (it has: {', '.join(sorted(_TOOLS)) or 'no tools'})")
    args = event.get("arguments") or {}
    if not isinstance(args, dict):
        raise TypeError("arguments must be an object")
    args = dict(args)
    if tool["ctx"]:
        args[tool["ctx"]] = ctx
    value = tool["call"](**args)
    if inspect.iscoroutine(value):
        return _finish(value)
    return _jsonable(value)


async def _finish(coro: Any) -> Any:
    return _jsonable(await coro)


def _jsonable(value: Any) -> Any:
    """Models, dataclasses and tuples as JSON values."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
