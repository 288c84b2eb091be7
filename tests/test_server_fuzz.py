"""Property-based fuzz of the HTTP API: whatever is sent, the server answers
with a precise 4xx (a JSON error) or a success, never a 5xx, and stays up."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ECHO = "def handler(event, ctx):\n    return {'event': event}\n"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.fixed_dictionaries(
        {"name": st.text(max_size=12)},
        optional={
            "source": st.fixed_dictionaries({"kind": st.sampled_from(["code", "module", "file", "x"]), "code": st.text(max_size=30)}),
            "timeout_s": json_values,
            "resources": json_values,
            "version": json_values,
            "function": st.text(max_size=12),
            "session": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
)
segments = st.one_of(st.sampled_from(["echo", "nosuch", "s1", "abc", "0"]), st.text(min_size=1, max_size=16))
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


async def test_the_api_never_answers_5xx(jp_fetch, jp_http_port, jp_base_url, jp_auth_header):
    r = await jp_fetch("functionai", "api", "functions", method="POST", body=json.dumps({"name": "echo", "source": {"kind": "code", "code": ECHO}}))
    assert r.code == 201
    doc = json.loads((await jp_fetch("functionai", "api", "openapi.json")).body)
    templates = [(path, verb) for path, item in doc["paths"].items() for verb in item]
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    seen: dict[int, int] = {}

    def send(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(url, data=body, method=method, headers={**jp_auth_header, **headers})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        target=st.sampled_from(templates),
        verb=st.one_of(st.none(), st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"])),
        params=st.lists(segments, min_size=3, max_size=3),
        body=st.one_of(st.none(), bodies),
        session=st.one_of(st.none(), header_text),
        accept=st.sampled_from(["application/json", "text/event-stream", "*/*"]),
        query=st.dictionaries(st.sampled_from(["session", "function", "limit", "status"]), st.text(max_size=8), max_size=3),
    )
    def check(target: tuple[str, str], verb: str | None, params: list[str], body: bytes | None, session: str | None, accept: str, query: dict[str, str]) -> None:
        path, doc_verb = target
        it = iter(params)
        concrete = re.sub(r"\{[^}]+\}", lambda _m: quote(next(it), safe=""), path)
        qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
        url = base + concrete + (f"?{qs}" if qs else "")
        method = verb or doc_verb.upper()
        headers = {"Accept": accept, "Content-Type": "application/json"}
        if session is not None:
            headers["X-Functionai-Session-Id"] = session
        if method in ("GET", "DELETE"):
            body = None
        status, data = send(method, url, body if method not in ("GET", "DELETE") else None, headers)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (method, url, body, headers, status, data[:500])
        if status >= 400 and status != 405:
            err: Any = json.loads(data)
            if path.startswith("/functionai/mcp/"):  # an MCP endpoint answers JSON-RPC errors
                assert err["jsonrpc"] == "2.0" and set(err["error"]) >= {"code", "message"}, data
            else:
                assert set(err["error"]) >= {"kind", "message"}, data

    await asyncio.to_thread(check)
    # the fuzz reached both successes and precise errors, and the server still serves
    assert any(200 <= s < 300 for s in seen) and any(400 <= s < 500 for s in seen), seen
    ok = await jp_fetch("functionai", "api", "health")
    assert ok.code == 200


# -- V6: bodies JSON cannot carry or that we refuse, against real objects ------------------

#: strings with what no body may hold (a lone surrogate) or only events may (NUL)
hostile_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.lists(st.sampled_from(["\x00", "a", "/", "..", "\ud800", "\udfff", "\U0001f600", "nbs/x.ipynb"]), min_size=1, max_size=5).map("".join),
)
hostile_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,  # floats: NaN and ±Infinity included
    lambda children: st.lists(children, max_size=3) | st.dictionaries(hostile_text, children, max_size=3),
    max_leaves=8,
)
#: raw JSON texts put in place of a value: deep nesting (balanced or not), non-finite numbers
raw_holes = st.one_of(
    st.integers(100, 20_000).map(lambda n: "[" * n + "]" * n),
    st.integers(100, 20_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(1, 50_000).map(lambda n: "[" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 5000, '"\\ud800"', '"\\u0000"', '"a\\udc00b"']),
)
HOLE = "\x01hole\x01"


def _with_hole(template: Any, raw: str | None) -> bytes:
    text = json.dumps(template)  # NaN/Infinity as Python writes them, lone surrogates as \\uXXXX escapes
    if raw is not None:
        text = text.replace(json.dumps(HOLE), raw, 1)
    return text.encode("utf-8", "surrogatepass")


async def test_hostile_bodies_never_get_5xx(jp_fetch, jp_http_port, jp_base_url, jp_auth_header):
    """Deep nesting, NaN/Infinity, lone surrogates and NUL, in every field of
    the bodies of real routes (a function, its session, a task, runs,
    schedules, keys, the gateway with a key, an MCP session): each is a
    success or a 4xx with our error (a JSON-RPC error on MCP), never a 5xx."""

    async def post(*parts: str, body: Any, method: str = "POST") -> Any:
        r = await jp_fetch(*parts, method=method, body=json.dumps(body), raise_error=False)
        assert r.code < 300, r.body
        return json.loads(r.body) if r.body else None

    await post("functionai", "api", "functions", body={"name": "echo", "source": {"kind": "code", "code": ECHO}})
    await post("functionai", "api", "functions", "echo", "sessions", body={"session": "s1"})
    task = await post("functionai", "api", "functions", "echo", "tasks", body={"x": 1})
    key = (await post("functionai", "api", "keys", body={"function": "echo"}))["key"]
    tool = {
        "name": "add", "code": "def add(a, b):\n    return a + b\n", "handler": "add",
        "input_schema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]},
    }
    await post("functionai", "api", "mcp", "servers", "kit", "tools", "add", body=tool, method="PUT")
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    auth = dict(jp_auth_header)

    def send(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, Any]:
        req = urllib.request.Request(base + path, data=body, method=method, headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "f", "version": "0"}}}
    mcp_accept = {"Accept": "application/json, text/event-stream"}
    status, _, hdrs = await asyncio.to_thread(send, "POST", "/functionai/mcp/kit/mcp", json.dumps(init).encode(), {**auth, **mcp_accept})
    assert status == 200
    mcp_sid = hdrs["Mcp-Session-Id"]
    note = b'{"jsonrpc": "2.0", "method": "notifications/initialized"}'
    await asyncio.to_thread(send, "POST", "/functionai/mcp/kit/mcp", note, {**auth, **mcp_accept, "Mcp-Session-Id": mcp_sid})

    H = HOLE
    targets: list[tuple[str, str, dict[str, str], Any]] = [  # (method, path, extra headers, a body template with fields to fill)
        ("POST", "/functionai/api/functions", auth, {"name": H, "source": {"kind": "code", "code": H}, "timeout_s": H}),
        ("POST", "/functionai/api/functions/echo/rollback", auth, {"version": H}),
        ("POST", "/functionai/api/functions/echo/sessions", auth, {"session": H}),
        ("POST", "/functionai/api/keys", auth, {"function": H, "note": H}),
        ("POST", "/functionai/api/functions/echo/tasks?session=s1", auth, {"event": H}),
        ("POST", f"/functionai/api/tasks/{task['id']}/retry", auth, {"x": H}),
        ("POST", "/functionai/api/runs", auth, {"notebook": H, "parameters": {"p": H}, "name": H, "tags": [H]}),
        ("POST", "/functionai/api/schedules", auth, {"notebook": H, "cron": H, "timezone": H, "parameters": {H: 1}}),
        ("POST", "/functionai/api/mcp/servers", auth, {"name": H, "kind": "functions", "spec": H}),
        ("PUT", "/functionai/api/mcp/servers/kit/tools/add", auth, {**tool, "description": H}),
        ("POST", "/functionai/invoke/echo", {**auth, "X-Functionai-Session-Id": "s1"}, H),
        ("POST", "/functionai/invoke/echo", {"Authorization": f"Bearer {key}", "X-Functionai-Session-Id": "k1"}, {"e": H}),
        ("POST", "/functionai/invoke/echo", {**auth, "Accept": "text/event-stream"}, [H]),
        ("POST", "/functionai/mcp/kit/mcp", {**auth, **mcp_accept, "Mcp-Session-Id": mcp_sid},
         {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add", "arguments": {"a": H, "b": 1}}}),
        ("POST", "/functionai/mcp/kit/mcp", {**auth, **mcp_accept}, {**init, "params": {**init["params"], "clientInfo": {"name": H, "version": H}}}),
    ]
    seen: dict[int, int] = {}

    def fill(template: Any, value: Any) -> Any:
        if template == H:
            return value
        if isinstance(template, dict):
            return {_key(k, value): fill(v, value) for k, v in template.items()}
        if isinstance(template, list):
            return [fill(v, value) for v in template]
        return template

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(target=st.sampled_from(targets), value=hostile_values, raw=st.one_of(st.none(), raw_holes), mode=st.sampled_from(["fill", "raw"]))
    def check(target: tuple[str, str, dict[str, str], Any], value: Any, raw: str | None, mode: str) -> None:
        method, path, headers, template = target
        if mode == "raw" and raw is not None:  # one field gets the raw text, the others a hostile value
            body = _with_hole(_first_hole(template, value), raw)
        else:
            body = _with_hole(fill(template, value), None)
        status, data, _ = send(method, path, body, headers)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (method, path, body[:300], status, data[:500])
        if status >= 400:
            err: Any = json.loads(data)
            if path.startswith("/functionai/mcp/") and "/api/" not in path:
                assert err["jsonrpc"] == "2.0" and set(err["error"]) >= {"code", "message"}, data
            else:
                assert set(err["error"]) >= {"kind", "message"}, data
        elif status == 200 and data:  # what we write is JSON: no NaN, no lone surrogate
            for line in data.decode("utf-8").splitlines():
                text = line[len("data: "):] if line.startswith("data: ") else line
                if text and not text.startswith(("event:", ":")):
                    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} written in {data[:200]!r}"))

    await asyncio.to_thread(check)
    total = sum(seen.values())
    print(f"\nhostile-body fuzz: {total} requests, answers {dict(sorted(seen.items()))}, 5xx: {sum(n for s, n in seen.items() if s >= 500)}")
    assert any(s == 400 for s in seen) and any(200 <= s < 300 for s in seen), seen
    ok = await jp_fetch("functionai", "api", "health")
    assert ok.code == 200


def _key(key: str, value: Any) -> str:
    """A key hole gets ``value`` when it is a string."""
    if key != HOLE:
        return key
    return value if isinstance(value, str) else "k"


def _first_hole(template: Any, value: Any) -> Any:
    """``template`` with its first hole kept (for the raw text) and the others filled with ``value``."""
    kept = False

    def fill(t: Any) -> Any:
        nonlocal kept
        if t == HOLE:
            if not kept:
                kept = True
                return HOLE
            return value
        if isinstance(t, dict):
            return {_key(k, value): fill(v) for k, v in t.items()}
        if isinstance(t, list):
            return [fill(v) for v in t]
        return t

    return fill(template)
