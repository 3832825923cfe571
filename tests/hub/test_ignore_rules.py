"""fleet.yaml `diff.comparePatches` become each target's ignore rules, in the shape hub.yaml's
`ignoreDifferences` have, and a bad entry is an error naming the file and the field."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from fleetops.hub import config, errors, fleetyaml, ignorerules, rendercache

APP = config.App(name="web", repo="r", path="apps/web")

FLEET = """\
defaultNamespace: web
diff:
  comparePatches:
    - apiVersion: apps/v1
      kind: Deployment
      name: web
      namespace: web
      operations:
        - {op: remove, path: /spec/replicas}
    - apiVersion: v1
      kind: ConfigMap
      name: generated
      namespace: web
      operations:
        - {op: ignore}
targetCustomizations:
  - name: prod
    clusterSelector: {matchLabels: {env: prod}}
    diff:
      comparePatches:
        - apiVersion: apps/v1
          kind: Deployment
          name: web
          namespace: web
          jsonPointers: [/spec/template/spec/containers/0/image]
  - name: dev
    clusterSelector: {matchLabels: {env: dev}}
"""


def rules(target: config.Target) -> list[tuple[str, str, str, tuple[str, ...], bool]]:
    return [
        (r.group, r.kind, r.name, r.json_pointers, r.whole_object)
        for r in target.ignore_differences
    ]


def test_compare_patches_map_to_each_target_the_customization_winning() -> None:
    app = fleetyaml.apply(APP, FLEET)
    assert app.targets is not None
    prod, dev, default = app.targets
    assert rules(default) == [
        ("apps", "Deployment", "web", ("/spec/replicas",), False),
        ("", "ConfigMap", "generated", (), True),
    ]
    assert rules(dev) == rules(default)
    # the customization's entry for the same object replaces the top level's (as in Fleet)
    assert rules(prod) == [
        ("apps", "Deployment", "web", ("/spec/template/spec/containers/0/image",), False),
        ("", "ConfigMap", "generated", (), True),
    ]
    [proto, _] = ignorerules.to_proto(default.ignore_differences)
    assert (proto.group, proto.kind, proto.namespace, list(proto.json_pointers)) == (
        "apps",
        "Deployment",
        "web",
        ["/spec/replicas"],
    )


def test_other_json_patch_ops_ignore_their_paths() -> None:
    text = """\
diff:
  comparePatches:
    - apiVersion: admissionregistration.k8s.io/v1
      kind: MutatingWebhookConfiguration
      name: hook
      operations:
        - {op: replace, path: /webhooks/0/clientConfig/caBundle, value: ""}
        - {op: move, from: /metadata/labels/a, path: /metadata/labels/b}
        - {op: test, path: /kind, value: x}
"""
    app = fleetyaml.apply(APP, text)
    assert app.targets is not None
    [rule] = app.targets[-1].ignore_differences
    assert rule.group == "admissionregistration.k8s.io"
    assert rule.json_pointers == (
        "/webhooks/0/clientConfig/caBundle",
        "/metadata/labels/b",
        "/metadata/labels/a",
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("{op: remove, path: /spec/replicas}", "{op: delete, path: /spec/replicas}",
         "apps/web/fleet.yaml: diff.comparePatches[0].operations[0].op: 'delete' is not "
         "allowed; use one of remove, ignore"),
        ("{op: remove, path: /spec/replicas}", "{op: remove, path: spec.replicas}",
         "apps/web/fleet.yaml: diff.comparePatches[0].operations[0].path: 'spec.replicas' is "
         "not a JSON pointer"),
        ("[/spec/template/spec/containers/0/image]", "[/spec/~x]",
         "apps/web/fleet.yaml: targetCustomizations[0].diff.comparePatches[0].jsonPointers[0]: "
         "'/spec/~x': '~' must be followed by 0 or 1"),
        ("      kind: ConfigMap\n", "",
         "apps/web/fleet.yaml: diff.comparePatches[1].kind: is required"),
        ("        - {op: ignore}\n", "",
         "apps/web/fleet.yaml: diff.comparePatches[1]: ignores nothing"),
    ],
)  # fmt: skip
def test_bad_compare_patches_name_the_file_and_field(old: str, new: str, message: str) -> None:
    assert old in FLEET
    with pytest.raises(errors.RenderError) as err:
        fleetyaml.apply(APP, FLEET.replace(old, new, 1))
    assert str(err.value).startswith(message), str(err.value)


def test_changing_the_rules_re_renders_and_no_rules_keep_the_render_key() -> None:
    """The rules are in the bundle, so a change must reach agents as a new bundle: it is part
    of the render key; apps without rules keep the key they had before rules existed."""
    target = config.Target(name="default")
    plain = rendercache.overrides_hash(APP, target)
    before = hashlib.sha256(
        json.dumps(
            {"ns": "", "path": "apps/web", "values": {}, "valuesFiles": [], "kustomize": "",
             "overlays": []},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]  # fmt: skip
    assert plain == before
    one = ignorerules.IgnoreRule(kind="Deployment", group="apps", json_pointers=("/spec/replicas",))
    other = dataclasses.replace(one, json_pointers=("/spec/template",))
    app_one = rendercache.overrides_hash(
        dataclasses.replace(APP, ignore_differences=(one,)), target
    )
    app_other = rendercache.overrides_hash(
        dataclasses.replace(APP, ignore_differences=(other,)), target
    )
    # fleet.yaml's rules live on the target
    on_target = rendercache.overrides_hash(
        APP, dataclasses.replace(target, ignore_differences=(other,))
    )
    assert len({plain, app_one, app_other}) == 3
    assert on_target not in (plain, app_one)
