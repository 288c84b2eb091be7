"""The ``functionai`` command line, run for real in subprocesses."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_functionai import __version__, cli

REPO = Path(__file__).resolve().parent.parent
COLDSTART_PATHS = ("warm-pool", "warm-pool-nometer", "template-fork", "template-fork-nometer", "template-fork-warmup", "template-fork-noiso", "template-fork-noseccomp", "template-fork-nodisk", "fresh", "jupyter-kernel", "fork-floor")
CALL_LINE = re.compile(r"^\[(alice|bob) #(\d)\] instance=(\S+) uid=(\S+) (cold start \S+|warm) [\d.]+ ms$")


def run_cli(*args: str, timeout: float = 100.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "jupyter_functionai", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or REPO,
    )


def test_version() -> None:
    p = run_cli("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"functionai {__version__}"


def test_unknown_subcommand_is_a_usage_error() -> None:
    p = run_cli("nosuch")
    assert p.returncode == 2
    assert p.stderr.startswith("usage: functionai")
    assert "invalid choice: 'nosuch'" in p.stderr


def test_no_subcommand_is_a_usage_error() -> None:
    p = run_cli()
    assert p.returncode == 2
    assert "usage: functionai" in p.stderr
    assert "a command is required" in p.stderr


def test_unknown_benchmark_is_a_usage_error() -> None:
    p = run_cli("bench", "nosuch")
    assert p.returncode == 2
    assert "usage: functionai bench" in p.stderr
    assert "invalid choice: 'nosuch'" in p.stderr


def test_benchmark_usage_error_passes_through() -> None:
    p = run_cli("bench", "density", "--n", "0")
    assert p.returncode == 2
    assert "usage: density" in p.stderr


def test_missing_benchmarks_dir_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "benchmarks_dir", lambda: tmp_path / "benchmarks")
    assert cli.main(["bench", "coldstart", "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert "benchmark 'coldstart' not found" in err
    assert str(tmp_path / "benchmarks" / "coldstart.py") in err


def test_cli_does_not_import_numpy_or_pandas() -> None:
    code = "import sys, jupyter_functionai.cli, jupyter_functionai.__main__; print(sorted(m for m in ('numpy', 'pandas') if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_demo_shows_two_isolated_sessions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    p = run_cli("demo", "--state-dir", str(state))
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    calls = [CALL_LINE.match(line) for line in out.splitlines()]
    calls = [m for m in calls if m]
    assert [(m[1], m[2]) for m in calls] == [("alice", "1"), ("bob", "1"), ("alice", "2"), ("bob", "2")]
    inst = {who: {m[3] for m in calls if m[1] == who} for who in ("alice", "bob")}
    uids = {who: {m[4] for m in calls if m[1] == who} for who in ("alice", "bob")}
    # one instance per session, kept across its calls; different between sessions
    assert len(inst["alice"]) == 1 and len(inst["bob"]) == 1
    assert inst["alice"] != inst["bob"]
    assert len(uids["alice"]) == 1 and len(uids["bob"]) == 1
    if os.geteuid() == 0:
        assert uids["alice"] != uids["bob"]
        assert all(u.isdigit() for u in uids["alice"] | uids["bob"])
    # first call of each session is a cold start from the warm pool; later ones warm
    assert [m[5] for m in calls] == ["cold start warm-pool", "cold start warm-pool", "warm", "warm"]
    # bob never sees alice's notes (neither through state nor through her file)
    bob_values = [line for line in out.splitlines() if "bob: allergic to nuts" in line]
    assert bob_values and all("alice:" not in line for line in bob_values)
    assert 'notes=["alice: prefers tea", "alice: meeting at 3pm"]' in out
    peek = next(line for line in out.splitlines() if line.strip().startswith("peek at "))
    assert "READABLE" not in peek and "Error" in peek
    assert re.search(r"bob does not see alice's notes\s+yes", out)
    if os.geteuid() == 0:
        assert re.search(r"bob cannot read alice's file\s+yes", out)
        assert re.search(r"different uids\s+yes", out)
    assert "isolation report of session 'alice'" in out
    assert re.search(r"^  namespaces   : .*pid (yes|no)", out, re.M)
    assert re.search(r"^  missing      : ", out, re.M)
    assert "closed sessions alice and bob: " in out
    assert "alice=closed" in out and "bob=closed" in out
    # the state dir given was used (and kept)
    assert (state / "functionai.db").exists()


def test_demo_default_state_dir_is_removed() -> None:
    p = run_cli("demo")
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"demo: state dir (\S+)", p.stdout)
    assert m is not None
    assert not os.path.exists(m[1])


def _numeric(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_bench_coldstart_small_run_writes_all_paths(tmp_path: Path) -> None:
    out = tmp_path / "cs.json"
    p = run_cli("bench", "coldstart", "--n", "3", "--kernel-n", "2", "--warmup", "1", "--json", str(out), timeout=200)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(out.read_text())
    assert set(data["paths"]) == set(COLDSTART_PATHS)
    for name in COLDSTART_PATHS:
        row = data["paths"][name]
        assert row["n"] >= 1, name
        assert _numeric(row["p50_ms"]) and _numeric(row["p95_ms"]), (name, row)
        assert 0 < row["p50_ms"] <= row["p95_ms"], (name, row)
    assert data["paths"]["jupyter-kernel"]["n"] == 2
    assert data["paths"]["fork-floor"]["n"] == 6  # before and after each round
    assert data["paths"]["template-fork"]["isolation"]["namespaces"]
    assert data["paths"]["template-fork-noiso"]["isolation"]["namespaces"] == []
    assert data["paths"]["template-fork"]["isolation"]["disk"] in ("loop", "fuse2fs")
    assert data["paths"]["template-fork-nodisk"]["isolation"]["disk"] is None
    assert data["paths"]["template-fork-warmup"]["isolation"]["namespaces"]
    assert set(data["ratios"]) == {f"{n}/template-fork" for n in COLDSTART_PATHS}
    assert data["ratios"]["template-fork/template-fork"] == {"p50": 1.0, "p95": 1.0}
    assert set(data["goals"]) == {"(b) p50 <= 2x (f) p50", "(b) p95 <= 3x (f) p95", "(e)/(b) p50 >= 80", "(a) p50 <= 1 ms", "metering costs warm-pool p50 <= 2%", "metering costs template-fork p50 <= 2%"}
    for name in COLDSTART_PATHS:
        assert name in p.stdout
    assert re.search(r"\(a\) p50 <= 1 ms\s+(PASS|MISS)", p.stdout)


def test_bench_coldstart_profile_phases_add_up(tmp_path: Path) -> None:
    """``--profile``: each runtime path's phases, from the request to the
    result back at the caller, whose means add up to its mean end to end."""
    out = tmp_path / "cs.json"
    p = run_cli("bench", "coldstart", "--paths", "warm-pool,template-fork", "--n", "3", "--warmup", "1", "--rounds", "1", "--profile", "--json", str(out), timeout=110)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["profile"] is True
    for name in ("warm-pool", "template-fork"):
        phases = data["paths"][name]["phases"]
        assert {"claim", "handler", "back + decode", "store write", "return"} <= set(phases), name
        total = sum(ph["mean_ms"] for ph in phases.values())
        assert math.isclose(total, data["paths"][name]["mean_ms"], abs_tol=0.001 * len(phases)), (name, total, data["paths"][name]["mean_ms"])
        assert f"Phases of ({'a' if name == 'warm-pool' else 'b'}) {name}" in p.stdout


def test_bench_density_small_run(tmp_path: Path) -> None:
    out = tmp_path / "density.json"
    p = run_cli("bench", "density", "--n", "2", "5", "--kernels", "1", "--json", str(out), timeout=110)
    assert p.returncode == 0, p.stdout + p.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [(r["kind"], r.get("state"), r["n"]) for r in runs] == [
        ("session", "after-call", 2),
        ("session", "after-call", 5),
        ("session", "opened", 2),
        ("session", "opened", 5),
        ("jupyter-kernel", None, 1),
    ]
    for r in runs:
        assert r["measured"] == r["n"]
        assert 0 < r["uss_mb_p50"] <= r["rss_mb_p50"]
        assert r["total_mb"] > 0
    for st in ("after-call", "opened"):
        assert f"Goal: 1,000 idle isolated sessions at <= 5 MB USS each, sessions {st}: NOT RUN" in p.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve"], "False"),
        (["serve", "--no-browser"], "False"),
        (["serve", "--browser"], "True"),
        (["serve", "--no-browser", "--browser"], "True"),
        (["lab"], "True"),
        (["lab", "--browser"], "True"),
        (["lab", "--no-browser"], "False"),
        (["lab", "--browser", "--no-browser"], "False"),
    ],
)
def test_serve_argv_gives_open_browser_exactly_once(argv: list[str], expected: str) -> None:
    """Jupyter refuses a repeated option (``open_browser only accepts one value``)."""
    args, extra = cli.build_parser().parse_known_args(argv)
    out = cli.serve_argv(args, extra)
    assert [a for a in out if "open_browser" in a] == [f"--ServerApp.open_browser={expected}"]
    assert len(out) == len(set(out))
