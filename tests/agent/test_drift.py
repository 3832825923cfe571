"""Drift detection through server-side dry-run, self-heal, and no writes when nothing drifted."""

from __future__ import annotations

import asyncio
import subprocess

from fleetops.agent import kube, reconcile
from fleetops.agent import status as st
from tests import localkube
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, deployment, namespace, policy

DEPLOY = kube.ResourceType(
    group="apps", version="v1", kind="Deployment", plural="deployments", namespaced=True
)
CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
SECRET = kube.ResourceType(group="", version="v1", kind="Secret", plural="secrets", namespaced=True)


async def kubectl(cluster: localkube.LocalCluster, *args: str) -> None:
    await asyncio.to_thread(
        subprocess.run,
        [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args],
        check=True,
        capture_output=True,
    )


def only(result: st.AppResult, name: str) -> st.ResourceResult:
    [found] = [r for r in result.resources if r.key.name == name]
    return found


async def test_scaled_deployment_is_reported_and_self_healed(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    bundle = make_bundle(namespace(ns), deployment("web", replicas=2))
    await reconciler.sync(bundle, policy(self_heal=True))
    await kubectl(local_clusters[0], "-n", ns, "scale", "deployment/web", "--replicas=5")

    checked = await reconciler.check(bundle, policy(self_heal=True))
    web = only(checked, "web")
    assert web.sync == st.OUT_OF_SYNC
    assert [(f.path, f.desired, f.live) for f in web.drift] == [("spec.replicas", "2", "5")]
    assert checked.sync == st.OUT_OF_SYNC and "spec.replicas" in checked.reason
    report = st.to_report(checked)  # what goes to the hub
    [web_report] = [r for r in report.resources if r.ref.name == "web"]
    assert web_report.ref.kind == "Deployment" and web_report.ref.group == "apps"
    assert [(d.path, d.desired, d.live) for d in web_report.drift] == [("spec.replicas", "2", "5")]
    assert report.drifted_resources == 1

    healed = await reconciler.heal(bundle, policy(self_heal=True))
    assert healed.healed == 1
    assert only(healed, "web").action == "healed"
    live = await cluster.get(DEPLOY, namespace=ns, name="web")
    assert live is not None and live["spec"]["replicas"] == 2
    after = await reconciler.check(bundle, policy(self_heal=True))
    assert after.sync == st.SYNCED, after.reason


async def test_without_self_heal_drift_is_reported_and_left_alone(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    bundle = make_bundle(namespace(ns), deployment("web", replicas=1))
    await reconciler.sync(bundle, policy())
    await kubectl(local_clusters[0], "-n", ns, "scale", "deployment/web", "--replicas=3")
    writes = cluster.writes()
    result = await reconciler.heal(bundle, policy(self_heal=False))
    assert [f.path for f in only(result, "web").drift] == ["spec.replicas"]
    assert result.healed == 0
    assert cluster.writes() == writes, "the agent wrote although self-heal is off"
    live = await cluster.get(DEPLOY, namespace=ns, name="web")
    assert live is not None and live["spec"]["replicas"] == 3


async def test_nothing_drifted_means_no_write_requests(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    objs = [namespace(unique_name)] + [configmap(f"cm-{i}", k=str(i)) for i in range(30)]
    bundle = make_bundle(*objs)
    await reconciler.sync(bundle, policy(self_heal=True))
    writes = cluster.writes()
    first = await reconciler.heal(bundle, policy(self_heal=True))
    assert first.sync == st.SYNCED, first.reason
    dry_runs = cluster.requests["PATCH(dry-run)"]
    second = await reconciler.heal(bundle, policy(self_heal=True))
    assert second.sync == st.SYNCED, second.reason
    assert cluster.writes() == writes, f"no-op resyncs wrote: {cluster.requests}"
    # unchanged objects (same resourceVersion, same Git) are not even dry-run again
    assert cluster.requests["PATCH(dry-run)"] == dry_runs


async def test_deleted_object_is_missing_then_recreated(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    bundle = make_bundle(namespace(ns), configmap("settings", level="info"))
    await reconciler.sync(bundle, policy(self_heal=True))
    await cluster.delete(CM, namespace=ns, name="settings")
    checked = await reconciler.check(bundle, policy(self_heal=True))
    gone = only(checked, "settings")
    assert gone.sync == st.OUT_OF_SYNC and gone.health is not None and gone.health.name == "Missing"
    await reconciler.heal(bundle, policy(self_heal=True))
    live = await cluster.get(CM, namespace=ns, name="settings")
    assert live is not None and live["data"] == {"level": "info"}


async def test_a_deleted_namespace_is_recreated_with_its_objects(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    # The app's namespace is not in the bundle (the hub's `namespace:`), and someone deletes it.
    ns = unique_name
    bundle = make_bundle(configmap("settings", level="info"))
    synced = await reconciler.sync(bundle, policy(self_heal=True))
    assert synced.sync == st.SYNCED, synced.reason
    await kubectl(local_clusters[0], "delete", "namespace", ns, "--wait=true", "--timeout=60s")
    healed = await reconciler.reconcile(bundle, policy(self_heal=True))
    assert healed.sync == st.SYNCED, healed.reason
    live = await cluster.get(CM, namespace=ns, name="settings")
    assert live is not None and live["data"] == {"level": "info"}


async def test_secret_drift_names_the_field_but_never_the_value(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db"},
        "type": "Opaque",
        "stringData": {"password": "git-password-1"},
    }
    bundle = make_bundle(namespace(ns), secret)
    await reconciler.sync(bundle, policy())
    live = await cluster.get(SECRET, namespace=ns, name="db")
    assert live is not None
    live["data"]["password"] = "bGl2ZS1wYXNzd29yZC0y"  # "live-password-2"
    await cluster.replace(SECRET, live)
    result = await reconciler.check(bundle, policy())
    drifted = only(result, "db").drift
    assert [f.path for f in drifted] == ["data.password"]
    assert all(f.desired == f.live == "<redacted>" for f in drifted)
    text = repr(result)
    for leaked in (
        "git-password-1",
        "Z2l0LXBhc3N3b3JkLTE",
        "bGl2ZS1wYXNzd29yZC0y",
        "live-password-2",
    ):
        assert leaked not in text
