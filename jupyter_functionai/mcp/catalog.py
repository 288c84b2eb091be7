"""Well-known stdio MCP server packages, hosted by name.

``functionai mcp add clock --catalog time`` installs ``mcp-server-time``
(from the package index this machine's pip uses: its configuration and
``PIP_*`` variables apply) into a virtual environment of its own,
``<data dir>/envs/<package>``, on first use, and hosts its console script.
The process backend exposes ``<data dir>/envs`` read-only inside every
sandbox (like the Python installation), so the server runs isolated with
its own dependencies.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass

from ..backends.base import SHARED_ENVS_DIR
from ..errors import InvalidArgument

__all__ = ["CATALOG", "CatalogEntry", "ensure_env", "envs_dir"]

INSTALL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    package: str  # a pip requirement
    command: str  # the console script the package installs
    args: tuple[str, ...] = ()
    description: str = ""


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry("time", "mcp-server-time", "mcp-server-time", (), "current time and time-zone conversion (modelcontextprotocol/servers)"),
        CatalogEntry("git", "mcp-server-git", "mcp-server-git", (), "read and change git repositories (modelcontextprotocol/servers)"),
    )
}


def envs_dir(state_dir: str) -> str:
    return os.path.join(state_dir, SHARED_ENVS_DIR)


def _env_name(package: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in package)


_locks: dict[str, asyncio.Lock] = {}


async def ensure_env(state_dir: str, entry: CatalogEntry) -> str:
    """The absolute path of ``entry``'s command, installing its package into its
    own venv first if needed (once; concurrent callers wait for one install)."""
    root = os.path.join(envs_dir(state_dir), _env_name(entry.package))
    command = os.path.join(root, "bin", entry.command)
    lock = _locks.setdefault(root, asyncio.Lock())
    async with lock:
        if os.access(command, os.X_OK):
            return command
        os.makedirs(envs_dir(state_dir), mode=0o755, exist_ok=True)
        os.chmod(envs_dir(state_dir), 0o755)
        tmp = root + ".installing"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            await _run([sys.executable, "-m", "venv", tmp], f"creating a virtual environment for {entry.package}")
            await _run(
                [os.path.join(tmp, "bin", "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", entry.package],
                f"pip install {entry.package}",
            )
            # console scripts carry the venv's path in their #! line: fix it for the final place
            _retarget_scripts(os.path.join(tmp, "bin"), tmp, root)
            shutil.rmtree(root, ignore_errors=True)
            os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not os.access(command, os.X_OK):
            raise InvalidArgument(f"the package {entry.package!r} installed no command {entry.command!r} (in {root}/bin)")
        return command


def _retarget_scripts(bindir: str, old: str, new: str) -> None:
    for name in os.listdir(bindir):
        path = os.path.join(bindir, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            head = f.read(2)
            if head != b"#!":
                continue
            data = head + f.read()
        if old.encode() in data:
            with open(path, "wb") as f:
                f.write(data.replace(old.encode(), new.encode()))
    cfg = os.path.join(os.path.dirname(bindir), "pyvenv.cfg")
    if os.path.exists(cfg):
        with open(cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:
            f.write(text.replace(old, new))


async def _run(argv: list[str], what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), INSTALL_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise InvalidArgument(f"{what} took longer than {INSTALL_TIMEOUT_S:g} s") from None
    if proc.returncode != 0:
        tail = out.decode("utf-8", "replace")[-2000:]
        raise InvalidArgument(f"{what} failed (exit {proc.returncode}):\n{tail}")
