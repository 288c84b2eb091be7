"""IPython magics that promote notebook cells into functionai sandbox functions.

    %load_ext jupyter_functionai

    %%function adder --memory 256Mi --timeout 30
    def handler(event, ctx):
        return helper(event["x"]) + OFFSET

    adder.invoke({"x": 1})
    with adder.session() as s:
        s.invoke({"x": 2}); s.state

    %fai ls | sessions [NAME] | invoke NAME [--session ID] JSON | close ID | url NAME
    %fai panel [sessions|coldstarts|functions|tasks|tools] [NAME]  # live widget panels
    adder.panel()                                         # also under the %%function cell

``%%function NAME`` deploys the cell's code as a new version of the function
``NAME`` on a running functionai server and binds a :class:`FunctionHandle`
to the identifier version of ``NAME`` in the notebook's namespace.

**Carried names**: the names the cell uses but does not define are looked up
in the notebook's namespace.  Functions and classes defined in the notebook are
carried by their source, plain data (None, bool, int, float, str and lists,
tuples, dicts of those) by its ``repr``, modules as ``import`` statements.
Anything else (open files, sockets, clients, generators...) cannot travel to a
sandbox: the magic refuses to deploy and names the variable.  The carried code
is a preamble placed before the cell; line numbers of remote tracebacks are
shifted back so that they point at the cell's lines.

**Server** (:func:`jupyter_functionai.connect.connect`, at first use): the
Jupyter server that started the kernel (in JupyterLab with the extension, whose
kernels also load these magics by themselves), else ``FUNCTIONAI_URL`` /
``FUNCTIONAI_TOKEN`` or a running Jupyter server, else an embedded runtime
inside the kernel (:mod:`jupyter_functionai.embedded`).  The deploy message
says which.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import re
import shlex
import sys
import textwrap
import types
from html import escape as html_escape
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .api import FunctionAIClient, ServerClient, as_server
from .client import InvokeResponse, NoServer
from .connect import connect
from .errors import FunctionAIError, UserError

__all__ = ["FunctionAIMagics", "FunctionHandle", "SandboxError", "SessionHandle", "TaskHandle", "ToolHandle", "function", "load_ipython_extension", "tool"]

_PLAIN = (type(None), bool, int, float, str, list, dict, tuple)
_FRAME = re.compile(r'File "([^"]*)", line (\d+)')


class SandboxError(Exception):
    """An exception raised by the handler inside its sandbox; the message
    carries the remote traceback (line numbers are the cell's)."""

    def __init__(self, message: str, traceback_text: str = "", error: FunctionAIError | None = None) -> None:
        super().__init__(message)
        self.traceback_text = traceback_text
        self.error = error


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit():
        ident = "_" + ident
    return ident


def _module_file(name: str) -> str:
    return name.replace("-", "_") + ".py"


def _fix_traceback(text: str, module_file: str, offset: int) -> str:
    """Shift the line numbers of the frames in the function's module by ``-offset``."""

    def sub(m: re.Match[str]) -> str:
        path, line = m.group(1), int(m.group(2))
        if offset and (path == module_file or path.endswith("/" + module_file)):
            fixed = line - offset
            if fixed <= 0:
                return f'File "{path}", line {line} (code carried from the notebook)'
            return f'File "{path}", line {fixed}'
        return m.group(0)

    return _FRAME.sub(sub, text)


class _Carry:
    """The code deployed for a function: a preamble of carried names plus the cell."""

    def __init__(self, preamble: str, cell: str, names: list[str] | None = None) -> None:
        self.preamble = preamble
        self.cell = cell
        self.names = sorted(names or [])

    @property
    def offset(self) -> int:
        return len(self.preamble.splitlines())

    @property
    def code(self) -> str:
        return self.preamble + self.cell


def _bound_names(tree: ast.AST) -> set[str]:
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def free_names(code: str) -> list[str]:
    """Names ``code`` loads but does not bind itself (builtins excluded), in order of use."""
    tree = ast.parse(code)
    bound = _bound_names(tree)
    seen: dict[str, None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound and not hasattr(builtins, node.id):
            seen.setdefault(node.id, None)
    return list(seen)


def _is_plain(value: Any) -> bool:
    if not isinstance(value, _PLAIN):
        return False
    try:
        return bool(ast.literal_eval(repr(value)) == value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def _importable(value: Any) -> tuple[str, str] | None:
    """(module, name) when ``value`` is a top-level function, class or builtin
    of an importable module (not the notebook): it travels as an import."""
    if not isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return None
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", "")
    if not module or module == "__main__" or "." in qualname or "<" in qualname or module not in sys.modules:
        return None
    if getattr(sys.modules[module], qualname, None) is not value:
        return None
    return module, qualname


def _imported_from(value: Any, name: str) -> str | None:
    """``from MOD import X as NAME`` for a library function or class, else None."""
    found = _importable(value)
    if found is None:
        return None
    module, qualname = found
    alias = ast.alias(name=qualname, asname=None if qualname == name else name)
    return ast.unparse(ast.ImportFrom(module=module, names=[alias], level=0))


class _Expr:
    """A carried container rebuilt as an expression: the notebook names and
    the modules it needs."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.modules: set[str] = set()

    def of(self, value: Any, namespace: dict[str, Any], depth: int = 0) -> ast.expr | None:
        if depth > 20:
            return None
        if _is_plain(value):
            return ast.parse(repr(value), mode="eval").body
        ref = _importable(value)
        if ref is not None:
            self.modules.add(ref[0])
            return ast.parse(f"{ref[0]}.{ref[1]}", mode="eval").body
        if isinstance(value, (types.FunctionType, type)):
            name = getattr(value, "__name__", "")
            if namespace.get(name) is not value:
                return None
            self.names.append(name)
            return ast.Name(id=name, ctx=ast.Load())
        if isinstance(value, dict):
            keys = [self.of(k, namespace, depth + 1) for k in value]
            vals = [self.of(v, namespace, depth + 1) for v in value.values()]
            if any(k is None for k in keys) or any(v is None for v in vals):
                return None
            return ast.Dict(keys=list(keys), values=[v for v in vals if v is not None])
        if isinstance(value, (list, tuple)):
            elts = [self.of(v, namespace, depth + 1) for v in value]
            if any(e is None for e in elts):
                return None
            cls = ast.List if isinstance(value, list) else ast.Tuple
            return cls(elts=[e for e in elts if e is not None], ctx=ast.Load())
        return None


def build_carry(cell: str, namespace: dict[str, Any]) -> _Carry:
    """The code to deploy for ``cell``; raises UsageError for names that cannot travel."""
    code: dict[str, str] = {}  # carried name -> the statement(s) defining it
    needs: dict[str, list[str]] = {}  # carried name -> the carried names its definition uses
    bad: list[str] = []
    sources = [cell]
    modules: dict[str, str] = {}
    todo = [n for n in free_names(cell) if n in namespace]
    while todo:
        name = todo.pop(0)
        if name in code or name in {b.split(" ", 1)[0] for b in bad}:
            continue
        value = namespace[name]
        deps: list[str] = []
        if isinstance(value, types.ModuleType):
            module = value.__name__
            modules[name] = module
            alias = ast.alias(name=module, asname=None if module == name else name)
            code[name] = ast.unparse(ast.Import(names=[alias]))
        elif isinstance(value, (types.FunctionType, type)) and (imported := _imported_from(value, name)):
            code[name] = imported
        elif isinstance(value, (types.FunctionType, type)):
            try:
                src = inspect.getsource(value)
            except (OSError, TypeError):
                bad.append(f"{name} ({type(value).__name__}: its source is not available)")
                continue
            src = textwrap.dedent(src)
            try:
                tree = ast.parse(src)
            except SyntaxError:
                bad.append(f"{name} ({type(value).__name__}: its source cannot be parsed)")
                continue
            defined = tree.body[0] if tree.body else None
            if not isinstance(defined, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or defined.name != name:
                bad.append(f"{name} ({type(value).__name__} defined under another name or by an expression: use a def)")
                continue
            code[name] = src.rstrip("\n")
            sources.append(src)
            deps = [n for n in free_names(src) if n in namespace]  # what the definition needs in turn
        elif _is_plain(value):
            # the repr round-trips through ast.literal_eval: a literal, not user text in quotes
            code[name] = f"{name} = {value!r}"
        elif (expr := (built := _Expr()).of(value, namespace)) is not None:
            imports = "".join(f"import {m}\n" for m in sorted(built.modules))
            code[name] = imports + ast.unparse(ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=expr, lineno=1))
            deps = built.names
        else:
            bad.append(f"{name} ({type(value).__module__}.{type(value).__qualname__})")
            continue
        needs[name] = deps
        todo.extend(deps)
    if bad:
        raise UsageError(
            "cannot carry these notebook variables into the sandbox (only functions, classes, modules and plain data can travel): "
            + ", ".join(bad)
            + "; create them inside the cell instead"
        )
    # what a definition uses is defined before it (class bases, decorators,
    # containers of functions); cycles between functions are harmless
    ordered: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name):
            return
        state[name] = 1
        for dep in needs.get(name, []):
            visit(dep)
        ordered.append(name)

    for name in code:
        visit(name)
    lines = [code[n] for n in ordered]
    # `import urllib.request` binds `urllib`: import the submodules the code uses too
    text = "\n".join(sources)
    for name, module in modules.items():
        for sub in sorted(set(re.findall(rf"\b{re.escape(name)}\.(\w+)", text))):
            if f"{module}.{sub}" in sys.modules:
                lines.insert(0, f"import {module}.{sub}")
    preamble = "\n".join(lines)
    return _Carry(preamble + "\n" if preamble else "", cell, sorted(code))


def _def_source(fn: Any) -> tuple[str, int, int]:
    """A notebook function's source from its ``def`` line (decorators left
    out), the first line of its source, and the ``def``'s line within it."""
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        raise UsageError(f"the source of {fn.__name__!r} is not available (define it in a notebook cell or a file)") from None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    node = tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise UsageError(f"{fn.__name__!r} is not defined by a def statement")
    def_line = node.lineno  # 1-based within the source, after the decorators
    source = "".join(lines[def_line - 1 :])
    if source.startswith((" ", "\t")):
        raise UsageError(f"{fn.__name__!r} is nested inside another block: define it at the top level of a cell")
    return source, first, def_line


def _namespace_of(fn: Any) -> dict[str, Any]:
    """The names a decorated function may carry: its module's (the notebook's), but itself."""
    return {k: v for k, v in fn.__globals__.items() if k != fn.__name__}


def function(name: Any = None, *, client: FunctionAIClient | None = None, **spec: Any) -> Any:
    """``@jupyter_functionai.function(...)``: deploy a notebook function as a sandbox function.

    ::

        @jupyter_functionai.function(memory="256Mi", timeout=30)
        def doubler(event, ctx):
            return helper(event) * 2

        doubler.invoke(3)      # a FunctionHandle, as %%function leaves

    The function is sent by value (its source, from its ``def`` line: the
    decorator is not), with the notebook names it uses carried like
    ``%%function`` carries them. ``name`` defaults to the function's name;
    ``spec`` takes the FunctionSpec keywords (memory, cpu, gpu, timeout,
    min_instances, max_instances, target_concurrency, cooldown, idle_ttl,
    network, session=False, ...).
    """
    if callable(name):
        raise TypeError(
            "@jupyter_functionai.function needs parentheses: write @jupyter_functionai.function() "
            "or @jupyter_functionai.function(memory='256Mi', ...)"
        )
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string, not {type(name).__name__}")

    def deploy(fn: Any) -> FunctionHandle:
        if not isinstance(fn, types.FunctionType):
            raise TypeError(f"@jupyter_functionai.function decorates a function, not {type(fn).__name__}")
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(params) < 2:
            raise TypeError(f"{fn.__name__}{inspect.signature(fn)}: a handler takes (event, ctx)")
        source, first, def_line = _def_source(fn)
        carry = build_carry(source, _namespace_of(fn))
        target = name or fn.__name__
        fai = client or connect()
        try:
            fai.deploy(target, carry.code, handler=fn.__name__, **spec)
        except NoServer as exc:
            raise UsageError(str(exc)) from None
        # remote line numbers -> the notebook cell's: the def sits at line (first + def_line - 1)
        return FunctionHandle(target, fai, offset=carry.offset - (first + def_line - 2))

    return deploy


def tool(server: Any = None, *, name: str | None = None, description: str | None = None, client: FunctionAIClient | None = None, **spec: Any) -> Any:
    """``@jupyter_functionai.tool("SERVER")``: publish a notebook function as a
    tool of the hosted MCP server ``SERVER`` (created on first use)::

        @jupyter_functionai.tool("math")
        def add(a: int, b: int = 1) -> int:
            '''Add two numbers.

            Args:
                a: the first number
                b: the second number
            '''
            return a + b

        add.url          # http://.../functionai/mcp/math/mcp (MCP over streamable HTTP)
        add(2, 3)        # still the local function

    The input schema comes from the type hints (as ``MCPServer.tool()`` makes
    it) and the docstring (parameter descriptions), the output schema from the
    return type (structured output). The function travels by value with the
    notebook names it uses, like ``@function``. A parameter named ``ctx``
    receives the sandbox context (``ctx.session.state`` is shared by the tool
    calls of one MCP session). ``name`` / ``description`` override the
    function's; ``spec`` takes FunctionSpec keywords for the server's sandboxes
    (memory, timeout, network, env, ...).
    """
    if callable(server):
        raise TypeError(
            "@jupyter_functionai.tool needs the MCP server's name: write @jupyter_functionai.tool('SERVER')"
        )
    if not isinstance(server, str):
        raise TypeError(f"the MCP server's name must be a string, not {type(server).__name__}")

    def publish(fn: Any) -> ToolHandle:
        if not isinstance(fn, types.FunctionType):
            raise TypeError(f"@jupyter_functionai.tool decorates a function, not {type(fn).__name__}")
        source, _, _ = _def_source(fn)
        return _publish(server, fn, build_carry(source, _namespace_of(fn)), name, description, client, spec)

    return publish


def _publish(server: str, fn: Any, carry: _Carry, name: str | None, description: str | None, client: FunctionAIClient | None, spec: dict[str, Any]) -> ToolHandle:
    from .mcp.schema import describe_function

    try:
        info = describe_function(fn, name=name, description=description)
    except FunctionAIError as exc:
        raise UsageError(str(exc)) from None
    row = {**info, "code": carry.code, "handler": fn.__name__}
    fai = as_server(client or connect())
    if fai is None:  # the embedded runtime has no HTTP endpoint to serve MCP on
        raise UsageError(
            "publishing MCP tools needs a functionai server (its endpoint is served over HTTP): run in JupyterLab "
            "with the extension, or start one with `functionai serve` and set FUNCTIONAI_URL / FUNCTIONAI_TOKEN"
        )
    try:
        fai.mcp_publish_tool(server, row, spec or None)
    except NoServer as exc:
        raise UsageError(str(exc)) from None
    return ToolHandle(server, info["name"], fai, fn)


class ToolHandle:
    """A published tool: ``.url`` is its MCP server's endpoint; calling it runs
    the local function."""

    def __init__(self, server: str, name: str, client: ServerClient, fn: Any) -> None:
        self.server = server
        self.name = name
        self.client = client
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<ToolHandle {self.name!r} on MCP server {self.server!r} at {self.url}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def url(self) -> str:
        return str(self.client.mcp_url(self.server))

    def describe(self) -> dict[str, Any]:
        """The server's description: its tools with their schemas, its sessions."""
        return dict(self.client.mcp_server(self.server))

    def remove(self) -> None:
        """Unpublish this tool."""
        self.client.mcp_remove_tool(self.server, self.name)


# -- handles ------------------------------------------------------------------------------------


class FunctionHandle:
    """A deployed function: call it, open sessions, inspect it."""

    def __init__(self, name: str, client: FunctionAIClient, *, offset: int = 0) -> None:
        self.name = name
        self.client = client
        self.offset = offset  # lines of carried code before the cell
        self.last: InvokeResponse | None = None

    def __repr__(self) -> str:
        return f"<FunctionHandle {self.name!r} at {self.url}>"

    @property
    def url(self) -> str:
        return self.client.url.rstrip("/") + "/functionai/invoke/" + self.name

    def _call(self, data: Any, session: str | None) -> Any:
        try:
            resp = self.client.invoke(self.name, data, session=session)
        except UserError as exc:
            raise _sandbox_error(self.name, exc, self.offset) from None
        self.last = resp
        return resp.value

    def invoke(self, data: Any = None, session: str | None = None) -> Any:
        """Call the function with the event ``data``; returns its value (the response is in ``.last``)."""
        return self._call(data, session)

    __call__ = invoke

    def submit(self, data: Any = None, session: str | None = None, *, timeout: float | None = None, retries: int | None = None) -> TaskHandle:
        """Enqueue a durable task (it runs in the background, survives a
        server restart); returns a :class:`TaskHandle` at once."""
        row = self.client.submit(self.name, data, session=session, timeout=timeout, retries=retries)
        return TaskHandle(self, row)

    def session(self, session_id: str | None = None) -> SessionHandle:
        """Open a session of this function now (its sandbox starts at once; a new
        id unless ``session_id`` is given; an existing one is resumed)."""
        desc = self.client.open_session(self.name, session_id)
        return SessionHandle(self, str(desc["id"]))

    def sessions(self) -> list[dict[str, Any]]:
        return self.client.sessions(function=self.name)

    def coldstarts(self) -> list[dict[str, Any]]:
        return self.client.coldstarts(function=self.name)

    def versions(self) -> list[dict[str, Any]]:
        return self.client.versions(self.name)

    def rollback(self, version: int) -> dict[str, Any]:
        return self.client.rollback(self.name, version)

    def panel(self, kind: str = "all", session: str | None = None) -> Any:
        """A live panel of this function (ipywidgets): ``"all"`` (tabs),
        ``"functions"``, ``"sessions"`` or ``"coldstarts"``; see :mod:`jupyter_functionai.panels`."""
        from .panels import panel

        return panel(kind, self.client, function=self.name, session=session)


class TaskHandle:
    """A durable task of a function: ``.state``, ``.result()``, ``.cancel()``."""

    def __init__(self, function: FunctionHandle, row: dict[str, Any]) -> None:
        self.function = function
        self.id: str = row["id"]
        self._row = row

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id} of {self.function.name!r}: {self._row.get('state')}>"

    def refresh(self) -> dict[str, Any]:
        self._row = self.function.client.task(self.id)
        return self._row

    @property
    def state(self) -> str:
        return str(self.refresh()["state"])

    @property
    def progress(self) -> Any:
        return self.refresh().get("progress")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the task; its result, or a SandboxError / RuntimeError
        saying how it ended."""
        self._row = self.function.client.wait_task(self.id, timeout=timeout)
        state = self._row["state"]
        if state == "succeeded":
            return self._row.get("result")
        if state in ("queued", "running"):
            raise TimeoutError(f"task {self.id} is still {state} after {timeout} s")
        err = self._row.get("error") or {}
        tb = (err.get("details") or {}).get("traceback", "")
        text = _fix_traceback(tb, _module_file(self.function.name), self.function.offset) if tb else ""
        raise SandboxError(f"task {self.id} {state} after {self._row.get('attempts')} attempt(s): {err.get('message', state)}" + (f"\n{text}" if text else ""), text)

    def cancel(self) -> dict[str, Any]:
        self._row = self.function.client.cancel_task(self.id)
        return self._row


class SessionHandle:
    """One session of a function; a context manager that closes it on exit."""

    def __init__(self, function: FunctionHandle, session_id: str) -> None:
        self.function = function
        self.id = session_id
        self.closed = False

    def __repr__(self) -> str:
        return f"<SessionHandle {self.id!r} of {self.function.name!r}{' (closed)' if self.closed else ''}>"

    def invoke(self, data: Any = None) -> Any:
        return self.function._call(data, self.id)

    __call__ = invoke

    @property
    def state(self) -> Any:
        return self.function.client.session(self.id).get("state")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.function.client.close_session(self.id)

    def __enter__(self) -> SessionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sandbox_error(name: str, exc: UserError, offset: int) -> SandboxError:
    tb = exc.details.get("traceback") or ""
    tb = _fix_traceback(str(tb), _module_file(name), offset)
    message = f"function {name!r} raised in its sandbox: {exc.message}"
    if tb:
        message += "\n\nRemote traceback:\n" + tb.rstrip("\n")
    return SandboxError(message, tb, exc)


# -- the magics ---------------------------------------------------------------------------------


FAI_USAGE = """usage: %fai ls | sessions [NAME] | invoke NAME [--session ID] JSON | close ID | url NAME
       %fai run NOTEBOOK [-p NAME VALUE ...] [--html] [--tag T] [--timeout S] [--no-wait]   (NOTEBOOK: a path under the server's root)
       %fai panel [sessions|coldstarts|functions|tasks|tools|runs|usage|all] [NAME]"""


@magics_class
class FunctionAIMagics(Magics):
    """``%%function``, ``%%tool`` and ``%fai``."""

    def __init__(self, shell: Any = None, client: FunctionAIClient | None = None) -> None:
        super().__init__(shell)
        self._client = client

    @property
    def client(self) -> FunctionAIClient:
        if self._client is None:
            self._client = connect()
        return self._client

    def _server_url(self) -> str:
        try:
            return self.client.url
        except NoServer as exc:
            raise UsageError(str(exc)) from None

    @magic_arguments()
    @argument("name", help="the function's name")
    @argument("--gpu", type=float, default=None, help="GPUs (fraction allowed)")
    @argument("--gpu-memory", default=None, help="GPU memory of one card, whole GiB, e.g. 4GiB (instead of --gpu)")
    @argument("--cpu", type=float, default=None, help="CPUs")
    @argument("--memory", default=None, help="memory, e.g. 512Mi")
    @argument("--timeout", type=float, default=None, help="seconds per call")
    @argument("--min-instances", type=int, default=None, help="warm instances to keep")
    @argument("--max-instances", type=int, default=None, help="at most this many sessionless calls at once (the rest queue); the warm pool scales with the load up to it")
    @argument("--target-concurrency", type=int, default=None, help="sessionless calls per warm instance the autoscaler aims at (default 1)")
    @argument("--cooldown", type=float, default=None, help="seconds the load stays lower before the pool shrinks (default 60)")
    @argument("--idle-ttl", type=float, default=None, help="seconds before an idle session ends")
    @argument("--no-session", action="store_true", help="disable sessions")
    @argument("--network", default=None, help="network policy")
    @argument("--env", action="append", default=[], metavar="KEY=VALUE", help="an environment variable of the function (repeatable)")
    @argument("--handler", default="handler", help="the handler's name in the cell (default: handler)")
    @cell_magic
    def function(self, line: str, cell: str) -> None:
        """Deploy the cell as a new version of the function NAME and bind a handle to it."""
        args = parse_argstring(self.function, line)
        name: str = args.name
        try:
            tree = ast.parse(cell)
        except SyntaxError as exc:
            raise UsageError(f"the cell does not compile: {exc.msg} (cell line {exc.lineno}); nothing was deployed") from None
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        if args.handler not in defined | assigned:
            raise UsageError(f"the cell defines no handler: add `def {args.handler}(event, ctx): ...` (or name another with --handler); nothing was deployed")
        carry = build_carry(cell, self.shell.user_ns if self.shell is not None else {})
        fields: dict[str, Any] = {}
        for key in ("gpu", "gpu_memory", "cpu", "memory", "timeout", "min_instances", "max_instances", "target_concurrency", "cooldown", "idle_ttl", "network"):
            value = getattr(args, key)
            if value is not None:
                fields[key] = value
        if args.no_session:
            fields["session"] = False
        if args.env:
            pairs = [item.partition("=") for item in args.env]
            bad = [item for item, (_, eq, _) in zip(args.env, pairs, strict=True) if not eq]
            if bad:
                raise UsageError(f"--env takes KEY=VALUE, not {bad[0]!r}; nothing was deployed")
            fields["env"] = {key: value for key, _, value in pairs}
        url = self._server_url()
        try:
            row = self.client.deploy(name, carry.code, handler=args.handler, **fields)
        except NoServer as exc:
            raise UsageError(str(exc)) from None
        except FunctionAIError as exc:
            raise UsageError(f"deploy of {name!r} failed ({exc.kind}): {exc.message}") from None
        handle = FunctionHandle(name, self.client, offset=carry.offset)
        ident = _identifier(name)
        if self.shell is not None:
            self.shell.user_ns[ident] = handle
        carried = f" (carried from the notebook: {', '.join(carry.names)})" if carry.names else ""
        where = getattr(self.client, "source", "") or url
        print(f"deployed {name} version {row.get('version')} to {where}; handle: {ident}{carried}")
        if getattr(self.shell, "kernel", None) is not None:  # a notebook: the function's live panel
            self._display_panel(lambda: handle.panel())

    @magic_arguments()
    @argument("server", help="the MCP server to publish on (created on first use)")
    @argument("--name", default=None, help="the tool's name (default: the function's)")
    @argument("--description", default=None, help="the tool's description (default: the docstring's summary)")
    @argument("--function", dest="fn", default=None, help="which function of the cell is the tool (default: the only public one)")
    @cell_magic
    def tool(self, line: str, cell: str) -> None:
        """Run the cell, then publish the function it defines as a tool of the MCP server SERVER."""
        args = parse_argstring(self.tool, line)
        try:
            tree = ast.parse(cell)
        except SyntaxError as exc:
            raise UsageError(f"the cell does not compile: {exc.msg} (cell line {exc.lineno}); nothing was published") from None
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if args.fn is not None:
            if args.fn not in defined:
                raise UsageError(f"the cell defines no function {args.fn!r} (it defines: {', '.join(defined) or 'none'}); nothing was published")
            target = args.fn
        else:
            public = [n for n in defined if not n.startswith("_")]
            if len(public) != 1:
                raise UsageError(
                    f"the cell must define exactly one public function to publish (it defines: {', '.join(defined) or 'none'}): "
                    "name it with --function; nothing was published"
                )
            target = public[0]
        ns = self.shell.user_ns if self.shell is not None else {}
        exec(compile(cell, "<%%tool cell>", "exec"), ns)  # the function exists in the notebook too
        fn = ns.get(target)
        if not isinstance(fn, types.FunctionType):
            raise UsageError(f"{target!r} is not a function after running the cell; nothing was published")
        carry = build_carry(cell, {k: v for k, v in ns.items() if k not in defined})
        self._server_url()
        handle = _publish(args.server, fn, carry, args.name, args.description, self.client, {})
        ns[target] = handle
        carried = f" (carried from the notebook: {', '.join(carry.names)})" if carry.names else ""
        print(f"published tool {handle.name} on MCP server {args.server}: {handle.url}{carried}")

    @line_magic
    def fai(self, line: str) -> Any:
        """%fai ls | sessions [NAME] | invoke NAME [--session ID] JSON | close ID | url NAME | run NOTEBOOK [-p NAME VALUE ...] | panel [KIND] [NAME]"""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"{exc}\n{FAI_USAGE}") from None
        if not words:
            raise UsageError(FAI_USAGE)
        cmd, rest = words[0], words[1:]
        try:
            if cmd == "ls" and not rest:
                self._ls()
            elif cmd == "sessions" and len(rest) <= 1:
                self._sessions(rest[0] if rest else None)
            elif cmd == "invoke" and rest:
                self._invoke(rest)
            elif cmd == "close" and len(rest) == 1:
                self.client.close_session(rest[0])
                print(f"closed session {rest[0]}")
            elif cmd == "url" and len(rest) == 1:
                print(FunctionHandle(rest[0], self.client).url)
            elif cmd == "panel" and len(rest) <= 2:
                self._panel(rest, line)
            elif cmd == "run" and rest:
                return self._run(rest)
            else:
                raise UsageError(f"unknown or malformed %fai command: {line.strip()!r}\n{FAI_USAGE}")
        except NoServer as exc:
            raise UsageError(str(exc)) from None
        except UserError as exc:
            raise _sandbox_error(rest[0] if rest else "?", exc, 0) from None
        except FunctionAIError as exc:
            raise UsageError(f"%fai {cmd} failed ({exc.kind}): {exc.message}") from None

    @staticmethod
    def _display_panel(make: Any) -> None:
        from IPython.display import display

        try:
            display(make())
        except ImportError as exc:  # ipywidgets missing: the rest of the magic worked
            print(f"(no panel: {exc})")

    def _panel(self, rest: list[str], line: str) -> None:
        """%fai panel [sessions|coldstarts|functions|tasks|tools|all] [NAME]: a live panel (all: the panels in tabs;
        for tools, NAME is an MCP server)."""
        from .panels import KINDS, panel

        kind, names = (rest[0], rest[1:]) if rest and rest[0].lower() in KINDS else ("all", rest)
        if len(names) > 1:
            raise UsageError(f"unknown panel {rest[0]!r} in {line.strip()!r}: use sessions, coldstarts, functions, tasks, runs, tools, usage or all\n{FAI_USAGE}")
        self._display_panel(lambda: panel(kind, self.client, function=names[0] if names else None))

    def _run(self, rest: list[str]) -> Any:
        """%fai run NOTEBOOK [-p NAME VALUE ...]: a papermill Run in a sandbox; waits
        for it (unless --no-wait) and returns the run (a dict), its outputs as links."""
        import argparse

        ap = argparse.ArgumentParser(prog="%fai run", add_help=False, exit_on_error=False)
        ap.add_argument("notebook")
        ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[])
        ap.add_argument("--html", action="store_true")
        ap.add_argument("--tag", action="append")
        ap.add_argument("--timeout", type=float)
        ap.add_argument("--kernel")
        ap.add_argument("--no-wait", action="store_true")
        try:
            args, extra = ap.parse_known_args(rest)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise UsageError(f"{exc}\n{FAI_USAGE}") from None
        if extra:
            raise UsageError(f"unknown %fai run option(s): {' '.join(extra)}\n{FAI_USAGE}")
        params: dict[str, Any] = {}
        for name, value in args.parameter:
            try:
                params[name] = json.loads(value)
            except ValueError:
                params[name] = value
        server = as_server(self.client)
        if server is None:  # the embedded runtime runs no notebooks
            raise UsageError(
                "%fai run needs a functionai server: run in JupyterLab with the extension, "
                "or start one with `functionai serve` and set FUNCTIONAI_URL / FUNCTIONAI_TOKEN"
            )
        run = server.start_run(
            args.notebook, params, timeout=args.timeout, output_formats=["ipynb", "html"] if args.html else None, tags=args.tag, kernel=args.kernel,
        )
        if args.no_wait:
            print(f"started run {run['id']} of {args.notebook}")
            return run
        run = server.wait_run(run["id"])
        took = f" in {run['duration_s']:.1f} s" if run.get("duration_s") is not None else ""
        print(f"run {run['id']} of {args.notebook}: {run['state']}{took}")
        self._show_outputs(run)
        err = run.get("error") or {}
        if err:
            print(f"{err.get('kind')}: {err.get('message')}")
        return run

    def _show_outputs(self, run: dict[str, Any]) -> None:
        outputs = run.get("outputs") or {}
        if not outputs:
            return
        from IPython.display import HTML, display

        base = self.client.url.rstrip("/")
        links = []
        for fmt, path in sorted(outputs.items()):
            href = f"{base}/lab/tree/{path}" if fmt == "ipynb" else f"{base}/files/{path}"
            links.append((fmt, path, href))
        if self.shell is not None:
            display(HTML(" · ".join(f'<a href="{html_escape(h)}" target="_blank">{fmt}: {html_escape(p)}</a>' for fmt, p, h in links)))
        else:
            for fmt, path, _ in links:
                print(f"  {fmt}: {path}")

    def _ls(self) -> None:
        rows = self.client.functions()
        print(f"{'NAME':<24} {'ACTIVE':>6} {'LATEST':>6}")
        for f in rows:
            print(f"{f.get('name', ''):<24} {f.get('active_version', '')!s:>6} {f.get('latest_version', '')!s:>6}")

    def _sessions(self, name: str | None) -> None:
        rows = self.client.sessions(function=name)
        print(f"{'SESSION':<28} {'FUNCTION':<20} {'STATUS':<8}")
        for s in rows:
            print(f"{s.get('id', ''):<28} {s.get('function', ''):<20} {s.get('status', ''):<8}")

    def _invoke(self, rest: list[str]) -> None:
        name, session, payload = rest[0], None, None
        args = rest[1:]
        if len(args) >= 2 and args[0] == "--session":
            session, args = args[1], args[2:]
        if len(args) > 1:
            raise UsageError(FAI_USAGE)
        if args:
            try:
                payload = json.loads(args[0])
            except ValueError as exc:
                raise UsageError(f"the event is not JSON: {exc}") from None
        resp = self.client.invoke(name, payload, session=session)
        print(json.dumps(resp.value, indent=2, default=str))
        if resp.session_id:
            print(f"(session {resp.session_id})")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_functionai``: register ``%%function`` and ``%fai``."""
    ipython.register_magics(FunctionAIMagics(ipython))
