"""``functionai serve`` as a real subprocess, driven by the ``functionai`` CLI
(more subprocesses) over HTTP: no mocks, real sandboxes."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^(X-Functionai-[A-Za-z-]+): (.*)$", re.M)
NO_SERVER = "no running functionai server found: start one with `functionai serve` or set FUNCTIONAI_URL and FUNCTIONAI_TOKEN"

ECHO = """
import os

def handler(event, ctx):
    ctx.session.state["n"] = ctx.session.state.get("n", 0) + 1
    print(f"hello from the handler: {event!r}")
    if event == "boom":
        raise KeyError("missing thing")
    return {"event": event, "n": ctx.session.state["n"]}
"""

COUNTER = """
def handler(event, ctx):
    ctx.session.state["count"] = ctx.session.state.get("count", 0) + 1
    return ctx.session.state["count"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def wait_until(cond: Any, timeout: float, what: str) -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNCTIONAI_", "JUPYTER_")) and k != "PYTHONWARNINGS"}
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp / sub)
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    home: Path  # its JUPYTER_* dirs and log
    data_dir: Path

    @property
    def log(self) -> str:
        return (self.home / "server.log").read_text(errors="replace")

    def client_env(self, **extra: str) -> dict[str, str]:
        env = base_env(self.home)
        env.update(FUNCTIONAI_URL=self.url, FUNCTIONAI_TOKEN=self.token)
        env.update(extra)
        return env

    def healthy(self) -> bool:
        req = urllib.request.Request(self.url + "/functionai/api/health", headers={"Authorization": f"token {self.token}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=2) as resp:
                return bool(resp.status == 200 and json.loads(resp.read())["status"] == "ok")
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except OSError:
            return False


def start_server(home: Path, data_dir: Path, command: str = "serve", env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Server:
    home.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    log = open(home / "server.log", "ab")
    cmd = [sys.executable, "-m", "jupyter_functionai", command, "--port", str(port), "--ip", "127.0.0.1", "--token", token, "--data-dir", str(data_dir)]
    if command == "lab":
        cmd.append("--no-browser")
    # an extra Jupyter option passes through: fail rather than move to another port
    cmd.append("--ServerApp.port_retries=0")
    cmd.extend(args)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**base_env(home), **(env or {})}, cwd=home)
    log.close()
    server = Server(proc, f"http://127.0.0.1:{port}", token, home, data_dir)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"functionai {command} exited with {proc.returncode}:\n{server.log}")
        return server.healthy()

    try:
        wait_until(up, 60, "functionai serve to answer /functionai/api/health")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return server


def stop_server(server: Server, sig: int = signal.SIGTERM) -> None:
    """SIGTERM (or SIGINT); the server must exit 0 within 30 s and leave no sandbox behind."""
    if server.proc.poll() is not None:
        return
    below = descendants(server.proc.pid)
    sessions = cli(server, "sessions", "--json")
    pids = {s["instance"]["pid"] for s in json.loads(sessions.stdout) if s.get("instance")} if sessions.returncode == 0 else set()
    server.proc.send_signal(sig)
    try:
        rc = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        raise AssertionError(f"functionai serve did not exit within 30 s of signal {sig}:\n{server.log}") from None
    assert rc == 0, server.log
    left = below | pids
    wait_until(lambda: not any(pid_alive(p) for p in left), 10, f"sandbox processes {sorted(left)} to be gone")
    assert "Shutting down" in server.log


