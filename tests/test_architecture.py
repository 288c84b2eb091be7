"""The package's layers, checked from the source: arrows point one way
(server -> services -> runtime -> backends -> sandbox), the runtime builds no
service, nothing below server/ imports tornado, and the backend is chosen
through a traitlets ``Type`` on the ``Backend`` base."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jupyter_functionai
from jupyter_functionai.backends import backend_class
from jupyter_functionai.backends.base import Backend
from jupyter_functionai.backends.process import ProcessBackend
from jupyter_functionai.errors import InvalidArgument

PKG = Path(jupyter_functionai.__file__).parent

# layer -> packages of ours it must never import (directly or lazily)
FORBIDDEN = {
    "sandbox": {"runtime", "backends", "store", "server", "mcp", "runs", "stack", "client", "magics", "panels", "kernel", "gpu"},
    "backends": {"runtime", "server", "mcp", "runs", "stack", "client", "magics", "panels"},
    "store": {"runtime", "backends", "sandbox", "server", "mcp", "runs", "stack", "client"},
    "runtime": {"server", "mcp", "runs", "stack", "client", "magics", "panels", "kernel"},
    "mcp": {"server", "stack", "magics", "panels"},
    "runs": {"server", "stack", "magics", "panels", "mcp"},
    # GPU placement sits beside the sandbox, below the backends that use it
    "gpu": {"runtime", "backends", "store", "sandbox", "server", "mcp", "runs", "stack", "client", "magics", "panels", "kernel"},
}
THIRD_PARTY_ONLY_IN_SERVER = {"tornado"}


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1])  # a module's package (for __init__: the package itself)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _modules(layer: str) -> list[Path]:
    where = PKG / layer
    return sorted(where.rglob("*.py")) if where.is_dir() else [where.with_suffix(".py")]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_arrows_point_one_way(layer: str) -> None:
    bad = []
    for path in _modules(layer):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "jupyter_functionai" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(PKG)} imports {name}")
            if parts[0] in THIRD_PARTY_ONLY_IN_SERVER:
                bad.append(f"{path.relative_to(PKG)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_composition_root_builds_the_services() -> None:
    """Only stack.py builds McpManager, RunManager and Scheduler in the package."""
    builders = {}
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("McpManager", "RunManager", "Scheduler"):
                builders.setdefault(node.func.id, set()).add(str(path.relative_to(PKG)))
    assert builders == {"McpManager": {"stack.py"}, "RunManager": {"stack.py"}, "Scheduler": {"stack.py"}}


def test_backend_is_a_type_on_the_backend_base(tmp_path: Path) -> None:
    from traitlets import TraitError
    from traitlets.config import Config

    from jupyter_functionai.server.app import FunctionAI

    assert backend_class("process") is ProcessBackend
    assert backend_class("jupyter_functionai.backends.process.ProcessBackend") is ProcessBackend
    for bad in ("ray-nope", "os.path", "jupyter_functionai.errors.NotFound"):
        with pytest.raises(InvalidArgument) as ei:
            backend_class(bad)
        assert bad in str(ei.value)
    app = FunctionAI(config=Config({"FunctionAI": {"backend": "process"}}))
    assert app.backend is ProcessBackend and issubclass(app.backend, Backend)
    app = FunctionAI(config=Config({"FunctionAI": {"backend": "jupyter_functionai.backends.process.ProcessBackend"}}))
    assert app.backend is ProcessBackend
    with pytest.raises(TraitError):
        FunctionAI(config=Config({"FunctionAI": {"backend": "jupyter_functionai.errors.NotFound"}})).backend  # noqa: B018


def test_no_background_task_is_left_unreferenced() -> None:
    """``create_task``/``ensure_future`` results are kept (the event loop holds
    only weak references: a task nobody keeps can be collected mid-way)."""
    bad = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                func = node.value.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("create_task", "ensure_future"):
                    bad.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert not bad, bad


def test_docstrings_name_only_classes_that_exist() -> None:
    """A ``:class:`Name``` in a docstring (unqualified, or ours) names a class
    that exists: docstrings named classes that did not (a review found them)."""
    import builtins
    import re

    ours = {n.name for p in PKG.rglob("*.py") for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ClassDef)}
    known = ours | {n for n in dir(builtins) if n[:1].isupper()}
    bad = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for ref in re.findall(r":class:`[~.]?([A-Za-z0-9_.]+)`", ast.get_docstring(node) or ""):
                    name = ref.split(".")[-1]
                    external = "." in ref and not ref.startswith(("jupyter_functionai.", "."))
                    if not external and name not in known:
                        bad.append(f"{path.relative_to(PKG)}: {ref}")
    assert not bad, bad
