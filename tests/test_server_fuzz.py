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
