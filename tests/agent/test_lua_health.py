"""Custom health checks in Argo CD's Lua format: the example scripts in Argo CD's layout
(tests/fixtures/lua/<group>/<Kind>/health.lua with health_test.yaml and testdata/) through
the `fleetops-agent health --health-checks DIR` command a user runs, precedence over the
built-ins, and the sandbox against hostile scripts."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

from fleetops.agent import health, luahealth

LUA = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "lua"
AGENT = str(pathlib.Path(sys.executable).parent / "fleetops-agent")


def run_health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENT, "health", *args, "--output", "json"], capture_output=True, text=True, check=False
    )


def cases() -> list[tuple[pathlib.Path, dict[str, str]]]:
    found = []
    for spec in sorted(LUA.rglob("health_test.yaml")):
        for test in yaml.safe_load(spec.read_text())["tests"]:
            found.append((spec.parent / test["inputPath"], test["healthStatus"]))
    return found


CASES = cases()


def test_the_examples_have_cases() -> None:
    assert len(CASES) >= 10, CASES


@pytest.mark.parametrize(
    ("testdata", "want"), CASES, ids=[str(c[0].relative_to(LUA)) for c in CASES]
)
def test_example_script_verdict(testdata: pathlib.Path, want: dict[str, str]) -> None:
    res = run_health(str(testdata), "--health-checks", str(LUA))
    assert res.returncode == 0, res.stderr
    [obj] = json.loads(res.stdout)["objects"]
    assert (obj["health"], obj["reason"]) == (want["status"], want["message"])


def test_without_the_scripts_the_built_ins_decide() -> None:
    """The aborted Rollout has no standard conditions: without the script it just 'exists'."""
    res = run_health(str(LUA / "argoproj.io/Rollout/testdata/aborted.yaml"))
    [obj] = json.loads(res.stdout)["objects"]
    assert (obj["health"], obj["reason"]) == ("Healthy", "exists")


def test_a_lua_check_overrides_a_built_in(tmp_path: pathlib.Path) -> None:
    (tmp_path / "apps" / "Deployment").mkdir(parents=True)
    (tmp_path / "apps" / "Deployment" / "health.lua").write_text(
        'if obj.metadata.name == "web-available" then\n'
        '  return {status = "Degraded", message = "frozen by the on-call"}\n'
        "end\n"
        "return {}\n"
    )
    (tmp_path / "ConfigMap").mkdir()  # the core group: <Kind>/health.lua
    (tmp_path / "ConfigMap" / "health.lua").write_text(
        'return {status = "Suspended", message = "config " .. obj.metadata.name .. " held"}'
    )
    fixtures = LUA.parent / "health"
    res = run_health(
        str(fixtures / "workloads.yaml"),
        str(fixtures / "others.yaml"),
        "--health-checks",
        str(tmp_path),
    )
    assert res.returncode == 0, res.stderr
    got = {
        f"{o['kind']}/{o['name']}": (o["health"], o["reason"])
        for o in json.loads(res.stdout)["objects"]
    }
    assert got["Deployment/web-available"] == ("Degraded", "frozen by the on-call")
    # an empty table is no verdict: the built-in rule still speaks for the other Deployments
    assert got["Deployment/web-paused"][0] == "Suspended"
    assert "paused" in got["Deployment/web-paused"][1]
    assert got["ConfigMap/settings"] == ("Suspended", "config settings held")


def test_a_bad_directory_stops_the_command_with_its_name(tmp_path: pathlib.Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "health.lua").write_text("return nil")
    res = run_health(
        str(LUA / "argoproj.io/Rollout/testdata/aborted.yaml"), "--health-checks", str(tmp_path)
    )
    assert res.returncode == 1
    assert f"--health-checks {tmp_path}" in res.stderr
    assert "expected <group>/<Kind>/health.lua" in res.stderr
    missing = run_health(
        str(LUA / "argoproj.io/Rollout/testdata/aborted.yaml"),
        "--health-checks",
        str(tmp_path / "nope"),
    )
    assert missing.returncode == 1 and "not a directory" in missing.stderr


def test_bundle_checks_come_before_the_agent_directory() -> None:
    obj = yaml.safe_load((LUA / "cert-manager.io/Certificate/testdata/ready.yaml").read_text())
    own = luahealth.Checks(luahealth.load_dir(LUA))
    hub = luahealth.Checks(
        [luahealth.Source("cert-manager.io", "Certificate", 'return {status="Suspended"}', "hub")]
    )
    assert health.Checks(own).assess(obj).status == health.HEALTHY
    got = health.Checks(hub, own).assess(obj)
    assert got.status == health.SUSPENDED
    assert "hub" in got.reason  # no message: the reason names the script
    # inside `using`, the plain `assess` every step calls sees the same checks
    with health.using(health.Checks(hub, own)):
        assert health.assess(obj).status == health.SUSPENDED
    assert health.assess(obj).status == health.HEALTHY  # built-in: Ready=True


HOSTILE = {
    "infinite loop": "while true do end",
    "loop that swallows the limit": "while true do pcall(function() while true do end end) end",
    "huge table": "local t = {} for i = 1, 1e9 do t[i] = {i} end",
    "string.rep bomb": "local s = string.rep('x', 1e9) return {status = 'Healthy'}",
    "many big strings": "for i = 1, 1e7 do local s = string.rep('x', 1e6) .. i end",
    "os.execute": "os.execute('touch /tmp/fleetops-lua-pwned') return {status = 'Healthy'}",
    "io.open": "local f = io.open('/etc/hostname') return {status = 'Healthy', message = f:read()}",
    "require": "local os = require('os') os.execute('true')",
    "load bytecode": "return load(string.dump(function() end))()",
    "dump through a string": "return {status = 'Healthy', message = ('').dump(function() end)}",
    "python bridge": "return {status = 'Healthy', message = python.eval('1+1')}",
    "invalid status": "return {status = 'Great', message = 'all good'}",
    "not a table": "return 'Healthy'",
    "syntax error": "return {status = ",
    "runtime error": "return {status = obj.no.such.field}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_script_is_unknown_never_a_crash(name: str) -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    checks = health.Checks(
        luahealth.Checks([luahealth.Source("example.com", "Widget", HOSTILE[name], "widget.lua")])
    )
    started = time.monotonic()
    got = checks.assess(obj)
    assert time.monotonic() - started < 5
    assert got.status == health.UNKNOWN, got
    assert "widget.lua" in got.reason
    assert not pathlib.Path("/tmp/fleetops-lua-pwned").exists()


def test_limits_are_named_and_the_runtime_survives_them() -> None:
    sources = [
        luahealth.Source("example.com", "Loop", "while true do end", "loop.lua"),
        luahealth.Source("example.com", "Bomb", "local s = string.rep('x', 1e9)", "bomb.lua"),
        luahealth.Source(
            "example.com", "Fine", 'return {status = "Healthy", message = "ok"}', "fine.lua"
        ),
    ]
    checks = luahealth.Checks(sources)

    def verdict(kind: str) -> luahealth.Verdict | None:
        return checks.verdict({"kind": kind}, group="example.com", kind=kind)

    loop, bomb = verdict("Loop"), verdict("Bomb")
    assert loop is not None and "instruction limit exceeded" in loop.message
    assert bomb is not None and "memory limit exceeded" in bomb.message
    # a script that hit a limit does not block the agent again for the next object
    started = time.monotonic()
    again = verdict("Loop")
    assert time.monotonic() - started < 0.05
    assert again is not None and again.status == "Unknown"
    assert "loop.lua is disabled: instruction limit exceeded on an earlier object" in again.message
    for _ in range(3):  # the same runtime keeps answering after its limits were hit
        assert verdict("Fine") == luahealth.Verdict("Healthy", "ok", "fine.lua")


def test_one_script_cannot_change_another() -> None:
    tamper = luahealth.Source(
        "example.com",
        "A",
        "string.format = nil; table.insert = nil; obj = nil; return {}",
        "a.lua",
    )
    victim = luahealth.Source(
        "example.com",
        "B",
        'local t = {} table.insert(t, "x")\n'
        'return {status = "Healthy", message = string.format("%s", t[1])}',
        "b.lua",
    )
    checks = luahealth.Checks([tamper, victim])
    assert checks.verdict({"kind": "A"}, group="example.com", kind="A") is None
    assert checks.verdict({"kind": "B"}, group="example.com", kind="B") == luahealth.Verdict(
        "Healthy", "x", "b.lua"
    )


def test_obj_arrays_are_one_based_as_in_argo_cd() -> None:
    script = (
        "local c = obj.status.conditions\n"
        'return {status = "Healthy", message = #c .. " " .. c[1].type .. " " .. tostring(c[0])}'
    )
    checks = luahealth.Checks([luahealth.Source("example.com", "W", script, "w.lua")])
    obj = {"status": {"conditions": [{"type": "Ready"}, {"type": "Synced"}]}}
    got = checks.verdict(obj, group="example.com", kind="W")
    assert got is not None and got.message == "2 Ready nil"


def test_lua_5_1_names_argo_cd_scripts_use_work() -> None:
    """Argo CD runs gopher-lua (Lua 5.1); its published scripts call table.getn, unpack and
    friends, which Lua 5.4 dropped. Without them such a script is Unknown on every object."""
    script = (
        "local active = obj.status.active\n"
        "local first = unpack(active)\n"
        "if table.getn(active) > 0 and table.maxn(active) == 2 and math.mod(7, 4) == 3 then\n"
        '  return {status = "Healthy", message = "running " .. first.name}\n'
        "end\n"
        'return {status = "Degraded", message = "no"}'
    )
    checks = luahealth.Checks([luahealth.Source("batch", "CronJob", script, "cronjob.lua")])
    obj = {"status": {"active": [{"name": "a"}, {"name": "b"}]}}
    assert checks.verdict(obj, group="batch", kind="CronJob") == luahealth.Verdict(
        "Healthy", "running a", "cronjob.lua"
    )


def test_an_exact_script_beats_a_wildcard() -> None:
    checks = luahealth.Checks(
        [
            luahealth.Source("*.example.com", "*", 'return {status = "Degraded"}', "any.lua"),
            luahealth.Source("db.example.com", "Pool", 'return {status = "Healthy"}', "pool.lua"),
        ]
    )
    pool = checks.script_for("db.example.com", "Pool")
    other = checks.script_for("db.example.com", "Cluster")
    assert pool is not None and pool.origin == "pool.lua"
    assert other is not None and other.origin == "any.lua"
    assert checks.script_for("example.org", "Pool") is None


def test_a_secret_check_sees_keys_never_values() -> None:
    script = (
        "local keys = {}\n"
        "for k, v in pairs(obj.data) do keys[#keys + 1] = k .. '=' .. v end\n"
        'return {status = "Healthy", message = table.concat(keys, ",")}'
    )
    checks = health.Checks(luahealth.Checks([luahealth.Source("", "Secret", script, "s.lua")]))
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db"},
        "data": {"password": "c3VwZXItc2VjcmV0"},
    }
    assert checks.assess(secret).reason == "password="


# Scripts that once ran Lua where no hook counted, and hung the agent for good (review M1).
ESCAPES = {
    "error object with a looping __tostring": (
        "error(setmetatable({}, {__tostring = function() while true do end end}))"
    ),
    "result with a looping __index": (
        "return setmetatable({}, {__index = function() while true do end end})"
    ),
    "message with a looping __tostring": (
        'return {status = "Healthy",'
        " message = setmetatable({}, {__tostring = function() while true do end end})}"
    ),
    "looping __gc finaliser": (
        'setmetatable({}, {__gc = function() while true do end end}); error("x")'
    ),
    "__gc added to the metatable afterwards": (
        "local mt = {} local o = setmetatable({}, mt)"
        " mt.__gc = function() while true do end end o = nil error('x')"
    ),
    "looping __close": (
        "local mt = {} local o = setmetatable({}, mt)"
        " mt.__close = function() while true do end end local x <close> = o error('x')"
    ),
    "looping xpcall message handler": (
        "while true do xpcall(function() while true do end end,"
        " function(e) while true do end end) end"
    ),
}

# Runs in a child so that a hang is a failed test, not a stuck test run.
_ESCAPE_CHILD = r"""
import json, sys, time
from fleetops.agent import luahealth
checks = luahealth.Checks([
    luahealth.Source("example.com", "Widget", sys.argv[1], "widget.lua"),
    luahealth.Source("example.com", "Fine", 'return {status="Healthy", message="ok"}', "fine.lua"),
])
started = time.monotonic()
got = checks.verdict({"kind": "Widget"}, group="example.com", kind="Widget")
took = time.monotonic() - started
fine = [checks.verdict({"kind": "Fine"}, group="example.com", kind="Fine") for _ in range(3)]
print(json.dumps({"took": took, "got": got and [got.status, got.message],
                  "fine": [f and [f.status, f.message] for f in fine]}))
