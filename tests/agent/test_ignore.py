"""Ignore rules: fields other controllers own are neither drift nor healed.

The pure part (rule matching, JSON pointers, jq paths, managedFields, the live-value copy)
runs without a cluster; the rest runs on a real local cluster, with `kubectl scale` as the
other field manager that owns a Deployment's replicas.
"""

from __future__ import annotations

import copy
import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from fleetops.agent import ignore, kube, manifests, reconcile
from fleetops.agent import status as st
from fleetops.proto.v1 import types_pb2
from tests import localkube
from tests.agent.conftest import BundleFactory
from tests.agent.objects import deployment, namespace, policy
from tests.support.kubectl_run import kubectl

DEPLOY = kube.ResourceType(
    group="apps", version="v1", kind="Deployment", plural="deployments", namespaced=True
)
WEB = manifests.Key(group="apps", kind="Deployment", namespace="shop", name="web")


def rule(**kw: Any) -> types_pb2.IgnoreRule:
    return types_pb2.IgnoreRule(**kw)


def pod(*containers: dict[str, Any], replicas: int = 2) -> dict[str, Any]:
    obj = deployment("web", replicas=replicas)
    obj["metadata"]["namespace"] = "shop"
    obj["spec"]["template"]["spec"]["containers"] = list(containers)
    return obj


APP = {"name": "app", "image": "registry.local/app:1"}
SIDECAR = {"name": "istio-proxy", "image": "registry.local/proxy:7"}


# --- matching ---------------------------------------------------------------------------


def test_empty_group_is_the_core_group_only_and_globs_match() -> None:
    core = manifests.Key(group="", kind="ConfigMap", namespace="a", name="x")
    assert ignore.matches(rule(kind="ConfigMap"), core)
    assert not ignore.matches(rule(kind="Deployment"), WEB)  # empty group: core only
    assert ignore.matches(rule(group="apps", kind="Deployment"), WEB)
    assert ignore.matches(rule(group="*", kind="*"), WEB)
    assert ignore.matches(rule(group="*.k8s.io", kind="*Webhook*"), manifests.Key(
        group="admissionregistration.k8s.io",
        kind="MutatingWebhookConfiguration",
        namespace="",
        name="w",
    ))  # fmt: skip
    assert not ignore.matches(rule(group="apps", kind="Deployment", name="api"), WEB)
    assert not ignore.matches(rule(group="apps", kind="Deployment", namespace="dev"), WEB)
    assert ignore.matches(rule(group="apps", kind="Deployment", name="web", namespace="shop"), WEB)
    assert not ignore.matching([rule(group="apps", kind="StatefulSet")], WEB)


def test_pointer_escapes_follow_rfc_6901() -> None:
    assert ignore.parse_pointer("/metadata/annotations/a~1b~0c") == (
        "metadata",
        "annotations",
        "a/b~c",
    )
    with pytest.raises(ValueError, match="starts with '/'"):
        ignore.parse_pointer("spec/replicas")
    with pytest.raises(ValueError, match="~0 is '~'"):
        ignore.parse_pointer("/a~2b")


# --- strip: what is compared ------------------------------------------------------------


def test_pointer_removes_the_field_and_a_missing_path_is_a_no_op() -> None:
    rules = ignore.matching(
        [rule(group="apps", kind="Deployment", json_pointers=["/spec/replicas", "/spec/nope/x"])],
        WEB,
    )
    obj = pod(APP)
    out = ignore.strip(obj, rules, live=None)
    assert "replicas" not in out["spec"]
    assert out["spec"]["template"] == obj["spec"]["template"]
    assert obj["spec"]["replicas"] == 2  # the input is left alone


def test_pointer_with_escaped_key_and_list_index() -> None:
    obj = pod(APP, SIDECAR)
    obj["metadata"]["annotations"] = {"example.com/hash": "1", "keep": "2"}
    rules = ignore.matching(
        [
            rule(
                group="apps",
                kind="Deployment",
                json_pointers=[
                    "/metadata/annotations/example.com~1hash",
                    "/spec/template/spec/containers/1/image",
                ],
            )
        ],
        WEB,
    )
    out = ignore.strip(obj, rules, live=None)
    assert out["metadata"]["annotations"] == {"keep": "2"}
    assert out["spec"]["template"]["spec"]["containers"] == [APP, {"name": "istio-proxy"}]


