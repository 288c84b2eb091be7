"""The server extension against a real Jupyter server (pytest-jupyter), with
the base URL ``/a%40b/`` and authentication on."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

ECHO = (
    "import os\n"
    "def handler(event, ctx):\n"
    "    ctx.session.state['n'] = ctx.session.state.get('n', 0) + 1\n"
    "    if event == 'boom':\n"
    "        raise KeyError('missing thing')\n"
    "    if event == 'loop':\n"
    "        while True:\n"
    "            pass\n"
    "    return {'event': event, 'n': ctx.session.state['n'], 'pid': os.getpid()}\n"
)
GEN = "def handler(event, ctx):\n    for i in range(event['n']):\n        yield {'i': i}\n"


@pytest.fixture
def api(jp_fetch):
    async def call(*parts: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None, raw: bool = False, **kw: Any):
        data = None if body is None else (body if isinstance(body, (str, bytes)) else json.dumps(body))
        if method in ("POST", "PUT", "PATCH") and data is None:
            data = ""
        r = await jp_fetch(*parts, method=method, body=data, headers=headers or {}, raise_error=False, allow_nonstandard_methods=True, **kw)
        if raw:
            return r
        return r.code, (json.loads(r.body) if r.body else None)

    return call


async def deploy(api, name: str, code: str, **spec: Any) -> dict:
    code_, body = await api("functionai", "api", "functions", method="POST", body={"name": name, "source": {"kind": "code", "code": code}, **spec})
    assert code_ == 201, body
    return body


async def invoke(api, name: str, event: Any, session: str | None = None, **headers: str):
    h = dict(headers)
    if session is not None:
        h["X-Functionai-Session-Id"] = session
    return await api("functionai", "invoke", name, method="POST", body=json.dumps(event), headers=h, raw=True)


async def test_health_and_extension_loaded(api, jp_serverapp):
    code, body = await api("functionai", "api", "health")
    assert code == 200 and body["status"] == "ok" and body["backend"] == "process"
    assert "jupyter_functionai" in jp_serverapp.extension_manager.extensions


async def test_function_lifecycle_over_rest(api):
    v1 = await deploy(api, "echo", ECHO)
    assert v1["version"] == 1
    await deploy(api, "echo", ECHO.replace("'n':", "'v2': True, 'n':"))
    code, fns = await api("functionai", "api", "functions")
    assert code == 200 and [f["name"] for f in fns] == ["echo"] and fns[0]["active_version"] == 2
    code, one = await api("functionai", "api", "functions", "echo")
    assert code == 200 and one["version"] == 2 and one["endpoint"].endswith("/functionai/invoke/echo")
    code, versions = await api("functionai", "api", "functions", "echo", "versions")
    assert [v["version"] for v in versions] == [1, 2]
    code, rb = await api("functionai", "api", "functions", "echo", "rollback", method="POST", body={"version": 1})
    assert code == 200 and rb["version"] == 1
    r = await invoke(api, "echo", 1, session="after-rollback")
    assert "v2" not in json.loads(r.body)
    code, _ = await api("functionai", "api", "functions", "echo", "rollback", method="POST", body={"version": 9})
    assert code == 404
    code, _ = await api("functionai", "api", "functions", "echo", method="DELETE")
    assert code == 204
    code, err = await api("functionai", "api", "functions", "echo")
    assert code == 404 and err["error"]["kind"] == "not_found"


async def test_bad_specs_are_precise_400s(api):
    code, err = await api("functionai", "api", "functions", method="POST", body={"name": "x y", "source": {"kind": "code", "code": "x=1"}})
    assert code == 400 and err["error"]["kind"] == "invalid_spec" and err["error"]["field"] == "name"
    code, err = await api("functionai", "api", "functions", method="POST", body="{nope")
    assert code == 400 and err["error"]["kind"] == "bad_payload"
    code, err = await api("functionai", "api", "functions", method="POST", body={"name": "f", "source": {"kind": "file", "path": "/etc/passwd"}})
    assert code == 400
    code, err = await api("functionai", "api", "functions", method="POST", body={"name": "broken", "source": {"kind": "code", "code": "raise ValueError('top')\ndef handler(e, c):\n    return 1\n"}})
    assert code == 422 and err["error"]["kind"] == "user_exception" and "top" in err["error"]["message"]


async def test_gateway_session_affinity_and_headers(api):
    await deploy(api, "echo", ECHO)
    a1 = await invoke(api, "echo", "x", session="A")
    a2 = await invoke(api, "echo", "y", session="A")
    b1 = await invoke(api, "echo", "z", session="B")
    assert a1.code == a2.code == b1.code == 200
    assert a1.headers["X-Functionai-Session-Id"] == "A"
    assert a1.headers["X-Functionai-Instance-Id"] == a2.headers["X-Functionai-Instance-Id"]
    assert a1.headers["X-Functionai-Instance-Id"] != b1.headers["X-Functionai-Instance-Id"]
    assert re.fullmatch(r"(template-fork|warm-pool|fresh);ms=[0-9.]+", a1.headers["X-Functionai-Cold-Start"])
    assert "X-Functionai-Cold-Start" not in a2.headers
    assert [json.loads(r.body)["n"] for r in (a1, a2, b1)] == [1, 2, 1]
    assert json.loads(a2.body)["event"] == "y"


async def test_gateway_assigns_a_session_and_honours_cookie_and_query(api):
    await deploy(api, "echo", ECHO)
    first = await invoke(api, "echo", 1)
    sid = first.headers["X-Functionai-Session-Id"]
    assert sid.startswith("s-")
    cookie = first.headers["Set-Cookie"]
    assert f"functionai_session_echo={sid}" in cookie and "HttpOnly" in cookie and "Path=/a%40b/functionai/invoke/echo;" in cookie
    by_cookie = await invoke(api, "echo", 2, Cookie=f"functionai_session_echo={sid}")
    assert by_cookie.headers["X-Functionai-Instance-Id"] == first.headers["X-Functionai-Instance-Id"]
    by_query = await api("functionai", "invoke", "echo", method="POST", body="3", params={"session": sid}, raw=True)
    assert json.loads(by_query.body)["n"] == 3
    # the header wins over the cookie
    both = await invoke(api, "echo", 4, session="other", Cookie=f"functionai_session_echo={sid}")
    assert both.headers["X-Functionai-Session-Id"] == "other" and json.loads(both.body)["n"] == 1


async def test_closed_session_is_404_and_sessions_api(api):
    await deploy(api, "echo", ECHO)
    await invoke(api, "echo", 1, session="bye")
    code, sessions = await api("functionai", "api", "sessions")
    assert code == 200 and [s["id"] for s in sessions] == ["bye"]
    s = sessions[0]
    assert s["instance"]["pid"] > 0 and s["calls"] == 1 and s["state_bytes"] > 0 and "isolation" in s["instance"]
    assert {"age_s", "idle_s"} <= set(s)
    code, _ = await api("functionai", "api", "sessions", "bye", method="DELETE")
    assert code == 204
    r = await invoke(api, "echo", 1, session="bye")
    assert r.code == 404 and json.loads(r.body)["error"]["kind"] == "session_closed"
    code, _ = await api("functionai", "api", "sessions", "never", method="GET")
    assert code == 404
    code, opened = await api("functionai", "api", "functions", "echo", "sessions", method="POST", body={"session": "early"})
    assert code == 201 and opened["status"] == "live" and opened["calls"] == 0


@pytest.mark.parametrize(
    "event, session, status, kind",
    [
        ("boom", "e1", 422, "user_exception"),
        ("loop", "e2", 504, "timeout"),
        (1, "bad session!", 400, "invalid_argument"),
        ("x" * 300_000, "e3", 413, "payload_too_large"),
    ],
)
async def test_gateway_errors_map_to_status_codes(api, event, session, status, kind):
    await deploy(api, "echo", ECHO, timeout_s=1.0, limits={"max_payload_bytes": 100_000})
    r = await invoke(api, "echo", event, session=session)
    assert r.code == status, r.body
    err = json.loads(r.body)["error"]
    assert err["kind"] == kind
    if kind == "user_exception":
        assert "KeyError" in err["message"] and "raise KeyError" in err["traceback"]
    if status != 400:  # a valid session id is echoed on error answers too
        assert r.headers["X-Functionai-Session-Id"] == session
    assert "Traceback" not in r.body.decode() or kind == "user_exception"


#: Headers whose value differs between any two answers.
_PER_ANSWER = {"Date", "X-Functionai-Instance-Id", "X-Functionai-Cold-Start", "Content-Length", "Etag"}


def _shape(r) -> tuple[int, dict[str, str], Any]:
    """An answer as a client sees it, less what differs between any two answers."""
    body = json.loads(r.body)
    if isinstance(body, dict) and "error" in body:
        body["error"].pop("instance_id", None)
        body["error"].pop("traceback", None)
    headers = {k: v for k, v in r.headers.get_all() if k not in _PER_ANSWER}
    return r.code, headers, body


async def test_gateway_lean_route_answers_as_the_handler_does(api, jp_serverapp):
    """The lean route (token + session header) and InvokeHandler (the same
    call with a query string, which only the handler takes) give the same
    status, headers and body: for an answer, a user exception, bad JSON,
    another function's session and a function without sessions."""
    route = jp_serverapp.web_app.settings["functionai_lean_route"]
    await deploy(api, "echo", ECHO)
    await deploy(api, "other", ECHO)
    await deploy(api, "plain", "def handler(event, ctx):\n    return {'got': event}\n", session={"enabled": False})
    await invoke(api, "other", 0, session="theirs")
    cases = [
        ("echo", json.dumps("x"), "lean-a", "handler-a", 200),
        ("echo", json.dumps("boom"), "lean-b", "handler-b", 422),
        ("echo", "{not json", "lean-c", "handler-c", 400),
        ("echo", json.dumps(1), "theirs", "theirs", 409),
        ("plain", json.dumps([1, {"a": None}]), None, None, 200),
    ]
    for fn, body, lean_sid, handler_sid, status in cases:
        served, passed = route.served, route.passed
        lean = await api("functionai", "invoke", fn, method="POST", body=body, headers={"X-Functionai-Session-Id": lean_sid} if lean_sid else {}, raw=True)
        assert (route.served, route.passed) == (served + 1, passed), (fn, body)
        full = await api(
            "functionai", "invoke", fn, method="POST", body=body, headers={"X-Functionai-Session-Id": handler_sid} if handler_sid else {}, params={"via": "handler"}, raw=True
        )
        assert (route.served, route.passed) == (served + 1, passed + 1), (fn, body)
        assert lean.code == status, lean.body
        a, b = _shape(lean), _shape(full)
        if lean_sid != handler_sid:
            assert a[1].pop("X-Functionai-Session-Id") == lean_sid and b[1].pop("X-Functionai-Session-Id") == handler_sid
            if status != 200:
                assert a[2]["error"].pop("session_id", lean_sid) == lean_sid and b[2]["error"].pop("session_id", handler_sid) == handler_sid
        assert a == b, (fn, body)
        if status == 200 and fn == "echo":
            assert "X-Functionai-Cold-Start" in lean.headers and lean.headers["X-Functionai-Instance-Id"]
            again = await invoke(api, "echo", "y", session=lean_sid)
            assert again.headers["X-Functionai-Instance-Id"] == lean.headers["X-Functionai-Instance-Id"] and json.loads(again.body)["n"] == 2


