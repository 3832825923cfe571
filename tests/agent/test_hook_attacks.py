"""Sync hooks written as attacks (review of issue 13, H1 and L6), against cluster c1.

A hook's delete policies (BeforeHookCreation is the default) delete the live object of the
hook's name. These tests name hooks like objects that are not the app's hooks: another app's
Namespace, a ConfigMap someone made with kubectl, another app's object, a CRD, the agent's own
ClusterRoleBinding. Each must survive untouched (same uid, same content, not terminating) and
the hook must fail with a reason that names the object and what to do. Each test works in its
own namespace(s)."""

from __future__ import annotations

from typing import Any

from fleetops.agent import kube, reconcile
from fleetops.agent import status as st
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, namespace, policy
from tests.agent.test_hooks import CM, by_name, hooked, presync

NS = kube.ResourceType(
    group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False
)
CRD = kube.ResourceType(
    group="apiextensions.k8s.io",
    version="v1",
    kind="CustomResourceDefinition",
    plural="customresourcedefinitions",
    namespaced=False,
)
CRB = kube.ResourceType(
    group="rbac.authorization.k8s.io",
    version="v1",
    kind="ClusterRoleBinding",
    plural="clusterrolebindings",
    namespaced=False,
)
MARK = "fleetops.io/hook-of"


def crd(plural: str, group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }


