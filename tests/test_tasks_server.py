"""Durable tasks through real ``functionai serve`` processes: the REST API, the
client, the CLI, and a ``kill -9`` of the server in the middle of 200 tasks."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from jupyter_functionai.client import Client
from jupyter_functionai.errors import Conflict, InvalidArgument, InvalidSpec, NotFound

from .test_cli_server import cli, ok, pid_alive, start_server, stop_server, wait_until
from .test_tasks import WORK

FINAL = ("succeeded", "failed", "cancelled", "timed_out")
POLICY = {"concurrency": 8, "backoff_s": 0.05, "max_backoff_s": 0.2, "jitter": 0.5}
STEPS = """
import time

def handler(event, ctx):
    done = (ctx.resume_from or {}).get("done", 0)
    start = done
    for i in range(done, event["n"]):
        time.sleep(event["sleep"])
        ctx.checkpoint({"done": i + 1})
        ctx.progress((i + 1) / event["n"])
    return {"resumed_from": start, "attempt": ctx.attempt}
"""


class _Hook(BaseHTTPRequestHandler):
    got: list[dict[str, Any]]

    def do_POST(self) -> None:
        self.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


def test_rest_client_and_cli(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "home", tmp_path / "data")
    try:
        with Client(srv.url, srv.token) as c:
            c.deploy("work", WORK, memory="256Mi", tasks=POLICY)
            t = c.submit("work", {"x": 4}, session="s1")
            assert t["state"] == "queued" and t["session_id"] == "s1"
            done = c.wait_task(t["id"], timeout=60)
            assert done["state"] == "succeeded" and done["result"]["echo"] == 4 and done["attempts"] == 1
            assert [x["id"] for x in c.tasks("work")] == [t["id"]]
            assert c.task_counts() == {"work": {"succeeded": 1}}
            with pytest.raises(Conflict, match="already succeeded"):
                c.cancel_task(t["id"])
            with pytest.raises(NotFound):
                c.submit("nope", {})
            with pytest.raises(NotFound):
                c.task("t-doesnotexist")
            with pytest.raises(InvalidArgument, match="timeout"):
                c.submit("work", {}, timeout=-5)
            with pytest.raises(InvalidArgument, match="retries"):
                c.submit("work", {}, retries=1000)
            with pytest.raises(InvalidSpec, match="retry_on"):
                c.deploy("bad", WORK, tasks={"retry_on": "timeout"})
            slow = c.submit("work", {"kind": "sleep", "s": 60})
            wait_until(lambda: c.task(slow["id"])["state"] == "running", 30, "the slow task to run")
            assert c.cancel_task(slow["id"])["state"] == "cancelled"
        # the CLI
        p = ok(cli(srv, "submit", "work", "--data", '{"x": 9}', "--wait"))
        assert json.loads(p.stdout)["echo"] == 9
        tid = ok(cli(srv, "submit", "work", "--data", '{"kind": "fail"}', "--retries", "0")).stdout.strip()
        p = cli(srv, "tasks", "wait", tid)
        assert p.returncode == 1 and f"task {tid} is failed after 1 attempt(s): user_exception" in p.stderr
        p = ok(cli(srv, "tasks", "ls", "work"))
        assert tid in p.stdout and "failed" in p.stdout and "cancelled" in p.stdout
        p = cli(srv, "tasks", "cancel", tid)
        assert p.returncode == 1 and "already failed" in p.stderr
        p = cli(srv, "submit", "work", "--timeout", "-1")
        assert p.returncode == 2 and "timeout" in p.stderr
    finally:
        stop_server(srv)


@pytest.mark.timeout(400)
def test_kill_9_mid_way_loses_nothing_and_finishes_nothing_twice(tmp_path: Path) -> None:
    hook = type("Hook", (_Hook,), {"got": []})
    httpd = HTTPServer(("127.0.0.1", 0), hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/done"
    args = ("--FunctionAI.task_lease_s=2",)
    srv = start_server(tmp_path / "home1", tmp_path / "data", args=args)
    srv2 = None
    try:
        with Client(srv.url, srv.token) as c:
            c.deploy("work", WORK, memory="256Mi", tasks={**POLICY, "on_success": url, "on_failure": url})
            c.deploy("steps", STEPS, memory="256Mi", tasks={**POLICY, "on_success": url})
            kinds: dict[str, str] = {}
            for i in range(5):  # a session's tasks: its state must survive the kill
                kinds[c.submit("work", {"x": i}, session="keep")["id"]] = "session"
            for i in range(195):
                if i % 5 == 0:
                    t = c.submit("steps", {"n": 8, "sleep": 0.25})
                    kinds[t["id"]] = "long"
                elif i % 5 == 1:
                    t = c.submit("work", {"kind": "flaky", "until": 2}, retries=2)
                    kinds[t["id"]] = "flaky"
                elif i % 5 == 2 and i % 2 == 0:
                    t = c.submit("work", {"kind": "fail"}, retries=1)
                    kinds[t["id"]] = "doomed"
                else:
                    t = c.submit("work", {"x": i})
                    kinds[t["id"]] = "quick"

            seen: dict[str, int] = {}  # long task -> the step its checkpoint had reached

            def midway() -> bool:
                rows = c.tasks(limit=1000)
                states = Counter(r["state"] for r in rows)
                long_running = [r for r in rows if r["function"] == "steps" and r["state"] == "running" and r["has_checkpoint"]]
                seen.clear()
                seen.update({r["id"]: 0 for r in long_running})
                return states["succeeded"] >= 20 and len(long_running) >= 3

            wait_until(midway, 120, "a server half-way through its tasks")
            for tid in seen:
                seen[tid] = (c.task(tid)["checkpoint"] or {}).get("done", 0)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        # the restarted server finds every task where it was
        restarted = time.time()
        srv2 = start_server(tmp_path / "home2", tmp_path / "data", args=args)
        with Client(srv2.url, srv2.token) as c:
            def all_final() -> bool:
                return all(r["state"] in FINAL for r in c.tasks(limit=1000))

            wait_until(all_final, 240, "every task to finish after the restart")
            rows = {r["id"]: c.task(r["id"]) for r in c.tasks(limit=1000)}
            # the session comes back resumable, its state as its finished calls left it
            last = c.wait_task(c.submit("work", {"x": 99}, session="keep")["id"], timeout=60)
            assert last["state"] == "succeeded" and last["result"]["n"] == 6, last
        assert set(rows) == set(kinds)  # none lost
        resumed = 0
        for tid, row in rows.items():
            kind, outcomes = kinds[tid], [a["outcome"] for a in row["attempt_history"]]
            assert outcomes.count("succeeded") <= 1 and len(outcomes) == row["attempts"], (kind, row)
            if kind == "doomed":
                assert row["state"] == "failed" and row["attempts"] >= 2 and row["error"]["kind"] in ("user_exception", "instance_crashed"), row
            else:
                assert row["state"] == "succeeded", (kind, row)
            if kind == "long":
                if "lost" in outcomes:  # it ran at the kill: the retry went on from its last checkpoint
                    assert row["result"]["attempt"] == row["attempts"] and row["result"]["resumed_from"] >= seen.get(tid, 0), (seen.get(tid), row)
                    resumed += row["result"]["resumed_from"] > 0
                else:
                    assert row["result"] == {"resumed_from": 0, "attempt": 1}, row
            if kind == "session":
                assert row["result"]["n"] == int(row["event"]["x"]) + 1, row  # in order, state kept
            if kind == "quick":
                assert row["result"]["echo"] is not None
        assert resumed >= 1 and any("lost" in [a["outcome"] for a in rows[t]["attempt_history"]] for t in seen), seen
        # destinations: never twice for one task (at-least-once execution, one recorded outcome)
        after = {k for k, r in rows.items() if r["finished_at"] >= restarted}
        wait_until(lambda: after <= {g["task_id"] for g in hook.got}, 30, "the destinations of the tasks finished after the restart")
        counts = Counter(g["task_id"] for g in hook.got)
        assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
        assert all(rows[g["task_id"]]["state"] == g["state"] for g in hook.got if g["task_id"] != last["id"])
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
        if srv2 is not None:
            stop_server(srv2)
        httpd.shutdown()
        httpd.server_close()
        # sandboxes orphaned by the kill end once their sockets close
        orphans = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_ours(int(p), tmp_path)]
        deadline = time.monotonic() + 30
        while orphans and time.monotonic() < deadline:
            orphans = [p for p in orphans if pid_alive(p)]
            time.sleep(0.1)


def _is_ours(pid: int, tmp_path: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f, open(f"/proc/{pid}/environ", "rb") as e:
            return b"jupyter_functionai.sandbox" in f.read() and str(tmp_path).encode() in e.read()
    except OSError:
        return False
