"""Ignore rules: hub.yaml `ignoreDifferences` (Argo CD's) and fleet.yaml `diff.comparePatches`
(Fleet's), read into one shape and validated, for the bundle to carry to the agent.

hub.yaml: `{group, kind, name, namespace, jsonPointers, jqPathExpressions,
managedFieldsManagers}` per entry (kind required; group and kind are globs, an empty group is
the core group). fleet.yaml: `{apiVersion, kind, name, namespace, operations, jsonPointers}`;
an operation `{op: ignore}` ignores the whole object, every other JSON-patch op ignores its
`path` (and a move its `from`): applied alike to both sides, as Fleet does, it makes them
equal there. Entries of the top level and of a target customization are merged by
apiVersion/kind/namespace/name, the customization's winning (Fleet's rule).

Every error names the file, the field path with its index (`apps[0].ignoreDifferences[1].
jsonPointers[0]`) and the fix. Pure: it compiles jq expressions but runs none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jq  # a C extension without stubs (see the mypy overrides)

from fleetops.hub import configfields, errors
from fleetops.proto.v1 import types_pb2

_FIELDS = (
    "group",
    "kind",
    "name",
    "namespace",
    "jsonPointers",
    "jqPathExpressions",
    "managedFieldsManagers",
)
_PATCH_FIELDS = ("apiVersion", "kind", "name", "namespace", "operations", "jsonPointers")
_OPS = ("remove", "ignore", "add", "replace", "move", "copy", "test")


@dataclasses.dataclass(frozen=True)
class IgnoreRule:
    kind: str
    group: str = ""
    name: str = ""
    namespace: str = ""
    json_pointers: tuple[str, ...] = ()
    jq_path_expressions: tuple[str, ...] = ()
    managed_fields_managers: tuple[str, ...] = ()
    whole_object: bool = False


def pointer_problem(text: str) -> str:
    """What is wrong with an RFC 6901 JSON pointer, or ''."""
    if not text.startswith("/"):
        return f"{text!r} is not a JSON pointer: it starts with '/' (e.g. /spec/replicas)"
    rest = text.replace("~0", "").replace("~1", "")
    if "~" in rest:
        return f"{text!r}: '~' must be followed by 0 or 1 (write '/' in a key as ~1, '~' as ~0)"
    return ""


def jq_problem(expr: str) -> str:
    """Why `expr` is not a jq path expression fleetops can use, or ''."""
    if not expr.strip():
        return "is empty"
    try:
        jq.compile(f"[path({expr})]")
    except ValueError as e:
        first = str(e).splitlines()[0] if str(e) else "does not compile"
        return f"{expr!r} is not a valid jq expression: {first}"
    return ""


def parse_app(r: configfields.Reader, value: Any, *, path: str, app: str) -> tuple[IgnoreRule, ...]:
    """hub.yaml `apps[i].ignoreDifferences` of app `app` (named in every error)."""
    rules = []
    for i, item in enumerate(r.items(value, path)):
        p = f"{path}[{i}]"
        m = r.mapping(item, p, _FIELDS)
        pointers = _strings(r, m, "jsonPointers", path=p)
        for j, ptr in enumerate(pointers):
            if problem := pointer_problem(ptr):
                raise r.fail(f"{p}.jsonPointers[{j}]", message=f"app {app}: {problem}")
        exprs = _strings(r, m, "jqPathExpressions", path=p)
        for j, expr in enumerate(exprs):
            if problem := jq_problem(expr):
                raise r.fail(f"{p}.jqPathExpressions[{j}]", message=f"app {app}: {problem}")
        managers = _strings(r, m, "managedFieldsManagers", path=p)
        if not (pointers or exprs or managers):
            raise r.fail(
                p,
                message=f"app {app}: ignores nothing: give jsonPointers, jqPathExpressions "
                "or managedFieldsManagers",
            )
        rules.append(
            IgnoreRule(
                kind=r.string(m, "kind", path=p, required=True),
                group=r.string(m, "group", path=p),
                name=r.string(m, "name", path=p),
                namespace=r.string(m, "namespace", path=p),
                json_pointers=pointers,
                jq_path_expressions=exprs,
                managed_fields_managers=managers,
            )
        )
    return tuple(rules)


def parse_fleet(
    doc: Mapping[str, Any], *, where: str, path: str, under: tuple[IgnoreRule, ...] = ()
) -> tuple[IgnoreRule, ...]:
    """`diff.comparePatches` of a fleet.yaml mapping (the top level or one
    targetCustomization), merged over `under` (the top level's); RenderError naming the
    file and field when invalid."""
    r = configfields.Reader(where)
    try:
        dm = r.mapping(doc.get("diff"), f"{path}diff" if path else "diff", ("comparePatches",))
        base = f"{path}diff.comparePatches"
        own = [
            _compare_patch(r, item, path=f"{base}[{i}]")
            for i, item in enumerate(r.items(dm.get("comparePatches"), base))
        ]
    except errors.ConfigError as e:
        raise errors.RenderError(str(e)) from None
    merged = {_identity(x): x for x in under}
    merged.update((_identity(x), x) for x in own)
    return tuple(merged.values())


def _compare_patch(r: configfields.Reader, item: Any, *, path: str) -> IgnoreRule:
    m = r.mapping(item, path, _PATCH_FIELDS)
    api_version = r.string(m, "apiVersion", path=path)
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    pointers = list(_strings(r, m, "jsonPointers", path=path))
    for j, ptr in enumerate(pointers):
        if problem := pointer_problem(ptr):
            raise r.fail(f"{path}.jsonPointers[{j}]", message=problem)
    whole = False
    for i, op in enumerate(r.items(m.get("operations"), f"{path}.operations")):
        p = f"{path}.operations[{i}]"
        om = r.mapping(op, p, ("op", "path", "from", "value"))
        kind = r.string(om, "op", path=p, required=True)
        if kind not in _OPS:
            raise r.fail(
                f"{p}.op", message=f"{kind!r} is not allowed; use one of {', '.join(_OPS)}"
            )
        if kind == "ignore":
            whole = True
            continue
        if kind == "test":
            continue
        for field in ("path", "from") if kind == "move" else ("path",):
            ptr = r.string(om, field, path=p, required=True)
            if problem := pointer_problem(ptr):
                raise r.fail(f"{p}.{field}", message=problem)
            pointers.append(ptr)
    if not pointers and not whole:
        raise r.fail(
            path,
            message="ignores nothing: give operations ({op: remove, path: /spec/x} or "
            "{op: ignore}) or jsonPointers",
        )
    return IgnoreRule(
        kind=r.string(m, "kind", path=path, required=True),
        group=group,
        name=r.string(m, "name", path=path),
        namespace=r.string(m, "namespace", path=path),
        json_pointers=tuple(dict.fromkeys(pointers)),
        whole_object=whole,
    )


def _identity(rule: IgnoreRule) -> tuple[str, str, str, str]:
    return (rule.group, rule.kind, rule.namespace, rule.name)


def _strings(
    r: configfields.Reader, m: Mapping[str, Any], key: str, *, path: str
) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(r.items(m.get(key), f"{path}.{key}")):
        if not isinstance(v, str) or not v:
            raise r.fail(f"{path}.{key}[{i}]", message="expected a non-empty string")
        out.append(v)
    return tuple(out)


def to_proto(rules: Iterable[IgnoreRule]) -> list[types_pb2.IgnoreRule]:
    """The rules as the bundle carries them, in order."""
    return [
        types_pb2.IgnoreRule(
            group=x.group,
            kind=x.kind,
            name=x.name,
            namespace=x.namespace,
            json_pointers=x.json_pointers,
            jq_path_expressions=x.jq_path_expressions,
            managed_fields_managers=x.managed_fields_managers,
            whole_object=x.whole_object,
        )
        for x in rules
    ]


def describe(rules: Iterable[IgnoreRule]) -> list[list[Any]]:
    """The rules as plain data, for the render cache's key: changing them re-renders."""
    return [list(dataclasses.astuple(x)) for x in rules]
