"""Authentication failures say what happened: 401 with a challenge and a JSON
reason for no credential, a wrong token or an invalid key, on the REST API,
the invoke gateway and the MCP endpoint; 403 for a valid credential that does
not open the route, and for a cookie (browser) request without its XSRF token."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from .test_server import ECHO, api, deploy  # noqa: F401  (api is a fixture)

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


@pytest.fixture
def base(jp_http_port: int, jp_base_url: str) -> str:
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"


async def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: Any = None) -> HTTPResponse:
    data = None if body is None else json.dumps(body)
    if method == "POST" and data is None:
        data = "{}"
    req = HTTPRequest(url, method=method, headers=headers or {}, body=data, allow_nonstandard_methods=True)
    return await AsyncHTTPClient().fetch(req, raise_error=False)


ROUTES = [  # (what, path, method, body)
    ("api get", "/functionai/api/functions", "GET", None),
    ("api post", "/functionai/api/keys", "POST", {"function": "echo"}),
    ("gateway", "/functionai/invoke/echo", "POST", 1),
    ("mcp", "/functionai/mcp/kit/mcp", "POST", INIT),
]


@pytest.mark.parametrize(
    "auth, why, invalid",
    [
        (None, "no credential", False),
        ("token wrong", "invalid token", True),
        ("Bearer wrong", "invalid token", True),
        ("Bearer fai_abcdef012345_notakey", "invalid or revoked", True),
        ("Basic dXNlcjpwYXNz", "unsupported Authorization scheme", True),
        ("Bearer", "no token", True),
    ],
)
async def test_a_missing_or_wrong_credential_is_401_with_a_challenge_and_a_reason(api, base, auth, why, invalid):  # noqa: F811
    await deploy(api, "echo", ECHO)
    for what, path, method, body in ROUTES:
        headers = {"Accept": "application/json, text/event-stream"}
        if auth is not None:
            headers["Authorization"] = auth
        r = await fetch(base + path, method, headers, body)
        assert r.code == 401, (what, auth, r.code, r.body)
        challenge = r.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="functionai"'), challenge
        assert ('error="invalid_token"' in challenge) == invalid, challenge
        err = json.loads(r.body)["error"]
        assert err["kind"] == "unauthorized" and why in err["message"], (what, err)
        if what == "mcp":  # a JSON-RPC error object too
            assert json.loads(r.body)["jsonrpc"] == "2.0" and err["data"]["kind"] == "unauthorized"
        assert "mcp-session-id" not in r.headers


async def test_a_wrong_login_cookie_is_401_and_a_right_one_without_xsrf_403(api, base, jp_serverapp):  # noqa: F811
    await deploy(api, "echo", ECHO)
    login = await fetch(f"{base}/functionai/api/health?token={jp_serverapp.identity_provider.token}")
    assert login.code == 200
    cookies = {c.split("=", 1)[0]: c.split(";", 1)[0].split("=", 1)[1] for c in login.headers.get_list("Set-Cookie")}
    name = next(k for k in cookies if k.startswith("username-"))
    for path, method in (("/functionai/invoke/echo", "POST"), ("/functionai/api/functions", "GET")):
        r = await fetch(base + path, method, {"Cookie": f"{name}=forged; _xsrf=abc", "X-XSRFToken": "abc"})
        assert r.code == 401 and "login cookie" in json.loads(r.body)["error"]["message"], (path, r.code, r.body)
    # the real cookie, no XSRF token: that is a browser request that must not pass (403, not 401)
    r = await fetch(f"{base}/functionai/invoke/echo", "POST", {"Cookie": f"{name}={cookies[name]}"})
    assert r.code == 403 and "WWW-Authenticate" not in r.headers
    r = await fetch(f"{base}/functionai/invoke/echo", "POST", {"Cookie": f"{name}={cookies[name]}; _xsrf=abc", "X-XSRFToken": "abc"})
    assert r.code == 200, r.body


async def test_a_valid_key_on_a_route_it_does_not_open_is_403_saying_so(api, base):  # noqa: F811
    await deploy(api, "echo", ECHO)
    await deploy(api, "other", ECHO)
    code, made = await api("functionai", "api", "keys", method="POST", body={"function": "echo"})
    assert code == 201
    key = {"Authorization": f"Bearer {made['key']}"}
    r = await fetch(f"{base}/functionai/invoke/other", "POST", key, 1)
    assert r.code == 403 and json.loads(r.body)["error"] == {"kind": "forbidden", "message": "this key is for function 'echo', not 'other'"}
    r = await fetch(f"{base}/functionai/api/functions", "GET", key)
    err = json.loads(r.body)["error"]
    assert r.code == 403 and err["kind"] == "forbidden" and "'echo'" in err["message"] and "gateway" in err["message"]
    r = await fetch(f"{base}/functionai/mcp/kit/mcp", "POST", {**key, "Accept": "application/json, text/event-stream"}, INIT)
    assert r.code == 403 and json.loads(r.body)["error"]["kind"] == "forbidden"
    assert (await fetch(f"{base}/functionai/invoke/echo", "POST", key, 1)).code == 200
    code, _ = await api("functionai", "api", "keys", made["id"], method="DELETE")
    assert code == 204
    for path, method in (("/functionai/invoke/echo", "POST"), ("/functionai/api/functions", "GET")):
        r = await fetch(base + path, method, key, 1 if method == "POST" else None)
        assert r.code == 401 and "invalid or revoked" in json.loads(r.body)["error"]["message"], (path, r.code)
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
