"""Which server the notebook surfaces (magics, panels, sandbox kernels) use."""

from __future__ import annotations

import os
from typing import Any

from .client import ENV_URL, PARENT_TOKEN, PARENT_URL, Client, ClientError, NoServer

_EMBEDDED: Any = None


def connect(announce: Any = print) -> Any:
    """The server that notebook surfaces (magics, panels, sandbox kernels) talk
    to, in this order, and ``announce`` says which:

    1. the Jupyter server that started this process (``FUNCTIONAI_PARENT_URL``,
       set by the server extension for its kernels and terminals);
    2. ``FUNCTIONAI_URL`` / ``FUNCTIONAI_TOKEN``, else the running servers;
    3. an embedded runtime in this process (``EmbeddedClient``).

    The result has ``.source``, a short phrase naming the choice.
    """
    global _EMBEDDED
    parent = os.environ.get(PARENT_URL)
    if parent:
        client = Client(parent, os.environ.get(PARENT_TOKEN, ""))
        try:
            client.health()
        except ClientError:
            pass
        else:
            client.source = f"the Jupyter server that started this kernel ({client.url})"
            return client
    client = Client()
    try:
        url = client.url
    except NoServer:
        pass
    else:
        how = "FUNCTIONAI_URL" if os.environ.get(ENV_URL) else "a running Jupyter server"
        client.source = f"{how} ({url})"
        return client
    from .embedded import shared_client  # (a Runtime: imported only when needed)

    embedded = shared_client()  # the one of this process (magics, sandbox kernels)
    if embedded is not _EMBEDDED:
        _EMBEDDED = embedded
        embedded.source = f"an embedded runtime in this process ({embedded.data_dir})"
        if announce is not None:
            announce(f"functionai: no server found; functions run in an embedded runtime in this kernel ({embedded.data_dir})")
    return embedded
