"""Sessions are bound to the principal that opened them (V9): a function key
reaches only the sessions it opened, on the gateway and on MCP alike (another
principal's session is 404, as an unknown one); the server's owner (its token,
a Jupyter login) owns every session on the gateway; the runtime session behind
an MCP session is no function key's. And the MCP endpoint validates Origin."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from jupyter_functionai.errors import NotFound

from .test_server import ECHO, api, deploy  # noqa: F401  (api is a fixture)

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
REMEMBER = {
    "name": "remember",
    "code": "def remember(note, ctx):\n    ctx.session.state.setdefault('notes', []).append(note)\n    return list(ctx.session.state['notes'])\n",
    "handler": "remember",
    "ctx_param": "ctx",
    "input_schema": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]},
}


@pytest.fixture
def base(jp_http_port: int, jp_base_url: str) -> str:
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"


async def fetch(url: str, method: str = "POST", headers: dict[str, str] | None = None, body: Any = None) -> HTTPResponse:
    data = None if body is None else json.dumps(body)
    req = HTTPRequest(url, method=method, headers=headers or {}, body=data, allow_nonstandard_methods=True)
    return await AsyncHTTPClient().fetch(req, raise_error=False)


async def new_key(api: Any, function: str) -> str:  # noqa: F811
    code, body = await api("functionai", "api", "keys", method="POST", body={"function": function})
    assert code == 201, body
    return str(body["key"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_key_reaches_only_the_sessions_it_opened(api, base, jp_auth_header):  # noqa: F811
    await deploy(api, "echo", ECHO)
    a, b = await new_key(api, "echo"), await new_key(api, "echo")
    url = base + "/functionai/invoke/echo"

    async def call(auth: dict[str, str], session: str, accept: str = "application/json") -> HTTPResponse:
        return await fetch(url, headers={**auth, "X-Functionai-Session-Id": session, "Accept": accept}, body={"x": 1})

    r = await call(bearer(a), "alice")
    assert r.code == 200 and json.loads(r.body)["n"] == 1, r.body
    for accept in ("application/json", "text/event-stream"):  # plain and streamed alike
        r = await call(bearer(b), "alice", accept)
        assert r.code == 404, (accept, r.code, r.body)
        assert json.loads(r.body)["error"]["kind"] == "not_found"
    r = await call(bearer(a), "alice")
    assert r.code == 200 and json.loads(r.body)["n"] == 2  # B never reached it
    # the owner (the server's token) owns every session
    r = await call(dict(jp_auth_header), "alice")
    assert r.code == 200 and json.loads(r.body)["n"] == 3
    # a session the owner opened is no key's
    r = await call(dict(jp_auth_header), "owned")
    assert r.code == 200
    r = await call(bearer(a), "owned")
    assert r.code == 404
    # a closed session of another key is 404 too (not "closed")
    code, _ = await api("functionai", "api", "sessions", "alice", method="DELETE")
    assert code == 204
    r = await call(bearer(b), "alice")
    assert r.code == 404 and "not found" in json.loads(r.body)["error"]["message"]
    # the REST API (the owner) lists them all, with who opened each
    code, rows = await api("functionai", "api", "sessions")
    principals = {s["id"]: s["principal"] for s in rows}
    assert principals["alice"] == "key:" + a.split("_")[1] and principals["owned"] is None


async def test_the_runtime_session_behind_an_mcp_session_is_no_keys(api, base, jp_auth_header):  # noqa: F811
    code, body = await api("functionai", "api", "mcp", "servers", "notes", "tools", "remember", method="PUT", body=REMEMBER)
    assert code == 200, body
    code, body = await api("functionai", "api", "keys", method="POST", body={"function": "mcp:notes"})
    mcp_a = body["key"]
    code, body = await api("functionai", "api", "keys", method="POST", body={"function": "mcp:notes"})
    mcp_b = body["key"]
    url = base + "/functionai/mcp/notes/mcp"
    r = await fetch(url, headers={**ACCEPT, **bearer(mcp_a)}, body=INIT)
    assert r.code == 200, r.body
    sid = r.headers["Mcp-Session-Id"]
    hdr = {**ACCEPT, **bearer(mcp_a), "Mcp-Session-Id": sid}
    assert (await fetch(url, headers=hdr, body={"jsonrpc": "2.0", "method": "notifications/initialized"})).code == 202
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "remember", "arguments": {"note": "secret"}}}
    r = await fetch(url, headers={**hdr, "Accept": "application/json"}, body=call)
    assert r.code == 200 and "secret" in r.body.decode(), r.body
    # another key of the same server, and the owner's token: 404 for this MCP session
    for other in (bearer(mcp_b), dict(jp_auth_header)):
        r = await fetch(url, headers={**ACCEPT, **other, "Mcp-Session-Id": sid}, body=call)
        assert r.code == 404, r.body
        assert json.loads(r.body)["jsonrpc"] == "2.0"
    # a plain key for the backing function cannot reach its runtime session
    code, sessions = await api("functionai", "api", "mcp", "sessions")
    (runtime_session,) = [s["runtime_session"] for s in sessions if s["id"] == sid]
    fn_key = await new_key(api, "mcp-notes")
    for accept in ("application/json", "text/event-stream"):
        r = await fetch(
            base + "/functionai/invoke/mcp-notes",
            headers={**bearer(fn_key), "X-Functionai-Session-Id": runtime_session, "Accept": accept},
            body={"tool": "remember", "arguments": {"note": "forged"}},
        )
        assert r.code == 404, (accept, r.code, r.body)
    # the MCP session's state is untouched
    r = await fetch(url, headers={**hdr, "Accept": "application/json"}, body={**call, "id": 3, "params": {"name": "remember", "arguments": {"note": "again"}}})
    assert r.code == 200
    text = r.body.decode()
    assert "again" in text and "forged" not in text, text


async def test_mcp_validates_origin(api, base, jp_auth_header, jp_http_port, jp_serverapp):  # noqa: F811
    code, body = await api("functionai", "api", "mcp", "servers", "notes", "tools", "remember", method="PUT", body=REMEMBER)
    assert code == 200, body
    key = (await api("functionai", "api", "keys", method="POST", body={"function": "mcp:notes"}))[1]["key"]
    url = base + "/functionai/mcp/notes/mcp"
    for auth in (dict(jp_auth_header), bearer(key)):
        for origin in ("http://evil.example", "null", f"http://127.0.0.1.evil.example:{jp_http_port}"):
            r = await fetch(url, headers={**ACCEPT, **auth, "Origin": origin}, body=INIT)
            assert r.code == 403, (origin, r.code, r.body)
            err = json.loads(r.body)
            assert err["jsonrpc"] == "2.0" and err["error"]["kind"] == "forbidden" and "Origin" in err["error"]["message"], err
            assert "Mcp-Session-Id" not in r.headers
        r = await fetch(url, headers={**ACCEPT, **auth, "Origin": "http://evil.example", "Mcp-Session-Id": "x"}, method="DELETE")
        assert r.code == 403
        for origin in (None, f"http://127.0.0.1:{jp_http_port}"):  # no Origin, and the server's own
            r = await fetch(url, headers={**ACCEPT, **auth, **({"Origin": origin} if origin else {})}, body=INIT)
            assert r.code == 200, (origin, r.code, r.body)
    # Jupyter's allow_origin / allow_origin_pat allow more
    settings = jp_serverapp.web_app.settings
    for name, value in (("allow_origin", "https://ok.example"), ("allow_origin_pat", r"https://.*\.ok\.example")):
        old = settings.get(name)
        settings[name] = value
        try:
            ok = "https://ok.example" if name == "allow_origin" else "https://lab.ok.example"
            r = await fetch(url, headers={**ACCEPT, **dict(jp_auth_header), "Origin": ok}, body=INIT)
            assert r.code == 200, (name, r.code, r.body)
            r = await fetch(url, headers={**ACCEPT, **dict(jp_auth_header), "Origin": "https://evil.example"}, body=INIT)
            assert r.code == 403, name
        finally:
            settings[name] = old


async def test_the_runtime_binds_sessions_to_principals(rt):
    await rt.deploy({"name": "echo", "source": {"kind": "code", "code": ECHO}})
    r = await rt.invoke("echo", 1, session="s1", principal="key:a")
    assert r.value["n"] == 1
    with pytest.raises(NotFound):
        await rt.invoke("echo", 1, session="s1", principal="key:b")
    with pytest.raises(NotFound):
        await rt.describe_session("s1", principal="key:b")
    with pytest.raises(NotFound):
        await rt.close_session("s1", principal="key:b")
    with pytest.raises(NotFound):
        await rt.check_session("s1", "key:b")
    await rt.check_session("s1", "key:a")
    await rt.check_session("never-used", "key:b")
    assert (await rt.invoke("echo", 1, session="s1")).value["n"] == 2  # the owner
    desc = await rt.describe_session("s1", principal="key:a")
    assert desc["principal"] == "key:a"
    # after a pause the binding comes back from the store
    assert await rt.pause_session("s1")
    await rt.flush()
    rt._sessions.pop("s1")
    rt._stored["s1"] = "paused"
    with pytest.raises(NotFound):
        await rt.invoke("echo", 1, session="s1", principal="key:b")
    assert (await rt.invoke("echo", 1, session="s1", principal="key:a")).value["n"] == 3
    # the owner's sessions are no key's
    await rt.invoke("echo", 1, session="mine")
    with pytest.raises(NotFound):
        await rt.invoke("echo", 1, session="mine", principal="key:a")
