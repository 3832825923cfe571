"""An app's bundle on a cluster writes its own objects and nothing else: the attacks of a hostile
commit against the agent's own namespace and other apps' inventories, on a real cluster (c1).

Each test gives the agent a namespace of its own (`<test>-agent`, where its inventories live)
so that what the attack reaches, or not, is this test's alone."""

from __future__ import annotations

import json

from fleetops.agent import guard, inventory, kube, manifests, reconcile
from fleetops.agent import status as st
from fleetops.proto.v1 import types_pb2
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, namespace, policy

CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
NS = kube.ResourceType(
    group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False
)
ROLE_BINDING = kube.ResourceType(
    group="rbac.authorization.k8s.io",
    version="v1",
    kind="RoleBinding",
    plural="rolebindings",
    namespaced=True,
)


def confined(cluster: kube.Kube, agent_ns: str) -> reconcile.Reconciler:
    return reconcile.Reconciler(
        cluster,
        reconcile.Options(wave_timeout=60, poll_interval=0.3, inventory_namespace=agent_ns),
    )


def refused(result: st.AppResult) -> dict[str, st.ResourceResult]:
    return {r.key.name: r for r in result.resources if r.action == "refused"}


async def test_objects_aimed_at_the_agents_namespace_are_refused_and_nothing_lands_there(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    agent_ns = f"{unique_name}-agent"
    rec = confined(cluster, agent_ns)
    # a commit that plants a ConfigMap and lets a ServiceAccount of its own read the agent's
    # identity Secret
    planted = configmap("planted", agent_ns, owner="attacker")
    grab = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "grab-identity", "namespace": agent_ns},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "admin",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": unique_name}],
    }
    result = await rec.sync(
        make_bundle(namespace(unique_name), configmap("mine"), planted, grab), policy()
    )

    assert await cluster.get(CM, namespace=agent_ns, name="planted") is None
    assert await cluster.get(ROLE_BINDING, namespace=agent_ns, name="grab-identity") is None
    assert await cluster.get(CM, namespace=unique_name, name="mine") is not None, (
        "the rest of the bundle"
    )
    report = {r.ref.name: r for r in st.to_report(result).resources}
    assert report["planted"].sync == st.APPLY_FAILED
    where, _, message = report["planted"].message.partition(": ")
    assert where.startswith("manifests.yaml:")  # the file and line that asked for it
    assert message == (
        f"refused: ConfigMap {agent_ns}/planted is in {agent_ns}, the fleetops "
        "agent's own namespace (app inventories and the agent's identity live there); an app may "
        "not write there: deploy it to another namespace"
    )
    assert f"RoleBinding.rbac.authorization.k8s.io {agent_ns}/grab-identity is in {agent_ns}" in (
        report["grab-identity"].message
    )


