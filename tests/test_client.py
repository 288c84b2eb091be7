"""``Client`` and ``AsyncClient`` against a real Jupyter server with the
extension (pytest-jupyter; base URL ``/a%40b/``, token authentication).

The async tests run on pytest-jupyter's loop (no asyncio mark).  The sync
``Client`` blocks its thread, so it runs in a worker thread
(``asyncio.to_thread``) while the server keeps serving on the loop.
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import pytest

from jupyter_functionai import (
    FunctionAIError,
    FunctionTimeout,
    InvalidArgument,
    InvalidSpec,
    NotFound,
    SessionClosed,
    UserError,
)
from jupyter_functionai.client import (
    AsyncClient,
    BadResponse,
    Client,
    InvokeResponse,
    NoServer,
    RequestTimeout,
    Unauthorized,
)

ECHO = (
    "def handler(event, ctx):\n"
    "    ctx.session.state['n'] = ctx.session.state.get('n', 0) + 1\n"
    "    print('echo got', event)\n"
    "    if event == 'boom':\n"
    "        raise KeyError('missing thing')\n"
    "    if event == 'loop':\n"
    "        while True:\n"
    "            pass\n"
    "    return {'event': event, 'n': ctx.session.state['n']}\n"
)
COLD = re.compile(r"(warm-pool|template-fork|fresh);ms=[0-9.]+")


@pytest.fixture
def server(jp_serverapp, http_server_client, jp_http_port, jp_base_url, jp_auth_header, monkeypatch) -> dict[str, str]:
    for var in ("FUNCTIONAI_URL", "FUNCTIONAI_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    scheme, _, token = jp_auth_header["Authorization"].partition(" ")
    assert scheme == "token" and token
    return {"url": f"http://127.0.0.1:{jp_http_port}{jp_base_url}", "token": token}


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# -- AsyncClient -------------------------------------------------------------------------------


async def test_async_deploy_invoke_and_affinity(server):
    fai = AsyncClient(server["url"], server["token"])
    assert (await fai.health())["status"] == "ok"
    v1 = await fai.deploy("echo", ECHO, timeout=10, memory="256Mi", description="echo")
    assert v1["version"] == 1 and v1["spec"]["resources"]["memory_mb"] == 256 and v1["spec"]["timeout_s"] == 10.0
    assert [f["name"] for f in await fai.functions()] == ["echo"]

    a1 = await fai.invoke("echo", {"x": 1}, session="A")
    a2 = await fai.invoke("echo", "y", session="A")
    b1 = await fai.invoke("echo", [1, 2], session="B")
    assert isinstance(a1, InvokeResponse) and a1.status == 200
    assert (a1.value, a2.value, b1.value) == ({"event": {"x": 1}, "n": 1}, {"event": "y", "n": 2}, {"event": [1, 2], "n": 1})
    assert a1.session_id == a2.session_id == "A" and b1.session_id == "B"
    assert a1.instance_id == a2.instance_id != b1.instance_id
    assert a1.cold_start is not None and COLD.fullmatch(a1.cold_start)
    assert a2.cold_start is None
    assert a1.headers["X-Functionai-Instance-Id"] == a1.instance_id

    # no session given: the server assigns one, and it sticks when sent back
    anon = await fai.invoke("echo")
    assert anon.value == {"event": None, "n": 1} and anon.session_id and anon.session_id.startswith("s-")
    again = await fai.invoke("echo", session=anon.session_id)
    assert again.value["n"] == 2 and again.instance_id == anon.instance_id

    sessions = {s["id"]: s for s in await fai.sessions("echo")}
    assert {"A", "B", anon.session_id} <= set(sessions) and sessions["A"]["calls"] == 2
    assert (await fai.session("A"))["instance"]["id"] == a1.instance_id
    opened = await fai.open_session("echo", "early")
    assert opened["status"] == "live" and opened["calls"] == 0
    assert (await fai.invoke("echo", 1, session="early")).instance_id == opened["instance"]["id"]

    await fai.close_session("A")
    with pytest.raises(SessionClosed) as closed:
        await fai.invoke("echo", 1, session="A")
    assert closed.value.status == 404 and closed.value.kind == "session_closed"

    starts = await fai.coldstarts("echo", limit=50)
    assert {c["session_id"] for c in starts} >= {"A", "B"} and all(c["function"] == "echo" for c in starts)
    logs = await fai.invocations("echo", session="B")
    assert len(logs) == 1 and "echo got [1, 2]" in logs[0]["logs"] and logs[0]["outcome"] == "ok"
    assert any(i["session_id"] == "B" for i in await fai.instances())
    assert "/functionai/invoke/{name}" in (await fai.openapi())["paths"]


async def test_async_versions_rollback_delete(server):
    fai = AsyncClient(server["url"], server["token"])
    await fai.deploy("ver", "def handler(e, ctx):\n    return 1\n")
    await fai.deploy("ver", "def main(e, ctx):\n    return 2\n", handler="main", session=False)
    assert [v["version"] for v in await fai.versions("ver")] == [1, 2]
    assert (await fai.invoke("ver")).value == 2
    assert (await fai.rollback("ver", 1))["version"] == 1
    assert (await fai.function("ver"))["version"] == 1
    assert (await fai.invoke("ver")).value == 1
    with pytest.raises(NotFound):
        await fai.rollback("ver", 9)
    await fai.delete("ver")
    with pytest.raises(NotFound) as gone:
        await fai.versions("ver")
    assert gone.value.status == 404


async def test_async_errors_map_to_their_classes(server, tmp_path):
    fai = AsyncClient(server["url"], server["token"])
    await fai.deploy("echo", ECHO, timeout=1.0)
    with pytest.raises(NotFound) as nf:
        await fai.invoke("nosuch", 1)
    assert nf.value.kind == "not_found" and nf.value.status == 404

    with pytest.raises(UserError) as ue:
        await fai.invoke("echo", "boom", session="e1")
    assert ue.value.status == 422 and "KeyError" in ue.value.message
    assert "raise KeyError('missing thing')" in ue.value.details["traceback"]
    assert ue.value.details["type"] == "KeyError"

    with pytest.raises(FunctionTimeout) as to:
        await fai.invoke("echo", "loop", session="e2")
    assert to.value.status == 504

    with pytest.raises(InvalidArgument) as ia:
        await fai.invoke("echo", 1, session="bad session!")
    assert ia.value.status == 400

    # a bad spec fails here, before any request (this client's server does not exist)
    offline = AsyncClient(closed_url(), "t")
    with pytest.raises(InvalidSpec) as bad:
        await offline.deploy("x y", ECHO)
    assert bad.value.field == "name"
    with pytest.raises(InvalidSpec) as bad:
        await offline.deploy("ok", "def handler(e, ctx):\n    return (\n")
    assert bad.value.field == "source.code"
    with pytest.raises(InvalidSpec) as bad:
        await offline.deploy("ok", ECHO, memory="lots")
    assert bad.value.field == "resources.memory_mb"
    with pytest.raises(InvalidSpec):
        await offline.deploy("ok", file=tmp_path / "missing.py")
    with pytest.raises(InvalidArgument):
        await offline.deploy("ok")
    with pytest.raises(NoServer) as ns:
        await offline.health()
    assert isinstance(ns.value, ConnectionError) and "functionai serve" in str(ns.value)

    # the module raising at import is the server's 422 user_exception at deploy
    with pytest.raises(UserError) as top:
        await fai.deploy("broken", "raise ValueError('top')\ndef handler(e, c):\n    return 1\n")
    assert "top" in top.value.message
    assert [f["name"] for f in await fai.functions()] == ["echo"]


async def test_async_unauthorized_and_keys(server):
    wrong = AsyncClient(server["url"], "wrong")
    with pytest.raises(Unauthorized) as un:
        await wrong.functions()
    assert un.value.kind == "unauthorized" and un.value.status == 401 and isinstance(un.value, FunctionAIError) and "token" in str(un.value)
    with pytest.raises(Unauthorized):
        await wrong.invoke("echo", 1)

    fai = AsyncClient(server["url"], server["token"])
    await fai.deploy("echo", ECHO)
    await fai.deploy("other", ECHO)
    made = await fai.create_key("echo", note="ci")
    assert made["key"].startswith("fai_") and made["function"] == "echo"
    listed = await fai.keys("echo")
    assert [k["id"] for k in listed] == [made["id"]] and listed[0]["note"] == "ci" and "key" not in listed[0]
    assert await fai.keys("other") == []

    keyed = AsyncClient(server["url"], made["key"])  # sent as Authorization: Bearer fai_...
    assert (await keyed.invoke("echo", 7, session="k")).value == {"event": 7, "n": 1}
    with pytest.raises(Unauthorized) as scoped:
        await keyed.invoke("other", 7)
    assert "not 'other'" in str(scoped.value)
    with pytest.raises(Unauthorized):
        await keyed.functions()
    await fai.revoke_key(made["id"])
    with pytest.raises(Unauthorized):
        await keyed.invoke("echo", 7)
    with pytest.raises(NotFound):
        await fai.revoke_key(made["id"])
    with pytest.raises(NotFound):
        await fai.create_key("nosuch")


async def test_async_client_without_the_extension_route(server):
    fai = AsyncClient(server["url"].rstrip("/") + "/not-functionai/", server["token"])
    with pytest.raises(BadResponse) as br:
        await fai.health()
    assert br.value.status == 404 and "extension" in str(br.value)


async def test_async_discovery_from_env_and_runtime_file(server, monkeypatch, tmp_path):
    # the runtime file pytest-jupyter's server wrote (JUPYTER_RUNTIME_DIR is its own)
    found = AsyncClient()
    assert (await found.health())["status"] == "ok"
    assert f":{server['url'].split(':')[2].split('/')[0]}/a%40b/" in await found.get_url()

    monkeypatch.setenv("FUNCTIONAI_URL", server["url"])
    monkeypatch.setenv("FUNCTIONAI_TOKEN", server["token"])
    assert (await AsyncClient().health())["status"] == "ok"
    monkeypatch.setenv("FUNCTIONAI_TOKEN", "wrong")
    with pytest.raises(Unauthorized):
        await AsyncClient().health()
    # explicit arguments win over the environment
    assert (await AsyncClient(server["url"], server["token"]).health())["status"] == "ok"

    monkeypatch.delenv("FUNCTIONAI_URL")
    monkeypatch.delenv("FUNCTIONAI_TOKEN")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "no-servers"))
    with pytest.raises(NoServer) as ns:
        await AsyncClient().health()
    assert str(ns.value) == "no running functionai server found: start one with `functionai serve` or set FUNCTIONAI_URL and FUNCTIONAI_TOKEN"
    assert ns.value.kind == "no_server"


# -- the sync Client (in a worker thread) ---------------------------------------------------------


def _sync_flow(url: str, token: str) -> dict[str, Any]:
    with Client(url, token) as fai:
        out: dict[str, Any] = {"health": fai.health()}
        out["deploy"] = fai.deploy("echo", ECHO, timeout=5)
        out["calls"] = [fai.invoke("echo", i, session=s) for i, s in ((1, "A"), (2, "A"), (3, "B"))]
        try:
            fai.invoke("echo", "boom", session="A")
        except FunctionAIError as exc:
            out["boom"] = exc
        try:
            fai.invoke("nosuch")
        except FunctionAIError as exc:
            out["nosuch"] = exc
        out["sessions"] = fai.sessions("echo")
        fai.close_session("B")
        try:
            fai.invoke("echo", 4, session="B")
        except FunctionAIError as exc:
            out["closed"] = exc
        key = fai.create_key("echo")
        out["keyed"] = Client(url, key["key"]).invoke("echo", 5, session="K")
        fai.revoke_key(key["id"])
        out["keys"] = fai.keys()
        out["invocations"] = fai.invocations("echo", session="A", limit=10)
        out["coldstarts"] = fai.coldstarts("echo")
        return out


async def test_sync_client_in_a_thread(server):
    out = await asyncio.to_thread(_sync_flow, server["url"], server["token"])
    assert out["health"]["status"] == "ok" and out["deploy"]["version"] == 1
    a1, a2, b1 = out["calls"]
    assert [c.value for c in out["calls"]] == [{"event": 1, "n": 1}, {"event": 2, "n": 2}, {"event": 3, "n": 1}]
    assert a1.instance_id == a2.instance_id != b1.instance_id
    assert a1.cold_start and COLD.fullmatch(a1.cold_start) and a2.cold_start is None
    assert type(out["boom"]) is UserError and "raise KeyError('missing thing')" in out["boom"].details["traceback"]
    assert type(out["nosuch"]) is NotFound and out["nosuch"].status == 404
    assert type(out["closed"]) is SessionClosed
    assert {s["id"] for s in out["sessions"]} == {"A", "B"}
    assert out["keyed"].value == {"event": 5, "n": 1}
    assert out["keys"][0]["revoked_at"] is not None
    assert [i["outcome"] for i in out["invocations"]] == ["error", "ok", "ok"]
    assert out["invocations"][0]["error_kind"] == "user_exception" and "echo got boom" in out["invocations"][0]["logs"]
    assert {c["session_id"] for c in out["coldstarts"]} >= {"A", "B"}


def _sync_errors(url: str, token: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, client in (("wrong", Client(url, "wrong")), ("offline", Client(closed_url(), "t"))):
        try:
            client.functions()
        except FunctionAIError as exc:
            out[name] = exc
    try:
        Client(closed_url(), "t").deploy("x y", ECHO)
    except FunctionAIError as exc:
        out["spec"] = exc
    found = Client()  # the runtime file of the test server
    out["found_url"] = found.url
    out["found_health"] = found.health()
    return out


def _sync_no_server() -> FunctionAIError:
    try:
        Client().health()
    except FunctionAIError as exc:
        return exc
    raise AssertionError("a server was found")


async def test_sync_client_errors_and_discovery(server, monkeypatch, tmp_path, jp_http_port):
    out = await asyncio.to_thread(_sync_errors, server["url"], server["token"])
    assert type(out["wrong"]) is Unauthorized and isinstance(out["wrong"], PermissionError)
    assert type(out["offline"]) is NoServer and "Connection refused" in str(out["offline"])
    assert type(out["spec"]) is InvalidSpec and out["spec"].field == "name"
    assert f":{jp_http_port}/a%40b/" in out["found_url"] and out["found_health"]["status"] == "ok"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "empty"))
    none = await asyncio.to_thread(_sync_no_server)
    assert type(none) is NoServer and str(none).startswith("no running functionai server found: start one with")


async def test_request_timeout_on_a_server_that_never_answers():
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(RequestTimeout) as a:
            await AsyncClient(url, "t", timeout=0.3).health()
        with pytest.raises(RequestTimeout) as s:
            await asyncio.to_thread(Client(url, "t", timeout=0.3).invoke, "f", 1)
    assert isinstance(a.value, TimeoutError) and isinstance(s.value, TimeoutError)
    assert a.value.kind == s.value.kind == "request_timeout"


def test_importing_the_package_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, jupyter_functionai as f\n"
        "assert f.Client.__name__ == 'Client' and f.AsyncClient.__name__ == 'AsyncClient'\n"
        "print(sorted(m for m in ('tornado', 'httpx', 'jupyter_server', 'sqlalchemy') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
