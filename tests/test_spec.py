"""FunctionSpec validation, conversion and convenience constructors."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from jupyter_functionai.errors import InvalidSpec
from jupyter_functionai.spec import (
    ISOLATION_LAYERS,
    MAX_LIFETIME_CAP_S,
    NETWORK_POLICIES,
    FunctionSpec,
    Limits,
    Resources,
    SessionPolicy,
    Source,
    parse_memory,
)

CODE = "def handler(event, context):\n    return event\n"


def code_spec(**kw: Any) -> FunctionSpec:
    return FunctionSpec.from_code("echo", CODE, **kw)


def assert_invalid(exc: pytest.ExceptionInfo[InvalidSpec], field: str, shown: str) -> None:
    err = exc.value
    assert err.field == field, str(err)
    assert err.kind == "invalid_spec"
    assert str(err).startswith(f"{field}: ")
    assert shown in str(err), str(err)
    assert err.to_dict()["field"] == field


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    spec = code_spec()
    assert spec.name == "echo"
    assert spec.handler == "handler"
    assert spec.resources == Resources(cpu=1.0, memory_mb=512, gpu=0.0)
    assert spec.timeout_s == 600.0
    assert spec.concurrency == 1
    assert spec.session == SessionPolicy(True, 900.0, MAX_LIFETIME_CAP_S)
    assert spec.min_instances == 0
    assert dict(spec.env) == {}
    assert spec.network == "none"
    assert spec.isolation_required == frozenset()
    assert spec.limits.max_payload_bytes == 6 * 1024 * 1024
    assert spec.limits.max_output_bytes == 1024 * 1024
    assert spec.limits.max_pids == 256
    assert spec.limits.max_state_bytes == 16 * 1024 * 1024
    assert spec.description == ""
    assert spec.load_text() == CODE
    assert "none" in NETWORK_POLICIES and "seccomp" in ISOLATION_LAYERS


def test_spec_is_frozen_and_hashable() -> None:
    spec = code_spec(env={"A": "1"}, isolation_required={"pid"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["B"] = "2"  # type: ignore[index]
    assert hash(spec) == hash(code_spec(env={"A": "1"}, isolation_required=["pid"]))
    assert spec == code_spec(env={"A": "1"}, isolation_required=["pid"])
    assert spec != code_spec(env={"A": "2"}, isolation_required=["pid"])


def test_env_is_copied_not_aliased() -> None:
    env = {"A": "1"}
    spec = code_spec(env=env)
    env["A"] = "changed"
    assert spec.env["A"] == "1"


def test_ints_are_stored_as_floats_for_float_fields() -> None:
    spec = code_spec(cpu=2, timeout=5, gpu=1)
    assert spec.resources.cpu == 2.0 and isinstance(spec.resources.cpu, float)
    assert isinstance(spec.timeout_s, float)
    assert isinstance(spec.resources.gpu, float)


# --------------------------------------------------------------------------- invalid fields

INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"name": ""}, "name", "''"),
    ({"name": "1abc"}, "name", "'1abc'"),
    ({"name": "a" * 64}, "name", "'aaaa"),
    ({"name": "bad name"}, "name", "'bad name'"),
    ({"name": "ok\n"}, "name", "'ok\\n'"),
    ({"name": 7}, "name", "7"),
    ({"handler": "not-ident"}, "handler", "'not-ident'"),
    ({"handler": "class"}, "handler", "'class'"),
    ({"handler": 3}, "handler", "3"),
    ({"resources": {"cpu": 0.001}}, "resources.cpu", "0.001"),
    ({"cpu": 65}, "resources.cpu", "65"),
    ({"cpu": True}, "resources.cpu", "True"),
    ({"cpu": "2"}, "resources.cpu", "'2'"),
    ({"cpu": float("nan")}, "resources.cpu", "nan"),
    ({"memory": 15}, "resources.memory_mb", "15"),
    ({"memory": 1_048_577}, "resources.memory_mb", "1048577"),
    ({"memory": "lots"}, "resources.memory_mb", "'lots'"),
    ({"memory": "12Xi"}, "resources.memory_mb", "'12Xi'"),
    ({"memory": 512.0}, "resources.memory_mb", "512.0"),
    ({"memory": False}, "resources.memory_mb", "False"),
    ({"gpu": -0.5}, "resources.gpu", "-0.5"),
    ({"gpu": 1.5}, "resources.gpu", "1.5"),
    ({"gpu": 17}, "resources.gpu", "17"),
    ({"gpu": "1"}, "resources.gpu", "'1'"),
    ({"timeout": 0}, "timeout_s", "0"),
    ({"timeout_s": -1.0}, "timeout_s", "-1.0"),
    ({"timeout_s": 86401}, "timeout_s", "86401"),
    ({"timeout_s": "10"}, "timeout_s", "'10'"),
    ({"timeout_s": float("inf")}, "timeout_s", "inf"),
    ({"concurrency": 0}, "concurrency", "0"),
    ({"concurrency": 1001}, "concurrency", "1001"),
    ({"concurrency": 2.0}, "concurrency", "2.0"),
    ({"concurrency": True}, "concurrency", "True"),
    ({"min_instances": -1}, "min_instances", "-1"),
    ({"min_instances": 1001}, "min_instances", "1001"),
    ({"idle_ttl": 0}, "session.idle_ttl_s", "0"),
    ({"idle_ttl": 100, "max_lifetime": 50}, "session.idle_ttl_s", "100"),
    ({"max_lifetime": 0}, "session.max_lifetime_s", "0"),
    ({"max_lifetime": 86401.0}, "session.max_lifetime_s", "86401.0"),
    ({"session": {"enabled": 1}}, "session.enabled", "1"),
    ({"env": {"1BAD": "x"}}, "env", "'1BAD'"),
    ({"env": {"A-B": "x"}}, "env", "'A-B'"),
    ({"env": {"GOOD": 1}}, "env.GOOD", "1"),
    ({"env": {"GOOD": "a\0b"}}, "env.GOOD", "'a\\x00b'"),
    ({"env": [("A", "b")]}, "env", "[('A', 'b')]"),
    ({"network": "internet"}, "network", "'internet'"),
    ({"network": None}, "network", "None"),
    ({"isolation_required": {"pid", "telepathy"}}, "isolation_required", "'telepathy'"),
    ({"isolation_required": "pid"}, "isolation_required", "'pid'"),
    ({"limits": {"max_payload_bytes": 1023}}, "limits.max_payload_bytes", "1023"),
    ({"limits": {"max_result_bytes": 2**30 + 1}}, "limits.max_result_bytes", "1073741825"),
    ({"limits": {"max_output_bytes": 256 * 2**20 + 1}}, "limits.max_output_bytes", "268435457"),
    ({"limits": {"max_pids": 7}}, "limits.max_pids", "7"),
    ({"limits": {"max_pids": 32769}}, "limits.max_pids", "32769"),
    ({"limits": {"max_state_bytes": "1M"}}, "limits.max_state_bytes", "'1M'"),
    ({"limits": {"max_pids": 64, "bogus": 1}}, "limits.bogus", "1"),
    ({"resources": [1, 2]}, "resources", "[1, 2]"),
    ({"description": 5}, "description", "5"),
    ({"colour": "red"}, "colour", "'red'"),
    ({"timeout": 5, "timeout_s": 6}, "timeout_s", "6"),
    ({"memory": 64, "memory_mb": 64}, "memory_mb", "64"),
]


@pytest.mark.parametrize(("kw", "field", "shown"), INVALID)
def test_invalid_field_names_field_and_value(kw: dict[str, Any], field: str, shown: str) -> None:
    name = kw.pop("name", "echo")
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_code(name, CODE, **kw)
    assert_invalid(exc, field, shown)


def test_invalid_spec_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"concurrency: 0 is not valid"):
        code_spec(concurrency=0)


def test_bounds_are_inclusive() -> None:
    spec = code_spec(
        cpu=0.01,
        memory=16,
        gpu=16,
        timeout=86400,
        concurrency=1000,
        min_instances=1000,
        idle_ttl=MAX_LIFETIME_CAP_S,
        max_lifetime=MAX_LIFETIME_CAP_S,
        limits=Limits(
            max_payload_bytes=1024,
            max_result_bytes=2**30,
            max_output_bytes=256 * 2**20,
            max_pids=8,
            max_state_bytes=2**30,
        ),
    )
    assert spec.resources.gpu == 16.0
    assert code_spec(cpu=64, memory=1_048_576, gpu=0.25).resources.gpu == 0.25
    assert code_spec(gpu=1).resources.gpu == 1.0
    assert code_spec(gpu=2).resources.gpu == 2.0


def test_nested_objects_validate_on_their_own() -> None:
    with pytest.raises(InvalidSpec) as exc:
        Resources(memory_mb=8)
    assert_invalid(exc, "resources.memory_mb", "8")
    with pytest.raises(InvalidSpec) as exc:
        Limits(max_pids=True)  # type: ignore[arg-type]
    assert_invalid(exc, "limits.max_pids", "True")
    with pytest.raises(InvalidSpec) as exc:
        SessionPolicy(idle_ttl_s=10.0, max_lifetime_s=5.0)
    assert_invalid(exc, "session.idle_ttl_s", "10.0")
    assert "max_lifetime_s" in exc.value.reason
    with pytest.raises(InvalidSpec) as exc:
        SessionPolicy(enabled="yes")  # type: ignore[arg-type]
    assert_invalid(exc, "session.enabled", "'yes'")


def test_source_must_be_a_source() -> None:
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec(name="x", source="print(1)")  # type: ignore[arg-type]
    assert_invalid(exc, "source", "'print(1)'")


# --------------------------------------------------------------------------- sources


def test_syntax_error_reports_line() -> None:
    code = "x = 1\ny = 2\ndef broken(:\n    pass\n"
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_code("bad", code)
    assert_invalid(exc, "source.code", "line 3")
    assert "SyntaxError" in exc.value.reason


def test_nul_byte_in_code_is_invalid() -> None:
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_code("bad", "x = 1\0")
    assert exc.value.field == "source.code"


def test_code_must_be_str() -> None:
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_code("bad", b"x = 1")  # type: ignore[arg-type]
    assert_invalid(exc, "source.code", "b'x = 1'")


def test_source_kind_and_extra_fields() -> None:
    with pytest.raises(InvalidSpec) as exc:
        Source(kind="url")
    assert_invalid(exc, "source.kind", "'url'")
    with pytest.raises(InvalidSpec) as exc:
        Source(kind="code", code="x = 1", module="a:b")
    assert_invalid(exc, "source.module", "'a:b'")


def test_from_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fn.py"
    path.write_text(CODE)
    monkeypatch.chdir(tmp_path)
    spec = FunctionSpec.from_file("f", "fn.py", memory="1Gi")
    assert spec.source.kind == "file"
    assert spec.source.path == str(path)  # made absolute
    assert spec.load_text() == CODE
    path.write_text(CODE + "# v2\n")
    assert spec.source.load_text() == CODE + "# v2\n"  # read at load time
    assert FunctionSpec.from_dict(spec.to_dict()) == spec


def test_from_file_errors(tmp_path: Any) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_file("f", missing)
    assert exc.value.field == "source.path"
    assert exc.value.value == str(missing)
    assert "does not exist" in exc.value.reason

    txt = tmp_path / "fn.txt"
    txt.write_text(CODE)
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_file("f", txt)
    assert exc.value.field == "source.path"
    assert exc.value.value == str(txt)
    assert ".py" in exc.value.reason

    bad = tmp_path / "bad.py"
    bad.write_text("ok = 1\nnot python at all\n")
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_file("f", bad)
    assert_invalid(exc, "source.path", "line 2")
    assert str(bad) in exc.value.reason


def test_from_module_sets_handler() -> None:
    spec = FunctionSpec.from_module("m", "json.decoder:scanstring")
    assert spec.handler == "scanstring"
    assert spec.source.module == "json.decoder:scanstring"
    assert spec.load_text() is None
    assert FunctionSpec.from_module("m", "pkg.mod:run", handler="run").handler == "run"
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_module("m", "pkg.mod:run", handler="other")
    assert_invalid(exc, "handler", "'other'")


@pytest.mark.parametrize("target", ["pkg.mod", "pkg.mod:", ":run", "pkg-x:run", "pkg:1run", 5])
def test_from_module_bad_target(target: Any) -> None:
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_module("m", target)
    assert_invalid(exc, "source.module", repr(target))


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("300", 300),
        ("512Mi", 512),
        ("256M", 256),
        ("1G", 1024),
        ("1Gi", 1024),
        ("1.5GiB", 1536),
        (" 2g ", 2048),
        ("0.5Ti", 512 * 1024),
        (768, 768),
    ],
)
def test_parse_memory(text: Any, mb: int) -> None:
    assert parse_memory(text) == mb
    assert code_spec(memory=text).resources.memory_mb == mb
    assert Resources.from_dict({"memory_mb": text}).memory_mb == mb


def test_parse_memory_names_field() -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_memory("1Q", "x.mem")
    assert_invalid(exc, "x.mem", "'1Q'")


# --------------------------------------------------------------------------- aliases


def test_flat_aliases_map_to_nested_fields() -> None:
    spec = code_spec(memory="2G", cpu=2.5, gpu=0.5, timeout=30, idle_ttl=60, max_lifetime=3600)
    assert spec.resources == Resources(cpu=2.5, memory_mb=2048, gpu=0.5)
    assert spec.timeout_s == 30.0
    assert spec.session == SessionPolicy(enabled=True, idle_ttl_s=60.0, max_lifetime_s=3600.0)


def test_flat_aliases_merge_with_nested_objects() -> None:
    spec = code_spec(resources=Resources(cpu=4.0, memory_mb=64), memory=128)
    assert spec.resources == Resources(cpu=4.0, memory_mb=128, gpu=0.0)
    spec = code_spec(resources={"gpu": 0.25}, session=False, idle_ttl=5)
    assert spec.resources.gpu == 0.25
    assert spec.session == SessionPolicy(enabled=False, idle_ttl_s=5.0)


def test_short_max_lifetime_shortens_default_idle_ttl() -> None:
    spec = code_spec(max_lifetime=60)
    assert spec.session.max_lifetime_s == 60.0
    assert spec.session.idle_ttl_s == 60.0


def test_source_cannot_be_given_twice() -> None:
    other = Source(kind="module", module="a:b")
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_code("a", CODE, source=other)
    assert exc.value.field == "source"
    assert "given twice" in exc.value.reason


# --------------------------------------------------------------------------- dicts


def full_spec() -> FunctionSpec:
    return code_spec(
        handler="handler",
        memory="1Gi",
        cpu=2,
        gpu=0.25,
        timeout=120,
        concurrency=4,
        session=SessionPolicy(enabled=True, idle_ttl_s=30.0, max_lifetime_s=600.0),
        min_instances=2,
        env={"OPENAI_BASE_URL": "http://localhost", "DEBUG": "1"},
        network="loopback",
        isolation_required={"pid", "mount", "net"},
        limits=Limits(max_pids=64, max_output_bytes=4096),
        description="echoes its event",
    )


def test_to_dict_is_json_and_round_trips() -> None:
    spec = full_spec()
    data = spec.to_dict()
    text = json.dumps(data)
    back = FunctionSpec.from_dict(json.loads(text))
    assert back == spec
    assert back.to_dict() == data
    assert data["isolation_required"] == ["mount", "net", "pid"]
    assert data["source"] == {"kind": "code", "code": CODE}
    assert data["resources"] == {"cpu": 2.0, "memory_mb": 1024, "gpu": 0.25, "disk_mb": 1024}
    assert data["env"] == {"OPENAI_BASE_URL": "http://localhost", "DEBUG": "1"}


def test_module_spec_round_trips() -> None:
    spec = FunctionSpec.from_module("m", "pkg.mod:run", network="host")
    assert FunctionSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["source"] == {"kind": "module", "module": "pkg.mod:run"}


def test_from_dict_minimal_and_memory_string() -> None:
    spec = FunctionSpec.from_dict(
        {
            "name": "m",
            "source": {"kind": "code", "code": CODE},
            "resources": {"memory_mb": "256Mi"},
            "isolation_required": ["uid", "tmp"],
        }
    )
    assert spec.resources.memory_mb == 256
    assert spec.isolation_required == frozenset({"uid", "tmp"})
    assert spec.timeout_s == 600.0


@pytest.mark.parametrize(
    ("mutate", "field", "shown"),
    [
        (lambda d: d.update(colour="red"), "colour", "'red'"),
        (lambda d: d["resources"].update(disk=5), "resources.disk", "5"),
        (lambda d: d["session"].update(sticky=True), "session.sticky", "True"),
        (lambda d: d["source"].update(lang="py"), "source.lang", "'py'"),
        (lambda d: d.update(resources="big"), "resources", "'big'"),
        (lambda d: d.update(session=True), "session", "True"),
        (lambda d: d.update(limits=None), "limits", "None"),
        (lambda d: d.update(isolation_required="pid"), "isolation_required", "'pid'"),
        (lambda d: d.update(isolation_required={"pid": 1}), "isolation_required", "{'pid': 1}"),
        (lambda d: d.update(timeout_s="600"), "timeout_s", "'600'"),
        (lambda d: d.update(concurrency=1.5), "concurrency", "1.5"),
        (lambda d: d["resources"].update(cpu=False), "resources.cpu", "False"),
        (lambda d: d["resources"].update(memory_mb=[1]), "resources.memory_mb", "[1]"),
        (lambda d: d["session"].update(enabled="true"), "session.enabled", "'true'"),
        (lambda d: d.pop("name"), "name", "None"),
        (lambda d: d.pop("source"), "source", "None"),
        (lambda d: d["source"].pop("kind"), "source.kind", "None"),
        (lambda d: d["env"].update(X=None), "env.X", "None"),
    ],
)
def test_from_dict_rejects(mutate: Any, field: str, shown: str) -> None:
    data = full_spec().to_dict()
    mutate(data)
    with pytest.raises(InvalidSpec) as exc:
        FunctionSpec.from_dict(data)
    assert_invalid(exc, field, shown)


def test_from_dict_requires_mapping() -> None:
    with pytest.raises(InvalidSpec):
        FunctionSpec.from_dict(["name", "x"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- replace


def test_replace_revalidates() -> None:
    spec = full_spec()
    bigger = spec.replace(memory="4G", concurrency=8)
    assert bigger.resources.memory_mb == 4096
    assert bigger.resources.cpu == 2.0  # untouched nested values kept
    assert bigger.concurrency == 8
    assert spec.concurrency == 4  # original unchanged
    with pytest.raises(InvalidSpec) as exc:
        spec.replace(concurrency=0)
    assert_invalid(exc, "concurrency", "0")
    with pytest.raises(InvalidSpec) as exc:
        spec.replace(idle_ttl=601)
    assert_invalid(exc, "session.idle_ttl_s", "601")
    with pytest.raises(InvalidSpec) as exc:
        spec.replace(nonsense=1)
    assert_invalid(exc, "nonsense", "1")


def test_replace_name_and_source() -> None:
    spec = FunctionSpec.from_module("m", "pkg.mod:run")
    renamed = spec.replace(name="m2")
    assert renamed.name == "m2" and renamed.handler == "run"
    moved = spec.replace(source=Source(kind="module", module="pkg.other:go"))
    assert moved.handler == "go"
    as_code = spec.replace(source={"kind": "code", "code": "def run(e, c):\n    pass\n"})
    assert as_code.source.kind == "code" and as_code.handler == "handler"
