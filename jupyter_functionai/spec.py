"""``FunctionSpec`` and its parts: small, frozen, validated value objects.

Every value object validates itself in ``__post_init__``; a bad value raises
:class:`~jupyter_functionai.errors.InvalidSpec` whose ``field`` is the dotted
path of the offending field (``resources.memory_mb``, ``session.idle_ttl_s``,
``env.PATH`` ...). Only the standard library is used.

``to_dict`` gives a JSON-serialisable dict and ``from_dict`` is its exact
inverse, so a spec can live in the store, on the wire and in the REST API.
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import numbers
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import InvalidSpec

__all__ = [
    "ISOLATION_LAYERS",
    "MAX_LIFETIME_CAP_S",
    "NETWORK_POLICIES",
    "SECCOMP_BLOCKED",
    "SECCOMP_MODES",
    "SOURCE_KINDS",
    "FrozenEnv",
    "FunctionSpec",
    "Limits",
    "Resources",
    "SessionPolicy",
    "Source",
    "parse_memory",
]

NETWORK_POLICIES = ("none", "loopback", "host")
ISOLATION_LAYERS = (
    "mount",
    "pid",
    "ipc",
    "uts",
    "net",
    "user",
    "uid",
    "cgroup",
    "rlimits",
    "tmp",
    "seccomp",
    "disk",
)
# The default seccomp filter (sandbox/seccomp.py) makes these calls fail with
# EPERM (clone3: ENOSYS; unshare and clone only with CLONE_NEWUSER in their
# flags); a spec can allow some of them again with ``seccomp_allow``, or switch
# the filter off with ``seccomp: "off"``.
SECCOMP_MODES = ("default", "off")
SECCOMP_BLOCKED = (
    # new user namespaces (and, through them, mounts and the rest)
    "unshare",
    "clone",
    "clone3",
    "setns",
    # kernel keyrings: shared by every process of a uid
    "keyctl",
    "add_key",
    "request_key",
    # kernel attack surface
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    # other processes' memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    # mounts (old and new API)
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # host administration
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "syslog",
    "open_by_handle_at",
)
SOURCE_KINDS = ("code", "file", "module")
_SOURCE_ATTR = {"code": "code", "file": "path", "module": "module"}
MAX_LIFETIME_CAP_S = 86400.0
MAX_TIMEOUT_S = 86400.0

_KIB = 1024
_MIB = 1024 * 1024
_GIB = 1024 * 1024 * 1024

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEMORY_RE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*")
# Suffixes are binary, as with Docker's ``--memory 1g``: M == Mi, G == Gi.
_MEMORY_UNITS_MB = {
    "": 1.0,
    "m": 1.0,
    "mi": 1.0,
    "mb": 1.0,
    "mib": 1.0,
    "g": 1024.0,
    "gi": 1024.0,
    "gb": 1024.0,
    "gib": 1024.0,
    "t": 1024.0 * 1024.0,
    "ti": 1024.0 * 1024.0,
    "tb": 1024.0 * 1024.0,
    "tib": 1024.0 * 1024.0,
}


# --------------------------------------------------------------------------- helpers


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _int(path: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidSpec(path, value, "expected an integer")
    out = int(value)
    if not lo <= out <= hi:
        raise InvalidSpec(path, value, f"must be between {lo} and {hi}")
    return out


def _real(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidSpec(path, value, "expected a number")
    out = float(value)
    if not math.isfinite(out):
        raise InvalidSpec(path, value, "must be a finite number")
    return out


def _float_range(path: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    out = _real(path, value)
    too_low = out <= lo if lo_open else out < lo
    if too_low or out > hi:
        low = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
        raise InvalidSpec(path, value, f"must be {low} and at most {hi:g}")
    return out


def _str(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(path, value, "expected a string")
    return value


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(path, value, "expected true or false")
    return value


def _is_dotted_identifier(text: str) -> bool:
    parts = text.split(".")
    return all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)


def _set(obj: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass during ``__post_init__``."""
    if getattr(obj, name) is not value:
        object.__setattr__(obj, name, value)


GPU_MEMORY_STEP_MB = 1024  # GPU memory is sold in whole GiB


