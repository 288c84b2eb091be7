"""A Python function as an MCP tool description: name, description, input
and output JSON schemas.

The one adapter to the ``mcp`` package (pinned ``mcp>=2.3,<3``): the schemas
are those ``MCPServer.tool()`` publishes for the same function
(``func_metadata``), so a tool hosted here looks exactly like one served by
the SDK. The docstring adds what type hints cannot say: the tool's
description (the text before an ``Args:`` / ``Parameters`` section) and each
parameter's description (Google ``name: text`` or Sphinx ``:param name:``).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from ..errors import InvalidArgument

__all__ = ["CTX_PARAM", "describe_function", "parse_docstring"]

#: A tool parameter with this name receives the functionai context (session
#: state, working directory, progress); it is not part of the input schema.
CTX_PARAM = "ctx"

_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params|Returns|Return|Raises|Yields|Examples?|Notes?)\s*:?\s*$")
_GOOGLE_PARAM = re.compile(r"^\s*\*{0,2}([A-Za-z_][A-Za-z0-9_]*)(?:\s*\([^)]*\))?:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*)$")
_NUMPY_PARAM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s+:(?:\s.*)?$")  # "name : type", text below


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        m = _SECTION.match(line)
        if m:
            section = m.group(1).lower()
            current = None
            continue
        if re.fullmatch(r"\s*-{3,}\s*", line):  # numpy underline
            continue
        sphinx = _SPHINX_PARAM.match(line)
        if sphinx:
            current = sphinx.group(1)
            params[current] = sphinx.group(2).strip()
            section = "args"
            continue
        if line.lstrip().startswith(":"):  # :returns:, :raises: ...
            section, current = "other", None
            continue
        if section is None:
            summary.append(line)
        elif section in ("args", "arguments", "parameters", "params"):
            g = _GOOGLE_PARAM.match(line)
            n = _NUMPY_PARAM.match(line)
            indent = len(line) - len(line.lstrip())
            if n and indent <= 4:
                current = n.group(1)
                params[current] = ""
            elif g and indent <= 4:
                current = g.group(1)
                params[current] = g.group(2).strip()
            elif current and line.strip():
                params[current] = (params[current] + " " + line.strip()).strip()
    return "\n".join(summary).strip(), {k: v for k, v in params.items() if v}


def describe_function(fn: Any, *, name: str | None = None, description: str | None = None) -> dict[str, Any]:
    """The tool description of ``fn`` (see the module docstring).

    Returns ``{"name", "description", "input_schema", "output_schema",
    "wrap_output", "ctx_param"}``; ``output_schema`` is None when the
    return type says nothing structured (then results travel as text)."""
    try:
        from mcp.server.mcpserver.utilities.func_metadata import func_metadata
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise InvalidArgument(f"publishing tools needs the mcp package (pip install 'mcp>=2.3,<3'): {exc}") from None
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{getattr(fn, '__name__', fn)!r} has no inspectable signature: {exc}") from None
    for p in params.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise InvalidArgument(f"{fn.__name__}: a tool takes named parameters, not *{p.name} / **{p.name}")
    ctx_param = CTX_PARAM if CTX_PARAM in params else None
    try:
        meta = func_metadata(fn, skip_names=[ctx_param] if ctx_param else [])
        input_schema = meta.arg_model.model_json_schema(by_alias=True)
    except Exception as exc:
        raise InvalidArgument(f"cannot derive a JSON schema for tool {fn.__name__!r}: {exc}") from None
    summary, docs = parse_docstring(fn.__doc__)
    for pname, text in docs.items():
        prop = input_schema.get("properties", {}).get(pname)
        if isinstance(prop, dict) and "description" not in prop:
            prop["description"] = text
    return {
        "name": name or fn.__name__,
        "description": description if description is not None else summary,
        "input_schema": input_schema,
        "output_schema": meta.output_schema,
        "wrap_output": bool(meta.wrap_output),
        "ctx_param": ctx_param,
    }
