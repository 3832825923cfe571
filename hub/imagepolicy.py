"""Image policies: which of a repository's tags is the newest, as Flux's ImagePolicy picks it.

hub.yaml's `imagePolicies` entries (`{name, repository, filterTags: {pattern, extract},
policy: {semver: {range}} | {alphabetical: {order}} | {numerical: {order}}}`) are read by
`parse_policy`, every error naming the field; `choose` then picks the newest tag of a scan.
`filterTags.pattern` is a Python regular expression searched in each tag (unanchored, as Go's
MatchString); `extract` rebuilds the value the policy compares from the pattern's groups,
written as Flux writes it (`$v`, `${v}`, `$1`, `$$` for a dollar; `$1x` is group `1x`, as in
Go). Semver ranges are hub.semver's (Masterminds' rules, prereleases only when the range names
one). The chosen tag is always the tag as published, never the extracted value, and a tag the
caller rejected (its rollout was reverted) is never chosen: the next best one is.

Pure: no registry, no files, no clock. It must never trust a tag: tags are the registry's
answer, so a tag that is not a valid OCI tag is skipped and counted, never matched.
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Any, Literal

from fleetops.hub import configfields, semver

__all__ = [
    "Alphabetical",
    "Choice",
    "ImagePolicy",
    "Numerical",
    "Semver",
    "TagFilter",
    "choose",
    "parse_policy",
]

POLICY_FIELDS = ("name", "repository", "filterTags", "policy")
# the OCI distribution spec's tag grammar: at most 128 characters
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_NAME = re.compile(r"[A-Za-z0-9_]+")
MAX_PATTERN = 1024  # characters in filterTags.pattern or extract

Order = Literal["asc", "desc"]


@dataclasses.dataclass(frozen=True)
class TagFilter:
    """Only tags the pattern matches are considered; `extract` (a template over its groups)
    makes the value the policy compares. No pattern: every tag, as published."""

    pattern: re.Pattern[str] | None = None
    extract: str = ""

    def value(self, tag: str) -> str | None:
        """The value the policy compares for `tag`, or None when the pattern does not match."""
        if self.pattern is None:
            return tag
        m = self.pattern.search(tag)
        if m is None:
            return None
        return _expand(self.extract, m) if self.extract else tag


@dataclasses.dataclass(frozen=True)
class Semver:
    range: semver.Range


@dataclasses.dataclass(frozen=True)
class Alphabetical:
    """`asc`: the last tag in byte order wins (Z over A); `desc`: the first."""

    order: Order = "asc"


@dataclasses.dataclass(frozen=True)
class Numerical:
    """`asc`: the highest number wins; `desc`: the lowest. Values that are not decimal
    numbers are skipped and counted."""

    order: Order = "asc"


Rule = Semver | Alphabetical | Numerical


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    name: str
    repository: str  # the name of an imageRepositories entry
    rule: Rule
    filter: TagFilter = TagFilter()


@dataclasses.dataclass(frozen=True)
class Choice:
    """What `choose` picked: `tag` as published (None when no tag fits); `considered`: tags
    that passed the filter and the policy could compare; `skipped`: tags the policy could not
    read (not a valid tag, not a version, not a number; the status shows the count);
    `rejected`: considered tags passed over because they were rejected."""

    tag: str | None
    considered: int
    skipped: int
    rejected: int = 0


def choose(
    tags: Iterable[str], policy: ImagePolicy, *, rejected: AbstractSet[str] = frozenset()
) -> Choice:
    """The newest of `tags` by `policy`, never one in `rejected`. When two tags give the same
    value (`v1.2.3` and `1.2.3` under semver, or the same extracted value), the one first in
    byte order wins, so the answer never depends on the registry's listing order."""
    considered = skipped = passed_over = 0
    best: tuple[Any, str] | None = None
    rule = policy.rule
    for tag in sorted(set(tags)):
        if not _TAG.match(tag):
            skipped += 1
            continue
        value = policy.filter.value(tag)
        if value is None:
            continue
        key = _key(rule, value)
        if key is _UNREADABLE:
            skipped += 1
            continue
        considered += 1
        if key is _OUT_OF_RANGE:
            continue
        if tag in rejected:
            passed_over += 1
            continue
        if best is None or key > best[0]:
            best = (key, tag)
    return Choice(best[1] if best else None, considered, skipped, passed_over)


_UNREADABLE = object()  # the rule cannot read the value: skipped
_OUT_OF_RANGE = object()  # a version the range does not allow: considered, never chosen


def _key(rule: Rule, value: str) -> Any:
    """A key that sorts higher the newer the tag is, or one of the two markers above."""
    if not value:
        return _UNREADABLE
    if isinstance(rule, Semver):
        try:
            version = semver.parse(value)
        except semver.RangeError:
            return _UNREADABLE
        return version if rule.range.allows(version) else _OUT_OF_RANGE
    if isinstance(rule, Numerical):
        if len(value) > 128 or not _NUMBER.match(value):
            return _UNREADABLE
        number = decimal.Decimal(value)
        return number if rule.order == "asc" else -number
    return value if rule.order == "asc" else _Reversed(value)


