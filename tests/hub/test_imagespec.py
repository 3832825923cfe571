"""hub.yaml's image automation fields (imageRepositories, imagePolicies, imageUpdates): the
issue's example reads, and every mistake is named by its field with the fix."""

from __future__ import annotations

import pytest
import yaml

from fleetops.hub import config, errors

BASE = {
    "repos": [{"name": "platform", "url": "https://git.example.com/platform.git"}],
    "imageRepositories": [
        {
            "name": "podinfo",
            "image": "registry.example.com/team/podinfo",
            "interval": "5m",
            "maxTags": 5000,
            "exclude": [r"^.*\.sig$"],
            "auth": {"dockerConfigFile": "/etc/fleetops/regcred.json"},
        }
    ],
    "imagePolicies": [
        {
            "name": "podinfo-stable",
            "repository": "podinfo",
            "filterTags": {"pattern": r"^v?(?P<v>\d+\.\d+\.\d+)$", "extract": "$v"},
            "policy": {"semver": {"range": ">=1.0.0 <2.0.0"}},
        }
    ],
    "imageUpdates": [
        {
            "name": "platform-images",
            "repo": "platform",
            "paths": ["apps/"],
            "push": {"branch": "main"},
            "commit": {
                "author": {"name": "fleetops-bot", "email": "bot@example.com"},
                "message": "images: {changes}",
            },
        }
    ],
}


def parse(doc: dict[str, object]) -> config.Config:
    return config.parse(yaml.safe_dump(doc), file="hub.yaml")


def test_the_issues_example_reads() -> None:
    images = parse(BASE).images
    [repo] = images.repositories
    assert (repo.name, str(repo.image), repo.interval, repo.max_tags) == (
        "podinfo",
        "registry.example.com/team/podinfo",
        300.0,
        5000,
    )
    assert repo.exclude[0].search("1.0.0.sig") and repo.docker_config_file.endswith("regcred.json")
    [policy] = images.policies
    assert (policy.name, policy.repository) == ("podinfo-stable", "podinfo")
    [update] = images.updates
    assert (update.repo, update.paths, update.push_branch) == ("platform", ("apps",), "main")
    assert (update.author_name, update.author_email) == ("fleetops-bot", "bot@example.com")


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda d: d["imagePolicies"][0].update(repository="nope"), "imagePolicies[0].repository",
         "unknown image repository 'nope'; imageRepositories: podinfo"),
        (lambda d: d["imageUpdates"][0].update(repo="nope"), "imageUpdates[0].repo",
         "unknown repo 'nope'; repos: platform"),
        (lambda d: d["imageRepositories"][0].update(image="reg.example.com/x:1.0"),
         "imageRepositories[0].image", "tag"),
        (lambda d: d["imageRepositories"][0].update(exclude=["("]),
         "imageRepositories[0].exclude[0]", "is not a regular expression"),
        (lambda d: d["imageUpdates"][0].update(paths=["/etc"]), "imageUpdates[0].paths[0]",
         "relative path inside the repository"),
        (lambda d: d["imageRepositories"].append(dict(d["imageRepositories"][0])),
         "imageRepositories[1].name", "duplicate name 'podinfo'"),
        (lambda d: d["imageUpdates"][0].update(push={"branch": "refs/heads/main"}),
         "imageUpdates[0].push.branch", "write the name alone, e.g. 'main'"),
        (lambda d: d["imageUpdates"][0].update(push={"branch": "a..b"}),
         "imageUpdates[0].push.branch", "is not a branch name"),
    ],
)  # fmt: skip
def test_a_mistake_names_its_field_and_the_fix(change: object, field: str, words: str) -> None:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    change(doc)  # type: ignore[operator]
    with pytest.raises(errors.ConfigError) as e:
        parse(doc)
    assert f"hub.yaml: {field}: " in str(e.value) and words in str(e.value), str(e.value)


def test_no_image_automation_is_an_empty_section() -> None:
    images = parse({"repos": BASE["repos"]}).images
    assert (images.repositories, images.policies, images.updates) == ((), (), ())