async def test_gateway_lean_route_writes_its_access_line_only_where_debug_is_written(api, jp_serverapp):
    """A success's access line is a DEBUG record (as Jupyter's own request
    log): written when a handler of the server's log takes DEBUG, and not
    even made when none does (the lean route checks, at most once a second)."""
    from jupyter_server.base.handlers import log as jupyter_log

    route = jp_serverapp.web_app.settings["functionai_lean_route"]
    logger = jupyter_log()
    made: list[logging.LogRecord] = []

    class Count(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            made.append(record)
            return True

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    await deploy(api, "echo", ECHO)
    count, keep, level = Count(), Keep(), logger.level
    logger.addFilter(count)
    try:
        logger.setLevel(logging.DEBUG)
        quiet = [h for lg in (logger, *(p for p in [logger.parent] if p and logger.propagate)) for h in lg.handlers]
        saved = [(h, h.level) for h in quiet]
        for h in quiet:
            h.setLevel(logging.INFO)
        route._debug = (None, 0.0, False)  # (forget the last look)
        served = route.served
        assert (await invoke(api, "echo", 1, session="log-a")).code == 200
        assert route.served == served + 1
        assert not [r for r in made if "/functionai/invoke/echo" in r.getMessage() and r.levelno == logging.DEBUG]
        logger.addHandler(keep)
        route._debug = (None, 0.0, False)
        assert (await invoke(api, "echo", 2, session="log-a")).code == 200
        assert any(line.startswith("200 POST ") and "functionai/invoke/echo (token@" in line for line in keep.lines), keep.lines
    finally:
        logger.removeFilter(count)
        logger.removeHandler(keep)
        logger.setLevel(level)
        for h, lv in saved:
            h.setLevel(lv)


async def test_gateway_lean_route_leaves_a_custom_authorizer_in_charge(api, jp_serverapp):
    """With an authorizer other than Jupyter's allow-all (JupyterHub's
    scopes, a site policy), no call takes the lean route: the authorizer
    refuses it as it refuses every other request."""
    from jupyter_server.auth.authorizer import Authorizer

    class DenyInvoke(Authorizer):
        def is_authorized(self, handler, user, action, resource):
            return "/functionai/invoke/" not in handler.request.path

    await deploy(api, "echo", ECHO)
    assert (await invoke(api, "echo", 1, session="s")).code == 200
    route = jp_serverapp.web_app.settings["functionai_lean_route"]
    settings = jp_serverapp.web_app.settings
    original = settings["authorizer"]
    settings["authorizer"] = DenyInvoke(parent=jp_serverapp, identity_provider=settings["identity_provider"])
    try:
        served = route.served
        r = await invoke(api, "echo", 2, session="s")
        assert r.code == 403 and route.served == served
    finally:
        settings["authorizer"] = original
    assert (await invoke(api, "echo", 3, session="s")).code == 200


async def test_gateway_malformed_and_unknown(api):
    await deploy(api, "echo", ECHO)
    r = await api("functionai", "invoke", "echo", method="POST", body="{not json", raw=True)
    assert r.code == 400 and json.loads(r.body)["error"]["kind"] == "bad_payload"
    r = await invoke(api, "nosuch", 1)
    assert r.code == 404


async def test_gateway_streams_server_sent_events(api):
    await deploy(api, "gen", GEN)
    r = await api("functionai", "invoke", "gen", method="POST", body=json.dumps({"n": 3}), headers={"Accept": "text/event-stream"}, raw=True)
    assert r.code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    datas = [json.loads(line[6:]) for line in r.body.decode().splitlines() if line.startswith("data: ")]
    assert datas[:3] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert "event: end" in r.body.decode()
    plain = await invoke(api, "gen", {"n": 2})
    assert json.loads(plain.body) == [{"i": 0}, {"i": 1}]


# -- auth ---------------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: {"{name}": "echo", "{session_id}": "s1", "{key_id}": "abc", "{task_id}": "t-0123abcd", "{run_id}": "t-0123abcd", "{schedule_id}": "s-0123abcd", "{fmt}": "html", "{action}": "pause", "{server}": "tools", "{tool}": "add"}[m.group(0)], path)


async def test_no_route_answers_an_unauthenticated_request(api, jp_serverapp, jp_http_port, jp_base_url):
    await deploy(api, "echo", ECHO)
    code, doc = await api("functionai", "api", "openapi.json")
    assert code == 200
    client = AsyncHTTPClient()
    checked = 0
    for path, item in doc["paths"].items():
        for verb in item:
            url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}{_concrete(path)}"
            for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": "Bearer wrong"}):
                req = HTTPRequest(url, method=verb.upper(), headers=headers, body="{}" if verb in ("post",) else None, allow_nonstandard_methods=True)
                r = await client.fetch(req, raise_error=False)
                assert r.code == 401 and r.headers["WWW-Authenticate"].startswith('Bearer realm="functionai"'), (verb, path, headers, r.code, r.body)
                assert json.loads(r.body)["error"]["kind"] == "unauthorized", (verb, path, r.body)
                checked += 1
    assert checked >= 3 * 19


