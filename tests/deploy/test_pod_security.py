"""Pod Security of the install: every Namespace the agent's install (Kustomize, Helm, `cluster
add`) and the hub's create carries an `enforce` level, the agent and hub Pods pass `restricted`
where it is enforced, and app namespaces enforce `baseline` (or the level asked for) while
warning about what `restricted` would refuse. The real API server's admission decides."""

from __future__ import annotations

import copy
import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from fleetops.hub import errors, install
from tests import localkube
from tests.deploy import tools

ENFORCE = "pod-security.kubernetes.io/enforce"
WARN = "pod-security.kubernetes.io/warn"
AUDIT = "pod-security.kubernetes.io/audit"
HUB = tools.ROOT / "deploy" / "hub"


def _namespaces(objs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        o["metadata"]["name"]: o["metadata"]["labels"] for o in objs if o["kind"] == "Namespace"
    }


def _hub_objects() -> list[dict[str, Any]]:
    out = subprocess.run(
        [localkube.binary("kustomize"), "build", str(HUB)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_every_namespace_the_installs_create_has_a_pod_security_level() -> None:
    agent = install.agent_objects(
        **tools.PLACEHOLDERS, namespaces=["apps", "web"], cluster_admin=False
    )
    labels = _namespaces(agent)
    assert labels["fleetops-system"][ENFORCE] == "restricted"
    for ns in ("apps", "web"):
        assert {k: labels[ns][k] for k in (ENFORCE, WARN, AUDIT)} == {
            ENFORCE: "baseline",
            WARN: "restricted",
            AUDIT: "restricted",
        }
    assert _namespaces(_hub_objects())["fleetops"][ENFORCE] == "restricted"


def test_helm_value_and_cluster_add_choose_the_app_namespaces_level_alike(
    tmp_path: pathlib.Path,
) -> None:
    hub_values = {"address": tools.PLACEHOLDERS["hub_address"], "token": tools.PLACEHOLDERS["token"],
                  "ca": tools.PLACEHOLDERS["ca_pem"]}  # fmt: skip
    from_helm = tools.helm_objects(
        {"hub": hub_values, "namespaces": ["apps"], "podSecurity": "restricted"}, tmp_path
    )
    from_python = tools.keyed(
        install.agent_objects(
            **tools.PLACEHOLDERS,
            namespaces=["apps"],
            cluster_admin=False,
            pod_security="restricted",
        )
    )
    assert from_helm == from_python
    assert (
        from_python[("v1", "Namespace", "", "apps")]["metadata"]["labels"][ENFORCE] == "restricted"
    )
    assert (
        from_python[("v1", "Namespace", "", "fleetops-system")]["metadata"]["labels"][ENFORCE]
        == "restricted"
    )


def test_a_level_that_does_not_exist_is_refused_with_the_levels_named(
    tmp_path: pathlib.Path,
) -> None:
    with pytest.raises(errors.InvalidArgument, match="use one of privileged, baseline, restricted"):
        install.agent_objects(
            **tools.PLACEHOLDERS, namespaces=["apps"], cluster_admin=False, pod_security="strict"
        )
    done = tools.helm(
        {
            "hub": {"address": "h:1", "token": "t", "ca": "c"},
            "namespaces": ["apps"],
            "podSecurity": "strict",
        },
        tmp_path,
    )
    assert done.returncode != 0
    assert 'podSecurity: "strict" is not a Pod Security level' in done.stderr


# ---------------------------------------------------------------- against a real API server


def _pod(template: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
        },
        "spec": copy.deepcopy(template["spec"]),
    }


def _namespace_like(labels: dict[str, str], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _setup(admin: pathlib.Path, *objs: dict[str, Any]) -> None:
    done = tools.kubectl(admin, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(objs))
    assert done.returncode == 0, done.stderr


def _dry_run(admin: pathlib.Path, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return tools.kubectl(admin, "create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(obj))


@pytest.mark.cluster
def test_the_agents_pod_is_admitted_where_restricted_is_enforced(
    local_clusters: list[localkube.LocalCluster], unique_name: str
) -> None:
    admin = local_clusters[2].kubeconfig
    objs = tools.keyed(
        install.agent_objects(**tools.PLACEHOLDERS, namespaces=["apps"], cluster_admin=False)
    )
    ns = unique_name  # labelled exactly as the install labels fleetops-system
    labels = objs[("v1", "Namespace", "", "fleetops-system")]["metadata"]["labels"]
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "fleetops-agent", "namespace": ns},
    }
    _setup(admin, _namespace_like(labels, ns), sa)
    try:
        template = objs[("apps/v1", "Deployment", "fleetops-system", "fleetops-agent")]["spec"][
            "template"
        ]
        agent = _dry_run(admin, _pod(template, "agent", ns))
        assert agent.returncode == 0, agent.stderr
        assert "PodSecurity" not in agent.stderr  # not even a warning
        # the same Pod without its security settings is refused: enforcement is on
        loose = _pod(template, "loose", ns)
        del loose["spec"]["securityContext"]
        del loose["spec"]["containers"][0]["securityContext"]
        refused = _dry_run(admin, loose)
        assert refused.returncode != 0
        assert 'violates PodSecurity "restricted:latest"' in refused.stderr
    finally:
        tools.kubectl(admin, "delete", "namespace", ns, "--wait=false")


@pytest.mark.cluster
def test_the_hubs_pod_is_admitted_where_restricted_is_enforced(
    local_clusters: list[localkube.LocalCluster], unique_name: str
) -> None:
    admin = local_clusters[2].kubeconfig
    objs = _hub_objects()
    ns = unique_name  # labelled exactly as deploy/hub labels the hub's namespace
    labels = _namespaces(objs)["fleetops"]
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "fleetops-hub", "namespace": ns},
    }
    _setup(admin, _namespace_like(labels, ns), sa)
    try:
        sts = next(o for o in objs if o["kind"] == "StatefulSet")
        pod = _pod(sts["spec"]["template"], "fleetops-hub-0", ns)
        pod["spec"]["volumes"].append(
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-fleetops-hub-0"}}
        )
        hub = _dry_run(admin, pod)
        assert hub.returncode == 0, hub.stderr
        assert "PodSecurity" not in hub.stderr
    finally:
        tools.kubectl(admin, "delete", "namespace", ns, "--wait=false")


@pytest.mark.cluster
def test_app_namespaces_enforce_baseline_and_warn_about_restricted(
    local_clusters: list[localkube.LocalCluster], unique_name: str
) -> None:
    admin = local_clusters[2].kubeconfig
    ns = unique_name
    objs = install.agent_objects(**tools.PLACEHOLDERS, namespaces=[ns], cluster_admin=False)
    _setup(admin, *[o for o in objs if o["kind"] == "Namespace" and o["metadata"]["name"] == ns])
    try:
        plain = {"metadata": {"labels": {"app": "web"}},
                 "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}  # fmt: skip
        admitted = _dry_run(admin, _pod(plain, "web", ns))
        assert admitted.returncode == 0, admitted.stderr
        assert 'would violate PodSecurity "restricted:latest"' in admitted.stderr
        privileged = _pod(plain, "root", ns)
        privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
        refused = _dry_run(admin, privileged)
        assert refused.returncode != 0
        assert 'violates PodSecurity "baseline:latest": privileged' in refused.stderr
    finally:
        tools.kubectl(admin, "delete", "namespace", ns, "--wait=false")
