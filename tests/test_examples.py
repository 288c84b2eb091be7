"""Every file under examples/ runs, twice (a second run must pass too: a
closed session's id is never reused, a redeploy is a new version)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_cli_server import Server, base_env, start_server, stop_server

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
RUNS = (1, 2)


def test_every_example_is_tested() -> None:
    shipped = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file() and p.name != "README.md")
    assert shipped == ["cli_tour.sh", "client_echo.py", "crunch.py", "my_agent.py", "reports/daily.ipynb", "runtime_memory.py", "stack_services.py"]


def test_stack_services_runs_twice(tmp_path: Path) -> None:
    """The composition root from a script: a sandboxed notebook run, outputs beside the example."""
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy)
    env = {**base_env(tmp_path), "HOME": str(tmp_path / "home")}
    for run in RUNS:
        p = subprocess.run([sys.executable, str(copy / "stack_services.py")], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert p.returncode == 0, (run, p.stdout, p.stderr)
        state, output = p.stdout.split()
        assert state == "succeeded" and (copy / output).is_file(), (run, p.stdout)
        assert "2026-12-06: 5 rows, total 30" in (copy / output).read_text()


def test_runtime_memory_runs_twice(tmp_path: Path) -> None:
    env = {**base_env(tmp_path), "HOME": str(tmp_path / "home")}  # its state: ~/.functionai
    for run in RUNS:
        p = subprocess.run([sys.executable, str(EXAMPLES / "runtime_memory.py")], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert p.returncode == 0, (run, p.stdout, p.stderr)
        first, *streamed = p.stdout.splitlines()
        assert first.startswith("{'notes': ['hi']} ") and "path='warm-pool'" in first, (run, first)
        assert streamed == ["{'notes': ['hi', 'again']}"], (run, p.stdout)
    assert (tmp_path / "home" / ".functionai").is_dir()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A server whose root dir is a copy of examples/ (its runs write outputs there)."""
    tmp = tmp_path_factory.mktemp("examples")
    root = tmp / "root"
    shutil.copytree(EXAMPLES, root / "examples")
    srv = start_server(tmp / "home", tmp / "data", args=(f"--ServerApp.root_dir={root}",))
    try:
        yield srv, root
    finally:
        stop_server(srv)


def test_client_echo_runs_twice(served: tuple[Server, Path]) -> None:
    srv, root = served
    for run in RUNS:
        p = subprocess.run([sys.executable, str(EXAMPLES / "client_echo.py")], capture_output=True, text=True, timeout=120, env=srv.client_env(), cwd=root)
        assert p.returncode == 0, (run, p.stdout, p.stderr)
        assert p.stdout.startswith("{'x': 1} echo-client "), (run, p.stdout)


def test_cli_tour_runs_twice(served: tuple[Server, Path]) -> None:
    srv, root = served
    env = srv.client_env(FUNCTIONAI=f"{sys.executable} -m jupyter_functionai")
    for run in RUNS:
        p = subprocess.run(["sh", str(EXAMPLES / "cli_tour.sh")], capture_output=True, text=True, timeout=300, env=env, cwd=root)
        assert p.returncode == 0, (run, p.stdout, p.stderr)
        assert f"deployed my_agent version {run}" in p.stdout
        assert '"answer": "you said \'hi\'"' in p.stdout
        assert f"server: {srv.url}/ (chosen by FUNCTIONAI_URL)" in p.stderr
        assert '"done"' in p.stdout  # the task's result
        assert "succeeded" in p.stdout and "html: " in p.stdout
    runs = [d for d in (root / "functionai-runs").iterdir()]
    assert len(runs) == 2
    outputs = [json.loads(f.read_text()) for d in runs for f in d.glob("*.ipynb")]
    assert all("2026-11-25: 10 rows, total 285" in json.dumps(nb) for nb in outputs) and len(outputs) == 2
