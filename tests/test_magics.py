"""The ``%%function`` / ``%fai`` magics in a real IPython kernel (nbclient)
against a real ``functionai serve`` subprocess: no mocks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_functionai.client import Client
from jupyter_functionai.magics import _fix_traceback, build_carry, free_names

from .test_cli_server import Server, base_env, start_server, stop_server

CELLS: dict[str, str] = {
    "load": "%load_ext jupyter_functionai",
    "defs": "import json as js\n\ndef helper(x):\n    return x * FACTOR\n\nFACTOR = 10\nOFFSET = 3",
    "deploy": (
        "%%function adder --timeout 30 --memory 256Mi\n"
        "def handler(event, ctx):\n"
        "    n = ctx.session.state.get('n', 0) + 1\n"
        "    ctx.session.state['n'] = n\n"
        "    return {'sum': helper(event['x']) + OFFSET, 'n': n, 'dumped': js.dumps(1)}"
    ),
    "invoke": "adder.invoke({'x': 1})['sum']",
    "submit": "t = adder.submit({'x': 2}, session='tasks')\nprint('task', t.result(60)['sum'], t.state, t.id.startswith('t-'))",
    "session": (
        "with adder.session() as s:\n"
        "    before = s.state\n"
        "    a = s.invoke({'x': 1})\n"
        "    b = s.invoke({'x': 2})\n"
        "    st = s.state\n"
        "print('before', before, 'first', a['n'], 'second', b['n'], 'state', st, 'id', s.id)"
    ),
    "other": "with adder.session() as t:\n    c = t.invoke({'x': 5})\nprint('other', c['n'], c['sum'], t.id != s.id)",
    "repr": "adder",
    "ls": "%fai ls",
    "url": "%fai url adder",
    "fai_invoke": "%fai invoke adder '{\"x\": 2}'",
    "boom_deploy": "%%function boom\ndef handler(event, ctx):\n    x = OFFSET\n    raise ValueError('bad value ' + str(x))",
    "boom_call": "boom.invoke()",
    "open_file": "fh = open('data.txt', 'w')",
    "leaky": "%%function leaky\ndef handler(event, ctx):\n    return fh.name",
    "nohandler": "%%function nohandler\ndef main(event, ctx):\n    return 1",
    "syntax": "%%function syn\ndef handler(event, ctx):\n    return (",
    "bad_fai": "%fai frobnicate",
    "badflag": "%%function badflag --bogus 1\ndef handler(event, ctx):\n    return 1",
    "badsize": "%%function badsize --memory lots\ndef handler(event, ctx):\n    return 1",
    "badgpu": "%%function badgpu --gpu half\ndef handler(event, ctx):\n    return 1",
    "redeploy": "%%function adder --no-session\ndef handler(event, ctx):\n    return 'v2'",
    "versions": "print(adder.invoke(), [v['version'] for v in adder.versions()])\nadder.rollback(1)\nprint(adder.invoke({'x': 0})['sum'], len(adder.coldstarts()) >= 1)",
    "deco": (
        "import jupyter_functionai as fai\n"
        "@fai.function(memory='128Mi', timeout=30)\n"
        "def doubler(event, ctx):\n"
        "    return helper(event) * 2 + OFFSET\n"
        "print('doubled', doubler.invoke(4), doubler.name)"
    ),
    "deco_noparens": "@fai.function\ndef nope(event, ctx):\n    return 1",
    "deco_boom": "@fai.function()\ndef breaker(event, ctx):\n    a = 1\n    raise KeyError('nope ' + str(a))\n",
    "deco_boom_call": "breaker.invoke()",
    "fai_run": "r = %fai run reports/report.ipynb -p x 5 --html --tag magic\nprint('returned', r['state'], r['parameters'])",
    "fai_run_missing": "%fai run reports/missing.ipynb",
    "fai_run_badopt": "%fai run reports/report.ipynb --frobnicate",
}


def text(cell: Any) -> str:
    """A cell's outputs as text. Stream chunks are joined as they are: one
    ``print`` can arrive as several stream messages (the kernel flushes on a
    timer), and a newline put between them would split the line."""
    out = ""
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out += o["text"]
            continue
        if o["output_type"] == "error":
            piece = f"{o['ename']}: {o['evalue']}\n" + "\n".join(o["traceback"])
        elif o["output_type"] in ("execute_result", "display_data"):
            piece = o["data"].get("text/plain", "")
        else:
            continue
        out += ("\n" if out and not out.endswith("\n") else "") + piece + "\n"
    return out


def errors(cell: Any) -> list[str]:
    return [o["ename"] for o in cell.get("outputs", []) if o["output_type"] == "error"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("magics")
    srv = start_server(root / "home", root / "data")
    try:
        kernel_home = root / "kernel"
        work = root / "nb"
        work.mkdir()
        from .test_runs import notebook

        notebook(root / "home" / "reports" / "report.ipynb", "print('report for', x)")  # under the server's root (its cwd)
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith(("FUNCTIONAI_", "JUPYTER_"))]:
                mp.delenv(key)
            env = base_env(kernel_home)
            for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
                mp.setenv(var, env[var])
            mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
            mp.setenv("FUNCTIONAI_URL", srv.url)
            mp.setenv("FUNCTIONAI_TOKEN", srv.token)
            nb = nbformat.v4.new_notebook()
            nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS.values()]
            NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True, resources={"metadata": {"path": str(work)}}).execute()
        yield srv, dict(zip(CELLS, nb.cells, strict=True))
    finally:
        stop_server(srv)


def test_deploy_carries_notebook_names_and_invokes(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    assert not errors(cells["load"]) and not errors(cells["defs"])
    out = text(cells["deploy"])
    assert not errors(cells["deploy"]), out
    assert f"deployed adder version 1 to FUNCTIONAI_URL ({srv.url}/)" in out and "handle: adder" in out
    # carried names are listed, FACTOR too (needed by helper, not by the cell)
    assert "(carried from the notebook: FACTOR, OFFSET, helper, js)" in out, out
    assert text(cells["invoke"]).strip() == "13"
    assert text(cells["submit"]).strip() == "task 23 succeeded True", text(cells["submit"])  # a durable task
    assert text(cells["repr"]).strip() == f"<FunctionHandle 'adder' at {srv.url}/functionai/invoke/adder>"
    with Client(srv.url, srv.token) as client:
        assert {f["name"]: f["active_version"] for f in client.functions()}["adder"] == 1
        code = client.versions("adder")[0]["spec"]["source"]["code"]
        assert "def helper(x):" in code and "FACTOR = 10" in code and "OFFSET = 3" in code and "import json as js" in code


def test_sessions_keep_state_and_are_isolated(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    out = text(cells["session"])
    assert not errors(cells["session"]), out
    assert "before {} first 1 second 2 state {'n': 2}" in out, out  # opened before any call
    session_id = out.rsplit("id ", 1)[1].strip()
    other = text(cells["other"])
    assert other.strip() == "other 1 53 True", other
    with Client(srv.url, srv.token) as client:
        assert client.session(session_id)["status"] == "closed"


def test_fai_line_magic(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    ls = text(cells["ls"]).splitlines()
    assert ls[0].split() == ["NAME", "ACTIVE", "LATEST"]
    assert ["adder", "1", "1"] in [line.split() for line in ls[1:]]
    assert text(cells["url"]).strip() == f"{srv.url}/functionai/invoke/adder"
    out = text(cells["fai_invoke"])
    assert '"sum": 23' in out and "(session " in out
    bad = text(cells["bad_fai"])
    assert "UsageError" in bad and "usage: %fai ls" in bad and "frobnicate" in bad


def test_fai_run_runs_a_notebook_in_a_sandbox(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    out = text(cells["fai_run"])
    assert not errors(cells["fai_run"]), out
    assert "of reports/report.ipynb: succeeded in " in out and "returned succeeded {'x': 5}" in out, out
    links = [o["data"]["text/html"] for o in cells["fai_run"]["outputs"] if o["output_type"] == "display_data"]
    assert links and f'href="{srv.url}/lab/tree/functionai-runs/' in links[0] and f'href="{srv.url}/files/functionai-runs/' in links[0], links
    with Client(srv.url, srv.token) as client:
        made = client.runs(tag="magic")
        assert len(made) == 1 and made[0]["state"] == "succeeded" and set(made[0]["outputs"]) == {"ipynb", "html"}
        assert "report for 5" in client.run_output(made[0]["id"], "html").decode()
    missing = text(cells["fai_run_missing"])
    assert "UsageError" in missing and "not_found" in missing and "reports/missing.ipynb" in missing, missing
    badopt = text(cells["fai_run_badopt"])
    assert "UsageError" in badopt and "--frobnicate" in badopt, badopt


def test_remote_traceback_points_at_the_cell_line(run: tuple[Server, dict[str, Any]]) -> None:
    _, cells = run
    assert not errors(cells["boom_deploy"]), text(cells["boom_deploy"])
    assert errors(cells["boom_call"]) == ["SandboxError"]
    out = text(cells["boom_call"])
    assert "ValueError: bad value 3" in out
    # `raise` is line 3 of the cell body (the magic line excluded), whatever was prepended
    assert 'boom.py", line 3, in handler' in out, out
    assert "raise ValueError('bad value ' + str(x))" in out


def test_cells_that_cannot_deploy_fail_clearly(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    leaky = text(cells["leaky"])
    assert "UsageError" in leaky and "fh (_io.TextIOWrapper)" in leaky, leaky
    nohandler = text(cells["nohandler"])
    assert "UsageError" in nohandler and "defines no handler" in nohandler and "def handler(event, ctx)" in nohandler
    syntax = text(cells["syntax"])
    assert "UsageError" in syntax and "does not compile" in syntax and "nothing was deployed" in syntax
    with Client(srv.url, srv.token) as client:
        names = {f["name"] for f in client.functions()}
    badflag = text(cells["badflag"])
    assert "UsageError: " in badflag and "unrecognized arguments: --bogus 1" in badflag, badflag
    badsize = text(cells["badsize"])
    assert "UsageError: " in badsize and "invalid_spec" in badsize and "memory" in badsize and "'lots'" in badsize, badsize
    badgpu = text(cells["badgpu"])
    assert "UsageError: " in badgpu and "--gpu" in badgpu and "'half'" in badgpu, badgpu
    assert {"adder", "boom"} <= names and not names & {"leaky", "nohandler", "syn", "badflag", "badsize", "badgpu"}


def test_redeploy_makes_a_version_and_rollback(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    assert f"deployed adder version 2 to FUNCTIONAI_URL ({srv.url}/)" in text(cells["redeploy"])
    out = text(cells["versions"])
    assert not errors(cells["versions"]), out
    assert out.splitlines() == ["v2 [1, 2]", "3 True"]


def test_carry_rules() -> None:
    assert free_names("def handler(e, c):\n    import os\n    y = os.sep + Z\n    return len(y)") == ["Z"]
    ns: dict[str, Any] = {"Z": {"a": [1, 2.5, None, (True, "q\"'")]}, "W": object()}
    carry = build_carry("def handler(e, c):\n    return Z", ns)
    assert carry.preamble == "Z = {'a': [1, 2.5, None, (True, 'q\"\\'')]}\n" and carry.offset == 1
    scope: dict[str, Any] = {}
    exec(carry.code, scope)
    assert scope["handler"](None, None) == ns["Z"]
    assert "W (builtins.object)" in _usage(lambda: build_carry("def handler(e, c):\n    return W", ns))


def _usage(fn: Any) -> str:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError) as info:
        fn()
    return str(info.value)


def test_carry_orders_definitions_and_carries_registries_and_imports() -> None:
    """Class bases and containers are defined before what uses them, a dict of
    notebook functions travels as a dict naming them, library functions are
    imported (not copied), and submodules used through a package are imported."""
    import posixpath
    import urllib.parse

    class Base:
        y = 2

    class Child(Base):
        x = 40

    def shout(s):  # type: ignore[no-untyped-def]
        return s.upper()

    import ast
    import operator

    tools = {"shout": shout, "kinds": [Child, "plain", 1.5], "ops": {ast.Add: operator.add}}
    ns: dict[str, Any] = {"Child": Child, "Base": Base, "TOOLS": tools, "shout": shout, "pjoin": posixpath.join, "urllib": urllib, "ast": ast, "twice": lambda v: v * 2}
    cell = "def handler(e, c):\n    return Child().x + Base().y, TOOLS['shout']('a'), TOOLS['kinds'][1], pjoin('a', 'b'), urllib.parse.quote(' '), TOOLS['ops'][ast.Add](1, 2)"
    carry = build_carry(cell, ns)
    assert carry.names == ["Base", "Child", "TOOLS", "ast", "pjoin", "shout", "urllib"]
    assert "from posixpath import join as pjoin" in carry.preamble and "import urllib.parse" in carry.preamble
    assert "def join" not in carry.preamble
    assert carry.preamble.index("class Base") < carry.preamble.index("class Child") < carry.code.index("def handler")
    assert carry.preamble.index("def shout") < carry.preamble.index("TOOLS = {")
    scope: dict[str, Any] = {}
    exec(carry.code, scope)
    assert scope["handler"](None, None) == (42, "A", "plain", "a/b", "%20", 3)
    msg = _usage(lambda: build_carry("def handler(e, c):\n    return twice(1)", ns))
    assert "twice (function defined under another name or by an expression: use a def)" in msg
    ns["TOOLS"] = {"f": open(os.devnull)}  # an open file in a registry cannot travel
    ns["TOOLS"]["f"].close()
    assert "TOOLS (builtins.dict)" in _usage(lambda: build_carry("def handler(e, c):\n    return TOOLS", ns))
    assert _fix_traceback('File "/x/f.py", line 5, in handler\n  File "/y/g.py", line 5', "f.py", 2) == 'File "/x/f.py", line 3, in handler\n  File "/y/g.py", line 5'


def test_without_a_server_functions_run_in_an_embedded_runtime(tmp_path: Path) -> None:
    """No server to find: the magics say so and run the function in a runtime
    inside the kernel, with sessions and isolation as usual."""
    cells = {
        "load": "%load_ext jupyter_functionai",
        "deploy": "%%function counter\ndef handler(event, ctx):\n    ctx.session.state['n'] = ctx.session.state.get('n', 0) + 1\n    import os\n    return {'n': ctx.session.state['n'], 'pid': os.getpid()}",
        "use": "with counter.session() as s:\n    s.invoke(); r = s.invoke()\nprint('n', r['n'], 'pid', r['pid'], counter.url.startswith('embedded:'))",
        "fresh": "print('other', counter.invoke()['n'])",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith(("FUNCTIONAI_", "JUPYTER_"))]:
            mp.delenv(key)
        env = base_env(tmp_path / "kernel")
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            mp.setenv(var, env[var])  # an empty runtime dir: no running server to find
        mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
        mp.setenv("FUNCTIONAI_DATA_DIR", str(tmp_path / "data"))
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(src) for src in cells.values()]
        (tmp_path / "nb").mkdir()
        NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True, resources={"metadata": {"path": str(tmp_path / "nb")}}).execute()
    out = dict(zip(cells, nb.cells, strict=True))
    for name, cell in out.items():
        assert not errors(cell), (name, text(cell))
    deploy = text(out["deploy"])
    assert "no server found; functions run in an embedded runtime in this kernel" in deploy
    assert f"deployed counter version 1 to an embedded runtime in this process ({tmp_path / 'data' / 'embedded'})" in deploy
    use = text(out["use"]).split()
    assert use[:2] == ["n", "2"] and use[-1] == "True"
    assert use[3] == "1" or os.geteuid() != 0  # pid 1 of its own namespace: a real sandbox, not the kernel
    assert text(out["fresh"]).strip() == "other 1"
    assert (tmp_path / "data" / "embedded" / "functionai.db").exists()


def test_function_decorator_deploys_a_notebook_function(run: tuple[Server, dict[str, Any]]) -> None:
    srv, cells = run
    out = text(cells["deco"])
    assert not errors(cells["deco"]), out
    assert out.strip() == "doubled 83 doubler"  # helper and OFFSET carried from the notebook
    with Client(srv.url, srv.token) as client:
        code = client.versions("doubler")[-1]["spec"]["source"]["code"]
    assert "@fai.function" not in code and "def doubler(event, ctx):" in code and "def helper(x):" in code
    assert errors(cells["deco_noparens"]) == ["TypeError"] and "needs parentheses" in text(cells["deco_noparens"])
    assert not errors(cells["deco_boom"])
    boom = text(cells["deco_boom_call"])
    assert errors(cells["deco_boom_call"]) == ["SandboxError"], boom
    assert "KeyError" in boom and "nope 1" in boom
    assert "breaker.py\", line 4" in boom, boom  # the raise is on the cell's 4th line


def _execute(kc: Any, code: str) -> tuple[str, list[str]]:
    """Run ``code`` in the kernel; its stream/result text and error names."""
    msg_id = kc.execute(code)
    out, errs = [], []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            out.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            errs.append(content["ename"])
            out.append("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out), errs


def test_kernels_of_the_server_load_the_magics_and_use_that_server(tmp_path: Path) -> None:
    """A kernel started by a Jupyter server with the extension has the magics
    without %load_ext, and talks to that server even when FUNCTIONAI_URL
    points elsewhere."""
    from jupyter_client import BlockingKernelClient

    from .test_cli_server import free_port

    elsewhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    srv = start_server(tmp_path / "home", tmp_path / "data", env={"FUNCTIONAI_URL": elsewhere, "FUNCTIONAI_TOKEN": "wrong"})
    kc = None
    try:
        kernel = _post(srv, "/api/kernels", {"name": "python3"})
        kc = BlockingKernelClient(connection_file=str(srv.home / "runtime" / f"kernel-{kernel['id']}.json"))
        kc.load_connection_file()
        # a client without a KernelManager judges the kernel by its heartbeat:
        # allow a starting kernel on a busy machine more than the default 1 s
        kc.hb_channel.time_to_dead = 10.0
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        out, errs = _execute(kc, "print(sorted(get_ipython().magics_manager.magics['cell']).count('function'))")
        assert (out.strip(), errs) == ("1", []), out
        out, errs = _execute(kc, "%%function auto\ndef handler(event, ctx):\n    return event * 2")
        assert not errs, out
        assert f"deployed auto version 1 to the Jupyter server that started this kernel ({srv.url}/)" in out, out
        out, errs = _execute(kc, "print(auto.invoke(21))")
        assert (out.strip(), errs) == ("42", []), out
        with Client(srv.url, srv.token) as client:
            assert "auto" in {f["name"] for f in client.functions()}
    finally:
        if kc is not None:
            kc.stop_channels()
        stop_server(srv)


def _post(srv: Server, path: str, body: Any) -> Any:
    import json
    import urllib.request

    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), method="POST", headers={"Authorization": f"token {srv.token}", "Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
        return json.loads(resp.read())