async def test_the_agents_namespace_object_is_refused(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    agent_ns = f"{unique_name}-agent"
    rec = confined(cluster, agent_ns)
    await rec.sync(make_bundle(namespace(unique_name), configmap("mine")), policy())  # makes it
    hijack = namespace(agent_ns)
    hijack["metadata"]["labels"] = {"pod-security.kubernetes.io/enforce": "privileged"}

    result = await rec.sync(
        make_bundle(namespace(unique_name), configmap("mine"), hijack, revision="r2"), policy()
    )

    assert set(refused(result)) == {agent_ns}
    assert f"Namespace {agent_ns} is the fleetops agent's own namespace" in result.reason
    live = await cluster.get(NS, namespace="", name=agent_ns)
    assert live is not None
    assert live["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


async def test_an_app_whose_default_namespace_is_the_agents_writes_nothing_there(
    cluster: kube.Kube, unique_name: str
) -> None:
    agent_ns = f"{unique_name}-agent"
    rec = confined(cluster, agent_ns)
    bundle = types_pb2.Bundle(app=unique_name, revision="r1", namespace=agent_ns)
    bundle.manifests.add(source="cm.yaml", yaml=json.dumps(configmap("no-namespace-given")))

    result = await rec.sync(bundle, policy())

    assert result.sync == st.APPLY_FAILED
    assert set(refused(result)) == {"no-namespace-given"}
    assert await cluster.get(CM, namespace=agent_ns, name="no-namespace-given") is None


async def test_rewriting_another_apps_inventory_is_refused_and_its_prune_deletes_only_its_own(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    agent_ns = f"{unique_name}-agent"
    rec = confined(cluster, agent_ns)
    victim, ns_victim, ns_third = f"{unique_name}-v", f"{unique_name}-v", f"{unique_name}-3"
    third = make_bundle(namespace(ns_third), configmap("precious", ns_third), app=ns_third)
    await rec.sync(third, policy())
    victim_bundle = make_bundle(
        namespace(ns_victim), configmap("a", ns_victim), configmap("b", ns_victim), app=victim
    )
    await rec.sync(victim_bundle, policy())

    # The attacker's app ships the victim's inventory, now also listing another app's object:
    # the victim's next prune would delete it.
    def entry(kind: str, ns: str, name: str) -> dict[str, str]:
        return {"group": "", "version": "v1", "kind": kind, "namespace": ns, "name": name}

    forged = {
        "app": victim,
        "revision": "r1",
        "bundleDigest": "",
        "resources": [
            entry("Namespace", "", ns_victim),
            entry("ConfigMap", ns_victim, "a"),
            entry("ConfigMap", ns_victim, "b"),
            entry("ConfigMap", ns_third, "precious"),
        ],
    }
    forged_cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": inventory.configmap_name(victim), "namespace": agent_ns},
        "data": {inventory.DATA_KEY: json.dumps(forged)},
    }
    attack = await rec.sync(make_bundle(namespace(unique_name), forged_cm), policy())
    assert set(refused(attack)) == {inventory.configmap_name(victim)}
    assert f"ConfigMap {agent_ns}/fleetops-inventory-{victim} is in {agent_ns}" in attack.reason

    pruned = await rec.sync(
        make_bundle(namespace(ns_victim), configmap("a", ns_victim), app=victim, revision="r2"),
        policy(),
    )
    assert pruned.sync == st.SYNCED, pruned.reason
    assert {r.key.name for r in pruned.resources if r.action == "pruned"} == {"b"}
    assert await cluster.get(CM, namespace=ns_third, name="precious") is not None
    assert await cluster.get(CM, namespace=ns_victim, name="a") is not None


async def test_an_object_posing_as_an_inventory_is_refused_in_any_namespace(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    rec = confined(cluster, f"{unique_name}-agent")
    poser = configmap("fleetops-inventory-other")
    poser["metadata"]["labels"] = {guard.INVENTORY_MARK: "true"}

    result = await rec.sync(make_bundle(namespace(unique_name), poser), policy())

    assert set(refused(result)) == {"fleetops-inventory-other"}
    assert "is marked as a fleetops inventory (fleetops.io/inventory)" in result.reason
    assert await cluster.get(CM, namespace=unique_name, name="fleetops-inventory-other") is None


async def test_prune_never_deletes_the_agents_namespace_nor_what_is_in_it(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    agent_ns = f"{unique_name}-agent"
    rec = confined(cluster, agent_ns)
    other = f"{unique_name}-other"
    await rec.inventories.save(app=other, revision="r1", bundle_digest="", entries=[])
    # An inventory written before apps were confined lists the agent's namespace and another
    # app's inventory as this app's own; both left the bundle since.
    bundle = make_bundle(namespace(unique_name), configmap("x"))
    await rec.sync(bundle, policy())
    listed = (await rec.inventories.load(unique_name)).entries  # type: ignore[union-attr]
    other_inventory = inventory.configmap_name(other)
    legacy = [
        inventory.Entry(
            manifests.Key(group="", kind="Namespace", namespace="", name=agent_ns), "v1"
        ),
        inventory.Entry(
            manifests.Key(group="", kind="ConfigMap", namespace=agent_ns, name=other_inventory),
            "v1",
        ),
    ]
    await rec.inventories.save(
        app=unique_name, revision="r0", bundle_digest="", entries=[*listed, *legacy]
    )

    result = await rec.sync(bundle, policy())

    live_ns = await cluster.get(NS, namespace="", name=agent_ns)
    assert live_ns is not None and not live_ns["metadata"].get("deletionTimestamp")
    assert await cluster.get(CM, namespace=agent_ns, name=other_inventory) is not None
    kept = {r.key.name: r.message for r in result.resources if r.action == "kept"}
    assert kept[agent_ns].startswith("not pruned, and no longer tracked by this app: Namespace")
    after = await rec.inventories.load(unique_name)
    assert after is not None and not {e.key for e in legacy} & after.keys()