def test_jq_path_selects_a_container_by_name() -> None:
    expr = '.spec.template.spec.containers[] | select(.name == "istio-proxy")'
    rules = ignore.matching(
        [rule(group="apps", kind="Deployment", jq_path_expressions=[expr])], WEB
    )
    assert ignore.strip(pod(SIDECAR, APP), rules, live=None)["spec"]["template"]["spec"][
        "containers"
    ] == [APP]
    # the same rule on an object without containers, or without that one: nothing removed
    assert ignore.strip(pod(APP), rules, live=None) == pod(APP)
    bare = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    assert ignore.strip(bare, rules, live=None) == bare


def test_jq_that_is_not_a_path_expression_ignores_nothing() -> None:
    rules = ignore.matching(
        [rule(group="apps", kind="Deployment", jq_path_expressions=[".spec.replicas | tostring"])],
        WEB,
    )
    assert ignore.strip(pod(APP), rules, live=None) == pod(APP)


# Runs in a child (with an address-space cap) so that a hang is a failed test, not a stuck run.
_HOSTILE_JQ_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from fleetops.agent import ignore
from fleetops.proto.v1 import types_pb2
from tests.agent import test_ignore as t
rules = ignore.matching([t.rule(group="apps", kind="Deployment", json_pointers=["/spec/replicas"],
    jq_path_expressions=[sys.argv[1], '.spec.template.spec.containers[] | .image'])], t.WEB)
took = []
for _ in range(2):
    started = time.monotonic()
    out = ignore.strip(t.pod(t.APP), rules, live=None)
    took.append(time.monotonic() - started)
print(json.dumps({"took": took, "out": out}))
"""


@pytest.mark.parametrize(
    "expr", ["def f: f; f", "repeat(.)", "limit(100000000; repeat(.))", "[range(1e12)] | .[0]"]
)
def test_a_jq_expression_that_never_ends_cannot_hang_the_agent(expr: str) -> None:
    """hub.yaml jqPathExpressions run on every drift check of a matching object: one that
    never finishes hit a bound, ignores nothing, and the rule's other paths still apply."""
    try:
        res = subprocess.run(
            [sys.executable, "-c", _HOSTILE_JQ_CHILD, expr],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=pathlib.Path(__file__).resolve().parents[2],
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{expr!r}: the drift check never returned (the agent would hang)")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    first, again = out["took"]
    assert first < ignore.JQ_TIME_LIMIT + 3, out["took"]
    assert again < 0.5, out["took"]  # not run again for the next object
    want = pod({"name": "app"})
    del want["spec"]["replicas"]
    assert out["out"] == want


def managed(*entries: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"manager": m, "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": f}
        for m, f in entries
    ]


def test_managed_fields_managers_owned_leaves_and_list_items() -> None:
    live = pod(APP, SIDECAR, replicas=5)
    live["metadata"]["labels"] = {"team": "a", "injected": "yes"}
    live["metadata"]["managedFields"] = managed(
        ("fleetops", {"f:spec": {"f:replicas": {}}}),
        ("kube-controller-manager", {"f:spec": {"f:replicas": {}}}),
        (
            "istio-injector",
            {
                "f:metadata": {"f:labels": {".": {}, "f:injected": {}}},
                "f:spec": {
                    "f:template": {
                        "f:spec": {
                            "f:containers": {
                                'k:{"name":"istio-proxy"}': {".": {}, "f:image": {}, "f:name": {}}
                            }
                        }
                    }
                },
            },
        ),
    )
    rules = ignore.matching(
        [
            rule(
                group="apps",
                kind="Deployment",
                managed_fields_managers=["istio-injector", "kube-controller-manager"],
            )
        ],
        WEB,
    )
    desired = pod(APP, replicas=2)
    desired["metadata"]["labels"] = {"team": "a"}
    got_live, got_desired = (
        ignore.strip(live, rules, live=live),
        ignore.strip(desired, rules, live=live),
    )
    # the injector's label and container, and the replicas the controller owns, are gone;
    # the label map itself stays (its other keys are still compared)
    assert got_live["metadata"]["labels"] == {"team": "a"}
    assert got_live["spec"]["template"]["spec"]["containers"] == [APP]
    assert "replicas" not in got_live["spec"] and "replicas" not in got_desired["spec"]
    assert got_desired["spec"]["template"] == desired["spec"]["template"]


def test_a_manager_not_named_is_compared() -> None:
    live = pod(APP, replicas=5)
    live["metadata"]["managedFields"] = managed(("kubectl", {"f:spec": {"f:replicas": {}}}))
    rules = ignore.matching(
        [rule(group="apps", kind="Deployment", managed_fields_managers=["hpa"])], WEB
    )
    assert ignore.strip(live, rules, live=live)["spec"]["replicas"] == 5


