"""The agent's Kubernetes client and reconciler when the API server is not there for it: stopped
(connections refused and reset), hung (accepts and never answers), or refusing the agent (RBAC,
403). A real API server behind a TCP gate the test holds, and a real ServiceAccount with the
least-privilege install's RBAC. Every failure is an error of the agent's own naming the server
or the namespace, and a reconcile always ends in a result an operator can act on."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from fleetops.agent import errors, health, kube, reconcile
from fleetops.agent import status as st
from fleetops.proto.v1 import types_pb2
from tests import localkube
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, policy
from tests.support import agentrun, leastpriv, tcpgate, wait

pytestmark = pytest.mark.cluster


@pytest.fixture
def gate(local_clusters: list[localkube.LocalCluster]) -> Iterator[tcpgate.Gate]:
    with tcpgate.Gate(agentrun.apiserver(local_clusters[0].kubeconfig)) as g:
        yield g.open()


@pytest.fixture
async def gated(
    gate: tcpgate.Gate, local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path
) -> AsyncIterator[kube.Kube]:
    """An admin client of c1 whose every request goes through the gate."""
    path = agentrun.kubeconfig_via(local_clusters[0].kubeconfig, gate.port, tmp_path / "kc")
    client = kube.connect(str(path))  # the default timeouts: connect 5 s, read 30 s
    try:
        yield client
    finally:
        client.close()


async def test_a_stopped_api_server_is_an_error_naming_it(
    gate: tcpgate.Gate, gated: kube.Kube
) -> None:
    assert (await gated.server_version()).startswith("v")  # through the open gate
    gate.close()  # also resets the connection the client keeps alive
    with pytest.raises(errors.Unreachable) as e:
        await gated.server_version()
    assert str(e.value) == (
        f"cannot reach the Kubernetes API server at https://127.0.0.1:{gate.port}: "
        "connection refused"
    )
    gate.open()
    assert (await gated.server_version()).startswith("v")  # and back


async def test_a_hung_api_server_costs_one_timeout_not_a_hung_agent(
    gate: tcpgate.Gate, gated: kube.Kube
) -> None:
    gate.hang()
    started = time.monotonic()
    with pytest.raises(errors.Unreachable) as e:
        # the deadline is only there so that a client without timeouts fails instead of hanging
        await asyncio.wait_for(gated.server_version(), timeout=60)
    print(f"hung API server: an error after {time.monotonic() - started:.1f} s (connect 5 s)")
    assert f"https://127.0.0.1:{gate.port}: it accepted the connection but sent no answer" in str(
        e.value
    )


async def test_reconcile_with_the_api_server_gone_is_an_apply_failed_result(
    gate: tcpgate.Gate, gated: kube.Kube, make_bundle: BundleFactory, unique_name: str
) -> None:
    rec = reconcile.Reconciler(gated, reconcile.Options(inventory_namespace="fleetops-test"))
    gate.close()
    bundle = make_bundle(configmap("settings", level="info"))
    for attempt in (rec.reconcile, rec.check, rec.heal, rec.sync):
        result = await attempt(bundle, policy())
        assert result.sync == st.APPLY_FAILED and result.health == health.UNKNOWN, attempt
        assert result.reason.startswith(
            f"cannot reach the Kubernetes API server at https://127.0.0.1:{gate.port}: "
        )
        assert result.retry_soon and result.app == unique_name
    gate.open()
    result = await rec.reconcile(bundle, policy())
    assert result.sync == st.SYNCED and not result.retry_soon, result.reason


@pytest.fixture
async def least(
    local_clusters: list[localkube.LocalCluster], unique_name: str, tmp_path: pathlib.Path
) -> AsyncIterator[leastpriv.Account]:
    made = await leastpriv.account(
        local_clusters[0],
        prefix=unique_name,
        granted=[f"{unique_name}-ok"],
        out=tmp_path / "sa.kubeconfig",
    )
    try:
        yield made
    finally:
        await made.remove()


async def test_forbidden_namespaces_are_the_apps_apply_failed_with_what_to_grant(
    least: leastpriv.Account, cluster: kube.Kube, unique_name: str
) -> None:
    client = kube.connect(str(least.kubeconfig))
    fenced = f"{unique_name}-fenced"  # exists, not granted
    absent = f"{unique_name}-absent"  # does not exist, and the agent may not create it
    ns_type = kube.ResourceType(
        group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False
    )
    await cluster.create(
        ns_type, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": fenced}}
    )
    try:
        rec = reconcile.Reconciler(
            client,
            reconcile.Options(inventory_namespace=least.agent_namespace, cluster="edge-1"),
        )

        def bundle(ns: str, app: str = "") -> types_pb2.Bundle:
            b = types_pb2.Bundle(app=app or ns, revision="r1", namespace=ns)
            b.manifests.add(
                source="cm.yaml", yaml="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
            )
            return b

        ok = await rec.reconcile(bundle(f"{unique_name}-ok"), policy())
        assert ok.sync == st.SYNCED, ok.reason

        missing = await rec.reconcile(bundle(absent), policy())
        assert missing.sync == st.APPLY_FAILED and missing.health == health.UNKNOWN
        assert missing.reason.startswith(f"cannot create namespace {absent} for app {absent}: ")
        assert 'cannot create resource "namespaces"' in missing.reason  # the server's words
        assert f"`fleetops-hub cluster add edge-1 --namespaces {absent},...`" in missing.reason
        assert not missing.retry_soon  # a person has to grant it; retrying soon changes nothing

        walled = await rec.reconcile(bundle(fenced), policy())
        assert walled.sync == st.APPLY_FAILED, walled.reason
        assert f'in the namespace "{fenced}"' in walled.reason
        assert f"grant the agent namespace {fenced}: run `fleetops-hub cluster add edge-1 " in (
            walled.reason
        )

        # its own namespace lost the Role that lets it keep inventories: a new app cannot start
        await cluster.delete(
            kube.ResourceType(
                group="rbac.authorization.k8s.io",
                version="v1",
                kind="RoleBinding",
                plural="rolebindings",
                namespaced=True,
            ),
            namespace=least.agent_namespace,
            name=leastpriv.SA,
        )

        async def inventory_refused() -> st.AppResult | None:
            r = await rec.reconcile(bundle(f"{unique_name}-ok", app="second"), policy())
            return r if r.sync == st.APPLY_FAILED else None

        lost = await wait.until("the inventory write refused", inventory_refused, within=30)
        assert f"in its own namespace {least.agent_namespace}, where it keeps its inventories" in (
            lost.reason
        )
    finally:
        client.close()
        await cluster.delete(ns_type, namespace="", name=fenced)
