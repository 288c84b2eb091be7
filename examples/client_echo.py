"""The README's Python client: talks to a running server (``functionai serve``
or ``functionai lab``), found like the CLI finds it (--url is FUNCTIONAI_URL
here).

    export FUNCTIONAI_URL=... FUNCTIONAI_TOKEN=...     # the line `functionai serve` prints
    python examples/client_echo.py
"""

from jupyter_functionai import Client

fai = Client()                                   # FUNCTIONAI_URL, else the one running server
fai.deploy("echo", "def handler(event, ctx):\n    return event\n")
r = fai.invoke("echo", {"x": 1}, session="echo-client")  # session ids are global: one per function
print(r.value, r.session_id, r.instance_id, r.cold_start)
