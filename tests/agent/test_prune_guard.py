"""The blast radius of a prune, on a real cluster (c1): a Namespace that holds what fleetops did
not apply is not deleted (unless the Namespace says `fleetops.io/prune-namespace: force`), and a
commit that would prune more than the app's maxPrunePercent is held until an operator allows it,
through the agent's own loop as the hub's assignment arrives."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

from fleetops.agent import credentials, kube, reconcile, runner, state
from fleetops.agent import status as st
from fleetops.proto import bundles
from fleetops.proto.v1 import agent_pb2, types_pb2
from tests import localkube
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, deployment, namespace, policy
from tests.support import wait
from tests.support.kubectl_run import kubectl

CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
NS = kube.ResourceType(
    group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False
)
PODS = kube.ResourceType(group="", version="v1", kind="Pod", plural="pods", namespaced=True)
PVCS = kube.ResourceType(
    group="",
    version="v1",
    kind="PersistentVolumeClaim",
    plural="persistentvolumeclaims",
    namespaced=True,
)


def in_ns(obj: dict[str, Any], ns: str) -> dict[str, Any]:
    obj["metadata"]["namespace"] = ns
    return obj


def two_namespaces(ns: str, *inside: dict[str, Any]) -> list[dict[str, Any]]:
    """An app with a namespace `ns` (holding `inside`) and the namespace of `the_rest`: dropping
    `ns` alone stays under the mass-prune hold."""
    return [namespace(ns), *(in_ns(o, ns) for o in inside), *the_rest(ns)]


def the_rest(ns: str) -> list[dict[str, Any]]:
    """What the app keeps when the commit drops `ns`: a namespace `ns`-keep, three ConfigMaps."""
    keep = f"{ns}-keep"
    return [namespace(keep), *(configmap(f"k{i}", keep) for i in range(3))]


async def gone_or_going(cluster: kube.Kube, ns: str) -> bool:
    live = await cluster.get(NS, namespace="", name=ns)
    return live is None or bool(live["metadata"].get("deletionTimestamp"))


# ---------------------------------------------------------------- Namespace prune


async def test_a_namespace_holding_someone_elses_secret_is_not_pruned(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    full = make_bundle(*two_namespaces(ns, configmap("settings"), deployment("web")))
    await reconciler.sync(full, policy())
    assert (await reconciler.wait_healthy(full, policy(), within=60)).health == st.health.HEALTHY
    # someone keeps a database password there, by hand
    await kubectl(
        local_clusters[0],
        "create",
        "secret",
        "generic",
        "db-password",
        "-n",
        ns,
        "--from-literal=password=hunter2-never-in-a-report",
    )

    result = await reconciler.sync(
        make_bundle(*the_rest(ns), revision="r2"), policy()
    )  # the commit drops the namespace and what the app had in it

    assert not await gone_or_going(cluster, ns), "the namespace holding the Secret was deleted"
    (kept,) = [r for r in result.resources if r.key.kind == "Namespace" and r.key.name == ns]
    assert kept.sync == st.OUT_OF_SYNC and kept.action == "kept"
    assert kept.message.startswith(
        f"left in place: Namespace {ns} still holds objects fleetops did not apply for this app: "
        f"Secret {ns}/db-password. "
    ), kept.message
    assert f"kubectl annotate namespace {ns} fleetops.io/prune-namespace=force" in kept.message
    # what the app itself had there went; its Pods are not someone else's objects
    assert {r.key.name for r in result.resources if r.action == "pruned"} == {"settings", "web"}
    assert "hunter2" not in str(st.to_report(result))


async def test_the_force_annotation_lets_a_namespace_go_with_everything_inside(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    await reconciler.sync(make_bundle(*two_namespaces(ns, configmap("settings"))), policy())
    await kubectl(local_clusters[0], "create", "configmap", "by-hand", "-n", ns)
    await kubectl(
        local_clusters[0], "annotate", "namespace", ns, "fleetops.io/prune-namespace=force"
    )

    result = await reconciler.sync(make_bundle(*the_rest(ns), revision="r2"), policy())

    assert await gone_or_going(cluster, ns)
    (pruned,) = [r for r in result.resources if r.key.kind == "Namespace" and r.key.name == ns]
    assert pruned.action == "pruned"
    assert pruned.message == "pruned with everything inside (fleetops.io/prune-namespace: force)"


async def test_a_namespace_holding_only_what_the_app_made_is_pruned(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    labels = {"app": "db"}
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 1,
            "serviceName": "db",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "db",
                            "image": "registry.local/db:1",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ]
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }
    await reconciler.sync(
        make_bundle(*two_namespaces(ns, deployment("web"), statefulset)), policy()
    )
    # Kubernetes made a Pod for the Deployment, a claim for the StatefulSet (with no owner),
    # a `default` ServiceAccount and the kube-root-ca.crt ConfigMap: none of them is foreign.
    await wait.until("the Deployment's Pod", lambda: cluster.list(PODS, ns), within=60)
    await wait.until("the StatefulSet's claim", lambda: cluster.list(PVCS, ns), within=60)
    assert await cluster.get(CM, namespace=ns, name="kube-root-ca.crt") is not None

    result = await reconciler.sync(make_bundle(*the_rest(ns), revision="r2"), policy())

    (pruned,) = [r for r in result.resources if r.key.kind == "Namespace" and r.key.name == ns]
    assert pruned.action == "pruned", pruned.message
    assert await gone_or_going(cluster, ns)


# ---------------------------------------------------------------- mass prune


def ten_objects(*, keep: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An app of a Namespace and nine ConfigMaps, and the next commit keeping `keep` of them
    plus a new one."""
    cms = [configmap(f"c{i}") for i in range(9)]
    return cms, cms[:keep] + [configmap("new")]


