"""The ``functionai`` command line.

    functionai demo [--state-dir DIR]        deploy the example, two isolated sessions
    functionai bench coldstart|density ...   run a benchmark from the repository checkout
    functionai --version

Exit codes: 0 ok, 1 the function (or a benchmark) failed, 2 usage error.

This module imports only the standard library and the runtime (no numpy or
pandas): the benchmarks load those themselves when they run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ._version import __version__

BENCHMARKS = ("coldstart", "density")
DEMO_FUNCTION = "agent-memory"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    pass


# -- demo --------------------------------------------------------------------------


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def _format_isolation(desc: dict[str, Any]) -> list[str]:
    inst = desc.get("instance") or {}
    iso = inst.get("isolation") or {}
    ns = iso.get("namespaces") or {}
    missing = iso.get("missing") or {}
    mb = 1024 * 1024
    lines = [f"isolation report of session {desc['id']!r}: instance {inst.get('id')} (host pid {inst.get('pid')}, started via {inst.get('path')})"]
    lines.append("  namespaces   : " + (", ".join(f"{k} {_yes(v)}" for k, v in sorted(ns.items())) or "none"))
    lines.append(f"  cgroup       : {iso.get('cgroup') or 'none'}" + ("" if iso.get("cgroup") else "  (rlimits are the fallback)"))
    uid = iso.get("uid")
    lines.append(f"  uid          : {uid if uid is not None else 'not switched'}" + (" (a uid of its own)" if uid is not None else ""))
    net = str(iso.get("network"))
    net_note = {"none": "own network namespace, no interface up", "loopback": "own network namespace, loopback only", "host": "the host's network"}
    lines.append(f"  network      : {net} ({net_note.get(net, '?')})" if ns.get("net") or net == "host" else f"  network      : {net} (no network namespace)")
    lines.append(f"  filesystem   : private /tmp {_yes(iso.get('private_tmp'))}; hidden: {', '.join(iso.get('fs_masked') or []) or 'nothing'}")
    lines.append(
        f"  process      : no_new_privs {_yes(iso.get('no_new_privs'))}; rlimits {', '.join(iso.get('rlimits') or []) or 'none'}; "
        f"inherited fds closed {_yes(iso.get('fds_closed'))}; reseeded {', '.join(iso.get('reseeded') or []) or 'nothing'}"
    )
    if missing:
        lines.append("  missing      : " + str(len(missing)) + " layer(s)")
        lines += [f"    - {k}: {v}" for k, v in sorted(missing.items())]
    else:
        lines.append("  missing      : none")
    if inst.get("rss"):
        lines.append(f"  memory       : RSS {inst['rss'] / mb:.1f} MiB, unique (USS) {inst.get('uss', 0) / mb:.1f} MiB")
    return lines


async def _demo(state_dir: str) -> int:
    from . import FunctionSpec, Runtime
    from .examples import agent_tools

    source = agent_tools.__file__
    print(f"functionai {__version__} demo: state dir {state_dir}")
    async with Runtime.open(state_dir) as rt:
        t0 = time.perf_counter()
        await rt.deploy(FunctionSpec.from_file(DEMO_FUNCTION, source, min_instances=2, description="agent memory example"))
        await rt.pool.wait_full(DEMO_FUNCTION)
        print(f"deployed {DEMO_FUNCTION!r} from {source} with min_instances=2 ({(time.perf_counter() - t0) * 1000:.0f} ms, pool: {rt.pool.sizes()[DEMO_FUNCTION]['ready']} ready)")
        print()
        plan = [
            ("alice", {"note": "alice: prefers tea"}),
            ("bob", {"note": "bob: allergic to nuts"}),
            ("alice", {"note": "alice: meeting at 3pm"}),
            ("bob", None),  # the peek event, once alice's file path is known
        ]
        calls: dict[str, list[tuple[Any, dict[str, Any]]]] = {"alice": [], "bob": []}
        for i, (sid, event) in enumerate(plan):
            if event is None:
                event = {"note": "bob: likes jazz", "peek": calls["alice"][-1][1]["file"]}
            t = time.perf_counter()
            r = await rt.invoke(DEMO_FUNCTION, event, session=sid)
            ms = (time.perf_counter() - t) * 1000
            v = r.value
            calls[sid].append((r, v))
            start = f"cold start {r.cold_start.path} {ms:.1f} ms" if r.cold_start else f"warm {ms:.1f} ms"
            print(f"[{sid} #{len(calls[sid])}] instance={r.instance_id} uid={v['uid']} {start}")
            print(f"    value: notes={_short(v['notes'])} file_lines={len(v['file_lines'])} pid={v['pid']} hostname={v['hostname']} network={v['network']}")
            if v.get("peek"):
                print(f"    peek at {v['peek']['path']}: {'READABLE' if v['peek']['readable'] else v['peek']['error']}")
            if i == len(plan) - 1:
                print()
        (ra, va), (rb, vb) = calls["alice"][-1], calls["bob"][-1]
        alice_notes = set(va["notes"])
        leaked_notes = sorted(alice_notes & set(vb["notes"]))
        peek = vb["peek"] or {}
        checks = [
            ("different instances", ra.instance_id != rb.instance_id, f"{ra.instance_id} vs {rb.instance_id}", True),
            ("same instance across a session's calls", len({r.instance_id for r, _ in calls["alice"]}) == 1 and len({r.instance_id for r, _ in calls["bob"]}) == 1, "affinity", True),
            ("different uids", va["uid"] != vb["uid"], f"{va['uid']} vs {vb['uid']}", os.geteuid() == 0),
            ("bob does not see alice's notes", not leaked_notes, f"bob's notes: {vb['notes']}", True),
            ("bob cannot read alice's file", not peek.get("readable"), peek.get("error") or "it was readable", os.geteuid() == 0),
        ]
        print("isolation checks:")
        failed = []
        for label, ok, detail, hard in checks:
            print(f"  {label:<40} {'yes' if ok else 'NO'}  ({detail})")
            if not ok and hard:
                failed.append(label)
        print()
        desc = await rt.describe_session("alice")
        for line in _format_isolation(desc):
            print(line)
        print()
        for sid in ("alice", "bob"):
            await rt.close_session(sid)
        print("closed sessions alice and bob: " + ", ".join(f"{s['id']}={s['status']}" for s in await rt.sessions(DEMO_FUNCTION)))
    if failed:
        print(f"isolation check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    own = args.state_dir is None
    state_dir = tempfile.mkdtemp(prefix="functionai-demo-") if own else os.path.abspath(os.path.expanduser(args.state_dir))
    try:
        return asyncio.run(_demo(state_dir))
    finally:
        if own:
            shutil.rmtree(state_dir, ignore_errors=True)


# -- bench ------------------------------------------------------------------------------


def benchmarks_dir() -> Path:
    import jupyter_functionai

    return Path(jupyter_functionai.__file__).resolve().parent.parent / "benchmarks"


def _load_benchmark(name: str) -> ModuleType:
    bench = benchmarks_dir()
    path = bench / f"{name}.py"
    if not path.is_file():
        raise _UsageError(
            f"benchmark {name!r} not found: {path} does not exist "
            "(the benchmarks ship with the repository checkout, not with the installed package)"
        )
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))  # for their shared ``_common`` helpers
    spec = importlib.util.spec_from_file_location(f"_functionai_bench_{name}", path)
    if spec is None or spec.loader is None:
        raise _UsageError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def cmd_bench(args: argparse.Namespace) -> int:
    module = _load_benchmark(args.which)
    rest = list(args.args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        rc = module.main(rest)
    except SystemExit as exc:  # argparse inside the benchmark: 2 on a usage error, 0 for --help
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    return int(rc or 0)


# -- main ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="functionai",
        description="Jupyter-native runtime of session-isolated sandbox functions.",
        epilog="exit codes: 0 ok, 1 the function failed, 2 usage error",
    )
    ap.add_argument("--version", action="version", version=f"functionai {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="deploy the example agent-memory function and show two isolated sessions")
    demo.add_argument("--state-dir", metavar="DIR", help="runtime state directory (default: a temporary one, deleted afterwards)")
    demo.set_defaults(func=cmd_demo)
    bench = sub.add_parser(
        "bench",
        help="run a benchmark (coldstart, density) from the repository checkout",
        description="Run benchmarks/<name>.py main(args); pass --help after the name for its options.",
    )
    bench.add_argument("which", choices=BENCHMARKS, metavar="{coldstart,density}", help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(func=cmd_bench)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    if not getattr(args, "func", None):
        ap.print_usage(sys.stderr)
        print("functionai: error: a command is required (demo, bench)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except _UsageError as exc:
        print(f"functionai: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .errors import FunctionAIError

        kind = exc.kind if isinstance(exc, FunctionAIError) else type(exc).__name__
        print(f"functionai: {args.command} failed ({kind}): {exc}", file=sys.stderr)
        tb = getattr(exc, "details", {}).get("traceback") if isinstance(exc, FunctionAIError) else None
        if tb:
            print(tb, file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
