"""The README's quick start, run exactly as printed, on a fresh copy of the
checkout: a new venv, ``pip install -e '.[lab]'``, ``functionai lab`` with
its defaults (the browser too: ``BROWSER=true``, the POSIX command, makes
Python's webbrowser "open" without a window), then the README's ``invoke``
of the example function with the URL and token of the ``export`` line the
server prints.  As root, the same again as a normal user
(``FUNCTIONAI_TEST_USER``).

Slow (a venv and an install each: about a minute or two); they carry the
``timeout`` mark of pytest-timeout.  The README's test command is not run
here: it is the whole suite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .test_cli_server import descendants, free_port, pid_alive, wait_until

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
EXPORT = re.compile(r"^export FUNCTIONAI_URL=(\S+) FUNCTIONAI_TOKEN=(\S*)$", re.M)
START_TIMEOUT = 900  # the venv, the install, JupyterLab's start
TEST_USER_ENV = "FUNCTIONAI_TEST_USER"

pytestmark = pytest.mark.timeout(2 * START_TIMEOUT)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S)


def main_command() -> str:
    """The quick start's command: the first line of the README's first bash block."""
    lines = [ln for ln in bash_blocks(README)[0].splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def invoke_command() -> str:
    """The README's call of the example function (in a bash block)."""
    found = [ln.split("#")[0].strip() for block in bash_blocks(README) for ln in block.splitlines() if ln.startswith(".venv/bin/functionai invoke agent-memory")]
    assert found, "the README shows no `.venv/bin/functionai invoke agent-memory ...` line"
    return found[0]


def test_the_readme_commands_are_what_the_tests_run() -> None:
    assert main_command() == "python3 -m venv .venv && .venv/bin/pip install -e '.[lab]' && .venv/bin/functionai lab"
    assert "--no-browser" not in main_command()
    assert invoke_command().startswith(".venv/bin/functionai invoke agent-memory --session ")
    # the test command stays the whole suite (not run here: it is the suite)
    assert any(b.strip().startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest") for b in bash_blocks(README))


def copy_checkout(dest: Path) -> None:
    """The files git knows or would add (as they are in the working tree): a clone, with what is not committed yet."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def clean_env(home: Path) -> dict[str, str]:
    """This environment less anything of Jupyter, functionai or a venv, with
    every Jupyter and IPython directory and HOME under ``home``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FUNCTIONAI_", "JUPYTER_", "PYTEST_")) and k not in ("PYTHONWARNINGS", "VIRTUAL_ENV", "PYTHONPATH", "HOME", "IPYTHONDIR")
    }
    venv_bin = os.path.dirname(os.path.realpath(sys.executable))
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if os.path.realpath(p) != venv_bin)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"), ("HOME", "home")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env["BROWSER"] = "true"  # the POSIX command: webbrowser "opens" the page, no window
    env["JUPYTER_PORT"] = str(free_port())  # Jupyter's own variable: the command stays as printed
    return env


