"""Custom health checks in Argo CD's Lua format, run in a sandbox.

A script sees the live object as the global `obj` (Lua tables, arrays 1-based) and returns
`{status = "Healthy"|"Progressing"|"Degraded"|"Suspended"|"Missing"|"Unknown", message = ...}`;
nil or an empty table means "no verdict" (the built-in rules decide). Scripts come from hub.yaml
`healthChecks` (in the bundle) or from a directory laid out like Argo CD's
resource_customizations: `<group>/<Kind>/health.lua`, `<Kind>/health.lua` for the core group,
and `_` in a folder name as a wildcard that only applies where no exact script exists.

The sandbox: only base functions (no load/dofile/loadfile/require/collectgarbage/print, and a
setmetatable that refuses __gc and __close), table, string (no string.dump), math and
os.time/date/clock; an instruction budget and a memory cap per runtime. Every step of a script's
code runs under the instruction hook: its result is read raw inside the hooked run and only plain
strings come back to Python (a script's object never reaches tostring or Python), and xpcall's
handler runs after the unwinding (a real message handler for a limit would run inside the hook,
where nothing counts). A script that errors, loops, blows the memory or returns a bad status
gives an UNKNOWN verdict with the error: it must never raise out of `Checks.verdict` or touch
the host.
Known limit: one call of a C function (a pathological string pattern) is not interruptible.
Each set of scripts is compiled once, into one runtime, never per object.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import pathlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lupa import lua54

STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
INSTRUCTION_LIMIT = 20_000_000  # a fraction of a second of plain Lua
TIME_LIMIT = 1.0  # seconds per run, as Argo CD's; checked between instructions
MEMORY_LIMIT = 64 << 20  # bytes per runtime (one per set of scripts)
MAX_SCRIPT = 256 << 10  # bytes of Lua per script
_MESSAGE_MAX = 500

# Runs once per runtime, before any script, with the full standard library; returns the
# function that compiles a script into its own environment and the one that runs it.
_SETUP = r"""
local now = ...  -- the host's monotonic clock, for the time limit
local sethook, pcall_, error_, load_ = debug.sethook, pcall, error, load
local pack, unpack_, collect = table.pack, table.unpack, collectgarbage
local type_, rawget_, rawequal_, next_ = type, rawget, rawequal, next
local setmetatable_, getmetatable_ = setmetatable, getmetatable
local format = string.format
local LIMIT = {}
local reason = nil  -- set by the hook when a limit is hit, until the next run

local function rethrow_limits(ok, ...)
  -- a script's own pcall/xpcall must not swallow the instruction budget or the memory cap; once
  -- a limit was hit, whatever the error became ("error in error handling" when the hook fired
  -- inside an xpcall handler), it goes on up
  if not ok then
    local e = ...
    if reason ~= nil or rawequal_(e, LIMIT) or rawequal_(e, "not enough memory") then
      error_(e, 0)
    end
  end
  return ok, ...
end

local function copy(t, skip)
  local out = {}
  for k, v in pairs(t) do if not (skip and skip[k]) then out[k] = v end end
  return out
end

-- everything a script may use, taken now: the globals go after setup
local lib = {}
for _, k in ipairs({"assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget",
                    "rawlen", "rawset", "select", "getmetatable", "tonumber", "tostring",
                    "type", "_VERSION"}) do
  lib[k] = _G[k]
end
lib.pcall = function(f, ...) return rethrow_limits(pcall_(f, ...)) end
lib.xpcall = function(f, h, ...)
  -- The handler runs after the unwinding, as ordinary code. A real message handler runs where
  -- the error was raised: for a limit that is inside the hook, where no hook counts, so a
  -- handler that loops there would never be stopped.
  if type_(h) ~= "function" then error_("bad argument #2 to 'xpcall' (function expected)", 2) end
  local r = pack(pcall_(f, ...))
  if r[1] then return unpack_(r, 1, r.n) end
  rethrow_limits(false, r[2])
  local handled = pack(pcall_(h, r[2]))
  rethrow_limits(handled[1], handled[2])
  return false, handled[2]
end
lib.setmetatable = function(t, mt)
  -- a finaliser runs whenever the collector does, also while no hook counts (a Python call
  -- into this runtime): it could loop forever there. __close is refused the same way.
  if type_(mt) == "table" and (rawget_(mt, "__gc") ~= nil or rawget_(mt, "__close") ~= nil) then
    error_("setmetatable: __gc and __close metamethods are not allowed in health checks", 2)
  end
  return setmetatable_(t, mt)
