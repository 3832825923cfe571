"""The reconciler against a real cluster: create, update, prune, order, CRDs, conflicts,
bad manifests, inventory, health. Each test works in its own namespace of cluster c1."""

from __future__ import annotations

import asyncio
import json
import subprocess

from fleetops.agent import kube, reconcile
from fleetops.agent import status as st
from tests import localkube
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, deployment, namespace, policy
from tests.support import wait

CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
DEPLOY = kube.ResourceType(
    group="apps", version="v1", kind="Deployment", plural="deployments", namespaced=True
)


def by_name(result: st.AppResult) -> dict[str, st.ResourceResult]:
    return {r.key.name: r for r in result.resources}


async def test_create_update_and_prune(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    first = await reconciler.sync(
        make_bundle(namespace(ns), configmap("a", k="1"), configmap("b", k="1")), policy()
    )
    assert first.sync == st.SYNCED, first.reason
    assert {r.key.name: r.action for r in first.resources} == {
        ns: "applied",
        "a": "applied",
        "b": "applied",
    }
    # someone else's object in the same namespace
    await cluster.apply(CM, configmap("not-ours", ns, k="1"), force=True)

    second = await reconciler.sync(
        make_bundle(namespace(ns), configmap("a", k="2"), revision="r2"), policy()
    )
    assert second.sync == st.SYNCED, second.reason
    assert by_name(second)["b"].action == "pruned"
    live_a = await cluster.get(CM, namespace=ns, name="a")
    assert live_a is not None and live_a["data"] == {"k": "2"}
    assert await cluster.get(CM, namespace=ns, name="b") is None
    assert await cluster.get(CM, namespace=ns, name="not-ours") is not None, (
        "prune deleted an object it never applied"
    )


async def test_prune_off_keeps_and_reports_leftovers(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    await reconciler.sync(make_bundle(namespace(ns), configmap("a"), configmap("b")), policy())
    result = await reconciler.sync(
        make_bundle(namespace(ns), configmap("a"), revision="r2"), policy(prune=False)
    )
    assert await cluster.get(CM, namespace=ns, name="b") is not None
    left = by_name(result)["b"]
    assert left.sync == st.OUT_OF_SYNC and "prune is off" in left.message
    # prune turned on later still knows b came from this app
    result = await reconciler.sync(
        make_bundle(namespace(ns), configmap("a"), revision="r3"), policy()
    )
    assert by_name(result)["b"].action == "pruned"
    assert await cluster.get(CM, namespace=ns, name="b") is None


async def test_prune_protection_annotation(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    keep = configmap("keep")
    keep["metadata"]["annotations"] = {"fleetops.io/prune": "disabled"}
    await reconciler.sync(make_bundle(namespace(ns), keep, configmap("go")), policy())
    # 2 of 3 objects leave: past the mass-prune hold, which is not what this test is about
    result = await reconciler.sync(
        make_bundle(namespace(ns), revision="r2"), policy(max_prune_percent=100)
    )
    assert await cluster.get(CM, namespace=ns, name="keep") is not None
    assert "fleetops.io/prune: disabled" in by_name(result)["keep"].message
    assert await cluster.get(CM, namespace=ns, name="go") is None


async def test_empty_bundle_prunes_nothing_unless_allowed(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    await cluster.apply(
        kube.ResourceType(
            group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False
        ),
        namespace(ns),
        force=True,
    )
    await reconciler.sync(make_bundle(configmap("a"), configmap("b")), policy())
    empty = await reconciler.sync(make_bundle(revision="r2"), policy())
    assert "allowEmpty" in empty.reason
    assert (
        await cluster.get(CM, namespace=ns, name="a") is not None
        and await cluster.get(CM, namespace=ns, name="b") is not None
    )
    # an empty bundle prunes everything: past the mass-prune hold too (tests/agent/test_prune_guard)
    allowed = await reconciler.sync(
        make_bundle(revision="r3"), policy(allow_empty=True, max_prune_percent=100)
    )
    assert allowed.sync == st.SYNCED, allowed.reason
    assert (
        await cluster.get(CM, namespace=ns, name="a") is None
        and await cluster.get(CM, namespace=ns, name="b") is None
    )


async def test_crd_and_its_custom_resource_in_one_bundle(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    group = f"{unique_name}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "plural": "widgets",
                "singular": "widget",
                "kind": "Widget",
                "listKind": "WidgetList",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    widget = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    # the custom resource comes first in the file: order must not depend on the file
    result = await reconciler.sync(make_bundle(widget, crd, namespace(unique_name)), policy())
    assert result.sync == st.SYNCED, result.reason
    rt = await cluster.resource_type(api_version=f"{group}/v1", kind="Widget")
    live = await cluster.get(rt, namespace=unique_name, name="w1")
    assert live is not None and live["spec"]["size"] == 3


async def test_wave_waits_for_health_and_times_out_with_a_reason(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    ns = unique_name
    rec = reconcile.Reconciler(
        cluster,
        reconcile.Options(wave_timeout=3, poll_interval=0.3, inventory_namespace="fleetops-test"),
    )
    never_ready = deployment("stuck", pod={"nodeSelector": {"no-such-node": "true"}})
    never_ready["metadata"]["annotations"] = {"argocd.argoproj.io/sync-wave": "-1"}
    later = configmap("later")
    later["metadata"]["annotations"] = {"fleetops.io/sync-wave": "1"}
    result = await rec.sync(
        make_bundle(namespace(ns), never_ready, configmap("same-wave"), later), policy()
    )
    assert result.sync == st.APPLY_FAILED
    assert result.reason.startswith("wave -1 did not become healthy within 3 s: Deployment.apps")
    assert "stuck" in result.reason
    assert await cluster.get(CM, namespace=ns, name="later") is None, (
        "wave 1 was applied before wave -1 was healthy"
    )
    assert await cluster.get(CM, namespace=ns, name="same-wave") is None
    assert by_name(result)["later"].message.startswith("not applied: wave -1")


async def test_healthy_wave_opens_the_next(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    first = deployment("first")
    later = configmap("later")
    later["metadata"]["annotations"] = {"fleetops.io/sync-wave": "2"}
    result = await reconciler.sync(make_bundle(namespace(ns), first, later), policy())
    assert result.sync == st.SYNCED, result.reason
    live = await cluster.get(DEPLOY, namespace=ns, name="first")
    assert live is not None and live["status"].get("availableReplicas") == 1
    assert await cluster.get(CM, namespace=ns, name="later") is not None


async def test_deployment_goes_progressing_then_healthy(
    reconciler: reconcile.Reconciler, make_bundle: BundleFactory, unique_name: str
) -> None:
    bundle = make_bundle(namespace(unique_name), deployment("web", replicas=2))
    result = await reconciler.sync(bundle, policy())
    assert by_name(result)["web"].health is not None
    assert by_name(result)["web"].health.name == "Progressing"  # type: ignore[union-attr]
    assert result.health == st.health.PROGRESSING
    done = await reconciler.wait_healthy(bundle, policy(), within=60)
    assert done.health == st.health.HEALTHY, done.reason
    assert by_name(done)["web"].health.reason == "2 of 2 replicas available"  # type: ignore[union-attr]


async def test_conflict_with_another_manager_force_off_and_on(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    await reconciler.sync(make_bundle(namespace(ns)), policy())
    other = configmap("shared", ns, owner="other")
    await asyncio.to_thread(
        subprocess.run,
        [
            localkube.binary("kubectl"),
            f"--kubeconfig={local_clusters[0].kubeconfig}",
            "apply",
            "--server-side",
            "--field-manager=other-tool",
            "-f",
            "-",
        ],
        input=json.dumps(other),
        text=True,
        check=True,
        capture_output=True,
    )
    bundle = make_bundle(namespace(ns), configmap("shared", owner="git"), revision="r2")
    refused = await reconciler.sync(bundle, policy(force_conflicts=False))
    shared = by_name(refused)["shared"]
    assert shared.sync == st.APPLY_FAILED
    assert shared.conflict_manager == "other-tool"
    assert "other-tool" in shared.message and ".data.owner" in shared.message
    live = await cluster.get(CM, namespace=ns, name="shared")
    assert live is not None and live["data"]["owner"] == "other"

    forced = await reconciler.sync(bundle, policy(force_conflicts=True))
    assert by_name(forced)["shared"].sync == st.SYNCED, forced.reason
    live = await cluster.get(CM, namespace=ns, name="shared")
    assert live is not None and live["data"]["owner"] == "git"


async def test_bad_resources_fail_alone_and_stop_prune(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    await reconciler.sync(make_bundle(namespace(ns), configmap("old")), policy())
    no_name = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}, "data": {"a": "b"}}
    unknown_kind = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    unknown_field = configmap("typo")
    unknown_field["dataa"] = {"x": "y"}
    bundle = make_bundle(
        namespace(ns), configmap("good"), no_name, unknown_kind, unknown_field, revision="r2"
    )
    result = await reconciler.sync(bundle, policy())
    assert result.sync == st.APPLY_FAILED
    failed = {r.key.name: r.message for r in result.resources if r.failed}
    assert any("metadata.name" in m for m in failed.values()), failed
    assert "no kind Gadget in example.com/v1" in failed["g"]
    assert ".dataa: field not declared in schema" in failed["typo"]
    assert await cluster.get(CM, namespace=ns, name="good") is not None, (
        "a bad neighbour stopped a good resource"
    )
    assert await cluster.get(CM, namespace=ns, name="old") is not None, (
        "prune ran after a partial apply"
    )
    assert "not pruned" in by_name(result)["old"].message


async def test_inventory_survives_an_agent_restart(
    local_clusters: list[localkube.LocalCluster], make_bundle: BundleFactory, unique_name: str
) -> None:
    ns = unique_name
    opts = reconcile.Options(inventory_namespace="fleetops-test")
    first = kube.connect(str(local_clusters[0].kubeconfig))
    try:
        await reconcile.Reconciler(first, opts).sync(
            make_bundle(namespace(ns), configmap("a"), configmap("b")), policy()
        )
    finally:
        first.close()
    # a new process: nothing in memory, only what the cluster remembers
    second = kube.connect(str(local_clusters[0].kubeconfig))
    try:
        result = await reconcile.Reconciler(second, opts).sync(
            make_bundle(namespace(ns), configmap("a"), revision="r2"), policy()
        )
        assert by_name(result)["b"].action == "pruned"
        assert await second.get(CM, namespace=ns, name="b") is None
    finally:
        second.close()


async def test_default_namespace_only_on_namespaced_objects(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": f"{unique_name}-reader", "namespace": "should-be-ignored"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    }
    result = await reconciler.sync(
        make_bundle(namespace(unique_name), configmap("a"), role), policy()
    )
    assert result.sync == st.SYNCED, result.reason
    keys = {r.key.name: r.key.namespace for r in result.resources}
    assert keys == {unique_name: "", "a": unique_name, f"{unique_name}-reader": ""}
    rt = await cluster.resource_type(api_version="rbac.authorization.k8s.io/v1", kind="ClusterRole")
    assert await cluster.get(rt, namespace="", name=f"{unique_name}-reader") is not None


async def test_real_workloads_reach_the_health_a_user_expects(
    reconciler: reconcile.Reconciler, make_bundle: BundleFactory, unique_name: str
) -> None:
    labels = {"app": "db"}
    pod = {"containers": [{"name": "c", "image": "registry.local/c:1"}]}
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "node-agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "node-agent"}},
            "template": {"metadata": {"labels": {"app": "node-agent"}}, "spec": pod},
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate"},
        "spec": {"template": {"spec": {**pod, "restartPolicy": "Never"}}},
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    lb = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "public"},
        "spec": {"type": "LoadBalancer", "selector": labels, "ports": [{"port": 80}]},
    }
    bundle = make_bundle(namespace(unique_name), statefulset, daemonset, job, pvc, lb)
    await reconciler.sync(bundle, policy())

    want = {"db": "Healthy", "node-agent": "Healthy", "migrate": "Healthy"}
    seen: dict[str, str] = {}

    async def settled() -> st.AppResult | None:
        result = await reconciler.check(bundle, policy())
        seen.clear()
        seen.update({r.key.name: r.health.name for r in result.resources if r.health})
        return result if all(seen.get(k) == v for k, v in want.items()) else None

    result = await wait.until(
        "the StatefulSet, DaemonSet and Job healthy",
        settled,
        within=60,
        every=0.5,
        explain=lambda: f"healths: {seen}",
    )
    got = {r.key.name: r.health for r in result.resources if r.health}
    assert got["migrate"].reason == "the job completed"
    assert got["data"].name == "Progressing" and "waiting for a volume" in got["data"].reason
    assert got["public"].name == "Progressing" and "load balancer" in got["public"].reason
    assert result.health == st.health.PROGRESSING
    assert "waiting for" in result.reason