async def test_function_keys_are_scoped_and_revocable(api, jp_http_port, jp_base_url):
    await deploy(api, "echo", ECHO)
    await deploy(api, "other", ECHO)
    code, made = await api("functionai", "api", "keys", method="POST", body={"function": "echo", "note": "ci"})
    assert code == 201 and made["key"].startswith("fai_")
    key = made["key"]
    code, keys = await api("functionai", "api", "keys")
    assert [k["id"] for k in keys] == [made["id"]] and "key" not in keys[0] and "secret_sha256" not in keys[0]
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}/functionai"

    async def with_key(fn: str, k: str = key):
        return await client.fetch(HTTPRequest(f"{base}/invoke/{fn}", method="POST", body="1", headers={"Authorization": f"Bearer {k}"}), raise_error=False)

    ok = await with_key("echo")
    assert ok.code == 200 and json.loads(ok.body)["event"] == 1
    assert (await with_key("other")).code == 403
    assert (await with_key("echo", key[:-2] + "xx")).code == 401
    # a key opens the gateway only: not the REST API
    r = await client.fetch(HTTPRequest(f"{base}/api/functions", headers={"Authorization": f"Bearer {key}"}), raise_error=False)
    assert r.code == 403
    code, _ = await api("functionai", "api", "keys", made["id"], method="DELETE")
    assert code == 204
    assert (await with_key("echo")).code == 401
    code, _ = await api("functionai", "api", "keys", method="POST", body={"function": "nosuch"})
    assert code == 404


