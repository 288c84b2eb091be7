"""Runs: notebooks executed with papermill in sandbox sessions, as durable
tasks, through a real ``functionai serve`` (its root directory a temp dir)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from jupyter_functionai.client import Client
from jupyter_functionai.errors import InvalidArgument, NotFound

from .test_cli_server import Server, cli, start_server, stop_server


def notebook(path: Path, *sources: str, params: str = "x = 1\nname = 'world'") -> None:
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[cell, *(new_code_cell(s) for s in sources)], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("root")


@pytest.fixture(scope="module")
def server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("runs")
    srv = start_server(home / "home", home / "data", args=(f"--ServerApp.root_dir={root}",))
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def fai(server: Server) -> Client:
    return Client(server.url, server.token)


def outputs(root: Path, run: dict) -> dict[str, Path]:
    return {fmt: root / rel for fmt, rel in run["outputs"].items()}


def test_a_parameterised_run_in_a_sandbox(root: Path, fai: Client) -> None:
    notebook(root / "nbs" / "hello.ipynb", "import os\nresult = x * 7\nprint(f'hello {name}: {result}', os.getuid() != 0 or 'root')")
    run = fai.start_run("nbs/hello.ipynb", {"x": 6, "name": "runs"}, output_formats=["ipynb", "html"])
    assert run["state"] == "queued" and run["id"].startswith("t-") and run["notebook"] == "nbs/hello.ipynb"
    done = fai.wait_run(run["id"], timeout=120)
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0 and done["cells"] == 3 and done["attempts"] == 1 and done["parameters"] == {"x": 6, "name": "runs"}
    files = outputs(root, done)
    assert set(files) == {"ipynb", "html"} and all(p.is_file() for p in files.values())
    assert files["ipynb"].relative_to(root).parts[0] == "functionai-runs"
    nb = nbformat.read(files["ipynb"], as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "hello runs: 42" in printed and "root" not in printed  # ran as the sandbox's own uid
    assert "hello runs: 42" in files["html"].read_text()
    assert any(r["id"] == run["id"] for r in fai.runs())


def test_a_failing_cell_fails_the_run_and_keeps_the_partial_output(root: Path, fai: Client) -> None:
    notebook(root / "bad.ipynb", "print('first cell ran')", "raise ValueError('broken on purpose')", "print('never')")
    done = fai.wait_run(fai.start_run("bad.ipynb")["id"], timeout=120)
    assert done["state"] == "failed" and done["error"]["kind"] == "user_exception"
    assert "ValueError: broken on purpose" in done["error"]["message"] and "cell " in done["error"]["message"]
    nb = nbformat.read(outputs(root, done)["ipynb"], as_version=4)
    texts = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in nb.cells]
    assert any("first cell ran" in t for t in texts) and not any("never" in t for t in texts)


def test_bad_input_is_refused_clearly(root: Path, fai: Client) -> None:
    (root / "broken.ipynb").write_text("{not json")
    with pytest.raises(InvalidArgument, match="outside the root"):
        fai.start_run("../escape.ipynb")
    with pytest.raises(InvalidArgument, match="relative to the root"):
        fai.start_run("/etc/passwd.ipynb")
    with pytest.raises(NotFound, match=r"no notebook 'missing\.ipynb'"):
        fai.start_run("missing.ipynb")
    with pytest.raises(InvalidArgument, match="not a valid notebook"):
        fai.start_run("broken.ipynb")
    with pytest.raises(InvalidArgument, match="output_formats"):
        fai.start_run("bad.ipynb", output_formats=["pdf"])
    with pytest.raises(NotFound):
        fai.run("t-doesnotexist")
    assert not any(r["notebook"] in ("missing.ipynb", "broken.ipynb") for r in fai.runs())


def test_a_run_past_its_timeout_is_timed_out(root: Path, fai: Client) -> None:
    notebook(root / "slow.ipynb", "print('started')", "import time\ntime.sleep(120)")
    done = fai.wait_run(fai.start_run("slow.ipynb", timeout=8)["id"], timeout=120)
    assert done["state"] == "timed_out" and done["error"]["kind"] == "timeout"


def test_the_cli(root: Path, server: Server) -> None:
    notebook(root / "cli.ipynb", "print('sum', x + 1)")
    p = cli(server, "run", "cli.ipynb", "-p", "x", "41", "--html", "--wait", timeout=180)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "succeeded" in p.stdout and "ipynb: functionai-runs/" in p.stdout and "html: " in p.stdout
    run_id = p.stdout.split()[1]
    nb = json.loads((root / p.stdout.split("ipynb: ")[1].split()[0]).read_text())
    assert "sum 42" in json.dumps(nb) and run_id.startswith("t-")
    p = cli(server, "run", "../nope.ipynb")
    assert p.returncode == 2 and "outside the root" in p.stderr