def run_quick_start(checkout: Path, env: dict[str, str], user: str | None = None) -> None:
    log_path = checkout.parent / "quick-start.log"
    if user is None:
        argv = ["sh", "-c", main_command()]
    else:
        argv = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), "sh", "-c", main_command()]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if user is not None:
        shutil.chown(log_path, user)

    def log() -> str:
        return log_path.read_text(errors="replace")

    try:
        def exported() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the quick start exited with {proc.returncode}:\n{log()[-6000:]}")
            return EXPORT.search(log()) is not None

        wait_until(exported, START_TIMEOUT, "`functionai lab` to print its export line")
        text = log()
        assert "open_browser only accepts one value" not in text
        exports = EXPORT.findall(text)
        assert len(exports) == 1, exports
        url, token = exports[0]
        assert url.endswith(f":{env['JUPYTER_PORT']}"), url
        # the README's call, with the export line's URL and token
        call_env = {**env, "FUNCTIONAI_URL": url, "FUNCTIONAI_TOKEN": token}
        call = ["sh", "-c", invoke_command()]
        if user is not None:
            call = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in call_env.items()), *call]
        p = subprocess.run(call, cwd=checkout, env=call_env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (p.stdout, p.stderr, log()[-4000:])
        value = json.loads(p.stdout)
        assert value["notes"] == ["hi"] and value["session"] == "alice", value
        assert f"server: {url}/ (chosen by FUNCTIONAI_URL)" in p.stderr
        assert "X-Functionai-Cold-Start: warm-pool;" in p.stderr, p.stderr  # the example's warm pool
    finally:
        server_pids = [pid for pid in descendants(proc.pid) | {proc.pid} if _is_lab(_cmdline(pid))]
        for pid in server_pids:
            os.kill(pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"`functionai lab` did not exit within 60 s of SIGTERM:\n{log()[-4000:]}") from None
    assert server_pids, log()[-4000:]
    assert rc == 0, log()[-4000:]
    wait_until(lambda: not any(pid_alive(pid) for pid in server_pids), 10, "the server to be gone")
    assert "received signal 15, stopping" in log() or "Shutting down" in log()


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _is_lab(argv: list[str]) -> bool:
    """``.../bin/python3 .venv/bin/functionai lab`` (not the ``sh -c`` around it)."""
    return any(a.endswith("bin/functionai") and argv[i + 1 : i + 2] == ["lab"] for i, a in enumerate(argv[:2]))


def test_quick_start_as_printed(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    copy_checkout(checkout)
    env = clean_env(tmp_path / "home")
    real_cache = Path(os.path.expanduser("~")) / ".cache" / "pip"
    if real_cache.is_dir() and os.access(real_cache, os.W_OK):
        env["PIP_CACHE_DIR"] = str(real_cache)  # pip may use its cache
    run_quick_start(checkout, env)


def test_quick_start_as_a_normal_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: test_quick_start_as_printed already ran it as a normal user")
    user = os.environ.get(TEST_USER_ENV)
    if not user:
        pytest.skip(f"set {TEST_USER_ENV} to a normal user's name to run the quick start as that user too")
    if shutil.which("runuser") is None:
        pytest.skip("runuser is not installed")
    top = Path(tempfile.mkdtemp(prefix="functionai-readme-"))
    try:
        checkout = top / "checkout"
        copy_checkout(checkout)
        env = clean_env(top / "home")
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith("/root"))
        subprocess.run(["chown", "-R", f"{user}:", str(top)], check=True)
        run_quick_start(checkout, env, user=user)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_invoke_line_quotes_survive_the_shell() -> None:
    args = shlex.split(invoke_command())
    assert args[args.index("--data") + 1] == '{"note": "hi"}'


def test_binder_installs_the_checkout_with_the_extension_ok(tmp_path: Path) -> None:
    """binder/ read the way repo2docker reads it: environment.yml names Python
    and Node.js; postBuild, run from the root of a fresh copy in a fresh venv
    (standing in for that environment), installs the package with both
    extensions enabled and OK, and points JupyterLab at the quickstart notebook."""
    import yaml

    env_yml = yaml.safe_load((REPO / "binder" / "environment.yml").read_text())
    deps = [d for d in env_yml["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("python=3.1") for d in deps) and any(d.startswith("nodejs") for d in deps) and "pip" in deps, deps
    checkout = tmp_path / "checkout"
    copy_checkout(checkout)
    assert os.access(checkout / "binder" / "postBuild", os.X_OK)
    env = clean_env(tmp_path / "home")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    real_cache = Path(os.path.expanduser("~")) / ".cache" / "pip"
    if real_cache.is_dir() and os.access(real_cache, os.W_OK):
        env["PIP_CACHE_DIR"] = str(real_cache)
    p = subprocess.run(["binder/postBuild"], cwd=checkout, env=env, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    listed = subprocess.run([str(venv / "bin" / "jupyter"), "server", "extension", "list"], env=env, capture_output=True, text=True, timeout=120)
    ours = listed.stdout + listed.stderr
    assert re.search(r"jupyter_functionai [^\n]*enabled[^\n]*\n\s*- Validating jupyter_functionai\.\.\.\n\s*jupyter_functionai [^\n]*OK", ours), ours
    labext = subprocess.run([str(venv / "bin" / "jupyter"), "labextension", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert re.search(r"jupyter-functionai v[\d.]+ \S*enabled\S* \S*OK", labext.stdout + labext.stderr), labext.stdout + labext.stderr
    config = json.loads((Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json").read_text())
    url = config["ServerApp"]["default_url"]
    assert url.startswith("/lab/tree/") and (checkout / url.removeprefix("/lab/tree/")).is_file(), url
