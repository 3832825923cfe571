"""hub.yaml `healthChecks`: Lua health checks the hub puts into every bundle, inline or from a
file next to hub.yaml, refused with the field named when they cannot work."""

from __future__ import annotations

import pathlib

import pytest

from fleetops.hub import config, errors, rendercache

BASE = """
repos:
  - {name: platform, url: "file:///srv/git/platform.git"}
apps:
  - {name: shop, repo: platform, path: apps/shop}
  - {name: web, repo: platform, path: apps/web}
"""

CERT = 'return {status = "Healthy", message = "issued"}\n'


def test_inline_and_file_checks_reach_every_app(tmp_path: pathlib.Path) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "rollout.lua").write_text('return {status = "Suspended"}\n')
    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(
        BASE
        + "healthChecks:\n"
        + "  - group: cert-manager.io\n    kind: Certificate\n    lua: |\n      "
        + CERT
        + "  - {group: argoproj.io, kind: Rollout, file: checks/rollout.lua}\n"
    )
    cfg = config.load(hub_yaml)
    want = (
        config.HealthCheck("cert-manager.io", "Certificate", CERT),
        config.HealthCheck("argoproj.io", "Rollout", 'return {status = "Suspended"}\n'),
    )
    assert cfg.health_checks == want
    assert [a.health_checks for a in cfg.apps] == [want, want]


def test_changing_a_check_renders_the_bundles_again() -> None:
    """The render cache key includes the checks: an edit reaches agents with no new commit."""
    one = config.parse(
        BASE + f"healthChecks:\n  - {{kind: ConfigMap, lua: '{CERT.strip()}'}}\n", file="hub.yaml"
    )
    two = config.parse(
        BASE + "healthChecks:\n  - {kind: ConfigMap, lua: 'return nil'}\n", file="hub.yaml"
    )
    none = config.parse(BASE, file="hub.yaml")
    target = config.Target(name="default")
    hashes = {rendercache.overrides_hash(c.apps[0], target) for c in (one, two, none)}
    assert len(hashes) == 3


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        (
            "  - {group: cert-manager.io, lua: 'return nil'}",
            "hub.yaml: healthChecks[0].kind: is required",
        ),
        (
            "  - {kind: Certificate}",
            "hub.yaml: healthChecks[0]: give the script inline as lua: | or in a file: path",
        ),
        (
            "  - {kind: Certificate, lua: 'return {status = '}",
            "hub.yaml: healthChecks[0].lua: the Lua does not compile: lua:1: unexpected symbol",
        ),
        (
            "  - {kind: Certificate, file: nowhere.lua}",
            "hub.yaml: healthChecks[0].file: cannot read nowhere.lua: No such file or directory",
        ),
        (
            "  - {kind: Certificate, lua: 'return nil', script: x}",
            "hub.yaml: healthChecks[0].script: unknown field; allowed here: group, kind, lua, file",
        ),
        (
            "  - {kind: Pod, lua: 'return nil'}\n  - {kind: Pod, lua: 'return {}'}",
            "hub.yaml: healthChecks[1].kind: healthChecks[0] already checks core/Pod",
        ),
    ],
)
def test_bad_checks_name_the_field_and_the_fix(checks: str, message: str) -> None:
    with pytest.raises(errors.ConfigError) as e:
        config.parse(BASE + "healthChecks:\n" + checks + "\n", file="hub.yaml")
    assert message in str(e.value)