def cli(server: Server | None, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if env is None:
        assert server is not None
        env = server.client_env()
    return subprocess.run(
        [sys.executable, "-m", "jupyter_functionai", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, (p.args, p.stdout, p.stderr)
    return p


def headers(p: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return dict(HEADER.findall(p.stderr))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    srv = start_server(root / "home", root / "data")
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def echo(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The ECHO handler deployed from ``echo tool.py`` (so named ``echo-tool``)."""
    path = tmp_path_factory.mktemp("src") / "echo tool.py"
    path.write_text(textwrap.dedent(ECHO))
    p = ok(cli(server, "deploy", str(path), "--timeout", "20", "--memory", "256Mi"))
    assert p.stdout.strip() == "deployed echo-tool version 1"
    return "echo-tool"


# -- functions -----------------------------------------------------------------------------


def test_deploy_ls_versions_rollback(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "v.py"
    src.write_text("def main(event, ctx):\n    return 'one'\n")
    assert ok(cli(server, "deploy", str(src), "--name", "ver", "--handler", "main")).stdout.strip() == "deployed ver version 1"
    src.write_text("def main(event, ctx):\n    return 'two'\n")
    row = json.loads(ok(cli(server, "deploy", str(src), "--name", "ver", "--handler", "main", "--json")).stdout)
    assert row["version"] == 2 and row["spec"]["handler"] == "main" and row["spec"]["source"]["kind"] == "code"
    assert json.loads(ok(cli(server, "invoke", "ver")).stdout) == "two"

    table = ok(cli(server, "ls")).stdout.splitlines()
    assert table[0].split() == ["NAME", "ACTIVE", "LATEST", "UPDATED"]
    assert any(line.split()[:3] == ["ver", "2", "2"] for line in table[1:]), table
    listed = json.loads(ok(cli(server, "ls", "--json")).stdout)
    assert {f["name"]: f["active_version"] for f in listed}["ver"] == 2

    versions = ok(cli(server, "versions", "ver")).stdout.splitlines()
    rows = [line.split() for line in versions[1:]]
    assert [r[0] for r in rows] == ["1", "2"] and rows[1][1] == "*" and rows[0][1] != "*"
    assert ok(cli(server, "rollback", "ver", "1")).stdout.strip() == "ver: active version 1"
    assert json.loads(ok(cli(server, "invoke", "ver")).stdout) == "one"
    assert [v["active"] for v in json.loads(ok(cli(server, "versions", "ver", "--json")).stdout)] == [True, False]

    p = cli(server, "rollback", "ver", "7")
    assert p.returncode == 1 and "(not_found)" in p.stderr
    assert ok(cli(server, "delete", "ver")).stdout.strip() == "deleted ver"
    p = cli(server, "invoke", "ver")
    assert p.returncode == 1 and "invoke failed (not_found)" in p.stderr
    assert f"[server {server.url}/ (chosen by FUNCTIONAI_URL)]" in p.stderr  # the error names the server


def test_invalid_spec_fails_before_the_request(server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def handler(event, ctx):\n    return (\n")
    p = cli(server, "deploy", str(bad))
    assert p.returncode == 2 and "(invalid_spec)" in p.stderr and "SyntaxError" in p.stderr
    good = tmp_path / "good.py"
    good.write_text("def handler(event, ctx):\n    return 1\n")
    p = cli(server, "deploy", str(good), "--memory", "lots")
    assert p.returncode == 2 and "resources.memory_mb" in p.stderr
    p = cli(server, "deploy", str(tmp_path / "missing.py"))
    assert p.returncode == 2 and "no such file" in p.stderr
    names = [f["name"] for f in json.loads(ok(cli(server, "ls", "--json")).stdout)]
    assert "bad" not in names and "good" not in names


# -- invoke and sessions ---------------------------------------------------------------------


def test_invoke_session_affinity_and_headers(server: Server, echo: str) -> None:
    a1 = ok(cli(server, "invoke", echo, "--session", "aff-A", "--data", '{"x": 1}', "--verbose"))
    a2 = ok(cli(server, "invoke", echo, "--session", "aff-A", "--data", '"second"', "--verbose"))
    b1 = ok(cli(server, "invoke", echo, "--session", "aff-B", "--verbose"))
    assert json.loads(a1.stdout) == {"event": {"x": 1}, "n": 1}
    assert json.loads(a2.stdout) == {"event": "second", "n": 2}
    assert json.loads(b1.stdout) == {"event": None, "n": 1}
    h1, h2, hb = headers(a1), headers(a2), headers(b1)
    assert h1["X-Functionai-Session-Id"] == h2["X-Functionai-Session-Id"] == "aff-A"
    assert h1["X-Functionai-Instance-Id"] == h2["X-Functionai-Instance-Id"]
    assert hb["X-Functionai-Instance-Id"] != h1["X-Functionai-Instance-Id"]
    assert re.fullmatch(r"(warm-pool|template-fork|fresh);ms=[0-9.]+", h1["X-Functionai-Cold-Start"])
    assert "X-Functionai-Cold-Start" not in h2
    assert a1.stderr.startswith(f"server: {server.url}/ (chosen by FUNCTIONAI_URL)\nHTTP 200\n")
    # without --verbose, stderr stays empty
    assert ok(cli(server, "invoke", echo, "--session", "aff-A")).stderr == ""

    rows = {s["id"]: s for s in json.loads(ok(cli(server, "sessions", echo, "--json")).stdout)}
    assert rows["aff-A"]["calls"] == 3 and rows["aff-A"]["status"] == "live"
    assert rows["aff-A"]["instance"]["id"] == h1["X-Functionai-Instance-Id"]
    table = ok(cli(server, "sessions", echo)).stdout.splitlines()
    assert table[0].split()[:5] == ["ID", "FUNCTION", "VERSION", "STATUS", "CALLS"]
    line = next(line.split() for line in table if line.startswith("aff-A "))
    assert line[1:6] == [echo, "1", "live", "3", h1["X-Functionai-Instance-Id"]]
    described = json.loads(ok(cli(server, "session", "aff-B")).stdout)
    assert described["id"] == "aff-B" and described["calls"] == 1


def test_data_from_a_file_and_stdin(server: Server, echo: str, tmp_path: Path) -> None:
    (tmp_path / "event.json").write_text('{"from": "file"}')
    p = ok(cli(server, "invoke", echo, "--session", "data-file", "--data", f"@{tmp_path / 'event.json'}"))
    assert json.loads(p.stdout)["event"] == {"from": "file"}
    p = subprocess.run(
        [sys.executable, "-m", "jupyter_functionai", "invoke", echo, "--data", "@-"],
        input="[1, 2]", capture_output=True, text=True, timeout=60, env=server.client_env(), cwd=REPO,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["event"] == [1, 2]


def test_close_session_then_invoke_fails(server: Server, echo: str) -> None:
    ok(cli(server, "invoke", echo, "--session", "bye"))
    assert ok(cli(server, "close-session", "bye")).stdout.strip() == "closed session bye"
    rows = {s["id"]: s for s in json.loads(ok(cli(server, "sessions", "--json")).stdout)}
    assert rows["bye"]["status"] == "closed" and rows["bye"]["instance"] is None
    # a closed session is gone (HTTP 404 session_closed): the call failed -> exit 1
    p = cli(server, "invoke", echo, "--session", "bye")
    assert p.returncode == 1
    assert "invoke failed (session_closed)" in p.stderr and p.stdout == ""
    p = cli(server, "close-session", "never-opened")
    assert p.returncode == 1 and "(not_found)" in p.stderr


def test_open_session_starts_the_sandbox(server: Server, echo: str) -> None:
    opened = json.loads(ok(cli(server, "open-session", echo, "--session", "early", "--json")).stdout)
    assert opened["id"] == "early" and opened["status"] == "live" and opened["calls"] == 0
    p = ok(cli(server, "invoke", echo, "--session", "early", "--verbose"))
    assert headers(p)["X-Functionai-Instance-Id"] == opened["instance"]["id"]


def test_handler_exception_exits_1_with_its_traceback(server: Server, echo: str) -> None:
    p = cli(server, "invoke", echo, "--session", "err", "--data", '"boom"')
    assert p.returncode == 1
    assert p.stdout == ""
    assert "functionai: invoke failed (user_exception): KeyError: 'missing thing'" in p.stderr
    assert "Traceback (most recent call last):" in p.stderr
    assert 'raise KeyError("missing thing")' in p.stderr
    assert "output of the call:\n  hello from the handler: 'boom'\n" in p.stderr  # what it printed first


def test_functions_never_see_the_server_credentials(server: Server, tmp_path: Path) -> None:
    """Module-level code runs in the template, before the sandbox: the
    server's token (which it advertises to its kernels) is not in its env."""
    src = tmp_path / "peek.py"
    src.write_text(
        "import os\n"
        "AT_IMPORT = sorted(k for k in os.environ if 'TOKEN' in k)\n"
        "def handler(event, ctx):\n"
        "    return {'import': AT_IMPORT, 'call': sorted(k for k in os.environ if 'TOKEN' in k)}\n"
    )
    ok(cli(server, "deploy", str(src)))
    seen = json.loads(ok(cli(server, "invoke", "peek")).stdout)
    assert seen == {"import": [], "call": []}


def test_coldstarts_and_logs(server: Server, echo: str) -> None:
    ok(cli(server, "invoke", echo, "--session", "logged", "--data", '"first line"'))
    ok(cli(server, "invoke", echo, "--session", "logged", "--data", '"second line"'))
    starts = json.loads(ok(cli(server, "coldstarts", echo, "--json")).stdout)
    mine = [c for c in starts if c["session_id"] == "logged"]
    assert len(mine) == 1 and mine[0]["function"] == echo and mine[0]["path"] in ("warm-pool", "template-fork", "fresh")
    table = ok(cli(server, "coldstarts", echo)).stdout.splitlines()
    assert table[0].split()[:4] == ["AT", "FUNCTION", "VERSION", "PATH"]
    assert any("logged" in line.split() and mine[0]["instance_id"] in line.split() for line in table[1:])

    out = ok(cli(server, "logs", echo, "--session", "logged")).stdout
    assert "  hello from the handler: 'first line'" in out
    assert "  hello from the handler: 'second line'" in out
    assert out.index("first line") < out.index("second line")  # oldest first
    assert re.search(rf"^== .* {echo} v1  session=logged  instance=\S+  ok  [0-9.]+ ms$", out, re.M)
    rows = json.loads(ok(cli(server, "logs", echo, "--session", "logged", "--json")).stdout)
    assert [r["outcome"] for r in rows] == ["ok", "ok"]
    assert "second line" in rows[0]["logs"]  # newest first in the raw JSON


# -- keys ------------------------------------------------------------------------------------


def test_keys_create_ls_revoke(server: Server, echo: str) -> None:
    made = ok(cli(server, "keys", "create", echo, "--note", "ci bot"))
    key = made.stdout.strip()
    assert re.fullmatch(r"fai_[0-9a-f]+_\S+", key)
    key_id = key.split("_")[1]
    assert "shown only once" in made.stderr
    table = ok(cli(server, "keys", "ls", echo)).stdout.splitlines()
    assert table[0].split() == ["ID", "FUNCTION", "NOTE", "CREATED", "REVOKED"]
    row = next(line for line in table if line.startswith(key_id))
    assert f"{echo}  ci bot" in row and row.rstrip().endswith("-")
    # the key invokes its function (sent as a Bearer key) but opens nothing else
    p = ok(cli(server, "--token", key, "invoke", echo, "--data", "5"))
    assert json.loads(p.stdout)["event"] == 5
    p = cli(server, "ls", "--token", key)
    assert p.returncode == 2 and "unauthorized" in p.stderr
    assert ok(cli(server, "keys", "revoke", key_id)).stdout.strip() == f"revoked key {key_id}"
    listed = {k["id"]: k for k in json.loads(ok(cli(server, "keys", "ls", "--json")).stdout)}
    assert listed[key_id]["revoked_at"] is not None and "key" not in listed[key_id]
    p = cli(server, "invoke", echo, "--token", key)
    assert p.returncode == 2 and "unauthorized" in p.stderr
    p = cli(server, "keys", "revoke", key_id)
    assert p.returncode == 1 and "(not_found)" in p.stderr


# -- usage and connection errors ---------------------------------------------------------------


def test_bad_data_is_a_usage_error(server: Server, echo: str) -> None:
    p = cli(server, "invoke", echo, "--data", "{bad")
    assert p.returncode == 2
    assert p.stderr.startswith("functionai: error: --data is not valid JSON:")
    p = cli(server, "invoke", echo, "--data", "@/nonexistent/event.json")
    assert p.returncode == 2 and "cannot read the file" in p.stderr
    p = cli(server, "invoke", echo, "--session", "bad session!")
    assert p.returncode == 2 and "(invalid_argument)" in p.stderr
    p = cli(server, "ls", "--bogus")
    assert p.returncode == 2 and "unrecognized arguments: --bogus" in p.stderr
    p = cli(server, "invoke")
    assert p.returncode == 2 and "usage: functionai invoke" in p.stderr


def test_wrong_token_is_unauthorized(server: Server) -> None:
    p = cli(server, "ls", env=server.client_env(FUNCTIONAI_TOKEN="wrong"))
    assert p.returncode == 2
    assert p.stderr.startswith("functionai: error: unauthorized:") and "FUNCTIONAI_TOKEN" in p.stderr
    p = cli(server, "--token", "wrong", "invoke", "whatever")
    assert p.returncode == 2 and "unauthorized" in p.stderr


def test_no_server_reachable(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    p = cli(None, "ls", env={**base_env(tmp_path), "FUNCTIONAI_URL": closed, "FUNCTIONAI_TOKEN": "x"})
    assert p.returncode == 2
    assert p.stderr.startswith(f"functionai: error: no running functionai server found at {closed}/")
    assert "start one with `functionai serve` or set FUNCTIONAI_URL and FUNCTIONAI_TOKEN" in p.stderr
    # no URL and no runtime file of a running server
    p = cli(None, "invoke", "echo", env=base_env(tmp_path))
    assert p.returncode == 2
    assert p.stderr.strip() == f"functionai: error: {NO_SERVER}"


def test_server_found_by_its_runtime_file(server: Server) -> None:
    env = base_env(server.home)  # the server's JUPYTER_RUNTIME_DIR, no FUNCTIONAI_URL / _TOKEN
    assert not any(k.startswith("FUNCTIONAI_") for k in env)
    p = ok(cli(None, "health", env=env))
    port = server.url.rsplit(":", 1)[1]
    assert re.match(rf"http://(localhost|127\.0\.0\.1):{port}/: ok \(functionai ", p.stdout)
    assert str(server.data_dir) in p.stdout
    # a URL without a token takes the token of that server's runtime file
    env["FUNCTIONAI_URL"] = server.url
    assert json.loads(ok(cli(None, "health", "--json", env=env)).stdout)["status"] == "ok"


# -- restart --------------------------------------------------------------------------------------


def test_restart_on_the_same_data_dir_resumes_session_state(tmp_path: Path) -> None:
    data = tmp_path / "data"
    src = tmp_path / "counter.py"
    src.write_text(textwrap.dedent(COUNTER))
    first = start_server(tmp_path / "one", data)
    try:
        ok(cli(first, "deploy", str(src)))
        assert [json.loads(ok(cli(first, "invoke", "counter", "--session", "keep")).stdout) for _ in range(2)] == [1, 2]
        assert json.loads(ok(cli(first, "invoke", "counter", "--session", "other")).stdout) == 1
        pid = json.loads(ok(cli(first, "session", "keep")).stdout)["instance"]["pid"]
        assert pid_alive(pid)
    finally:
        stop_server(first)
    assert not pid_alive(pid)
    second = start_server(tmp_path / "two", data)
    try:
        assert json.loads(ok(cli(second, "session", "keep")).stdout)["status"] == "paused"
        p = ok(cli(second, "invoke", "counter", "--session", "keep", "--verbose"))
        assert json.loads(p.stdout) == 3
        assert "X-Functionai-Cold-Start" in headers(p)  # a new instance, the old state
        assert json.loads(ok(cli(second, "invoke", "counter", "--session", "other")).stdout) == 2
        assert json.loads(ok(cli(second, "invoke", "counter", "--session", "new")).stdout) == 1
        pids = {s["instance"]["pid"] for s in json.loads(ok(cli(second, "sessions", "--json")).stdout) if s["instance"]}
        assert len(pids) == 3
    finally:
        stop_server(second, signal.SIGINT)  # ^C stops it as gracefully as SIGTERM
    assert not any(pid_alive(p) for p in pids)
    assert "received signal 2, stopping" in second.log


def test_lab_main_job_serves_jupyterlab_with_the_example_deployed(tmp_path: Path) -> None:
    """The README's main job: JupyterLab with the extension active and the
    example function deployed, answering through the gateway."""
    server = start_server(tmp_path / "home", tmp_path / "data", command="lab")
    try:
        fns = json.loads(ok(cli(server, "ls", "--json")).stdout)
        assert [f["name"] for f in fns] == ["agent-memory"]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{server.url}/lab?token={server.token}", timeout=30) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "JupyterLab" in page
        p = ok(cli(server, "invoke", "agent-memory", "--session", "lab-user", "--data", '{"note": "from the lab test"}'))
        assert json.loads(p.stdout)["notes"] == ["from the lab test"]
    finally:
        stop_server(server)
    # a second start finds the example already there and keeps its sessions
    again = start_server(tmp_path / "home2", tmp_path / "data", command="lab")
    try:
        p = ok(cli(again, "invoke", "agent-memory", "--session", "lab-user", "--data", '{"note": "again"}'))
        assert json.loads(p.stdout)["notes"] == ["from the lab test", "again"]
        assert [f["active_version"] for f in json.loads(ok(cli(again, "ls", "--json")).stdout)] == [1]
    finally:
        stop_server(again)


# -- which server: --url, FUNCTIONAI_URL, FUNCTIONAI_PARENT_URL, the one running server -------------


def test_serve_prints_the_export_line_once(server: Server) -> None:
    line = f"export FUNCTIONAI_URL={server.url.replace('127.0.0.1', 'localhost')} FUNCTIONAI_TOKEN={server.token}"
    wait_until(lambda: "export FUNCTIONAI_URL=" in server.log, 30, "the export line")
    exports = [ln for ln in server.log.splitlines() if ln.startswith("export FUNCTIONAI_URL=")]
    assert len(exports) == 1, exports
    url = re.fullmatch(r"export FUNCTIONAI_URL=(\S+) FUNCTIONAI_TOKEN=(\S+)", exports[0])
    assert url is not None and url[2] == server.token, (exports, line)
    assert url[1].rsplit(":", 1)[1] == server.url.rsplit(":", 1)[1]
    # what it says works: a client with only these two variables
    env = {**base_env(server.home / "elsewhere"), "FUNCTIONAI_URL": url[1], "FUNCTIONAI_TOKEN": url[2]}
    assert json.loads(ok(cli(None, "health", "--json", env=env)).stdout)["status"] == "ok"


def test_serve_with_browser_starts(tmp_path: Path) -> None:
    """``--browser`` used to give Jupyter open_browser twice, which it refuses.
    BROWSER=true (the POSIX command) makes Python's webbrowser "open" nothing."""
    srv = start_server(tmp_path / "home", tmp_path / "data", env={"BROWSER": "true"}, args=("--browser",))
    try:
        assert "open_browser only accepts one value" not in srv.log
        wait_until(lambda: "export FUNCTIONAI_URL=" in srv.log, 30, "the export line")
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, Path]]:
    """Two servers writing their runtime files to one JUPYTER_RUNTIME_DIR (the
    home of a client that names neither)."""
    root = tmp_path_factory.mktemp("two")
    shared = root / "client"
    base_env(shared)
    runtime = {"JUPYTER_RUNTIME_DIR": str(shared / "runtime")}
    a = start_server(root / "a", root / "a-data", env=runtime)
    try:
        b = start_server(root / "b", root / "b-data", env=runtime)
    except BaseException:
        stop_server(a)
        raise
    try:
        yield a, b, shared
    finally:
        stop_server(b)
        stop_server(a)


def _data_dir(p: subprocess.CompletedProcess[str]) -> str:
    return str(json.loads(ok(p).stdout)["data_dir"])


def test_several_servers_are_refused_and_listed(two_servers: tuple[Server, Server, Path]) -> None:
    a, b, shared = two_servers
    p = cli(None, "invoke", "agent-memory", "--session", "alice", env=base_env(shared))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("functionai: error: 2 running Jupyter servers have the functionai extension; ")
    assert "--url" in p.stderr and "FUNCTIONAI_URL" in p.stderr
    for srv in (a, b):
        port = srv.url.rsplit(":", 1)[1]
        assert re.search(rf"^  http://\S+:{port}/  pid {srv.proc.pid}  root {re.escape(str(srv.home))}$", p.stderr, re.M), p.stderr


def test_url_and_functionai_url_pick_one(two_servers: tuple[Server, Server, Path]) -> None:
    a, b, shared = two_servers
    env = base_env(shared)
    # --url without a token takes the token of that server's runtime file
    assert _data_dir(cli(None, "--url", a.url, "health", "--json", env=env)) == str(a.data_dir)
    assert _data_dir(cli(None, "health", "--json", "--url", b.url, "--token", b.token, env=env)) == str(b.data_dir)
    assert _data_dir(cli(None, "health", "--json", env={**env, "FUNCTIONAI_URL": b.url})) == str(b.data_dir)
    # --url wins over FUNCTIONAI_URL, which wins over the parent
    both = {**env, "FUNCTIONAI_URL": b.url, "FUNCTIONAI_PARENT_URL": a.url, "FUNCTIONAI_PARENT_TOKEN": a.token}
    assert _data_dir(cli(None, "health", "--json", env=both)) == str(b.data_dir)
    assert _data_dir(cli(None, "health", "--json", "--url", a.url, env={**env, "FUNCTIONAI_URL": b.url})) == str(a.data_dir)


def test_parent_url_picks_the_server_that_started_the_terminal(two_servers: tuple[Server, Server, Path]) -> None:
    _a, b, shared = two_servers
    env = {**base_env(shared), "FUNCTIONAI_PARENT_URL": b.url, "FUNCTIONAI_PARENT_TOKEN": b.token}
    assert _data_dir(cli(None, "health", "--json", env=env)) == str(b.data_dir)
    p = ok(cli(None, "health", env=env))
    assert p.stdout.startswith(f"{b.url}/: ok")


def test_errors_and_verbose_name_the_server(two_servers: tuple[Server, Server, Path], tmp_path: Path) -> None:
    a, b, shared = two_servers
    env = base_env(shared)
    p = cli(None, "invoke", "agent-memory", "--session", "nobody-here", "--url", a.url, env=env)
    assert p.returncode == 1
    assert "invoke failed (not_found): " in p.stderr and f"[server {a.url}/ (chosen by --url)]" in p.stderr
    p = cli(None, "invoke", "agent-memory", env={**env, "FUNCTIONAI_PARENT_URL": b.url, "FUNCTIONAI_PARENT_TOKEN": b.token})
    assert p.returncode == 1 and f"[server {b.url}/ (chosen by FUNCTIONAI_PARENT_URL, " in p.stderr
    p = cli(None, "ls", "--url", b.url, "--token", "wrong", env=env)
    assert p.returncode == 2 and "rejected the credentials" in p.stderr and b.url in p.stderr and "[chosen by --url]" in p.stderr
    src = tmp_path / "hello.py"
    src.write_text("def handler(event, ctx):\n    return 'hi'\n")
    ok(cli(None, "deploy", str(src), "--url", b.url, env=env))
    p = ok(cli(None, "invoke", "hello", "--session", "verbose-hello", "--verbose", env={**env, "FUNCTIONAI_URL": b.url}))
    assert p.stderr.startswith(f"server: {b.url}/ (chosen by FUNCTIONAI_URL)\nHTTP 200\n")
    assert json.loads(p.stdout) == "hi"
