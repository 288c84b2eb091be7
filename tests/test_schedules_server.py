"""Schedules and runs through a real ``functionai serve``: REST, the CLI, a
schedule firing in real time, and ``kill -9`` of the server during runs and
during a schedule's fires."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import nbformat

from jupyter_functionai.client import Client
from jupyter_functionai.errors import InvalidArgument

from .test_cli_server import Server, cli, ok, start_server, stop_server, wait_until
from .test_runs import notebook

FINAL = ("succeeded", "failed", "cancelled", "timed_out")


def post(server: Server, path: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{server.url}/functionai/api/{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_schedules_and_runs_through_rest_and_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "root"
    notebook(root / "jobs" / "report.ipynb", "print('report', x)")
    srv = start_server(tmp_path / "home", tmp_path / "data", args=(f"--ServerApp.root_dir={root}",))
    try:
        fai = Client(srv.url, srv.token)
        # a bad cron string: 400 naming the field; nothing created
        code, err = post(srv, "schedules", {"notebook": "jobs/report.ipynb", "cron": "0 25 * * *"})
        assert code == 400 and err["error"]["kind"] == "invalid_argument" and err["error"]["field"] == "cron", err
        code, err = post(srv, "schedules", {"notebook": "../x.ipynb", "cron": "0 6 * * *"})
        assert code == 400 and "outside the root" in err["error"]["message"]
        code, err = post(srv, "schedules", {"notebook": "jobs/none.ipynb", "cron": "0 6 * * *"})
        assert code == 404
        assert fai.schedules() == []

        added = ok(cli(srv, "schedule", "add", "jobs/report.ipynb", "--cron", "30 6 * * 1-5", "--tz", "Europe/Paris", "-p", "x", "3",
                       "--tag", "daily", "--html", "--name", "morning report", "--json"))
        sched = json.loads(added.stdout)
        assert sched["timezone"] == "Europe/Paris" and sched["parameters"] == {"x": 3} and sched["enabled"] is True
        assert all(t.endswith(("+01:00", "+02:00")) and "T06:30:00" in t for t in sched["next_fire_times"])
        listed = ok(cli(srv, "schedule", "ls")).stdout
        assert sched["id"] in listed and "morning report" in listed and "30 6 * * 1-5" in listed
        assert "paused" in ok(cli(srv, "schedule", "pause", sched["id"])).stdout
        assert fai.schedule(sched["id"])["next_fire_at"] is None
        code, err = post(srv, f"schedules/{sched['id']}/frobnicate", {})
        assert code == 404 and err["error"]["kind"] == "not_found" and "run, pause or resume" in err["error"]["message"]
        assert "paused" not in ok(cli(srv, "schedule", "resume", sched["id"])).stdout
        # idempotent create: the same token, the same schedule
        code, again = post(srv, "schedules", {"notebook": "jobs/report.ipynb", "cron": "0 0 * * *", "idempotency_token": "tok-1"})
        code2, same = post(srv, "schedules", {"notebook": "jobs/report.ipynb", "cron": "0 0 * * *", "idempotency_token": "tok-1"})
        assert (code, code2) == (201, 200) and same["id"] == again["id"]
        changed = fai.update_schedule(again["id"], cron="15 * * * *", enabled=False)
        assert changed["cron"] == "15 * * * *" and changed["enabled"] is False
        try:
            fai.update_schedule(again["id"], overlap="never")
            raise AssertionError("a bad overlap was accepted")
        except InvalidArgument as exc:
            assert exc.details.get("field") == "overlap"

        # run now, then follow, download and delete the run
        run_id = ok(cli(srv, "schedule", "run-now", sched["id"])).stdout.strip()
        done = fai.wait_run(run_id, timeout=120)
        assert done["state"] == "succeeded" and done["schedule_id"] == sched["id"] and done["tags"] == ["daily"] and done["name"] == "morning report"
        assert done["cold_start"] is not None and done["cold_start"]["path"] in ("warm-pool", "template-fork", "fresh")
        assert [r["id"] for r in fai.schedule_runs(sched["id"])] == [run_id]
        assert run_id in ok(cli(srv, "runs", "ls", "--schedule", sched["id"])).stdout
        assert run_id in ok(cli(srv, "runs", "ls", "--tag", "daily")).stdout
        saved = tmp_path / "out.html"
        ok(cli(srv, "runs", "download", run_id, "--format", "html", "-o", str(saved)))
        assert "report 3" in saved.read_text()
        # the outputs are ordinary files under the root: the contents API and /files serve them
        for fmt, rel in done["outputs"].items():
            req = urllib.request.Request(f"{srv.url}/api/contents/{rel}?content=0", headers={"Authorization": f"token {srv.token}"})
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as resp:
                assert resp.status == 200 and json.loads(resp.read())["type"] == ("notebook" if fmt == "ipynb" else "file")
        executed = nbformat.reads(fai.run_output(run_id, "ipynb").decode(), as_version=4)
        assert any("report 3" in o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
        ok(cli(srv, "runs", "rm", run_id))
        assert not (root / "functionai-runs" / run_id).exists() and fai.schedule_runs(sched["id"]) == []
        ok(cli(srv, "schedule", "rm", sched["id"]))
        assert "no schedules" not in ok(cli(srv, "schedule", "ls")).stdout  # the idempotent one is left
        assert sched["id"] not in ok(cli(srv, "schedule", "ls")).stdout
        assert cli(srv, "schedule", "show", sched["id"]).returncode == 1  # not found
    finally:
        stop_server(srv)


def test_a_schedule_fires_in_real_time_within_a_second(tmp_path: Path) -> None:
    root = tmp_path / "root"
    notebook(root / "tick.ipynb", "print('tick', x)")
    srv = start_server(tmp_path / "home", tmp_path / "data", args=(f"--ServerApp.root_dir={root}",))
    try:
        fai = Client(srv.url, srv.token)
        # a server that has finished starting (its run function deployed, its warm kernel up)
        assert fai.wait_run(fai.start_run("tick.ipynb")["id"], timeout=60)["state"] == "succeeded"
        sched = fai.create_schedule("tick.ipynb", "* * * * * */2", parameters={"x": 1})  # every 2 s (croniter's seconds field, last)
        wait_until(lambda: len(fai.schedule_runs(sched["id"])) >= 2, 30, "two fires of a 2-second schedule")
        fai.pause_schedule(sched["id"])
        fired = fai.schedule_runs(sched["id"])
        for run in fired:
            lag = run["created_at"] - run["scheduled_for"]
            assert 0 <= lag < 1.0, (lag, run)
        assert len({r["scheduled_for"] for r in fired}) == len(fired)
        for run in fired:
            assert fai.wait_run(run["id"], timeout=60)["state"] == "succeeded"
    finally:
        stop_server(srv)


def test_kill_9_during_runs_and_during_a_schedules_fires(tmp_path: Path) -> None:
    """A run in progress is retried after the restart and succeeds; a schedule
    firing every 2 s through kills never fires a time twice, and its fire
    count is exactly its runs."""
    root = tmp_path / "root"
    notebook(root / "slow.ipynb", "import time\ntime.sleep(s)\nprint('slept', s)", params="s = 1")
    args = (f"--ServerApp.root_dir={root}", "--FunctionAI.task_lease_s=1", "--FunctionAI.schedule_grace_s=1")
    srv = start_server(tmp_path / "home", tmp_path / "data", args=args)
    srv2 = None
    try:
        fai = Client(srv.url, srv.token)
        long_run = fai.start_run("slow.ipynb", {"s": 4}, retries=2, name="long")
        sched = fai.create_schedule("slow.ipynb", "* * * * * */2", parameters={"s": 0.5}, overlap="allow", catch_up="latest")
        wait_until(lambda: fai.run(long_run["id"])["state"] == "running" and len(fai.schedule_runs(sched["id"])) >= 2, 60, "a run under way and two fires")
        for _ in range(2):  # kill it twice: once during a run, once more after the restart's catch-up
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait()
            # down while a cron time passes (every 2 s): a time for the restart to catch up
            next_time = (int(time.time()) // 2 + 1) * 2
            wait_until(lambda t=next_time: time.time() > t + 1.2, 10, "a cron time to pass while the server is down")
            srv = srv2 = start_server(tmp_path / "home", tmp_path / "data", args=args)
            fai = Client(srv.url, srv.token)
            seen = len(fai.schedule_runs(sched["id"]))
            wait_until(lambda c=fai, n=seen: len(c.schedule_runs(sched["id"])) >= n + 1, 30, "the schedule to fire again after the restart")
        fai.pause_schedule(sched["id"])
        done = fai.wait_run(long_run["id"], timeout=120)
        assert done["state"] == "succeeded" and done["attempts"] >= 2, done  # the lost attempt counted, then it went on
        runs = fai.schedule_runs(sched["id"], limit=1000)
        wait_until(lambda: all(fai.run(r["id"])["state"] in FINAL for r in runs), 120, "every scheduled run to end")
        times = Counter(r["scheduled_for"] for r in runs)
        assert max(times.values()) == 1, [t for t, n in times.items() if n > 1]  # never twice for one time
        assert fai.schedule(sched["id"])["fired"] == len(runs)  # every fire recorded is a run, and only those
        # every cron time from the first to the last dealt with is accounted for exactly once:
        # a run (on time, or the newest missed one caught up after a restart), or counted missed;
        # none is lost in a kill, none doubled (whatever the machine's load made late)
        s = fai.schedule(sched["id"])
        first = (int(sched["created_at"]) // 2 + 1) * 2  # the first cron time after its creation
        due = len(range(first, int(s["last_fire_at"]) + 1, 2))
        assert s["fired"] + s["missed"] + s["skipped"] == due, (s, due)
        assert s["missed"] >= 1, s  # the kills' downtimes passed cron times (each restart caught up the newest)
        states = Counter(fai.run(r["id"])["state"] for r in runs)
        assert set(states) <= {"succeeded", "failed"} and states["succeeded"] >= len(runs) - 4, states  # at most the ones cut by the kills fail
    finally:
        for s in (srv, srv2):
            if s is not None and s.proc.poll() is None:
                stop_server(s)
