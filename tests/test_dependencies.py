"""Packaging: pyproject's floors are consistent with each other and with CI,
and the tool schemas built without mcp equal those of the official SDK.

The installs themselves (the floors with ``--resolution lowest-direct``, and
resolving beside langchain-mcp-adapters and fastmcp 2) are in ``.ci/deps``:
they need the network."""

from __future__ import annotations

import dataclasses
import re
import sys
import tomllib
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired, Optional, TypedDict, Union

import pytest
from pydantic import BaseModel, Field

from jupyter_functionai.mcp.schema import describe_function

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
REQ = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")


def requirements() -> list[tuple[str, str]]:
    """(where, requirement) for the dependencies and every extra."""
    out = [("dependencies", r) for r in PROJECT["dependencies"]]
    for extra, reqs in PROJECT["optional-dependencies"].items():
        out += [(f"[{extra}]", r) for r in reqs]
    return out


def floor(spec: str) -> tuple[int, ...] | None:
    m = re.search(r">=\s*([0-9][0-9.]*)", spec)
    return tuple(int(p) for p in m.group(1).rstrip(".").split(".")) if m else None


def test_every_dependency_has_a_floor() -> None:
    missing = []
    for where, req in requirements():
        m = REQ.match(req)
        assert m, req
        name, _, spec = m.groups()
        if name.replace("_", "-").lower() == PROJECT["name"]:
            assert not spec, f"{where}: a self-reference names extras only: {req}"
            continue
        if floor(spec) is None:
            missing.append(f"{where}: {req}")
    assert not missing, f"requirements without a tested floor (>=): {missing}"


def test_a_package_named_twice_has_compatible_floors() -> None:
    """The [test] extra may raise a floor (the suite uses mcp 2's API) but never lower one."""
    core: dict[str, tuple[int, ...] | None] = {}
    for req in PROJECT["dependencies"]:
        m = REQ.match(req)
        assert m
        core[m.group(1).replace("_", "-").lower()] = floor(m.group(3))
    for where, req in requirements():
        m = REQ.match(req)
        assert m
        name = m.group(1).replace("_", "-").lower()
        if where != "dependencies" and name in core:
            low, here = core[name], floor(m.group(3))
            assert low is not None and here is not None and here >= low, f"{where}: {req} is below the core floor {low}"


def test_mcp_is_an_extra_not_a_core_dependency() -> None:
    names = [REQ.match(r).group(1).lower() for r in PROJECT["dependencies"]]  # type: ignore[union-attr]
    assert "mcp" not in names, "the server side needs no mcp; the client is the [mcp] extra"
    extras = PROJECT["optional-dependencies"]
    assert any(r.startswith("mcp") for r in extras["mcp"])
    for extra in ("lab", "test"):
        assert "jupyter-functionai[mcp]" in extras[extra]
    # mcp 1.x is accepted (langchain-mcp-adapters and fastmcp 2 need mcp<2)
    (spec,) = [r for r in extras["mcp"] if r.startswith("mcp")]
    assert floor(spec) is not None and floor(spec) < (2,), spec  # type: ignore[operator]