# --- respect: what is applied -----------------------------------------------------------


def test_respect_takes_live_values_only_where_desired_sets_them() -> None:
    live = pod(SIDECAR, {**APP, "image": "registry.local/app:2", "resources": {}}, replicas=5)
    live["status"] = {"replicas": 5}
    rules = ignore.matching(
        [
            rule(
                group="apps",
                kind="Deployment",
                json_pointers=["/spec/replicas", "/status"],
                jq_path_expressions=['.spec.template.spec.containers[] | select(.name == "app")'],
            )
        ],
        WEB,
    )
    desired = pod(APP)
    before = copy.deepcopy(desired)
    out = ignore.respect(desired, live, rules)
    assert out["spec"]["replicas"] == 5
    # the container is found by name although live holds an injected one before it, and
    # only the fields Git sets are taken: no `resources`, no sidecar, no status
    assert out["spec"]["template"]["spec"]["containers"] == [
        {"name": "app", "image": "registry.local/app:2"}
    ]
    assert "status" not in out
    assert desired == before


def test_respect_without_live_object_applies_the_full_desired_object() -> None:
    rules = ignore.matching(
        [rule(group="apps", kind="Deployment", json_pointers=["/spec/replicas"])], WEB
    )
    assert ignore.respect(pod(APP), None, rules) == pod(APP)


def test_respect_drops_a_field_live_does_not_have() -> None:
    desired = pod(APP)
    desired["metadata"]["annotations"] = {"a": "1"}
    live = pod(APP)
    rules = ignore.matching(
        [rule(group="apps", kind="Deployment", json_pointers=["/metadata/annotations/a"])], WEB
    )
    assert ignore.respect(desired, live, rules)["metadata"]["annotations"] == {}


def test_respect_of_a_whole_object_keeps_its_identity() -> None:
    live = pod(APP, replicas=7)
    live["metadata"]["resourceVersion"] = "42"
    rules = ignore.matching([rule(group="apps", kind="Deployment", whole_object=True)], WEB)
    out = ignore.respect(pod(APP), live, rules)
    assert out["metadata"] == {"name": "web", "namespace": "shop"}
    assert out["spec"]["replicas"] == 7


# --- on a real cluster ------------------------------------------------------------------


def replicas_rule(**kw: Any) -> types_pb2.IgnoreRule:
    return types_pb2.IgnoreRule(group="apps", kind="Deployment", **kw)


def only(result: st.AppResult, name: str) -> st.ResourceResult:
    [found] = [r for r in result.resources if r.key.name == name]
    return found


async def replicas(cluster: kube.Kube, ns: str) -> int:
    live = await cluster.get(DEPLOY, namespace=ns, name="web")
    assert live is not None
    return int(live["spec"]["replicas"])


@pytest.mark.parametrize(
    "ignored",
    [
        pytest.param(replicas_rule(json_pointers=["/spec/replicas"]), id="jsonPointers"),
        pytest.param(replicas_rule(managed_fields_managers=["kubectl"]), id="managedFields"),
    ],
)
async def test_scaled_replicas_that_are_ignored_stay_synced_and_survive_heal_and_sync(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
    ignored: types_pb2.IgnoreRule,
) -> None:
    ns = unique_name
    bundle = make_bundle(namespace(ns), deployment("web", replicas=2))
    bundle.ignore_differences.append(ignored)
    await reconciler.sync(bundle, policy(self_heal=True))
    await kubectl(local_clusters[0], "-n", ns, "scale", "deployment/web", "--replicas=5")

    checked = await reconciler.check(bundle, policy(self_heal=True))
    assert checked.sync == st.SYNCED, checked.reason
    assert only(checked, "web").drift == ()
    healed = await reconciler.heal(bundle, policy(self_heal=True))
    assert healed.healed == 0 and await replicas(cluster, ns) == 5

    # a sync of a new revision (a Git change elsewhere in the object) keeps 5 as well
    changed = make_bundle(namespace(ns), deployment("web", replicas=2, minReadySeconds=3))
    changed.ignore_differences.append(ignored)
    synced = await reconciler.sync(changed, policy(self_heal=True))
    assert synced.sync == st.SYNCED, synced.reason
    live = await cluster.get(DEPLOY, namespace=ns, name="web")
    assert live is not None and live["spec"]["minReadySeconds"] == 3
    assert live["spec"]["replicas"] == 5


