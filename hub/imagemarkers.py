"""Flux's image setter markers in YAML files: find them, and rewrite only the scalars they mark.

A marker is a comment at the end of the line holding the value it sets, in Flux's grammar, so
Flux users' repositories work as they are:

    image: reg/podinfo:1.2.3 # {"$imagepolicy": "flux-system:podinfo-stable"}      (name:tag)
    tag: 1.2.3 # {"$imagepolicy": "flux-system:podinfo-stable:tag"}               (tag only)
    repository: reg/podinfo # {"$imagepolicy": "flux-system:podinfo-stable:name"} (name only)

The comment is JSON with the one key `$imagepolicy`; its value is `namespace:policy` or
`namespace:policy:tag|name`. The namespace is required by the grammar and ignored here (the
policy is matched by name). List items (`- image: x # {...}`, `- x # {...}`) work; plain,
'single' and "double" quoted values keep their quoting; an empty quoted value (`tag: ""`) is a
placeholder the marker fills, as Flux fills it.

`rewrite` edits text, never a YAML tree: only the marked scalar's characters change, so
comments, order, indentation, quoting and line endings (\\n or \\r\\n) stay byte-for-byte. The
file is parsed (events only, nothing composed) just to know where each scalar is: a `#` inside
a quoted or block scalar (`|`, `>`) is text, never a marker. A marker is reported with a
`problem`, and never rewritten, when what it marks is not one plain or quoted scalar on its own
line holding an image reference (a key, an alias, an anchored value, a flow collection, a value
over several lines, escapes, a value that is not an image reference), when its comment is not
Flux's grammar (Flux's `:digest` field and a `${var}` in the name are named as such), or when
the file is not YAML or is over MAX_CHARS.

Pure: text in, text out. It must never follow an alias, never change a byte outside a marked
scalar, and never raise on what a repository holds.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from yaml import events

__all__ = ["Change", "ImageRef", "Marker", "Rewrite", "find", "parse_ref", "rewrite"]

MAX_CHARS = (
    2 * 1024 * 1024
)  # a file with markers (~2.5 s to read at worst); a bigger one is reported
MAX_DEPTH = 500  # nesting (libyaml's own cap is 1000; PyYAML's pure parser has none)
KEY = "$imagepolicy"
FIELDS = ("", "tag", "name")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
_REF = re.compile(rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$")
_NAME_ONLY = re.compile(rf"^{_NAME}$")
_TAG_ONLY = re.compile(rf"^{_TAG}$")
_SETTER_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_ODD_BREAK = re.compile("\r(?!\n)|[\x85\u2028\u2029]")
_STR = "tag:yaml.org,2002:str"
_RESOLVER = yaml.resolver.Resolver()


@dataclasses.dataclass(frozen=True)
class ImageRef:
    name: str  # registry/path, e.g. reg.example.com:5000/team/podinfo
    tag: str = ""
    digest: str = ""


def parse_ref(text: str) -> ImageRef | None:
    """An image reference `name[:tag][@digest]` as Docker and OCI write it, or None."""
    m = _REF.match(text) if len(text) <= 512 else None
    return ImageRef(m.group(1), m.group(2) or "", m.group(3) or "") if m else None


@dataclasses.dataclass(frozen=True)
class Marker:
    """A marker at `line` (1-based): the policy it names, the part of the image it sets
    (`''` the whole name:tag, `tag` or `name`) and the value it marks now. `problem` says why
    it cannot be rewritten ('' when it can); a file-wide problem has no policy."""

    line: int
    policy: str
    field: str
    value: str
    problem: str = ""


@dataclasses.dataclass(frozen=True)
class Change:
    line: int
    policy: str
    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """The new text (the same text when nothing changed), each change, and the markers that
    were not rewritten with why (`Marker.problem`)."""

    text: str
    changes: tuple[Change, ...] = ()
    problems: tuple[Marker, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Slot:
    marker: Marker
    row: int = -1  # 0-based line of the body
    start: int = 0  # columns of the scalar, quotes included
    end: int = 0
    style: str = ""  # '' plain, "'" or '"'


def find(text: str) -> list[Marker]:
    """Every marker in `text`, in line order, each with its problem ('' when rewritable)."""
    return [slot.marker for slot in _scan(text)]


def rewrite(text: str, latest: Mapping[str, str]) -> Rewrite:
    """`text` with each marked scalar set from `latest` (policy name -> `name:tag`); a marker
    whose policy has no latest image, or whose value cannot be read, is a problem."""
    slots = _scan(text)
    if all(slot.marker.problem for slot in slots):
        return Rewrite(text, (), tuple(slot.marker for slot in slots))
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    lines = text[len(bom) :].split("\n")
    changes: list[Change] = []
    problems: list[Marker] = []
    for slot in slots:
        m = slot.marker
        if m.problem:
            problems.append(m)
            continue
        ref = parse_ref(latest.get(m.policy, ""))
        if ref is None or not ref.tag:
            why = (
                "is not name:tag"
                if m.policy in latest
                else "is not known (no such policy, or no tag fits it yet)"
            )
            problems.append(_problem(m, f"the latest image for policy {m.policy!r} {why}"))
            continue
        new = {"": f"{ref.name}:{ref.tag}", "tag": ref.tag, "name": ref.name}[m.field]
        if new == m.value:
            continue
        line = lines[slot.row]
        lines[slot.row] = line[: slot.start] + _quoted(new, slot.style) + line[slot.end :]
        changes.append(Change(m.line, m.policy, m.value, new))
    if not changes:
        return Rewrite(text, (), tuple(problems))
    return Rewrite(bom + "\n".join(lines), tuple(changes), tuple(problems))


# Plain scalars some YAML reader takes for something other than a string: YAML 1.1 (Go's
# yaml.v2, which Helm uses: y/n, on/off, 0o17, 1e10, 1_000) or 1.2 (kustomize's yaml.v3).
_NOT_A_STRING = re.compile(
    r"^(?:[yYnN]|[yY]es|YES|[nN]o|NO|[tT]rue|TRUE|[fF]alse|FALSE|[oO]n|ON|[oO]ff|OFF"
    r"|[nN]ull|NULL|~"
    r"|[-+]?(?:0[xX][0-9a-fA-F_]+|0[oO]?[0-7_]+|0[bB][01_]+|[0-9][0-9_]*)"
    r"|[-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


def _quoted(value: str, style: str) -> str:
    """`value` in the scalar's style; a plain value a YAML reader would take as something
    else (`1.10` and `1e10` are numbers, `y` a boolean to Go's YAML) is double-quoted."""
    if style:
        return f"{style}{value}{style}"
    resolved = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    if resolved != _STR or _NOT_A_STRING.match(value):
        return f'"{value}"'
    return value


def _problem(marker: Marker, problem: str) -> Marker:
    return dataclasses.replace(marker, problem=problem)


def _short(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


@dataclasses.dataclass
class _Node:
    """Where a node ends on a line with a marker, and what it is."""

    end: int
    start_row: int
    start: int
    what: str  # scalar, alias, flow
    role: str  # key, value, item, root
    in_flow: bool
    style: str = ""
    value: str = ""
    anchor: str = ""
    tag: str = ""


def _scan(text: str) -> list[_Slot]:
    if KEY not in text:
        return []
    if len(text) > MAX_CHARS:
        size = f"{len(text)} characters, over the {MAX_CHARS} limit for a file with markers"
        return [_file_problem(1, f"{size}; split it")]
    odd = _ODD_BREAK.search(text)
    if odd:
        row = text.count("\n", 0, odd.start()) + 1
        return [
            _file_problem(row, "a line break other than \\n or \\r\\n (a lone \\r, NEL, U+2028/9)")
        ]
    try:
        text.encode()
    except UnicodeError:  # a lone surrogate: text that was not decoded as UTF-8
        return [_file_problem(1, "not UTF-8 text")]
    body = text[1:] if text.startswith("\ufeff") else text
    lines = body.split("\n")
    rows = [i for i, line in enumerate(lines) if KEY in line]
    ends: dict[int, list[_Node]] = {row: [] for row in rows}
    spans: dict[int, list[tuple[int, int]]] = {row: [] for row in rows}
    try:
        _walk(body, rows, ends, spans)
    except _TooDeep as e:
        return [_file_problem(e.line, f"YAML nested over {MAX_DEPTH} levels (line {e.line})")]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        row = mark.line + 1 if mark is not None else 1
        what = getattr(e, "problem", None) or getattr(e, "reason", None) or type(e).__name__
        return [_file_problem(row, f"not valid YAML (line {row}: {what})")]
    out = []
    for row in rows:
        slot = _slot(lines[row].removesuffix("\r"), row, ends[row], spans[row])
        if slot is not None:
            out.append(slot)
    return out


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _file_problem(line: int, problem: str) -> _Slot:
    return _Slot(Marker(line, "", "", "", problem + "; no marker in this file is rewritten"))


def _walk(
    body: str,
    rows: list[int],
    ends: dict[int, list[_Node]],
    spans: dict[int, list[tuple[int, int]]],
) -> None:
    """Record, for the marker rows only, which columns scalars cover and where nodes end."""
    stack: list[list[Any]] = []  # [kind, flow, expecting a key, role]
    flows = 0  # flow collections open
    for event in _events(body):
        begin, stop = event.start_mark, event.end_mark
        if begin is None or stop is None:  # the parsers always set both
            continue
        if isinstance(event, events.DocumentStartEvent):
            stack.clear()
            flows = 0
            continue
        if isinstance(event, (events.MappingEndEvent, events.SequenceEndEvent)):
            _, flow, _, role = stack.pop()
            flows -= flow
            if flow and stop.line in ends:
                ends[stop.line].append(_Node(stop.column, stop.line, 0, "flow", role, True))
            continue
        if not isinstance(event, events.NodeEvent):
            continue
        role = "root"
        if stack:
            top = stack[-1]
            if top[0] == "map":
                role = "key" if top[2] else "value"
                top[2] = not top[2]
            else:
                role = "item"
        in_flow = flows > 0
        if isinstance(event, events.CollectionStartEvent):
            kind = "map" if isinstance(event, events.MappingStartEvent) else "seq"
            stack.append([kind, bool(event.flow_style), True, role])
            if len(stack) > MAX_DEPTH:
                raise _TooDeep(begin.line + 1)
            flows += bool(event.flow_style)
            continue
        first, last = begin.line, stop.line
        block = getattr(event, "style", None) in ("|", ">")
        if block and first in ends:  # its header line may hold a comment; the rest is text
            ends[first].append(_Node(begin.column + 1, first, begin.column, "block", role, False))
        if isinstance(event, events.ScalarEvent):
            for row in rows[bisect.bisect_left(rows, first) : bisect.bisect_right(rows, last)]:
                if block and row == first:
                    continue
                start = begin.column if row == first else 0
                end = stop.column if row == last else 1 << 30
                spans[row].append((start, end))
        if last in ends:
            ends[last].append(
                _Node(
                    stop.column,
                    first,
                    begin.column,
                    "scalar" if isinstance(event, events.ScalarEvent) else "alias",
                    role,
                    in_flow,
                    style=getattr(event, "style", None) or "",
                    value=getattr(event, "value", None) or "",
                    anchor=event.anchor or "",
                    tag=getattr(event, "tag", None) or "",
                )
            )


def _events(body: str) -> Iterator[events.Event]:
    loader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
    return yaml.parse(body, Loader=loader)


def _comment(line: str, spans: list[tuple[int, int]]) -> int:
    """The column of the `#` that starts this line's comment, or -1. `spans` (the columns
    scalars cover, in document order, so sorted and apart) are text, never a comment."""
    starts = [s for s, _ in spans]
    at = line.find("#")
    while at >= 0:
        i = bisect.bisect_right(starts, at) - 1
        inside = i >= 0 and at < spans[i][1]
        if (at == 0 or line[at - 1] in " \t") and not inside:
            return at
        at = line.find("#", at + 1)
    return -1


def _slot(line: str, row: int, nodes: list[_Node], spans: list[tuple[int, int]]) -> _Slot | None:
    hash_at = _comment(line, spans)
    if hash_at < 0 or KEY not in line[hash_at:]:
        return None  # the text is inside a value (a quoted or block scalar): not a marker
    policy, field, problem = _setter(line[hash_at + 1 :])
    marker = Marker(row + 1, policy, field, "", problem)
    if problem:
        return _Slot(marker)
    before = [n for n in nodes if n.end <= hash_at]
    if not before:
        return _Slot(
            _problem(
                marker,
                "no value before the marker on this line; put the "
                "marker after the value it sets, on the same line",
            )
        )
    node = max(before, key=lambda n: n.end)
    marker = dataclasses.replace(marker, value=node.value)
    refusal = _refusal(node, line, row=row, hash_at=hash_at)
    if refusal:
        return _Slot(_problem(marker, refusal))
    placeholder = node.value == "" and node.style in ("'", '"')  # `tag: ""`: Flux fills it
    reading = {"": _read_ref, "tag": _read_tag, "name": _read_name}[field](node.value)
    if reading and not placeholder:
        return _Slot(_problem(marker, reading))
    return _Slot(marker, row, node.start, node.end, node.style)


def _setter(comment: str) -> tuple[str, str, str]:
    """(policy, field, problem) from the text after `#`."""
    grammar = ' write # {"$imagepolicy": "<namespace>:<policy>"} (or ...:tag, ...:name)'
    try:
        data = json.loads(comment.strip(), object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        return "", "", "the marker comment is not JSON;" + grammar
    if not isinstance(data, dict) or list(data) != [KEY] or not isinstance(data[KEY], str):
        return "", "", f"the marker must be an object with the one key {KEY!r};" + grammar
    parts = data[KEY].split(":")
    if "${" in data[KEY] and len(parts) in (2, 3):
        return (
            "",
            "",
            (
                f"{_short(data[KEY])} holds a ${{...}} variable, which Flux substitutes when it "
                "applies, not in Git: no policy has this name; write the policy's own name"
            ),
        )
    if len(parts) not in (2, 3) or not all(_SETTER_PART.match(p) for p in parts[:2]):
        return "", "", f"{_short(data[KEY])} is not <namespace>:<policy>[:tag|:name];" + grammar
    field = parts[2] if len(parts) == 3 else ""
    if field == "digest":
        return (
            parts[1],
            "",
            (
                "':digest' (Flux's digest pinning) is not supported: only tags are set; "
                "remove this marker, or mark the tag with :tag"
            ),
        )
    if field not in FIELDS[1:] and len(parts) == 3:
        return parts[1], "", f"unknown field {_short(field)}: use :tag, :name or none"
    return parts[1], field, ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys")
    return dict(pairs)


def _refusal(node: _Node, line: str, *, row: int, hash_at: int) -> str:
    """Why the node before a marker is not a scalar the marker may set, or ''."""
    if node.what == "block":
        return "the marked value is a block scalar (| or >); write it on one line"
    if node.what == "alias":
        return "the marked value is an alias (*name); aliases are never followed: write the value"
    if node.what == "flow" or node.in_flow:
        return "the marked value is in a flow collection ({...} or [...]); write it as a block"
    if node.role == "key":
        return "the marker follows a key with no value on this line; put it after the value"
    if node.start_row != row:
        return "the marked value spans several lines; write it on one line"
    if node.start == node.end:
        return "no value before the marker on this line; put the marker after the value"
    if node.anchor:
        return f"the marked value has an anchor (&{node.anchor}): aliases would change too"
    if node.tag and node.tag not in ("!!str", _STR, "!"):
        return f"the marked value has a tag ({node.tag}); only strings are set"
    if node.style not in ("", "'", '"'):
        return "the marked value is a block scalar; write it on one line"
    raw = line[node.start : node.end]
    if raw != f"{node.style}{node.value}{node.style}":
        return "the marked value has escapes or a tag; write it plain or quoted, without them"
    if line[node.end : hash_at].strip(" \t"):
        return "something stands between the marked value and the marker"
    return ""


def _read_ref(value: str) -> str:
    return "" if parse_ref(value) else f"{_short(value)} is not an image reference (name:tag)"


def _read_tag(value: str) -> str:
    return "" if _TAG_ONLY.match(value) else f"{_short(value)} is not an image tag"


def _read_name(value: str) -> str:
    ok = len(value) <= 512 and _NAME_ONLY.match(value)
    return "" if ok else f"{_short(value)} is not an image name (without a tag)"
