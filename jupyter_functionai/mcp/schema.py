"""A Python function as an MCP tool description: name, description, input
and output JSON schemas.

Built on pydantic v2 alone (no ``mcp`` package: serving tools needs no SDK).
The schemas are those the official SDK's ``MCPServer.tool()`` publishes for
the same function (mcp 2's ``func_metadata``; ``tests/test_dependencies.py``
compares the two), so a tool hosted here looks exactly like one served by the
SDK: an ``{name}Arguments`` model of the parameters, and for the return type
either the type's own schema (a model, a TypedDict, a ``dict[str, T]``, an
annotated class) or a ``{name}Output`` model wrapping it in ``result``. The
docstring adds what type hints cannot say: the tool's description (the text
before an ``Args:`` / ``Parameters`` section) and each parameter's
description (Google ``name: text`` or Sphinx ``:param name:``).
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import types
from typing import Annotated, Any, NotRequired, Required, cast, get_args, get_origin, get_type_hints

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PydanticUserError,
    TypeAdapter,
    WithJsonSchema,
    create_model,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaWarningKind
from typing_extensions import is_typeddict

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


class _StrictJsonSchema(GenerateJsonSchema):
    """Raise instead of warning, so a return type with no JSON form publishes no output schema."""

    def emit_warning(self, kind: JsonSchemaWarningKind, detail: str) -> None:
        raise ValueError(f"JSON schema warning: {kind} - {detail}")


class _ArgModelBase(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)


_DEFS = "#/$defs/"
_NO_DEFAULT = object()
_log = logging.getLogger(__name__)


def _inline_root_ref(schema: dict[str, Any]) -> dict[str, Any]:
    """An output schema must have an object root: a root that is only a ``$ref``
    (a self-referencing model) gets its definition copied onto the root."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith(_DEFS):
        return schema
    definition = cast(dict[str, Any], schema["$defs"][ref.removeprefix(_DEFS)])
    return {**definition, **{k: v for k, v in schema.items() if k != "$ref"}}


def _arguments_model(fn: Any, sig: inspect.Signature, skip: str | None) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for param in sig.parameters.values():
        if param.name == skip:
            continue
        if param.name.startswith("_"):
            raise InvalidArgument(f"{fn.__name__}: parameter {param.name!r} cannot start with '_'")
        annotation: Any = Any if param.annotation is inspect.Parameter.empty else param.annotation
        metadata: list[Any] = []
        if param.annotation is inspect.Parameter.empty:
            metadata.append(WithJsonSchema({"title": param.name, "type": "string"}))
        field_name, field_kwargs = param.name, {}
        if callable(getattr(BaseModel, field_name, None)):  # would shadow a BaseModel method: aliased
            field_name, field_kwargs = f"field_{field_name}", {"alias": param.name}
        typ = Annotated[(annotation, *metadata, Field(**field_kwargs))]
        fields[field_name] = typ if param.default is inspect.Parameter.empty else (typ, param.default)
    return create_model(f"{fn.__name__}Arguments", __base__=_ArgModelBase, **fields)


def _wrapped(fn_name: str, annotation: Any) -> type[BaseModel]:
    return create_model(f"{fn_name}Output", result=annotation)


def _model_from_class(cls: type[Any], hints: dict[str, Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for fname, ftype in hints.items():
        if fname.startswith("_"):
            continue
        default = getattr(cls, fname, _NO_DEFAULT)
        fields[fname] = ftype if default is _NO_DEFAULT else (ftype, default)
    return create_model(cls.__name__, __config__=ConfigDict(from_attributes=True), **fields)


def _output_model(annotation: Any, type_expr: Any, fn_name: str) -> tuple[Any, bool]:
    """(the type structured output is validated against or None, whether results are wrapped in ``result``)."""
    if type_expr is None:
        return _wrapped(fn_name, annotation), True
    if isinstance(type_expr, types.GenericAlias):
        args = get_args(type_expr)
        if get_origin(type_expr) is dict and len(args) == 2 and args[0] is str:
            return Annotated[type_expr, Field(title=f"{fn_name}DictOutput")], False
        return _wrapped(fn_name, annotation), True
    if isinstance(type_expr, type):
        if issubclass(type_expr, BaseModel) or is_typeddict(type_expr):
            return type_expr, False
        if type_expr in (str, int, float, bool, bytes, type(None)):
            return _wrapped(fn_name, annotation), True
        hints = get_type_hints(type_expr)
        return (_model_from_class(type_expr, hints) if hints else None), False
    return _wrapped(fn_name, annotation), True  # unions, Optional, Literal, ...


def _readable_typeddict(model: Any) -> Any:
    """pydantic refuses a ``typing.TypedDict`` below Python 3.12: rebuild it as a
    ``typing_extensions.TypedDict`` with the same keys, totality and docstring."""
    if sys.version_info >= (3, 12) or not is_typeddict(model) or type(model).__module__ != "typing":
        return model
    from typing_extensions import TypedDict

    items: dict[str, Any] = {}
    for key, hint in get_type_hints(model, include_extras=True).items():
        required = key in model.__required_keys__
        while get_origin(hint) in (Required, NotRequired):  # an explicit qualifier wins over totality
            required = get_origin(hint) is Required
            hint = get_args(hint)[0]
        items[key] = hint if required else NotRequired[hint]
    rebuilt = cast(Any, TypedDict)(model.__name__, items)
    for attr in ("__doc__", "__module__", "__qualname__", "__pydantic_config__"):
        if hasattr(model, attr):
            setattr(rebuilt, attr, getattr(model, attr))
    return rebuilt


def _output_schema(fn: Any, sig: inspect.Signature) -> tuple[dict[str, Any] | None, bool]:
    """(output schema or None, wrap_output) for the return annotation, as the SDK derives them."""
    annotation = sig.return_annotation
    if annotation is inspect.Parameter.empty:
        return None, False
    type_expr = annotation
    while get_origin(type_expr) is Annotated:
        type_expr = get_args(type_expr)[0]
    model, wrap = _output_model(annotation, type_expr, fn.__name__)
    if model is None:
        return None, False
    try:
        schema = TypeAdapter(_readable_typeddict(model)).json_schema(schema_generator=_StrictJsonSchema)
    except (PydanticUserError, NameError, TypeError, ValueError, RuntimeError, pydantic_core.SchemaError) as exc:
        _log.info("no output schema for %s's return type %r: %s: %s", fn.__name__, type_expr, type(exc).__name__, exc)
        return None, False
    return _inline_root_ref(schema), wrap


def describe_function(fn: Any, *, name: str | None = None, description: str | None = None) -> dict[str, Any]:
    """The tool description of ``fn`` (see the module docstring).

    Returns ``{"name", "description", "input_schema", "output_schema",
    "wrap_output", "ctx_param"}``; ``output_schema`` is None when the
    return type says nothing structured (then results travel as text)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{getattr(fn, '__name__', fn)!r} has no inspectable signature: {exc}") from None
    for p in params.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise InvalidArgument(f"{fn.__name__}: a tool takes named parameters, not *{p.name} / **{p.name}")
    ctx_param = CTX_PARAM if CTX_PARAM in params else None
    try:
        sig = inspect.signature(fn, eval_str=True)
        input_schema = _arguments_model(fn, sig, ctx_param).model_json_schema(by_alias=True)
        output_schema, wrap_output = _output_schema(fn, sig)
    except InvalidArgument:
        raise
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
        "output_schema": output_schema,
        "wrap_output": wrap_output,
        "ctx_param": ctx_param,
    }
