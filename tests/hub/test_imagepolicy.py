"""Image policies pick the newest tag as Flux's ImagePolicy does, from hub.yaml entries."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fleetops.hub import configfields, errors, imagepolicy


def policy(text: str) -> imagepolicy.ImagePolicy:
    """One imagePolicies entry, written as in hub.yaml."""
    item = yaml.safe_load(text)
    return imagepolicy.parse_policy(configfields.Reader("hub.yaml"), item, "imagePolicies[0]")


def refused(item: Any) -> str:
    with pytest.raises(errors.ConfigError) as e:
        imagepolicy.parse_policy(configfields.Reader("hub.yaml"), item, "imagePolicies[0]")
    return str(e.value)


ISSUE_EXAMPLE = r"""
{name: podinfo-stable, repository: podinfo,
 filterTags: {pattern: '^v?(?P<v>\d+\.\d+\.\d+)$', extract: '$v'},
 policy: {semver: {range: '>=1.0.0 <2.0.0'}}}
"""


def test_the_issue_example_picks_the_newest_1x_and_returns_the_tag_as_published() -> None:
    p = policy(ISSUE_EXAMPLE)
    tags = ["v1.0.0", "1.1.0", "v1.10.0", "1.2.0-rc.1", "2.0.0", "latest", "v1.9.9-extra"]
    choice = imagepolicy.choose(tags, p)
    assert choice.tag == "v1.10.0"  # not the extracted 1.10.0
    # 1.2.0-rc.1, latest and v1.9.9-extra do not match the pattern: neither counted
    assert (choice.considered, choice.skipped) == (4, 0)


def test_the_e2e_scenario_prefers_1_10_over_1_2_and_ignores_the_prerelease() -> None:
    p = policy("{name: p, repository: r, policy: {semver: {range: '>=1.0.0'}}}")
    assert imagepolicy.choose(["1.0.0", "1.1.0", "1.10.0", "1.2.0-rc.1"], p).tag == "1.10.0"
    assert imagepolicy.choose(["1.0.0", "1.11.0", "1.10.0"], p).tag == "1.11.0"


def test_a_rejected_newest_tag_falls_back_to_the_next_best() -> None:
    p = policy(ISSUE_EXAMPLE)
    tags = ["1.0.0", "1.1.0", "1.10.0"]
    choice = imagepolicy.choose(tags, p, rejected=frozenset({"1.10.0"}))
    assert (choice.tag, choice.rejected) == ("1.1.0", 1)
    everything = imagepolicy.choose(tags, p, rejected=frozenset(tags))
    assert everything.tag is None


def test_nothing_in_range_chooses_nothing() -> None:
    p = policy("{name: p, repository: r, policy: {semver: {range: '^3'}}}")
    choice = imagepolicy.choose(["1.0.0", "2.0.0", "main"], p)
    assert (choice.tag, choice.considered, choice.skipped) == (None, 2, 1)


# Flux's documented ImagePolicy examples (the image update guide and the ImagePolicy spec)


def test_flux_example_latest_stable_version() -> None:
    p = policy("{name: p, repository: r, policy: {semver: {range: '>=1.0.0'}}}")
    assert imagepolicy.choose(["1.0.0", "5.0.3", "6.0.0-rc.1", "latest"], p).tag == "5.0.3"


def test_flux_example_latest_including_prereleases() -> None:
    p = policy("{name: p, repository: r, policy: {semver: {range: '>=1.0.0-0'}}}")
    assert imagepolicy.choose(["1.0.0", "5.0.3", "6.0.0-rc.1"], p).tag == "6.0.0-rc.1"


def test_flux_example_patch_versions_only() -> None:
    p = policy("{name: p, repository: r, policy: {semver: {range: 5.0.x}}}")
    assert imagepolicy.choose(["5.0.0", "5.0.3", "5.1.0", "5.0.4-rc.1"], p).tag == "5.0.3"


def test_flux_example_release_candidates_with_a_hyphenated_range() -> None:
    # the guide's other way to ask for prereleases: '>1.0.0-rc <2.0.0-rc'
    p = policy(
        "{name: p, repository: r, filterTags: {pattern: '.*-rc.*'},"
        " policy: {semver: {range: '>1.0.0-rc <2.0.0-rc'}}}"
    )
    tags = ["1.0.0", "1.1.0-rc.1", "1.2.0-rc.2", "1.2.0", "2.0.0-rc.1"]
    assert imagepolicy.choose(tags, p).tag == "1.2.0-rc.2"


def test_flux_example_caret_wildcard_prerelease_range_is_refused_with_the_alternative() -> None:
    """Flux documents '^1.x-0'; hub.semver refuses a prerelease on a wildcard, so the config
    error must say so (and the lead knows hub.semver needs that form)."""
    message = refused({"name": "p", "repository": "r", "policy": {"semver": {"range": "^1.x-0"}}})
    assert "imagePolicies[0].policy.semver.range" in message
    assert "prerelease" in message


def test_flux_example_numerical_build_timestamps() -> None:
    p = policy(
        "{name: p, repository: r, filterTags: {pattern: '^main-[a-fA-F0-9]+-(?P<ts>.*)',"
        " extract: '$ts'}, policy: {numerical: {order: asc}}}"
    )
    tags = ["main-abc1234-1611234567", "main-def5678-1611239999", "main-0a0a0a0-999", "dev-1-2"]
    choice = imagepolicy.choose(tags, p)
    assert choice.tag == "main-def5678-1611239999"
    assert (choice.considered, choice.skipped) == (3, 0)


def test_flux_example_minio_release_timestamps_alphabetical() -> None:
    p = policy(
        "{name: minio, repository: minio, filterTags: {pattern: '^RELEASE\\.(?P<timestamp>.*)Z$',"
        " extract: '$timestamp'}, policy: {alphabetical: {order: asc}}}"
    )
    tags = [
        "RELEASE.2021-01-05T05-22-38Z",
        "RELEASE.2021-02-14T04-01-33Z",
        "RELEASE.2020-12-29T23-29-29Z",
        "latest",
    ]
    assert imagepolicy.choose(tags, p).tag == "RELEASE.2021-02-14T04-01-33Z"


def test_alphabetical_desc_picks_the_first_and_asc_the_last() -> None:
    asc = policy("{name: p, repository: r, policy: {alphabetical: {order: asc}}}")
    desc = policy("{name: p, repository: r, policy: {alphabetical: {order: desc}}}")
    default = policy("{name: p, repository: r, policy: {alphabetical: {}}}")
    tags = ["b", "a", "c", "B"]
    assert imagepolicy.choose(tags, asc).tag == "c"
    assert imagepolicy.choose(tags, default).tag == "c"
    assert imagepolicy.choose(tags, desc).tag == "B"  # byte order: uppercase first


def test_numerical_skips_what_is_not_a_number_and_counts_it() -> None:
    asc = policy("{name: p, repository: r, policy: {numerical: {order: asc}}}")
    desc = policy("{name: p, repository: r, policy: {numerical: {order: desc}}}")
    tags = ["10", "9", "100", "1.5", "latest", "nan", "inf", "1e9", "0x10", "1_000"]
    up = imagepolicy.choose(tags, asc)
    assert (up.tag, up.considered, up.skipped) == ("100", 4, 6)
    assert imagepolicy.choose(tags, desc).tag == "1.5"


def test_numerical_compares_long_numbers_exactly() -> None:
    p = policy("{name: p, repository: r, policy: {numerical: {}}}")
    # as floats these two are equal; as numbers the second is larger
    tags = ["20240101120000000000001", "20240101120000000000002"]
    assert imagepolicy.choose(tags, p).tag == "20240101120000000000002"


def test_equal_values_pick_the_same_tag_whatever_the_listing_order() -> None:
    p = policy("{name: p, repository: r, policy: {semver: {range: '>=1.0.0'}}}")
    assert imagepolicy.choose(["v1.2.3", "1.2.3"], p).tag == "1.2.3"
    assert imagepolicy.choose(["1.2.3", "v1.2.3"], p).tag == "1.2.3"


@pytest.mark.parametrize(
    ("extract", "tag", "value"),
    [
        ("$v", "v1.2.3", "1.2.3"),
        ("${v}", "v1.2.3", "1.2.3"),
        ("$1", "v1.2.3", "1.2.3"),
        ("${1}-x", "v1.2.3", "1.2.3-x"),
        ("$$v", "v1.2.3", "$v"),
        ("a$", "v1.2.3", "a$"),
        ("$0", "v1.2.3", "v1.2.3"),
    ],
)
def test_extract_templates_as_flux_writes_them(extract: str, tag: str, value: str) -> None:
    p = imagepolicy.parse_policy(
        configfields.Reader("hub.yaml"),
        {
            "name": "p",
            "repository": "r",
            "filterTags": {"pattern": r"^v?(?P<v>\d+\.\d+\.\d+)$", "extract": extract},
            "policy": {"alphabetical": {}},
        },
        "imagePolicies[0]",
    )
    assert p.filter.value(tag) == value


def test_the_pattern_is_searched_not_anchored_as_in_go() -> None:
    p = policy("{name: p, repository: r, filterTags: {pattern: rc}, policy: {alphabetical: {}}}")
    assert imagepolicy.choose(["1.0.0-rc.1", "1.0.0", "rc"], p).tag == "rc"


def test_tags_that_are_not_oci_tags_are_skipped_never_matched() -> None:
    p = policy("{name: p, repository: r, policy: {alphabetical: {}}}")
    hostile = ["z" * 129, "-z", "z z", "z\nz", "zz/../x", "\u202ez", ""]
    choice = imagepolicy.choose([*hostile, "1.0.0"], p)
    assert (choice.tag, choice.considered, choice.skipped) == ("1.0.0", 1, len(hostile))


def test_many_tags_are_chosen_from_in_one_pass() -> None:
    p = policy(ISSUE_EXAMPLE)
    tags = [f"v1.{minor}.{patch}" for minor in range(100) for patch in range(50)]
    choice = imagepolicy.choose(tags, p)
    assert (choice.tag, choice.considered) == ("v1.99.49", 5000)


@pytest.mark.parametrize(
    ("item", "field", "hint"),
    [
        ({"name": "p", "repository": "r"}, "imagePolicies[0].policy", "exactly one of"),
        (
            {"name": "p", "repository": "r", "policy": {"semver": {}, "numerical": {}}},
            "imagePolicies[0].policy",
            "exactly one of",
        ),
        (
            {"name": "p", "repository": "r", "policy": {"semver": {"range": "latest"}}},
            "imagePolicies[0].policy.semver.range",
            "not a version constraint",
        ),
        (
            {"name": "p", "repository": "r", "policy": {"numerical": {"order": "up"}}},
            "imagePolicies[0].policy.numerical.order",
            "asc or desc",
        ),
        (
            {"name": "p", "repository": "r", "policy": {"newest": {}}},
            "imagePolicies[0].policy.newest",
            "unknown field",
        ),
        (
            {
                "name": "p",
                "repository": "r",
                "filterTags": {"pattern": "^v(?P<v>[0-9]+", "extract": "$v"},
                "policy": {"alphabetical": {}},
            },
            "imagePolicies[0].filterTags.pattern",
            "not a regular expression",
        ),
        (
            {
                "name": "p",
                "repository": "r",
                "filterTags": {"pattern": "^v(?P<v>[0-9]+)$", "extract": "$version"},
                "policy": {"alphabetical": {}},
            },
            "imagePolicies[0].filterTags.extract",
            "$version",
        ),
        (
            {
                "name": "p",
                "repository": "r",
                "filterTags": {"pattern": "^v([0-9]+)$", "extract": "$2"},
                "policy": {"alphabetical": {}},
            },
            "imagePolicies[0].filterTags.extract",
            "$2",
        ),
        (
            {
                "name": "p",
                "repository": "r",
                "filterTags": {"extract": "$v"},
                "policy": {"alphabetical": {}},
            },
            "imagePolicies[0].filterTags.extract",
            "needs a pattern",
        ),
        (
            {"name": "Pod_Info", "repository": "r", "policy": {"alphabetical": {}}},
            "imagePolicies[0].name",
            "not a valid name",
        ),
        (
            {"name": "p", "policy": {"alphabetical": {}}},
            "imagePolicies[0].repository",
            "is required",
        ),
        (
            {"name": "p", "repository": "r", "policy": {"alphabetical": {}}, "range": "x"},
            "imagePolicies[0].range",
            "unknown field",
        ),
        (
            {"name": "p", "repository": "r", "filterTags": "^v", "policy": {"alphabetical": {}}},
            "imagePolicies[0].filterTags",
            "expected a mapping",
        ),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_the_field(item: Any, field: str, hint: str) -> None:
    message = refused(item)
    assert message.startswith(f"hub.yaml: {field}: "), message
    assert hint in message


def test_a_lone_group_number_past_the_groups_names_the_groups_there_are() -> None:
    message = refused(
        {
            "name": "p",
            "repository": "r",
            "filterTags": {"pattern": "^(?P<major>[0-9]+)-(?P<build>[0-9]+)$", "extract": "$3"},
            "policy": {"numerical": {}},
        }
    )
    assert "$major" in message and "$build" in message


# semver ranges as Flux/Masterminds write them, checked on image tags


@pytest.mark.parametrize(
    ("rng", "picked"),
    [
        (">=1.0.0 <2.0.0", "1.10.0"),
        ("^1.2", "1.10.0"),
        ("~1.2.3", "1.2.9"),
        ("1.x", "1.10.0"),
        ("^0.9 || ~1.2", "1.2.9"),
        (">=2.0.0-0", "2.1.0-rc.1"),
        ("*", "2.0.0"),
    ],
)
def test_semver_ranges_on_tags(rng: str, picked: str) -> None:
    p = imagepolicy.parse_policy(
        configfields.Reader("hub.yaml"),
        {"name": "p", "repository": "r", "policy": {"semver": {"range": rng}}},
        "imagePolicies[0]",
    )
    tags = ["0.9.1", "1.2.3", "1.2.9", "1.10.0", "2.0.0", "2.1.0-rc.1", "sha256-1a2b.sig"]
    assert imagepolicy.choose(tags, p).tag == picked


@pytest.mark.parametrize("rng", [">=1.0.0", "^1", "~1.2", "1.x", "*", ">=1.0.0 <3.0.0"])
def test_prereleases_are_never_chosen_unless_the_range_names_one(rng: str) -> None:
    p = imagepolicy.parse_policy(
        configfields.Reader("hub.yaml"),
        {"name": "p", "repository": "r", "policy": {"semver": {"range": rng}}},
        "imagePolicies[0]",
    )
    choice = imagepolicy.choose(["1.2.0", "1.2.1-rc.1", "2.0.0-beta.1"], p)
    assert choice.tag == "1.2.0"
