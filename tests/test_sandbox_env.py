"""No server secret reaches a sandbox: templates start from an allowlisted
environment, so a secret the server's user exported is neither in a sandbox's
environment nor anywhere in its memory (the stack keeps a process's initial
environment: scanning it with ctypes found the keys before)."""

from __future__ import annotations

import secrets

import pytest

from jupyter_functionai import Runtime
from jupyter_functionai.backends.process import sandbox_env

from .conftest import deploy

SCANNER = '''
import os
AT_IMPORT = dict(os.environ)  # module level: runs in the template

def _secrets_in_memory():
    """Reads the process's own readable memory (stack, heap, every mapping) the
    way an attacker in the sandbox would, with ctypes, and returns every string
    shaped like the test's secrets (the pattern cannot match itself)."""
    import ctypes, re
    shape = re.compile(rb"s3cr3t-[0-9a-f]{24}")
    found = set()
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for parts in regions:
        name = parts[5] if len(parts) > 5 else ""
        if not parts[1].startswith("r") or name.startswith("[v"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if end - start <= 256 << 20:
            found.update(m.decode() for m in shape.findall(ctypes.string_at(start, end - start)))
    return sorted(found)

def handler(event, ctx):
    return {
        "import_env": sorted(k for k in AT_IMPORT if k in event["names"]),
        "env": sorted(k for k in os.environ if k in event["names"]),
        "memory": _secrets_in_memory(),
    }
'''


@pytest.mark.asyncio
async def test_server_secrets_are_not_in_sandbox_env_or_memory(tmp_path, monkeypatch) -> None:
    values = {name: "s3cr3t-" + secrets.token_hex(12) for name in ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "MY_PRIVATE_THING")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    async with Runtime.open(tmp_path / "state") as rt:
        await deploy(rt, "scan", SCANNER, memory="512Mi")
        event = {"names": sorted(values)}  # the names only: the values never travel
        for session in (None, "scanned"):
            seen = (await rt.invoke("scan", event, session=session)).value
            assert seen == {"import_env": [], "env": [], "memory": []}, seen
        # a variable the spec names does reach it (that is how a function gets a key),
        # and the scan finds it: the scan works
        await deploy(rt, "scan", SCANNER, memory="512Mi", env={"OPENAI_API_KEY": values["OPENAI_API_KEY"]})
        seen = (await rt.invoke("scan", event, session="given")).value
        assert seen["env"] == ["OPENAI_API_KEY"] and seen["import_env"] == ["OPENAI_API_KEY"]
        assert seen["memory"] == [values["OPENAI_API_KEY"]], seen


def test_the_environment_is_an_allowlist() -> None:
    env = sandbox_env({"PATH": "/bin", "LC_ALL": "C", "OPENBLAS_CORETYPE": "Haswell", "JUPYTER_TOKEN": "t", "HOME": "/root", "ANYTHING": "x", "SSH_AUTH_SOCK": "/s"})
    assert env == {"PATH": "/bin", "LC_ALL": "C", "OPENBLAS_CORETYPE": "Haswell"}
