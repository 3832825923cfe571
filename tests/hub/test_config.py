"""hub.yaml validation: every error names the file, the field path and what is allowed."""

from __future__ import annotations

import pytest

from fleetops.hub import config, errors

BASE = """
repos:
  - {name: platform, url: "file:///srv/git/platform.git", pollInterval: 30s}
clusters:
  - {name: eu-prod-1, labels: {env: prod, region: eu}}
clusterGroups:
  - {name: prod, selector: {matchLabels: {env: prod}}}
apps:
  - name: guestbook
    repo: platform
    path: apps/guestbook
    namespace: guestbook
    sync: {auto: true, prune: true, selfHeal: true}
    targets:
      - {name: dev, clusterSelector: {matchLabels: {env: dev}}, kustomize: {dir: overlays/dev}}
      - name: prod
        clusterGroup: prod
        helm: {values: {replicas: 3}, valuesFiles: [values-prod.yaml]}
      - {name: edge, clusterName: edge-1, yaml: {overlays: [scale3]}}
"""


def test_the_documented_shape_loads() -> None:
    cfg = config.parse(BASE, file="hub.yaml")
    assert cfg.repos[0].poll_interval == 30.0
    app = cfg.apps[0]
    assert app.sync == config.Sync(auto=True, prune=True, self_heal=True)
    assert app.targets is not None
    assert [t.name for t in app.targets] == ["dev", "prod", "edge"]
    assert app.targets[1].helm.values == {"replicas": 3}
    assert app.targets[2].yaml_overlays == ("scale3",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("clusterGroup: prod", "clusterGroup: prd"),
         "hub.yaml: apps[0].targets[1].clusterGroup: unknown cluster group 'prd'; groups: prod"),
        (("repo: platform\n", "repo: platfrom\n"),
         "hub.yaml: apps[0].repo: unknown repo 'platfrom'; repos: platform"),
        (("pollInterval: 30s", "pollInterval: soon"),
         "hub.yaml: repos[0].pollInterval: 'soon' is not a duration; use e.g. 15s, 2m, 1h or 30d"),
        (("selfHeal: true", "selfHeal: yes please"),
         "hub.yaml: apps[0].sync.selfHeal: expected true or false"),
        (("name: guestbook", "name: Guest_Book"),
         "hub.yaml: apps[0].name: 'Guest_Book' is not a valid name"),
        (("path: apps/guestbook", "path: ../../etc"),
         "hub.yaml: apps[0].path: '../../etc' must be a relative path inside the repository"),
        (("{matchLabels: {env: dev}}", "{matchExpressions: [{key: env, operator: Like}]}"),
         "hub.yaml: apps[0].targets[0].clusterSelector.matchExpressions[0].operator: 'Like' "
         "is not allowed"),
        (("namespace: guestbook", "namespce: guestbook"),
         "hub.yaml: apps[0].namespce: unknown field; allowed here: name, repo, path, namespace"),
        (('url: "file:///srv/git/platform.git"', 'url: "https://bob:hunter2@git.example.com/p.git"'),
         "hub.yaml: repos[0].url: must not contain credentials"),
        (("region: eu}", "region: eu west}"),
         "hub.yaml: clusters[0].labels.region: the value must be empty or at most 63 letters"),
        (("{env: prod, region: eu}", "{env: prod, -region: eu}"),
         "hub.yaml: clusters[0].labels.-region: the key must be an optional DNS prefix"),
    ],
)  # fmt: skip
def test_errors_name_the_file_the_field_and_the_fix(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in BASE
    with pytest.raises(errors.ConfigError) as err:
        config.parse(BASE.replace(old, new, 1), file="hub.yaml")
    assert str(err.value).startswith(message), str(err.value)
    assert "hunter2" not in str(err.value)


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(errors.ConfigError, match=r"hub.yaml: invalid YAML at line 3"):
        config.parse("repos:\n  - name: a\n    url: a: b\n", file="hub.yaml")


def test_duplicate_names_are_refused() -> None:
    text = BASE + "  - {name: guestbook, repo: platform, path: other}\n"
    with pytest.raises(errors.ConfigError, match=r"apps\[1\].name: duplicate name 'guestbook'"):
        config.parse(text, file="hub.yaml")


IGNORING = (
    BASE
    + """\
    ignoreDifferences:
      - group: apps
        kind: Deployment
        jsonPointers: [/spec/replicas, /metadata/annotations/example.com~1hash]
      - group: "*"
        kind: "*"
        name: web
        namespace: guestbook
        jqPathExpressions: ['.spec.template.spec.containers[] | select(.name == "istio-proxy")']
        managedFieldsManagers: [kube-controller-manager]
"""
)


def test_ignore_differences_load_as_argo_cd_writes_them() -> None:
    app = config.parse(IGNORING, file="hub.yaml").apps[0]
    first, second = app.ignore_differences
    assert (first.group, first.kind, first.name) == ("apps", "Deployment", "")
    assert first.json_pointers == ("/spec/replicas", "/metadata/annotations/example.com~1hash")
    assert (second.group, second.kind, second.name, second.namespace) == (
        "*",
        "*",
        "web",
        "guestbook",
    )
    assert second.jq_path_expressions == (
        '.spec.template.spec.containers[] | select(.name == "istio-proxy")',
    )
    assert second.managed_fields_managers == ("kube-controller-manager",)
    assert not first.whole_object and not second.whole_object


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("jsonPointers: [/spec/replicas,", "jsonPointers: [spec/replicas,"),
         "hub.yaml: apps[0].ignoreDifferences[0].jsonPointers[0]: app guestbook: 'spec/replicas' "
         "is not a JSON pointer: it starts with '/'"),
        (("example.com~1hash", "example.com~2hash"),
         "hub.yaml: apps[0].ignoreDifferences[0].jsonPointers[1]: app guestbook: "
         "'/metadata/annotations/example.com~2hash': '~' must be followed by 0 or 1"),
        (('select(.name == "istio-proxy")', 'select(.name == "istio-proxy"'),
         "hub.yaml: apps[0].ignoreDifferences[1].jqPathExpressions[0]: app guestbook: "
         "'.spec.template.spec.containers[] | select(.name == \"istio-proxy\"' is not a valid "
         "jq expression: jq: error: syntax error"),
        (("        kind: Deployment\n", ""),
         "hub.yaml: apps[0].ignoreDifferences[0].kind: is required"),
        (("        managedFieldsManagers:", "        managedFieldManagers:"),
         "hub.yaml: apps[0].ignoreDifferences[1].managedFieldManagers: unknown field; allowed "
         "here: group, kind, name, namespace, jsonPointers, jqPathExpressions, "
         "managedFieldsManagers"),
        (("jsonPointers: [/spec/replicas, /metadata/annotations/example.com~1hash]",
          "jsonPointers: []"),
         "hub.yaml: apps[0].ignoreDifferences[0]: app guestbook: ignores nothing: give "
         "jsonPointers, jqPathExpressions or managedFieldsManagers"),
        (("managedFieldsManagers: [kube-controller-manager]", "managedFieldsManagers: [1]"),
         "hub.yaml: apps[0].ignoreDifferences[1].managedFieldsManagers[0]: expected a non-empty "
         "string"),
    ],
)  # fmt: skip
def test_bad_ignore_differences_name_the_app_the_index_and_the_field(
    change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in IGNORING
    with pytest.raises(errors.ConfigError) as err:
        config.parse(IGNORING.replace(old, new, 1), file="hub.yaml")
    assert str(err.value).startswith(message), str(err.value)
