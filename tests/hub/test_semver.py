"""Chart version ranges resolve as Helm resolves them (Masterminds semver v3 rules)."""

from __future__ import annotations

import pytest

from fleetops.hub import semver

PUBLISHED = [
    "0.1.0", "0.1.5", "0.2.0", "0.2.3", "0.3.0", "1.0.0", "1.1.0", "1.2.0", "1.2.3", "1.2.9",
    "1.3.0", "1.10.0", "2.0.0-rc.1", "2.0.0", "2.1.0-beta.2", "2.1.0", "3.0.0-alpha",
]  # fmt: skip


@pytest.mark.parametrize(
    ("rng", "picked"),
    [
        ("1.2.3", "1.2.3"),
        ("=1.2.3", "1.2.3"),
        ("v1.2.3", "1.2.3"),
        (">=1.0.0 <2.0.0", "1.10.0"),
        (">=1.0.0, <2.0.0", "1.10.0"),
        (">= 1.0.0 < 1.3.0", "1.2.9"),
        ("^1.2", "1.10.0"),
        ("^1.2.3", "1.10.0"),
        ("^0.2.3", "0.2.3"),
        ("^0.2", "0.2.3"),
        ("^0", "0.3.0"),
        ("~1.2.3", "1.2.9"),
        ("~1.2", "1.2.9"),
        ("~1", "1.10.0"),
        ("~>1.2.0", "1.2.9"),
        ("1.x", "1.10.0"),
        ("1.2.*", "1.2.9"),
        ("1.2.x", "1.2.9"),
        ("1.2", "1.2.9"),
        ("1", "1.10.0"),
        ("*", "2.1.0"),
        ("x", "2.1.0"),
        (">1.2.3 <1.3", "1.2.9"),
        (">1.2", "2.1.0"),
        ("<=1.2", "1.2.9"),
        ("<1.2", "1.1.0"),
        ("1.2 - 1.3.0", "1.3.0"),
        ("1.0.0 - 1.2", "1.2.9"),
        ("^0.1 || ^1.2 <1.3", "1.2.9"),
        ("~0.2 || ~1.2", "1.2.9"),
        (">=1.2.0 !=1.2.9 <1.3.0", "1.2.3"),
        ("!=2.x", "1.10.0"),
        (">=2.0.0-rc.0 <2.0.1", "2.0.0"),
        (">=2.0.0-rc.0 <2.1.0", "2.1.0-beta.2"),
        (">=2.1.0-alpha <3", "3.0.0-alpha"),
        (">=2.1.0-alpha <2.1.0", "2.1.0-beta.2"),
        (">=3.0.0-0", "3.0.0-alpha"),
        ("^4", None),
        ("0.4.x", None),
    ],
)
def test_the_highest_published_version_in_the_range_wins(rng: str, picked: str | None) -> None:
    assert semver.best(PUBLISHED, semver.parse_range(rng)) == picked


@pytest.mark.parametrize("rng", [">=1.0.0", "*", "^2", "~2.1", "2.x", ">2.0.0 <3.0.0"])
def test_prereleases_only_when_the_range_asks_for_them(rng: str) -> None:
    r = semver.parse_range(rng)
    assert not r.allows(semver.parse("2.1.0-beta.2"))
    assert not r.allows(semver.parse("3.0.0-alpha"))


def test_a_prerelease_in_one_alternative_does_not_open_the_other() -> None:
    r = semver.parse_range("^1.0.0 || >=2.1.0-alpha <2.1.0")
    assert r.allows(semver.parse("2.1.0-beta.2"))
    assert not r.allows(semver.parse("1.5.0-rc.1"))


def test_prerelease_precedence_follows_semver() -> None:
    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"]  # fmt: skip
    parsed = [semver.parse(v) for v in order]
    assert sorted(reversed(parsed)) == parsed
    assert semver.parse("1.0.0+build.7") == semver.parse("1.0.0")


def test_exact_versions_are_known_as_exact() -> None:
    assert semver.parse_range("1.2.3").exact == semver.parse("1.2.3")
    assert semver.parse_range("=1.2.3-rc.1").exact == semver.parse("1.2.3-rc.1")
    for rng in ("1.2", "^1.2.3", ">=1.2.3", "1.2.3 || 1.2.4"):
        assert semver.parse_range(rng).exact is None


def test_the_version_is_returned_as_published() -> None:
    assert semver.best(["v1.0.0", "v1.1.0", "latest", "main"], semver.parse_range("^1")) == "v1.1.0"


@pytest.mark.parametrize("rng", ["", "latest", ">=", "1.2.3.4", "^1.x-rc", ">=1.0 ||", "a.b"])
def test_a_range_that_does_not_parse_says_what_is_allowed(rng: str) -> None:
    with pytest.raises(semver.RangeError) as e:
        semver.parse_range(rng)
    assert "e.g." in str(e.value)


def test_versions_that_are_not_semver_are_refused_by_name() -> None:
    with pytest.raises(semver.RangeError, match="'banana' is not a semantic version"):
        semver.parse("banana")


@pytest.mark.parametrize(
    "text",
    ["9" * 5000, "1.0.0-" + "1" * 5000, "1." + "2" * 19 + ".0"],
    ids=["5000-digit major", "5000-digit prerelease", "19-digit minor"],
)
def test_a_huge_version_is_a_range_error_not_a_value_error(text: str) -> None:
    with pytest.raises(semver.RangeError, match="digits|characters"):
        semver.parse(text)
    with pytest.raises(semver.RangeError, match="digits|characters"):
        semver.parse_range(">=" + text)
    with pytest.raises(semver.RangeError, match="characters"):
        semver.parse("1.0.0-" + "x" * 300)


def test_one_huge_version_among_candidates_is_skipped() -> None:
    published = ["1.0.0", "9" * 5000, "1.0.0-" + "1" * 5000, "1.1.0"]
    assert semver.best(published, semver.parse_range(">=1.0.0")) == "1.1.0"