async def test_a_presync_hook_named_like_another_apps_namespace_leaves_it_alone(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    team_b = f"{unique_name}-b"
    b = await reconciler.sync(
        make_bundle(namespace(team_b), configmap("data", team_b, k="v"), app=team_b), policy()
    )
    assert b.sync == st.SYNCED, b.reason
    before = await cluster.get(NS, namespace="", name=team_b)
    assert before is not None

    hostile = presync(namespace(team_b))
    a = await reconciler.sync(make_bundle(namespace(unique_name), hostile), policy())

    after = await cluster.get(NS, namespace="", name=team_b)
    assert after is not None and after["metadata"]["uid"] == before["metadata"]["uid"]
    assert "deletionTimestamp" not in after["metadata"], "app B's namespace is being deleted"
    assert await cluster.get(CM, namespace=team_b, name="data") is not None
    assert a.sync != st.SYNCED
    got = by_name(a)[team_b]
    assert got.action == "refused", got.message
    assert "may not be a sync hook" in got.message and "deletes everything in it" in got.message


async def test_a_presync_hook_named_like_a_configmap_made_by_someone_else_leaves_it_alone(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    first = await reconciler.sync(make_bundle(namespace(ns)), policy())
    assert first.sync == st.SYNCED, first.reason
    # made with kubectl, say: no fleetops inventory lists it
    made = await cluster.create(CM, configmap("settings", ns, owner="someone-else"))

    result = await reconciler.sync(
        make_bundle(namespace(ns), presync(configmap("settings", k="hook")), configmap("app")),
        policy(),
    )

    live = await cluster.get(CM, namespace=ns, name="settings")
    assert live is not None and live["metadata"]["uid"] == made["metadata"]["uid"]
    assert live["data"] == {"owner": "someone-else"}, "the hook was applied over it"
    assert MARK not in (live["metadata"].get("annotations") or {})
    assert result.sync != st.SYNCED
    got = by_name(result)["settings"]
    assert got.action == "refused" and got.hook == "PreSync"
    assert f"exists and is not a hook of app {ns}" in got.message
    assert "rename the hook or delete the object" in got.message
    assert "settings" in result.reason, result.reason
    assert await cluster.get(CM, namespace=ns, name="app") is None, "the sync went on"


async def test_a_hook_deleted_only_on_success_never_takes_over_an_existing_object(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    first = await reconciler.sync(make_bundle(namespace(ns)), policy())
    assert first.sync == st.SYNCED, first.reason
    made = await cluster.create(CM, configmap("settings", ns, owner="someone-else"))
    hook = hooked(
        configmap("settings", k="hook"),
        **{"argocd.argoproj.io/hook": "PreSync", "helm.sh/hook-delete-policy": "hook-succeeded"},
    )

    result = await reconciler.sync(make_bundle(namespace(ns), hook), policy())

    live = await cluster.get(CM, namespace=ns, name="settings")
    assert live is not None and live["metadata"]["uid"] == made["metadata"]["uid"]
    assert live["data"] == {"owner": "someone-else"}
    assert result.sync != st.SYNCED
    assert "is not a hook of app" in by_name(result)["settings"].message


async def test_a_presync_hook_named_like_another_apps_object_leaves_it_alone(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    other = f"{unique_name}-b"
    b = await reconciler.sync(
        make_bundle(namespace(ns), configmap("shared", k="b"), app=other), policy()
    )
    assert b.sync == st.SYNCED, b.reason
    before = await cluster.get(CM, namespace=ns, name="shared")
    assert before is not None

    result = await reconciler.sync(make_bundle(presync(configmap("shared", k="a"))), policy())

    after = await cluster.get(CM, namespace=ns, name="shared")
    assert after is not None and after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["data"] == {"k": "b"}
    assert result.sync != st.SYNCED
    got = by_name(result)["shared"]
    assert got.action == "refused" and f"belongs to app {other}" in got.message


async def test_a_hook_named_like_another_apps_hook_leaves_it_alone(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    other = f"{unique_name}-b"
    b = await reconciler.sync(
        make_bundle(namespace(ns), presync(configmap("migrate", k="b")), app=other), policy()
    )
    assert b.sync == st.SYNCED, b.reason
    before = await cluster.get(CM, namespace=ns, name="migrate")
    assert before is not None and before["metadata"]["annotations"][MARK] == other

    result = await reconciler.sync(make_bundle(presync(configmap("migrate", k="a"))), policy())

    after = await cluster.get(CM, namespace=ns, name="migrate")
    assert after is not None and after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["data"] == {"k": "b"}
    assert result.sync != st.SYNCED
    assert by_name(result)["migrate"].action == "refused"


async def test_a_crd_hook_is_refused_and_the_crd_survives(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    group = f"{unique_name}.test.fleetops.io"
    existing = crd("widgets", group)
    made = await cluster.create(CRD, existing)
    try:
        hook = hooked(crd("widgets", group), **{"helm.sh/hook": "pre-install"})
        result = await reconciler.sync(make_bundle(namespace(unique_name), hook), policy())

        live = await cluster.get(CRD, namespace="", name=f"widgets.{group}")
        assert live is not None and live["metadata"]["uid"] == made["metadata"]["uid"]
        assert "deletionTimestamp" not in live["metadata"]
        assert result.sync != st.SYNCED
        got = by_name(result)[f"widgets.{group}"]
        assert got.action == "refused"
        assert "may not be a sync hook" in got.message
        assert "every resource of its kind" in got.message
    finally:
        await cluster.delete(CRD, namespace="", name=f"widgets.{group}")


async def test_a_hook_named_like_the_agents_cluster_role_binding_is_refused(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    name = f"{unique_name}-agent-cluster-admin"
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": unique_name}],
    }
    made = await cluster.create(CRB, binding)
    try:
        result = await reconciler.sync(
            make_bundle(namespace(unique_name), presync(dict(binding))), policy()
        )
        live = await cluster.get(CRB, namespace="", name=name)
        assert live is not None and live["metadata"]["uid"] == made["metadata"]["uid"]
        got = by_name(result)[name]
        assert got.action == "refused" and "may not be a sync hook" in got.message
    finally:
        await cluster.delete(CRB, namespace="", name=name)


async def test_an_ordinary_object_may_not_carry_the_hook_mark(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    forged = hooked(configmap("forged"), **{MARK: unique_name})
    result = await reconciler.sync(make_bundle(namespace(unique_name), forged), policy())
    assert await cluster.get(CM, namespace=unique_name, name="forged") is None
    got = by_name(result)["forged"]
    assert got.action == "refused" and MARK in got.message


async def test_two_apps_with_one_generate_name_in_one_namespace_both_run(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    first = await reconciler.sync(make_bundle(namespace(ns)), policy())
    assert first.sync == st.SYNCED, first.reason

    def seeded() -> dict[str, Any]:
        generated = presync(configmap("ignored"))
        del generated["metadata"]["name"]
        generated["metadata"]["generateName"] = "seed-"
        return generated

    names = []
    for app in (f"{ns}-x", f"{ns}-y"):  # one commit of a monorepo: the same revision
        result = await reconciler.sync(make_bundle(seeded(), app=app, revision="r1"), policy())
        assert result.sync == st.SYNCED, f"{app}: {result.reason}"
        names += [r.key.name for r in result.resources if r.key.name.startswith("seed-")]
    assert len(set(names)) == 2, f"both apps named their hook {names}"
    for name in names:
        assert await cluster.get(CM, namespace=ns, name=name) is not None, f"{name} never ran"


async def test_a_refused_hook_does_not_claim_the_object_from_another_app(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    first = await reconciler.sync(make_bundle(namespace(ns)), policy())
    assert first.sync == st.SYNCED, first.reason
    await cluster.create(CM, configmap("settings", ns, owner="someone-else"))
    hostile = await reconciler.sync(make_bundle(presync(configmap("settings"))), policy())
    assert by_name(hostile)["settings"].action == "refused"

    # the team that made it now manages it with fleetops: app A's refused hook is no claim
    adopt = await reconciler.sync(
        make_bundle(configmap("settings", owner="team-b"), app=f"{ns}-b"), policy()
    )
    assert adopt.sync == st.SYNCED, adopt.reason
    live = await cluster.get(CM, namespace=ns, name="settings")
    assert live is not None and live["data"] == {"owner": "team-b"}
