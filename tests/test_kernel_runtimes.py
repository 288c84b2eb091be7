"""Sandbox kernels started where no ``functionai serve`` is named: inside a
real Jupyter server with the extension (the provisioner uses that server's
own runtime, and a browser-style websocket reaches the kernel), and in a
plain process (an embedded runtime). No mocks."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

from jupyter_functionai import embedded
from jupyter_functionai.kernel.control import ClientControl, RuntimeControl

from .test_cli_server import base_env, pid_alive, wait_until

REPO = Path(__file__).resolve().parent.parent
KERNEL = "functionai-sandbox"


@pytest.fixture
def sandbox_kernelspec(jp_kernel_dir: Any) -> str:
    """The repository's kernelspec, where the test server looks for kernelspecs."""
    shutil.copytree(REPO / "kernels" / KERNEL, Path(jp_kernel_dir) / KERNEL)
    return KERNEL


async def _execute(ws: Any, code: str) -> tuple[str, dict[str, Any]]:
    """Run ``code`` over a kernel websocket the way JupyterLab does: stdout and the reply."""
    msg_id = uuid.uuid4().hex
    await ws.write_message(
        json.dumps(
            {
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False},
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    out, reply = [], None
    while reply is None or not out:
        raw = await ws.read_message()
        assert raw is not None, "the websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "execute_reply":
            reply = msg["content"]
            if reply["status"] != "ok":
                break
    return "".join(out), reply


async def test_kernel_in_a_jupyter_server_uses_its_runtime(jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, sandbox_kernelspec: str) -> None:
    r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": sandbox_kernelspec}))
    kid = json.loads(r.body)["id"]
    sid = f"kernel-{kid}"
    km = jp_serverapp.kernel_manager.get_kernel(kid)
    assert isinstance(km.provisioner._control, RuntimeControl)  # the server's own runtime, no HTTP
    ws = await jp_ws_fetch("api", "kernels", kid, "channels")
    try:
        out, reply = await _execute(ws, "import os\nprint(os.environ['FUNCTIONAI_SESSION_ID'], os.getcwd())")
        assert reply is not None and reply["status"] == "ok", (out, reply)
        session, cwd = out.split()
        assert session == sid and cwd == km.provisioner.workdir
        # its magics reach this server, through the kernel's relay, with no token of the server
        code = (
            "import os\nfrom jupyter_functionai.connect import connect\n"
            f"print(connect().functions()[0]['name'], {jp_serverapp.identity_provider.token!r} in str(os.environ))"
        )
        out, reply = await _execute(ws, code)
        assert reply is not None and reply["status"] == "ok", (out, reply)
        assert out.split() == ["kernel-sandbox", "False"], out
    finally:
        ws.close()
    # the Sessions panel's data: the kernel's session, live, with its instance; its cold start
    r = await jp_fetch("functionai", "api", "sessions", params={"function": "kernel-sandbox"})
    listed = {s["id"]: s for s in json.loads(r.body)}
    assert listed[sid]["status"] == "live" and listed[sid]["instance"]["pid"]
    inst_pid = listed[sid]["instance"]["pid"]
    r = await jp_fetch("functionai", "api", "coldstarts", params={"function": "kernel-sandbox"})
    assert [c["session_id"] for c in json.loads(r.body)] == [sid]

    await jp_fetch("api", "kernels", kid, method="DELETE")
    r = await jp_fetch("functionai", "api", "sessions", sid)
    assert json.loads(r.body)["status"] == "closed"
    wait_until(lambda: not pid_alive(inst_pid), 10, "the kernel's sandbox to exit")


def test_kernel_without_a_server_runs_in_an_embedded_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith(("FUNCTIONAI_", "JUPYTER_"))]:
        monkeypatch.delenv(key)
    env = base_env(tmp_path / "jupyter")  # an empty runtime dir: no running server to find
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        monkeypatch.setenv(var, env[var])
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("FUNCTIONAI_DATA_DIR", str(tmp_path / "fai"))
    km, kc = start_new_kernel(kernel_name=KERNEL, startup_timeout=60)
    try:
        control = km.provisioner._control
        assert isinstance(control, ClientControl) and "embedded runtime" in control.where
        sid = km.provisioner.session_id
        reply = kc.execute_interactive("x = 6 * 7", timeout=30)
        assert reply["content"]["status"] == "ok"
        assert str(tmp_path / "fai" / "embedded") in km.provisioner.workdir
        rt_client = embedded.shared_client()
        assert rt_client.session(sid)["status"] == "live"
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    try:
        assert rt_client.session(sid)["status"] == "closed"
    finally:
        rt_client.close()