async def test_without_the_rule_scaled_replicas_are_drift_and_healed_to_git(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    bundle = make_bundle(namespace(ns), deployment("web", replicas=2))
    bundle.ignore_differences.append(
        replicas_rule(name="another", json_pointers=["/spec/replicas"])
    )
    await reconciler.sync(bundle, policy(self_heal=True))
    await kubectl(local_clusters[0], "-n", ns, "scale", "deployment/web", "--replicas=5")

    checked = await reconciler.check(bundle, policy(self_heal=True))
    assert [(f.path, f.live) for f in only(checked, "web").drift] == [("spec.replicas", "5")]
    healed = await reconciler.heal(bundle, policy(self_heal=True))
    assert healed.healed == 1 and await replicas(cluster, ns) == 2


async def test_jq_rule_ignores_one_containers_image_and_not_the_others(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    web = deployment(
        "web",
        pod={
            "containers": [
                {"name": "app", "image": "registry.local/app:1"},
                {"name": "proxy", "image": "registry.local/proxy:1"},
            ]
        },
    )
    bundle = make_bundle(namespace(ns), web)
    bundle.ignore_differences.append(
        replicas_rule(
            jq_path_expressions=[
                '.spec.template.spec.containers[] | select(.name == "proxy") | .image'
            ]
        )
    )
    await reconciler.sync(bundle, policy(self_heal=True))
    await kubectl(
        local_clusters[0],
        "-n",
        ns,
        "set",
        "image",
        "deployment/web",
        "proxy=registry.local/proxy:9",
    )
    checked = await reconciler.check(bundle, policy(self_heal=True))
    assert checked.sync == st.SYNCED, checked.reason
    await reconciler.heal(bundle, policy(self_heal=True))

    await kubectl(
        local_clusters[0], "-n", ns, "set", "image", "deployment/web", "app=registry.local/app:9"
    )
    drifted = await reconciler.check(bundle, policy(self_heal=True))
    paths = [f.path for f in only(drifted, "web").drift]
    assert paths == ["spec.template.spec.containers[name=app].image"], paths
    await reconciler.heal(bundle, policy(self_heal=True))
    live = await cluster.get(DEPLOY, namespace=ns, name="web")
    assert live is not None
    images = {c["name"]: c["image"] for c in live["spec"]["template"]["spec"]["containers"]}
    assert images == {"app": "registry.local/app:1", "proxy": "registry.local/proxy:9"}


async def test_whole_object_rule_is_always_in_sync(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    bundle = make_bundle(namespace(ns), deployment("web", replicas=2))
    bundle.ignore_differences.append(replicas_rule(name="web", whole_object=True))
    await reconciler.sync(bundle, policy(self_heal=True))
    await kubectl(local_clusters[0], "-n", ns, "scale", "deployment/web", "--replicas=4")
    healed = await reconciler.heal(bundle, policy(self_heal=True))
    assert healed.sync == st.SYNCED and healed.healed == 0, healed.reason
    assert await replicas(cluster, ns) == 4


async def test_ignored_field_owned_by_another_manager_is_no_conflict_without_force(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    """With forceConflicts off, Git's replicas would conflict with kubectl's; ignored, the
    dry-run and the sync send kubectl's value, so there is neither conflict nor drift."""
    ns = unique_name
    no_force = policy(self_heal=True, force_conflicts=False)
    bundle = make_bundle(namespace(ns), deployment("web", replicas=2))
    bundle.ignore_differences.append(replicas_rule(json_pointers=["/spec/replicas"]))
    await reconciler.sync(bundle, no_force)
    await kubectl(local_clusters[0], "-n", ns, "scale", "deployment/web", "--replicas=5")
    checked = await reconciler.check(bundle, no_force)
    assert checked.sync == st.SYNCED, checked.reason
    changed = make_bundle(namespace(ns), deployment("web", replicas=2, minReadySeconds=2))
    changed.ignore_differences.append(replicas_rule(json_pointers=["/spec/replicas"]))
    synced = await reconciler.sync(changed, no_force)
    assert synced.sync == st.SYNCED, synced.reason
    assert await replicas(cluster, ns) == 5

    # the same bundle without the rule: Git's 2 conflicts with kubectl's 5, and says so
    plain = make_bundle(namespace(ns), deployment("web", replicas=2, minReadySeconds=2))
    conflicted = await reconciler.check(plain, no_force)
    assert only(conflicted, "web").conflict_manager == "kubectl", conflicted.reason