end
lib.unpack = table.unpack  -- the Lua 5.1 name, as Argo CD's gopher-lua has it
local string_, table_, math_ = copy(string, {dump = true}), copy(table), copy(math)
-- Lua 5.1 names Argo CD's published scripts use (gopher-lua is 5.1; this runtime is 5.4)
table_.getn = function(t) return #t end
table_.maxn = function(t)
  local n = 0
  for k in pairs(t) do if type(k) == "number" and k > n then n = k end end
  return n
end
math_.mod, math_.pow = math.fmod, function(x, y) return x ^ y end
string_.gfind = string.gmatch
local os_ = {time = os.time, date = os.date, clock = os.clock}

-- the shared string metatable would let one script change string methods for every other
string.dump = nil  -- strings index the real string table: ("").dump must not be there
getmetatable("").__metatable = false

local function compile(source, name)
  -- each script its own environment and library tables: one cannot change another's
  local env = copy(lib)
  env.string, env.table, env.math, env.os = copy(string_), copy(table_), copy(math_), copy(os_)
  env._G = env
  local fn, err = load_(source, "=" .. name, "t", env)
  if not fn then return nil, err end
  return function(obj)
    env.obj = obj
    return fn()
  end, ""
end

local STATUS = {Healthy = true, Progressing = true, Degraded = true, Suspended = true,
                Missing = true, Unknown = true}

local function error_text(e)
  -- never tostring on a script's value: a __tostring metamethod is script code
  if type_(e) == "string" then return e end
  if type_(e) == "number" then return format("%.14g", e) end
  return "error (a " .. type_(e) .. ")"
end

local SHAPE = "a table {status=..., message=...}"

local function read(result)
  -- the verdict as plain strings, read raw: no metamethod of the script's runs here
  if result == nil then return "none" end
  if type_(result) ~= "table" then
    return "failed", "returned a " .. type_(result) .. ", expected " .. SHAPE
  end
  if getmetatable_(result) ~= nil then
    return "failed", "returned a table with a metatable, expected " .. SHAPE .. " without one"
  end
  local status, message = rawget_(result, "status"), rawget_(result, "message")
  if status == nil and message == nil and next_(result) == nil then return "none" end
  if type_(status) ~= "string" or not STATUS[status] then
    local shown = "(a " .. type_(status) .. ")"
    if type_(status) == "string" then shown = format("%q", status) end
    return "failed", "returned an invalid health status " .. shown .. "; use one of "
      .. "Healthy, Progressing, Degraded, Suspended, Missing, Unknown"
  end
  if message == nil then message = "" end
  if type_(message) ~= "string" then
    return "failed", "returned a message that is a " .. type_(message) .. ", expected a string"
  end
  return "verdict", status, message
end

local function checked(check, obj)
  return read(check(obj))
end

local function run(check, obj, budget, seconds)
  -- returns "none", "verdict", status, message, "failed", text or "limit", text: plain strings.
  -- The hook counts for every step of the script's, reading its result included.
  local used, deadline = 0, now() + seconds
  reason = nil
  sethook(function()
    used = used + 1000
    if used > budget then reason = reason or "instruction limit"; error_(LIMIT, 0) end
    if now() > deadline then reason = reason or "time limit"; error_(LIMIT, 0) end
  end, "", 1000)
  local result = pack(pcall_(checked, check, obj))
  pcall_(collect, "collect")  -- no finaliser of a script's exists (setmetatable refuses them)
  sethook()
  local e = result[2]
  if reason ~= nil then return "limit", reason .. " exceeded" end
  if result[1] then return e, result[3], result[4] end
  if rawequal_(e, "not enough memory") then return "limit", "memory limit exceeded" end
  return "failed", error_text(e)
end

