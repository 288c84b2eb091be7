"""The jupyter-server extension: loads by itself in JupyterLab / Jupyter Server
once the package is installed, and runs standalone as ``functionai serve``.

Configuration is traitlets, so ``c.FunctionAI.data_dir = ...`` in
``jupyter_server_config.py``, ``--FunctionAI.data_dir=...`` on the command
line and the ``FUNCTIONAI_DATA_DIR`` environment variable all work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Float, Int, Type, Unicode, default

from .._version import __version__
from ..backends import BACKENDS
from ..backends.base import Backend
from ..client import PARENT_TOKEN, PARENT_URL
from ..stack import Stack
from .gateway import LeanInvokeRoute
from .routes import handlers


class BackendType(Type):
    """A :class:`Backend` subclass, by dotted path or by short name (``process``)."""

    info_text = f"a Backend subclass, or one of: {', '.join(BACKENDS)}"

    def validate(self, obj: Any, value: Any) -> Any:
        if isinstance(value, str):
            value = BACKENDS.get(value, value)
        return super().validate(obj, value)


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
    backend = BackendType(
        default_value=BACKENDS["process"],
        klass=Backend,
        config=True,
        help=f"Sandbox backend: a Backend subclass, by dotted path or short name ({', '.join(BACKENDS)}).",
    )
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

    usage_prices = Dict(
        {},
        config=True,
        help=(
            "The price table that turns usage into cost (GET /functionai/api/usage rows gain cost and currency): "
            "cpu_s, mem_gib_s, gpu_s, gpu_mem_gib_s (the price of one unit of each), idle_factor (0..1: the part "
            "of the memory and GPU price an idle instance pays) and currency. Empty: no costs."
        ),
    )

    aliases = {
        "data-dir": "FunctionAI.data_dir",
        "backend": "FunctionAI.backend",
    }

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("FUNCTIONAI_DATA_DIR") or os.path.join(jupyter_data_dir(), "functionai")

    def initialize_settings(self) -> None:
        """The composition root (``Stack``) builds the store, the runtime and
        the services; handlers reach each through its own setting."""
        root = getattr(self.serverapp, "root_dir", None) or os.getcwd()
        self.stack = Stack(
            self.data_dir,
            backend=self.backend,
            root_dir=root,
            reap_interval=self.reap_interval,
            use_templates=self.use_templates,
            task_lease_s=self.task_lease_s,
            warm_kernels=self.warm_kernels,
            schedule_grace_s=self.schedule_grace_s,
            prices=dict(self.usage_prices) or None,
        )
        self.runtime = self.stack.runtime
        self.settings.update(
            functionai_stack=self.stack,
            functionai_runtime=self.stack.runtime,
            functionai_mcp=self.stack.mcp,
            functionai_runs=self.stack.runs,
            functionai_schedules=self.stack.scheduler,
        )
        self.log.info("functionai: data dir %s, backend %s", self.data_dir, self.backend.__name__)

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())
        assert self.serverapp is not None
        LeanInvokeRoute.install(self.serverapp.web_app)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        await self.stack.ensure_started()
        self._advertise(serverapp)  # first: kernels started from now on know this server
        await self.stack.start_schedules()

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
        await self._stop_sandbox_kernels()  # before the runtime they run in
        stack = getattr(self, "stack", None)  # None when the extension failed to load
        if stack is not None:
            await stack.close()

    async def _stop_sandbox_kernels(self) -> None:
        """Jupyter stops extensions before kernels; sandbox kernels run in this
        extension's runtime, so they are shut down first (at once: the server
        is going), each one's session closed, before the runtime closes."""
        from ..kernel.provisioner import SandboxProvisioner

        km = getattr(self.serverapp, "kernel_manager", None)
        if km is None:
            return
        ids = []
        for kid in list(km.list_kernel_ids()):
            with contextlib.suppress(KeyError):
                if isinstance(getattr(km.get_kernel(kid), "provisioner", None), SandboxProvisioner):
                    ids.append(kid)
        if not ids:
            return
        self.log.info("functionai: shutting down %d sandbox kernel(s)", len(ids))
        done = await asyncio.gather(*(asyncio.wait_for(km.shutdown_kernel(kid, now=True), 10) for kid in ids), return_exceptions=True)
        for kid, res in zip(ids, done, strict=True):
            if isinstance(res, BaseException):
                self.log.warning("functionai: sandbox kernel %s did not shut down cleanly: %s", kid, res)


main = launch_new_instance = FunctionAI.launch_instance