async def test_every_route_is_in_the_openapi_document_and_authenticated(api):
    from jupyter_functionai.server.routes import ROUTES

    code, doc = await api("functionai", "api", "openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")
    documented = {(p, v) for p, item in doc["paths"].items() for v in item}
    served = set()
    for r in ROUTES:
        for verb in ("get", "post", "put", "patch", "delete"):
            method = r.handler.__dict__.get(verb)
            if method is None:
                continue
            served.add((r.path, verb))
            assert getattr(method, "_functionai_auth", None) in ("jupyter", "jupyter-or-function-key"), (r.handler, verb)
    assert documented == served  # (the unauthenticated walk shows each is mounted: none answers 404)


async def test_token_requests_still_get_the_host_check(api, jp_http_port, jp_base_url, jp_auth_header):
    """The lean token path makes Jupyter's decision, Host check included
    (DNS-rebinding protection): a right token with a foreign Host is refused."""
    await deploy(api, "echo", ECHO)
    client = AsyncHTTPClient()
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}/functionai/invoke/echo"
    good = await client.fetch(HTTPRequest(url, method="POST", body="1", headers=dict(jp_auth_header)), raise_error=False)
    assert good.code == 200 and "Set-Cookie" in good.headers  # the assigned session id, nothing else
    assert all("username" not in c for c in good.headers.get_list("Set-Cookie"))  # no login cookie minted
    evil = await client.fetch(HTTPRequest(url, method="POST", body="1", headers={**jp_auth_header, "Host": "evil.example.com"}), raise_error=False)
    assert evil.code == 403