return compile, run
"""


@dataclasses.dataclass(frozen=True)
class Source:
    """One script: for objects of `group`/`kind` (globs: `*`), from `origin` (for messages)."""

    group: str
    kind: str
    lua: str
    origin: str

    @property
    def exact(self) -> bool:
        return "*" not in self.group + self.kind

    def matches(self, group: str, kind: str) -> bool:
        return fnmatch.fnmatchcase(group, self.group) and fnmatch.fnmatchcase(kind, self.kind)


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str  # one of STATUSES
    message: str
    origin: str  # which script said so


class Checks:
    """A compiled set of scripts in one sandboxed runtime. `verdict` is None where no script
    applies or the script gave no verdict."""

    def __init__(self, sources: Iterable[Source]) -> None:
        self.sources = tuple(sources)
        self._compiled: dict[Source, Any] = {}
        self._broken: dict[Source, str] = {}
        self._runtime: Any = None
        self._run: Any = None
        if self.sources:
            self._start()

    def _start(self) -> None:
        rt = lua54.LuaRuntime(register_eval=False, register_builtins=False, max_memory=MEMORY_LIMIT)
        compile_, self._run = rt.execute(_SETUP, time.monotonic)
        g = rt.globals()
        for name in (
            "debug",
            "io",
            "os",
            "package",
            "require",
            "dofile",
            "loadfile",
            "load",
            "python",
        ):
            g[name] = None  # nothing a script could reach, even through a leaked reference
        self._runtime = rt
        for s in self.sources:
            if len(s.lua.encode()) > MAX_SCRIPT:
                self._broken[s] = f"the script is larger than {MAX_SCRIPT >> 10} KiB"
                continue
            try:
                fn, err = compile_(s.lua, s.origin)
            except lua54.LuaError as e:
                fn, err = None, str(e)
            if fn is None:
                self._broken[s] = f"does not compile: {err}"
            else:
                self._compiled[s] = fn

    def script_for(self, group: str, kind: str) -> Source | None:
        """The exact script for group/kind, else the first wildcard one that matches."""
        exact = [s for s in self.sources if s.exact and s.matches(group, kind)]
        if exact:
            return exact[0]
        return next((s for s in self.sources if s.matches(group, kind)), None)

    def verdict(self, obj: Mapping[str, Any], *, group: str, kind: str) -> Verdict | None:
        source = self.script_for(group, kind)
        if source is None:
            return None
        if source in self._broken:
            reason = f"health check {source.origin} {self._broken[source]}"
            return Verdict("Unknown", reason, source.origin)
        try:
            lua_obj = self._runtime.table_from(_visible(obj, group=group), recursive=True)
            # plain strings only: nothing of the script's is read here, outside the hook
            answer = self._run(self._compiled[source], lua_obj, INSTRUCTION_LIMIT, TIME_LIMIT)
            # lupa hands back one return value bare, several as a tuple
            kind, *said = answer if isinstance(answer, tuple) else (answer,)
        except lua54.LuaMemoryError:
            kind, said = "limit", ["memory limit exceeded"]
        except Exception as e:  # noqa: BLE001 - lupa's own errors; a script never crashes us
            return _failed(source, f"{type(e).__name__}: {e}")
        if kind == "none":
            return None
        if kind == "verdict":
            return Verdict(str(said[0]), _line(str(said[1])), source.origin)
        if kind == "limit":
            # Each run blocks the agent's loop for up to TIME_LIMIT: a script that hit a limit
            # once is not run again for other objects until the checks change.
            self._broken[source] = (
                f"is disabled: {said[0]} on an earlier object (fix the script: a changed "
                "hub.yaml check is compiled afresh, a --health-checks one on agent restart)"
            )
        return _failed(source, str(said[0]))


def _visible(obj: Mapping[str, Any], *, group: str) -> dict[str, Any]:
    """What a script may see: a Secret's keys but never its values (a message could show them)."""
    if group or obj.get("kind") != "Secret":
        return dict(obj)
    hidden = {f: dict.fromkeys(obj.get(f) or {}, "") for f in ("data", "stringData") if f in obj}
    return {**obj, **hidden}


def _failed(source: Source, error: str) -> Verdict:
    return Verdict("Unknown", f"health check {source.origin} failed: {_line(error)}", source.origin)


def _line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def inline(checks: Sequence[Any], *, where: str) -> Checks:
    """Checks from proto HealthCheck messages (group, kind, lua), e.g. a bundle's."""
    return Checks(
        Source(c.group, c.kind, c.lua, f"{where}[{i}] {c.group or 'core'}/{c.kind}")
        for i, c in enumerate(checks)
    )


def load_dir(root: pathlib.Path) -> list[Source]:
    """Scripts laid out as Argo CD's resource_customizations: `<group>/<Kind>/health.lua`,
    `<Kind>/health.lua` for the core group; `_` in a folder name is a wildcard. Raises
    OSError/ValueError naming the file when the directory cannot be read."""
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected <group>/<Kind>/health.lua inside)")
    found: list[Source] = []
    for path in sorted(root.rglob("health.lua")):
        parts = path.relative_to(root).parts[:-1]
        if len(parts) == 2:
            group, kind = parts
        elif len(parts) == 1:
            group, kind = "", parts[0]
        else:
            raise ValueError(
                f"{path}: expected <group>/<Kind>/health.lua or <Kind>/health.lua (core group)"
            )
        found.append(
            Source(
                group.replace("_", "*"),
                kind.replace("_", "*"),
                path.read_text(encoding="utf-8"),
                str(path),
            )
        )
    return found
