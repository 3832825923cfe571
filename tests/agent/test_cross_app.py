"""One app cannot take over another app's objects: a hostile commit to app B that lists app
A's ConfigMap is refused by name, A's object keeps A's content, and B dropping it later prunes
nothing of A's (a real cluster, c1; each test has an agent namespace of its own)."""

from __future__ import annotations

from fleetops.agent import kube, reconcile
from fleetops.agent import status as st
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, namespace, policy

CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)


async def test_an_app_cannot_take_over_and_then_prune_another_apps_object(
    cluster: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    rec = reconcile.Reconciler(
        cluster,
        reconcile.Options(
            wave_timeout=60, poll_interval=0.3, inventory_namespace=f"{unique_name}-agent"
        ),
    )
    a = await rec.sync(
        make_bundle(namespace(unique_name), configmap("settings", owner="a"), app="app-a"),
        policy(),
    )
    assert not a.failed
    b = await rec.sync(
        make_bundle(
            namespace(unique_name),  # a shared Namespace is allowed
            configmap("settings", owner="b"),
            configmap("b-own"),
            app="app-b",
        ),
        policy(),
    )
    refusals = {r.key.name: r for r in b.resources if r.action == "refused"}
    assert set(refusals) == {"settings"}
    assert refusals["settings"].sync == st.APPLY_FAILED
    assert "belongs to app app-a" in refusals["settings"].message
    live = await cluster.get(CM, namespace=unique_name, name="settings")
    assert live is not None and live["data"] == {"owner": "a"}
    assert await cluster.get(CM, namespace=unique_name, name="b-own") is not None

    await rec.sync(make_bundle(namespace(unique_name), configmap("b-own"), app="app-b"), policy())
    live = await cluster.get(CM, namespace=unique_name, name="settings")
    assert live is not None and live["data"] == {"owner": "a"}, "app B pruned app A's object"
