"""Which server the notebook surfaces (magics, panels, sandbox kernels) use."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .api import FunctionAIClient
from .client import (
    ENV_URL,
    PARENT_URL,
    AmbiguousServer,
    Client,
    ClientError,
    NoServer,
    ServerChoice,
    choose_server,
)

if TYPE_CHECKING:
    from .embedded import EmbeddedClient

_EMBEDDED: EmbeddedClient | None = None
SANDBOX_KERNEL = "FUNCTIONAI_KERNEL"  # "1" in a sandbox kernel (kernel/handler.py)


def _choice(parent: bool = True) -> ServerChoice | None:
    try:
        return choose_server(parent=parent)
    except AmbiguousServer:
        raise  # several servers and none named: guessing would pick the wrong one
    except NoServer:
        return None


def connect(announce: Callable[[str], Any] | None = print) -> FunctionAIClient:
    """The server that notebook surfaces (magics, panels, sandbox kernels) talk
    to, in the order of the ``functionai`` command (:func:`choose_server`),
    and ``announce`` says which:

    1. ``FUNCTIONAI_URL`` / ``FUNCTIONAI_TOKEN``;
    2. the Jupyter server that started this process (``FUNCTIONAI_PARENT_URL``,
       set by the server extension for its kernels and terminals), if it
       answers;
    3. the one running Jupyter server with the extension (several raise
       :class:`AmbiguousServer`, which lists them);
    4. else an embedded runtime in this process (``EmbeddedClient``).

    The result has ``.source``, a short phrase naming the choice.
    """
    global _EMBEDDED
    if os.environ.get(SANDBOX_KERNEL) == "1" and not os.environ.get(ENV_URL):
        # a sandbox kernel reaches its server only through the relay its
        # provisioner gives it: an embedded runtime here would be a second,
        # hidden one inside the sandbox
        raise NoServer(
            "this sandbox kernel has no way to a functionai server: its kernel manager runs no "
            "functionai server (an embedded runtime), or gave it no relay; start the kernel from "
            "JupyterLab with the functionai extension, or set FUNCTIONAI_URL and FUNCTIONAI_TOKEN"
        )
    choice = _choice()
    if choice is not None and choice.source.startswith(PARENT_URL):
        client = Client(choice.url, choice.token)
        try:
            client.health()
        except ClientError:
            choice = _choice(parent=False)  # it is gone: look further
        else:
            client.source = f"the Jupyter server that started this kernel ({client.url})"
            return client
    if choice is not None:
        client = Client(choice.url, choice.token)
        how = ENV_URL if choice.source == ENV_URL else "a running Jupyter server"
        client.source = f"{how} ({choice.url})"
        return client
    from .embedded import shared_client  # (a Runtime: imported only when needed)

    embedded = shared_client()  # the one of this process (magics, sandbox kernels)
    if embedded is not _EMBEDDED:
        _EMBEDDED = embedded
        embedded.source = f"an embedded runtime in this process ({embedded.data_dir})"
        if announce is not None:
            announce(f"functionai: no server found; functions run in an embedded runtime in this kernel ({embedded.data_dir})")
    return embedded
