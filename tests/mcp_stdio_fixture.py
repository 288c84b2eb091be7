"""A small stdio MCP server for the tests (standard library only, starts fast).

Tools: ``put``/``get`` (state held by this process), ``whoami`` (a token made
at start: which process answered), ``env`` (an environment variable),
``slow`` (progress notifications, then an answer), ``crash`` (exits with code
3 in the middle of the call), ``roots`` (asks the client ``roots/list`` and
returns its answer), ``announce`` (answers, then sends
``notifications/tools/list_changed`` outside of any request). It also has one resource and one prompt, so
that the pass-through of ``resources/*`` and ``prompts/*`` can be checked.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid

TOKEN = uuid.uuid4().hex
STATE: dict[str, str] = {}
WRITE = threading.Lock()

TOOLS = [
    {"name": "put", "description": "Remember a value.", "inputSchema": {"type": "object", "properties": {"key": {"type": "string"}, "value": {"type": "string"}}, "required": ["key", "value"]}},
    {"name": "get", "description": "Recall a value.", "inputSchema": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}},
    {"name": "whoami", "description": "This process's token.", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "env", "description": "An environment variable.", "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
    {"name": "slow", "description": "Report progress, then answer.", "inputSchema": {"type": "object", "properties": {"steps": {"type": "integer"}, "delay": {"type": "number"}}}},
    {"name": "crash", "description": "Exit in the middle of the call.", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "roots", "description": "Ask the client for its roots (a request to the client).", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "announce", "description": "Answer, then announce a tools/list_changed a moment later.", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "disk", "description": "The size of the filesystem of the working directory.", "inputSchema": {"type": "object", "properties": {}}},
]
ASKED: dict[str, list] = {}  # our requests to the client: id -> [event, its result]


def send(msg: dict) -> None:
    with WRITE:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def text(value: object, error: bool = False) -> dict:
    return {"content": [{"type": "text", "text": value if isinstance(value, str) else json.dumps(value)}], "isError": error}


def call(mid: object, params: dict) -> None:
    name, args = params.get("name"), params.get("arguments") or {}
    token = (params.get("_meta") or {}).get("progressToken")
    if name == "put":
        STATE[args["key"]] = args["value"]
        result = text("ok")
    elif name == "get":
        result = text(STATE.get(args["key"], ""))
    elif name == "whoami":
        result = text({"token": TOKEN, "pid": os.getpid(), "keys": sorted(STATE)})
    elif name == "env":
        result = text(os.environ.get(args["name"], ""))
    elif name == "slow":
        steps = int(args.get("steps", 3))
        for i in range(steps):
            time.sleep(float(args.get("delay", 0.01)))
            if token is not None:
                send({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": i + 1, "total": steps, "message": f"step {i + 1}"}})
        result = text(f"done after {steps} steps")
    elif name == "roots":
        ask = f"ask-{mid}"
        ASKED[ask] = [threading.Event(), None]
        send({"jsonrpc": "2.0", "id": ask, "method": "roots/list"})
        if not ASKED[ask][0].wait(20):
            send({"jsonrpc": "2.0", "id": mid, "result": text("no answer from the client", error=True)})
            return
        result = text(ASKED.pop(ask)[1])
    elif name == "announce":
        send({"jsonrpc": "2.0", "id": mid, "result": text("soon")})
        time.sleep(0.3)
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        return
    elif name == "disk":
        st = os.statvfs(".")
        result = text({"size_mib": st.f_blocks * st.f_frsize >> 20, "cwd": os.getcwd()})
    elif name == "crash":
        sys.stderr.write("fixture: crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    else:
        send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": f"Unknown tool: {name}"}})
        return
    send({"jsonrpc": "2.0", "id": mid, "result": result})


def main() -> None:
    if os.environ.get("FIXTURE_FAIL_AT_START"):
        sys.stderr.write("fixture: refusing to start\n")
        sys.exit(7)
    for line in sys.stdin:
        msg = json.loads(line)
        method, mid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if method is None and mid in ASKED:  # the client answered our request
            ASKED[mid][1] = msg.get("result", msg.get("error"))
            ASKED[mid][0].set()
            continue
        if mid is None:
            continue  # notifications: initialized, cancelled
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
                "serverInfo": {"name": "fixture", "version": "1"},
            }})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
        elif method == "tools/call":
            threading.Thread(target=call, args=(mid, params), daemon=True).start()
        elif method == "resources/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"resources": [{"uri": "fixture://token", "name": "token", "mimeType": "text/plain"}]}})
        elif method == "resources/read":
            send({"jsonrpc": "2.0", "id": mid, "result": {"contents": [{"uri": params.get("uri"), "mimeType": "text/plain", "text": TOKEN}]}})
        elif method == "prompts/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"prompts": [{"name": "greet", "description": "Say hello", "arguments": [{"name": "who", "required": True}]}]}})
        elif method == "prompts/get":
            who = (params.get("arguments") or {}).get("who", "you")
            send({"jsonrpc": "2.0", "id": mid, "result": {"messages": [{"role": "user", "content": {"type": "text", "text": f"hello {who}"}}]}})
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"Method not found: {method}"}})


if __name__ == "__main__":
    main()