async def test_browser_requests_need_the_xsrf_token(api, jp_http_port, jp_base_url, jp_serverapp):
    """A cookie-authenticated (browser) POST without the XSRF token is refused;
    with it, it goes through."""
    await deploy(api, "echo", ECHO)
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    token = jp_serverapp.identity_provider.token
    # log in the way a browser does: ?token= once, keep the cookies
    login = await client.fetch(HTTPRequest(f"{base}/functionai/api/health?token={token}"), raise_error=False)
    assert login.code == 200
    cookies = {c.split("=", 1)[0]: c.split(";", 1)[0].split("=", 1)[1] for c in login.headers.get_list("Set-Cookie")}
    login_cookie = next(k for k in cookies if k.startswith("username-"))
    xsrf = "f00dfeedc0ffee"  # what a page load would set: the same token in cookie and header
    cookie_header = f"{login_cookie}={cookies[login_cookie]}; _xsrf={xsrf}"
    url = f"{base}/functionai/invoke/echo"
    no_xsrf = await client.fetch(HTTPRequest(url, method="POST", body="1", headers={"Cookie": cookie_header}), raise_error=False)
    assert no_xsrf.code == 403
    with_xsrf = await client.fetch(HTTPRequest(url, method="POST", body="1", headers={"Cookie": cookie_header, "X-XSRFToken": xsrf}), raise_error=False)
    assert with_xsrf.code == 200, with_xsrf.body


