"""Which fields of a live object differ from what Git wants.

The reconciler asks the API server for a server-side dry-run apply of the desired object:
the answer is the object as it would be after applying Git, with every default and
normalisation the server makes. `diff` compares that with the live object. Equal means the
object is in sync and the agent sends no write. Pure; values of Secrets never leave it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "<redacted>"
ABSENT = "<absent>"
# Fields that change without anyone changing the object's intent.
_IGNORED_TOP = {"status"}
_IGNORED_META = {"managedFields", "resourceVersion", "generation", "creationTimestamp", "uid"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Field:
    path: str
    desired: str
    live: str


def _show(value: Any) -> str:
    if value is _MISSING:
        return ABSENT
    return json.dumps(value, sort_keys=True, separators=(",", ":"))[:200]


_MISSING = object()


def diff(
    *, desired: Mapping[str, Any], live: Mapping[str, Any], secret: bool = False
) -> list[Field]:
    """Drifted fields between the dry-run result (`desired`) and the live object."""
    out: list[Field] = []
    for key in sorted(set(desired) | set(live)):
        if key in _IGNORED_TOP:
            continue
        d, v = desired.get(key, _MISSING), live.get(key, _MISSING)
        if key == "metadata" and isinstance(d, Mapping) and isinstance(v, Mapping):
            d = {k: x for k, x in d.items() if k not in _IGNORED_META}
            v = {k: x for k, x in v.items() if k not in _IGNORED_META}
        _walk(key, d=d, v=v, out=out)
    if secret:
        out = [
            Field(path=f.path, desired=REDACTED, live=REDACTED)
            if f.path.split(".")[0].split("[")[0] in ("data", "stringData")
            else f
            for f in out
        ]
    return out


def _walk(path: str, *, d: Any, v: Any, out: list[Field]) -> None:
    """Append to `out` every field where `d` (desired, after dry-run) and `v` (live) differ."""
    if isinstance(d, Mapping) and isinstance(v, Mapping):
        for key in sorted(set(d) | set(v)):
            _walk(f"{path}.{key}", d=d.get(key, _MISSING), v=v.get(key, _MISSING), out=out)
        return
    if isinstance(d, list) and isinstance(v, list):
        if _named(d) and _named(v):
            dn = {x["name"]: x for x in d}
            vn = {x["name"]: x for x in v}
            if list(dn) == list(vn) or set(dn) != set(vn):
                for name in list(dn) + [n for n in vn if n not in dn]:
                    _walk(
                        f"{path}[name={name}]",
                        d=dn.get(name, _MISSING),
                        v=vn.get(name, _MISSING),
                        out=out,
                    )
                return
        if len(d) == len(v):
            for i, (x, y) in enumerate(zip(d, v, strict=True)):
                _walk(f"{path}[{i}]", d=x, v=y, out=out)
            return
    if d != v:
        out.append(Field(path=path, desired=_show(d), live=_show(v)))


def _named(items: Sequence[Any]) -> bool:
    return bool(items) and all(
        isinstance(x, Mapping) and isinstance(x.get("name"), str) for x in items
    )
