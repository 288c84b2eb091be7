"""The MCP tool service: hosted, authenticated, session-isolated MCP servers.

* :mod:`.protocol` — JSON-RPC / MCP wire constants and helpers (no dependencies);
* :mod:`.manager` — :class:`~.manager.McpManager` (``rt.mcp``): the registry of
  hosted servers, MCP sessions and the request dispatch (asyncio, no tornado);
* :mod:`.tool_module` — the dispatcher module of a function-backed server
  (runs inside its sandboxes);
* :mod:`.stdio_handler` — the in-sandbox relay of a hosted stdio server;
* :mod:`.catalog` — well-known server packages installed on demand;
* :mod:`.schema` — input/output schemas of a Python function (the one adapter
  to the ``mcp`` package, used on the notebook side).

The HTTP endpoint (``/functionai/mcp/{server}/mcp``) is ``server/mcp.py``.
Code inside sandboxes imports only ``tool_module`` and ``stdio_handler``,
which are standard library only.
"""
