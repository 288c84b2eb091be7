"""Starts an MPS control daemon with a card's own ``/dev/shm``.

``python -m jupyter_functionai.sandbox.mps_launch SHM -- nvidia-cuda-mps-control -d``

MPS clients and their server share memory through ``/dev/shm``. The daemon
(and the servers it spawns) get a mount namespace of their own in which the
card's directory ``SHM`` is ``/dev/shm``; each client instance is given the
same directory as its ``/dev/shm`` (``worker.py``). Neither sees the host's.
As a normal user, the namespace is made inside a user namespace mapping the
caller's uid, as the sandboxes' are. The command then replaces this process
(``-d`` forks the daemon into the background and returns).
"""

from __future__ import annotations

import os
import sys

from . import isolation as iso


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m jupyter_functionai.sandbox.mps_launch SHM -- COMMAND ...", file=sys.stderr)
        return 2
    shm, command = argv[0], argv[2:]
    if not os.path.isdir(shm):
        print(f"mps_launch: {shm} is not a directory", file=sys.stderr)
        return 2
    try:
        if os.geteuid() != 0:
            iso.enter_user_namespace()
        iso.unshare(iso.CLONE_NEWNS)
        iso.mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE)
        iso.mount(shm, "/dev/shm", None, iso.MS_BIND)
    except OSError as exc:
        print(f"mps_launch: cannot give the daemon {shm} as its /dev/shm: {exc}", file=sys.stderr)
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"mps_launch: {command[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