async def names(cluster: kube.Kube, ns: str) -> set[str]:
    return {o["metadata"]["name"] for o in await cluster.list(CM, ns)} - {"kube-root-ca.crt"}


async def test_a_commit_pruning_most_of_an_app_is_held(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    ns = unique_name
    rec = reconcile.Reconciler(
        cluster, reconcile.Options(inventory_namespace="fleetops-test", cluster="c1")
    )
    before, after = ten_objects(keep=3)
    await rec.sync(make_bundle(namespace(ns), *before), policy())

    held = await rec.sync(make_bundle(namespace(ns), *after, revision="r2"), policy())

    assert await names(cluster, ns) == {f"c{i}" for i in range(9)} | {"new"}
    assert held.sync == st.OUT_OF_SYNC and held.prune_held
    assert held.reason == (
        "prune held: would delete 6 of 10 objects (60% > 50%); allow with "
        f"`fleetops-hub sync {ns} --cluster c1 --allow-mass-prune`"
    )
    report = st.to_report(held)
    assert report.prune_held and report.reason == held.reason
    left = {r.ref.name: r.message for r in report.resources if r.sync == st.OUT_OF_SYNC}
    assert left["c8"] == "not pruned: prune held, it would delete 6 of 10 objects (60% > 50%)"


async def test_a_held_prune_waits_for_the_allowance_then_prunes(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    before, after = ten_objects(keep=3)
    await reconciler.sync(make_bundle(namespace(ns), *before), policy())
    bundle = make_bundle(namespace(ns), *after, revision="r2")
    await reconciler.sync(bundle, policy())
    # the agent's loop comes back on every resync: the hold stands, and nothing is rewritten
    writes = cluster.writes()
    again = await reconciler.reconcile(bundle, policy())
    assert again.prune_held and len(await names(cluster, ns)) == 10
    assert cluster.writes() == writes, f"a held resync wrote: {cluster.requests}"

    allowed = await reconciler.reconcile(bundle, policy(), allow_mass_prune=True)

    assert allowed.sync == st.SYNCED and not allowed.prune_held, allowed.reason
    assert await names(cluster, ns) == {"c0", "c1", "c2", "new"}


async def test_a_prune_at_the_limit_goes_ahead(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    before, after = ten_objects(keep=4)  # 5 of 10 go: 50% is not more than 50%
    await reconciler.sync(make_bundle(namespace(ns), *before), policy())

    result = await reconciler.sync(make_bundle(namespace(ns), *after, revision="r2"), policy())

    assert result.sync == st.SYNCED and not result.prune_held, result.reason
    assert await names(cluster, ns) == {"c0", "c1", "c2", "c3", "new"}


async def test_the_hubs_allowance_on_a_new_generation_of_the_same_bundle_prunes(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    make_bundle: BundleFactory,
    unique_name: str,
    tmp_path: pathlib.Path,
) -> None:
    """The runner as the hub drives it: assignments arrive, the worker reconciles, reports go
    up. The identity is a stand-in (no hub connection is made): it only names the cluster."""
    ns = unique_name
    me = credentials.Identity(cluster="c1", key_pem=b"", cert_pem=b"", ca_pem=b"", agent_port=0)
    agent = runner.Runner(
        address="127.0.0.1:1",
        me=me,
        client=cluster,
        local=state.LocalState(tmp_path),
        options=reconcile.Options(inventory_namespace="fleetops-test", poll_interval=0.3),
        resync=600,
        labels={},
    )
    before, after = ten_objects(keep=3)

    async def assign(bundle: types_pb2.Bundle, generation: int, *, allow: bool) -> None:
        a = types_pb2.Assignment(
            app=ns,
            revision=bundle.revision,
            bundle_digest=bundles.digest(bundle),
            namespace=ns,
            policy=policy(),
            generation=generation,
            bundle=bundle,
            allow_mass_prune=allow,
        )
        # the bundle rides inside the assignment, so no download is needed
        await agent.hub.assignments(None, agent_pb2.Assignments(assignments=[a]))  # type: ignore[arg-type]

    def reported(generation: int) -> types_pb2.AppReport | None:
        report = agent.reports.get(ns)
        return report if report is not None and report.generation == generation else None

    worker = asyncio.create_task(agent.workers())
    try:
        await assign(make_bundle(namespace(ns), *before), 1, allow=False)
        await wait.until("the first report", lambda: reported(1), within=60)
        second = make_bundle(namespace(ns), *after, revision="r2")
        await assign(second, 2, allow=False)
        held = await wait.until("the held report", lambda: reported(2), within=60)
        assert held.prune_held and "--cluster c1 --allow-mass-prune" in held.reason

        await assign(second, 3, allow=True)  # same bundle, the operator's allowance

        done = await wait.until("the report after the allowance", lambda: reported(3), within=60)
        assert not done.prune_held and done.sync == st.SYNCED, done.reason
        assert await names(cluster, ns) == {"c0", "c1", "c2", "new"}
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


OPEN = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}


def widget_crd(group: str) -> dict[str, Any]:
    return {
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
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": OPEN}],
        },
    }


async def test_a_crd_whose_resources_are_not_all_the_apps_is_not_pruned(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    group = f"{unique_name}.example.com"
    crd = widget_crd(group)
    mine = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "mine"}}
    rec = reconcile.Reconciler(
        cluster,
        reconcile.Options(wave_timeout=60, poll_interval=0.3, inventory_namespace="fleetops-test"),
    )
    keep_all = policy(max_prune_percent=100)
    first = await rec.sync(make_bundle(namespace(unique_name), crd, mine, configmap("c")), keep_all)
    assert not first.failed, first.reason
    widgets = await cluster.resource_type(api_version=f"{group}/v1", kind="Widget")
    theirs = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "theirs", "namespace": unique_name},
    }
    await cluster.create(widgets, theirs)  # someone else's, by hand

    second = await rec.sync(make_bundle(namespace(unique_name), configmap("c")), keep_all)
    crd_result = next(r for r in second.resources if r.key.kind == "CustomResourceDefinition")
    assert crd_result.action == "kept"
    assert f"Widget.{group} {unique_name}/theirs" in crd_result.message
    assert (
        await cluster.get(widgets, namespace=unique_name, name="theirs") is not None
    )  # still there
    assert (
        await cluster.get(widgets, namespace=unique_name, name="mine") is None
    )  # the app's own went

    # the operator decides the other resources may go with it
    crds = await cluster.resource_type(
        api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
    )
    live_crd = await cluster.get(crds, namespace="", name=f"widgets.{group}")
    assert live_crd is not None
    live_crd["metadata"].setdefault("annotations", {})["fleetops.io/prune-namespace"] = "force"
    await cluster.replace(crds, live_crd)
    third = await rec.sync(
        make_bundle(namespace(unique_name), configmap("c"), revision="r3"), keep_all
    )
    pruned = {r.key.kind for r in third.resources if r.action == "pruned"}
    assert "CustomResourceDefinition" in pruned, [(r.key, r.message) for r in third.resources]