@dataclasses.dataclass(frozen=True)
class _Reversed:
    text: str

    def __gt__(self, other: _Reversed) -> bool:
        return self.text < other.text


def _expand(template: str, m: re.Match[str]) -> str:
    """`template` with `$name`, `${name}` and `$1` replaced by the match's groups (an
    unmatched group is empty), `$$` by a dollar; a `$` followed by nothing of these stays."""
    out: list[str] = []
    i = 0
    while i < len(template):
        c = template[i]
        if c != "$" or i + 1 == len(template):
            out.append(c)
            i += 1
            continue
        if template[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        name, end = _reference(template, i)
        if name is None:  # malformed: the dollar stays, as Go leaves it
            out.append("$")
            i += 1
            continue
        group = m.group(int(name) if name.isdigit() else name)
        out.append(group or "")
        i = end
    return "".join(out)


def _reference(template: str, i: int) -> tuple[str | None, int]:
    """The group named by the `$` at `i` and where the reference ends, or (None, i)."""
    if template.startswith("${", i):
        close = template.find("}", i + 2)
        if close > i + 2 and _NAME.fullmatch(template, i + 2, close):
            return template[i + 2 : close], close + 1
        return None, i
    word = _NAME.match(template, i + 1)
    if word is None:
        return None, i
    return word.group(), word.end()


def _groups_named(template: str) -> list[str]:
    names = []
    i = 0
    while i < len(template):
        if template[i] == "$" and i + 1 < len(template):
            if template[i + 1] == "$":
                i += 2
                continue
            name, end = _reference(template, i)
            if name is not None:
                names.append(name)
                i = end
                continue
        i += 1
    return names


def parse_policy(reader: configfields.Reader, item: Any, path: str) -> ImagePolicy:
    """One `imagePolicies` entry of hub.yaml; a ConfigError names the field and the fix.
    Whether `repository` names a configured imageRepositories entry is the caller's check."""
    m = reader.mapping(item, path, POLICY_FIELDS)
    name = reader.name(m, "name", path=path)
    repository = reader.name(m, "repository", path=path)
    tag_filter = _filter(reader, m.get("filterTags"), f"{path}.filterTags")
    rule = _rule(reader, m.get("policy"), f"{path}.policy")
    return ImagePolicy(name, repository, rule, tag_filter)


def _filter(reader: configfields.Reader, value: Any, path: str) -> TagFilter:
    m = reader.mapping(value, path, ("pattern", "extract"))
    pattern_text = reader.string(m, "pattern", path=path)
    extract = reader.string(m, "extract", path=path)
    for key, text in (("pattern", pattern_text), ("extract", extract)):
        if len(text) > MAX_PATTERN:
            raise reader.fail(f"{path}.{key}", message=f"at most {MAX_PATTERN} characters")
    if not pattern_text:
        if extract:
            raise reader.fail(
                f"{path}.extract",
                message="needs a pattern with the groups it names "
                "(e.g. pattern: '^v?(?P<v>\\d+\\.\\d+\\.\\d+)$', extract: '$v')",
            )
        return TagFilter()
    try:
        pattern = re.compile(pattern_text)
    except (re.error, RecursionError, OverflowError) as e:
        raise reader.fail(
            f"{path}.pattern",
            message=f"{pattern_text!r} is not a regular expression ({e}); named groups are "
            "written (?P<name>...)",
        ) from None
    for name in _groups_named(extract):
        known = int(name) <= pattern.groups if name.isdigit() else name in pattern.groupindex
        if not known:
            groups = ", ".join(f"${g}" for g in pattern.groupindex) or "none named"
            raise reader.fail(
                f"{path}.extract",
                message=f"names group ${name}, which the pattern does not have "
                f"({pattern.groups} groups; {groups}); use a group of the pattern, "
                "or ${name} to end a name before letters or digits",
            )
    return TagFilter(pattern, extract)


def _rule(reader: configfields.Reader, value: Any, path: str) -> Rule:
    kinds = ("semver", "alphabetical", "numerical")
    m = reader.mapping(value, path, kinds)
    chosen = [k for k in kinds if k in m]
    if len(chosen) != 1:
        raise reader.fail(
            path,
            message="needs exactly one of semver: {range: '>=1.0.0 <2.0.0'}, "
            "alphabetical: {order: asc|desc} or numerical: {order: asc|desc}",
        )
    kind = chosen[0]
    where = f"{path}.{kind}"
    if kind == "semver":
        sm = reader.mapping(m[kind], where, ("range",))
        text = reader.string(sm, "range", path=where, required=True)
        try:
            return Semver(semver.parse_range(text))
        except semver.RangeError as e:
            raise reader.fail(f"{where}.range", message=str(e)) from None
    om = reader.mapping(m[kind], where, ("order",))
    order = reader.string(om, "order", path=where, default="asc")
    if order not in ("asc", "desc"):
        raise reader.fail(f"{where}.order", message=f"{order!r}: use asc or desc")
    direction: Order = "asc" if order == "asc" else "desc"
    return Alphabetical(direction) if kind == "alphabetical" else Numerical(direction)