"""


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_a_script_cannot_escape_the_instruction_hook(name: str) -> None:
    try:
        res = subprocess.run(
            [sys.executable, "-c", _ESCAPE_CHILD, ESCAPES[name]],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: the health check never returned (the agent would hang)")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["took"] < 5, out
    assert out["got"][0] == "Unknown", out
    assert out["got"][1].startswith("health check widget.lua "), out
    # the same runtime keeps answering for the other checks
    assert out["fine"] == [["Healthy", "ok"]] * 3, out


def test_errors_and_results_are_described_without_running_the_script() -> None:
    scripts = {
        "Err": "error({code = 1})",
        "Num": "error(42)",
        "Msg": 'return {status = "Healthy", message = 7}',
        "Meta": 'return setmetatable({status = "Healthy"}, {})',
    }
    checks = luahealth.Checks(
        luahealth.Source("example.com", k, v, f"{k}.lua") for k, v in scripts.items()
    )

    def message(kind: str) -> str:
        got = checks.verdict({"kind": kind}, group="example.com", kind=kind)
        assert got is not None and got.status == "Unknown", got
        return got.message

    assert message("Err") == "health check Err.lua failed: error (a table)"
    assert message("Num") == "health check Num.lua failed: 42"
    assert "returned a message that is a number, expected a string" in message("Msg")
    assert "returned a table with a metatable" in message("Meta")


def test_pcall_and_xpcall_still_work_for_ordinary_errors() -> None:
    """xpcall's handler now runs after the unwinding: what a script sees must not change."""
    script = (
        'local ok, e = pcall(error, "first")\n'
        'local ok2, h = xpcall(function() error("second", 0) end,'
        ' function(m) return "handled " .. m end)\n'
        "local ok3, a, b = xpcall(function(x, y) return x + y, x * y end, tostring, 2, 3)\n"
        'return {status = "Healthy", message = table.concat({tostring(ok), e, tostring(ok2), h,'
        ' tostring(ok3), a, b}, " ")}'
    )
    checks = luahealth.Checks([luahealth.Source("example.com", "W", script, "w.lua")])
    got = checks.verdict({}, group="example.com", kind="W")
    assert got == luahealth.Verdict("Healthy", "false first false handled second true 5 6", "w.lua")