# -- request bodies: refused from their size, before they are read ---------------------------------


async def raw_post(port: int, path: str, headers: dict[str, str], body_sent: bytes, chunks: list[bytes] | None = None) -> tuple[int, dict[str, str], bytes, float]:
    """A POST over a raw socket that sends only ``body_sent`` of what its
    headers announce (or ``chunks`` in chunked encoding, stopping once the
    answer is there); returns the status, the headers, the body and the
    seconds until the answer came. The server must then close the connection."""
    import asyncio

    return await asyncio.to_thread(_raw_post, port, path, headers, body_sent, chunks)


def _raw_post(port: int, path: str, headers: dict[str, str], body_sent: bytes, chunks: list[bytes] | None) -> tuple[int, dict[str, str], bytes, float]:
    import select
    import socket
    import time

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    try:
        sock.sendall(head.encode() + body_sent)
        for c in chunks or ():
            if select.select([sock], [], [], 0)[0]:
                break  # answered: send no more
            sock.sendall(f"{len(c):x}\r\n".encode() + c + b"\r\n")
    except OSError:
        pass  # the server answered and closed: read the answer
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    elapsed = time.monotonic() - t0
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    got = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(got.get("content-length", 0)):
        body += sock.recv(65536)
    try:
        rest = sock.recv(65536)  # the server closes: it will not read the rest
    except ConnectionResetError:
        rest = b""
    assert rest == b"" or "chunked" in headers.get("Transfer-Encoding", ""), rest[:200]
    sock.close()
    return int(lines[0].split()[1]), got, body, elapsed