def parse_memory(value: Any, field: str = "resources.memory_mb") -> int:
    """Return a memory size in MiB.

    Accepts an ``int`` (already MiB) or a string such as ``"300"``,
    ``"512Mi"``, ``"256M"``, ``"1G"``, ``"1Gi"``, ``"1.5GiB"``. Suffixes are
    binary (``G`` and ``Gi`` both mean 1024 MiB), as Docker reads them.
    Fractional results are rounded up to a whole MiB. The range is checked by
    :class:`Resources`, not here.
    """
    if isinstance(value, bool):
        raise InvalidSpec(field, value, "expected megabytes (int) or a size like '512Mi'")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not isinstance(value, str):
        raise InvalidSpec(field, value, "expected megabytes (int) or a size like '512Mi'")
    match = _MEMORY_RE.fullmatch(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _MEMORY_UNITS_MB:
        raise InvalidSpec(
            field, value, "expected a size like '300', '512Mi', '256M', '1G' or '1Gi'"
        )
    return math.ceil(float(match.group(1)) * _MEMORY_UNITS_MB[unit])


class FrozenEnv(Mapping[str, str]):
    """A read-only, hashable ``str -> str`` mapping (the spec's ``env``)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._data: dict[str, str] = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenEnv({self._data!r})"


def _fields_from_mapping(
    cls: type, data: Any, prefix: str, converters: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Check ``data`` is a mapping of known field names of dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise InvalidSpec(prefix, data, "expected a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise InvalidSpec(prefix, key, "field names must be strings")
        if key not in known:
            raise InvalidSpec(_join(prefix, key), value, "unknown field")
        if converters and key in converters:
            value = converters[key](value)
        out[key] = value
    return out


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Source:
    """Where a function's code comes from.

    - ``kind="code"``: ``code`` is Python source text (it must compile);
    - ``kind="file"``: ``path`` names an existing ``.py`` file (it must
      compile; it is read again by :meth:`load_text`);
    - ``kind="module"``: ``module`` is ``"pkg.mod:callable"``, imported by the
      worker.
    """

    kind: str
    code: str | None = None
    path: str | None = None
    module: str | None = None

    _prefix: ClassVar[str] = "source"

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            _set(self, "path", os.fspath(self.path))
        self.validate()

    def validate(self) -> None:
        p = self._prefix
        kind = _str(_join(p, "kind"), self.kind)
        if kind not in SOURCE_KINDS:
            raise InvalidSpec(_join(p, "kind"), kind, f"must be one of {', '.join(SOURCE_KINDS)}")
        for other_kind, attr in _SOURCE_ATTR.items():
            if other_kind != kind and getattr(self, attr) is not None:
                raise InvalidSpec(
                    _join(p, attr), getattr(self, attr), f"not allowed for source kind {kind!r}"
                )
        if kind == "code":
            code = _str(_join(p, "code"), self.code)
            _compile(_join(p, "code"), code, "<function source>", "")
        elif kind == "file":
            path = _str(_join(p, "path"), self.path)
            if not path.endswith(".py"):
                raise InvalidSpec(_join(p, "path"), path, "must name a .py file")
            if not os.path.isfile(path):
                raise InvalidSpec(_join(p, "path"), path, "file does not exist")
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidSpec(_join(p, "path"), path, f"cannot be read: {exc}") from exc
            _compile(_join(p, "path"), text, path, f"in {path} ")
        else:
            target = _str(_join(p, "module"), self.module)
            mod, sep, attr = target.partition(":")
            if not sep or not _is_dotted_identifier(mod) or not _is_dotted_identifier(attr):
                raise InvalidSpec(_join(p, "module"), target, "expected 'package.module:callable'")

    @property
    def callable_name(self) -> str | None:
        """For ``kind="module"``, the part after ``:``; else ``None``."""
        if self.kind != "module" or self.module is None:
            return None
        return self.module.partition(":")[2]

    def load_text(self) -> str | None:
        """The Python source (``code``, or the file's text); ``None`` for modules."""
        if self.kind == "code":
            return self.code
        if self.kind == "file":
            assert self.path is not None
            with open(self.path, encoding="utf-8") as fh:
                return fh.read()
        return None

    def to_dict(self) -> dict[str, Any]:
        attr = _SOURCE_ATTR[self.kind]
        return {"kind": self.kind, attr: getattr(self, attr)}

    @classmethod
    def from_dict(cls, data: Any) -> Source:
        if isinstance(data, Source):
            return data
        fields = _fields_from_mapping(cls, data, cls._prefix)
        if "kind" not in fields:
            raise InvalidSpec(_join(cls._prefix, "kind"), None, "is required")
        return cls(**fields)


def _compile(path: str, text: str, filename: str, where: str) -> None:
    try:
        compile(text, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise InvalidSpec(
            path,
            f"line {exc.lineno}: {exc.msg}",
            f"SyntaxError {where}at line {exc.lineno}: {exc.msg}",
        ) from exc
    except ValueError as exc:  # e.g. NUL bytes in the source
        raise InvalidSpec(path, str(exc), f"cannot be compiled {where}".rstrip()) from exc


@dataclass(frozen=True)
class Resources:
    """CPU cores, memory in MiB, a GPU share (a fraction or whole GPUs) and
    each session's disk in MiB (its working directory is a filesystem of that
    size: writing past it gets ``ENOSPC`` in the sandbox; 0 switches the cap
    off)."""

    cpu: float = 1.0
    memory_mb: int = 512
    gpu: float = 0.0
    disk_mb: int = 1024
    # GPU memory of one card in MiB, whole GiB (``gpu_memory="4GiB"``): the
    # other way to ask for a slice; 0: none asked this way
    gpu_memory_mb: int = 0

    _prefix: ClassVar[str] = "resources"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        p = self._prefix
        _set(self, "cpu", _float_range(_join(p, "cpu"), self.cpu, 0.01, 64.0))
        _set(self, "memory_mb", _int(_join(p, "memory_mb"), self.memory_mb, 16, 1_048_576))
        if self.disk_mb != 0:  # 0: no cap, the working directory is a plain host directory
            _set(self, "disk_mb", _int(_join(p, "disk_mb"), self.disk_mb, 16, 1_048_576))
        elif isinstance(self.disk_mb, bool):
            raise InvalidSpec(_join(p, "disk_mb"), self.disk_mb, "expected an integer")
        gpu = _real(_join(p, "gpu"), self.gpu)
        if gpu < 0:
            raise InvalidSpec(_join(p, "gpu"), self.gpu, "must not be negative")
        if gpu > 1 and (not gpu.is_integer() or gpu > 16):
            raise InvalidSpec(
                _join(p, "gpu"),
                self.gpu,
                "must be a fraction in (0, 1] or a whole number of GPUs up to 16",
            )
        _set(self, "gpu", gpu)
        gmem = self.gpu_memory_mb
        if gmem != 0:
            gmem = _int(_join(p, "gpu_memory_mb"), gmem, GPU_MEMORY_STEP_MB, 1_048_576)
            if gmem % GPU_MEMORY_STEP_MB:
                raise InvalidSpec(_join(p, "gpu_memory_mb"), self.gpu_memory_mb, "must be whole GiB (steps of 1024 MiB), e.g. '4GiB'")
            if gpu > 0:
                raise InvalidSpec(_join(p, "gpu_memory_mb"), self.gpu_memory_mb, "give gpu (a share of a card) or gpu_memory (GiB of one card), not both")
            _set(self, "gpu_memory_mb", gmem)
        elif isinstance(gmem, bool):
            raise InvalidSpec(_join(p, "gpu_memory_mb"), gmem, "expected an integer")

    @property
    def wants_gpu(self) -> bool:
        return self.gpu > 0 or self.gpu_memory_mb > 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu": self.cpu, "memory_mb": self.memory_mb, "gpu": self.gpu, "disk_mb": self.disk_mb}
        if self.gpu_memory_mb:  # only when asked: the specs stored before it stay equal
            out["gpu_memory_mb"] = self.gpu_memory_mb
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Resources:
        if isinstance(data, Resources):
            return data
        conv = {
            "memory_mb": lambda v: parse_memory(v, _join(cls._prefix, "memory_mb")),
            "disk_mb": lambda v: parse_memory(v, _join(cls._prefix, "disk_mb")),
            "gpu_memory_mb": lambda v: parse_memory(v, _join(cls._prefix, "gpu_memory_mb")),
        }
        return cls(**_fields_from_mapping(cls, data, cls._prefix, conv))


@dataclass(frozen=True)
class SessionPolicy:
    """Whether calls get long-lived sessions, and how long those live."""

    enabled: bool = True
    idle_ttl_s: float = 900.0
    max_lifetime_s: float = MAX_LIFETIME_CAP_S

    _prefix: ClassVar[str] = "session"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        p = self._prefix
        _bool(_join(p, "enabled"), self.enabled)
        life = _float_range(
            _join(p, "max_lifetime_s"), self.max_lifetime_s, 0.0, MAX_LIFETIME_CAP_S, lo_open=True
        )
        idle = _real(_join(p, "idle_ttl_s"), self.idle_ttl_s)
        if idle <= 0:
            raise InvalidSpec(_join(p, "idle_ttl_s"), self.idle_ttl_s, "must be greater than 0")
        if idle > life:
            raise InvalidSpec(
                _join(p, "idle_ttl_s"),
                self.idle_ttl_s,
                f"must not exceed session.max_lifetime_s ({life:g})",
            )
        _set(self, "idle_ttl_s", idle)
        _set(self, "max_lifetime_s", life)

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "idle_ttl_s": self.idle_ttl_s,
            "max_lifetime_s": self.max_lifetime_s,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SessionPolicy:
        if isinstance(data, SessionPolicy):
            return data
        return cls(**_fields_from_mapping(cls, data, cls._prefix))


@dataclass(frozen=True)
class Limits:
    """Byte and process limits enforced per call / per instance / per session."""

    max_payload_bytes: int = 6 * _MIB
    max_result_bytes: int = 6 * _MIB
    max_output_bytes: int = 1 * _MIB
    max_pids: int = 256
    max_state_bytes: int = 16 * _MIB

    _prefix: ClassVar[str] = "limits"
    _ranges: ClassVar[dict[str, tuple[int, int]]] = {
        "max_payload_bytes": (_KIB, _GIB),
        "max_result_bytes": (_KIB, _GIB),
        "max_output_bytes": (_KIB, 256 * _MIB),
        "max_pids": (8, 32768),
        "max_state_bytes": (_KIB, _GIB),
    }

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, (lo, hi) in self._ranges.items():
            _set(self, name, _int(_join(self._prefix, name), getattr(self, name), lo, hi))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._ranges}

    @classmethod
    def from_dict(cls, data: Any) -> Limits:
        if isinstance(data, Limits):
            return data
        return cls(**_fields_from_mapping(cls, data, cls._prefix))


#: error kinds a task attempt can end with, and may be retried on
TASK_ERROR_KINDS = ("user_exception", "timeout", "out_of_memory", "instance_crashed", "no_capacity", "bad_payload", "payload_too_large")


def _destination(path: str, value: Any) -> str | None:
    if value is None:
        return None
    text = _str(path, value)
    if text.startswith(("http://", "https://")):
        return text
    if not _NAME_RE.fullmatch(text):
        raise InvalidSpec(path, value, "must be a function name or an http(s) URL")
    return text


@dataclass(frozen=True)
class TaskPolicy:
    """How durable tasks of a function run: FIFO, at most ``concurrency`` at a
    time, each attempt up to ``timeout_s``, retried on ``retry_on`` kinds up to
    ``max_attempts`` attempts with exponential backoff (``backoff_s`` doubling
    up to ``max_backoff_s``, +- ``jitter`` fraction), then handed to
    ``on_success`` / ``on_failure`` (a function name or a webhook URL);
    finished tasks are kept ``retention_s``."""

    concurrency: int = 4
    timeout_s: float = 3600.0
    max_attempts: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    jitter: float = 0.5
    retry_on: tuple[str, ...] = ("timeout", "out_of_memory", "instance_crashed", "user_exception")
    on_success: str | None = None
    on_failure: str | None = None
    retention_s: float = 7 * 86400.0

    _prefix: ClassVar[str] = "tasks"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        p = self._prefix
        _set(self, "concurrency", _int(_join(p, "concurrency"), self.concurrency, 1, 1000))
        _set(self, "timeout_s", _float_range(_join(p, "timeout_s"), self.timeout_s, 0.0, MAX_TIMEOUT_S, lo_open=True))
        _set(self, "max_attempts", _int(_join(p, "max_attempts"), self.max_attempts, 1, 100))
        _set(self, "backoff_s", _float_range(_join(p, "backoff_s"), self.backoff_s, 0.0, 3600.0))
        _set(self, "max_backoff_s", _float_range(_join(p, "max_backoff_s"), self.max_backoff_s, 0.0, MAX_TIMEOUT_S))
        if self.max_backoff_s < self.backoff_s:
            raise InvalidSpec(_join(p, "max_backoff_s"), self.max_backoff_s, f"must not be below tasks.backoff_s ({self.backoff_s:g})")
        _set(self, "jitter", _float_range(_join(p, "jitter"), self.jitter, 0.0, 1.0))
        kinds = self.retry_on
        if isinstance(kinds, str) or not isinstance(kinds, (list, tuple, frozenset, set)):
            raise InvalidSpec(_join(p, "retry_on"), kinds, "expected a list of error kinds")
        for kind in kinds:
            if kind not in TASK_ERROR_KINDS:
                raise InvalidSpec(_join(p, "retry_on"), kind, f"unknown error kind; one of {', '.join(TASK_ERROR_KINDS)}")
        _set(self, "retry_on", tuple(sorted(set(kinds))))
        _set(self, "on_success", _destination(_join(p, "on_success"), self.on_success))
        _set(self, "on_failure", _destination(_join(p, "on_failure"), self.on_failure))
        _set(self, "retention_s", _float_range(_join(p, "retention_s"), self.retention_s, 0.0, 3650 * 86400.0, lo_open=True))

    def backoff(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``rand`` in [0, 1))."""
        base = min(self.max_backoff_s, self.backoff_s * (2 ** max(0, attempt - 1)))
        return float(max(0.0, base * (1.0 + self.jitter * (2.0 * rand - 1.0))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "timeout_s": self.timeout_s,
            "max_attempts": self.max_attempts,
            "backoff_s": self.backoff_s,
            "max_backoff_s": self.max_backoff_s,
            "jitter": self.jitter,
            "retry_on": list(self.retry_on),
            "on_success": self.on_success,
            "on_failure": self.on_failure,
            "retention_s": self.retention_s,
        }

    @classmethod
    def from_dict(cls, data: Any) -> TaskPolicy:
        if isinstance(data, TaskPolicy):
            return data
        fields = _fields_from_mapping(cls, data, cls._prefix)
        if isinstance(fields.get("retry_on"), list):
            fields["retry_on"] = tuple(fields["retry_on"])
        return cls(**fields)


# --------------------------------------------------------------------------- spec

# Flat convenience keys accepted by from_code/from_file/from_module/replace:
# key -> (nested object, or "" for the top level; field name)
_FLAT_KEYS: dict[str, tuple[str, str]] = {
    "cpu": ("resources", "cpu"),
    "gpu": ("resources", "gpu"),
    "memory": ("resources", "memory_mb"),
    "memory_mb": ("resources", "memory_mb"),
    "disk": ("resources", "disk_mb"),
    "disk_mb": ("resources", "disk_mb"),
    "gpu_memory": ("resources", "gpu_memory_mb"),
    "gpu_memory_mb": ("resources", "gpu_memory_mb"),
    "timeout": ("", "timeout_s"),
    "cooldown": ("", "scale_cooldown_s"),
    "idle_ttl": ("session", "idle_ttl_s"),
    "idle_ttl_s": ("session", "idle_ttl_s"),
    "max_lifetime": ("session", "max_lifetime_s"),
    "max_lifetime_s": ("session", "max_lifetime_s"),
}


@dataclass(frozen=True)
class FunctionSpec:
    """Everything needed to run a function, apart from the code's text."""

    name: str
    source: Source
    handler: str = "handler"
    resources: Resources = Resources()
    timeout_s: float = 600.0
    concurrency: int = 1
    session: SessionPolicy = SessionPolicy()
    min_instances: int = 0
    # Scaling on load (runtime/scaling.py): sessionless calls beyond
    # ``max_instances`` at once queue (0: no ceiling, and no scaling: the warm
    # pool stays at ``min_instances``); the warm pool grows to
    # ceil(calls in flight and queued / ``target_concurrency``), at most
    # ``max_instances``, and shrinks back to ``min_instances`` once the load
    # has stayed lower for ``scale_cooldown_s``.
    max_instances: int = 0
    target_concurrency: int = 1
    scale_cooldown_s: float = 60.0
    env: Mapping[str, str] = field(default_factory=FrozenEnv)
    network: str = "none"
    isolation_required: frozenset[str] = frozenset()
    # "default": the default seccomp filter; "off": none. ``seccomp_allow``
    # names calls of SECCOMP_BLOCKED the default filter lets through.
    seccomp: str = "default"
    seccomp_allow: frozenset[str] = frozenset()
    limits: Limits = Limits()
    tasks: TaskPolicy = TaskPolicy()
    description: str = ""
    # Name of a module-level callable run (no arguments): once in the
    # template before it forks (FUNCTIONAI_TEMPLATE=1: lazy imports and caches
    # built once, shared by every instance); once in the template's page
    # probe, confined, to learn which pages a call writes (each standby then
    # takes its own copies ahead: sandbox/pages.py); and in every pre-forked
    # warm-pool instance, inside its sandbox, before it serves a session
    # ("priming": a pooled instance's first call as fast as a warm one).
    warmup: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        name = _str("name", self.name)
        if not _NAME_RE.fullmatch(name):
            raise InvalidSpec(
                "name",
                name,
                "must start with a letter and contain only letters, digits, '_' or '-' "
                "(at most 63 characters)",
            )
        if not isinstance(self.source, Source):
            raise InvalidSpec("source", self.source, "expected a Source")
        for attr, klass in (
            ("resources", Resources),
            ("session", SessionPolicy),
            ("limits", Limits),
            ("tasks", TaskPolicy),
        ):
            if not isinstance(getattr(self, attr), klass):
                raise InvalidSpec(attr, getattr(self, attr), f"expected a {klass.__name__}")

        handler = _str("handler", self.handler)
        target = self.source.callable_name
        if target is not None:
            if handler == "handler":
                handler = target
            elif handler != target:
                raise InvalidSpec(
                    "handler", handler, f"must match the module target's callable {target!r}"
                )
            _set(self, "handler", handler)
        elif not (handler.isidentifier() and not keyword.iskeyword(handler)):
            raise InvalidSpec("handler", handler, "must be a Python identifier")

        _set(
            self,
            "timeout_s",
            _float_range("timeout_s", self.timeout_s, 0.0, MAX_TIMEOUT_S, lo_open=True),
        )
        _set(self, "concurrency", _int("concurrency", self.concurrency, 1, 1000))
        _set(self, "min_instances", _int("min_instances", self.min_instances, 0, 1000))
        _set(self, "max_instances", _int("max_instances", self.max_instances, 0, 1000))
        if self.max_instances and self.max_instances < self.min_instances:
            raise InvalidSpec("max_instances", self.max_instances, f"must not be below min_instances ({self.min_instances}); 0 means no ceiling")
        _set(self, "target_concurrency", _int("target_concurrency", self.target_concurrency, 1, 1000))
        _set(self, "scale_cooldown_s", _float_range("scale_cooldown_s", self.scale_cooldown_s, 0.0, 86400.0))
        _set(self, "env", _validate_env(self.env))
        network = _str("network", self.network)
        if network not in NETWORK_POLICIES:
            raise InvalidSpec("network", network, f"must be one of {', '.join(NETWORK_POLICIES)}")
        _set(self, "isolation_required", _validate_layers(self.isolation_required))
        _validate_seccomp(self)
        _str("description", self.description)
        if self.warmup is not None:
            warmup = _str("warmup", self.warmup)
            if not (warmup.isidentifier() and not keyword.iskeyword(warmup)):
                raise InvalidSpec("warmup", warmup, "must be the name of a module-level callable")

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_code(cls, name: str, code: str, **kw: Any) -> FunctionSpec:
        """A spec whose handler is defined in the Python source ``code``."""
        return cls._build(name, Source(kind="code", code=code), kw)

    @classmethod
    def from_file(cls, name: str, path: str | os.PathLike[str], **kw: Any) -> FunctionSpec:
        """A spec whose handler is defined in the ``.py`` file at ``path`` (made absolute)."""
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidSpec("source.path", path, "expected a path")
        return cls._build(name, Source(kind="file", path=os.path.abspath(path)), kw)

    @classmethod
    def from_module(cls, name: str, target: str, **kw: Any) -> FunctionSpec:
        """A spec whose handler is the importable ``"package.module:callable"``."""
        return cls._build(name, Source(kind="module", module=target), kw)

    @classmethod
    def _build(cls, name: str, source: Source, kw: Mapping[str, Any]) -> FunctionSpec:
        for key in ("name", "source"):
            if key in kw:
                raise InvalidSpec(key, kw[key], "given twice (also as an argument)")
        fields = _normalise_kw(kw, Resources(), SessionPolicy())
        return cls(name=name, source=source, **fields)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FunctionSpec:
        """Inverse of :meth:`to_dict`; strict about unknown keys and types."""
        converters = {
            "source": Source.from_dict,
            "resources": Resources.from_dict,
            "session": SessionPolicy.from_dict,
            "limits": Limits.from_dict,
            "tasks": TaskPolicy.from_dict,
            "isolation_required": _layers_from_json,
            "seccomp_allow": _seccomp_allow_from_json,
        }
        fields = _fields_from_mapping(cls, data, "", converters)
        for required in ("name", "source"):
            if required not in fields:
                raise InvalidSpec(required, None, "is required")
        return cls(**fields)

    # ------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``FunctionSpec.from_dict`` gives ``self`` back.
        The scaling fields appear only when one differs from its default, so the
        specs stored before they existed read back equal."""
        out = {
            "name": self.name,
            "source": self.source.to_dict(),
            "handler": self.handler,
            "resources": self.resources.to_dict(),
            "timeout_s": self.timeout_s,
            "concurrency": self.concurrency,
            "session": self.session.to_dict(),
            "min_instances": self.min_instances,
            "env": dict(self.env),
            "network": self.network,
            "isolation_required": sorted(self.isolation_required),
            "seccomp": self.seccomp,
            "seccomp_allow": sorted(self.seccomp_allow),
            "limits": self.limits.to_dict(),
            "tasks": self.tasks.to_dict(),
            "description": self.description,
            "warmup": self.warmup,
        }
        if (self.max_instances, self.target_concurrency, self.scale_cooldown_s) != (0, 1, 60.0):
            out.update(max_instances=self.max_instances, target_concurrency=self.target_concurrency, scale_cooldown_s=self.scale_cooldown_s)
        return out

    def replace(self, **changes: Any) -> FunctionSpec:
        """A copy with ``changes`` applied and validated (flat keys allowed too)."""
        fields = _normalise_kw(changes, self.resources, self.session)
        if "source" in fields and "handler" not in fields and self.source.kind == "module":
            # The handler was derived from the old module target; derive it again.
            fields["handler"] = "handler"
        return dataclasses.replace(self, **fields)

    def load_text(self) -> str | None:
        """Shortcut for ``self.source.load_text()``."""
        return self.source.load_text()


_TOP_LEVEL = frozenset(f.name for f in dataclasses.fields(FunctionSpec))


def _normalise_kw(
    kw: Mapping[str, Any], resources: Resources, session: SessionPolicy
) -> dict[str, Any]:
    """Turn keyword arguments (top-level fields and flat aliases) into spec fields."""
    out: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {"resources": {}, "session": {}}
    seen: dict[str, str] = {}
    for key, value in kw.items():
        if key in _FLAT_KEYS:
            group, target = _FLAT_KEYS[key]
            dotted = _join(group, target)
            if dotted in seen:
                raise InvalidSpec(key, value, f"given twice (also as {seen[dotted]!r})")
            seen[dotted] = key
            if target in ("memory_mb", "disk_mb", "gpu_memory_mb"):
                value = parse_memory(value, f"resources.{target}")
            if group:
                nested[group][target] = value
            else:
                out[target] = value
        elif key in _TOP_LEVEL:
            if key in seen:
                raise InvalidSpec(key, value, f"given twice (also as {seen[key]!r})")
            seen[key] = key
            out[key] = value
        else:
            raise InvalidSpec(key, value, "unknown field")

    if "resources" in out:
        resources = out["resources"] = _coerce(Resources, "resources", out["resources"])
    if "session" in out:
        value = out["session"]
        if isinstance(value, bool):
            value = SessionPolicy(enabled=value)
        session = out["session"] = _coerce(SessionPolicy, "session", value)
    if "limits" in out:
        out["limits"] = _coerce(Limits, "limits", out["limits"])
    if "tasks" in out:
        out["tasks"] = _coerce(TaskPolicy, "tasks", out["tasks"])
    if "source" in out:
        out["source"] = _coerce(Source, "source", out["source"])

    if nested["resources"]:
        out["resources"] = dataclasses.replace(resources, **nested["resources"])
    if nested["session"]:
        changes = nested["session"]
        if "max_lifetime_s" in changes and "idle_ttl_s" not in changes:
            # A shorter lifetime than the default idle TTL shortens the TTL with it.
            life = _real("session.max_lifetime_s", changes["max_lifetime_s"])
            if life > 0 and session.idle_ttl_s > life:
                changes["idle_ttl_s"] = life
        out["session"] = dataclasses.replace(session, **changes)
    return out


def _coerce(klass: Any, name: str, value: Any) -> Any:
    if isinstance(value, klass):
        return value
    if isinstance(value, Mapping):
        return klass.from_dict(value)
    raise InvalidSpec(name, value, f"expected a {klass.__name__} or a mapping")


def _validate_env(env: Any) -> FrozenEnv:
    if not isinstance(env, Mapping):
        raise InvalidSpec("env", env, "expected a mapping of names to strings")
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.fullmatch(key):
            raise InvalidSpec("env", key, "variable names must match [A-Za-z_][A-Za-z0-9_]*")
        if not isinstance(value, str):
            raise InvalidSpec(f"env.{key}", value, "expected a string")
        if "\0" in value:
            raise InvalidSpec(f"env.{key}", value, "must not contain NUL characters")
    return env if isinstance(env, FrozenEnv) else FrozenEnv(env)


def _validate_layers(layers: Any) -> frozenset[str]:
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
        raise InvalidSpec("isolation_required", layers, "expected a set of isolation layer names")
    items = list(layers)
    for layer in items:
        if layer not in ISOLATION_LAYERS:
            raise InvalidSpec(
                "isolation_required", layer, f"must be one of {', '.join(ISOLATION_LAYERS)}"
            )
    return layers if isinstance(layers, frozenset) else frozenset(items)


def _layers_from_json(value: Any) -> frozenset[str]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidSpec("isolation_required", value, "expected a list of isolation layer names")
    return _validate_layers(value)


def _validate_seccomp(spec: FunctionSpec) -> None:
    mode = _str("seccomp", spec.seccomp)
    if mode not in SECCOMP_MODES:
        raise InvalidSpec("seccomp", mode, f"must be one of {', '.join(SECCOMP_MODES)}")
    allow = spec.seccomp_allow
    if isinstance(allow, (str, bytes, Mapping)) or not isinstance(allow, Iterable):
        raise InvalidSpec("seccomp_allow", allow, "expected a set of system call names")
    items = list(allow)
    for name in items:
        if name not in SECCOMP_BLOCKED:
            raise InvalidSpec(
                "seccomp_allow",
                name,
                f"not a call the default filter blocks; one of {', '.join(SECCOMP_BLOCKED)}",
            )
    if mode == "off" and items:
        raise InvalidSpec("seccomp_allow", sorted(items), "has no effect with seccomp 'off'; leave it empty")
    if mode == "off" and "seccomp" in spec.isolation_required:
        raise InvalidSpec("seccomp", mode, "is 'off' but isolation_required lists 'seccomp'")
    if spec.resources.disk_mb == 0 and "disk" in spec.isolation_required:
        raise InvalidSpec("resources.disk_mb", 0, "is 0 (no disk cap) but isolation_required lists 'disk'")
    if not isinstance(allow, frozenset):
        _set(spec, "seccomp_allow", frozenset(items))


def _seccomp_allow_from_json(value: Any) -> Any:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidSpec("seccomp_allow", value, "expected a list of system call names")
    return value  # checked and made a frozenset by FunctionSpec.validate
