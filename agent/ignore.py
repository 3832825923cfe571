"""Which fields of an object are neither drift nor healed: the bundle's ignore rules.

A bundle carries hub.yaml `ignoreDifferences` (Argo CD's fields) and fleet.yaml
`diff.comparePatches` (Fleet's) as `IgnoreRule`s. `matching` picks the rules for one object
(group and kind are globs, an empty group is the core group only, an empty name or namespace
is any); `strip` removes the ignored paths from an object before it is compared, and
`respect` gives a desired object the live values at its ignored paths before it is applied,
so a sync or a self-heal never resets what another controller owns (Argo CD's
RespectIgnoreDifferences, on by default here; `status` is never copied).

A path is ignored when a JSON pointer (RFC 6901) names it, a jq path expression yields it,
or one of the named field managers owns it in the live object's managedFields. A path that
does not exist is a no-op, and so is a jq expression that fails on this object.

Pure but for one edge: jq expressions run in a worker process with a time and memory limit
(JQ_TIME_LIMIT, JQ_MEMORY_LIMIT), because the jq binding cannot be interrupted and
`def f: f; f` or `repeat(.)` would otherwise hang the agent. An expression that hits a limit
ignores nothing and is not run again in this process. It never adds a field the desired object
does not set.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import fnmatch
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetops.agent import manifests
from fleetops.proto.v1 import types_pb2

Step = str | int
Path = tuple[Step, ...]

_GONE = object()  # a removed value, swept out once every path is handled
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Rules:
    """The ignore rules that apply to one object, merged."""

    pointers: tuple[tuple[str, ...], ...] = ()
    jq_paths: tuple[str, ...] = ()
    managers: frozenset[str] = frozenset()
    whole_object: bool = False

    def __bool__(self) -> bool:
        return bool(self.pointers or self.jq_paths or self.managers or self.whole_object)


NONE = Rules()


def parse_pointer(text: str) -> tuple[str, ...]:
    """RFC 6901: "/spec/replicas" -> ("spec", "replicas"); `~1` is "/", `~0` is "~"."""
    if not text.startswith("/"):
        raise ValueError(f"{text!r}: a JSON pointer starts with '/' (e.g. /spec/replicas)")
    tokens = []
    for raw in text[1:].split("/"):
        rest = raw.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise ValueError(f"{text!r}: '~' must be followed by 0 or 1 (~0 is '~', ~1 is '/')")
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tuple(tokens)


def matches(rule: types_pb2.IgnoreRule, key: manifests.Key) -> bool:
    """Argo CD's matching: globs on group and kind (an empty group is the core group only),
    and an exact name and namespace when the rule gives one."""
    if not rule.kind or not fnmatch.fnmatchcase(key.kind, rule.kind):
        return False
    group_ok = fnmatch.fnmatchcase(key.group, rule.group) if rule.group else not key.group
    return (
        group_ok
        and (not rule.name or rule.name == key.name)
        and (not rule.namespace or rule.namespace == key.namespace)
    )


def matching(rules: Iterable[types_pb2.IgnoreRule], key: manifests.Key) -> Rules:
    """The union of the rules that match `key`; NONE when none does. A pointer that is not
    valid RFC 6901 is skipped (the hub refuses it at load)."""
    pointers: list[tuple[str, ...]] = []
    jq_paths: list[str] = []
    managers: set[str] = set()
    whole = False
    for rule in rules:
        if not matches(rule, key):
            continue
        for p in rule.json_pointers:
            try:
                pointers.append(parse_pointer(p))
            except ValueError:
                continue
        jq_paths += rule.jq_path_expressions
        managers.update(rule.managed_fields_managers)
        whole = whole or rule.whole_object
    if not (pointers or jq_paths or managers or whole):
        return NONE
    return Rules(tuple(pointers), tuple(jq_paths), frozenset(managers), whole)


def paths(obj: Mapping[str, Any], rules: Rules, *, live: Mapping[str, Any] | None) -> list[Path]:
    """The ignored paths that exist in `obj`; managers' fields come from `live`'s
    managedFields (the dry-run result's own say only what fleetops would own)."""
    out: list[Path] = []
    for pointer in rules.pointers:
        found = _resolve(obj, pointer)
        if found is not None:
            out.append(found)
    for expr in rules.jq_paths:
        out += _jq_paths(expr, obj)
    if rules.managers and live is not None:
        for entry in (live.get("metadata") or {}).get("managedFields") or []:
            if isinstance(entry, Mapping) and entry.get("manager") in rules.managers:
                tree = entry.get("fieldsV1")
                if isinstance(tree, Mapping):
                    _owned(tree, obj, (), out)
    return [p for p in out if p]


def strip(
    obj: Mapping[str, Any], rules: Rules, *, live: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A copy of `obj` without its ignored paths, for comparing."""
    out: dict[str, Any] = copy.deepcopy(dict(obj))
    if not rules:
        return out
    for p in paths(obj, rules, live=live):
        _mark(out, p)
    swept = _sweep(out)
    assert isinstance(swept, dict)
    return swept


def respect(
    desired: Mapping[str, Any], live: Mapping[str, Any] | None, rules: Rules
) -> dict[str, Any]:
    """`desired` with the live values at the ignored paths it sets, so applying it changes
    nothing there. Only the fields `desired` sets are copied (fleetops never takes over a
    field it did not send); a field live lacks is dropped; `status` is never copied. With
    no live object (a create) the full desired object is applied."""
    out: dict[str, Any] = copy.deepcopy(dict(desired))
    if not rules or live is None:
        return out
    if rules.whole_object:
        targets: list[Path] = [(k,) for k in out if k not in ("apiVersion", "kind", "metadata")]
        meta = out.get("metadata") or {}
        targets += [("metadata", k) for k in ("labels", "annotations") if k in meta]
    else:
        targets = paths(desired, rules, live=live)
    for p in targets:
        if p[0] == "status" or p[:2] in (("metadata", "name"), ("metadata", "namespace")):
            continue
        value = _get(live, _translate(p, desired=desired, live=live))
        if value is _MISSING:
            _mark(out, p)
        else:
            _put(out, p, _shaped(_get(desired, p), value))
    swept = _sweep(out)
    assert isinstance(swept, dict)
    return swept


JQ_TIME_LIMIT = 2.0  # seconds per expression and object
JQ_MEMORY_LIMIT = 128 << 20  # bytes of address space for the worker (the pod has 256Mi)
_JQ_OUTPUT_LIMIT = 16 << 20  # bytes of paths per answer
_JQ_START_LIMIT = 30.0  # seconds for the worker to start (not counted against an expression)

# The worker: one JSON request a line ({"expr", "obj"}), one JSON answer a line ({"paths"} or
# {"error"}), after a first "ready" line. Its limits are set before jq is imported; it ends when
# its stdin closes.
_JQ_WORKER = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:  # if the pod runs out of memory all the same, the kernel ends the worker, not the agent
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
except OSError:
    pass
import jq
sys.stdout.write("ready\n")
sys.stdout.flush()
programs = {}
for line in sys.stdin:
    req = json.loads(line)
    try:
        program = programs.get(req["expr"])
        if program is None:
            program = programs[req["expr"]] = jq.compile("[path(" + req["expr"] + ")]")
        out = {"paths": program.input_value(req["obj"]).first()}
    except (ValueError, MemoryError) as e:
        out = {"error": str(e)[:500]}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


log = logging.getLogger(__name__)


class _Jq:
    """One worker process for the agent, started on first use and restarted after a limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.slow: set[str] = set()  # expressions that hit a limit: not run again

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def paths(self, expr: str, obj: Mapping[str, Any]) -> Any:
        """The worker's answer for `expr` on `obj`: a dict with "paths" or "error"."""
        if expr in self.slow:
            return {"error": "disabled: it hit a limit on an earlier object"}
        request = json.dumps({"expr": expr, "obj": obj}, default=str).encode() + b"\n"
        with self._lock:
            try:
                if not self._started():
                    self.stop()
                    return {"error": "the jq worker did not start"}
                line = self._ask(request)
            except OSError as e:
                self.stop()
                return {"error": f"the jq worker failed: {e}"}
            if line is None:
                self.stop()
                self.slow.add(expr)
                log.warning(
                    "ignore rule jqPathExpressions %r exceeded its time, memory or output "
                    "limit; it ignores nothing from now on (fix it in hub.yaml "
                    "ignoreDifferences; the agent runs it again after a restart)",
                    expr[:200],
                )
                return {"error": "exceeded its time, memory or output limit"}
        try:
            return json.loads(line)
        except ValueError:
            return {"error": "the jq worker answered nonsense"}

    def _started(self) -> bool:
        if self._proc is not None and self._proc.poll() is None:
            return True
        self.stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _JQ_WORKER, str(JQ_MEMORY_LIMIT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return self._line(_JQ_START_LIMIT) == b"ready\n"

    def _ask(self, request: bytes) -> bytes | None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(request)
        self._proc.stdin.flush()
        return self._line(JQ_TIME_LIMIT)

    def _line(self, seconds: float) -> bytes | None:
        """One line from the worker, or None past `seconds`, the output cap or its end."""
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + seconds
        got = b""
        fd = self._proc.stdout.fileno()
        while not got.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or len(got) > _JQ_OUTPUT_LIMIT:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the worker died (the memory limit)
                    return None
                got += chunk
        return got


_JQ = _Jq()
atexit.register(_JQ.stop)


def _jq_paths(expr: str, obj: Mapping[str, Any]) -> list[Path]:
    # a syntax error, an expression that fails on this object or one that hit a limit: no paths
    found = _JQ.paths(expr, obj).get("paths")
    out: list[Path] = []
    for p in found if isinstance(found, list) else []:
        if isinstance(p, list) and all(
            isinstance(s, str) or (isinstance(s, int) and not isinstance(s, bool)) for s in p
        ):
            if _get(obj, tuple(p)) is not _MISSING:
                out.append(tuple(p))
    return out


def _resolve(obj: Any, pointer: tuple[str, ...]) -> Path | None:
    """The concrete path a pointer names in `obj`, or None when it is not there."""
    steps: list[Step] = []
    for token in pointer:
        if isinstance(obj, Mapping) and token in obj:
            steps.append(token)
            obj = obj[token]
        elif isinstance(obj, list) and token.isdigit() and int(token) < len(obj):
            steps.append(int(token))
            obj = obj[int(token)]
        else:
            return None
    return tuple(steps)


def _owned(tree: Mapping[str, Any], obj: Any, prefix: Path, out: list[Path]) -> None:
    """The paths in `obj` a managedFields `fieldsV1` tree owns. A leaf, or a list element
    owned as a whole ("."), is a path; a map's own "." is not (only its listed children are,
    so another manager's keys in the same map stay compared)."""
    for k, sub in tree.items():
        if k == ".":
            continue
        kind, _, raw = k.partition(":")
        step = _child(kind, raw, obj)
        if step is None:
            continue
        child = obj[step]
        path = (*prefix, step)
        children = [c for c in sub if c != "."] if isinstance(sub, Mapping) else []
        if not children or (kind != "f" and isinstance(sub, Mapping) and "." in sub):
            out.append(path)
        else:
            _owned(sub, child, path, out)


def _child(kind: str, raw: str, obj: Any) -> Step | None:
    """The step a fieldsV1 key (`f:name`, `k:{json}`, `v:json`, `i:n`) names in `obj`."""
    if kind == "f":
        return raw if isinstance(obj, Mapping) and raw in obj else None
    if not isinstance(obj, list):
        return None
    try:
        want = json.loads(raw)
    except ValueError:
        return None
    for i, item in enumerate(obj):
        if kind == "k" and isinstance(want, Mapping) and isinstance(item, Mapping):
            if all(item.get(a) == b for a, b in want.items()):
                return i
        elif kind == "v" and item == want:
            return i
        elif kind == "i" and want == i:
            return i
    return None


def _get(obj: Any, path: Path | None) -> Any:
    if path is None:
        return _MISSING
    for step in path:
        if isinstance(step, str) and isinstance(obj, Mapping) and step in obj:
            obj = obj[step]
        elif isinstance(step, int) and isinstance(obj, list) and 0 <= step < len(obj):
            obj = obj[step]
        else:
            return _MISSING
        if obj is _GONE:
            return _MISSING
    return obj


def _mark(obj: Any, path: Path) -> None:
    """Mark the value at `path` removed (indexes of later paths stay valid)."""
    _put(obj, path, _GONE)


def _put(obj: Any, path: Path, value: Any) -> None:
    parent = _get(obj, path[:-1])
    last = path[-1]
    if isinstance(parent, dict) and isinstance(last, str) and last in parent:
        parent[last] = value
    elif isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent):
        parent[last] = value


def _sweep(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sweep(v) for k, v in obj.items() if v is not _GONE}
    if isinstance(obj, list):
        return [_sweep(v) for v in obj if v is not _GONE]
    return obj


def _translate(p: Path, *, desired: Any, live: Any) -> Path | None:
    """`p` (a path in `desired`) as a path in `live`: list items that have a name are
    found by name (live may hold injected items before them), others by index."""
    out: list[Step] = []
    for step in p:
        if isinstance(step, int) and isinstance(desired, list) and isinstance(live, list):
            item = desired[step] if step < len(desired) else None
            name = item.get("name") if isinstance(item, Mapping) else None
            if isinstance(name, str):
                hits = [
                    i
                    for i, x in enumerate(live)
                    if isinstance(x, Mapping) and x.get("name") == name
                ]
                if not hits:
                    return None
                step_live: Step = hits[0]
            else:
                step_live = step
        else:
            step_live = step
        desired = _get(desired, (step,))
        live = _get(live, (step_live,))
        if live is _MISSING:
            return None
        out.append(step_live)
    return tuple(out)


def _shaped(want: Any, have: Any) -> Any:
    """The live value `have` cut to the fields `want` sets: maps keep `want`'s keys, lists
    of named items keep `want`'s items (found by name), anything else is `have`."""
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        return {k: _shaped(v, have[k]) for k, v in want.items() if k in have}
    if isinstance(want, list) and isinstance(have, list) and _named(want) and _named(have):
        by_name = {x["name"]: x for x in have}
        return [_shaped(x, by_name[x["name"]]) for x in want if x["name"] in by_name]
    return copy.deepcopy(have)


def _named(items: Sequence[Any]) -> bool:
    return bool(items) and all(
        isinstance(x, Mapping) and isinstance(x.get("name"), str) for x in items
    )