async def test_a_body_over_the_limit_is_refused_from_its_content_length(api, jp_http_port, jp_base_url, jp_auth_header):
    await deploy(api, "echo", ECHO, limits={"max_payload_bytes": 100_000})
    base = jp_base_url.rstrip("/")
    auth = dict(jp_auth_header)
    cases = [  # (path, declared length, the limit named)
        (f"{base}/functionai/invoke/echo", 200 * 1024 * 1024, 100_000),  # the function's limit
        (f"{base}/functionai/invoke/echo", 100_001, 100_000),
        (f"{base}/functionai/api/functions", 200 * 1024 * 1024, 16 * 1024 * 1024),  # the API's
        (f"{base}/functionai/mcp/kit/mcp", 200 * 1024 * 1024, 16 * 1024 * 1024),
        (f"{base}/functionai/invoke/echo", 10 * 1024**3, 100_000),  # over the server's own max_body_size too
    ]
    for path, declared, limit in cases:
        code, headers, body, elapsed = await raw_post(
            jp_http_port, path, {**auth, "Content-Type": "application/json", "Content-Length": str(declared), "X-Functionai-Session-Id": "big"}, b'"' + b"x" * 1000
        )
        assert code == 413, (path, code, body)
        err = json.loads(body)["error"]
        assert err["kind"] == "payload_too_large" and f"{declared} bytes" in err["message"], err
        assert (err["data"] if "/mcp/" in path else err)["limit"] == limit, err
        assert elapsed < 5, elapsed
        if "invoke" in path:
            assert headers["x-functionai-session-id"] == "big"
    # no credential: 401 first (the size of an unauthenticated body says nothing)
    code, headers, body, _ = await raw_post(jp_http_port, f"{base}/functionai/invoke/echo", {"Content-Length": str(200 * 1024 * 1024)}, b"{}")
    assert code == 401 and "www-authenticate" in headers
    # the server is fine, and a body within the limit goes through
    r = await invoke(api, "echo", "y" * 90_000, session="ok")
    assert r.code == 200 and json.loads(r.body)["event"] == "y" * 90_000


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(api, jp_http_port, jp_base_url, jp_auth_header):
    await deploy(api, "echo", ECHO, limits={"max_payload_bytes": 100_000})
    path = f"{jp_base_url.rstrip('/')}/functionai/invoke/echo"
    chunks = [b'"' + b"x" * 65_535] + [b"x" * 65_536] * 200  # ~13 MB if it were all read
    code, _, body, _ = await raw_post(jp_http_port, path, {**dict(jp_auth_header), "Transfer-Encoding": "chunked"}, b"", chunks)
    assert code == 413 and json.loads(body)["error"]["kind"] == "payload_too_large"
    # within the limit, chunked works
    small = json.dumps("z" * 1000).encode()
    reader_code, _, body, _ = await raw_post(jp_http_port, path, {**dict(jp_auth_header), "Transfer-Encoding": "chunked", "Connection": "close"}, b"", [small[:500], small[500:], b""])
    assert reader_code == 200 and json.loads(body)["event"] == "z" * 1000


# -- session cookies are per function -------------------------------------------------------------


class CookieJar:
    """The browser's rules (``http.cookiejar``: path matching included) for tornado's client."""

    def __init__(self) -> None:
        import http.cookiejar

        self.jar = http.cookiejar.CookieJar()

    def header(self, url: str) -> dict[str, str]:
        import urllib.request

        req = urllib.request.Request(url)
        self.jar.add_cookie_header(req)
        cookie = req.get_header("Cookie")
        return {"Cookie": cookie} if cookie else {}

    def keep(self, url: str, response: Any) -> None:
        import email.message
        import urllib.request

        msg = email.message.Message()
        for value in response.headers.get_list("Set-Cookie"):
            msg["Set-Cookie"] = value

        class _Info:
            def info(self) -> email.message.Message:
                return msg

        self.jar.extract_cookies(_Info(), urllib.request.Request(url))  # type: ignore[arg-type]