def test_requires_python_matches_ci_classifiers_and_tools() -> None:
    m = re.fullmatch(r">=\s*3\.(\d+)", PROJECT["requires-python"])
    assert m, PROJECT["requires-python"]
    minor = int(m.group(1))
    assert sys.version_info[:2] >= (3, minor), "this interpreter is below requires-python"
    versions = sorted(int(c.rsplit(".", 1)[1]) for c in PROJECT["classifiers"] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions and versions[0] == minor, f"the lowest Python classifier is 3.{versions[:1]}, requires-python says 3.{minor}"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py3{minor}"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == f"3.{minor}"
    # CI's interpreter (.ci/run makes its venv with python3) is one the project claims
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci
    assert f"3.{sys.version_info[1]}" in [f"3.{v}" for v in versions] or sys.version_info[1] > versions[-1]


def test_ci_deps_is_wired_into_ci() -> None:
    deps = ROOT / ".ci" / "deps"
    assert deps.exists() and deps.stat().st_mode & 0o111, ".ci/deps must exist and be executable"
    text = deps.read_text()
    assert "lowest-direct" in text and "langchain-mcp-adapters" in text and "fastmcp<3" in text
    assert ".ci/deps" in (ROOT / ".ci" / "run").read_text()


# -- tool schemas without mcp equal mcp 2's func_metadata ------------------------------------


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: float
    y: float = 0.0


class Tree(BaseModel):
    value: int
    children: list[Tree] = []


class Movie(TypedDict):
    title: str
    year: NotRequired[int]


@dataclasses.dataclass
class Box:
    w: int
    h: int = 1


class Plain:
    pass


def add(a: int, b: int = 2) -> int:
    """Add.

    Args:
        a: first
        b: second
    """
    return a + b


def untyped(x, y=3):  # type: ignore[no-untyped-def]
    return x


def optional(q: str | None = None, n: Optional[int] = None) -> str | None:  # noqa: UP045
    return q


def collections(xs: list[int], m: dict[str, float], t: tuple[int, str]) -> list[str]:
    return []


def annotated(n: Annotated[int, Field(ge=0, le=10, description="how many")] = 1) -> Annotated[float, Field(ge=0)]:
    return 0.0


def models(p: Point, color: Color = Color.RED, mode: Literal["a", "b"] = "a") -> Point:
    return p


def recursive(t: Tree) -> Tree:
    return t


def typed_dict(title: str) -> Movie:
    return {"title": title}


def dataclass_out(w: int) -> Box:
    return Box(w)


def mapping_out() -> dict[str, int]:
    return {}


def int_keys() -> dict[int, str]:
    return {}


def returns_none(x: int) -> None:
    return None


def no_return(x: int):  # type: ignore[no-untyped-def]
    return x


def plain_out() -> Plain:
    return Plain()


def union_out(x: int) -> Union[int, str]:  # noqa: UP007
    return x


def shadowing(json: str, copy: int = 0) -> str:
    return json


def with_ctx(item: str, ctx: Any) -> dict[str, Any]:
    return {}


def bytes_out(x: bytes) -> bytes:
    return x


CASES = [add, untyped, optional, collections, annotated, models, recursive, typed_dict, dataclass_out, mapping_out, int_keys,
         returns_none, no_return, plain_out, union_out, shadowing, with_ctx, bytes_out]


def test_schemas_without_mcp_are_the_sdks() -> None:
    """Our pydantic-only describe_function publishes what mcp 2's MCPServer would."""
    fm = pytest.importorskip("mcp.server.mcpserver.utilities.func_metadata", reason="needs mcp 2.x to compare with")
    differ = []
    for fn in CASES:
        ours = describe_function(fn)
        skip = ["ctx"] if ours["ctx_param"] else []
        meta = fm.func_metadata(fn, skip_names=skip)
        sdk_input = meta.arg_model.model_json_schema(by_alias=True)
        for pname, text in {"a": "first", "b": "second"}.items() if fn is add else ():
            sdk_input["properties"][pname].setdefault("description", text)
        if ours["input_schema"] != sdk_input:
            differ.append(f"{fn.__name__} input: {ours['input_schema']} != {sdk_input}")
        if ours["output_schema"] != meta.output_schema:
            differ.append(f"{fn.__name__} output: {ours['output_schema']} != {meta.output_schema}")
        if ours["wrap_output"] != bool(meta.wrap_output):
            differ.append(f"{fn.__name__} wrap_output: {ours['wrap_output']} != {meta.wrap_output}")
    assert not differ, "\n".join(differ)


def test_a_few_schemas_verbatim() -> None:
    """The same facts without mcp installed (runs in every environment)."""
    info = describe_function(add)
    assert info["input_schema"] == {
        "properties": {"a": {"title": "A", "type": "integer", "description": "first"}, "b": {"default": 2, "title": "B", "type": "integer", "description": "second"}},
        "required": ["a"],
        "title": "addArguments",
        "type": "object",
    }
    assert info["output_schema"] == {"properties": {"result": {"title": "Result", "type": "integer"}}, "required": ["result"], "title": "addOutput", "type": "object"}
    assert info["wrap_output"] is True and info["description"] == "Add."
    assert describe_function(untyped)["input_schema"]["properties"]["x"] == {"title": "x", "type": "string"}
    assert describe_function(no_return)["output_schema"] is None
    assert describe_function(plain_out)["output_schema"] is None
    assert describe_function(shadowing)["input_schema"]["required"] == ["json"]
    assert "ctx" not in describe_function(with_ctx)["input_schema"]["properties"]
    movie = describe_function(typed_dict)
    assert movie["wrap_output"] is False and movie["output_schema"]["required"] == ["title"]
    tree = describe_function(recursive)["output_schema"]
    assert tree["type"] == "object" and "$defs" in tree and "$ref" not in tree


def test_the_mcp_client_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from jupyter_functionai.mcp import client

    monkeypatch.setitem(sys.modules, "mcp", None)  # as if not installed

    async def go() -> None:
        async with client.open_session("http://127.0.0.1:9/mcp"):
            pass

    with pytest.raises(client.McpUnavailable, match=re.escape("pip install 'jupyter-functionai[mcp]'")):
        asyncio.run(go())
