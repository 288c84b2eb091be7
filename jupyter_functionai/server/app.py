"""The jupyter-server extension: loads by itself in JupyterLab / Jupyter Server
once the package is installed, and runs standalone as ``functionai serve``.

Configuration is traitlets, so ``c.FunctionAI.data_dir = ...`` in
``jupyter_server_config.py``, ``--FunctionAI.data_dir=...`` on the command
line and the ``FUNCTIONAI_DATA_DIR`` environment variable all work.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, Unicode, default

from .._version import __version__
from ..client import PARENT_TOKEN, PARENT_URL
from ..runtime import Runtime
from .routes import handlers


class FunctionAI(ExtensionApp):
    """Session-isolated sandbox functions served by Jupyter Server."""

    name = "jupyter_functionai"
    description = "jupyter-functionai: session-isolated sandbox functions, served by Jupyter"
    version = __version__
    load_other_extensions = True
    extension_url = "/functionai/api/health"

    data_dir = Unicode(
        config=True,
        help="Where the store, session directories and logs live "
        "(default: $FUNCTIONAI_DATA_DIR, else <jupyter data dir>/functionai).",
    )
    backend = Unicode("process", config=True, help="Sandbox backend: process.")
    reap_interval = Float(1.0, config=True, help="Seconds between idle/lifetime checks of sessions.")
    use_templates = Bool(True, config=True, help="Fork instances from per-function templates (else a fresh interpreter each).")
    task_lease_s = Float(
        15.0,
        config=True,
        help="Seconds a running task's lease lasts without renewal: after a crash, its task is retried this long after the last renewal.",
    )

    warm_kernels = Int(
        1,
        config=True,
        help="Sandboxes kept ready for notebook runs, each with its kernel started (0: every run starts its kernel).",
    )
    schedule_grace_s = Float(
        60.0,
        config=True,
        help="A schedule's cron time found later than this (the server was down) is missed: its catch_up policy applies.",
    )

    aliases = {
        "data-dir": "FunctionAI.data_dir",
        "backend": "FunctionAI.backend",
    }

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("FUNCTIONAI_DATA_DIR") or os.path.join(jupyter_data_dir(), "functionai")

    def initialize_settings(self) -> None:
        self.runtime = Runtime(
            self.data_dir,
            backend=self.backend,
            reap_interval=self.reap_interval,
            use_templates=self.use_templates,
            task_lease_s=self.task_lease_s,
        )
        self.settings["functionai_runtime"] = self.runtime
        from ..runs.manager import RunManager
        from ..runs.schedules import Scheduler

        root = getattr(self.serverapp, "root_dir", None) or os.getcwd()
        self.runs = RunManager(self.runtime, root, warm_kernels=self.warm_kernels)
        self.scheduler = Scheduler(self.runs, grace_s=self.schedule_grace_s)
        self.settings["functionai_runs"] = self.runs
        self.settings["functionai_schedules"] = self.scheduler
        self.log.info("functionai: data dir %s, backend %s", self.data_dir, self.backend)

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        await self.runtime.ensure_started()
        self._advertise(serverapp)  # first: kernels started from now on know this server
        await self.runs.prepare()
        self.scheduler.start()

    def _advertise(self, serverapp: Any) -> None:
        """Tell the processes this server starts (kernels, terminals) where it
        is: the magics in its kernels then talk to it before anything else."""
        url = serverapp.connection_url.rstrip("/")
        token = getattr(serverapp.identity_provider, "token", "") or ""
        self._advertised = {PARENT_URL: url, PARENT_TOKEN: token}
        os.environ.update(self._advertised)

    async def stop_extension(self) -> None:
        advertised = getattr(self, "_advertised", {})
        if advertised and all(os.environ.get(k) == v for k, v in advertised.items()):
            for key in advertised:
                os.environ.pop(key, None)
        await self.scheduler.close()
        await self.runtime.close()


main = launch_new_instance = FunctionAI.launch_instance