async def test_a_browser_keeps_one_session_per_function(api, jp_http_port, jp_base_url, jp_auth_header):
    await deploy(api, "echo", ECHO)
    await deploy(api, "other", ECHO)
    jar = CookieJar()
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}/functionai/invoke"

    async def call(fn: str, event: Any) -> Any:
        url = f"{base}/{fn}"
        r = await client.fetch(HTTPRequest(url, method="POST", body=json.dumps(event), headers={**jp_auth_header, **jar.header(url)}), raise_error=False)
        assert r.code == 200, (fn, r.code, r.body)
        jar.keep(url, r)
        return r

    a1, b1, a2, b2 = await call("echo", 1), await call("other", 2), await call("echo", 3), await call("other", 4)
    assert [json.loads(r.body)["n"] for r in (a1, b1, a2, b2)] == [1, 1, 2, 2]
    sa, sb = a1.headers["X-Functionai-Session-Id"], b1.headers["X-Functionai-Session-Id"]
    assert sa != sb and a2.headers["X-Functionai-Session-Id"] == sa and b2.headers["X-Functionai-Session-Id"] == sb
    assert jar.header(f"{base}/echo") == {"Cookie": f"functionai_session_echo={sa}"}
    assert jar.header(f"{base}/echo2") == {}  # path-scoped: not even to a function whose name starts alike


async def test_the_old_server_wide_cookie_is_read_for_its_own_function_only(api):
    await deploy(api, "echo", ECHO)
    await deploy(api, "other", ECHO)
    first = await invoke(api, "echo", 1, session="legacy-1")
    assert first.code == 200
    old = {"Cookie": "functionai_session=legacy-1"}
    # another function does not get it (no 409): a session of its own, the old cookie left alone
    b = await invoke(api, "other", 1, **old)
    assert b.code == 200 and b.headers["X-Functionai-Session-Id"] not in ("legacy-1", None)
    assert all(not c.startswith("functionai_session=") for c in b.headers.get_list("Set-Cookie"))
    # its own function reads it, moves it to the function's cookie and clears it
    a = await invoke(api, "echo", 2, **old)
    assert a.code == 200 and a.headers["X-Functionai-Session-Id"] == "legacy-1" and json.loads(a.body)["n"] == 2
    cookies = a.headers.get_list("Set-Cookie")
    assert any(c.startswith("functionai_session_echo=legacy-1;") for c in cookies), cookies
    assert any(c.startswith("functionai_session=\"\"; expires=") and c.endswith("Path=/a%40b/") for c in cookies), cookies


# -- a session serves one function: tasks are refused at submit time ------------------------------


async def test_a_task_with_another_functions_session_is_refused_at_submit(api):
    await deploy(api, "echo", ECHO)
    await deploy(api, "other", ECHO)
    assert (await invoke(api, "echo", 1, session="alice")).code == 200  # alice is echo's (live)
    code, body = await api("functionai", "api", "functions", "other", "tasks", method="POST", body=1, params={"session": "alice"})
    assert code == 409, body
    assert body["error"]["kind"] == "conflict" and body["error"]["function"] == "echo" and "belongs to function 'echo'" in body["error"]["message"]
    code, listed = await api("functionai", "api", "tasks", params={"function": "other"})
    assert code == 200 and listed == []  # nothing queued
    # a session only a queued task has named is that task's function's too
    code, queued = await api("functionai", "api", "functions", "echo", "tasks", method="POST", body=2, params={"session": "bob"})
    assert code == 202, queued
    code, body = await api("functionai", "api", "functions", "other", "tasks", method="POST", body=3, params={"session": "bob"})
    assert code == 409 and body["error"]["function"] == "echo", body
    # its own function's task is accepted; a paused (stored) session is still its function's
    code, ok = await api("functionai", "api", "functions", "echo", "tasks", method="POST", body=4, params={"session": "alice"})
    assert code == 202, ok
    code, _ = await api("functionai", "api", "tasks", ok["id"], params={"wait": "30"})
    code, _ = await api("functionai", "api", "sessions", "alice", method="DELETE")
    assert code == 204
    code, body = await api("functionai", "api", "functions", "other", "tasks", method="POST", body=5, params={"session": "alice"})
    assert code == 409 and body["error"]["function"] == "echo", body
