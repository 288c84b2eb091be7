"""No input gets a 5xx (V6): bodies JSON cannot carry, or that we do not
accept, are a 400 naming the problem on every route that takes a body (the
REST API, the invoke gateway, the MCP endpoint), and the server keeps
answering."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .test_server import ECHO, api, deploy  # noqa: F401  (api is a fixture)

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}

DEEP = b"[" * 100_000
NAN = b"NaN"

#: (route, method, body) of every route that reads a JSON body
ROUTES: list[tuple[tuple[str, ...], str]] = [
    (("functionai", "api", "functions"), "POST"),
    (("functionai", "api", "functions", "echo", "rollback"), "POST"),
    (("functionai", "api", "functions", "echo", "sessions"), "POST"),
    (("functionai", "api", "keys"), "POST"),
    (("functionai", "api", "functions", "echo", "tasks"), "POST"),
    (("functionai", "api", "runs"), "POST"),
    (("functionai", "api", "schedules"), "POST"),
    (("functionai", "api", "mcp", "servers"), "POST"),
    (("functionai", "invoke", "echo"), "POST"),
]


def _err(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body["error"]) >= {"kind", "message"}, body
    return body["error"]


@pytest.mark.parametrize(
    "raw, words",
    [
        (DEEP, "nested too deeply"),
        (b"[" * 129 + b"]" * 129, "nested deeper than 128"),
        (b'{"a": ' * 129 + b"1" + b"}" * 129, "nested deeper than 128"),
        (NAN, "NaN"),
        (b"Infinity", "Infinity"),
        (b'{"x": -Infinity}', "Infinity"),
        (b'{"x": 1e999}', "out of range"),
        (b'{"name": "\\ud800"}', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
        (b'{"notebook": "x\\ud83d.ipynb"}', "lone surrogate"),
    ],
)
async def test_a_body_json_cannot_carry_is_400_on_every_route(api, raw, words):  # noqa: F811
    await deploy(api, "echo", ECHO)
    for parts, method in ROUTES:
        code, body = await api(*parts, method=method, body=raw)
        assert code == 400, (parts, raw[:40], code, body)
        err = _err(body)
        assert err["kind"] == "bad_payload" and words in err["message"], (parts, err)
    code, body = await api("functionai", "mcp", "kit", "mcp", method="POST", body=raw, headers={"Accept": "application/json, text/event-stream"})
    assert code == 400 and body["jsonrpc"] == "2.0", (code, body)
    assert body["error"]["code"] == -32700 and words in body["error"]["message"], body
    ok, health = await api("functionai", "api", "health")
    assert ok == 200 and health["status"] == "ok"


@pytest.mark.parametrize("where", ["runs", "schedules"])
async def test_a_nul_in_a_notebook_path_is_400(api, where):  # noqa: F811
    code, body = await api("functionai", "api", where, method="POST", body={"notebook": "nbs/a\u0000b.ipynb", "cron": "* * * * *"})
    err = _err(body)
    assert code == 400 and err["kind"] == "bad_payload" and "NUL" in err["message"] and err["at"] == "$.notebook", body


async def test_nul_and_surrogates_in_names_keys_and_tasks(api):  # noqa: F811
    await deploy(api, "echo", ECHO)
    for parts, body in [
        (("functionai", "api", "keys"), {"function": "echo\u0000"}),
        (("functionai", "api", "keys"), {"function": "echo", "note": "a\u0000"}),
        (("functionai", "api", "functions"), {"name": "e\u0000", "source": {"kind": "code", "code": ECHO}}),
        (("functionai", "api", "functions"), {"name": "e2", "source": {"kind": "code", "code": ECHO + "#\u0000"}}),
    ]:
        code, got = await api(*parts, method="POST", body=json.dumps(body))
        assert code == 400 and "NUL" in _err(got)["message"], (parts, code, got)
    # a task's event and an invocation's event are the function's data: NUL passes, a lone surrogate does not
    code, got = await api("functionai", "invoke", "echo", method="POST", body=json.dumps({"x": "a\u0000b"}))
    assert code == 200 and got["event"] == {"x": "a\u0000b"}, got
    code, got = await api("functionai", "api", "functions", "echo", "tasks", method="POST", body=json.dumps("a\u0000"))
    assert code == 202, got
    code, got = await api("functionai", "api", "functions", "echo", "tasks", method="POST", body=b'"\\ud800"')
    assert code == 400 and "lone surrogate" in _err(got)["message"], got
    # a pair of surrogates is one character, and fine
    code, got = await api("functionai", "invoke", "echo", method="POST", body=b'"\\ud83d\\ude00"')
    assert code == 200 and got["event"] == "\U0001f600", got


async def test_depth_up_to_the_limit_reaches_the_function(api):  # noqa: F811
    await deploy(api, "echo", ECHO)
    event: Any = 1
    for _ in range(120):  # the function's answer wraps it once more: {"event": ...}
        event = [event]
    code, got = await api("functionai", "invoke", "echo", method="POST", body=json.dumps(event))
    assert code == 200 and got["event"] == event


async def test_every_answer_is_json_without_nan(api):  # noqa: F811
    code, _ = await api("functionai", "api", "functions", method="POST", body={"name": "nan", "source": {"kind": "code", "code": "def handler(e, ctx):\n    return float('nan')\n"}})
    assert code == 201
    r = await api("functionai", "invoke", "nan", method="POST", body="1", raw=True)
    assert r.code < 500 or r.code in (502,), r.code
    text = r.body.decode()
    assert "NaN" not in text, text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))
