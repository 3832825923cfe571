"""Semantic versions and version ranges as Helm writes them (the Masterminds semver v3 rules).

A chart version in hub.yaml or fleet.yaml is an exact version (`1.2.3`) or a range: `>=1.0.0
<2.0.0` (space or comma: and), `a || b` (or), `^1.2` (same major; for 0.x the same minor),
`~1.2.3` (same minor), `1.x`, `1.2.*`, `*` (wildcards; a missing part is a wildcard too, so
`1.2` is `1.2.x`), `1.2 - 1.4.5` (inclusive hyphen range), `!=1.3.0`. A prerelease version
(`2.0.0-rc.1`) matches only a group of the range that itself names a prerelease, as in Helm.
Pure: parsing and comparing, no I/O. Issue 15 reuses it for image tags.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable

__all__ = ["Range", "RangeError", "Version", "best", "parse", "parse_range"]

_VERSION = re.compile(
    r"^v?(0|[1-9]\d*|\d+)(?:\.(\d+))?(?:\.(\d+))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_WILD = ("x", "X", "*")
_PART = r"(?:\d+|[xX*])"
_CONSTRAINT = re.compile(
    r"^(=|!=|>=|=>|<=|=<|>|<|~>|~|\^)?\s*v?("
    + _PART
    + r")(?:\.("
    + _PART
    + r"))?(?:\.("
    + _PART
    + r"))?(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_HYPHEN = re.compile(r"\s+-\s+")
_OPERATOR_SPACE = re.compile(r"(=|!=|>=|=>|<=|=<|>|<|~>|~|\^)\s+")


class RangeError(ValueError):
    """A version or range that does not parse; the message says what is allowed."""


MAX_VERSION = 256  # characters in one version (Helm's longest in the wild are under 100)
MAX_RANGE = 1024  # characters in one range
MAX_NUMBER = 18  # digits in one numeric part: it fits 63 bits (Masterminds parses uint64)


def _number(digits: str, *, text: str) -> int:
    """A numeric part of `text`; RangeError past MAX_NUMBER digits (int() of thousands of
    digits is a ValueError, and would end `best` for a whole index)."""
    if len(digits) > MAX_NUMBER:
        raise RangeError(
            f"{text[:40]!r}…: a version number part is over {MAX_NUMBER} digits"
            if len(text) > 40
            else f"{text!r}: a version number part is over {MAX_NUMBER} digits"
        )
    return int(digits)


@functools.total_ordering
@dataclasses.dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""
    original: str = ""

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        return text + (f"+{self.build}" if self.build else "")

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # a release sorts after every prerelease of the same version; numeric identifiers
        # sort numerically and before alphanumeric ones (semver 2.0 section 11)
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def release(self) -> Version:
        return Version(self.major, self.minor, self.patch)


def parse(text: str) -> Version:
    """A version as Helm reads chart versions: `1.2.3`, `v1.2.3`, `1.2` (1.2.0),
    `1.2.3-rc.1+build.5`. RangeError when it is none."""
    if len(text) > MAX_VERSION:
        raise RangeError(f"{text[:40]!r}…: a version is at most {MAX_VERSION} characters")
    m = _VERSION.match(text.strip())
    if not m:
        raise RangeError(f"{text!r} is not a semantic version (e.g. 1.2.3 or 1.2.3-rc.1)")
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    for p in pre:
        if p.isdigit():
            _number(p, text=text)  # compared as a number
    return Version(
        _number(m.group(1), text=text),
        _number(m.group(2) or "0", text=text),
        _number(m.group(3) or "0", text=text),
        pre,
        m.group(5) or "",
        text.strip(),
    )


@dataclasses.dataclass(frozen=True)
class _Bound:
    op: str  # one of = != > >= < <=
    version: Version


@dataclasses.dataclass(frozen=True)
class _Group:
    """Constraints that must all hold."""

    bounds: tuple[_Bound, ...]
    excluded: tuple[tuple[Version, Version], ...]  # != over a wildcard: [low, high)
    prereleases: bool  # a constraint of this group names a prerelease

    def allows(self, v: Version) -> bool:
        if v.prerelease and not self.prereleases:
            return False
        for b in self.bounds:
            ok = {
                "=": v == b.version,
                "!=": v != b.version,
                ">": v > b.version,
                ">=": v >= b.version,
                "<": v < b.version,
                "<=": v <= b.version,
            }[b.op]
            if not ok:
                return False
        return not any(low <= v < high for low, high in self.excluded)


@dataclasses.dataclass(frozen=True)
class Range:
    """A parsed range: `allows(version)`, and `exact` when it names one version only."""

    text: str
    groups: tuple[_Group, ...]
    exact: Version | None = None

    def allows(self, v: Version) -> bool:
        return any(g.allows(v) for g in self.groups)

    def __str__(self) -> str:
        return self.text


def parse_range(text: str) -> Range:
    """A range as Helm writes it (see the module docstring); RangeError naming the part that
    does not parse."""
    source = text.strip()
    if not source:
        raise RangeError("an empty version range; write e.g. 1.2.3 or ^1.2")
    if len(source) > MAX_RANGE:
        raise RangeError(f"{text[:40]!r}…: a version range is at most {MAX_RANGE} characters")
    groups = []
    for part in source.split("||"):
        part = _OPERATOR_SPACE.sub(r"\1", part.strip())
        if not part:
            raise RangeError(f"{text!r}: an empty alternative around '||' (e.g. ^1.2 || ^2.0)")
        part = _HYPHEN.sub(" - ", part)
        tokens = [t for t in re.split(r"[\s,]+", part) if t]
        bounds: list[_Bound] = []
        excluded: list[tuple[Version, Version]] = []
        pre = False
        i = 0
        while i < len(tokens):
            if i + 2 < len(tokens) and tokens[i + 1] == "-":  # a hyphen range
                low, lpre = _constraint(">=" + tokens[i], text=text)
                high, hpre = _constraint("<=" + tokens[i + 2], text=text)
                bounds += low[0] + high[0]
                pre = pre or lpre or hpre
                i += 3
                continue
            (got, ex), has_pre = _constraint(tokens[i], text=text)
            bounds += got
            excluded += ex
            pre = pre or has_pre
            i += 1
        groups.append(_Group(tuple(bounds), tuple(excluded), pre))
    exact = None
    if len(groups) == 1 and len(groups[0].bounds) == 1 and groups[0].bounds[0].op == "=":
        if not groups[0].excluded and _VERSION.match(source.lstrip("=").strip()):
            exact = groups[0].bounds[0].version
    return Range(text, tuple(groups), exact)


def _constraint(
    token: str, *, text: str
) -> tuple[tuple[list[_Bound], list[tuple[Version, Version]]], bool]:
    m = _CONSTRAINT.match(token)
    if not m:
        raise RangeError(
            f"{text!r}: {token!r} is not a version constraint; use e.g. 1.2.3, >=1.0.0 <2.0.0, "
            "^1.2, ~1.2.3, 1.x or 1.2.*"
        )
    op = {"=>": ">=", "=<": "<=", "~>": "~", None: "="}.get(m.group(1), m.group(1))
    major, minor, patch, pre_text = m.group(2), m.group(3), m.group(4), m.group(5)
    if major in _WILD:
        minor = patch = "x"
    elif minor is None or minor in _WILD:
        minor, patch = "x", "x"
    elif patch is None or patch in _WILD:
        patch = "x"
    if pre_text and "x" in (minor, patch):
        raise RangeError(
            f"{text!r}: {token!r} has a prerelease but no exact version (e.g. >=2.0.0-rc.1)"
        )
    prerelease = tuple(pre_text.split(".")) if pre_text else ()
    for p in prerelease:
        if p.isdigit():
            _number(p, text=text)  # compared as a number
    any_major = major in _WILD
    minor_dirty, patch_dirty = minor == "x", patch == "x"
    base = Version(
        0 if any_major else _number(major, text=text),
        0 if minor_dirty else _number(minor, text=text),
        0 if patch_dirty else _number(patch, text=text),
        prerelease,
    )
    # the first version past the wildcard: 1.x -> 2.0.0, 1.2.x -> 1.3.0
    nxt = (
        None
        if any_major
        else Version(base.major + 1, 0, 0)
        if minor_dirty
        else Version(base.major, base.minor + 1, 0)
        if patch_dirty
        else None
    )
    b: list[_Bound] = []
    ex: list[tuple[Version, Version]] = []
    if op == "^":
        if not any_major:
            b.append(_Bound(">=", base))
            if base.major > 0 or minor_dirty:
                b.append(_Bound("<", Version(base.major + 1, 0, 0)))
            elif base.minor > 0 or patch_dirty:
                b.append(_Bound("<", Version(0, base.minor + 1, 0)))
            else:
                b.append(_Bound("<", Version(0, 0, base.patch + 1)))
    elif op == "~":
        if not any_major:
            b.append(_Bound(">=", base))
            if minor_dirty:
                b.append(_Bound("<", Version(base.major + 1, 0, 0)))
            else:
                b.append(_Bound("<", Version(base.major, base.minor + 1, 0)))
    elif op == "=":
        if nxt is not None:
            b += [_Bound(">=", base), _Bound("<", nxt)]
        elif not any_major:
            b.append(_Bound("=", base))
    elif op == "!=":
        if nxt is not None:
            ex.append((base, nxt))
        elif any_major:
            ex.append((Version(0, 0, 0, ("0",)), Version(2**63, 0, 0)))
        else:
            b.append(_Bound("!=", base))
    elif op == ">":
        if nxt is not None:
            b.append(_Bound(">=", nxt))
        elif any_major:
            b.append(_Bound("<", Version(0, 0, 0, ("0",))))  # nothing is above everything
        else:
            b.append(_Bound(">", base))
    elif op == ">=":
        if not any_major:
            b.append(_Bound(">=", base))
    elif op == "<":
        b.append(_Bound("<", base if not any_major else Version(0, 0, 0, ("0",))))
    elif op == "<=":
        if nxt is not None:
            b.append(_Bound("<", nxt))
        elif not any_major:
            b.append(_Bound("<=", base))
    return (b, ex), bool(prerelease)


def best(candidates: Iterable[str], rng: Range) -> str | None:
    """The highest of `candidates` (version strings as published: index entries, tags) that
    `rng` allows, as it was written; None when none does. Strings that are not versions are
    skipped."""
    found: tuple[Version, str] | None = None
    for text in candidates:
        try:
            v = parse(text)
        except RangeError:
            continue
        if rng.allows(v) and (found is None or v > found[0]):
            found = (v, text)
    return found[1] if found else None
