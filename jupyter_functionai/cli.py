"""The ``functionai`` command line.

    functionai serve [--port P] [--ip IP] [--token T] [--data-dir D] [JUPYTER ARGS...]
    functionai deploy FILE [--name N] [--handler H] [--memory M] [--timeout T] ...
    functionai ls | versions NAME | rollback NAME VERSION | delete NAME
    functionai invoke NAME [--session ID] [--data JSON|@FILE] [--verbose]
    functionai sessions [NAME] | session ID | open-session NAME | close-session ID
    functionai coldstarts [NAME] | logs NAME | health
    functionai keys create FUNCTION [--note TEXT] | keys ls [FUNCTION] | keys revoke ID
    functionai submit NAME [--data JSON] [--wait] | tasks ls|show|wait|cancel|retry
    functionai run NOTEBOOK [-p NAME VALUE ...] [--html] [--tag T] [--wait]
    functionai runs ls|show|cancel|rm|download ...
    functionai schedule add NOTEBOOK --cron CRON [--tz TZ] [-p NAME VALUE ...] | ls | show ID
    functionai schedule pause|resume|rm|run-now|runs ID
    functionai mcp add NAME -- COMMAND ... | mcp ls | mcp rm NAME
    functionai demo [--state-dir DIR]        deploy the example, two isolated sessions
    functionai bench coldstart|density ...   run a benchmark from the repository checkout
    functionai --version

``serve`` runs a Jupyter Server with the extension (it blocks; SIGINT or
SIGTERM stop it gracefully, closing the runtime and its sandboxes).  Every
other server command talks HTTP to a running server through
:class:`jupyter_functionai.client.Client`, chosen in this order
(:func:`jupyter_functionai.client.choose_server`): ``--url`` / ``--token``
(before or after the command), else ``FUNCTIONAI_URL`` / ``FUNCTIONAI_TOKEN``,
else ``FUNCTIONAI_PARENT_URL`` / ``FUNCTIONAI_PARENT_TOKEN`` (the server that
started this terminal or kernel), else the one running Jupyter server whose
functionai API answers; with several it refuses and lists them.  Errors and
``invoke --verbose`` name the server used.  ``serve`` and ``lab`` print
``export FUNCTIONAI_URL=... FUNCTIONAI_TOKEN=...`` on stdout once their server
answers and its warm pools are full.  List commands print tables; ``--json`` prints the server's JSON
instead.

Exit codes:

- 0: ok;
- 1: the call failed on the server: the function raised (its traceback is
  printed on stderr), timed out, ran out of memory or crashed, or the server
  refused the call for what it found (``not_found``, ``session_closed`` -- a
  closed session is gone, like an unknown one --, ``conflict``,
  ``payload_too_large``, ``no_capacity``, an internal error); also a failed
  demo or benchmark;
- 2: the request was wrong or could not be made: a usage error (bad
  arguments, ``--data`` that is not JSON, an unreadable file, a spec rejected
  as ``invalid_spec``, ``bad_payload`` or ``invalid_argument`` here or by the
  server), no server reachable, or credentials rejected (``unauthorized``).

This module imports only the standard library and the runtime (no numpy or
pandas): the benchmarks load those themselves when they run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .client import Client, ServerChoice

BENCHMARKS = ("coldstart", "density", "gateway", "tasks", "mcp", "runs")
DEMO_FUNCTION = "agent-memory"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# error kinds that mean "the request was wrong or could not be made" (exit 2)
USAGE_KINDS = frozenset(
    {"invalid_spec", "bad_payload", "invalid_argument", "no_server", "ambiguous_server", "unauthorized", "request_timeout", "bad_response", "client_error"}
)


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
    if iso.get("user_namespace"):
        lines.append("  user ns      : yes (an unprivileged user namespace: root inside it, the server's user outside)")
    lines.append(f"  capabilities : {'none left' if iso.get('caps_dropped') else 'NOT dropped'}")
    net = str(iso.get("network"))
    net_note = {"none": "own network namespace, no interface up", "loopback": "own network namespace, loopback only", "host": "the host's network"}
    lines.append(f"  network      : {net} ({net_note.get(net, '?')})" if ns.get("net") or net == "host" else f"  network      : {net} (no network namespace)")
    lines.append(
        f"  filesystem   : private /tmp {_yes(iso.get('private_tmp'))}; own /sys {_yes(iso.get('own_sysfs'))}; "
        f"hidden: {', '.join(iso.get('fs_masked') or []) or 'nothing'}"
    )
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
        # last, for their shared ``_common`` helpers: benchmarks/mcp.py must
        # not hide the ``mcp`` package
        sys.path.append(str(bench))
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


# -- serve --------------------------------------------------------------------------------


def serve_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The Jupyter Server command line of ``functionai serve`` / ``lab``
    (``open_browser`` once: Jupyter refuses a repeated option)."""
    argv = [f"--ServerApp.open_browser={bool(args.browser)}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    # a tty's ^C would ask "Shut down this Jupyter server (y/[n])?": stop at once instead
    argv.append("--ServerApp.answer_yes=True")
    if args.port is not None:
        argv.append(f"--ServerApp.port={args.port}")
    if args.ip is not None:
        argv.append(f"--ServerApp.ip={args.ip}")
    token = args.serve_token if args.serve_token is not None else (getattr(args, "token", None) or os.environ.get("FUNCTIONAI_TOKEN"))
    if token is not None:
        argv.append(f"--IdentityProvider.token={token}")
    if args.data_dir is not None:
        argv.append(f"--FunctionAI.data_dir={os.path.abspath(os.path.expanduser(args.data_dir))}")
    return argv + list(extra)


POOL_WAIT = 120.0  # the longest the export line waits for warm pools to fill


def _pools_settled(health: dict[str, Any]) -> bool:
    """Every warm pool holds its target, or has given up with an error."""
    pools = health.get("pool")
    if not isinstance(pools, dict):
        return True
    for slot in pools.values():
        if not isinstance(slot, dict) or slot.get("last_error"):
            continue
        ready, target = slot.get("ready"), slot.get("target")
        if isinstance(ready, int) and isinstance(target, int) and ready < target:
            return False
    return True


def _announce_when_up(timeout: float = 600.0) -> threading.Event:
    """Print ``export FUNCTIONAI_URL=... FUNCTIONAI_TOKEN=...`` once, on
    stdout, when the server this process runs answers its functionai health
    route (checked here, over HTTP) and its warm pools are full (or have
    failed, or POOL_WAIT has passed), so the README's first call is served
    warm.  Set the returned event to give up."""
    stop = threading.Event()

    def watch() -> None:
        from jupyter_server.serverapp import ServerApp

        from .client import Client, ClientError

        deadline = time.monotonic() + timeout
        pools_deadline = time.monotonic() + min(timeout, POOL_WAIT)
        while not stop.wait(0.1) and time.monotonic() < deadline:
            app = ServerApp.instance() if ServerApp.initialized() else None
            info_file = getattr(app, "info_file", None)
            if app is None or getattr(app, "_stopping", False) or not info_file or not os.path.exists(info_file):
                continue  # the runtime file is written once the port is bound
            url = app.connection_url.rstrip("/")
            token = getattr(app.identity_provider, "token", "") or ""
            try:
                health = Client(url, token, timeout=5).health()
            except ClientError:
                continue
            if not _pools_settled(health) and time.monotonic() < pools_deadline:
                continue  # a call pasted right after the line finds the warm pools full
            print(f"export FUNCTIONAI_URL={shlex.quote(url)} FUNCTIONAI_TOKEN={shlex.quote(token)}", flush=True)
            return

    threading.Thread(target=watch, name="functionai-announce", daemon=True).start()
    return stop


def _forget_client_env() -> None:
    """The server this process becomes is not a client: a FUNCTIONAI_URL /
    FUNCTIONAI_TOKEN inherited from the shell (another server's) must not
    reach its kernels and terminals, which talk to it (FUNCTIONAI_PARENT_URL)."""
    from .client import ENV_TOKEN, ENV_URL

    for key in (ENV_URL, ENV_TOKEN):
        os.environ.pop(key, None)


def _stop_server_on_sigint() -> None:
    """SIGINT stops the server like SIGTERM does (its extensions stop, the runtime
    closes its sandboxes) instead of interrupting the event loop, which would
    skip the cleanup.  A second SIGINT interrupts."""

    def on_sigint(signum: int, frame: Any) -> None:
        from jupyter_server.serverapp import ServerApp

        app = ServerApp.instance() if ServerApp.initialized() else None
        if app is None or getattr(app, "io_loop", None) is None:
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
        app.log.critical("received signal %s, stopping", signum)
        app.stop(from_signal=True)

    signal.signal(signal.SIGINT, on_sigint)


def cmd_serve(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .server.app import FunctionAI

    argv = serve_argv(args, extra)
    _forget_client_env()
    _stop_server_on_sigint()
    announcer = _announce_when_up()
    try:
        FunctionAI.launch_instance(argv=argv)
    except SystemExit as exc:  # --help, a bad option, a port in use ...
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_FAILED)
    finally:
        announcer.set()
    return EXIT_OK


def default_data_dir() -> str:
    from jupyter_core.paths import jupyter_data_dir

    return os.environ.get("FUNCTIONAI_DATA_DIR") or os.path.join(jupyter_data_dir(), "functionai")


async def _seed_example(data_dir: str) -> str:
    """Deploy the example agent-memory function into ``data_dir`` unless it is there."""
    from . import FunctionSpec, Runtime
    from .examples import agent_tools

    async with Runtime.open(data_dir) as rt:
        if DEMO_FUNCTION not in {f["name"] for f in rt.functions()}:
            await rt.deploy(FunctionSpec.from_file(DEMO_FUNCTION, agent_tools.__file__, min_instances=2, description="agent memory example"))
            return "deployed"
    return "already there"


def cmd_lab(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """JupyterLab with the extension active and the example function deployed."""
    try:
        from jupyterlab.labapp import LabApp
    except ImportError:
        raise _UsageError("JupyterLab is not installed: pip install 'jupyter-functionai[lab]'") from None
    if args.data_dir is None:
        args.data_dir = default_data_dir()
    if args.example:
        state = asyncio.run(_seed_example(os.path.abspath(os.path.expanduser(args.data_dir))))
        print(f"functionai: example function {DEMO_FUNCTION!r} {state} (data dir {args.data_dir})", file=sys.stderr)
    argv = serve_argv(args, extra)
    _forget_client_env()
    _stop_server_on_sigint()
    announcer = _announce_when_up()
    try:
        LabApp.launch_instance(argv=argv)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_FAILED)
    finally:
        announcer.set()
    return EXIT_OK


# -- output helpers -----------------------------------------------------------------------


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _ms(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def _secs(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    if v < 120:
        return f"{v:.0f}s"
    if v < 7200:
        return f"{v / 60:.0f}m"
    return f"{v / 3600:.1f}h"


def _cell(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for line in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


# -- the server commands ----------------------------------------------------------------------


def _choose(args: argparse.Namespace) -> ServerChoice:
    """The server of this command (see ``choose_server``), chosen once."""
    from .client import choose_server

    choice: ServerChoice | None = getattr(args, "server_choice", None)
    if choice is None:
        choice = choose_server(getattr(args, "url", None), getattr(args, "token", None), url_source="--url")
        args.server_choice = choice
    return choice


def _client(args: argparse.Namespace) -> Client:
    from .client import Client

    choice = _choose(args)
    return Client(url=choice.url, token=choice.token)


def default_name(path: str) -> str:
    """A valid function name made from a file's stem (``my file.py`` -> ``my-file``)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(path).stem).strip("-_") or "function"
    if not stem[0].isalpha():
        stem = "f-" + stem
    return stem[:63]


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def cmd_deploy(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.file):
        raise _UsageError(f"{args.file}: no such file")
    fields: dict[str, Any] = {}
    for opt, key in (
        ("gpu", "gpu"),
        ("gpu_memory", "gpu_memory"),
        ("cpu", "cpu"),
        ("memory", "memory"),
        ("timeout", "timeout"),
        ("min_instances", "min_instances"),
        ("max_instances", "max_instances"),
        ("target_concurrency", "target_concurrency"),
        ("cooldown", "cooldown"),
        ("idle_ttl", "idle_ttl"),
        ("network", "network"),
        ("description", "description"),
    ):
        value = getattr(args, opt)
        if value is not None:
            fields[key] = value
    if args.env:
        fields["env"] = dict(args.env)
    name = args.name or default_name(args.file)
    row = _client(args).deploy(name, file=args.file, handler=args.handler, **fields)
    if args.json:
        print_json(row)
    else:
        print(f"deployed {row['name']} version {row['version']}")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    rows = _client(args).functions()
    if args.json:
        print_json(rows)
    else:
        print_table(
            ("NAME", "ACTIVE", "LATEST", "UPDATED"),
            [(r["name"], r.get("active_version"), r.get("latest_version"), _when(r.get("updated_at"))) for r in rows],
            "no functions",
        )
    return EXIT_OK


def cmd_versions(args: argparse.Namespace) -> int:
    rows = _client(args).versions(args.name)
    if args.json:
        print_json(rows)
    else:
        print_table(
            ("VERSION", "ACTIVE", "DIGEST", "CREATED"),
            [(r["version"], "*" if r.get("active") else "", str(r.get("digest") or "")[:12], _when(r.get("created_at"))) for r in rows],
            "no versions",
        )
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    row = _client(args).rollback(args.name, args.version)
    if args.json:
        print_json(row)
    else:
        print(f"{row['name']}: active version {row['version']}")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    _client(args).delete(args.name)
    print(f"deleted {args.name}")
    return EXIT_OK


def _load_data(text: str | None) -> Any:
    if text is None:
        return None
    source = "--data"
    if text.startswith("@"):
        path = text[1:]
        source = f"--data @{path}"
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _UsageError(f"{source}: cannot read the file: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _UsageError(f"{source} is not valid JSON: {exc}") from None


def cmd_invoke(args: argparse.Namespace) -> int:
    event = _load_data(args.data)
    client = _client(args)
    if args.verbose:
        print(f"server: {_choose(args).describe()}", file=sys.stderr)
    r = client.invoke(args.name, event, session=args.session)
    if args.verbose:
        print(f"HTTP {r.status}", file=sys.stderr)
        for key in sorted(r.headers, key=str.lower):
            if key.lower().startswith("x-functionai-"):
                print(f"{key}: {r.headers[key]}", file=sys.stderr)
    print_json(r.value)
    return EXIT_OK


def _session_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            s["id"],
            s.get("function"),
            s.get("version"),
            s.get("status"),
            s.get("calls"),
            (s.get("instance") or {}).get("id"),
            (s.get("instance") or {}).get("pid"),
            _secs(s.get("idle_s")),
            _secs(s.get("age_s")),
        )
        for s in rows
    ]


def cmd_sessions(args: argparse.Namespace) -> int:
    rows = _client(args).sessions(args.name, status=args.status)
    if args.json:
        print_json(rows)
    else:
        print_table(("ID", "FUNCTION", "VERSION", "STATUS", "CALLS", "INSTANCE", "PID", "IDLE", "AGE"), _session_rows(rows), "no sessions")
    return EXIT_OK


def cmd_session(args: argparse.Namespace) -> int:
    print_json(_client(args).session(args.id))
    return EXIT_OK


def cmd_open_session(args: argparse.Namespace) -> int:
    row = _client(args).open_session(args.name, args.session)
    if args.json:
        print_json(row)
    else:
        print(f"opened session {row['id']} of {row.get('function')} (instance {(row.get('instance') or {}).get('id')})")
    return EXIT_OK


def cmd_close_session(args: argparse.Namespace) -> int:
    _client(args).close_session(args.id)
    print(f"closed session {args.id}")
    return EXIT_OK


def cmd_coldstarts(args: argparse.Namespace) -> int:
    rows = _client(args).coldstarts(args.name, limit=args.limit)
    if args.json:
        print_json(rows)
    else:
        print_table(
            ("AT", "FUNCTION", "VERSION", "PATH", "SPAWN_MS", "INIT_MS", "FIRST_CALL_MS", "SESSION", "INSTANCE"),
            [
                (_when(r.get("at")), r.get("function"), r.get("version"), r.get("path"), _ms(r.get("spawn_ms")), _ms(r.get("init_ms")), _ms(r.get("first_call_ms")), r.get("session_id"), r.get("instance_id"))
                for r in rows
            ],
            "no cold starts",
        )
    return EXIT_OK


def cmd_usage(args: argparse.Namespace) -> int:
    since = time.time() - args.hours * 3600 if args.hours else None
    rows = _client(args).usage(args.name, session=args.session, since=since, step=args.step)
    if args.json:
        print_json(rows)
    else:
        print_table(
            ("FROM", "FUNCTION", "SESSION", "CPU_S", "MEM_GIB_S", "GPU_S", "GPU_MEM_GIB_S", "ACTIVE_S", "IDLE_S"),
            [
                (_when(r.get("start")) if r.get("start") is not None else "all", r["function"], r.get("session") or "-", *(f"{r[m]:.2f}" for m in ("cpu_s", "mem_gib_s", "gpu_s", "gpu_mem_gib_s", "active_s", "idle_s")))
                for r in rows
            ],
            "no usage recorded",
        )
    return EXIT_OK


def cmd_scaling(args: argparse.Namespace) -> int:
    since = time.time() - args.hours * 3600 if args.hours else None
    out = _client(args).scaling(args.name, since=since, limit=args.limit)
    if args.json:
        print_json(out)
        return EXIT_OK
    print_table(
        ("FUNCTION", "MIN", "MAX", "TARGET", "READY", "IN_FLIGHT", "QUEUED", "PER_INSTANCE", "COOLDOWN_S"),
        [
            (n, f["min_instances"], f["max_instances"] or "-", f["target"], f["ready"], f["in_flight"], f["queued"], f["target_concurrency"], f"{f['scale_cooldown_s']:g}")
            for n, f in sorted(out["functions"].items())
        ],
        "no function has a warm pool or max_instances",
    )
    print()
    print_table(
        ("WHEN", "FUNCTION", "CHANGE", "FROM", "TO", "IN_FLIGHT", "QUEUED"),
        [(_when(e["at"]), e["function"], e["reason"], e["from"], e["to"], e["in_flight"], e["queued"]) for e in out["events"]],
        "no scale events",
    )
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    rows = _client(args).invocations(args.name, session=args.session, limit=args.limit)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no invocations of {args.name}")
    for r in reversed(rows):  # oldest first, like a log
        outcome = r.get("outcome") or "?"
        if r.get("error_kind"):
            outcome += f" ({r['error_kind']})"
        print(
            f"== {_when(r.get('started_at'))}  {r.get('function')} v{r.get('version')}  session={_cell(r.get('session_id'))}  "
            f"instance={_cell(r.get('instance_id'))}  {outcome}  {_ms(r.get('duration_ms'))} ms"
        )
        logs = str(r.get("logs") or "")
        for line in logs.rstrip("\n").splitlines():
            print(f"  {line}")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    client = _client(args)
    h = client.health()
    if args.json:
        print_json(h)
    else:
        print(f"{client.url}: {h.get('status')} (functionai {h.get('version')}, backend {h.get('backend')}, data dir {h.get('data_dir')})")
        print(f"functions {h.get('functions')}, live instances {h.get('live_instances')}")
    return EXIT_OK


def cmd_keys_create(args: argparse.Namespace) -> int:
    row = _client(args).create_key(args.function, args.note)
    if args.json:
        print_json(row)
    else:
        print(row["key"])
        print(f"key {row['id']} for function {row['function']}: the secret above is shown only once", file=sys.stderr)
    return EXIT_OK


def cmd_keys_ls(args: argparse.Namespace) -> int:
    rows = _client(args).keys(args.function)
    if args.json:
        print_json(rows)
    else:
        print_table(
            ("ID", "FUNCTION", "NOTE", "CREATED", "REVOKED"),
            [(k["id"], k.get("function"), k.get("note"), _when(k.get("created_at")), _when(k["revoked_at"]) if k.get("revoked_at") else "") for k in rows],
            "no keys",
        )
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    _client(args).revoke_key(args.id)
    print(f"revoked key {args.id}")
    return EXIT_OK


def _task_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    def progress(t: dict[str, Any]) -> str:
        p = t.get("progress")
        return "" if p is None else f"{p * 100:.0f}%"

    return [
        (t["id"], t.get("function"), t.get("state"), f"{t.get('attempts')}/{t.get('max_attempts')}", progress(t), _when(t.get("created_at")), t.get("session_id") or "")
        for t in rows
    ]


def _task_outcome(row: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print_json(row)
    elif row["state"] == "succeeded":
        print_json(row.get("result"))
    else:
        err = row.get("error") or {}
        print(f"task {row['id']} is {row['state']} after {row.get('attempts')} attempt(s)" + (f": {err.get('kind')}: {err.get('message')}" if err else ""), file=sys.stderr)
        if err.get("details", {}).get("traceback"):
            print(str(err["details"]["traceback"]).rstrip("\n"), file=sys.stderr)
    return EXIT_OK if row["state"] == "succeeded" else EXIT_FAILED


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    row = client.submit(args.name, _load_data(args.data), session=args.session, timeout=args.timeout, retries=args.retries)
    if not args.wait:
        if args.json:
            print_json(row)
        else:
            print(row["id"])
        return EXIT_OK
    print(f"submitted task {row['id']}", file=sys.stderr)
    return _task_outcome(client.wait_task(row["id"]), args.json)


def _parameters(pairs: list[list[str]] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in pairs or []:
        try:
            params[name] = json.loads(value)  # numbers, booleans, lists...
        except ValueError:
            params[name] = value  # anything else is a string
    return params


def cmd_run(args: argparse.Namespace) -> int:
    client = _client(args)
    params = _parameters(args.parameter)
    formats = ["ipynb", "html"] if args.html else None
    row = client.start_run(
        args.notebook, params, timeout=args.timeout, retries=args.retries, output_formats=formats, kernel=args.kernel,
        name=args.name, tags=args.tag, idempotency_token=args.idempotency_token,
    )
    if not args.wait:
        print_json(row) if args.json else print(row["id"])
        return EXIT_OK
    print(f"started run {row['id']}", file=sys.stderr)
    row = client.wait_run(row["id"])
    if args.json:
        print_json(row)
    else:
        print(f"run {row['id']} {row['state']} after {row.get('attempts')} attempt(s)")
        for fmt, path in sorted((row.get("outputs") or {}).items()):
            print(f"  {fmt}: {path}")
        err = row.get("error") or {}
        if err:
            print(f"{err.get('kind')}: {err.get('message')}", file=sys.stderr)
    return EXIT_OK if row["state"] == "succeeded" else EXIT_FAILED


def cmd_runs_ls(args: argparse.Namespace) -> int:
    rows = _client(args).runs(args.state, args.limit, tag=args.tag, schedule=args.schedule)
    if args.json:
        print_json(rows)
        return EXIT_OK
    table = [
        (r["id"], r.get("name") or "", r["state"], r.get("notebook") or "", f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else "-",
         _when(r.get("created_at")), ",".join(r.get("tags") or []))
        for r in rows
    ]
    print_table(("ID", "NAME", "STATE", "NOTEBOOK", "DURATION", "CREATED", "TAGS"), table, "no runs")
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    print_json(_client(args).run(args.id))
    return EXIT_OK


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    row = _client(args).cancel_run(args.id)
    print(f"run {row['id']} {row['state']}")
    return EXIT_OK


def cmd_runs_rm(args: argparse.Namespace) -> int:
    _client(args).delete_run(args.id)
    print(f"deleted run {args.id}")
    return EXIT_OK


def cmd_runs_download(args: argparse.Namespace) -> int:
    client = _client(args)
    data = client.run_output(args.id, args.format)
    out = args.output or os.path.basename(client.run(args.id)["outputs"][args.format])
    if out == "-":
        sys.stdout.buffer.write(data)
    else:
        with open(out, "wb") as f:
            f.write(data)
        print(out)
    return EXIT_OK


SCHEDULE_COLUMNS = ("ID", "NAME", "CRON", "TZ", "ENABLED", "NEXT", "LAST", "LAST RUN", "NOTEBOOK")


def _schedule_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["id"], r["name"], r.get("cron") or "(on demand)", r["timezone"], "yes" if r["enabled"] else "paused",
         r["next_fire_times"][0] if r.get("next_fire_times") else "-", r.get("last_result") or "-", r.get("last_run_id") or "-", r["notebook"])
        for r in rows
    ]


def _print_schedule(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(row)
    else:
        print_table(SCHEDULE_COLUMNS, _schedule_rows([row]), "")


def cmd_schedule_add(args: argparse.Namespace) -> int:
    fields = {
        "timezone": args.timezone, "parameters": _parameters(args.parameter) or None, "overlap": args.overlap, "catch_up": args.catch_up,
        "output_formats": ["ipynb", "html"] if args.html else None, "kernel": args.kernel, "name": args.name, "tags": args.tag,
        "timeout": args.timeout, "retries": args.retries, "idempotency_token": args.idempotency_token,
        "enabled": False if args.paused else None,
    }
    cron = None if args.cron.strip().lower() == "none" else args.cron
    row = _client(args).create_schedule(args.notebook, cron, **fields)
    _print_schedule(row, args.json)
    return EXIT_OK


def cmd_schedule_ls(args: argparse.Namespace) -> int:
    rows = _client(args).schedules()
    if args.json:
        print_json(rows)
    else:
        print_table(SCHEDULE_COLUMNS, _schedule_rows(rows), "no schedules")
    return EXIT_OK


def cmd_schedule_show(args: argparse.Namespace) -> int:
    print_json(_client(args).schedule(args.id))
    return EXIT_OK


def cmd_schedule_pause(args: argparse.Namespace) -> int:
    _print_schedule(_client(args).pause_schedule(args.id), args.json)
    return EXIT_OK


def cmd_schedule_resume(args: argparse.Namespace) -> int:
    _print_schedule(_client(args).resume_schedule(args.id), args.json)
    return EXIT_OK


def cmd_schedule_rm(args: argparse.Namespace) -> int:
    _client(args).delete_schedule(args.id)
    print(f"deleted schedule {args.id}")
    return EXIT_OK


def cmd_schedule_run_now(args: argparse.Namespace) -> int:
    row = _client(args).run_schedule_now(args.id)
    print_json(row) if args.json else print(row["id"])
    return EXIT_OK


def cmd_schedule_runs(args: argparse.Namespace) -> int:
    args.tag, args.state, args.schedule = None, None, args.id
    return cmd_runs_ls(args)


def cmd_tasks_ls(args: argparse.Namespace) -> int:
    rows = _client(args).tasks(args.function, state=args.state, limit=args.limit)
    if args.json:
        print_json(rows)
    else:
        print_table(("ID", "FUNCTION", "STATE", "ATTEMPTS", "PROGRESS", "CREATED", "SESSION"), _task_rows(rows), "no tasks")
    return EXIT_OK


def cmd_tasks_show(args: argparse.Namespace) -> int:
    print_json(_client(args).task(args.id))
    return EXIT_OK


def cmd_tasks_wait(args: argparse.Namespace) -> int:
    row = _client(args).wait_task(args.id, timeout=args.timeout)
    if row["state"] not in ("succeeded", "failed", "cancelled", "timed_out"):
        print(f"task {row['id']} is still {row['state']} after {args.timeout:g} s", file=sys.stderr)
        return EXIT_FAILED
    return _task_outcome(row, args.json)


def cmd_tasks_retry(args: argparse.Namespace) -> int:
    row = _client(args).retry_task(args.id)
    print(f"task {row['id']} is {row['state']} (attempt {row['attempts'] + 1} of {row['max_attempts']} next" + (", from its checkpoint)" if row.get("has_checkpoint") else ")"))
    return EXIT_OK


def cmd_tasks_cancel(args: argparse.Namespace) -> int:
    row = _client(args).cancel_task(args.id)
    print(f"task {row['id']} is {row['state']}")
    return EXIT_OK


# -- MCP servers ------------------------------------------------------------------------------


def cmd_mcp_add(args: argparse.Namespace) -> int:
    """``functionai mcp add NAME [options] -- COMMAND [ARGS...]`` or ``--catalog NAME``."""
    extra = list(getattr(args, "extra", None) or [])
    if extra and extra[0] != "--":
        raise _UsageError(f"unrecognized arguments: {' '.join(extra)} (put the server's command after --)")
    command = [*args.argv, *extra[1:]]
    if not command and not args.catalog:
        raise _UsageError("give the server's command after -- (functionai mcp add NAME -- COMMAND ARGS...) or --catalog NAME")
    client = _client(args)
    row = client.mcp_add(
        args.name,
        command or None,
        catalog=args.catalog,
        env=dict(args.env or []) or None,
        secrets=dict(args.secret or []) or None,
        idle_ttl=args.idle_ttl,
        network=args.network,
        memory=args.memory,
        probe=args.probe,
    )
    if args.json:
        print_json(row)
    else:
        tools = ", ".join(t.get("name", "?") for t in row.get("tools") or []) or "(not probed)"
        print(f"added MCP server {row['name']}: {client.url.rstrip('/')}{row['path']}")
        print(f"tools: {tools}")
    return EXIT_OK


def cmd_mcp_ls(args: argparse.Namespace) -> int:
    client = _client(args)
    rows = client.mcp_servers()
    if args.json:
        print_json(rows)
        return EXIT_OK
    base = client.url.rstrip("/") if rows else ""
    print_table(
        ("NAME", "KIND", "SESSIONS", "TOOLS", "URL"),
        [(r["name"], r["kind"], r.get("live_sessions", 0), ", ".join(t.get("name", "?") for t in r.get("tools") or []) or "-", base + r["path"]) for r in rows],
        "no MCP servers",
    )
    return EXIT_OK


def cmd_mcp_rm(args: argparse.Namespace) -> int:
    _client(args).mcp_remove(args.name)
    print(f"removed MCP server {args.name}")
    return EXIT_OK


# -- main ---------------------------------------------------------------------------------


def _connection_options(required: bool = False) -> argparse.ArgumentParser:
    """--url / --token, accepted before and after the command."""
    p = argparse.ArgumentParser(add_help=False)
    default = None if required else argparse.SUPPRESS
    g = p.add_argument_group("server")
    g.add_argument(
        "--url", default=default,
        help="the server's base URL (default: $FUNCTIONAI_URL, else $FUNCTIONAI_PARENT_URL, else the one running Jupyter server with functionai)",
    )
    g.add_argument("--token", default=default, help="its token (default: $FUNCTIONAI_TOKEN, else the token in its runtime file)")
    return p


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the server's JSON")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="functionai",
        description="Jupyter-native runtime of session-isolated sandbox functions.",
        epilog="exit codes: 0 ok, 1 the function (or the call) failed, 2 usage or connection error",
        parents=[_connection_options(required=True)],
    )
    ap.add_argument("--version", action="version", version=f"functionai {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    conn = [_connection_options()]

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, parents=conn, **kw)
        p.set_defaults(func=func)
        return p

    serve = sub.add_parser(
        "serve",
        help="run a Jupyter Server with the functionai extension (blocks; ^C stops it)",
        description="Run a Jupyter Server with the functionai extension until SIGINT or SIGTERM. "
        "Unknown options (e.g. --ServerApp.root_dir=DIR) go to Jupyter Server.",
    )
    serve.add_argument("--port", type=int, help="port (default: Jupyter's, 8888 or the next free one)")
    serve.add_argument("--ip", help="interface to listen on (default: Jupyter's, localhost)")
    serve.add_argument("--token", dest="serve_token", metavar="TOKEN", help="the token clients must send (default: $FUNCTIONAI_TOKEN, else Jupyter's)")
    serve.add_argument("--data-dir", help="the functionai data dir (store, sessions, logs)")
    serve.add_argument("--no-browser", dest="browser", action="store_false", help="do not open a browser (the default)")
    serve.add_argument("--browser", dest="browser", action="store_true", help="open a browser")
    serve.set_defaults(func=cmd_serve, browser=False, takes_extra=True)

    lab = sub.add_parser(
        "lab",
        help="JupyterLab with the extension active and the example function deployed (blocks)",
        description="Deploy the example agent-memory function (once) and run JupyterLab with the "
        "functionai extension. Unknown options go to JupyterLab.",
    )
    lab.add_argument("--port", type=int, help="port (default: Jupyter's)")
    lab.add_argument("--ip", help="interface to listen on (default: localhost)")
    lab.add_argument("--token", dest="serve_token", metavar="TOKEN", help="the token (default: $FUNCTIONAI_TOKEN, else Jupyter's)")
    lab.add_argument("--data-dir", help="the functionai data dir (default: $FUNCTIONAI_DATA_DIR or <jupyter data dir>/functionai)")
    lab.add_argument("--no-example", dest="example", action="store_false", help="do not deploy the example function")
    lab.add_argument("--no-browser", dest="browser", action="store_false", help="do not open a browser")
    lab.add_argument("--browser", dest="browser", action="store_true", help="open a browser (the default)")
    lab.set_defaults(func=cmd_lab, browser=True, example=True, takes_extra=True)

    p = command("deploy", cmd_deploy, "deploy a new version of a function from a .py file")
    p.add_argument("file", help="the Python file defining the handler")
    p.add_argument("--name", help="function name (default: the file's stem)")
    p.add_argument("--handler", default="handler", help="the handler's name in the file (default: handler)")
    p.add_argument("--cpu", type=float, help="CPU cores")
    p.add_argument("--gpu", type=float, help="GPU share: a fraction or whole GPUs")
    p.add_argument("--gpu-memory", help="GPU memory of one card, whole GiB, e.g. 4GiB (instead of --gpu)")
    p.add_argument("--memory", help="memory limit: MiB or a size like 512Mi, 1G")
    p.add_argument("--timeout", type=float, help="per-call timeout in seconds")
    p.add_argument("--min-instances", type=int, help="instances kept warm")
    p.add_argument("--max-instances", type=int, help="at most this many sessionless calls at once (the rest queue); the warm pool scales with the load up to it")
    p.add_argument("--target-concurrency", type=int, help="sessionless calls per warm instance the autoscaler aims at (default 1)")
    p.add_argument("--cooldown", type=float, help="seconds the load stays lower before the pool shrinks back (default 60)")
    p.add_argument("--idle-ttl", type=float, help="seconds before an idle session's instance stops")
    p.add_argument("--network", choices=("none", "loopback", "host"), help="network policy")
    p.add_argument("--env", type=_kv, action="append", metavar="NAME=VALUE", help="an environment variable (repeatable)")
    p.add_argument("--description", help="a description")
    _json_option(p)

    p = command("ls", cmd_ls, "list functions")
    _json_option(p)
    p = command("versions", cmd_versions, "list the versions of a function")
    p.add_argument("name")
    _json_option(p)
    p = command("rollback", cmd_rollback, "make an earlier version active")
    p.add_argument("name")
    p.add_argument("version", type=int)
    _json_option(p)
    p = command("delete", cmd_delete, "delete a function and end its sessions")
    p.add_argument("name")

    p = command("invoke", cmd_invoke, "call a function and print its JSON result")
    p.add_argument("name")
    p.add_argument("--session", help="session id (calls with one id share an instance and its state)")
    p.add_argument("--data", metavar="JSON|@FILE", help="the event: JSON text, @FILE or @- for stdin (default: null)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the X-Functionai-* headers on stderr")

    p = command("sessions", cmd_sessions, "list sessions")
    p.add_argument("name", nargs="?", help="only this function's")
    p.add_argument("--status", help="only sessions with this status (live, paused, closed, expired)")
    _json_option(p)
    p = command("session", cmd_session, "describe a session (JSON)")
    p.add_argument("id")
    p = command("open-session", cmd_open_session, "open a session: its sandbox starts now")
    p.add_argument("name")
    p.add_argument("--session", help="the id (default: a new one)")
    _json_option(p)
    p = command("close-session", cmd_close_session, "close a session: its instance stops, its state is deleted")
    p.add_argument("id")
    p = command("coldstarts", cmd_coldstarts, "list cold starts, newest first")
    p.add_argument("name", nargs="?", help="only this function's")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _json_option(p)
    p = command("usage", cmd_usage, "what functions and sessions used: CPU-s, memory GiB-s, GPU-s, active and idle seconds")
    p.add_argument("name", nargs="?", help="only this function's")
    p.add_argument("--session", help="only this session's")
    p.add_argument("--hours", type=float, help="only the last this many hours")
    p.add_argument("--step", type=float, help="per this many seconds (a multiple of 60)")
    _json_option(p)
    p = command("scaling", cmd_scaling, "scaling on load: each function's warm-pool target and load now, and the scale events")
    p.add_argument("name", nargs="?", help="only this function's")
    p.add_argument("--hours", type=float, help="only the events of the last this many hours")
    p.add_argument("--limit", type=int, default=50, help="at most this many events, the newest (default 50)")
    _json_option(p)
    p = command("logs", cmd_logs, "recent invocations of a function with their logs")
    p.add_argument("name")
    p.add_argument("--session", help="only this session's")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    _json_option(p)
    p = command("health", cmd_health, "the server's health")
    _json_option(p)

    keys = sub.add_parser("keys", help="function-scoped keys: create, ls, revoke")
    ksub = keys.add_subparsers(dest="keys_command", metavar="{create,ls,revoke}", required=True)
    p = ksub.add_parser("create", help="create a key that may invoke one function (its secret is shown once)", parents=conn)
    p.add_argument("function")
    p.add_argument("--note", default="", help="a note")
    p.set_defaults(func=cmd_keys_create)
    _json_option(p)
    p = ksub.add_parser("ls", help="list keys (no secrets)", parents=conn)
    p.add_argument("function", nargs="?")
    p.set_defaults(func=cmd_keys_ls)
    _json_option(p)
    p = ksub.add_parser("revoke", help="revoke a key", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_keys_revoke)

    p = command("submit", cmd_submit, "submit a durable task (prints its id; --wait follows it to the end)")
    p.add_argument("name")
    p.add_argument("--data", metavar="JSON|@FILE", help="the event: JSON text, @FILE or @- for stdin (default: null)")
    p.add_argument("--session", help="run it in this session (in order with the session's other calls)")
    p.add_argument("--timeout", type=float, help="seconds per attempt (default: the function's tasks.timeout_s, 1 h)")
    p.add_argument("--retries", type=int, help="extra attempts after a failure (default: the function's tasks.max_attempts - 1)")
    p.add_argument("--wait", action="store_true", help="wait for the outcome; exit 1 unless it succeeded")
    _json_option(p)

    p = command("run", cmd_run, "run a notebook with papermill in a sandbox (a durable task); prints the run id")
    p.add_argument("notebook", help="its path, relative to the server's root directory")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a parameter (JSON values are parsed; repeatable)")
    p.add_argument("--timeout", type=float, help="seconds (default 1 h, at most 24 h)")
    p.add_argument("--retries", type=int, help="extra attempts after a failure (default 0)")
    p.add_argument("--html", action="store_true", help="also write an HTML copy of the output")
    p.add_argument("--kernel", help="the kernelspec to run it with (default: the notebook's own)")
    p.add_argument("--name", help="a name for the run (default: the notebook's)")
    p.add_argument("--tag", action="append", help="a tag (repeatable)")
    p.add_argument("--idempotency-token", help="the same token gives back the run first made with it")
    p.add_argument("--wait", action="store_true", help="wait for it; exit 1 unless it succeeded")
    _json_option(p)

    runs = sub.add_parser("runs", help="notebook runs: ls, show, cancel, rm, download")
    rsub = runs.add_subparsers(dest="runs_command", metavar="{ls,show,cancel,rm,download}", required=True)
    p = rsub.add_parser("ls", help="list runs, newest first", parents=conn)
    p.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled", "timed_out"))
    p.add_argument("--tag")
    p.add_argument("--schedule", help="only the runs of this schedule")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_runs_ls)
    _json_option(p)
    p = rsub.add_parser("show", help="one run (JSON)", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_runs_show)
    p = rsub.add_parser("cancel", help="stop a queued or running run", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_runs_cancel)
    p = rsub.add_parser("rm", help="delete a finished run and its outputs", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_runs_rm)
    p = rsub.add_parser("download", help="save an output of a run (prints the file's name)", parents=conn)
    p.add_argument("id")
    p.add_argument("--format", choices=("ipynb", "html"), default="ipynb")
    p.add_argument("-o", "--output", help="the file to write (- for stdout; default: the output's own name)")
    p.set_defaults(func=cmd_runs_download)

    sched = sub.add_parser("schedule", help="cron schedules of notebook runs: add, ls, show, pause, resume, rm, run-now, runs")
    ssub = sched.add_subparsers(dest="schedule_command", metavar="{add,ls,show,pause,resume,rm,run-now,runs}", required=True)
    p = ssub.add_parser("add", help="schedule a notebook", parents=conn)
    p.add_argument("notebook", help="its path, relative to the server's root directory")
    p.add_argument("--cron", required=True, help="'MIN HOUR DAY MONTH WEEKDAY' (or 6 fields, seconds last); 'none' for on demand only")
    p.add_argument("--timezone", "--tz", help="an IANA time zone (default UTC)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a parameter (repeatable)")
    p.add_argument("--overlap", choices=("skip", "queue", "allow"), help="when the previous run is still going (default skip)")
    p.add_argument("--catch-up", choices=("none", "latest"), help="times missed while the server was down (default none)")
    p.add_argument("--html", action="store_true", help="also write an HTML copy of each output")
    p.add_argument("--kernel", help="the kernelspec to run it with")
    p.add_argument("--name")
    p.add_argument("--tag", action="append", help="a tag for its runs (repeatable)")
    p.add_argument("--timeout", type=float, help="seconds per run")
    p.add_argument("--retries", type=int, help="extra attempts after a failure")
    p.add_argument("--idempotency-token", help="the same token gives back the schedule first made with it")
    p.add_argument("--paused", action="store_true", help="create it paused")
    p.set_defaults(func=cmd_schedule_add)
    _json_option(p)
    p = ssub.add_parser("ls", help="list schedules with their next fire time", parents=conn)
    p.set_defaults(func=cmd_schedule_ls)
    _json_option(p)
    p = ssub.add_parser("show", help="one schedule (JSON)", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_schedule_show)
    for verb, func, text in (("pause", cmd_schedule_pause, "stop firing"), ("resume", cmd_schedule_resume, "fire again (from now on)")):
        p = ssub.add_parser(verb, help=text, parents=conn)
        p.add_argument("id")
        p.set_defaults(func=func)
        _json_option(p)
    p = ssub.add_parser("rm", help="delete a schedule (its runs stay)", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_schedule_rm)
    p = ssub.add_parser("run-now", help="start a run of the schedule now (prints the run id)", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_schedule_run_now)
    _json_option(p)
    p = ssub.add_parser("runs", help="the schedule's runs, newest first", parents=conn)
    p.add_argument("id")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_schedule_runs)
    _json_option(p)

    tasks = sub.add_parser("tasks", help="durable tasks: ls, show, wait, cancel, retry")
    tsub = tasks.add_subparsers(dest="tasks_command", metavar="{ls,show,wait,cancel,retry}", required=True)
    p = tsub.add_parser("ls", help="list tasks, newest first", parents=conn)
    p.add_argument("function", nargs="?")
    p.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelled", "timed_out"))
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_tasks_ls)
    _json_option(p)
    p = tsub.add_parser("show", help="one task with its attempts (JSON)", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_tasks_show)
    p = tsub.add_parser("wait", help="follow a task until it finishes; print its result (exit 1 unless it succeeded)", parents=conn)
    p.add_argument("id")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.set_defaults(func=cmd_tasks_wait)
    _json_option(p)
    p = tsub.add_parser("cancel", help="cancel a queued or running task", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_tasks_cancel)
    p = tsub.add_parser("retry", help="run a failed, cancelled or timed-out task again from its last checkpoint", parents=conn)
    p.add_argument("id")
    p.set_defaults(func=cmd_tasks_retry)

    mcp = sub.add_parser("mcp", help="hosted MCP servers: add, ls, rm")
    msub = mcp.add_subparsers(dest="mcp_command", metavar="{add,ls,rm}", required=True)
    p = msub.add_parser(
        "add",
        help="host a stdio MCP server: functionai mcp add NAME -- COMMAND [ARGS...] (or --catalog time|git)",
        parents=conn,
    )
    p.add_argument("name", help="the server's name: its endpoint is /functionai/mcp/NAME/mcp")
    p.add_argument("argv", nargs="*", metavar="-- COMMAND [ARGS]", help="the server's command, after --")
    p.add_argument("--catalog", help="a well-known server to install and host (time, git)")
    p.add_argument("--env", type=_kv, action="append", metavar="NAME=VALUE", help="an environment variable of the server (repeatable)")
    p.add_argument("--secret", type=_kv, action="append", metavar="NAME=VALUE", help="a secret environment variable (never listed; repeatable)")
    p.add_argument("--idle-ttl", type=float, help="seconds without requests before a session ends (default 600)")
    p.add_argument("--network", choices=("none", "loopback", "host"), help="network policy of its sandboxes (default none)")
    p.add_argument("--memory", help="memory of each session's sandbox, e.g. 512Mi")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="do not start it once now to check it and list its tools")
    p.set_defaults(func=cmd_mcp_add, takes_extra=True)
    _json_option(p)
    p = msub.add_parser("ls", help="list MCP servers with their URLs and tools", parents=conn)
    p.set_defaults(func=cmd_mcp_ls)
    _json_option(p)
    p = msub.add_parser("rm", help="remove an MCP server (its sessions end)", parents=conn)
    p.add_argument("name")
    p.set_defaults(func=cmd_mcp_rm)

    demo = sub.add_parser("demo", help="deploy the example agent-memory function and show two isolated sessions")
    demo.add_argument("--state-dir", metavar="DIR", help="runtime state directory (default: a temporary one, deleted afterwards)")
    demo.set_defaults(func=cmd_demo)
    bench = sub.add_parser(
        "bench",
        help="run a benchmark (coldstart, density, gateway, tasks, mcp, runs) from the repository checkout",
        description="Run benchmarks/<name>.py main(args); pass --help after the name for its options.",
    )
    bench.add_argument("which", choices=BENCHMARKS, metavar="{coldstart,density,gateway,tasks,mcp,runs}", help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(func=cmd_bench)
    return ap


def exit_code(exc: BaseException) -> int:
    """1 for a call that failed on the server, 2 for a request that was wrong or not made."""
    from .errors import FunctionAIError

    if isinstance(exc, FunctionAIError) and exc.kind in USAGE_KINDS:
        return EXIT_USAGE
    return EXIT_FAILED


def report(command: str, exc: BaseException, server: ServerChoice | None = None) -> None:
    """An error on stderr; ``server``: the server the command talked to (named)."""
    from .errors import FunctionAIError

    at = f" [server {server.describe()}]" if server is not None else ""
    if not isinstance(exc, FunctionAIError):
        print(f"functionai: {command} failed ({type(exc).__name__}): {exc}{at}", file=sys.stderr)
        return
    if exc.kind in ("no_server", "ambiguous_server", "unauthorized"):
        text = str(exc)
        if server is not None and server.url not in text:
            text += at
        elif server is not None:
            text += f" [chosen by {server.source}]"
        print(f"functionai: error: {text}", file=sys.stderr)
        return
    print(f"functionai: {command} failed ({exc.kind}): {exc}{at}", file=sys.stderr)
    tb = exc.details.get("traceback")
    if tb:
        print(str(tb).rstrip("\n"), file=sys.stderr)
    logs = exc.details.get("logs")
    if logs:  # what the handler printed before it failed
        print("output of the call:", file=sys.stderr)
        for line in str(logs).rstrip("\n").splitlines():
            print(f"  {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    try:
        args, extra = ap.parse_known_args(argv)
        if extra and not getattr(args, "takes_extra", False):
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    if not getattr(args, "func", None):
        ap.print_usage(sys.stderr)
        print("functionai: error: a command is required (serve, deploy, invoke, ls, ..., demo, bench; see --help)", file=sys.stderr)
        return EXIT_USAGE
    command = args.command + (f" {args.keys_command}" if args.command == "keys" else "") + (f" {args.mcp_command}" if args.command == "mcp" else "")
    args.extra = extra  # what follows `--` (functionai mcp add NAME -- COMMAND ...)
    try:
        if args.func in (cmd_serve, cmd_lab):
            return int(args.func(args, extra))
        rc: int = args.func(args)
        return rc
    except _UsageError as exc:
        print(f"functionai: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `functionai logs f | head`
        return EXIT_OK
    except Exception as exc:
        report(command, exc, getattr(args, "server_choice", None))
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
