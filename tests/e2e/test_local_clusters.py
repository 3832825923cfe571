"""The shared local clusters are real Kubernetes: SSA works, Deployments become Available,
every cluster has a Ready node, and clusters do not see each other's objects."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from kubernetes.dynamic import exceptions

from tests import localkube
from tests.support import kube, wait

pytestmark = pytest.mark.cluster


def deployment(ns: str, name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "registry.local/web:1.0"}]},
            },
        },
    }


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def test_every_cluster_has_one_ready_node(local_clusters: list[localkube.LocalCluster]) -> None:
    for cluster in local_clusters:
        out = subprocess.run(
            [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", "get", "nodes",
             "-o", "json"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        nodes = json.loads(out)["items"]
        ready = [
            n["metadata"]["name"]
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]
            )
        ]
        assert len(nodes) == 1, f"{cluster.name}: expected one node, got {len(nodes)}"
        assert ready == [nodes[0]["metadata"]["name"]], f"{cluster.name}: node not Ready"


def test_server_side_applied_deployment_becomes_available(
    local_clusters: list[localkube.LocalCluster], unique_name: str
) -> None:
    dyn = kube.client(local_clusters[0].kubeconfig)
    kube.apply(dyn, namespace(unique_name))
    kube.apply(dyn, deployment(unique_name, "web", replicas=2))
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")

    def available() -> bool:
        status = deployments.get(name="web", namespace=unique_name).status
        return status.availableReplicas == 2

    wait.until_sync(
        "Deployment web with 2 available replicas", available, within=90, retry_on=(Exception,)
    )
    live = deployments.get(name="web", namespace=unique_name)
    managers = [m.manager for m in live.metadata.managedFields]
    assert "fleetops-tests" in managers, f"server-side apply did not record our manager: {managers}"


def test_an_object_in_one_cluster_does_not_exist_in_another(
    local_clusters: list[localkube.LocalCluster], unique_name: str
) -> None:
    a, b = (kube.client(c.kubeconfig) for c in local_clusters[:2])
    kube.apply(a, namespace(unique_name))
    kube.apply(
        a,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "only-in-a", "namespace": unique_name},
            "data": {"k": "v"},
        },
    )
    configmaps_a = a.resources.get(api_version="v1", kind="ConfigMap")
    assert configmaps_a.get(name="only-in-a", namespace=unique_name).data.k == "v"
    configmaps_b = b.resources.get(api_version="v1", kind="ConfigMap")
    with pytest.raises(exceptions.NotFoundError):
        configmaps_b.get(name="only-in-a", namespace=unique_name)
    namespaces_b = b.resources.get(api_version="v1", kind="Namespace")
    with pytest.raises(exceptions.NotFoundError):
        namespaces_b.get(name=unique_name)


def test_one_clusters_credentials_are_refused_by_another(
    local_clusters: list[localkube.LocalCluster], tmp_path: Any
) -> None:
    a, b = local_clusters[:2]
    doc_a = json.loads(a.kubeconfig.read_text())
    doc_b = json.loads(b.kubeconfig.read_text())
    # cluster B's address and CA, cluster A's admin certificate
    doc_a["clusters"][0]["cluster"] = doc_b["clusters"][0]["cluster"]
    mixed = tmp_path / "mixed-kubeconfig"
    mixed.write_text(json.dumps(doc_a))
    res = subprocess.run(
        [localkube.binary("kubectl"), f"--kubeconfig={mixed}", "get", "namespaces"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode != 0
    assert "Unauthorized" in res.stderr or "must be logged in" in res.stderr, res.stderr


def test_status_says_every_cluster_is_up(local_clusters: list[localkube.LocalCluster]) -> None:
    state = local_clusters[0].kubeconfig.parent.parent
    res = subprocess.run(
        [sys.executable, str(localkube.LOCALKUBE), "status", "--state", str(state)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    lines = dict(line.split("\t", 1) for line in res.stdout.splitlines())
    assert sorted(lines) == sorted(c.name for c in local_clusters)
    assert all(v.startswith("up\t") for v in lines.values()), res.stdout
